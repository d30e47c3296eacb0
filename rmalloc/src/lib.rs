#![cfg_attr(panic = "abort", no_std)]
pub mod tls;

#[cfg(all(panic = "abort", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
pub extern "C" fn rm_probe() -> usize { tls::get() as usize }
