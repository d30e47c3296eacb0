//! Reading a `kal_snapshot` image: a [`MemView`] over the image
//! descriptor, through a bounded block cache.
//!
//! The image is read with `pread` at virtual addresses, in blocks of
//! [`BLOCK`] bytes kept in a direct-mapped cache of [`NBLOCKS`] blocks, so
//! reading a heap of any size costs [`CACHE_BYTES`] of the engine's memory,
//! not a second copy of the heap.  Only the captured ranges are read; a
//! page outside them, or a read the kernel refuses, makes the view answer
//! "cannot read", and the scan that asked proves nothing.
//!
//! A view given a deadline fails every block read after it (and says so),
//! so a scan that cannot finish in time stops by itself.
//!
//! Invariant: a cache slot's tag is the block's address (plus one, so that
//! 0 means empty) and its page mask says which of the block's pages hold
//! the image's bytes; a block is filled completely (every captured page of
//! it) before its tag is set.

use rmalloc_sys as sys;

use crate::view::MemView;

use super::mem::MVec;

/// Bytes per cached block.
pub const BLOCK: usize = 64 << 10;
const PAGES_PER_BLOCK: usize = BLOCK / sys::PAGE_SIZE;
/// Blocks in the cache.
pub const NBLOCKS: usize = 128;
/// The cache's size: the most memory the view holds.
pub const CACHE_BYTES: usize = BLOCK * NBLOCKS;

/// Storage of the block cache, kept across scans.
pub struct BlockCache {
    data: MVec<u8>,
    tags: [usize; NBLOCKS],
    /// Bit k: page k of the block was captured and read.
    pages: [u16; NBLOCKS],
}

const _: () = assert!(PAGES_PER_BLOCK <= 16);

impl BlockCache {
    pub const fn new() -> Self {
        BlockCache {
            data: MVec::new(),
            tags: [0; NBLOCKS],
            pages: [0; NBLOCKS],
        }
    }
}

/// A view of one image.
pub struct ImageView<'a> {
    fd: i32,
    /// Captured ranges, sorted by address, disjoint, page aligned.
    ranges: &'a [(usize, usize)],
    cache: &'a mut BlockCache,
    /// `now_ns` after which every read fails (0: none).
    deadline: u64,
    /// A read failed because the deadline had passed.
    pub late: bool,
}

impl<'a> ImageView<'a> {
    /// A view of the image `fd` whose captured ranges are `ranges`.  False
    /// when the cache's memory could not be had.
    pub fn new(
        fd: i32,
        ranges: &'a [(usize, usize)],
        cache: &'a mut BlockCache,
        deadline: u64,
    ) -> Option<ImageView<'a>> {
        let short = CACHE_BYTES.saturating_sub(cache.data.len());
        if short > 0 && !(cache.data.reserve(short) && cache.data.grow_len(short)) {
            return None;
        }
        // A fresh image: nothing cached is valid any more.
        cache.tags = [0; NBLOCKS];
        Some(ImageView {
            fd,
            ranges,
            cache,
            deadline,
            late: false,
        })
    }

    /// The cache slot holding the block at `base`, filled on a miss.
    fn block(&mut self, base: usize) -> Option<usize> {
        let slot = (base / BLOCK) % NBLOCKS;
        if self.cache.tags[slot] == base + 1 {
            return Some(slot);
        }
        if self.deadline != 0 && sys::task::now_ns() > self.deadline {
            self.late = true;
            return None;
        }
        self.cache.tags[slot] = 0;
        let mut mask = 0u16;
        let end = base + BLOCK;
        let i0 = self.ranges.partition_point(|&(_, e)| e <= base);
        let buf = &mut self.cache.data.as_mut_slice()[slot * BLOCK..(slot + 1) * BLOCK];
        for &(a, b) in &self.ranges[i0..] {
            if a >= end {
                break;
            }
            let (s, e) = (a.max(base), b.min(end));
            let mut at = s;
            while at < e {
                match sys::kal::read_image(self.fd, at as u64, &mut buf[at - base..e - base]) {
                    Ok(n) if n > 0 => at += n,
                    _ => return None,
                }
            }
            for pg in (s - base) / sys::PAGE_SIZE..(e - base) / sys::PAGE_SIZE {
                mask |= 1 << pg;
            }
        }
        self.cache.pages[slot] = mask;
        self.cache.tags[slot] = base + 1;
        Some(slot)
    }

    /// Are the pages of `[s, e)` (inside the block of slot `slot` at
    /// `base`) captured?
    fn covered(&self, slot: usize, base: usize, s: usize, e: usize) -> bool {
        let first = (s - base) / sys::PAGE_SIZE;
        let last = (e - 1 - base) / sys::PAGE_SIZE;
        let want = ((1u32 << (last + 1)) - (1u32 << first)) as u16;
        self.cache.pages[slot] & want == want
    }
}

