//! Locks through the metadata server: `fcntl` byte-range locks, OFD locks and `flock` (the
//! kernel sends all three as lock requests with an owner and a range) are granted there, so a
//! lock held through one mount blocks the same lock through another.
//!
//! A blocked `F_SETLKW` waits on a tokio task, never on a FUSE thread: it asks the server to
//! answer when the lock is free (`WaitLock`, at most a few seconds per call) and tries again.
//! fuser 0.18 does not pass `FUSE_INTERRUPT` on, so a signal is noticed here instead: while
//! waiting, the requesting thread's pending signals are read from `/proc` every
//! `SIGNAL_POLL`; one that is not blocked ends the wait with EINTR, as a local lock would.

use crate::error::{FsError, FsResult};
use crate::meta::MetaClient;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tessera_common::proto::meta::{LockHolder, LockKind, LockSpec, MetaRequest, MetaResponse, Mutation};
use tessera_common::ErrorCode;

/// How often a waiting lock looks for a signal to its process.
const SIGNAL_POLL: Duration = Duration::from_millis(100);
/// Longest single `WaitLock` call.
const WAIT_MS: u32 = 5000;
/// The kernel's "to the end of the file" (`OFFSET_MAX`).
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Owners that may hold locks on an inode through this mount: a close then releases them at
/// the server, and a close without any costs no round trip.
#[derive(Default)]
pub struct Locks {
    held: Mutex<HashSet<(u64, u64)>>,
}

/// The kernel's lock request as the server takes it. `typ` is `F_RDLCK`, `F_WRLCK` or
/// `F_UNLCK`; `end` is inclusive, `OFFSET_MAX` meaning the end of the file.
pub fn spec(owner: u64, start: u64, end: u64, typ: i32, pid: u32) -> FsResult<LockSpec> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return Err(FsError::Errno(libc::EINVAL)),
    };
    let end = if end >= OFFSET_MAX { u64::MAX } else { end };
    if start > end {
        return Err(FsError::Errno(libc::EINVAL));
    }
    Ok(LockSpec { owner, kind, start, end, pid })
}

/// `F_GETLK`'s answer: (start, end, type, pid) of the lock in the way, or `F_UNLCK`.
pub fn reported(h: Option<LockHolder>) -> (u64, u64, i32, u32) {
    match h {
        None => (0, 0, libc::F_UNLCK, 0),
        Some(h) => (h.lock.start, h.lock.end.min(OFFSET_MAX), if h.lock.kind == LockKind::Read { libc::F_RDLCK } else { libc::F_WRLCK }, h.lock.pid),
    }
}

impl Locks {
    /// `F_SETLK` (`wait` false: EAGAIN when held elsewhere) and `F_SETLKW` (wait until free;
    /// EINTR if thread `tid` gets a signal meanwhile).
    pub async fn set(&self, meta: &MetaClient, ino: u64, lock: LockSpec, wait: bool, tid: u32) -> FsResult<()> {
        loop {
            match meta.mutate_done(Mutation::SetLock { ino, lock }).await {
                Ok(()) => {
                    if lock.kind != LockKind::Unlock {
                        self.held.lock().unwrap().insert((ino, lock.owner));
                    }
                    return Ok(());
                }
                Err(FsError::Wire(e)) if e.code == ErrorCode::WouldBlock && wait => {
                    let free = meta.call(MetaRequest::WaitLock { ino, session: meta.session(), lock, timeout_ms: WAIT_MS });
                    tokio::select! {
                        r = free => { r?; }
                        _ = signalled(tid) => return Err(FsError::Errno(libc::EINTR)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn get(&self, meta: &MetaClient, ino: u64, lock: LockSpec) -> FsResult<Option<LockHolder>> {
        match meta.call(MetaRequest::GetLock { ino, session: meta.session(), lock }).await? {
            MetaResponse::Lock(h) => Ok(h),
            r => Err(FsError::Io(format!("unexpected reply to GetLock: {r:?}"))),
        }
    }

    /// A close by `owner` (flush: a process's `fcntl` locks; release: an open file's `flock`
    /// and OFD locks): release what it holds on `ino`.
    pub async fn release_owner(&self, meta: &MetaClient, ino: u64, owner: u64) -> FsResult<()> {
        if !self.held.lock().unwrap().remove(&(ino, owner)) {
            return Ok(());
        }
        let lock = LockSpec { owner, kind: LockKind::Unlock, start: 0, end: u64::MAX, pid: 0 };
        meta.mutate_done(Mutation::SetLock { ino, lock }).await
    }

    /// The file's last close on this mount (`Close` releases every lock at the server):
    /// forget its owners, and say whether there were any.
    pub fn forget_file(&self, ino: u64) -> bool {
        let mut held = self.held.lock().unwrap();
        let n = held.len();
        held.retain(|(i, _)| *i != ino);
        held.len() != n
    }

    /// A new session: the old one's locks are gone.
    pub fn forget_all(&self) {
        self.held.lock().unwrap().clear();
    }
}

/// Resolves once thread `tid` has a signal pending that it does not block (or is gone).
async fn signalled(tid: u32) {
    loop {
        tokio::time::sleep(SIGNAL_POLL).await;
        if signal_pending(tid) {
            return;
        }
    }
}

fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return true };
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0);
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0 || status.lines().any(|l| l.starts_with("State:") && (l.contains("zombie") || l.contains("dead")))
}
