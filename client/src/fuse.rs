//! The FUSE adapter: the only module that sees fuser's types. Each callback copies its
//! arguments, runs the operation on tokio and replies once; the FUSE thread never waits on the
//! network.

use crate::error::FsError;
use crate::fs::Fs;
use crate::xattr;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_common::proto::meta::{Attr, FileKind, SetAttr, SetTime};
use tokio::runtime::Handle;

/// How long the kernel may trust attributes and names: short, so that another client's change
/// shows within a second, long enough to spare a round trip per `stat` in a tight loop.
const TTL: Duration = Duration::from_secs(1);
/// Largest write and read request: the kernel's limit without raising `max_pages_limit`.
pub const MAX_IO: u32 = 1 << 20;

pub struct FuseFs {
    fs: Arc<Fs>,
    rt: Handle,
    /// Set once the session exists (it is made from this value).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, rt: Handle) -> Self {
        FuseFs { fs, rt, notifier: Arc::default() }
    }

    /// Where the mount puts the session's notifier.
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Answer a call from a task, counting it under `op` with its time (`--metrics`).
    fn spawn<F>(&self, op: &'static str, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let m = self.fs.blocks.metrics.clone();
        self.rt.spawn(async move {
            let t = std::time::Instant::now();
            f.await;
            m.fuse.observe(op, t.elapsed());
        });
    }
}

fn errno(e: &FsError) -> Errno {
    if !e.is_expected() {
        tracing::warn!("operation failed: {e}");
    }
    Errno::from_i32(e.errno())
}

fn reply_xattr(r: Result<xattr::Answer, FsError>, reply: fuser::ReplyXattr) {
    match r {
        Ok(xattr::Answer::Size(n)) => reply.size(n),
        Ok(xattr::Answer::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(&e)),
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        // Large enough that cp and stdio use big buffers.
        blksize: MAX_IO,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(match s.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        }),
    })
}

fn mode_kind(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        _ => return None,
    })
}

