//! One-time initialisation, done lazily by the first allocator call.
//!
//! The dynamic loader calls the interposed `malloc` before any constructor
//! of ours has run, possibly before libc's own initialisation is complete;
//! so the core state (main arena, tcache key, parameters) is set up with
//! raw system calls only, and libc services (pthread key, fork handlers,
//! the exit-statistics hook) are registered afterwards, when allocation
//! already works, because registering them may itself allocate.
//!
//! States: 0 = untouched, 1 = core being set up, 2 = core ready,
//! 3 = fully initialised.  A thread that sees 1 waits for 2.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::arena;
use crate::options;
use crate::tcache;

static STATE: AtomicU8 = AtomicU8::new(0);

#[inline(always)]
pub(crate) fn ensure() {
    if STATE.load(Ordering::Acquire) < 2 {
        slow();
    }
}

#[cold]
fn slow() {
    match STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            tcache::init_key();
            options::init_from_env();
            let m = arena::main_arena();
            // SAFETY: no other thread touches the main arena before STATE
            // reaches 2; this thread is the only initialiser.
            unsafe {
                (*m).init_state();
                (*m).next.store(m, Ordering::Release);
            }
            // The initialising thread uses the main arena, as in glibc.
            crate::tls::set::<{ crate::tls::ARENA }>(m as usize);
            STATE.store(2, Ordering::Release);
            crate::thread::create_key();
            crate::fork::register();
            STATE.store(3, Ordering::Release);
        }
        Err(_) => {
            while STATE.load(Ordering::Acquire) < 2 {
                core::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn is_ready() -> bool {
    STATE.load(Ordering::Acquire) >= 2
}
