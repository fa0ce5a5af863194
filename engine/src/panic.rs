//! Which panics end the process.
//!
//! `cdrs run` exits on a panic (a dead partition worker or delivery lane
//! would hold its records forever), except inside [`contained`]: work whose
//! caller already turns a panic into an error answer — compiling and
//! swapping plugins, reloading the config — on `spawn_blocking` threads,
//! whose `JoinError` reports it.

use std::cell::Cell;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic in it is the caller's to handle (see the module).
pub fn contained<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CONTAINED.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CONTAINED.with(|c| c.replace(true)));
    f()
}

/// Whether this thread is inside [`contained`] (for a panic hook).
pub fn is_contained() -> bool {
    CONTAINED.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_is_scoped_to_the_closure_and_its_thread() {
        assert!(!is_contained());
        let inside = contained(|| {
            let other = std::thread::spawn(is_contained).join().unwrap();
            (is_contained(), other)
        });
        assert_eq!(inside, (true, false));
        assert!(!is_contained());
        let r = std::panic::catch_unwind(|| contained(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!is_contained(), "reset after a panic too");
    }
}
