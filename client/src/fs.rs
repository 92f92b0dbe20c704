//! The file-system core, independent of FUSE: open files with their write buffers, the read
//! path and the metadata operations. Every method is async and returns an errno-carrying error.

use crate::blocks::Blocks;
use crate::error::{FsError, FsResult};
use crate::meta::MetaClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tessera_common::proto::meta::*;
use tessera_common::BlockId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Blocks uploading at once across the mount (bounds memory; a full queue slows writers).
const UPLOAD_SLOTS: usize = 16;
/// Partially written blocks kept per file before the oldest is sealed anyway.
const MAX_DIRTY_BLOCKS: usize = 16;
/// Block-map entries per commit request.
const COMMIT_BATCH: usize = 4096;
/// Largest file size (the metadata server refuses more).
const MAX_FILE_SIZE: u64 = 1 << 60;
/// Blocks fetched ahead of a sequential reader.
const PREFETCH_BLOCKS: u64 = 8;

type Upload = JoinHandle<(u64, Arc<Vec<u8>>, FsResult<BlockRef>)>;

#[derive(Default)]
struct FileState {
    loaded: bool,
    size: u64,
    /// Latest known block of each index (committed or uploaded).
    map: BTreeMap<u64, BlockRef>,
    /// The content of a small file kept in the metadata (the start of block 0; zeros follow).
    inline: Option<Arc<Vec<u8>>>,
    /// Blocks being written, each holding the block's bytes up to its last written byte.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Sealed blocks whose upload has not been merged into `map` yet.
    sealed: BTreeMap<u64, Arc<Vec<u8>>>,
    uploads: Vec<Upload>,
    /// Uploaded blocks not yet committed to the metadata server.
    pending: BTreeMap<u64, BlockRef>,
    size_dirty: bool,
    /// The size the metadata server has (as of our last commit or load).
    committed_size: u64,
    /// A background upload failed: reported by the next write, flush or fsync.
    error: Option<FsError>,
    last_read_end: u64,
}

impl FileState {
    fn clean(&self) -> bool {
        self.dirty.is_empty() && self.sealed.is_empty() && self.pending.is_empty() && self.uploads.is_empty() && !self.size_dirty
    }
}

pub struct OpenFile {
    ino: u64,
    st: tokio::sync::Mutex<FileState>,
    opens: AtomicUsize,
    /// The size as this mount sees it, readable without the state lock.
    size_hint: AtomicU64,
    /// Unlinked while open: the hidden name it was moved to, removed at the last close.
    hidden: Mutex<Option<(u64, Vec<u8>)>>,
}

pub struct Fs {
    pub meta: Arc<MetaClient>,
    pub blocks: Arc<Blocks>,
    bs: u64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    upload_slots: Arc<Semaphore>,
}

/// Where the bytes of one block of a read come from.
enum Src {
    Hole,
    Bytes(Arc<Vec<u8>>, usize),
    Block(BlockRef),
}

