//! Extended attributes of the mount: every call goes to the metadata server, except that a
//! known absence is remembered per inode for a short while:
//! - of every attribute, for the inodes a listing (`ReadDirPlus`) said have none: `ls -l`
//!   asks each file for its ACL and its security label, two round trips per entry otherwise;
//! - of `security.capability`, which the kernel asks for before every `write(2)` to see
//!   whether a write must drop file capabilities.

use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_common::proto::meta::*;
use tessera_common::ErrorCode;

const CAPABILITY: &[u8] = b"security.capability";
/// How long a known absence is trusted: as long as the kernel trusts attributes, so an
/// attribute set through another mount shows within the same delay as a `chmod` does.
const ABSENT_TTL: Duration = Duration::from_secs(1);
/// Bound on remembered inodes; past it the table is cleared (it only saves round trips).
const MAX_REMEMBERED: usize = 65536;

/// Inodes known, since the given instant, to have no extended attribute at all (`true`) or no
/// `security.capability`.
#[derive(Default)]
pub struct Absent {
    known: Mutex<HashMap<u64, (Instant, bool)>>,
    /// Changes made through this mount: an answer asked for before one of them is not
    /// remembered, so that this mount always sees its own changes.
    changes: AtomicU64,
}

impl Absent {
    pub(crate) fn knows(&self, ino: u64, name: Option<&[u8]>) -> bool {
        self.known.lock().unwrap().get(&ino).is_some_and(|(t, all)| t.elapsed() < ABSENT_TTL && (*all || name == Some(CAPABILITY)))
    }

    /// What to give [`Self::remember`]: answers asked for after this are not older than this
    /// mount's changes.
    pub fn asking(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// `ino` has no attribute (`all`) or no `security.capability`, as an answer asked for at
    /// `asked` said.
    pub fn remember(&self, asked: u64, ino: u64, all: bool) {
        let mut m = self.known.lock().unwrap();
        // Checked under the lock that `forget` takes too.
        if self.changes.load(Ordering::SeqCst) != asked {
            return;
        }
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        let all = all || m.get(&ino).is_some_and(|(t, a)| *a && t.elapsed() < ABSENT_TTL);
        m.insert(ino, (Instant::now(), all));
    }

    fn forget(&self, ino: u64) {
        let mut m = self.known.lock().unwrap();
        self.changes.fetch_add(1, Ordering::SeqCst);
        m.remove(&ino);
    }
}

fn unexpected(r: MetaResponse) -> FsError {
    FsError::Io(format!("unexpected reply from the metadata server: {r:?}"))
}

impl Fs {
    /// Whether attribute `name` of `ino` is known to be absent (no round trip needed): cheap
    /// enough for the FUSE thread, which asks before `get_xattr`.
    pub fn xattr_known_absent(&self, ino: u64, name: &[u8]) -> bool {
        self.xattr_absent.knows(ino, Some(name))
    }

    /// Asks the metadata server; a caller checks `xattr_known_absent` first.
    pub async fn get_xattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let asked = self.xattr_absent.asking();
        match self.meta.call(MetaRequest::GetXattr { ino, name: name.to_vec() }).await {
            Ok(MetaResponse::Xattr(v)) => Ok(v),
            Ok(r) => Err(unexpected(r)),
            Err(FsError::Wire(e)) if e.code == ErrorCode::NoAttribute && name == CAPABILITY => {
                self.xattr_absent.remember(asked, ino, false);
                Err(FsError::Wire(e))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn list_xattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        if self.xattr_absent.knows(ino, None) {
            return Ok(Vec::new());
        }
        match self.meta.call(MetaRequest::ListXattr { ino }).await? {
            MetaResponse::XattrNames(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    pub async fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        // Before the change as well as after: a lookup of the absence that overlaps the change
        // must not be remembered.
        self.xattr_absent.forget(ino);
        let r = self.meta.mutate_done(Mutation::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), flags }).await;
        self.xattr_absent.forget(ino);
        r
    }

    pub async fn remove_xattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.meta.mutate_done(Mutation::RemoveXattr { ino, name: name.to_vec() }).await
    }
}

/// A `getxattr`/`listxattr` reply for a caller's buffer of `size` bytes: the needed size when
/// `size` is 0, `ERANGE` when the buffer is too small.
pub enum Answer {
    Size(u32),
    Data(Vec<u8>),
}

pub fn fit(data: Vec<u8>, size: u32) -> FsResult<Answer> {
    if size == 0 {
        Ok(Answer::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(FsError::Errno(libc::ERANGE))
    } else {
        Ok(Answer::Data(data))
    }
}

/// Names as `listxattr(2)` returns them: each followed by a NUL.
pub fn name_list(names: &[Vec<u8>]) -> Vec<u8> {
    names.iter().flat_map(|n| n.iter().copied().chain([0])).collect()
}
