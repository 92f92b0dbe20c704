//! The file-system core, independent of FUSE: open files with their write buffers, the read
//! path and the metadata operations. Every method is async and returns an errno-carrying error.

use crate::blocks::Blocks;
use crate::error::{FsError, FsResult};
use crate::file_state::{FileState, Src};
use crate::listing::{self, Listings, Page};
use crate::meta::MetaClient;
use crate::open_table::{Entry, OpenTable};
use crate::page_cache::{self, PageMarks};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tessera_common::proto::meta::*;
use tessera_common::{BlockId, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

mod copy;
mod space;

/// Blocks uploading at once across the mount (bounds memory; a full queue slows writers).
const UPLOAD_SLOTS: usize = 16;
/// Partially written blocks kept per file before the oldest is sealed anyway.
pub(crate) const MAX_DIRTY_BLOCKS: usize = 16;
/// Block-map entries per commit request.
const COMMIT_BATCH: usize = 4096;
/// Largest file size (the metadata server refuses more).
const MAX_FILE_SIZE: u64 = 1 << 60;
/// Blocks fetched ahead of a sequential reader.
const PREFETCH_BLOCKS: u64 = 8;
/// Blocks' worth of free space (per copy) below which writes get ENOSPC (see [`Room`]).
const ROOM_MARGIN_BLOCKS: u64 = 2;

type Upload = JoinHandle<(u64, u64, FsResult<BlockRef>)>;

/// What the mount keeps of a file open here: its one write buffer (see [`OpenTable`]).
pub struct Open {
    st: tokio::sync::Mutex<OpenState>,
    /// The size as this mount sees it, readable without the state lock.
    size_hint: AtomicU64,
    /// Our session expired and the file could not be registered again under the new one (it
    /// was removed meanwhile): its handles fail with EIO.
    lost: AtomicBool,
    /// Set once the metadata server has this mount's open of the file (`Open`, or the
    /// `CreateOpen` that made it). Every open waits for it, not only the one that sends it:
    /// a lock or a removal right after an open needs the server to know of it.
    registered: tokio::sync::OnceCell<()>,
}

type OpenFile = Entry<Open>;

/// A file's block states and the uploads in flight for them.
#[derive(Default)]
struct OpenState {
    file: FileState,
    uploads: Vec<Upload>,
    /// The content the kernel's pages of this file were filled from, remembered from its last
    /// close here; taken by the first open's validation.
    pages_from: Option<blake3::Hash>,
}

impl std::ops::Deref for OpenState {
    type Target = FileState;
    fn deref(&self) -> &FileState {
        &self.file
    }
}
impl std::ops::DerefMut for OpenState {
    fn deref_mut(&mut self) -> &mut FileState {
        &mut self.file
    }
}

impl OpenState {
    fn clean(&self) -> bool {
        self.uploads.is_empty() && self.file.clean()
    }
}

impl Open {
    fn new(file: FileState, pages_from: Option<blake3::Hash>, registered: bool) -> Self {
        Open {
            st: tokio::sync::Mutex::new(OpenState { file, uploads: Vec::new(), pages_from }),
            size_hint: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            registered: if registered { tokio::sync::OnceCell::new_with(Some(())) } else { tokio::sync::OnceCell::new() },
        }
    }
}

pub struct Fs {
    pub meta: Arc<MetaClient>,
    pub blocks: Arc<Blocks>,
    bs: u64,
    files: OpenTable<Open>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    upload_slots: Arc<Semaphore>,
    pub locks: crate::locks::Locks,
    pub(crate) xattr_absent: crate::xattr::Absent,
    /// Last closes waiting to be reported together (`closes.rs`).
    pub(crate) closes: Arc<crate::closes::Closes>,
    pages: PageMarks,
    pub listings: Listings,
}

impl Fs {
    pub fn new(meta: Arc<MetaClient>, blocks: Arc<Blocks>) -> Arc<Self> {
        let bs = meta.block_size as u64;
        Arc::new(Fs {
            meta,
            blocks,
            bs,
            files: OpenTable::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            upload_slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            locks: Default::default(),
            xattr_absent: Default::default(),
            closes: Default::default(),
            pages: PageMarks::default(),
            listings: Listings::default(),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.bs
    }

    // ---- namespace ----

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let a = self.meta.attr_of(MetaRequest::Lookup { parent, name: name.to_vec() }).await?;
        Ok(self.overlay(a))
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let a = self.meta.attr_of(MetaRequest::GetAttr { ino }).await?;
        Ok(self.overlay(a))
    }

    /// A file open here shows the size of its local, not yet committed writes.
    fn overlay(&self, mut a: Attr) -> Attr {
        if let Some(f) = self.files.get(a.ino) {
            a.size = f.size_hint.load(Ordering::Relaxed);
        }
        a
    }

    #[allow(clippy::too_many_arguments)]
    /// `umask` applies unless `parent` has a default ACL (the server decides, see `Create`).
    pub async fn create(&self, parent: u64, name: &[u8], kind: FileKind, perm: u16, umask: u16, uid: u32, gid: u32, rdev: u32, target: Option<Vec<u8>>) -> FsResult<Attr> {
        tessera_common::names::check_name(name)?;
        self.meta.mutate_attr(Mutation::Create { parent, name: name.to_vec(), kind, perm, uid, gid, rdev, target, umask }).await
    }

    /// `open(O_CREAT)` of a new regular file: created and registered open in one change, and a
    /// handle to it.
    pub async fn create_open(&self, parent: u64, name: &[u8], perm: u16, umask: u16, uid: u32, gid: u32) -> FsResult<(Attr, u64)> {
        tessera_common::names::check_name(name)?;
        let asked = self.xattr_absent.asking();
        let a = self.meta.mutate_attr(Mutation::CreateOpen { parent, name: name.to_vec(), perm, uid, gid, umask }).await?;
        // A new file has no file capability (a create inherits only ACLs): the kernel's check
        // before the first write needs no round trip.
        self.xattr_absent.remember(asked, a.ino, false);
        let (f, fresh) = self.take_entry(a.ino, FileState::new_empty, || None, true);
        // Another process of this mount found the new name and opened the file between the
        // reply and here. If its `Open` is not done, the create's registration serves the entry;
        // if it is (or under way), the create's is given back once the entry's is in place, so
        // the server never sees the file closed in between (it counts registrations).
        if !fresh && f.registered.set(()).is_err() {
            let give_back = async {
                f.registered.get_or_try_init(|| self.meta.mutate_done(Mutation::Open { ino: a.ino })).await?;
                self.meta.mutate_done(Mutation::Close { ino: a.ino }).await
            };
            if let Err(e) = give_back.await {
                // One registration too many: the file stays open in this session until it ends.
                tracing::warn!(ino = a.ino, "giving back a create's registration failed: {e}");
            }
        }
        Ok((a, self.new_handle(f)))
    }

    /// A file that loses its last link while a session has it open (this mount or another)
    /// is kept by the metadata server until the last of them closes it: see `open`.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.meta.mutate_unlinked(Mutation::Unlink { parent, name: name.to_vec(), keep: false }).await.map(|_| ())
    }

    /// Replace is one metadata command: the target's last link and the new name change
    /// together, or (refused) nothing changes. `RENAME_EXCHANGE` and `RENAME_NOREPLACE` are the
    /// server's to apply.
    pub async fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> FsResult<()> {
        tessera_common::names::check_name(new_name)?;
        let op = Mutation::Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), flags, keep: false };
        self.meta.mutate_unlinked(op).await.map(|_| ())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.meta.mutate_done(Mutation::Rmdir { parent, name: name.to_vec() }).await
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        tessera_common::names::check_name(new_name)?;
        let a = self.meta.mutate_attr(Mutation::Link { ino, new_parent, new_name: new_name.to_vec() }).await?;
        Ok(self.overlay(a))
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.meta.call(MetaRequest::ReadLink { ino }).await? {
            MetaResponse::Link(t) => Ok(t),
            _ => Err(FsError::Errno(libc::EIO)),
        }
    }

    /// The entries of directory `ino` after cookie `after` (with attributes if `plus`): a
    /// page of open handle `fh` and the index in it where they start.
    pub async fn readdir(&self, fh: u64, ino: u64, after: u64, plus: bool) -> FsResult<(Page, usize)> {
        if let Some(hit) = self.listings.cached(fh, after, plus) {
            return Ok(hit);
        }
        let limit = listing::PAGE;
        let (entries, done) = if plus {
            let asked = self.xattr_absent.asking();
            match self.meta.call(MetaRequest::ReadDirPlus { ino, after, limit }).await? {
                MetaResponse::DirPlus { entries, done } => {
                    let entries = entries
                        .into_iter()
                        .map(|(e, a, xattrs)| {
                            if !xattrs {
                                self.xattr_absent.remember(asked, e.ino, true);
                            }
                            (e, Some(self.overlay(a)))
                        })
                        .collect();
                    (entries, done)
                }
                _ => return Err(FsError::Errno(libc::EIO)),
            }
        } else {
            match self.meta.call(MetaRequest::ReadDir { ino, after, limit }).await? {
                MetaResponse::Dir { entries, done } => (entries.into_iter().map(|e| (e, None)).collect(), done),
                _ => return Err(FsError::Errno(libc::EIO)),
            }
        };
        let page = Page::new(after, entries, done);
        self.listings.keep(fh, page.clone());
        Ok((page, 0))
    }

    /// The cluster's space; what it says of free space also tells writes whether there is
    /// room (the mount asks every second, see `mount::connect`).
    pub async fn statfs(&self) -> FsResult<StatFs> {
        match self.meta.call(MetaRequest::StatFs).await? {
            MetaResponse::StatFs(s) => {
                self.blocks.room.reported(s.total_bytes, s.free_bytes);
                Ok(s)
            }
            _ => Err(FsError::Errno(libc::EIO)),
        }
    }

    pub async fn setattr(&self, ino: u64, attr: SetAttr) -> FsResult<Attr> {
        let open = self.files.get(ino);
        let Some(f) = open.filter(|_| attr.size.is_some() || attr.mtime.is_some()) else {
            let a = self.meta.mutate_attr(Mutation::SetAttr { ino, attr }).await?;
            return Ok(self.overlay(a));
        };
        // Truncating a file open here cuts both views, the server's and ours, under the state
        // lock; local writes below the new end stay dirty and are committed later, like any
        // other (a truncate makes nothing durable, so it need not upload them first). Setting
        // the mtime settles local writes first, so that their commit cannot change it afterwards
        // (`tar -x` writes, then sets the mtime with futimens, then closes).
        let mut st = f.st.lock().await;
        if attr.mtime.is_some() {
            // A small file's content and the attributes go in one change.
            if let (Some(data), None) = (st.inline_to_commit(), attr.size) {
                let a = self.meta.mutate_attr(Mutation::CommitInlineSetAttr { ino, data: data.clone(), attr }).await?;
                st.inline_committed(data);
                return Ok(a);
            }
            self.flush_state(&f, &mut st).await?;
        }
        let size = attr.size;
        let a = self.meta.mutate_attr(Mutation::SetAttr { ino, attr }).await?;
        if let Some(size) = size {
            st.truncate(size, self.bs);
            f.size_hint.store(size, Ordering::Relaxed);
        }
        Ok(a)
    }

    // ---- open files ----

    /// The inode's entry in the open-file table, with one more open; `true` if it is new.
    /// `registered`: a new entry is already open at the metadata server (made by `CreateOpen`).
    fn take_entry(&self, ino: u64, state: impl FnOnce() -> FileState, pages_from: impl FnOnce() -> Option<blake3::Hash>, registered: bool) -> (Arc<OpenFile>, bool) {
        self.files.take(ino, || Open::new(state(), pages_from(), registered))
    }

    /// The first open of an inode on this mount is reported to the metadata server (`Open`,
    /// alongside the block-map read), so that a removal through any mount keeps the file
    /// until this mount closes it; the last close reports `Close`.
    /// Returns the handle, and whether the kernel may keep the pages it has cached of the file
    /// (see [`page_cache`]).
    pub async fn open(&self, ino: u64) -> FsResult<(u64, bool)> {
        let (f, _) = self.take_entry(ino, FileState::default, || self.pages.take(ino), false);
        // One `Open` per entry; an open joining the entry waits for it (or, if it failed,
        // sends it again).
        let registered = f.registered.get_or_try_init(|| self.meta.mutate_done(Mutation::Open { ino }));
        let loaded = async {
            let mut st = f.st.lock().await;
            // Unsaved writes here: the pages are the local content, nothing to reload.
            let mut keep_cache = true;
            // Close-to-open: a clean file is re-read from the metadata server on every open.
            if !st.loaded || st.clean() {
                // Open here already: the pages show the local state.
                let pages_from = if st.loaded { Some(st.content_id()) } else { st.pages_from.take() };
                let (size, map, inline, patches) = self.meta.block_map(ino).await?;
                st.load(size, map, inline, patches);
                f.size_hint.store(size, Ordering::Relaxed);
                keep_cache = page_cache::keep(pages_from, st.content_id());
            }
            Ok::<_, FsError>(keep_cache)
        };
        let (r, l) = tokio::join!(registered, loaded);
        match r.and(l) {
            Ok(keep_cache) => {
                let m = &self.blocks.metrics;
                if keep_cache { m.pages_kept.inc() } else { m.pages_dropped.inc() };
                Ok((self.new_handle(f), keep_cache))
            }
            Err(e) => {
                self.drop_open(&f).await;
                Err(e)
            }
        }
    }

    /// After our session expired and a new one was opened: report every open file again. One
    /// that is gone (removed by another mount meanwhile) is lost: its handles fail with EIO.
    /// Locks are not re-taken (another mount may hold them by now): they are gone.
    pub async fn reopen_all(&self) {
        self.locks.forget_all();
        let open = self.files.entries();
        for f in open {
            if let Err(e) = self.meta.mutate_done(Mutation::Open { ino: f.ino }).await {
                tracing::warn!(ino = f.ino, "an open file could not be registered under the new session; its handles fail from now on: {e}");
                f.lost.store(true, Ordering::Release);
            }
        }
    }

    fn new_handle(&self, f: Arc<OpenFile>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, f);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        let f = self.handles.lock().unwrap().get(&fh).cloned().ok_or(FsError::Errno(libc::EBADF))?;
        if f.lost.load(Ordering::Acquire) {
            return Err(FsError::Io(format!("inode {} was removed while this mount's session had expired", f.ino)));
        }
        Ok(f)
    }

    /// The inode of an open handle.
    pub fn ino_of(&self, fh: u64) -> Option<u64> {
        self.handles.lock().unwrap().get(&fh).map(|f| f.ino)
    }

    /// One handle fewer. The entry leaves the table with its last handle if nothing in it is
    /// unsaved; a file with unsaved bytes (a failed flush) stays, and the background commit
    /// retries it.
    async fn drop_open(&self, f: &Arc<OpenFile>) {
        let left = {
            let st = f.st.lock().await;
            self.leave_table(f, &st, true)
        };
        if let Some(locked) = left {
            self.report_close(f, locked).await;
        }
    }

    /// `f` leaves the open-file table if no handle holds it (`put_back`: after one handle
    /// fewer) and nothing in it is unsaved. If it left: whether this mount held locks on it.
    /// Those are forgotten in the same step, under the table's lock: an open right after
    /// makes a new entry, and the locks taken through it must not be forgotten with these.
    fn leave_table(&self, f: &Arc<OpenFile>, st: &OpenState, put_back: bool) -> Option<bool> {
        let mut locked = None;
        let may_leave = || {
            let retire = self.may_retire(f, st);
            if retire {
                locked = Some(self.locks.forget_file(f.ino));
            }
            retire
        };
        if put_back {
            self.files.put_back(f, may_leave);
        } else {
            self.files.leave_if_unused(f, may_leave);
        }
        locked
    }

    /// The entry left the table: the last close on this mount. A close with locks goes at
    /// once (it releases them at the server), the others together a moment later. An entry
    /// whose every `Open` failed has nothing to close.
    async fn report_close(&self, f: &OpenFile, locked: bool) {
        if !f.registered.initialized() {
            return;
        }
        if !locked {
            self.closes.push(f.ino);
            return;
        }
        if let Err(e) = self.meta.mutate_done(Mutation::Close { ino: f.ino }).await {
            // The session's expiry closes it in the end.
            tracing::warn!(ino = f.ino, "reporting a close failed: {e}");
        }
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(f) = self.handles.lock().unwrap().remove(&fh) else {
            return Err(FsError::Errno(libc::EBADF));
        };
        let r = {
            let mut st = f.st.lock().await;
            self.flush_state(&f, &mut st).await
        };
        self.drop_open(&f).await;
        r
    }

    /// flush and fsync: seal, upload, wait, commit. Returns once the commit is durable.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let f = self.handle(fh)?;
        let mut st = f.st.lock().await;
        self.flush_state(&f, &mut st).await
    }

    async fn flush_state(&self, f: &OpenFile, st: &mut OpenState) -> FsResult<()> {
        if let Some(data) = st.inline_to_commit() {
            self.meta.mutate_attr(Mutation::CommitInline { ino: f.ino, data: data.clone() }).await?;
            st.inline_committed(data);
            return Ok(());
        }
        if st.is_small() {
            return Ok(());
        }
        st.leave_inline();
        // Small edits of committed blocks go as patches, the rest as whole blocks.
        let patches = st.patches_to_commit();
        let whole: Vec<u64> = st.dirty_indexes().into_iter().filter(|idx| !patches.iter().any(|(i, _, _)| i == idx)).collect();
        self.upload(st, whole).await?;
        let size = st.size;
        if patches.is_empty() || !st.uploaded().is_empty() {
            self.commit(f, st, size).await?;
        }
        if !patches.is_empty() {
            let indexes: Vec<u64> = patches.iter().map(|(i, _, _)| *i).collect();
            match self.meta.mutate_attr(Mutation::PatchBlocks { ino: f.ino, patches: patches.clone(), size }).await {
                Ok(_) => st.patched(patches, size),
                // Another mount changed a block since this mount read it, or a bound of
                // `tessera_common::patch` is reached: nothing was applied; whole blocks go.
                Err(FsError::Wire(e)) if e.code == ErrorCode::InvalidArgument => {
                    tracing::debug!(ino = f.ino, "patches refused, uploading the blocks: {e}");
                    self.upload(st, indexes).await?;
                    self.commit(f, st, size).await?;
                }
                Err(e) => return Err(e),
            }
        }
        st.size_dirty = false;
        Ok(())
    }

    /// Background work on open files, every second: commit uploaded blocks of files nobody is
    /// flushing, so that a block is referenced soon after its upload (garbage collection spares
    /// unreferenced blocks only for a grace period), and retry files whose last close failed.
    /// The size committed covers the blocks known so far, not bytes still in the buffer.
    pub async fn commit_idle(&self) {
        let open = self.files.entries();
        for f in open {
            let Ok(mut st) = f.st.try_lock() else { continue };
            if self.files.opens(&f) == 0 {
                // Closed with unsaved bytes: try again, and let it go once saved.
                if let Err(e) = self.flush_state(&f, &mut st).await {
                    tracing::warn!(ino = f.ino, "saving a closed file failed again: {e}");
                }
                let left = self.leave_table(&f, &st, false);
                drop(st);
                if let Some(locked) = left {
                    self.report_close(&f, locked).await;
                }
                continue;
            }
            reap(&mut st, false).await;
            if st.block0_holds_commits() {
                // The file left inline storage: block 0 goes first, the commit follows.
                self.seal(&mut st, 0).await;
                continue;
            }
            if st.uploaded().is_empty() || !st.may_commit_blocks() {
                continue;
            }
            let size = st.size.min(st.committed_size.max(st.stored_extent(self.bs)));
            if let Err(e) = self.commit(&f, &mut st, size).await {
                tracing::warn!(ino = f.ino, "background commit failed: {e}");
            }
        }
    }

    async fn commit(&self, f: &OpenFile, st: &mut OpenState, size: u64) -> FsResult<()> {
        let entries = st.uploaded();
        if entries.is_empty() && size == st.committed_size && !st.size_dirty {
            return Ok(());
        }
        let mut chunks: Vec<&[(u64, BlockRef)]> = entries.chunks(COMMIT_BATCH).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        // With inline data on the server, block 0 must be in the first request (it deletes
        // the inline copy); `uploaded()` is in index order, so it is.
        for c in chunks {
            self.meta.mutate_attr(Mutation::CommitBlocks { ino: f.ino, blocks: c.to_vec(), size }).await?;
            st.committed(c, size);
        }
        Ok(())
    }

    /// Seal the dirty blocks `indexes` and wait for every upload; the first failure is the
    /// result.
    async fn upload(&self, st: &mut OpenState, indexes: Vec<u64>) -> FsResult<()> {
        for idx in indexes {
            self.seal(st, idx).await;
        }
        reap(st, true).await;
        st.error.take().map_or(Ok(()), Err)
    }

    /// Move a dirty block into an upload. Waits for an upload slot (back-pressure).
    async fn seal(&self, st: &mut OpenState, idx: u64) {
        let Some((data, upload)) = st.seal(idx) else { return };
        let permit: OwnedSemaphorePermit = self.upload_slots.clone().acquire_owned().await.expect("semaphore never closed");
        let (blocks, bs) = (self.blocks.clone(), self.bs);
        st.uploads.push(tokio::spawn(async move {
            let _permit = permit;
            let d = data.clone();
            let r = async {
                let id = tokio::task::spawn_blocking(move || BlockId::of(&d)).await.map_err(|e| FsError::Io(e.to_string()))?;
                if let Err(e) = blocks.put(id, data.clone()).await {
                    if e.errno() == libc::ENOSPC {
                        blocks.room.refused();
                    }
                    return Err(e);
                }
                blocks.room.spent(data.len() as u64);
                // A block that is not full is a file's tail: the next partial write or read of
                // it would fetch it back, so keep it (a full one is left out, so that a big
                // write does not push out what readers use).
                if (data.len() as u64) < bs {
                    blocks.remember(id, data.clone());
                }
                Ok(BlockRef { id, len: data.len() as u32 })
            }
            .await;
            (idx, upload, r)
        }));
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let f = self.handle(fh)?;
        let mut st = f.st.lock().await;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let bs = self.bs;
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= MAX_FILE_SIZE).ok_or(FsError::Errno(libc::EFBIG))?;
        if !self.blocks.room_for(ROOM_MARGIN_BLOCKS * bs) {
            return Err(FsError::no_space("the cluster is (nearly) full"));
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let n = ((bs - within as u64).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let base = match st.write_base(idx, within, n) {
                Ok(b) => b,
                Err(s) => {
                    let d = self.blocks.get(s.block.id).await?;
                    s.bytes(&d, 0, s.len() as usize)
                }
            };
            st.write(idx, base, within, src);
            if st.full(idx, bs) {
                self.seal(&mut st, idx).await;
            }
            pos += n as u64;
        }
        if end > st.size {
            st.size = end;
            f.size_hint.store(end, Ordering::Relaxed);
        }
        st.size_dirty = true;
        st.leave_inline();
        while st.dirty_count() > MAX_DIRTY_BLOCKS {
            let first = st.dirty_indexes()[0];
            self.seal(&mut st, first).await;
        }
        reap(&mut st, false).await;
        if st.uploaded().len() >= COMMIT_BATCH && st.may_commit_blocks() {
            let size = st.size;
            self.commit(&f, &mut st, size).await?;
        }
        Ok(data.len() as u32)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = self.handle(fh)?;
        let bs = self.bs;
        let (end, plan) = {
            let mut st = f.st.lock().await;
            let end = (offset + size as u64).min(st.size);
            if offset >= end {
                return Ok(Vec::new());
            }
            let mut plan = Vec::new();
            for idx in offset / bs..=(end - 1) / bs {
                let lo = offset.max(idx * bs) - idx * bs;
                let hi = end.min((idx + 1) * bs) - idx * bs;
                plan.push((idx, st.source(idx, lo, hi)));
            }
            // Sequential reader: fetch the next blocks before they are asked for.
            let sequential = offset <= st.last_read_end + bs && offset + bs >= st.last_read_end;
            st.last_read_end = end;
            if sequential {
                let last = (end - 1) / bs;
                for i in last + 1..=last + PREFETCH_BLOCKS {
                    if let Some(b) = st.stored(i) {
                        self.blocks.prefetch(b.id);
                    }
                }
            }
            (end, plan)
        };
        let fetched = futures::future::join_all(plan.iter().map(|(_, s)| async {
            match s {
                Src::Block(s) => self.blocks.get(s.block.id).await.map(Some),
                _ => Ok(None),
            }
        }))
        .await;
        let mut out = vec![0u8; (end - offset) as usize];
        for ((idx, src), got) in plan.iter().zip(fetched) {
            let got = got?;
            let bstart = idx * bs;
            let lo = offset.max(bstart);
            let hi = end.min(bstart + bs);
            let dst = &mut out[(lo - offset) as usize..(hi - offset) as usize];
            let from = lo - bstart;
            // A patched block: its bytes for this range, put together.
            let patched = match (src, &got) {
                (Src::Block(s), Some(d)) if s.patches.is_some() => Some(s.bytes(d, from, dst.len())),
                _ => None,
            };
            // `data` holds the block's bytes from block offset `base`, valid for `valid` bytes.
            let (data, base, valid): (&[u8], u64, u64) = match (src, &got, &patched) {
                (Src::Hole, _, _) => continue,
                (Src::Bytes(d, base), _, _) => (d.as_slice(), *base as u64, d.len() as u64),
                (Src::Block(s), Some(_), Some(p)) => (p.as_slice(), from, s.len().saturating_sub(from).min(p.len() as u64)),
                (Src::Block(s), Some(d), None) => (d.as_slice(), 0, (s.block.len as u64).min(d.len() as u64)),
                (Src::Block(_), None, _) => continue,
            };
            // Copy where the read range [from, from+len) meets the valid bytes [base, base+valid).
            let a = from.max(base);
            let b = (from + dst.len() as u64).min(base + valid);
            if a < b {
                dst[(a - from) as usize..(b - from) as usize].copy_from_slice(&data[(a - base) as usize..(b - base) as usize]);
            }
        }
        Ok(out)
    }
}

/// Record finished uploads in the block states (all of them when `wait`).
async fn reap(st: &mut OpenState, wait: bool) {
    let mut keep = Vec::new();
    for h in std::mem::take(&mut st.uploads) {
        if !wait && !h.is_finished() {
            keep.push(h);
            continue;
        }
        match h.await {
            Ok((idx, upload, r)) => st.upload_done(idx, upload, r),
            Err(e) => st.error = Some(FsError::Io(e.to_string())),
        }
    }
    st.uploads = keep;
}

impl Fs {
    /// Whether `f` (state `st`) may leave the open-file table: nothing unsaved. If so, the
    /// content its pages show is remembered for the next open.
    fn may_retire(&self, f: &OpenFile, st: &OpenState) -> bool {
        if !st.clean() {
            return false;
        }
        if st.loaded {
            self.pages.remember(f.ino, st.content_id());
        }
        true
    }
}
