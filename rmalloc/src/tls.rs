//! Initial-exec TLS slot reached with one `%fs`-relative load.
core::arch::global_asm!(
    ".section .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl rm_tls_thread",
    ".hidden rm_tls_thread",
    ".type rm_tls_thread, @object",
    ".size rm_tls_thread, 8",
    "rm_tls_thread:",
    ".zero 8",
    ".text",
);

#[inline(always)]
pub fn get() -> *mut u8 {
    let v: *mut u8;
    unsafe {
        core::arch::asm!(
            "mov {t}, qword ptr [rip + rm_tls_thread@GOTTPOFF]",
            "mov {v}, qword ptr fs:[{t}]",
            t = out(reg) _, v = out(reg) v,
            options(nostack, readonly, preserves_flags, pure)
        );
    }
    v
}
#[cfg(test)]
mod t { #[test] fn z(){ assert!(super::get().is_null()); } }
