//! The mount's open-file table: one entry per inode open here, counted by its handles. An
//! entry's count and its presence in the table change together, under the table's lock, so an
//! entry that an open is taking is never removed under it, and an inode never has two entries
//! (two write buffers whose commits would undo each other).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

pub struct Entry<T> {
    pub ino: u64,
    value: T,
}

impl<T> Deref for Entry<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

struct Slot<T> {
    entry: Arc<Entry<T>>,
    /// Handles open on the entry.
    opens: usize,
}

pub struct OpenTable<T> {
    slots: Mutex<HashMap<u64, Slot<T>>>,
}

impl<T> Default for OpenTable<T> {
    fn default() -> Self {
        OpenTable { slots: Mutex::new(HashMap::new()) }
    }
}

impl<T> OpenTable<T> {
    /// The inode's entry with one more handle, made by `make` if there is none; `true` if it
    /// was made now.
    pub fn take(&self, ino: u64, make: impl FnOnce() -> T) -> (Arc<Entry<T>>, bool) {
        let mut slots = self.slots.lock().unwrap();
        let mut fresh = false;
        let slot = slots.entry(ino).or_insert_with(|| {
            fresh = true;
            Slot { entry: Arc::new(Entry { ino, value: make() }), opens: 0 }
        });
        slot.opens += 1;
        (slot.entry.clone(), fresh)
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Entry<T>>> {
        self.slots.lock().unwrap().get(&ino).map(|s| s.entry.clone())
    }

    pub fn entries(&self) -> Vec<Arc<Entry<T>>> {
        self.slots.lock().unwrap().values().map(|s| s.entry.clone()).collect()
    }

    /// Handles open on `e` (0 once closed with unsaved bytes, or gone).
    pub fn opens(&self, e: &Arc<Entry<T>>) -> usize {
        self.slots.lock().unwrap().get(&e.ino).filter(|s| Arc::ptr_eq(&s.entry, e)).map_or(0, |s| s.opens)
    }

    /// One handle of `e` fewer; then [`OpenTable::leave_if_unused`]. Whether `e` left.
    pub fn put_back(&self, e: &Arc<Entry<T>>, may_leave: impl FnOnce() -> bool) -> bool {
        let mut slots = self.slots.lock().unwrap();
        let Some(slot) = slots.get_mut(&e.ino).filter(|s| Arc::ptr_eq(&s.entry, e)) else {
            debug_assert!(false, "a handle of an entry that is not in the table");
            return false;
        };
        slot.opens = slot.opens.saturating_sub(1);
        Self::leave(&mut slots, e, may_leave)
    }

    /// `e` leaves the table if no handle holds it and `may_leave` (run under the table lock,
    /// the caller holding the entry's state) agrees. Whether it left.
    pub fn leave_if_unused(&self, e: &Arc<Entry<T>>, may_leave: impl FnOnce() -> bool) -> bool {
        Self::leave(&mut self.slots.lock().unwrap(), e, may_leave)
    }

    fn leave(slots: &mut HashMap<u64, Slot<T>>, e: &Arc<Entry<T>>, may_leave: impl FnOnce() -> bool) -> bool {
        let unused = slots.get(&e.ino).is_some_and(|s| Arc::ptr_eq(&s.entry, e) && s.opens == 0);
        if unused && may_leave() {
            slots.remove(&e.ino);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_entry_stays_while_a_handle_holds_it_and_leaves_with_the_last() {
        let t = OpenTable::default();
        let (a, fresh) = t.take(1, || "a");
        assert!(fresh);
        let (b, fresh) = t.take(1, || "b");
        assert!(!fresh && Arc::ptr_eq(&a, &b), "a second open joins the first entry");
        assert!(!t.put_back(&a, || true));
        assert_eq!(t.opens(&b), 1);
        assert!(t.put_back(&b, || true));
        assert!(t.get(1).is_none());
    }

    #[test]
    fn an_entry_with_unsaved_bytes_stays_after_its_last_handle_until_saved() {
        let t = OpenTable::default();
        let (a, _) = t.take(1, || ());
        assert!(!t.put_back(&a, || false));
        assert_eq!(t.opens(&a), 0);
        let (b, fresh) = t.take(1, || ());
        assert!(!fresh && Arc::ptr_eq(&a, &b), "an open of a file closed with unsaved bytes takes its buffer");
        assert!(!t.leave_if_unused(&b, || true), "a handle holds it");
        assert!(!t.put_back(&b, || false));
        assert!(t.leave_if_unused(&a, || true));
        assert!(t.get(1).is_none());
    }

    /// Threads open and close one inode as fast as they can. While a thread holds a handle,
    /// the table must show that thread's entry, and no two entries of the inode may be alive
    /// at once. With the count taken after the table lock was let go (the shape before this
    /// module), a close in between removed an entry that an open was taking: the check below
    /// failed within a few thousand rounds.
    #[test]
    fn concurrent_opens_and_closes_never_make_two_entries() {
        let t = Arc::new(OpenTable::default());
        let live = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (t, live) = (t.clone(), live.clone());
                std::thread::spawn(move || {
                    for round in 0..200_000 {
                        let (e, fresh) = t.take(7, || ());
                        if fresh {
                            assert_eq!(live.fetch_add(1, Ordering::SeqCst), 0, "round {round}: a second entry of one inode");
                        }
                        let shown = t.get(7).expect("an entry with a handle left the table");
                        assert!(Arc::ptr_eq(&shown, &e), "round {round}: the table shows another entry than the one this handle holds");
                        t.put_back(&e, || {
                            live.fetch_sub(1, Ordering::SeqCst);
                            true
                        });
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(t.get(7).is_none());
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
