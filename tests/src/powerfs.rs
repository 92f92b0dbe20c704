//! A power-loss simulator: a FUSE file system held in memory that keeps what was written
//! volatile until it is synced, and on [`PowerFs::power_cut`] drops everything that was not —
//! the approach of LazyFS, which Jepsen uses. Servers keep their data directories on it; a test
//! SIGKILLs a server, cuts the power and restarts the server on the same mount, which then sees
//! exactly what a machine that lost power would show.
//!
//! The durability model (strict, what POSIX promises and no more; ext4 with a journal is often
//! kinder, so code that passes here passes there):
//! - A file's data, size and attributes become durable with `fsync`/`fdatasync` of that file
//!   (both are full syncs here). Writes after the last sync are lost; so is a truncate.
//! - A directory's entries (create, link, rename in or out, unlink, mkdir, rmdir, symlink)
//!   become durable with an `fsync` of that directory, and only then: a new file whose data was
//!   fsynced but whose directory was not is gone after a cut, an unlink or a rename not followed
//!   by a directory fsync is undone. A cross-directory rename is two changes, one per directory.
//!   A name made durable for a file whose data never was synced shows an empty file.
//! - `syncfs`/`sync` make nothing durable (fuser 0.18 has no `syncfs` callback, so the kernel
//!   never tells us); [`PowerFs::sync_all`] is the test's own "everything reached the disk",
//!   e.g. to make a freshly started server's state durable as the periodic writeback would have.
//!
//! The kernel holds nothing that could outlive a cut: every open uses direct I/O (no page
//! cache; shared `mmap` is refused with ENODEV), and names and attributes are never cached
//! (TTL 0). POSIX and BSD locks are not passed to us, so the kernel keeps them locally (RocksDB's
//! `LOCK` file works). Inode numbers are never reused, so a cached inode never changes its
//! meaning. File handles opened before a cut answer EBADF afterwards. `fallocate` supports
//! mode 0 and `FALLOC_FL_KEEP_SIZE`; other modes return EOPNOTSUPP. Extended attributes are
//! not supported.
//!
//! The mount is unmounted when the [`PowerFs`] is dropped, also when a test panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Size of the copy-on-write pieces a file's data is kept in: a sync shares them with the live
/// file instead of copying the data.
const PAGE: usize = 64 << 10;
const ROOT: u64 = 1;
/// Never cache a name or an attribute: after a cut, the kernel must ask again.
const TTL: Duration = Duration::ZERO;
const MAX_WRITE: u32 = 1 << 20;

type Res<T> = Result<T, i32>;

#[derive(Clone)]
struct Node {
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    size: u64,
    /// Page index → `PAGE` bytes; a missing page reads as zeros.
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
    entries: BTreeMap<OsString, u64>,
    target: PathBuf,
    /// Names referring to this node (in its own image: live or durable).
    nlink: u32,
}

impl Node {
    fn new(kind: FileType, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node { kind, perm, uid, gid, atime: now, mtime: now, ctime: now, size: 0, pages: BTreeMap::new(), entries: BTreeMap::new(), target: PathBuf::new(), nlink: 0 }
    }

    fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    fn attr(&self, ino: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: self.size,
            blocks: (self.pages.len() * PAGE / 512) as u64,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: self.kind,
            perm: self.perm,
            nlink: if self.is_dir() { 2 } else { self.nlink },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(size as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (idx, off) = (pos / PAGE as u64, (pos % PAGE as u64) as usize);
            let n = ((PAGE - off) as u64).min(end - pos) as usize;
            match self.pages.get(&idx) {
                Some(p) => out.extend_from_slice(&p[off..off + n]),
                None => out.resize(out.len() + n, 0),
            }
            pos += n as u64;
        }
        out
    }

