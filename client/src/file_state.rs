//! What one open file holds locally: one state per block, and the small-file (inline) content.
//!
//! Every block index has at most one [`Block`] state, changed only through the methods here:
//!
//! ```text
//!            write                seal               upload ok            commit
//!   (none) ───────► Dirty ───────────────► Uploading ───────────► Uploaded ───────► Committed
//!                    ▲  ▲   upload failed      │  write (copy; the upload goes stale)  │
//!                    │  └──────────────────────┘◄───────────────────────────────────────┘
//!                    └──────────────── write (read-modify-write) ────────────────────────
//! ```
//!
//! A file whose content the metadata server holds inline (small files) keeps it in `inline`;
//! once the file outgrows it, the content becomes a dirty block 0 and `server_inline` remembers
//! that the server still holds the inline copy: a block commit deletes it there, so no commit may
//! go out before block 0 itself is uploaded (otherwise a crash would lose those bytes).
//!
//! A committed block may carry patches (`tessera_common::patch`). A dirty block that began as a
//! committed one remembers that entry and the range written since (an [`Edit`]): if the range
//! is small, a flush saves it as one more patch of that entry instead of uploading the block
//! (Dirty → Committed with the patch added).

use crate::error::FsError;
use std::collections::BTreeMap;
use std::sync::Arc;
use tessera_common::patch::{self as patch_rules, Totals, PATCH_BLOCK_BYTES};
use tessera_common::proto::meta::{BlockRef, Patch};

#[derive(Debug)]
pub enum Block {
    /// Being written here: the block's bytes up to its last written byte.
    Dirty(Vec<u8>),
    /// Sealed and being uploaded; `upload` tells this upload from an earlier, stale one.
    Uploading { data: Arc<Vec<u8>>, upload: u64 },
    /// On the chunk servers, not yet in the committed block map.
    Uploaded(BlockRef),
    /// In the block map the metadata server has.
    Committed(BlockRef),
}

/// A block on the chunk servers and the patches over it (none unless committed with some).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub block: BlockRef,
    pub patches: Option<Arc<Vec<Patch>>>,
}

impl Stored {
    fn patches(&self) -> &[Patch] {
        self.patches.as_deref().map_or(&[], |p| p.as_slice())
    }

    /// Bytes of the block with its patches.
    pub fn len(&self) -> u64 {
        patch_rules::logical_len(self.block.len, self.patches())
    }

    /// Bytes `[from, from + n)` of the block with its patches (zeros past its end), given the
    /// stored block's bytes `data`.
    pub fn bytes(&self, data: &[u8], from: u64, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        patch_rules::read(&mut out, from, data, self.block.len as u64, self.patches());
        out
    }
}

/// Where the bytes of one block of a read come from.
pub enum Src {
    Hole,
    /// Bytes of the block from block offset `.1`.
    Bytes(Arc<Vec<u8>>, usize),
    Block(Stored),
}

/// A dirty block that began as committed entry `base`: bytes `[lo, hi)` were written since.
#[derive(Clone, Copy, Debug)]
struct Edit {
    base: BlockRef,
    lo: usize,
    hi: usize,
}

/// Most blocks of one file whose bytes are kept after a patch commit (`FileState::kept`): as
/// many as it may have dirty, so that small writes spread over a 64 MiB file (fio's synced
/// random writes) all find theirs.
const KEPT_BLOCKS: usize = crate::fs::MAX_DIRTY_BLOCKS;

#[derive(Default)]
pub struct FileState {
    /// The block map and size were read from the metadata server at least once.
    pub loaded: bool,
    pub size: u64,
    /// The size the metadata server has (as of our last commit or load).
    pub committed_size: u64,
    /// The size changed here since the last commit.
    pub size_dirty: bool,
    blocks: BTreeMap<u64, Block>,
    /// Committed inline content of a small file (the start of block 0; zeros follow).
    inline: Option<Arc<Vec<u8>>>,
    /// The metadata server holds inline data that a block commit would delete.
    server_inline: bool,
    next_upload: u64,
    /// Patches of committed entries, as the metadata server has them.
    patches: BTreeMap<u64, Arc<Vec<Patch>>>,
    edits: BTreeMap<u64, Edit>,
    /// The bytes of committed blocks with their patches, kept from the dirty copy a patch was
    /// taken from (at most [`KEPT_BLOCKS`]): the next write of such a block starts from them,
    /// instead of rebuilding the block from its stored bytes and patches (a 4 MiB copy for
    /// each small write between fsyncs).
    kept: BTreeMap<u64, Vec<u8>>,
    /// A background upload failed: reported by the next write, flush or fsync.
    pub error: Option<FsError>,
    pub last_read_end: u64,
}

