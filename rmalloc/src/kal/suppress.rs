//! Suppressions: LeakSanitizer's `leak:PATTERN` lines, from
//! `suppressions=FILE` and the program's `__lsan_default_suppressions()`.
//!
//! A leak is suppressed when a pattern matches, for any frame of its
//! allocation stack, the frame's object (module) path or the name of the
//! function holding it.  Function names come from the object's dynamic
//! symbol table (no debug information, no allocation: see
//! [`super::modules::dynamic_symbol`]), so only exported functions are
//! named in-library; source file names are not known in-library.
//! Patterns follow LeakSanitizer's wildcard rules: a plain pattern matches
//! anywhere in the name, `*` matches any run of bytes, `^` anchors at the
//! start and `$` at the end.
//!
//! Suppressed leaks are never reported nor reclaimed; each pattern counts
//! the leaks (and bytes) it suppressed, printed after each report as
//! LeakSanitizer's `print_suppressions` does.
//!
//! Invariant: the pattern list is written at start-up, before the scanner
//! exists; afterwards only the scanner reads it and updates the counts.

use core::cell::UnsafeCell;
use core::fmt::Write;

use super::mem::{AddrMap, MVec};
use super::stacks;

const MAX_PATTERNS: usize = 256;

#[derive(Clone, Copy)]
struct Pattern {
    start: usize,
    len: usize,
    hits: u64,
    bytes: u64,
}

struct State {
    text: MVec<u8>,
    pats: [Pattern; MAX_PATTERNS],
    n: usize,
    /// Stack id + 2 -> matching pattern + 1 (0: none): a cache.
    verdict: AddrMap,
}

struct Shared(UnsafeCell<State>);
// SAFETY: see the module invariant (start-up writes, then the scanner only).
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State {
    text: MVec::new(),
    pats: [Pattern {
        start: 0,
        len: 0,
        hits: 0,
        bytes: 0,
    }; MAX_PATTERNS],
    n: 0,
    verdict: AddrMap::new(),
}));

/// Why a suppressions file was refused: one line for stderr.
pub type LoadError = crate::fmt::FixedBuf<256>;

fn state() -> &'static mut State {
    // SAFETY: see the module invariant.
    unsafe { &mut *STATE.0.get() }
}

/// Read `suppressions=FILE`.
pub fn load_file(path: &[u8]) -> Result<(), LoadError> {
    let mut e = LoadError::new();
    let mut name = [0u8; super::options::LOG_PATH_MAX + 2];
    name[..path.len()].copy_from_slice(path);
    let mut buf = MVec::new();
    let ok = core::ffi::CStr::from_bytes_until_nul(&name)
        .ok()
        .is_some_and(|c| super::roots::read_file(c, &mut buf).is_ok());
    if !ok {
        let _ = write!(
            e,
            "KAL: cannot read suppressions file '{}'; KAL stays off",
            core::str::from_utf8(path).unwrap_or("?")
        );
        return Err(e);
    }
    let r = add(buf.as_slice(), path);
    buf.release();
    r
}

/// The program's `__lsan_default_suppressions()` string, if it has one.
/// Lines KAL cannot use are skipped (they were written for LeakSanitizer).
pub fn load_default(s: Option<&[u8]>) {
    if let Some(s) = s {
        let _ = add(s, b"");
    }
}

fn add(text: &[u8], path: &[u8]) -> Result<(), LoadError> {
    let st = state();
    for (lineno, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = trim(raw);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let pat = match line.strip_prefix(b"leak:") {
            Some(p) if !trim(p).is_empty() => trim(p),
            _ if path.is_empty() => continue,
            _ => {
                let mut e = LoadError::new();
                let _ = write!(
                    e,
                    "KAL: suppressions file '{}' line {}: expected leak:PATTERN; KAL stays off",
                    core::str::from_utf8(path).unwrap_or("?"),
                    lineno + 1
                );
                return Err(e);
            }
        };
        if st.n >= MAX_PATTERNS {
            break;
        }
        let start = st.text.len();
        for &b in pat {
            if !st.text.push(b) {
                break;
            }
        }
        st.pats[st.n] = Pattern {
            start,
            len: st.text.len() - start,
            hits: 0,
            bytes: 0,
        };
        st.n += 1;
    }
    Ok(())
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let z = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |i| i + 1);
    &s[a..z]
}

