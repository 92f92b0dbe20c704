//! Extended attributes of the mount: every call goes to the metadata server (no cache), except
//! that the absence of `security.capability` is remembered per inode for a short while. The
//! kernel asks for that attribute before every `write(2)` to see whether a write must drop
//! file capabilities; answering from memory spares a metadata round trip per write.

use crate::error::{FsError, FsResult};
use crate::fs::Fs;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_common::proto::meta::*;
use tessera_common::ErrorCode;

const CAPABILITY: &[u8] = b"security.capability";
/// How long a known absence is trusted: as long as the kernel trusts attributes, so a
/// capability set through another mount shows within the same delay as a `chmod` does.
const ABSENT_TTL: Duration = Duration::from_secs(1);
/// Bound on remembered inodes; past it the table is cleared (it only saves round trips).
const MAX_REMEMBERED: usize = 65536;

/// Inodes known, since the given instant, to have no `security.capability`.
#[derive(Default)]
pub struct NoCapability(Mutex<HashMap<u64, Instant>>);

impl NoCapability {
    fn known(&self, ino: u64) -> bool {
        self.0.lock().unwrap().get(&ino).is_some_and(|t| t.elapsed() < ABSENT_TTL)
    }

    fn remember(&self, ino: u64) {
        let mut m = self.0.lock().unwrap();
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        m.insert(ino, Instant::now());
    }

    fn forget(&self, ino: u64) {
        self.0.lock().unwrap().remove(&ino);
    }
}

fn unexpected(r: MetaResponse) -> FsError {
    FsError::Io(format!("unexpected reply from the metadata server: {r:?}"))
}

fn no_attribute() -> FsError {
    FsError::Errno(libc::ENODATA)
}

impl Fs {
    pub async fn get_xattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let capability = name == CAPABILITY;
        if capability && self.no_capability.known(ino) {
            return Err(no_attribute());
        }
        match self.meta.call(MetaRequest::GetXattr { ino, name: name.to_vec() }).await {
            Ok(MetaResponse::Xattr(v)) => Ok(v),
            Ok(r) => Err(unexpected(r)),
            Err(FsError::Wire(e)) if e.code == ErrorCode::NoAttribute && capability => {
                self.no_capability.remember(ino);
                Err(FsError::Wire(e))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn list_xattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        match self.meta.call(MetaRequest::ListXattr { ino }).await? {
            MetaResponse::XattrNames(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    pub async fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> FsResult<()> {
        let r = self.meta.mutate_done(Mutation::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), flags }).await;
        self.no_capability.forget(ino);
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