impl FileState {
    /// State as loaded from the metadata server.
    pub fn load(&mut self, size: u64, map: Vec<(u64, BlockRef)>, inline: Option<Vec<u8>>, patches: Vec<(u64, Vec<Patch>)>) {
        debug_assert!(self.clean());
        self.size = size;
        self.committed_size = size;
        self.blocks = map.into_iter().map(|(i, b)| (i, Block::Committed(b))).collect();
        self.patches = patches.into_iter().filter(|(i, _)| self.blocks.contains_key(i)).map(|(i, p)| (i, Arc::new(p))).collect();
        self.edits.clear();
        self.kept.clear();
        self.inline = inline.map(Arc::new);
        self.server_inline = false;
        self.size_dirty = false;
        self.loaded = true;
    }

    /// A file just created here: empty, nothing to load.
    pub fn new_empty() -> Self {
        FileState { loaded: true, ..Default::default() }
    }

    /// Nothing here that the metadata server does not have.
    pub fn clean(&self) -> bool {
        !self.size_dirty && self.blocks.values().all(|b| matches!(b, Block::Committed(_)))
    }

    pub fn get(&self, idx: u64) -> Option<&Block> {
        self.blocks.get(&idx)
    }

    pub fn dirty_count(&self) -> usize {
        self.blocks.values().filter(|b| matches!(b, Block::Dirty(_))).count()
    }

    pub fn dirty_indexes(&self) -> Vec<u64> {
        self.blocks.iter().filter(|(_, b)| matches!(b, Block::Dirty(_))).map(|(i, _)| *i).collect()
    }

    pub fn uploaded(&self) -> Vec<(u64, BlockRef)> {
        self.blocks.iter().filter_map(|(i, b)| if let Block::Uploaded(r) = b { Some((*i, *r)) } else { None }).collect()
    }

    /// The bytes block `idx` starts from before a write of `n` bytes at `within`, if they must
    /// be fetched: `Err(block)` means read that block first (`Stored::bytes` of its whole
    /// length).
    pub fn write_base(&mut self, idx: u64, within: usize, n: usize) -> Result<Vec<u8>, Stored> {
        match self.blocks.get(&idx) {
            // `write` keeps the dirty bytes: no copy of them.
            Some(Block::Dirty(_)) => Ok(Vec::new()),
            Some(Block::Uploading { data, .. }) => Ok(data.as_ref().clone()),
            Some(Block::Uploaded(_)) | Some(Block::Committed(_)) => {
                let s = self.stored_at(idx).expect("a stored block");
                let kept = self.kept.remove(&idx);
                if within == 0 && n as u64 >= s.len() {
                    Ok(Vec::new())
                } else if let Some(d) = kept {
                    debug_assert_eq!(d.len() as u64, s.len());
                    Ok(d)
                } else {
                    Err(s)
                }
            }
            None => match (idx, &self.inline) {
                (0, Some(d)) if !(within == 0 && n >= d.len()) => Ok(d.as_ref().clone()),
                _ => Ok(Vec::new()),
            },
        }
    }

    /// Write `src` at `within` of block `idx`, whose current bytes are `base` unless it is
    /// already dirty. Returns the block's length afterwards.
    pub fn write(&mut self, idx: u64, base: Vec<u8>, within: usize, src: &[u8]) -> usize {
        let (lo, hi) = (within, within + src.len());
        match self.blocks.get(&idx) {
            Some(Block::Committed(b)) => {
                self.edits.insert(idx, Edit { base: *b, lo, hi });
                self.kept.remove(&idx);
            }
            Some(Block::Dirty(_)) => {
                if let Some(e) = self.edits.get_mut(&idx) {
                    e.lo = e.lo.min(lo);
                    e.hi = e.hi.max(hi);
                }
            }
            _ => {}
        }
        let buf = match self.blocks.get_mut(&idx) {
            Some(Block::Dirty(d)) => d,
            _ => {
                self.blocks.insert(idx, Block::Dirty(base));
                match self.blocks.get_mut(&idx) {
                    Some(Block::Dirty(d)) => d,
                    _ => unreachable!("just inserted"),
                }
            }
        };
        if buf.len() < within + src.len() {
            buf.resize(within + src.len(), 0);
        }
        buf[within..within + src.len()].copy_from_slice(src);
        buf.len()
    }