impl Fs {
    pub fn new(meta: Arc<MetaClient>, blocks: Arc<Blocks>) -> Arc<Self> {
        let bs = meta.block_size as u64;
        Arc::new(Fs {
            meta,
            blocks,
            bs,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            upload_slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
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
    /// A file unlinked while open here (kept under a hidden name) has no links left.
    fn overlay(&self, mut a: Attr) -> Attr {
        if let Some(f) = self.files.lock().unwrap().get(&a.ino) {
            a.size = f.size_hint.load(Ordering::Relaxed);
            if f.hidden.lock().unwrap().is_some() {
                a.nlink = 0;
            }
        }
        a
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(&self, parent: u64, name: &[u8], kind: FileKind, perm: u16, uid: u32, gid: u32, rdev: u32, target: Option<Vec<u8>>) -> FsResult<Attr> {
        tessera_common::names::check_name(name)?;
        self.meta.mutate_attr(Mutation::Create { parent, name: name.to_vec(), kind, perm, uid, gid, rdev, target }).await
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        if self.hide_if_open(parent, name).await? {
            return Ok(());
        }
        self.meta.mutate_unlinked(Mutation::Unlink { parent, name: name.to_vec(), keep: false }).await.map(drop)
    }

    /// POSIX keeps an unlinked file readable through the descriptors that have it open. For
    /// files open on this mount, the last link is not removed but renamed to a hidden name
    /// (as NFS clients do), and removed at the last close.
    async fn hide_if_open(&self, parent: u64, name: &[u8]) -> FsResult<bool> {
        if self.files.lock().unwrap().is_empty() {
            return Ok(false);
        }
        let a = match self.meta.attr_of(MetaRequest::Lookup { parent, name: name.to_vec() }).await {
            Ok(a) => a,
            Err(_) => return Ok(false),
        };
        let open = self.files.lock().unwrap().get(&a.ino).filter(|f| f.opens.load(Ordering::Acquire) > 0).cloned();
        let Some(f) = open.filter(|_| a.kind == FileKind::File && a.nlink == 1) else {
            return Ok(false);
        };
        let hidden = format!(".tessera-unlinked-{:x}", a.ino).into_bytes();
        self.meta
            .mutate_unlinked(Mutation::Rename { parent, name: name.to_vec(), new_parent: parent, new_name: hidden.clone(), flags: 0, keep: false })
            .await?;
        *f.hidden.lock().unwrap() = Some((parent, hidden));
        Ok(true)
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.meta.mutate_done(Mutation::Rmdir { parent, name: name.to_vec() }).await
    }

    pub async fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> FsResult<()> {
        tessera_common::names::check_name(new_name)?;
        // A replaced target that is open here stays readable, like an unlinked one.
        if flags & RENAME_NOREPLACE == 0 && (parent, name) != (new_parent, new_name) {
            self.hide_if_open(new_parent, new_name).await?;
        }
        self.meta.mutate_unlinked(Mutation::Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), flags, keep: false }).await.map(drop)
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

    pub async fn readdir(&self, ino: u64, after: u64, limit: u32) -> FsResult<Vec<DirEntry>> {
        match self.meta.call(MetaRequest::ReadDir { ino, after, limit }).await? {
            MetaResponse::Dir { entries, .. } => Ok(entries),
            _ => Err(FsError::Errno(libc::EIO)),
        }
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        match self.meta.call(MetaRequest::StatFs).await? {
            MetaResponse::StatFs(s) => Ok(s),
            _ => Err(FsError::Errno(libc::EIO)),
        }
    }

    pub async fn setattr(&self, ino: u64, attr: SetAttr) -> FsResult<Attr> {
        let open = self.files.lock().unwrap().get(&ino).cloned();
        let Some(f) = open.filter(|_| attr.size.is_some()) else {
            let a = self.meta.mutate_attr(Mutation::SetAttr { ino, attr }).await?;
            return Ok(self.overlay(a));
        };
        // Truncating a file open here: settle local writes first, then cut both views.
        let mut st = f.st.lock().await;
        self.flush_state(&f, &mut st).await?;
        let size = attr.size.unwrap();
        let a = self.meta.mutate_attr(Mutation::SetAttr { ino, attr }).await?;
        let bs = self.bs;
        if let Some(d) = st.inline.as_mut() {
            if d.len() as u64 > size {
                Arc::make_mut(d).truncate(size as usize);
            }
        }
        st.map.retain(|&i, _| i < size.div_ceil(bs));
        if size % bs != 0 {
            if let Some(b) = st.map.get_mut(&(size / bs)) {
                b.len = b.len.min((size % bs) as u32);
            }
        }
        st.size = size;
        st.committed_size = size;
        f.size_hint.store(size, Ordering::Relaxed);
        Ok(a)
    }

    // ---- open files ----

    /// Open a file this mount has just created: its state is known, no round trip needed.
    pub fn open_new(&self, ino: u64) -> u64 {
        let st = FileState { loaded: true, ..Default::default() };
        let f = Arc::new(OpenFile { ino, st: tokio::sync::Mutex::new(st), opens: AtomicUsize::new(1), size_hint: AtomicU64::new(0), hidden: Mutex::new(None) });
        self.files.lock().unwrap().insert(ino, f.clone());
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, f);
        fh
    }

    pub async fn open(&self, ino: u64) -> FsResult<u64> {
        let f = {
            let mut files = self.files.lock().unwrap();
            files
                .entry(ino)
                .or_insert_with(|| Arc::new(OpenFile { ino, st: Default::default(), opens: AtomicUsize::new(0), size_hint: AtomicU64::new(0), hidden: Mutex::new(None) }))
                .clone()
        };
        f.opens.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = f.st.lock().await;
            // Close-to-open: a clean file is re-read from the metadata server on every open.
            if !st.loaded || st.clean() {
                match self.meta.block_map(ino).await {
                    Ok((size, map, inline)) => {
                        st.size = size;
                        st.committed_size = size;
                        st.map = map.into_iter().collect();
                        st.inline = inline.map(Arc::new);
                        st.loaded = true;
                        f.size_hint.store(size, Ordering::Relaxed);
                    }
                    Err(e) => {
                        drop(st);
                        self.drop_open(&f);
                        return Err(e);
                    }
                }
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, f);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handles.lock().unwrap().get(&fh).cloned().ok_or(FsError::Errno(libc::EBADF))
    }

    fn drop_open(&self, f: &Arc<OpenFile>) {
        if f.opens.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut files = self.files.lock().unwrap();
            if f.opens.load(Ordering::Acquire) == 0 {
                if let Ok(st) = f.st.try_lock() {
                    if st.clean() {
                        files.remove(&f.ino);
                    }
                }
            }
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
        self.drop_open(&f);
        if f.opens.load(Ordering::Acquire) == 0 {
            let hidden = f.hidden.lock().unwrap().take();
            if let Some((parent, name)) = hidden {
                self.meta.mutate_unlinked(Mutation::Unlink { parent, name, keep: false }).await?;
            }
        }
        r
    }

    /// flush and fsync: seal, upload, wait, commit. Returns once the commit is durable.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let f = self.handle(fh)?;
        let mut st = f.st.lock().await;
        self.flush_state(&f, &mut st).await
    }

    async fn flush_state(&self, f: &OpenFile, st: &mut FileState) -> FsResult<()> {
        if self.flush_inline(f, st).await? {
            return Ok(());
        }
        // Inline content becomes block 0 when the file outgrows it.
        if let Some(d) = st.inline.take() {
            if !st.dirty.contains_key(&0) && !st.sealed.contains_key(&0) && !st.map.contains_key(&0) {
                st.dirty.insert(0, d.as_ref().clone());
            }
        }
        let idxs: Vec<u64> = st.dirty.keys().copied().collect();
        for idx in idxs {
            self.seal(st, idx).await;
        }
        reap(st, true).await;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let size = st.size;
        self.commit(f, st, size).await?;
        st.size_dirty = false;
        Ok(())
    }

    /// A small file with no blocks is committed as inline data. Returns whether it was.
    async fn flush_inline(&self, f: &OpenFile, st: &mut FileState) -> FsResult<bool> {
        let small = st.size as usize <= tessera_common::INLINE_MAX
            && st.map.is_empty()
            && st.sealed.is_empty()
            && st.uploads.is_empty()
            && st.pending.is_empty()
            && st.dirty.keys().all(|&i| i == 0);
        if !small {
            return Ok(false);
        }
        if st.dirty.is_empty() && !st.size_dirty {
            return Ok(true);
        }
        let mut data = match st.dirty.get(&0) {
            Some(d) => d.clone(),
            None => st.inline.as_ref().map(|d| d.as_ref().clone()).unwrap_or_default(),
        };
        data.resize(st.size as usize, 0);
        self.meta.mutate_attr(Mutation::CommitInline { ino: f.ino, data: data.clone() }).await?;
        st.dirty.clear();
        st.inline = Some(Arc::new(data));
        st.committed_size = st.size;
        st.size_dirty = false;
        Ok(true)
    }

    /// Commit uploaded blocks of files nobody is flushing, so that a block is referenced soon
    /// after its upload (garbage collection spares unreferenced blocks only for a grace period).
    /// The size committed covers the blocks known so far, not bytes still in the buffer.
    pub async fn commit_idle(&self) {
        let open: Vec<Arc<OpenFile>> = self.files.lock().unwrap().values().cloned().collect();
        for f in open {
            let Ok(mut st) = f.st.try_lock() else { continue };
            reap(&mut st, false).await;
            // A file still holding inline data is committed whole by its next flush.
            if st.pending.is_empty() || st.inline.is_some() {
                continue;
            }
            let bs = self.bs;
            let extent = st.map.iter().next_back().map(|(i, b)| i * bs + b.len as u64).unwrap_or(0);
            let size = st.size.min(st.committed_size.max(extent));
            if let Err(e) = self.commit(&f, &mut st, size).await {
                tracing::warn!(ino = f.ino, "background commit failed: {e}");
            }
        }
    }

    async fn commit(&self, f: &OpenFile, st: &mut FileState, size: u64) -> FsResult<()> {
        if st.pending.is_empty() && size == st.committed_size && !st.size_dirty {
            return Ok(());
        }
        let entries: Vec<(u64, BlockRef)> = st.pending.iter().map(|(k, v)| (*k, *v)).collect();
        let mut chunks: Vec<Vec<(u64, BlockRef)>> = entries.chunks(COMMIT_BATCH).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(vec![]);
        }
        for c in chunks {
            self.meta.mutate_attr(Mutation::CommitBlocks { ino: f.ino, blocks: c.clone(), size }).await?;
            for (i, _) in c {
                st.pending.remove(&i);
            }
            st.committed_size = size;
        }
        Ok(())
    }