/// LeakSanitizer's `TemplateMatch`: does `templ` match `s`?
pub fn template_match(templ: &[u8], s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let (mut t, mut s) = (templ, s);
    let mut start = false;
    if t.first() == Some(&b'^') {
        start = true;
        t = &t[1..];
    }
    let mut asterisk = false;
    while let Some(&c) = t.first() {
        if c == b'*' {
            t = &t[1..];
            start = false;
            asterisk = true;
            continue;
        }
        if c == b'$' {
            return s.is_empty() || asterisk;
        }
        if s.is_empty() {
            return false;
        }
        let piece_end = t
            .iter()
            .position(|&b| b == b'*' || b == b'$')
            .unwrap_or(t.len());
        let piece = &t[..piece_end];
        let Some(at) = find(s, piece) else {
            return false;
        };
        if start && at != 0 {
            return false;
        }
        s = &s[at + piece.len()..];
        t = &t[piece_end..];
        start = false;
        asterisk = false;
    }
    true
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The pattern (index) suppressing the stack `id`, if any.
fn lookup(id: u32) -> Option<usize> {
    lookup_with(id, true).unwrap_or(None)
}

/// [`lookup`] without waiting for the depot's lock (threads are stopped):
/// `Err` when it is busy.
pub fn lookup_nowait(id: u32) -> Result<Option<usize>, ()> {
    lookup_with(id, false)
}

fn lookup_with(id: u32, wait: bool) -> Result<Option<usize>, ()> {
    let st = state();
    if st.n == 0 || id == 0 {
        return Ok(None);
    }
    if let Some(v) = st.verdict.get(id as usize + 2) {
        return Ok(v.checked_sub(1));
    }
    let mut frames = [0usize; stacks::MAX_FRAMES];
    let n = if wait {
        stacks::frames(id, &mut frames)
    } else {
        stacks::try_frames(id, &mut frames).ok_or(())?
    };
    let mut found = None;
    'frames: for &pc in &frames[..n] {
        let Some(m) = super::modules::find(pc.wrapping_sub(1)) else {
            continue;
        };
        let func = super::modules::dynamic_symbol(m, pc.wrapping_sub(1));
        for i in 0..st.n {
            let p = st.pats[i];
            let t = &st.text.as_slice()[p.start..p.start + p.len];
            if template_match(t, m.name()) || func.is_some_and(|f| template_match(t, f)) {
                found = Some(i);
                break 'frames;
            }
        }
    }
    st.verdict
        .insert(id as usize + 2, found.map_or(0, |i| i + 1));
    Ok(found)
}

/// Count a leak of `bytes` allocated at stack `id` if a pattern suppresses
/// it; true if so.  (Scanner thread.)
pub fn count_if_suppressed(id: Option<u32>, bytes: u64) -> bool {
    let Some(i) = id.and_then(lookup) else {
        return false;
    };
    let p = &mut state().pats[i];
    p.hits += 1;
    p.bytes += bytes;
    true
}

/// LeakSanitizer's "Suppressions used:" block, if any pattern was used.
pub fn print_used(o: &mut impl Write) {
    let st = state();
    if !st.pats[..st.n].iter().any(|p| p.hits > 0) {
        return;
    }
    let line = "-----------------------------------------------------";
    let _ = writeln!(o, "{line}\nSuppressions used:\n  count      bytes template");
    for p in &st.pats[..st.n] {
        if p.hits > 0 {
            let t = &st.text.as_slice()[p.start..p.start + p.len];
            let _ = writeln!(
                o,
                "{:7} {:10} {}",
                p.hits,
                p.bytes,
                core::str::from_utf8(t).unwrap_or("?")
            );
        }
    }
    let _ = writeln!(o, "{line}\n");
}

/// Reset the counts (each report prints its own).
pub fn reset_counts() {
    let st = state();
    for p in &mut st.pats[..st.n] {
        p.hits = 0;
        p.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::template_match as m;

    #[test]
    fn lsan_wildcards() {
        assert!(m(b"foo", b"xfoox"));
        assert!(!m(b"foo", b"fo"));
        assert!(m(b"^foo", b"foobar"));
        assert!(!m(b"^foo", b"xfoo"));
        assert!(m(b"foo$", b"xfoo"));
        assert!(!m(b"foo$", b"foox"));
        assert!(m(b"f*o", b"fxxxo"));
        assert!(m(b"^lib*.so$", b"libleaky.so"));
        assert!(!m(b"^lib*.so$", b"/usr/lib/libleaky.so"));
        assert!(m(b"*", b"anything"));
        assert!(!m(b"x", b""));
        assert!(m(b"leak_in_lib", b"leak_in_library"));
    }
}