    /// Whether dirty block `idx` should be uploaded now, before a flush: it is full, and if it
    /// is an edit of a committed block (which is full from its first write), the writing has
    /// reached the block's end (a writer going through it will not come back; one that overwrote
    /// it in 1 MiB writes had it uploaded after each) and is too large for a patch.
    pub fn full(&self, idx: u64, bs: u64) -> bool {
        let Some(Block::Dirty(d)) = self.blocks.get(&idx) else { return false };
        d.len() as u64 == bs && self.edits.get(&idx).is_none_or(|e| e.hi as u64 == bs && e.hi - e.lo > PATCH_BLOCK_BYTES)
    }

    /// Dirty → Uploading. Returns the bytes to upload and the upload's number.
    pub fn seal(&mut self, idx: u64) -> Option<(Arc<Vec<u8>>, u64)> {
        if !matches!(self.blocks.get(&idx), Some(Block::Dirty(_))) {
            return None;
        }
        self.edits.remove(&idx);
        let Some(Block::Dirty(d)) = self.blocks.remove(&idx) else { unreachable!() };
        let data = Arc::new(d);
        self.next_upload += 1;
        let upload = self.next_upload;
        self.blocks.insert(idx, Block::Uploading { data: data.clone(), upload });
        Some((data, upload))
    }

    /// An upload finished. Uploading → Uploaded, or back to Dirty (bytes kept) when it failed.
    /// A stale upload (the block was written again meanwhile) changes nothing.
    pub fn upload_done(&mut self, idx: u64, upload: u64, r: Result<BlockRef, FsError>) {
        let current = matches!(self.blocks.get(&idx), Some(Block::Uploading { upload: u, .. }) if *u == upload);
        match r {
            Ok(b) if current => {
                self.blocks.insert(idx, Block::Uploaded(b));
            }
            Ok(_) => {}
            Err(e) => {
                if current {
                    let Some(Block::Uploading { data, .. }) = self.blocks.remove(&idx) else { unreachable!() };
                    self.blocks.insert(idx, Block::Dirty(Arc::try_unwrap(data).unwrap_or_else(|d| d.as_ref().clone())));
                }
                self.error = Some(e);
            }
        }
    }

    /// The metadata server has these entries and `size`: Uploaded → Committed.
    pub fn committed(&mut self, entries: &[(u64, BlockRef)], size: u64) {
        for (i, b) in entries {
            if matches!(self.blocks.get(i), Some(Block::Uploaded(x)) if x == b) {
                self.blocks.insert(*i, Block::Committed(*b));
            }
            // The server's entry is the new block now, without patches.
            self.patches.remove(i);
            self.kept.remove(i);
            if *i == 0 {
                self.server_inline = false;
            }
        }
        self.committed_size = size;
    }

    /// A small file is committed as inline data: its size fits and it has at most a dirty
    /// block 0.
    pub fn is_small(&self) -> bool {
        self.size as usize <= tessera_common::INLINE_MAX && self.blocks.iter().all(|(i, b)| *i == 0 && matches!(b, Block::Dirty(_)))
    }

    /// The content to commit inline (None if it is not a small file or nothing changed).
    pub fn inline_to_commit(&self) -> Option<Vec<u8>> {
        if !self.is_small() || (self.blocks.is_empty() && !self.size_dirty) {
            return None;
        }
        let mut data = match self.blocks.get(&0) {
            Some(Block::Dirty(d)) => d.clone(),
            _ => self.inline.as_ref().map(|d| d.as_ref().clone()).unwrap_or_default(),
        };
        data.resize(self.size as usize, 0);
        Some(data)
    }

