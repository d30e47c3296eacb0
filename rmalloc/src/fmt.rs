//! Allocation-free text output: a fixed buffer implementing `core::fmt::Write`
//! that flushes to a file descriptor (or a `FILE*` callback) when full.
//!
//! Used for error messages, `malloc_stats`, `malloc_info` and leak reports,
//! all of which run where allocating would recurse into the allocator.

use core::fmt;

/// Where flushed bytes go.
pub(crate) enum Sink {
    Fd(i32),
    /// A C stdio stream; written with `fwrite`, which may allocate its own
    /// buffer once, but never while an arena lock is held by the caller.
    File(*mut libc::FILE),
}

pub(crate) struct Out<const N: usize> {
    buf: [u8; N],
    len: usize,
    sink: Sink,
    pub failed: bool,
}

impl<const N: usize> Out<N> {
    pub(crate) const fn new(sink: Sink) -> Self {
        Out {
            buf: [0; N],
            len: 0,
            sink,
            failed: false,
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        let data = &self.buf[..self.len];
        match self.sink {
            Sink::Fd(fd) => {
                if rmalloc_sys::write_all(fd, data).is_err() {
                    self.failed = true;
                }
            }
            Sink::File(f) => {
                // SAFETY: `f` is the caller's open stream and `data` is a
                // valid slice for its length.
                let n = unsafe { libc::fwrite(data.as_ptr().cast(), 1, data.len(), f) };
                if n != data.len() {
                    self.failed = true;
                }
            }
        }
        self.len = 0;
    }
}

impl<const N: usize> fmt::Write for Out<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == N {
                self.flush();
            }
            let n = core::cmp::min(N - self.len, bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl<const N: usize> Drop for Out<N> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A fixed-capacity string for building messages in place (truncates).
pub(crate) struct FixedBuf<const N: usize> {
    pub buf: [u8; N],
    pub len: usize,
}

impl<const N: usize> FixedBuf<N> {
    pub(crate) const fn new() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> fmt::Debug for FixedBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(core::str::from_utf8(self.as_bytes()).unwrap_or("<invalid utf-8>"))
    }
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = core::cmp::min(N - self.len, s.len());
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn fixed_buf_formats_and_truncates() {
        let mut b = FixedBuf::<8>::new();
        let word = "abcdefgh";
        write!(b, "{}-{}", 12, word).unwrap();
        assert_eq!(b.as_bytes(), b"12-abcde");
    }

    #[test]
    fn out_writes_through_pipe() {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        {
            let mut o = Out::<4>::new(Sink::Fd(fds[1]));
            write!(o, "hello {}", 42).unwrap();
        }
        let mut buf = [0u8; 32];
        let n = rmalloc_sys::read(fds[0], &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello 42");
        rmalloc_sys::close(fds[0]);
        rmalloc_sys::close(fds[1]);
    }
}
