//! One-time initialisation, done lazily by the first allocator call.
//!
//! The dynamic loader calls the interposed `malloc` before any constructor
//! of ours has run, possibly before libc's own initialisation is complete;
//! so the core state (main arena, tcache key, parameters) is set up with
//! raw system calls only, and libc services (pthread key, fork handlers,
//! the exit-statistics hook) are registered afterwards, when allocation
//! already works, because registering them may itself allocate.
//!
//! States: 0 = untouched, 1 = core being set up, 2 = core ready and libc
//! services being registered, 3 = fully initialised.  Only the initialising
//! thread may allocate in state 2 (the registration may allocate); every
//! other thread waits for 3.  So no thread gets a cache before the
//! thread-exit key exists (its exit would go unnoticed), and none allocates
//! before the fork handlers exist.
//!
//! A constructor in `.init_array` runs the initialisation at the latest when
//! the library is loaded, before the program's own constructors: that
//! registers the fork handlers before the program's (see `fork.rs`).

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::arena;
use crate::lock;
use crate::options;
use crate::tcache;

#[link_section = ".data.hot.rmalloc"]
static STATE: AtomicU8 = AtomicU8::new(0);
/// `lock::thread_id()` of the initialising thread.
#[link_section = ".data.hot.rmalloc"]
static INITIALISER: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
pub(crate) fn ensure() {
    if STATE.load(Ordering::Acquire) < 3 {
        slow();
    }
}

#[cold]
#[link_section = ".text.hot.rmalloc"]
fn slow() {
    run(&STATE, &INITIALISER, core_init, register_services);
}

fn core_init() {
    tcache::init_key();
    options::init_from_env();
    let m = arena::main_arena();
    // SAFETY: no other thread touches the main arena before STATE reaches
    // 2; this thread is the only initialiser.
    unsafe {
        (*m).init_state();
        (*m).next.store(m, Ordering::Release);
    }
    // The initialising thread uses the main arena, as in glibc.
    crate::tls::set::<{ crate::tls::ARENA }>(m as usize);
}

fn register_services() {
    crate::thread::create_key();
    crate::fork::register();
}

/// The state machine, apart from what it runs (so tests can drive it).
fn run(state: &AtomicU8, initialiser: &AtomicUsize, core: fn(), services: fn()) {
    let me = lock::thread_id();
    match state.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            initialiser.store(me, Ordering::Relaxed);
            core();
            state.store(2, Ordering::Release);
            services();
            state.store(3, Ordering::Release);
        }
        Err(_) => {
            // The initialiser's own allocations while it registers services.
            if initialiser.load(Ordering::Relaxed) == me && state.load(Ordering::Acquire) >= 2 {
                return;
            }
            while state.load(Ordering::Acquire) < 3 {
                core::hint::spin_loop();
            }
        }
    }
}

/// Runs when the dynamic loader initialises the library.
#[cfg(not(test))]
#[link_section = ".text.hot.rmalloc"]
extern "C" fn at_load() {
    ensure();
}

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = at_load;

#[cfg(test)]
pub(crate) fn is_ready() -> bool {
    STATE.load(Ordering::Acquire) >= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    static T_STATE: AtomicU8 = AtomicU8::new(0);
    static T_INIT: AtomicUsize = AtomicUsize::new(0);
    static SERVICES_DONE: AtomicBool = AtomicBool::new(false);
    static NESTED_RETURNED: AtomicBool = AtomicBool::new(false);

    fn t_core() {}

    fn t_services() {
        // Registering may allocate: the initialiser must get through.
        run(&T_STATE, &T_INIT, t_core, t_services);
        NESTED_RETURNED.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        SERVICES_DONE.store(true, Ordering::Release);
    }

    #[test]
    fn no_other_thread_passes_before_services_are_registered() {
        let first = std::thread::spawn(|| run(&T_STATE, &T_INIT, t_core, t_services));
        while T_STATE.load(Ordering::Acquire) < 2 {
            std::hint::spin_loop();
        }
        // A second thread arriving while the services are being registered.
        run(&T_STATE, &T_INIT, t_core, t_services);
        assert!(
            SERVICES_DONE.load(Ordering::Acquire),
            "a thread got past initialisation before the thread-exit key and \
             fork handlers were registered"
        );
        first.join().unwrap();
        assert!(NESTED_RETURNED.load(Ordering::Relaxed));
        assert_eq!(T_STATE.load(Ordering::Acquire), 3);
    }
}