    /// The dirty blocks a flush may save as patches (index, the entry they were read from,
    /// the patch), within the bounds of `tessera_common::patch` as far as this mount knows.
    pub fn patches_to_commit(&self) -> Vec<(u64, BlockRef, Patch)> {
        let mut file = self.patches.values().fold(Totals::default(), |t, p| t + Totals::of(p));
        let mut out = Vec::new();
        for (idx, e) in &self.edits {
            let (Some(Block::Dirty(d)), true) = (self.blocks.get(idx), e.lo < e.hi) else { continue };
            let on = self.patches.get(idx).map_or(&[][..], |p| p.as_slice());
            if e.hi > d.len() || !patch_rules::fits(on, e.hi - e.lo) || !file.fits(e.hi - e.lo) {
                continue;
            }
            file.add(e.hi - e.lo);
            out.push((*idx, e.base, Patch { at: e.lo as u32, data: d[e.lo..e.hi].to_vec() }));
        }
        out
    }

    /// The metadata server added these patches and has `size`: their blocks are committed.
    pub fn patched(&mut self, list: Vec<(u64, BlockRef, Patch)>, size: u64) {
        for (idx, base, p) in list {
            self.edits.remove(&idx);
            if let Some(Block::Dirty(d)) = self.blocks.insert(idx, Block::Committed(base)) {
                if self.kept.len() >= KEPT_BLOCKS {
                    self.kept.pop_first();
                }
                self.kept.insert(idx, d);
            }
            Arc::make_mut(self.patches.entry(idx).or_default()).push(p);
        }
        self.committed_size = size;
    }

    /// The inline content `data` is committed.
    pub fn inline_committed(&mut self, data: Vec<u8>) {
        self.blocks.clear();
        self.patches.clear();
        self.edits.clear();
        self.kept.clear();
        self.committed_size = data.len() as u64;
        self.inline = Some(Arc::new(data));
        self.server_inline = false;
        self.size_dirty = false;
    }

    /// The file outgrew inline storage: its inline content becomes a dirty block 0 (unless
    /// block 0 has bytes of its own), and block commits wait for block 0.
    pub fn leave_inline(&mut self) {
        if self.is_small() {
            return;
        }
        if let Some(d) = self.inline.take() {
            self.blocks.entry(0).or_insert_with(|| Block::Dirty(d.as_ref().clone()));
            self.server_inline = true;
        }
    }

    /// Whether a commit of the uploaded blocks may go out now: not while the server's inline
    /// copy would be deleted before block 0 is uploaded.
    pub fn may_commit_blocks(&self) -> bool {
        !self.server_inline || matches!(self.blocks.get(&0), Some(Block::Uploaded(_)))
    }

    /// Whether block 0 must be sealed so that waiting commits can go out.
    pub fn block0_holds_commits(&self) -> bool {
        self.server_inline && matches!(self.blocks.get(&0), Some(Block::Dirty(_))) && self.blocks.values().any(|b| matches!(b, Block::Uploaded(_)))
    }

