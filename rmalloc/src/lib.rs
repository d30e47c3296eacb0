//! rmalloc: a glibc-compatible `malloc` (ptmalloc design) in Rust.
//!
//! Built as `librmalloc.so`, it replaces glibc's allocator in an unmodified
//! program through `LD_PRELOAD` or at link time, with glibc 2.36's API,
//! tunables and observable behaviour.
//!
//! Where things live:
//! - the fast paths and public semantics: [`api`] (C names in `exports`);
//! - chunk layout and size classes: `chunk`, `bins`;
//! - arenas and thread-to-arena assignment: `arena`; non-main heaps: `heap`;
//! - allocation and free inside an arena: `malloc`, `free`, `realloc`;
//! - growing and trimming the heap: `top`; mmapped chunks: `mmap_chunk`;
//! - the per-thread cache: `tcache`, its TLS slot: `tls`, thread exit: `thread`;
//! - parameters and `mallopt`: [`options`]; reading them from `GLIBC_TUNABLES`
//!   and `MALLOC_*_`: `tunables`;
//! - statistics (`mallinfo2`, `malloc_stats`, `malloc_info`): [`stats`];
//! - heap walking and consistency checks: `walk`, `check`;
//! - initialisation and fork handling: `init`, `fork`.
//!
//! The library never allocates through Rust's global allocator: it is
//! `no_std` when built for use (panic = abort), and std only appears in
//! its own unit tests.
#![cfg_attr(panic = "abort", no_std)]
// Each unsafe fn states its contract once, under `# Safety`, and its body
// is one unsafe block that relies on it.
#![deny(unsafe_op_in_unsafe_fn)]
// Error reports are fixed buffers: the allocator cannot box them.
#![allow(clippy::result_large_err)]

pub mod api;
mod arena;
mod bins;
mod check;
mod chunk;
mod error;
#[cfg(not(test))]
mod exports;
mod fmt;
mod fork;
mod free;
mod heap;
mod init;
mod kal;
mod lock;
mod malloc;
mod mmap_chunk;
pub mod options;
mod os;
mod realloc;
pub mod stats;
mod tcache;
mod thread;
mod tls;
mod top;
mod tunables;
mod view;
mod walk;

#[cfg(test)]
mod tests;

/// A panic inside the allocator is a bug; there is no unwinding and no
/// formatting machinery to run safely, so report and abort.
#[cfg(all(panic = "abort", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    error::malloc_printerr("rmalloc: internal error (panic)")
}

/// The precompiled `core` carries unwind tables that name this symbol even
/// with panic = abort; nothing ever unwinds through it.
#[cfg(all(panic = "abort", not(test)))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}
