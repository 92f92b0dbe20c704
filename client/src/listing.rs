//! Open directories: the page of entries each handle fetched last. The kernel asks for a
//! listing one reply buffer at a time (a few dozen entries with attributes), so without this
//! every buffer would cost a round trip that fetches a whole page and keeps a part of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_common::proto::meta::{Attr, DirEntry};

/// Entries fetched per round trip (the metadata server answers at most 1024).
pub const PAGE: u32 = 512;
/// How long a fetched page answers the kernel: the attribute TTL, so that a page's
/// attributes are never older than those the kernel itself caches.
const FRESH: Duration = Duration::from_secs(1);

/// One fetched page: the entries after cookie `after`, in cookie order.
#[derive(Clone)]
pub struct Page {
    pub after: u64,
    /// Each entry with its attributes when the page came from `ReadDirPlus`.
    pub entries: Arc<Vec<(DirEntry, Option<Attr>)>>,
    /// The directory has no entries past this page.
    pub done: bool,
    at: Instant,
}

impl Page {
    pub fn new(after: u64, entries: Vec<(DirEntry, Option<Attr>)>, done: bool) -> Self {
        Page { after, entries: Arc::new(entries), done, at: Instant::now() }
    }

    /// The entries of this page past cookie `after`, if the page covers that position: it
    /// started at or before it and either holds an entry past it or is the directory's last.
    /// `plus`: attributes are needed.
    fn from(&self, after: u64, plus: bool) -> Option<usize> {
        if after < self.after || self.at.elapsed() > FRESH {
            return None;
        }
        if plus && self.entries.first().is_some_and(|(_, a)| a.is_none()) {
            return None;
        }
        let i = self.entries.partition_point(|(e, _)| e.cookie <= after);
        (i < self.entries.len() || self.done).then_some(i)
    }
}

/// The open directory handles of a mount.
#[derive(Default)]
pub struct Listings {
    pages: Mutex<HashMap<u64, Option<Page>>>,
    next: AtomicU64,
}

impl Listings {
    /// A new handle (`opendir`).
    pub fn open(&self) -> u64 {
        // Directory handles are their own number space (the kernel keeps them apart from
        // files'); 0 is left unused.
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.pages.lock().unwrap().insert(fh, None);
        fh
    }

    /// Drop `fh`'s page: its listing starts again.
    pub fn forget(&self, fh: u64) {
        if let Some(slot) = self.pages.lock().unwrap().get_mut(&fh) {
            *slot = None;
        }
    }

    pub fn release(&self, fh: u64) {
        self.pages.lock().unwrap().remove(&fh);
    }

    /// The kept page of `fh` and where in it the entries after `after` start, if it has them.
    pub fn cached(&self, fh: u64, after: u64, plus: bool) -> Option<(Page, usize)> {
        let pages = self.pages.lock().unwrap();
        let page = pages.get(&fh)?.as_ref()?;
        page.from(after, plus).map(|i| (page.clone(), i))
    }

    /// Keep `page` as `fh`'s (a handle released meanwhile keeps nothing).
    pub fn keep(&self, fh: u64, page: Page) {
        if let Some(slot) = self.pages.lock().unwrap().get_mut(&fh) {
            *slot = Some(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::proto::meta::FileKind;

    fn e(cookie: u64) -> (DirEntry, Option<Attr>) {
        (DirEntry { name: format!("f{cookie}").into_bytes(), ino: cookie + 100, kind: FileKind::File, cookie }, None)
    }

    #[test]
    fn a_page_answers_only_the_positions_it_covers() {
        let l = Listings::default();
        let fh = l.open();
        assert!(l.cached(fh, 0, false).is_none());
        l.keep(fh, Page::new(2, vec![e(5), e(7), e(9)], false));
        assert_eq!(l.cached(fh, 2, false).unwrap().1, 0);
        assert_eq!(l.cached(fh, 5, false).unwrap().1, 1);
        assert_eq!(l.cached(fh, 6, false).unwrap().1, 1);
        // Past the page's last entry and more to come: fetch.
        assert!(l.cached(fh, 9, false).is_none());
        // Before the page started (a rewind): fetch.
        assert!(l.cached(fh, 1, false).is_none());
        // No attributes in the page: a readdirplus fetches.
        assert!(l.cached(fh, 2, true).is_none());
        // The directory's last page answers its end.
        l.keep(fh, Page::new(2, vec![e(5)], true));
        assert_eq!(l.cached(fh, 5, false).unwrap().1, 1);
        l.forget(fh);
        assert!(l.cached(fh, 2, false).is_none(), "a rewind fetches");
        l.release(fh);
        assert!(l.cached(fh, 2, false).is_none());
        l.keep(fh, Page::new(2, vec![e(5)], true));
        assert!(l.cached(fh, 2, false).is_none(), "a released handle keeps nothing");
        assert_ne!(l.open(), fh);
    }
}