    /// End of the data known to be on the chunk servers (uploaded or committed blocks).
    pub fn stored_extent(&self, bs: u64) -> u64 {
        self.blocks
            .iter()
            .rev()
            .find_map(|(i, b)| match b {
                Block::Uploaded(_) | Block::Committed(_) => Some(i * bs + self.stored_at(*i).map_or(0, |s| s.len())),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Cut the local view at `size` (the metadata server has done the same).
    pub fn truncate(&mut self, size: u64, bs: u64) {
        if let Some(d) = self.inline.as_mut() {
            if d.len() as u64 > size {
                Arc::make_mut(d).truncate(size as usize);
            }
        }
        let end = size.div_ceil(bs);
        self.blocks.retain(|&i, _| i < end);
        self.patches.retain(|&i, _| i < end);
        self.edits.retain(|&i, _| i < end);
        // The block cut in the middle too.
        self.kept.retain(|&i, _| i < size / bs);
        if size % bs != 0 {
            let keep = (size % bs) as usize;
            let idx = size / bs;
            if let Some(p) = self.patches.get_mut(&idx) {
                patch_rules::clip(Arc::make_mut(p), keep as u64);
            }
            if let Some(e) = self.edits.get_mut(&idx) {
                e.hi = e.hi.min(keep);
                if e.lo >= e.hi {
                    // Nothing written here is left: the block goes up whole.
                    self.edits.remove(&idx);
                }
            }
            match self.blocks.get_mut(&idx) {
                Some(Block::Dirty(d)) => d.truncate(keep),
                Some(Block::Uploaded(b)) | Some(Block::Committed(b)) => b.len = b.len.min(keep as u32),
                Some(Block::Uploading { data, .. }) => {
                    let d = data[..keep.min(data.len())].to_vec();
                    self.blocks.insert(size / bs, Block::Dirty(d));
                }
                None => {}
            }
        }
        self.size = size;
        self.committed_size = size;
    }

    /// Punch a hole over the whole blocks `[first, end)`: whatever state they are in here is
    /// dropped (the metadata server drops its entries; an upload in flight goes stale). Block 0
    /// takes the inline content with it.
    pub fn punch(&mut self, first: u64, end: u64) {
        self.blocks.retain(|&i, _| i < first || i >= end);
        self.patches.retain(|&i, _| i < first || i >= end);
        self.edits.retain(|&i, _| i < first || i >= end);
        self.kept.retain(|&i, _| i < first || i >= end);
        if first == 0 && end > 0 {
            self.inline = None;
            self.server_inline = false;
        }
    }

    /// The metadata server copied whole blocks into `[first, first + count)` by reference:
    /// those are now `entries` there (the rest of the range holes), and the size is `size`.
    /// Block 0 takes the inline content with it, as in `punch`.
    pub fn copied(&mut self, first: u64, count: u64, entries: Vec<(u64, BlockRef)>, size: u64) {
        debug_assert!(self.clean());
        self.punch(first, first + count);
        self.blocks.extend(entries.into_iter().map(|(i, b)| (i, Block::Committed(b))));
        self.size = size;
        self.committed_size = size;
    }

    /// Bytes of committed inline content (the start of the file, kept in the metadata).
    pub fn inline_len(&self) -> u64 {
        self.inline.as_ref().map_or(0, |d| d.len() as u64)
    }

    /// Whether block `idx` holds data (in any state, or as inline content); an absent block is
    /// a hole.
    pub fn has_data(&self, idx: u64) -> bool {
        self.blocks.contains_key(&idx) || (idx == 0 && self.inline.is_some())
    }

    /// The first block at or after `idx` that holds data.
    pub fn next_data(&self, idx: u64) -> Option<u64> {
        let stored = self.blocks.range(idx..).next().map(|(i, _)| *i);
        if idx == 0 && self.inline.is_some() {
            return Some(0);
        }
        stored
    }

    /// Where the bytes `[lo, hi)` (block offsets) of block `idx` come from.
    pub fn source(&self, idx: u64, lo: u64, hi: u64) -> Src {
        match self.blocks.get(&idx) {
            Some(Block::Dirty(d)) => {
                // Copy only the part this read needs.
                let hi = hi.min(d.len() as u64);
                let part = if lo < hi { d[lo as usize..hi as usize].to_vec() } else { Vec::new() };
                Src::Bytes(Arc::new(part), lo as usize)
            }
            Some(Block::Uploading { data, .. }) => Src::Bytes(data.clone(), 0),
            Some(Block::Uploaded(_)) | Some(Block::Committed(_)) => Src::Block(self.stored_at(idx).expect("a stored block")),
            None => match (idx, &self.inline) {
                (0, Some(d)) => Src::Bytes(d.clone(), 0),
                _ => Src::Hole,
            },
        }
    }

    /// A digest of the content as last loaded or committed: size, block map and inline bytes.
    /// Blocks are named by their BLAKE3 hash, so equal digests mean equal bytes. Meaningful
    /// when the state is clean (the page cache validation at open compares two of them).
    pub fn content_id(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(&self.size.to_le_bytes());
        for (i, b) in &self.blocks {
            if let Block::Committed(r) | Block::Uploaded(r) = b {
                h.update(&i.to_le_bytes());
                h.update(&r.id.0);
                h.update(&r.len.to_le_bytes());
            }
            if let (Block::Committed(_), Some(patches)) = (b, self.patches.get(i)) {
                for p in patches.iter() {
                    h.update(b"patch");
                    h.update(&p.at.to_le_bytes());
                    h.update(&(p.data.len() as u64).to_le_bytes());
                    h.update(&p.data);
                }
            }
        }
        if let Some(d) = &self.inline {
            h.update(b"inline");
            h.update(d);
        }
        h.finalize()
    }

    /// Block `idx` if it is on the chunk servers, with the patches the metadata server has
    /// over it if it is committed.
    fn stored_at(&self, idx: u64) -> Option<Stored> {
        match self.blocks.get(&idx) {
            Some(Block::Uploaded(b)) => Some(Stored { block: *b, patches: None }),
            Some(Block::Committed(b)) => Some(Stored { block: *b, patches: self.patches.get(&idx).cloned() }),
            _ => None,
        }
    }

    /// A stored block worth prefetching at `idx` (not shadowed by local bytes).
    pub fn stored(&self, idx: u64) -> Option<BlockRef> {
        match self.blocks.get(&idx) {
            Some(Block::Uploaded(b)) | Some(Block::Committed(b)) => Some(*b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::BlockId;

    fn bref(data: &[u8]) -> BlockRef {
        BlockRef { id: BlockId::of(data), len: data.len() as u32 }
    }

    #[test]
    fn a_block_moves_dirty_uploading_uploaded_committed() {
        let mut s = FileState::new_empty();
        assert!(s.clean());
        s.write(3, Vec::new(), 0, b"abc");
        s.size = 3 * 4096 + 3;
        s.size_dirty = true;
        assert!(matches!(s.get(3), Some(Block::Dirty(d)) if d == b"abc"));
        assert!(!s.clean());
        let (data, up) = s.seal(3).unwrap();
        assert!(s.seal(3).is_none(), "only a dirty block can be sealed");
        s.upload_done(3, up, Ok(bref(&data)));
        assert_eq!(s.uploaded(), vec![(3, bref(b"abc"))]);
        s.committed(&s.uploaded(), s.size);
        s.size_dirty = false;
        assert!(matches!(s.get(3), Some(Block::Committed(_))));
        assert!(s.clean());
        assert_eq!(s.stored_extent(4096), 3 * 4096 + 3);
    }

    #[test]
    fn a_failed_upload_keeps_the_bytes_and_reports() {
        let mut s = FileState::new_empty();
        s.write(0, Vec::new(), 0, b"keep me");
        let (_, up) = s.seal(0).unwrap();
        s.upload_done(0, up, Err(FsError::Io("down".into())));
        assert!(matches!(s.get(0), Some(Block::Dirty(d)) if d == b"keep me"));
        assert!(s.error.take().is_some());
        assert_eq!(s.dirty_indexes(), vec![0]);
    }

    #[test]
    fn a_write_during_upload_makes_the_upload_stale() {
        let mut s = FileState::new_empty();
        s.write(1, Vec::new(), 0, b"old");
        let (data, up) = s.seal(1).unwrap();
        let base = s.write_base(1, 0, 1).unwrap();
        assert_eq!(base, b"old");
        s.write(1, base, 0, b"n");
        s.upload_done(1, up, Ok(bref(&data)));
        assert!(matches!(s.get(1), Some(Block::Dirty(d)) if d == b"nld"), "the newer bytes win");
        assert!(s.uploaded().is_empty());
        // A later upload of the same index is current again.
        let (d2, up2) = s.seal(1).unwrap();
        assert!(up2 > up);
        s.upload_done(1, up2, Ok(bref(&d2)));
        assert_eq!(s.uploaded(), vec![(1, bref(b"nld"))]);
    }

    #[test]
    fn a_partial_overwrite_of_a_stored_block_reads_it_first() {
        let mut s = FileState::default();
        s.load(8192, vec![(0, bref(&[1; 4096])), (1, bref(&[2; 4096]))], None, vec![]);
        assert_eq!(s.write_base(0, 10, 5), Err(Stored { block: bref(&[1; 4096]), patches: None }));
        assert_eq!(s.write_base(1, 0, 4096), Ok(Vec::new()), "a full overwrite needs no read");
        assert_eq!(s.write_base(7, 10, 5), Ok(Vec::new()), "a hole starts empty");
    }

    #[test]
    fn outgrowing_inline_holds_block_commits_until_block0_is_uploaded() {
        let mut s = FileState::default();
        s.load(5, vec![], Some(b"hello".to_vec()), vec![]);
        assert!(s.is_small());
        assert!(matches!(s.source(0, 0, 5), Src::Bytes(ref d, 0) if d.as_slice() == b"hello"));
        // Append past the inline limit, into block 1.
        s.write(1, Vec::new(), 0, b"more");
        s.size = 4096 + 4;
        s.size_dirty = true;
        assert!(!s.is_small());
        s.leave_inline();
        assert!(matches!(s.get(0), Some(Block::Dirty(d)) if d == b"hello"));
        let (d1, u1) = s.seal(1).unwrap();
        s.upload_done(1, u1, Ok(bref(&d1)));
        assert!(!s.may_commit_blocks(), "committing block 1 alone would delete the inline bytes");
        assert!(s.block0_holds_commits());
        let (d0, u0) = s.seal(0).unwrap();
        s.upload_done(0, u0, Ok(bref(&d0)));
        assert!(s.may_commit_blocks());
        let e = s.uploaded();
        s.committed(&e, 4100);
        s.size_dirty = false;
        assert!(s.clean());
        assert!(s.may_commit_blocks());
    }

    #[test]
    fn small_files_commit_inline() {
        let mut s = FileState::new_empty();
        assert_eq!(s.inline_to_commit(), None);
        s.write(0, Vec::new(), 0, b"tiny");
        s.size = 10;
        s.size_dirty = true;
        assert_eq!(s.inline_to_commit().unwrap(), b"tiny\0\0\0\0\0\0");
        s.inline_committed(b"tiny\0\0\0\0\0\0".to_vec());
        assert!(s.clean());
        assert_eq!(s.inline_to_commit(), None);
    }

    #[test]
    fn truncate_cuts_every_state() {
        let mut s = FileState::new_empty();
        s.write(0, Vec::new(), 0, &[1; 100]);
        s.write(1, Vec::new(), 0, &[2; 100]);
        let (_, up) = s.seal(0).unwrap();
        s.truncate(50, 4096);
        assert!(s.get(1).is_none());
        assert!(matches!(s.get(0), Some(Block::Dirty(d)) if d.len() == 50), "an uploading block is cut to a dirty copy");
        s.upload_done(0, up, Ok(bref(&[1; 100])));
        assert!(s.uploaded().is_empty(), "the upload of the longer block is stale");
        assert_eq!(s.size, 50);
    }
    #[test]
    fn a_small_edit_of_a_committed_block_is_saved_as_a_patch() {
        let bs = 4096;
        let base = bref(&[1; 4096]);
        let mut s = FileState::default();
        s.load(4096, vec![(0, base)], None, vec![(0, vec![Patch { at: 0, data: b"old".to_vec() }])]);
        let before = s.content_id();
        let Err(stored) = s.write_base(0, 100, 3) else { panic!("a partial overwrite reads the block") };
        let bytes = stored.bytes(&[1; 4096], 0, stored.len() as usize);
        assert_eq!(&bytes[..4], b"old\x01", "the base carries the patches");
        s.write(0, bytes, 100, b"xyz");
        assert!(!s.full(0, bs), "a small edit of a full block waits for the flush");
        let list = s.patches_to_commit();
        assert_eq!(list, vec![(0, base, Patch { at: 100, data: b"xyz".to_vec() })]);
        s.patched(list, 4096);
        assert!(s.clean());
        let Src::Block(stored) = s.source(0, 0, 4096) else { panic!("committed") };
        let got = stored.bytes(&[1; 4096], 98, 6);
        assert_eq!(got, b"\x01\x01xyz\x01");
        assert_ne!(s.content_id(), before, "patches are part of the content");
        // Once committed as a block, the entry has no patches.
        s.write(0, stored.bytes(&[1; 4096], 0, 4096), 0, b"new");
        let (d, up) = s.seal(0).unwrap();
        s.upload_done(0, up, Ok(bref(&d)));
        s.committed(&s.uploaded(), 4096);
        let Src::Block(stored) = s.source(0, 0, 4096) else { panic!("committed") };
        assert_eq!(stored.patches, None);
    }

    #[test]
    fn a_patched_block_keeps_its_bytes_for_the_next_write() {
        let base = bref(&[1; 4096]);
        let mut s = FileState::default();
        s.load(4096, vec![(0, base)], None, vec![]);
        let Err(stored) = s.write_base(0, 100, 3) else { panic!("the first write reads the block") };
        s.write(0, stored.bytes(&[1; 4096], 0, 4096), 100, b"xyz");
        s.patched(s.patches_to_commit(), 4096);
        // The next small write starts from the bytes at hand: the block with its patch.
        let kept = s.write_base(0, 200, 2).expect("no read of the block");
        let Src::Block(stored) = s.source(0, 0, 4096) else { panic!("committed") };
        assert_eq!(kept, stored.bytes(&[1; 4096], 0, 4096));
        assert_eq!(&kept[98..104], b"\x01\x01xyz\x01");
        s.write(0, kept, 200, b"ab");
        s.patched(s.patches_to_commit(), 4096);
        let Src::Block(stored) = s.source(0, 0, 4096) else { panic!("committed") };
        assert_eq!(&stored.bytes(&[1; 4096], 0, 4096)[198..203], b"\x01\x01ab\x01");
        // Cut inside the block: what was kept is gone, and the block is read again.
        s.truncate(3000, 4096);
        assert!(s.write_base(0, 10, 1).is_err(), "a truncated block is read again");
        // So after a reload.
        let Err(stored) = s.write_base(0, 100, 1) else { panic!() };
        s.write(0, stored.bytes(&[1; 4096], 0, 3000), 100, b"q");
        s.patched(s.patches_to_commit(), 3000);
        s.load(3000, vec![(0, base)], None, vec![]);
        assert!(s.write_base(0, 10, 1).is_err(), "a reloaded block is read again");
    }

    #[test]
    fn at_most_kept_blocks_of_a_file_keep_their_bytes() {
        let n = KEPT_BLOCKS as u64 + 1;
        let base = bref(&[1; 4096]);
        let mut s = FileState::default();
        s.load(n * 4096, (0..n).map(|i| (i, base)).collect(), None, vec![]);
        for i in 0..n {
            s.write(i, vec![1; 4096], 100, b"xyz");
        }
        s.patched(s.patches_to_commit(), n * 4096);
        let kept = (0..n).filter(|&i| s.write_base(i, 10, 1).is_ok()).count();
        assert_eq!(kept, KEPT_BLOCKS, "{n} blocks patched at once");
    }

    #[test]
    fn an_edit_past_the_patch_bound_goes_up_whole() {
        let bs = 1 << 20;
        let mut s = FileState::default();
        s.load(bs, vec![(0, bref(&vec![1; bs as usize]))], None, vec![]);
        let n = tessera_common::patch::PATCH_BLOCK_BYTES + 1;
        s.write(0, vec![1; bs as usize], 10, &vec![2; n]);
        assert!(!s.full(0, bs), "the writer has not passed the block's end: it may write more of it");
        assert!(s.patches_to_commit().is_empty(), "at the flush it goes whole");
    }

    #[test]
    fn a_block_overwritten_in_place_in_large_writes_is_sealed_once_at_its_end() {
        let bs = 1 << 20;
        let quarter = bs as usize / 4;
        let mut s = FileState::default();
        s.load(bs, vec![(0, bref(&vec![1; bs as usize]))], None, vec![]);
        let mut base = vec![1; bs as usize];
        for k in 0..4 {
            s.write(0, std::mem::take(&mut base), k * quarter, &vec![2; quarter]);
            assert_eq!(s.full(0, bs), k == 3, "after write {k} of 4");
        }
        let (d, _) = s.seal(0).unwrap();
        assert_eq!(*d, vec![2; bs as usize]);
    }

    #[test]
    fn a_truncate_cuts_patches_and_edits() {
        let mut s = FileState::default();
        s.load(300, vec![(0, bref(&[1; 200]))], None, vec![(0, vec![Patch { at: 150, data: vec![2; 150] }])]);
        assert_eq!(s.stored_extent(4096), 300, "the patch reaches past the stored bytes");
        s.truncate(160, 4096);
        let Src::Block(stored) = s.source(0, 0, 160) else { panic!("committed") };
        assert_eq!(stored.len(), 160);
        assert_eq!(stored.patches.as_deref().unwrap(), &vec![Patch { at: 150, data: vec![2; 10] }]);
        // An edit cut away entirely leaves a dirty block that goes up whole.
        let Err(st) = s.write_base(0, 150, 5) else { panic!() };
        s.write(0, st.bytes(&[1; 200], 0, 160), 150, &[3; 5]);
        s.truncate(100, 4096);
        assert!(s.patches_to_commit().is_empty());
        assert_eq!(s.dirty_indexes(), vec![0]);
    }
}