    /// Move a dirty block into an upload. Waits for an upload slot (back-pressure).
    async fn seal(&self, st: &mut FileState, idx: u64) {
        let Some(buf) = st.dirty.remove(&idx) else { return };
        let data = Arc::new(buf);
        st.sealed.insert(idx, data.clone());
        let permit: OwnedSemaphorePermit = self.upload_slots.clone().acquire_owned().await.expect("semaphore never closed");
        let blocks = self.blocks.clone();
        st.uploads.push(tokio::spawn(async move {
            let _permit = permit;
            let d = data.clone();
            let r = async {
                let id = tokio::task::spawn_blocking(move || BlockId::of(&d)).await.map_err(|e| FsError::Io(e.to_string()))?;
                blocks.put(id, data.clone()).await?;
                Ok(BlockRef { id, len: data.len() as u32 })
            }
            .await;
            (idx, data, r)
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
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let n = ((bs - within as u64).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if !st.dirty.contains_key(&idx) {
                let base = self.base_for_write(&st, idx, within, n).await?;
                st.dirty.insert(idx, base);
            }
            let buf = st.dirty.get_mut(&idx).unwrap();
            if buf.len() < within + n {
                buf.resize(within + n, 0);
            }
            buf[within..within + n].copy_from_slice(src);
            if buf.len() as u64 == bs {
                self.seal(&mut st, idx).await;
            }
            pos += n as u64;
        }
        if end > st.size {
            st.size = end;
            f.size_hint.store(end, Ordering::Relaxed);
        }
        st.size_dirty = true;
        while st.dirty.len() > MAX_DIRTY_BLOCKS {
            let first = *st.dirty.keys().next().unwrap();
            self.seal(&mut st, first).await;
        }
        reap(&mut st, false).await;
        if st.pending.len() >= COMMIT_BATCH && st.inline.is_none() {
            let size = st.size;
            self.commit(&f, &mut st, size).await?;
        }
        Ok(data.len() as u32)
    }

    /// The current bytes of block `idx` before a write of `n` bytes at `within` changes them.
    async fn base_for_write(&self, st: &FileState, idx: u64, within: usize, n: usize) -> FsResult<Vec<u8>> {
        if let Some(s) = st.sealed.get(&idx) {
            return Ok(s.as_ref().clone());
        }
        if let (0, Some(d), false) = (idx, &st.inline, st.map.contains_key(&0)) {
            return Ok(if within == 0 && n >= d.len() { Vec::new() } else { d.as_ref().clone() });
        }
        match st.map.get(&idx) {
            Some(b) if !(within == 0 && n >= b.len as usize) => {
                let d = self.blocks.get(b.id).await?;
                Ok(d[..(b.len as usize).min(d.len())].to_vec())
            }
            _ => Ok(Vec::new()),
        }
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
                let src = if let Some(d) = st.dirty.get(&idx) {
                    // Copy only the part this read needs.
                    let lo = offset.max(idx * bs) - idx * bs;
                    let hi = (end.min((idx + 1) * bs) - idx * bs).min(d.len() as u64);
                    let part = if lo < hi { d[lo as usize..hi as usize].to_vec() } else { Vec::new() };
                    Src::Bytes(Arc::new(part), lo as usize)
                } else if let Some(s) = st.sealed.get(&idx) {
                    Src::Bytes(s.clone(), 0)
                } else if let Some(b) = st.map.get(&idx) {
                    Src::Block(*b)
                } else if let (0, Some(d)) = (idx, &st.inline) {
                    Src::Bytes(d.clone(), 0)
                } else {
                    Src::Hole
                };
                plan.push((idx, src));
            }
            // Sequential reader: fetch the next blocks before they are asked for.
            let sequential = offset <= st.last_read_end + bs && offset + bs >= st.last_read_end;
            st.last_read_end = end;
            if sequential {
                let last = (end - 1) / bs;
                for i in last + 1..=last + PREFETCH_BLOCKS {
                    if let Some(b) = st.map.get(&i) {
                        if !st.dirty.contains_key(&i) && !st.sealed.contains_key(&i) {
                            self.blocks.prefetch(b.id);
                        }
                    }
                }
            }
            (end, plan)
        };
        let fetched = futures::future::join_all(plan.iter().map(|(_, s)| async {
            match s {
                Src::Block(b) => self.blocks.get(b.id).await.map(Some),
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
            // `data` holds the block's bytes from block offset `base`, valid for `valid` bytes.
            let (data, base, valid): (&[u8], u64, u64) = match (src, &got) {
                (Src::Hole, _) => continue,
                (Src::Bytes(d, base), _) => (d.as_slice(), *base as u64, d.len() as u64),
                (Src::Block(b), Some(d)) => (d.as_slice(), 0, (b.len as u64).min(d.len() as u64)),
                (Src::Block(_), None) => continue,
            };
            // Copy where the read range [from, from+len) meets the valid bytes [base, base+valid).
            let from = lo - bstart;
            let a = from.max(base);
            let b = (from + dst.len() as u64).min(base + valid);
            if a < b {
                dst[(a - from) as usize..(b - from) as usize].copy_from_slice(&data[(a - base) as usize..(b - base) as usize]);
            }
        }
        Ok(out)
    }
}

/// Merge finished uploads into the map (all of them when `wait`).
async fn reap(st: &mut FileState, wait: bool) {
    let mut keep = Vec::new();
    for h in std::mem::take(&mut st.uploads) {
        if !wait && !h.is_finished() {
            keep.push(h);
            continue;
        }
        match h.await {
            Ok((idx, data, r)) => {
                let current = st.sealed.get(&idx).is_some_and(|s| Arc::ptr_eq(s, &data));
                match r {
                    Ok(b) if current => {
                        st.sealed.remove(&idx);
                        st.map.insert(idx, b);
                        st.pending.insert(idx, b);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Keep the bytes: a later flush retries the upload.
                        if current {
                            st.sealed.remove(&idx);
                            st.dirty.entry(idx).or_insert_with(|| data.as_ref().clone());
                        }
                        st.error = Some(e);
                    }
                }
            }
            Err(e) => st.error = Some(FsError::Io(e.to_string())),
        }
    }
    st.uploads = keep;
}
