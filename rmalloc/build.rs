//! Link flags that shrink the shared library's resident footprint.
//!
//! Every process that preloads the library maps its pages, and the kernel
//! maps file pages around each fault (`fault_around_bytes`, 64 KiB by
//! default), so the resident size of the text is set by how many 64 KiB
//! windows the code a program runs is spread over, not by how much of it
//! runs.  The functions on the paths every program takes carry
//! `#[link_section = ".text.hot.rmalloc"]`; these flags keep that code in
//! one place and keep everything else off those paths:
//!
//! - `-z keep-text-section-prefix`: lld (Rust's default linker here) gives
//!   `.text.hot` an output section of its own, in one piece.  GNU ld groups
//!   `.text.hot.*` at the start of `.text` anyway and ignores the flag.
//! - `-nostartfiles`: without the C start files there is no `_init`, no
//!   `__do_global_dtors_aux` and no PLT stub at the far ends of the text,
//!   each of which would fault in a window of its own.  The library needs
//!   none of them: its constructor and destructor are `.init_array` and
//!   `.fini_array` entries, and it registers its fork handlers itself.
//! - `-z nodelete`: the library replaces `malloc`, so it cannot be unloaded
//!   once loaded (blocks it handed out would outlive it); this makes
//!   `dlclose` keep it, which also keeps its fork handlers valid without
//!   the start files' `__cxa_finalize` call.
//! - `-z separate-loadable-segments`: every segment starts on a page of its
//!   own, in the file and in memory, so the RELRO data (`.got`, `.dynamic`,
//!   `.data.rel.ro`, 1.7 KiB written by the loader's relocations) fills one
//!   page instead of straddling two; the padding costs file size only.
//! - `layout.ld` (`-T`, an `INSERT` script: the default layout otherwise):
//!   the hot code in a segment and so a mapping of its own, and the unwind
//!   tables out of the read-only segment the loader reads; see the script.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-Wl,-z,keep-text-section-prefix",
        "-nostartfiles",
        "-Wl,-z,nodelete",
        "-Wl,-z,separate-loadable-segments",
    ] {
        println!("cargo:rustc-link-arg-cdylib={arg}");
    }
    println!("cargo:rerun-if-changed=layout.ld");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{dir}/layout.ld");
}