    /// Returns how many pages were added.
    fn write(&mut self, offset: u64, data: &[u8]) -> usize {
        let mut added = 0;
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let (idx, off) = (pos / PAGE as u64, (pos % PAGE as u64) as usize);
            let n = (PAGE - off).min(data.len() - done);
            let page = self.pages.entry(idx).or_insert_with(|| {
                added += 1;
                Arc::new(vec![0; PAGE])
            });
            Arc::make_mut(page)[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size = self.size.max(offset + data.len() as u64);
        added
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            let keep = size.div_ceil(PAGE as u64);
            self.pages.retain(|&i, _| i < keep);
            let off = (size % PAGE as u64) as usize;
            if off != 0 {
                if let Some(p) = self.pages.get_mut(&(size / PAGE as u64)) {
                    Arc::make_mut(p)[off..].fill(0);
                }
            }
        }
        self.size = size;
    }
}

#[derive(Default)]
struct State {
    live: HashMap<u64, Node>,
    durable: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
    /// Open file handle → inode.
    handles: HashMap<u64, u64>,
    /// Inode → open handles (an unlinked file lives while it is open).
    opens: HashMap<u64, u32>,
    capacity: u64,
    stats: Stats,
}

/// What a [`PowerFs`] has seen (for tests that check that syncs happen at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
    pub cuts: u64,
}

