//! A fixed pool: a set of connections (or stores), each behind its own lock. A caller
//! takes the first free one, or else waits for the next one in turn, so concurrent
//! callers spread over them and a slow one holds only its own.
//!
//! The log store's readers (`udn_bins::collector::Collector`) and the control plane's
//! SQLite readers ([`crate::control`]) are such pools. PostgreSQL connections are pooled
//! by [`crate::pg`], which also replaces lost ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A fixed set of `T`s handed out one caller at a time each.
#[derive(Debug)]
pub struct Pool<T> {
    slots: Vec<Mutex<T>>,
    next: AtomicUsize,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool::new(Vec::new())
    }
}

impl<T> Pool<T> {
    /// A pool of `items`.
    pub fn new(items: Vec<T>) -> Pool<T> {
        Pool {
            slots: items.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many items the pool holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The first free item, starting after the previous caller's, else the next one in
    /// turn (waiting for it); `None` when the pool is empty. A lock poisoned by a panic
    /// is taken over (the item is a connection: the adapter checks it is usable).
    pub fn get(&self) -> Option<MutexGuard<'_, T>> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.slots[(start + i) % n].try_lock() {
                return Some(guard);
            }
        }
        Some(
            self.slots[start % n]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_spread_over_free_items_and_wait_when_none_is() {
        let pool = Pool::new(vec![0, 1, 2]);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        let c = pool.get().unwrap();
        let mut seen = vec![*a, *b, *c];
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![0, 1, 2],
            "three callers hold three different items"
        );
        let freed = *b;
        drop(b);
        assert_eq!(*pool.get().unwrap(), freed, "the one free item is found");
        assert!(Pool::<u8>::default().get().is_none());
    }
}