/// A listing of directory `ino` on handle `fh` from `offset` on: "." and ".." (offsets 1 and
/// 2, no attributes), then each entry at its stable cookie, given to `add` until it says the
/// reply is full. With `plus`, every entry comes with its attributes.
async fn list(fs: &Fs, fh: u64, ino: u64, offset: u64, plus: bool, mut add: impl FnMut(u64, u64, FileKind, &[u8], Option<&Attr>) -> bool) -> Result<(), FsError> {
    if offset == 0 {
        // From the start (opendir, rewinddir): the directory as it is now.
        fs.listings.forget(fh);
    }
    if offset < 1 && add(ino, 1, FileKind::Dir, b".", None) {
        return Ok(());
    }
    if offset < 2 && add(ino, 2, FileKind::Dir, b"..", None) {
        return Ok(());
    }
    let mut after = offset.max(2);
    loop {
        let (page, from) = fs.readdir(fh, ino, after, plus).await?;
        for (e, a) in &page.entries[from..] {
            if plus && a.is_none() {
                return Err(FsError::Errno(libc::EIO));
            }
            if add(e.ino, e.cookie, e.kind, &e.name, a.as_ref()) {
                return Ok(());
            }
            after = e.cookie;
        }
        if page.done {
            return Ok(());
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        // Readahead: as much as the kernel allows; the bdi setting after mount raises it further.
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_MAX_PAGES | InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // The kernel enforces POSIX ACLs and caches them; the server keeps them in step with the
        // mode and does default-ACL inheritance, so it also applies the umask itself.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK);
        // Locks go to the metadata server (client/src/locks.rs), so they hold across mounts.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS) {
            tracing::warn!(?missing, "the kernel does not pass these locks on: they are local to this mount");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.spawn("lookup", async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.spawn("getattr", async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        let fs = self.fs.clone();
        let attr = SetAttr { mode, uid, gid, size, atime: set_time(atime), mtime: set_time(mtime) };
        self.spawn("setattr", async move {
            match fs.setattr(ino.0, attr).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn("readlink", async move {
            match fs.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let Some(k) = mode_kind(mode) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let (fs, name, uid, gid) = (self.fs.clone(), name.as_bytes().to_vec(), req.uid(), req.gid());
        let (perm, umask) = ((mode & 0o7777) as u16, (umask & 0o777) as u16);
        self.spawn("mknod", async move {
            match fs.create(parent.0, &name, k, perm, umask, uid, gid, rdev, None).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (fs, name, uid, gid) = (self.fs.clone(), name.as_bytes().to_vec(), req.uid(), req.gid());
        let (perm, umask) = ((mode & 0o7777) as u16, (umask & 0o777) as u16);
        self.spawn("mkdir", async move {
            match fs.create(parent.0, &name, FileKind::Dir, perm, umask, uid, gid, 0, None).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.spawn("unlink", async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.spawn("rmdir", async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (fs, name, uid, gid) = (self.fs.clone(), link_name.as_bytes().to_vec(), req.uid(), req.gid());
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn("symlink", async move {
            match fs.create(parent.0, &name, FileKind::Symlink, 0o777, 0, uid, gid, 0, Some(target)).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        let (fs, name, newname) = (self.fs.clone(), name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.spawn("rename", async move {
            match fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (fs, newname) = (self.fs.clone(), newname.as_bytes().to_vec());
        self.spawn("link", async move {
            match fs.link(ino.0, newparent.0, &newname).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Without `FOPEN_KEEP_CACHE` the kernel drops the file's pages. When the content changed
    /// since they were filled, its cached attributes go too (before the reply), so that the
    /// new size is seen at once, not after the TTL.
    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (fs, notifier) = (self.fs.clone(), self.notifier.clone());
        self.spawn("open", async move {
            match fs.open(ino.0).await {
                Ok((fh, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Ok((fh, false)) => {
                    if let Some(n) = notifier.get() {
                        // Offset -1: attributes only; the open itself drops the pages. ENOENT
                        // (the kernel holds no such inode) needs nothing.
                        let _ = n.inval_inode(ino, -1, 0);
                    }
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, size: u32, _flags: OpenFlags, _lock: Option<LockOwner>, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn("read", async move {
            match fs.read(fh.0, offset, size).await {
                Ok(d) => {
                    fs.blocks.metrics.read_bytes.inc_by(d.len() as u64);
                    reply.data(&d)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, data) = (self.fs.clone(), data.to_vec());
        self.spawn("write", async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => {
                    fs.blocks.metrics.written_bytes.inc_by(n as u64);
                    reply.written(n)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Each close(2): POSIX drops every `fcntl` lock the closing process holds on the file.
    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock: LockOwner, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.spawn("flush", async move {
            let unlocked = fs.locks.release_owner(&fs.meta, ino.0, lock.0).await;
            match fs.flush(fh.0).await.and(unlocked) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// The last close of an open file: its `flock` (owner given by the kernel) goes, and with
    /// the inode's last handle on this mount, every lock of this mount on it (`Close`).
    fn release(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.spawn("release", async move {
            if let Some(owner) = lock {
                if let Err(e) = fs.locks.release_owner(&fs.meta, ino.0, owner.0).await {
                    tracing::warn!(ino = ino.0, "releasing a flock at close failed: {e}");
                }
            }
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.spawn("fsync", async move {
            match fs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.fs.listings.open()), FopenFlags::empty());
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.listings.release(fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = self.fs.clone();
        self.spawn("readdir", async move {
            match list(&fs, fh.0, ino.0, offset, false, |i, cookie, k, name, _| reply.add(INodeNo(i), cookie, kind(k), OsStr::from_bytes(name))).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// As `readdir`, each entry with its attributes, so that `ls -l` needs no lookup per entry
    /// (the kernel asks for this while a listing is followed by lookups: READDIRPLUS_AUTO).
    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let fs = self.fs.clone();
        self.spawn("readdirplus", async move {
            // The kernel makes no dentry of "." and "..": their attributes are not used, and
            // a zero TTL keeps them from being cached.
            let dot = file_attr(&Attr { ino: ino.0, kind: FileKind::Dir, perm: 0o755, nlink: 2, uid: 0, gid: 0, size: 0, atime: 0, mtime: 0, ctime: 0, rdev: 0 });
            let added = list(&fs, fh.0, ino.0, offset, true, |i, cookie, _, name, a| match a {
                Some(a) => reply.add(INodeNo(i), cookie, OsStr::from_bytes(name), &TTL, &file_attr(a), Generation(0)),
                None => reply.add(INodeNo(i), cookie, OsStr::from_bytes(name), &Duration::ZERO, &dot, Generation(0)),
            })
            .await;
            match added {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every namespace change is durable before it is acknowledged.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.fs.clone();
        self.spawn("statfs", async move {
            match fs.statfs().await {
                Ok(s) => {
                    let bsize = 4096u64;
                    reply.statfs(s.total_bytes / bsize, s.free_bytes / bsize, s.free_bytes / bsize, s.files, u64::MAX / 2, bsize as u32, 255, bsize as u32)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Mode 0 (allocate, extending the size) is a size change: blocks are allocated when
    /// written anyway. `KEEP_SIZE` alone has nothing to do: a content-addressed store cannot
    /// reserve space for bytes it has not seen. `PUNCH_HOLE | KEEP_SIZE` zeroes the range
    /// (whole blocks become holes). Other modes: EOPNOTSUPP.
    fn fallocate(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if mode != 0 && mode != KEEP && mode != PUNCH {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let fs = self.fs.clone();
        self.spawn("fallocate", async move {
            let r = async {
                let end = offset.checked_add(length).ok_or(FsError::Errno(libc::EFBIG))?;
                match mode {
                    0 => {
                        let size = fs.getattr(ino.0).await?.size;
                        fs.setattr(ino.0, SetAttr { size: Some(size.max(end)), ..Default::default() }).await.map(|_| ())
                    }
                    KEEP => Ok(()),
                    _ => fs.punch_hole(fh.0, offset, length).await,
                }
            }
            .await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// The kernel asks only for `SEEK_DATA` and `SEEK_HOLE`; the others it answers itself.
    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::from_i32(libc::ENXIO));
        };
        let fs = self.fs.clone();
        self.spawn("lseek", async move {
            match fs.seek_hole_or_data(fh.0, offset, data).await {
                Ok(p) => reply.offset(p as i64),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Whole blocks are copied by reference, the rest by value (`Fs::copy_range`). The
    /// destination's bytes changed behind the kernel's pages of the range: they are dropped
    /// before the reply (recent kernels drop them again after it).
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let (fs, notifier) = (self.fs.clone(), self.notifier.clone());
        self.spawn("copy_file_range", async move {
            match fs.copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len).await {
                Ok(n) => {
                    if let (Some(nt), true) = (notifier.get().cloned(), n > 0) {
                        // The kernel waits on page locks here: off the async threads.
                        let _ = tokio::task::spawn_blocking(move || nt.inval_inode(ino_out, offset_out as i64, n as i64)).await;
                    }
                    reply.written(n as u32)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        // A known absence is answered here, on the FUSE thread: `ls -l` asks two per file.
        if self.fs.xattr_known_absent(ino.0, name.as_bytes()) {
            let t = std::time::Instant::now();
            reply.error(Errno::from_i32(libc::ENODATA));
            self.fs.blocks.metrics.fuse.observe("getxattr", t.elapsed());
            return;
        }
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.spawn("getxattr", async move {
            let r = async { xattr::fit(fs.get_xattr(ino.0, &name).await?, size) };
            reply_xattr(r.await, reply);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let fs = self.fs.clone();
        self.spawn("listxattr", async move {
            let r = async { xattr::fit(xattr::name_list(&fs.list_xattr(ino.0).await?), size) };
            reply_xattr(r.await, reply);
        });
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let (fs, name, value) = (self.fs.clone(), name.as_bytes().to_vec(), value.to_vec());
        self.spawn("setxattr", async move {
            match fs.set_xattr(ino.0, &name, &value, flags as u32).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        self.spawn("removexattr", async move {
            match fs.remove_xattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getlk(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32, reply: ReplyLock) {
        let fs = self.fs.clone();
        self.spawn("getlk", async move {
            let r = async { fs.locks.get(&fs.meta, ino.0, crate::locks::spec(lock_owner.0, start, end, typ, pid)?).await }.await;
            match r {
                Ok(h) => {
                    let (start, end, typ, pid) = crate::locks::reported(h);
                    reply.locked(start, end, typ, pid)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// `F_SETLK`, `F_SETLKW` (`sleep`), `flock` and OFD locks. A waiting lock is a task, not a
    /// FUSE thread.
    fn setlk(&self, req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32, sleep: bool, reply: ReplyEmpty) {
        let (fs, tid) = (self.fs.clone(), req.pid());
        self.spawn("setlk", async move {
            let r = async { fs.locks.set(&fs.meta, ino.0, crate::locks::spec(lock_owner.0, start, end, typ, pid)?, sleep, tid).await }.await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions).
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _flags: i32, reply: ReplyCreate) {
        let (fs, name, uid, gid) = (self.fs.clone(), name.as_bytes().to_vec(), req.uid(), req.gid());
        let (perm, umask) = ((mode & 0o7777) as u16, (umask & 0o777) as u16);
        self.spawn("create", async move {
            match fs.create_open(parent.0, &name, perm, umask, uid, gid).await {
                Ok((a, fh)) => reply.created(&TTL, &file_attr(&a), Generation(0), FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}
