//! Counts forward multiply-adds: layers call [`add_macs`]; [`count`] runs a closure with the
//! counter on and returns what it added up. Off (and free) otherwise.

use std::cell::Cell;

thread_local! {
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Records `n` multiply-adds if a count is active on this thread.
pub fn add_macs(n: u64) {
    MACS.with(|m| {
        if let Some(v) = m.get() {
            m.set(Some(v.saturating_add(n)));
        }
    });
}

/// Runs `f` and returns its result with the multiply-adds the layers recorded meanwhile.
pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = MACS.with(|m| m.replace(Some(0)));
    let out = f();
    let n = MACS.with(|m| m.replace(before)).unwrap_or(0);
    (out, n)
}