/// What a power cut took away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files and directories that existed before the cut and not after.
    pub lost_nodes: usize,
    /// Surviving files whose contents or size went back to an older version.
    pub rolled_back: usize,
    /// Paths (relative to the mount) of the lost names, outermost only: a lost directory
    /// stands for what was in it.
    pub lost: Vec<PathBuf>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl State {
    fn new(capacity: u64) -> State {
        let mut root = Node::new(FileType::Directory, 0o755, 0, 0);
        root.nlink = 1;
        let mut s = State { next_ino: ROOT + 1, next_fh: 1, capacity, ..Default::default() };
        s.live.insert(ROOT, root.clone());
        s.durable.insert(ROOT, root);
        s
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.live.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.live.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&Node> {
        let n = self.node(ino)?;
        if n.is_dir() {
            Ok(n)
        } else {
            Err(libc::ENOTDIR)
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.dir(parent)?.entries.get(name).copied().ok_or(libc::ENOENT)
    }

    fn used(&self) -> u64 {
        self.live.values().map(|n| (n.pages.len() * PAGE) as u64).sum()
    }

    fn handle(&self, fh: u64, ino: u64) -> Res<()> {
        match self.handles.get(&fh) {
            Some(&i) if i == ino => Ok(()),
            _ => Err(libc::EBADF),
        }
    }

    /// Add a new node under `parent/name`.
    fn add(&mut self, parent: u64, name: &OsStr, mut node: Node) -> Res<(u64, FileAttr)> {
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        node.nlink = 1;
        let attr = node.attr(ino);
        self.live.insert(ino, node);
        let p = self.node_mut(parent)?;
        p.entries.insert(name.to_owned(), ino);
        p.mtime = now();
        p.ctime = p.mtime;
        Ok((ino, attr))
    }

    /// One name of `ino` is gone from the live tree; free the node when nothing refers to it.
    fn unref(&mut self, ino: u64) {
        let Some(n) = self.live.get_mut(&ino) else { return };
        n.nlink = n.nlink.saturating_sub(1);
        n.ctime = now();
        self.free_if_unused(ino);
    }

    fn free_if_unused(&mut self, ino: u64) {
        let unused = self.live.get(&ino).is_some_and(|n| n.nlink == 0) && self.opens.get(&ino).copied().unwrap_or(0) == 0;
        if unused {
            self.live.remove(&ino);
            self.drop_durable_if_unused(ino);
        }
    }

    /// A durable node that no durable name refers to and that is gone from the live tree can
    /// never come back: forget it (and what only it referred to).
    fn drop_durable_if_unused(&mut self, ino: u64) {
        let unused = self.durable.get(&ino).is_some_and(|n| n.nlink == 0) && !self.live.contains_key(&ino) && ino != ROOT;
        if unused {
            let n = self.durable.remove(&ino).unwrap();
            for child in n.entries.values() {
                self.durable_unref(*child);
            }
        }
    }

    fn durable_unref(&mut self, ino: u64) {
        if let Some(d) = self.durable.get_mut(&ino) {
            d.nlink = d.nlink.saturating_sub(1);
        }
        self.drop_durable_if_unused(ino);
    }

    /// `fsync`/`fdatasync` of a file: its data, size and attributes become durable.
    fn sync_file(&mut self, ino: u64) -> Res<()> {
        let live = self.node(ino)?.clone();
        self.stats.fsyncs += 1;
        let nlink = self.durable.get(&ino).map_or(0, |d| d.nlink);
        let entries = self.durable.get(&ino).map(|d| d.entries.clone()).unwrap_or_default();
        self.durable.insert(ino, Node { nlink, entries, ..live });
        Ok(())
    }

    /// `fsync` of a directory: its entries (and attributes) become durable. A node named for
    /// the first time becomes durable as it was created: empty, its data and (for a directory)
    /// its own entries waiting for their own syncs.
    fn sync_dir(&mut self, ino: u64) -> Res<()> {
        let live = self.dir(ino)?.clone();
        self.stats.dir_fsyncs += 1;
        let old = self.durable.get(&ino).map(|d| d.entries.clone()).unwrap_or_default();
        let nlink = self.durable.get(&ino).map_or(0, |d| d.nlink);
        for (name, &child) in &live.entries {
            if old.get(name) == Some(&child) {
                continue;
            }
            let d = self.durable.entry(child).or_insert_with(|| {
                let l = &self.live[&child];
                Node { size: if l.kind == FileType::Symlink { l.size } else { 0 }, pages: BTreeMap::new(), entries: BTreeMap::new(), nlink: 0, ..l.clone() }
            });
            d.nlink += 1;
        }
        self.durable.insert(ino, Node { nlink, ..live.clone() });
        for (name, child) in old {
            if live.entries.get(&name) != Some(&child) {
                self.durable_unref(child);
            }
        }
        Ok(())
    }

    fn cut(&mut self) -> CutReport {
        // Only what the durable root reaches survives (a synced file that never got a durable
        // name is an orphan, gone like an inode that fsck would clear).
        let mut reach = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(i) = todo.pop() {
            for &c in self.durable[&i].entries.values() {
                if reach.insert(c) {
                    todo.push(c);
                }
            }
        }
        self.durable.retain(|i, _| reach.contains(i));
        let mut links: HashMap<u64, u32> = HashMap::new();
        for n in self.durable.values() {
            for &c in n.entries.values() {
                *links.entry(c).or_default() += 1;
            }
        }
        for (i, n) in self.durable.iter_mut() {
            n.nlink = if *i == ROOT { 1 } else { links.get(i).copied().unwrap_or(0) };
        }
        let mut report = CutReport::default();
        let mut todo = vec![(ROOT, PathBuf::new())];
        while let Some((d, path)) = todo.pop() {
            for (name, &c) in &self.live[&d].entries {
                if !self.durable.contains_key(&c) || self.durable[&d].entries.get(name) != Some(&c) {
                    report.lost.push(path.join(name));
                } else if self.live[&c].is_dir() {
                    todo.push((c, path.join(name)));
                }
            }
        }
        report.lost.sort();
        for (i, l) in &self.live {
            match self.durable.get(i) {
                None => report.lost_nodes += 1,
                Some(d) => {
                    if d.size != l.size || d.pages.len() != l.pages.len() || d.pages.iter().zip(&l.pages).any(|(a, b)| !Arc::ptr_eq(a.1, b.1)) {
                        report.rolled_back += 1;
                    }
                }
            }
        }
        self.live = self.durable.clone();
        self.handles.clear();
        self.opens.clear();
        self.stats.cuts += 1;
        report
    }

    fn open(&mut self, ino: u64) -> Res<u64> {
        self.node(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        *self.opens.entry(ino).or_default() += 1;
        Ok(fh)
    }

    fn release(&mut self, fh: u64) {
        let Some(ino) = self.handles.remove(&fh) else { return };
        if let Some(n) = self.opens.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.opens.remove(&ino);
            }
        }
        self.free_if_unused(ino);
    }

    fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: RenameFlags) -> Res<()> {
        let src = self.child(parent, name)?;
        self.dir(newparent)?;
        if newname.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        let dst = self.live[&newparent].entries.get(newname).copied();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let dst = dst.ok_or(libc::ENOENT)?;
            self.node_mut(parent)?.entries.insert(name.to_owned(), dst);
            self.node_mut(newparent)?.entries.insert(newname.to_owned(), src);
            return Ok(());
        }
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(libc::EINVAL);
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(libc::EEXIST);
            }
            let (s, d) = (&self.live[&src], &self.live[&dst]);
            match (s.is_dir(), d.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if self.live[&src].is_dir() && self.is_under(newparent, src) {
            return Err(libc::EINVAL);
        }
        self.node_mut(parent)?.entries.remove(name);
        let t = now();
        for p in [parent, newparent] {
            let n = self.node_mut(p)?;
            n.mtime = t;
            n.ctime = t;
        }
        self.node_mut(newparent)?.entries.insert(newname.to_owned(), src);
        self.node_mut(src)?.ctime = t;
        if let Some(dst) = dst {
            self.unref(dst);
        }
        Ok(())
    }

    /// Whether directory `ino` is `dir` or inside it.
    fn is_under(&self, ino: u64, dir: u64) -> bool {
        if ino == dir {
            return true;
        }
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            for &c in self.live[&d].entries.values() {
                if c == ino {
                    return true;
                }
                if self.live[&c].is_dir() {
                    todo.push(c);
                }
            }
        }
        false
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.child(parent, name)?;
        let n = self.node(ino)?;
        match (dir, n.is_dir()) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !n.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let p = self.node_mut(parent)?;
        p.entries.remove(name);
        p.mtime = now();
        p.ctime = p.mtime;
        self.unref(ino);
        Ok(())
    }
}