impl MemView for ImageView<'_> {
    fn word(&mut self, addr: usize) -> Option<usize> {
        if !addr.is_multiple_of(8) {
            return None;
        }
        let base = addr & !(BLOCK - 1);
        let slot = self.block(base)?;
        if !self.covered(slot, base, addr, addr + 8) {
            return None;
        }
        let off = slot * BLOCK + (addr - base);
        let b = &self.cache.data.as_slice()[off..off + 8];
        Some(usize::from_ne_bytes(b.try_into().ok()?))
    }

    fn words(&mut self, start: usize, end: usize, f: &mut impl FnMut(&[usize])) -> bool {
        let mut at = start;
        while at < end {
            let base = at & !(BLOCK - 1);
            let e = end.min(base + BLOCK);
            let Some(slot) = self.block(base) else {
                return false;
            };
            if !self.covered(slot, base, at, e) {
                return false;
            }
            let off = slot * BLOCK + (at - base);
            let bytes = &self.cache.data.as_slice()[off..off + (e - at)];
            // SAFETY: the cache's storage is page aligned, so `bytes` (at a
            // multiple of 8 from it) is aligned for usize; any bit pattern
            // is a valid usize.
            let w = unsafe {
                core::slice::from_raw_parts(bytes.as_ptr() as *const usize, bytes.len() / 8)
            };
            f(w);
            at = e;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A plain file stands in for an image: `pread` at an offset returns
    /// the bytes "at that address".  Word k of the file holds k.
    fn image_file(len: usize) -> std::fs::File {
        let mut f = tempfile();
        let words: Vec<u8> = (0..len / 8)
            .flat_map(|k| (k as u64).to_ne_bytes())
            .collect();
        f.write_all(&words).unwrap();
        f
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("kal-image-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn reads_captured_words_and_refuses_the_gaps() {
        let f = image_file(4 * BLOCK);
        // Two captured ranges with a one-page hole between them, spanning
        // block boundaries.
        let ranges = [(0x1000, BLOCK + 0x3000), (BLOCK + 0x4000, 3 * BLOCK)];
        let mut cache = BlockCache::new();
        let mut v = ImageView::new(f.as_raw_fd(), &ranges, &mut cache, 0).unwrap();
        assert_eq!(v.word(0x1000), Some(0x1000 / 8));
        assert_eq!(v.word(BLOCK + 0x2ff8), Some((BLOCK + 0x2ff8) / 8));
        assert_eq!(v.word(0x0ff8), None, "below the first range");
        assert_eq!(v.word(BLOCK + 0x3000), None, "in the hole");
        assert_eq!(v.word(3 * BLOCK), None, "past the end");
        assert_eq!(v.word(0x1004), None, "unaligned");
        // A long read across blocks sees every word once, in order.
        let (s, e) = (BLOCK + 0x4000, 3 * BLOCK);
        let mut next = s / 8;
        assert!(v.words(s, e, &mut |w| {
            for &x in w {
                assert_eq!(x, next);
                next += 1;
            }
        }));
        assert_eq!(next, e / 8);
        // A read that runs into the hole fails.
        assert!(!v.words(BLOCK, BLOCK + 0x5000, &mut |_| {}));
        // The cache is bounded: many distinct blocks later, reads still agree.
        for round in 0..3 {
            for b in 0..3 {
                let a = b * BLOCK + 0x4000 + round * 8;
                assert_eq!(v.word(a), Some(a / 8));
            }
        }
    }
}
