#!/usr/bin/env bash
# build-kernel.sh: build the kal_snapshot test kernel, cached by content.
#
# Extracts Debian's linux-source-6.12, applies the patch series
# kernel-patch/[0-9][0-9][0-9][0-9]-*.patch in order (the cover letter 0000 is
# not a patch), configures tinyconfig + kernel-patch/kal.config and builds
# bzImage plus the uapi headers.  The result lives in $KAL_CACHE/<hash>/
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/rmalloc-kernel), keyed by a hash
# of the series and the config fragment; a second run with the same inputs
# only prints the path.  Prints the cache directory on stdout as its last
# line.
#
# KAL_KERNEL_VARIANT=debug adds kal-debug.config (lock, VM and page-table
# checks) on top and caches the result under debug-<hash>.
#
# A change to the series that touches only the selftests or the
# documentation (or commit messages) does not rebuild the kernel: each
# entry records, in kernel-key, a hash of the config and of the series'
# hunks outside tools/testing/selftests/ and Documentation/, and an entry
# with the same kernel-key lends its bzImage and headers to the new one,
# whose selftests are taken from the series alone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/.." && pwd)
mapfile -t patches < <(ls "$here"/[0-9][0-9][0-9][0-9]-*.patch 2>/dev/null | grep -v '/0000-')
frag="$here/kal.config"
variant="${KAL_KERNEL_VARIANT:-}"
frags=("$frag")
prefix=
case "$variant" in
'') ;;
debug) frags+=("$here/kal-debug.config"); prefix=debug- ;;
*) echo "kernel: ERROR: unknown KAL_KERNEL_VARIANT=$variant (debug or empty)" >&2; exit 1 ;;
esac
cache="${KAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rmalloc-kernel}"
jobs="${KAL_JOBS:-$(nproc)}"

log() { echo "kernel: $*" >&2; }
die() { echo "kernel: ERROR: $*" >&2; exit 1; }

[ "${#patches[@]}" -gt 0 ] || die "no patches in $here"
[ -f "$frag" ] || die "missing $frag"
"$repo/scripts/need-apt" linux-source-6.12 build-essential flex bison bc \
	libelf-dev libssl-dev cpio xz-utils gzip git rsync >&2

hash=$prefix$(cat "${patches[@]}" "${frags[@]}" | sha256sum | cut -c1-16)
# The hunks that can change the kernel image or its headers.
kernel_hunks() {
	awk 'FNR == 1 { keep = 0 } /^diff --git /{ keep = ($3 !~ /^a\/(tools\/testing\/selftests|Documentation)\//) }
	     keep' "$@"
}
kkey=$prefix$( (kernel_hunks "${patches[@]}"; cat "${frags[@]}") | sha256sum | cut -c1-16)
out="$cache/$hash"
if [ -f "$out/done" ]; then
	log "cached kernel $out/bzImage"
	echo "$out"
	exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/$hash.lock"
flock 9
if [ -f "$out/done" ]; then
	log "cached kernel $out/bzImage (built meanwhile)"
	echo "$out"
	exit 0
fi

tarball=$(ls /usr/src/linux-source-6.12.tar.xz 2>/dev/null || true)
[ -n "$tarball" ] || die "linux-source-6.12 tarball not found in /usr/src"

# $work/result becomes the cache entry $out; its path goes to stdout.
publish() {
	rm -rf "$out"
	mv "$work/result" "$out"
	rm -rf "$work"
	touch "$out/done"
	log "kernel ready: $out/bzImage"
	echo "$out"
	exit 0
}

# The same kernel under another series (selftests or documentation
# changed): its bzImage and headers, and the selftests of this series.
same=$(grep -lx "$kkey" "$cache"/*/kernel-key 2>/dev/null | head -1 || true)
if [ -n "$same" ] && [ -f "$(dirname "$same")/done" ]; then
	from=$(dirname "$same")
	log "kernel unchanged since $from: reusing it, selftests from this series"
	work="$out.tmp"
	rm -rf "$work"
	mkdir -p "$work/result/selftests" "$work/src"
	cp -a "$from/bzImage" "$from/config" "$from/include" "$from/kernel-key" "$work/result/"
	tar -C "$work/src" --strip-components=1 -xf "$tarball" \
		linux-source-6.12/tools/testing/selftests/kselftest.h
	for p in "${patches[@]}"; do
		(cd "$work/src" && git apply --include='tools/testing/selftests/kal/*' "$p") ||
			die "$(basename "$p"): its selftest hunks do not apply"
	done
	cp "$work/src/tools/testing/selftests/kselftest.h" "$work/result/selftests/"
	cp -r "$work/src/tools/testing/selftests/kal" "$work/result/selftests/kal"
	publish
fi
work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
log "extracting $tarball into $work"
tar -C "$work" -xf "$tarball"
src="$work/linux-source-6.12"
[ -d "$src" ] || die "unexpected tarball layout"

for p in "${patches[@]}"; do
	log "applying $(basename "$p")"
	if ! (cd "$src" && git apply --check "$p" && git apply "$p"); then
		die "$(basename "$p") does not apply to $(basename "$tarball")"
	fi
done

log "configuring (tinyconfig + ${frags[*]##*/})"
make -C "$src" O="$work/build" tinyconfig >/dev/null
(cd "$src" && scripts/kconfig/merge_config.sh -m -O "$work/build" \
	"$work/build/.config" "${frags[@]}") >/dev/null
make -C "$src" O="$work/build" olddefconfig >/dev/null
# Each option's last setting in the fragments must hold: a later fragment
# may override an earlier one (the debug variant turns CHECKPOINT_RESTORE
# off), and "# CONFIG_X is not set" means no CONFIG_X= line.
missing=0
declare -A want=()
opts=()
while IFS= read -r line; do
	case "$line" in
	'# CONFIG_'*' is not set') opt=${line#\# }; opt=${opt%% *} ;;
	''|'#'*) continue ;;
	*) opt=${line%%=*} ;;
	esac
	[ -n "${want[$opt]+set}" ] || opts+=("$opt")
	want[$opt]=$line
done < <(cat "${frags[@]}")
for opt in "${opts[@]}"; do
	line=${want[$opt]}
	case "$line" in
	'#'*) ! grep -q "^$opt=" "$work/build/.config" ;;
	*) grep -qx "$line" "$work/build/.config" ;;
	esac || { log "config: $line did not stick"; missing=1; }
done
[ "$missing" -eq 0 ] || die "config fragment not satisfied"

log "building bzImage with -j$jobs (about 10 minutes on 2 cores)"
start=$(date +%s)
if ! make -C "$src" O="$work/build" -j"$jobs" bzImage >"$work/build.log" 2>&1; then
	tail -40 "$work/build.log" >&2
	die "kernel build failed (full log: $work/build.log)"
fi
log "built in $(( $(date +%s) - start )) s"
make -C "$src" O="$work/hdr" headers_install INSTALL_HDR_PATH="$work/usr" >/dev/null 2>&1 \
	|| die "headers_install failed"

mkdir -p "$work/result/selftests"
cp "$work/build/arch/x86/boot/bzImage" "$work/result/bzImage"
cp "$work/build/.config" "$work/result/config"
cp -r "$work/usr/include" "$work/result/include"
cp "$src/tools/testing/selftests/kselftest.h" "$work/result/selftests/"
cp -r "$src/tools/testing/selftests/kal" "$work/result/selftests/kal"
echo "$kkey" >"$work/result/kernel-key"
publish