/// The FUSE side: every callback locks the state, does its work in memory and replies.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.st();
        match st.child(parent.0, name).and_then(|i| Ok(st.node(i)?.attr(i))) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.st().node(ino.0) {
            Ok(n) => reply.attr(&TTL, &n.attr(ino.0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st();
        let n = match st.node_mut(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(err(e)),
        };
        if let Some(size) = size {
            if n.is_dir() {
                return reply.error(err(libc::EISDIR));
            }
            n.truncate(size);
            n.mtime = now();
        }
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if let Some(t) = atime {
            n.atime = time(t);
        }
        if let Some(t) = mtime {
            n.mtime = time(t);
        }
        n.ctime = now();
        reply.attr(&TTL, &n.attr(ino.0));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.st().node(ino.0) {
            Ok(n) if n.kind == FileType::Symlink => reply.data(n.target.as_os_str().as_bytes()),
            Ok(_) => reply.error(err(libc::EINVAL)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let node = Node::new(FileType::Directory, (mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        match self.st().add(parent.0, name, node) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _rdev: u32, reply: ReplyEntry) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(err(libc::EPERM));
        }
        let node = Node::new(FileType::RegularFile, (mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        match self.st().add(parent.0, name, node) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let mut node = Node::new(FileType::Symlink, 0o777, req.uid(), req.gid());
        node.target = target.to_owned();
        node.size = target.as_os_str().len() as u64;
        match self.st().add(parent.0, link_name, node) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.st().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.st().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        match self.st().rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let mut st = self.st();
        let r = (|| {
            if st.node(ino.0)?.is_dir() {
                return Err(libc::EPERM);
            }
            if st.dir(newparent.0)?.entries.contains_key(newname) {
                return Err(libc::EEXIST);
            }
            let p = st.node_mut(newparent.0)?;
            p.entries.insert(newname.to_owned(), ino.0);
            p.mtime = now();
            p.ctime = p.mtime;
            let n = st.node_mut(ino.0)?;
            n.nlink += 1;
            n.ctime = now();
            Ok(n.attr(ino.0))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st();
        if st.node(ino.0).is_ok_and(|n| n.is_dir()) {
            return reply.error(err(libc::EISDIR));
        }
        match st.open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, _flags: OpenFlags, _lock: Option<LockOwner>, reply: ReplyData) {
        let st = self.st();
        match st.handle(fh.0, ino.0).and_then(|()| st.node(ino.0)) {
            Ok(n) => reply.data(&n.read(offset, size)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8], _wf: WriteFlags, flags: OpenFlags, _lock: Option<LockOwner>, reply: ReplyWrite) {
        let mut st = self.st();
        if let Err(e) = st.handle(fh.0, ino.0) {
            return reply.error(err(e));
        }
        let (used, capacity) = (st.used(), st.capacity);
        let n = match st.node_mut(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(err(e)),
        };
        let offset = if flags.0 & libc::O_APPEND != 0 { n.size } else { offset };
        if used + data.len() as u64 + PAGE as u64 > capacity {
            return reply.error(err(libc::ENOSPC));
        }
        n.write(offset, data);
        n.mtime = now();
        n.ctime = n.mtime;
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, _lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        self.st().release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.st();
        match st.handle(fh.0, ino.0).and_then(|()| st.sync_file(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.st().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.st();
        let d = match st.dir(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(err(e)),
        };
        let dots = [(ino.0, FileType::Directory, OsStr::new(".")), (ROOT, FileType::Directory, OsStr::new(".."))];
        let entries = d.entries.iter().map(|(name, &c)| (c, st.live.get(&c).map_or(FileType::RegularFile, |n| n.kind), name.as_os_str()));
        for (i, (c, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(c), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.st().sync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.st();
        let bs = 4096u64;
        let free = st.capacity.saturating_sub(st.used()) / bs;
        reply.statfs(st.capacity / bs, free, free, 1 << 20, (1 << 20) - st.live.len() as u64, bs as u32, 255, bs as u32);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.st().node(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let mut st = self.st();
        let r = match st.child(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(libc::EEXIST),
            Ok(ino) => {
                let n = st.node_mut(ino).unwrap();
                if n.is_dir() {
                    Err(libc::EISDIR)
                } else {
                    if flags & libc::O_TRUNC != 0 {
                        n.truncate(0);
                    }
                    Ok((ino, n.attr(ino)))
                }
            }
            Err(_) => st.add(parent.0, name, Node::new(FileType::RegularFile, (mode & !umask & 0o7777) as u16, req.uid(), req.gid())),
        };
        match r.and_then(|(ino, a)| Ok((st.open(ino)?, a))) {
            Ok((fh, a)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let mut st = self.st();
        if let Err(e) = st.handle(fh.0, ino.0) {
            return reply.error(err(e));
        }
        match mode {
            // Space is not reserved in memory: only the size changes.
            0 => match st.node_mut(ino.0) {
                Ok(n) => {
                    n.size = n.size.max(offset + length);
                    reply.ok()
                }
                Err(e) => reply.error(err(e)),
            },
            libc::FALLOC_FL_KEEP_SIZE => reply.ok(),
            _ => reply.error(err(libc::EOPNOTSUPP)),
        }
    }
}

/// A mounted power-loss simulator. See the module docs for what survives a cut.
pub struct PowerFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mount an empty simulator at `mountpoint` (an existing empty directory) that holds at
    /// most 1 GiB.
    pub fn mount(mountpoint: &Path) -> std::io::Result<PowerFs> {
        Self::mount_with_capacity(mountpoint, 1 << 30)
    }

    /// Mount with `capacity` bytes: writes beyond it fail with ENOSPC; `statfs` reports it.
    pub fn mount_with_capacity(mountpoint: &Path, capacity: u64) -> std::io::Result<PowerFs> {
        let mountpoint = mountpoint.canonicalize()?;
        let state = Arc::new(Mutex::new(State::new(capacity)));
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![fuser::MountOption::FSName("powerfs".into()), fuser::MountOption::Subtype("powerfs".into())];
        cfg.acl = fuser::SessionACL::All;
        // One thread: requests are handled in the order the kernel queued them, which
        // `power_cut` relies on to know that every request of a killed process is done.
        cfg.n_threads = Some(1);
        let session = fuser::spawn_mount(Fs { state: state.clone() }, &mountpoint, &cfg)?;
        Ok(PowerFs { mountpoint, state, session: Some(session) })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the power: everything not durable is dropped, and the file system shows only the
    /// durable state from now on. Every process using the mount must have been killed (and
    /// reaped) before; their open handles answer EBADF afterwards.
    pub fn power_cut(&self) -> CutReport {
        // A request of a killed process that the kernel had already queued is handled before
        // this `stat`'s (one FUSE thread, FIFO), so it cannot land after the cut.
        let _ = std::fs::metadata(&self.mountpoint);
        let r = self.st().cut();
        let names: Vec<_> = r.lost.iter().take(12).map(|p| p.display().to_string()).collect();
        eprintln!("power cut on {}: {} files or directories lost, {} rolled back; names lost: {names:?}", self.mountpoint.display(), r.lost_nodes, r.rolled_back);
        r
    }

    /// Make everything durable, as if every file and directory had been fsynced.
    pub fn sync_all(&self) {
        let _ = std::fs::metadata(&self.mountpoint);
        let mut st = self.st();
        // Open unlinked files come along with no name; a cut drops them as orphans.
        st.durable = st.live.clone();
    }

    pub fn stats(&self) -> Stats {
        self.st().stats
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        // The connection id is the minor number of the mount's device: aborting the connection
        // fails every request in flight, so an unmount never waits on a process stuck here.
        let conn = std::fs::metadata(&self.mountpoint).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            libc::minor(m.dev())
        });
        if let Some(s) = self.session.take() {
            drop(s);
        }
        if crate::is_mounted(&self.mountpoint) {
            if let Some(c) = conn {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
            }
            crate::force_unmount(&self.mountpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn mount() -> (tempfile::TempDir, PowerFs) {
        let d = tempfile::tempdir().unwrap();
        let fs = PowerFs::mount(d.path()).expect("mounting powerfs (needs root and /dev/fuse)");
        (d, fs)
    }

    fn write(path: &Path, data: &[u8], sync: bool) {
        let mut f = File::create(path).unwrap();
        f.write_all(data).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
    }

    fn sync_dir(path: &Path) {
        File::open(path).unwrap().sync_all().unwrap();
    }

    fn read(path: &Path) -> Option<Vec<u8>> {
        fs::read(path).ok()
    }

    #[test]
    fn powerfs_keeps_what_was_synced_and_drops_the_rest() {
        let (_d, p) = mount();
        let m = p.path().to_owned();
        write(&m.join("synced"), b"v1", true);
        write(&m.join("data_only"), b"data", true);
        write(&m.join("name_only"), b"data", false);
        sync_dir(&m);
        write(&m.join("never"), b"data", false);
        write(&m.join("data_only_new"), b"data", true);
        // Appended and truncated after the sync: both are undone.
        OpenOptions::new().append(true).open(m.join("synced")).unwrap().write_all(b" and more").unwrap();
        let f = OpenOptions::new().write(true).open(m.join("data_only")).unwrap();
        f.set_len(1).unwrap();
        drop(f);
        assert_eq!(read(&m.join("synced")).unwrap(), b"v1 and more");
        let r = p.power_cut();
        assert_eq!(read(&m.join("synced")).unwrap(), b"v1");
        assert_eq!(read(&m.join("data_only")).unwrap(), b"data");
        assert_eq!(read(&m.join("name_only")).unwrap(), b"", "a durable name of a file never synced shows it empty");
        assert_eq!(read(&m.join("never")), None);
        assert_eq!(read(&m.join("data_only_new")), None, "a synced file whose directory was not synced is gone");
        assert_eq!((r.lost_nodes, r.rolled_back), (2, 3));
        assert_eq!(r.lost, [PathBuf::from("data_only_new"), PathBuf::from("never")]);
        // The file system works on after the cut.
        write(&m.join("after"), b"x", true);
        sync_dir(&m);
        p.power_cut();
        assert_eq!(read(&m.join("after")).unwrap(), b"x");
    }

    #[test]
    fn powerfs_undoes_namespace_changes_until_the_directory_is_synced() {
        let (_d, p) = mount();
        let m = p.path().to_owned();
        write(&m.join("a"), b"A", true);
        write(&m.join("b"), b"B", true);
        write(&m.join("c"), b"C", true);
        sync_dir(&m);
        fs::rename(m.join("a"), m.join("b")).unwrap();
        fs::remove_file(m.join("c")).unwrap();
        fs::hard_link(m.join("b"), m.join("b2")).unwrap();
        fs::create_dir(m.join("sub")).unwrap();
        write(&m.join("sub/f"), b"F", true);
        sync_dir(&m.join("sub"));
        p.power_cut();
        assert_eq!((read(&m.join("a")).unwrap(), read(&m.join("b")).unwrap(), read(&m.join("c")).unwrap()), (b"A".to_vec(), b"B".to_vec(), b"C".to_vec()));
        assert!(!m.join("b2").exists());
        assert!(!m.join("sub").exists(), "a directory whose parent was not synced is gone with what is in it");

        fs::rename(m.join("a"), m.join("b")).unwrap();
        fs::remove_file(m.join("c")).unwrap();
        fs::create_dir(m.join("sub")).unwrap();
        write(&m.join("sub/f"), b"F", true);
        sync_dir(&m.join("sub"));
        sync_dir(&m);
        p.power_cut();
        assert_eq!(read(&m.join("a")), None);
        assert_eq!(read(&m.join("b")).unwrap(), b"A");
        assert_eq!(read(&m.join("c")), None);
        assert_eq!(read(&m.join("sub/f")).unwrap(), b"F");
    }

    #[test]
    fn powerfs_follows_a_put_through_tmp_and_link() {
        // The chunk server's put: tmp → fsync → link into place → fsync that directory.
        let (_d, p) = mount();
        let m = p.path().to_owned();
        fs::create_dir_all(m.join("blocks/aa")).unwrap();
        fs::create_dir(m.join("tmp")).unwrap();
        p.sync_all();
        let put = |dir: &str, name: &str| {
            let tmp = m.join("tmp").join(name);
            write(&tmp, name.as_bytes(), true);
            fs::create_dir_all(m.join(dir)).unwrap();
            fs::hard_link(&tmp, m.join(dir).join(name)).unwrap();
            fs::remove_file(&tmp).unwrap();
            sync_dir(&m.join(dir));
        };
        put("blocks/aa", "aa01");
        // A new fan-out directory: its own fsync does not make its name durable.
        put("blocks/bb", "bb01");
        p.power_cut();
        assert_eq!(read(&m.join("blocks/aa/aa01")).unwrap(), b"aa01");
        assert_eq!(fs::read_dir(m.join("tmp")).unwrap().count(), 0, "the temporary name never was durable");
        assert!(!m.join("blocks/bb").exists(), "blocks/ was not synced after blocks/bb was made");
        let s = p.stats();
        assert_eq!((s.fsyncs, s.dir_fsyncs, s.cuts), (2, 2, 1));
    }

    #[test]
    fn powerfs_refuses_handles_from_before_a_cut_and_handles_locks() {
        let (_d, p) = mount();
        let m = p.path().to_owned();
        let f = File::create(m.join("LOCK")).unwrap();
        let g = OpenOptions::new().write(true).open(m.join("LOCK")).unwrap();
        // Open-file-description locks conflict between two opens in one process (RocksDB's
        // LOCK uses process-wide fcntl locks; the kernel keeps both kinds for us).
        let lock = |f: &File| {
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            // SAFETY: a valid descriptor and flock struct.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) }
        };
        assert_eq!(lock(&f), 0);
        assert_eq!(lock(&g), -1, "the second lock conflicts");
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
        drop(g);
        let mut f = f;
        p.power_cut();
        let e = f.write_all(b"late").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "a write through a handle of before the cut: {e}");
        drop(f);
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(m.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and out-parameter.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        assert_eq!(s.f_blocks * s.f_frsize, 1 << 30);
    }
}
