//! Whether the kernel's page cache of a file may be kept when it is opened again.
//!
//! Without `FOPEN_KEEP_CACHE` the kernel drops a file's cached pages on every open, so reading
//! an unchanged file costs its bytes again each time. We keep them when the content is the one
//! the pages hold. The content is named by [`FileState::content_id`](crate::file_state::FileState::content_id)
//! (size, block map of BLAKE3 ids, inline bytes): a file's pages were filled from the content
//! the client's state had, and writes through this mount go through the same pages, so when an
//! open file leaves the open-file table its content id is remembered here; the next open
//! compares it with the content id loaded from the metadata server. Any change by another
//! mount changes a block id or the size, and drops the pages (and the cached attributes, so
//! the new size is seen at once).

use std::collections::HashMap;
use std::sync::Mutex;

/// Files remembered at most; past this the table starts over (a forgotten file's pages are
/// dropped at its next open, which is only slower).
const MAX_MARKS: usize = 1 << 18;

/// The content id each closed file's cached pages were filled from.
#[derive(Default)]
pub struct PageMarks {
    marks: Mutex<HashMap<u64, blake3::Hash>>,
}

impl PageMarks {
    /// `ino` was closed with its pages showing content `id`.
    pub fn remember(&self, ino: u64, id: blake3::Hash) {
        let mut m = self.marks.lock().unwrap();
        if m.len() >= MAX_MARKS && !m.contains_key(&ino) {
            m.clear();
        }
        m.insert(ino, id);
    }

    /// What `ino`'s pages were filled from, if known; the caller now tracks it.
    pub fn take(&self, ino: u64) -> Option<blake3::Hash> {
        self.marks.lock().unwrap().remove(&ino)
    }
}

/// Keep the pages only when they were filled from exactly the content the file has now.
pub fn keep(pages_from: Option<blake3::Hash>, now: blake3::Hash) -> bool {
    pages_from == Some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_kept_only_for_the_content_they_were_filled_from() {
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        let m = PageMarks::default();
        assert!(!keep(m.take(1), a), "a file never closed here: nothing to keep");
        m.remember(1, a);
        assert!(keep(m.take(1), a));
        m.remember(1, a);
        assert!(!keep(m.take(1), b), "changed elsewhere");
        assert_eq!(m.take(1), None, "taken by the open");
    }
}
