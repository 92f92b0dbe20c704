//! The namespace state machine.
//!
//! Every change is a [`Command`]: the non-deterministic parts (time, a new inode number) are
//! fixed before it is applied, then `execute` validates it against the current state and turns
//! it into one atomic [`Batch`]. Replaying the same commands in order on another replica gives
//! the same state, which is what Raft replication will need. The reply of each mutation is
//! stored per `(session, seq)` in the same batch, so a retried mutation is answered, not
//! applied twice. A session belongs to the certificate that opened it: another certificate
//! that names it (to read its stored replies or to pre-empt its next mutation) gets
//! `UnknownSession`, as does a session that was never opened.

use crate::store::{Batch, Cf, Store, StoreError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use tessera_common::names::{check_name, MAX_SYMLINK_LEN};
use tessera_common::proto::meta::*;
use tessera_common::{BlockId, ErrorCode, WireError, ROOT_INO};

/// Largest file size accepted (keeps every size and offset far from integer overflow).
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// Replies kept per session for retries.
const RETRY_WINDOW: u64 = 4096;
/// Encoding version of every persisted record (first byte).
const V1: u8 = 1;

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        let code = if matches!(e, StoreError::Failed(_)) { ErrorCode::Unavailable } else { ErrorCode::Internal };
        err(code, e.to_string())
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![V1];
    out.extend(bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding a record"));
    out
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    match b.split_first() {
        Some((&V1, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| err(ErrorCode::Internal, format!("corrupt record: {e}"))),
        _ => Err(err(ErrorCode::Internal, "record with unknown encoding version")),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InodeRec {
    kind: FileKind,
    perm: u16,
    nlink: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    rdev: u32,
    target: Option<Vec<u8>>,
    /// Parent directory (directories only; used to refuse moving a directory into itself).
    parent: u64,
    /// Next readdir cookie (directories only). 1 and 2 are `.` and `..`.
    next_cookie: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct DirentRec {
    ino: u64,
    kind: FileKind,
    cookie: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub files: u64,
    pub logical_bytes: u64,
    pub blocks: u64,
}

fn ino_key(ino: u64) -> Vec<u8> {
    ino.to_be_bytes().to_vec()
}
fn pair_key(a: u64, b: u64) -> Vec<u8> {
    let mut k = a.to_be_bytes().to_vec();
    k.extend_from_slice(&b.to_be_bytes());
    k
}
fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = parent.to_be_bytes().to_vec();
    k.extend_from_slice(name);
    k
}
fn tail_u64(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
}

fn enc_bref(b: &BlockRef) -> Vec<u8> {
    let mut v = vec![V1];
    v.extend_from_slice(&b.id.0);
    v.extend_from_slice(&b.len.to_le_bytes());
    v
}
fn dec_bref(v: &[u8]) -> Result<BlockRef, WireError> {
    if v.len() != 37 || v[0] != V1 {
        return Err(err(ErrorCode::Internal, "corrupt block-map entry"));
    }
    Ok(BlockRef { id: BlockId(v[1..33].try_into().unwrap()), len: u32::from_le_bytes(v[33..37].try_into().unwrap()) })
}

/// The certificate a session belongs to, recorded when it is opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOwner {
    /// Certificate name (CN), for logs.
    pub name: String,
    /// BLAKE3 of the certificate: what is compared.
    pub fingerprint: [u8; 32],
}

impl From<&tessera_common::tls::Identity> for SessionOwner {
    fn from(id: &tessera_common::tls::Identity) -> Self {
        SessionOwner { name: id.name.clone(), fingerprint: id.fingerprint }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionRec {
    owner: SessionOwner,
    /// The name the client gave (`OpenSession { client }`).
    client: String,
    opened: i64,
}

/// Key of a session's own record in `Cf::Sessions`; its replies are keyed (session, seq).
fn session_key(session: u64) -> Vec<u8> {
    ino_key(session)
}

const KEY_NEXT_INO: &[u8] = b"next_ino";
const KEY_NEXT_SESSION: &[u8] = b"next_session";
const KEY_STATS: &[u8] = b"stats";
const KEY_FS: &[u8] = b"fs";

/// File-system-wide settings fixed when the namespace is created.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FsParams {
    pub block_size: u32,
}

/// A mutation with its non-deterministic inputs decided.
#[derive(Clone, Debug)]
pub struct Command {
    pub session: u64,
    pub seq: u64,
    pub now: i64,
    pub new_ino: u64,
    pub op: Mutation,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

struct Counters {
    next_ino: u64,
    next_session: u64,
}

pub struct Namespace {
    store: Store,
    lock: Mutex<Counters>,
    pub params: FsParams,
}

/// Reads and writes of one command. Every record a command changes (inodes, directory entries,
/// block-map entries, inline data) is overlaid, so later steps of the same command see the
/// earlier ones; reference-count changes are summed and applied once in `finish`.
struct Txn<'a> {
    store: &'a Store,
    batch: Batch,
    inodes: HashMap<u64, Option<InodeRec>>,
    dirents: HashMap<(u64, Vec<u8>), Option<DirentRec>>,
    blocks: BTreeMap<(u64, u64), Option<BlockRef>>,
    inline: HashMap<u64, Option<Vec<u8>>>,
    refs: HashMap<BlockId, i64>,
    /// The session of the command: orphans are kept for it.
    session: u64,
    files: i64,
    bytes: i64,
    now: i64,
    block_size: u64,
}

impl<'a> Txn<'a> {
    fn inode(&mut self, ino: u64) -> Result<InodeRec, WireError> {
        if let Some(r) = self.inodes.get(&ino) {
            return r.clone().ok_or_else(|| err(ErrorCode::NotFound, format!("inode {ino}")));
        }
        match self.store.get(Cf::Inodes, &ino_key(ino))? {
            Some(v) => dec(&v),
            None => Err(err(ErrorCode::NotFound, format!("inode {ino} does not exist"))),
        }
    }

    fn dir(&mut self, ino: u64) -> Result<InodeRec, WireError> {
        let r = self.inode(ino)?;
        if r.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, format!("inode {ino} is not a directory")));
        }
        Ok(r)
    }

    fn put_inode(&mut self, ino: u64, r: InodeRec) {
        self.inodes.insert(ino, Some(r));
    }

    fn dirent(&self, parent: u64, name: &[u8]) -> Result<Option<DirentRec>, WireError> {
        if let Some(d) = self.dirents.get(&(parent, name.to_vec())) {
            return Ok(*d);
        }
        self.store.get(Cf::Dirents, &dirent_key(parent, name))?.map(|v| dec(&v)).transpose()
    }

    /// The block-map entry `idx` of `ino` as this command has left it.
    fn block(&self, ino: u64, idx: u64) -> Result<Option<BlockRef>, WireError> {
        if let Some(b) = self.blocks.get(&(ino, idx)) {
            return Ok(*b);
        }
        self.store.get(Cf::BlockMap, &pair_key(ino, idx))?.map(|v| dec_bref(&v)).transpose()
    }

    /// Set or clear one block-map entry; the replaced block loses a reference, the new gains one.
    fn set_block(&mut self, ino: u64, idx: u64, b: Option<BlockRef>) -> Result<(), WireError> {
        if let Some(old) = self.block(ino, idx)? {
            *self.refs.entry(old.id).or_default() -= 1;
        }
        if let Some(new) = b {
            *self.refs.entry(new.id).or_default() += 1;
        }
        self.blocks.insert((ino, idx), b);
        Ok(())
    }

    fn add_dirent(&mut self, parent: u64, name: &[u8], ino: u64, kind: FileKind) -> Result<(), WireError> {
        let mut p = self.dir(parent)?;
        let cookie = p.next_cookie;
        p.next_cookie += 1;
        p.mtime = self.now;
        p.ctime = self.now;
        if kind == FileKind::Dir {
            p.nlink += 1;
        }
        self.put_inode(parent, p);
        self.dirents.insert((parent, name.to_vec()), Some(DirentRec { ino, kind, cookie }));
        self.batch.put(Cf::DirCookies, pair_key(parent, cookie), name.to_vec());
        Ok(())
    }

    fn remove_dirent(&mut self, parent: u64, name: &[u8], d: &DirentRec) -> Result<(), WireError> {
        let mut p = self.dir(parent)?;
        p.mtime = self.now;
        p.ctime = self.now;
        if d.kind == FileKind::Dir {
            p.nlink -= 1;
        }
        self.put_inode(parent, p);
        self.dirents.insert((parent, name.to_vec()), None);
        self.batch.delete(Cf::DirCookies, pair_key(parent, d.cookie));
        Ok(())
    }

    /// Drop one link of a non-directory; the inode and its blocks go with the last one, unless
    /// `keep` and it is a regular file: then it stays, with no link, as an orphan of this
    /// session (returned), until `DropOrphan`.
    fn unlink_inode(&mut self, ino: u64, keep: bool) -> Result<Option<u64>, WireError> {
        let mut r = self.inode(ino)?;
        r.nlink = r.nlink.checked_sub(1).ok_or_else(|| err(ErrorCode::Internal, format!("inode {ino} has a name but no link count")))?;
        r.ctime = self.now;
        if r.nlink > 0 {
            self.put_inode(ino, r);
            return Ok(None);
        }
        if keep && r.kind == FileKind::File {
            self.put_inode(ino, r);
            self.batch.put(Cf::Orphans, pair_key(self.session, ino), enc(&self.now));
            return Ok(Some(ino));
        }
        self.drop_inode(ino, &r)?;
        Ok(None)
    }

    fn drop_inode(&mut self, ino: u64, r: &InodeRec) -> Result<(), WireError> {
        if r.kind == FileKind::File {
            self.drop_blocks_from(ino, 0)?;
            self.inline.insert(ino, None);
            self.bytes -= r.size as i64;
        }
        self.files -= 1;
        self.inodes.insert(ino, None);
        Ok(())
    }

    /// Drop block-map entries with index >= `first`: those in the store (paged forward by key)
    /// and those this command set.
    fn drop_blocks_from(&mut self, ino: u64, first: u64) -> Result<(), WireError> {
        let prefix = ino_key(ino);
        let mut start = pair_key(ino, first);
        loop {
            let entries = self.store.scan(Cf::BlockMap, &prefix, &start, 4096)?;
            let n = entries.len();
            for (k, _) in entries {
                let idx = tail_u64(&k);
                self.set_block(ino, idx, None)?;
                start = pair_key(ino, idx.saturating_add(1));
            }
            if n < 4096 {
                break;
            }
        }
        let set: Vec<u64> = self.blocks.range((ino, first)..=(ino, u64::MAX)).filter(|(_, b)| b.is_some()).map(|((_, i), _)| *i).collect();
        for idx in set {
            self.set_block(ino, idx, None)?;
        }
        Ok(())
    }

    fn inline(&self, ino: u64) -> Result<Option<Vec<u8>>, WireError> {
        if let Some(d) = self.inline.get(&ino) {
            return Ok(d.clone());
        }
        match self.store.get(Cf::Inline, &ino_key(ino))? {
            Some(v) if v.first() == Some(&V1) => Ok(Some(v[1..].to_vec())),
            Some(_) => Err(err(ErrorCode::Internal, "corrupt inline data")),
            None => Ok(None),
        }
    }

    fn put_inline(&mut self, ino: u64, data: &[u8]) {
        self.inline.insert(ino, Some(data.to_vec()));
    }

    fn truncate(&mut self, ino: u64, r: &mut InodeRec, size: u64) -> Result<(), WireError> {
        if let Some(mut d) = self.inline(ino)? {
            if (d.len() as u64) > size {
                d.truncate(size as usize);
                self.put_inline(ino, &d);
            }
        }
        if size < r.size {
            let bs = self.block_size;
            self.drop_blocks_from(ino, size.div_ceil(bs))?;
            let rem = size % bs;
            if rem != 0 {
                if let Some(mut b) = self.block(ino, size / bs)? {
                    if b.len as u64 > rem {
                        // The block keeps its bytes (its id is their hash); only `len` of them count.
                        b.len = rem as u32;
                        self.set_block(ino, size / bs, Some(b))?;
                    }
                }
            }
        }
        self.bytes += size as i64 - r.size as i64;
        r.size = size;
        r.mtime = self.now;
        r.ctime = self.now;
        Ok(())
    }

    fn finish(mut self) -> Result<Batch, WireError> {
        let mut stats: Stats = match self.store.get(Cf::Cluster, KEY_STATS)? {
            Some(v) => dec(&v)?,
            None => Stats::default(),
        };
        // Counts never clamp: a change that would take one below zero means the stored state is
        // already wrong, so the command fails whole (nothing is written) and says so.
        let below_zero = |what: String| err(ErrorCode::Internal, format!("{what} would go below zero: the metadata is inconsistent (run tessera fsck); nothing was changed"));
        for (id, delta) in std::mem::take(&mut self.refs) {
            if delta == 0 {
                continue;
            }
            let cur = match self.store.get(Cf::Refcounts, &id.0)? {
                Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?),
                None => 0,
            };
            let new = u64::try_from(cur as i64 + delta).map_err(|_| below_zero(format!("reference count of block {} ({cur} stored, change {delta})", id.to_hex())))?;
            if new == 0 {
                self.batch.delete(Cf::Refcounts, id.0.to_vec());
            } else {
                self.batch.put(Cf::Refcounts, id.0.to_vec(), new.to_le_bytes().to_vec());
            }
            match (cur, new) {
                (0, n) if n > 0 => stats.blocks += 1,
                (c, 0) if c > 0 => stats.blocks = stats.blocks.checked_sub(1).ok_or_else(|| below_zero("block count".into()))?,
                _ => {}
            }
        }
        for (ino, r) in std::mem::take(&mut self.inodes) {
            match r {
                Some(r) => self.batch.put(Cf::Inodes, ino_key(ino), enc(&r)),
                None => self.batch.delete(Cf::Inodes, ino_key(ino)),
            }
        }
        for ((parent, name), d) in std::mem::take(&mut self.dirents) {
            match d {
                Some(d) => self.batch.put(Cf::Dirents, dirent_key(parent, &name), enc(&d)),
                None => self.batch.delete(Cf::Dirents, dirent_key(parent, &name)),
            }
        }
        for ((ino, idx), b) in std::mem::take(&mut self.blocks) {
            match b {
                Some(b) => self.batch.put(Cf::BlockMap, pair_key(ino, idx), enc_bref(&b)),
                None => self.batch.delete(Cf::BlockMap, pair_key(ino, idx)),
            }
        }
        for (ino, d) in std::mem::take(&mut self.inline) {
            match d {
                Some(d) => self.batch.put(Cf::Inline, ino_key(ino), [&[V1][..], &d].concat()),
                None => self.batch.delete(Cf::Inline, ino_key(ino)),
            }
        }
        stats.files = u64::try_from(stats.files as i64 + self.files).map_err(|_| below_zero(format!("file count ({} stored, change {})", stats.files, self.files)))?;
        stats.logical_bytes = u64::try_from(stats.logical_bytes as i64 + self.bytes).map_err(|_| below_zero(format!("logical bytes ({} stored, change {})", stats.logical_bytes, self.bytes)))?;
        self.batch.put(Cf::Cluster, KEY_STATS.to_vec(), enc(&stats));
        Ok(self.batch)
    }
}

fn attr(ino: u64, r: &InodeRec) -> Attr {
    Attr {
        ino,
        kind: r.kind,
        perm: r.perm,
        nlink: r.nlink,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime: r.atime,
        mtime: r.mtime,
        ctime: r.ctime,
        rdev: r.rdev,
    }
}

fn read_u64(store: &Store, key: &[u8]) -> Result<Option<u64>, WireError> {
    store.get(Cf::Cluster, key)?.map(|v| dec::<u64>(&v)).transpose()
}

impl Namespace {
    /// Open the namespace, creating the root directory and `params` on first use.
    pub fn open(store: Store, params: FsParams) -> Result<Self, WireError> {
        let params = match store.get(Cf::Cluster, KEY_FS)? {
            Some(v) => dec(&v)?,
            None => {
                let now = now_ns();
                let root = InodeRec {
                    kind: FileKind::Dir,
                    perm: 0o755,
                    nlink: 2,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    rdev: 0,
                    target: None,
                    parent: ROOT_INO,
                    next_cookie: 3,
                };
                let mut b = Batch::default();
                b.put(Cf::Inodes, ino_key(ROOT_INO), enc(&root));
                b.put(Cf::Cluster, KEY_FS.to_vec(), enc(&params));
                b.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&(ROOT_INO + 1)));
                b.put(Cf::Cluster, KEY_STATS.to_vec(), enc(&Stats { files: 1, ..Default::default() }));
                let t = store.apply(b)?;
                store.wait_durable(t)?;
                params
            }
        };
        let next_ino = read_u64(&store, KEY_NEXT_INO)?.unwrap_or(ROOT_INO + 1);
        let next_session = read_u64(&store, KEY_NEXT_SESSION)?.unwrap_or(1);
        Ok(Namespace { store, lock: Mutex::new(Counters { next_ino, next_session }), params })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- reads ----

    fn get_inode(&self, ino: u64) -> Result<InodeRec, WireError> {
        match self.store.get(Cf::Inodes, &ino_key(ino))? {
            Some(v) => dec(&v),
            None => Err(err(ErrorCode::NotFound, format!("inode {ino} does not exist"))),
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, WireError> {
        Ok(attr(ino, &self.get_inode(ino)?))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, WireError> {
        check_name(name)?;
        let p = self.get_inode(parent)?;
        if p.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, "parent is not a directory"));
        }
        match self.store.get(Cf::Dirents, &dirent_key(parent, name))? {
            Some(v) => self.getattr(dec::<DirentRec>(&v)?.ino),
            None => Err(err(ErrorCode::NotFound, "no such entry")),
        }
    }

    pub fn readdir(&self, ino: u64, after: u64, limit: u32) -> Result<(Vec<DirEntry>, bool), WireError> {
        if self.get_inode(ino)?.kind != FileKind::Dir {
            return Err(err(ErrorCode::NotDir, "not a directory"));
        }
        let limit = limit.clamp(1, 1024) as usize;
        let rows = self.store.scan(Cf::DirCookies, &ino_key(ino), &pair_key(ino, after.saturating_add(1)), limit)?;
        let done = rows.len() < limit;
        let mut out = Vec::with_capacity(rows.len());
        for (k, name) in rows {
            if let Some(v) = self.store.get(Cf::Dirents, &dirent_key(ino, &name))? {
                let d: DirentRec = dec(&v)?;
                out.push(DirEntry { name, ino: d.ino, kind: d.kind, cookie: tail_u64(&k) });
            }
        }
        Ok((out, done))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, WireError> {
        self.get_inode(ino)?.target.ok_or_else(|| err(ErrorCode::InvalidArgument, "not a symlink"))
    }

    pub fn get_blocks(&self, ino: u64, first: u64, count: u64) -> Result<(u64, Vec<(u64, BlockRef)>, Option<Vec<u8>>), WireError> {
        let r = self.get_inode(ino)?;
        let inline = match self.store.get(Cf::Inline, &ino_key(ino))? {
            Some(v) if first == 0 && v.first() == Some(&V1) => Some(v[1..].to_vec()),
            _ => None,
        };
        let count = count.clamp(1, 16384) as usize;
        let mut out = Vec::new();
        for (k, v) in self.store.scan(Cf::BlockMap, &ino_key(ino), &pair_key(ino, first), count)? {
            out.push((tail_u64(&k), dec_bref(&v)?));
        }
        Ok((r.size, out, inline))
    }

    pub fn stats(&self) -> Result<Stats, WireError> {
        Ok(self.store.get(Cf::Cluster, KEY_STATS)?.map(|v| dec(&v)).transpose()?.unwrap_or_default())
    }

    /// Refused once the store has failed: what it holds since the last good sync may be lost
    /// at a restart, so garbage collection must not act on it.
    pub fn is_referenced(&self, id: &BlockId) -> Result<bool, WireError> {
        self.store.check_ok()?;
        Ok(self.store.get(Cf::Refcounts, &id.0)?.is_some())
    }

    /// Referenced blocks with their reference counts, in id order, after `after`.
    pub fn list_blocks(&self, after: Option<BlockId>, limit: u32) -> Result<Vec<(BlockId, u64)>, WireError> {
        let start = match after {
            Some(a) => {
                let mut k = a.0.to_vec();
                k.push(0);
                k
            }
            None => vec![],
        };
        let rows = self.store.scan(Cf::Refcounts, &[], &start, limit.clamp(1, 65536) as usize)?;
        rows.into_iter()
            .map(|(k, v)| {
                let id = BlockId(k.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount key"))?);
                let n = u64::from_le_bytes(v.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?);
                Ok((id, n))
            })
            .collect()
    }

    /// Count the references of every block-map entry and compare them with the stored counts;
    /// find block-map entries without an inode, inodes without a link that are not orphans, and
    /// orphan records without an inode. Reads one RocksDB snapshot, so mutations go on meanwhile
    /// and every command is seen whole or not at all. Holds one counter per distinct block.
    pub fn audit_refs(&self) -> Result<AuditReport, WireError> {
        let view = self.store.view();
        let mut rep = AuditReport::default();
        fn problem(rep: &mut AuditReport, p: String) {
            if rep.problems.len() < 100 {
                rep.problems.push(p);
            }
        }
        let mut orphans: HashSet<u64> = HashSet::new();
        view.for_each(Cf::Orphans, |k, _| {
            orphans.insert(tail_u64(k));
            Ok::<_, WireError>(())
        })?;
        let mut counted: HashMap<BlockId, u64> = HashMap::new();
        let mut last: Option<(u64, bool)> = None;
        view.for_each(Cf::BlockMap, |k, v| {
            let (ino, idx) = (u64::from_be_bytes(k[..8].try_into().map_err(|_| err(ErrorCode::Internal, "corrupt block-map key"))?), tail_u64(k));
            rep.entries += 1;
            *counted.entry(dec_bref(v)?.id).or_default() += 1;
            let exists = match last {
                Some((i, e)) if i == ino => e,
                _ => view.get(Cf::Inodes, &ino_key(ino))?.is_some(),
            };
            last = Some((ino, exists));
            if !exists {
                rep.dangling_entries += 1;
                problem(&mut rep, format!("block-map entry {ino}/{idx}: inode {ino} does not exist"));
            }
            Ok::<_, WireError>(())
        })?;
        rep.blocks = counted.len() as u64;
        view.for_each(Cf::Refcounts, |k, v| {
            let id = BlockId(k.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount key"))?);
            let stored = u64::from_le_bytes(v.try_into().map_err(|_| err(ErrorCode::Internal, "corrupt refcount"))?);
            let n = counted.remove(&id).unwrap_or(0);
            if n != stored {
                rep.refcount_mismatches += 1;
                problem(&mut rep, format!("block {}: reference count {stored} stored, {n} block-map entries", id.to_hex()));
            }
            Ok::<_, WireError>(())
        })?;
        for (id, n) in counted {
            rep.refcount_mismatches += 1;
            problem(&mut rep, format!("block {}: no reference count stored, {n} block-map entries", id.to_hex()));
        }
        view.for_each(Cf::Inodes, |k, v| {
            let ino = tail_u64(k);
            let r: InodeRec = dec(v)?;
            if r.nlink == 0 && !orphans.remove(&ino) {
                rep.unlinked_not_orphans += 1;
                problem(&mut rep, format!("inode {ino}: no link and not an orphan"));
            } else if r.nlink == 0 {
                rep.orphans += 1;
            }
            Ok::<_, WireError>(())
        })?;
        for ino in orphans {
            rep.stale_orphans += 1;
            problem(&mut rep, format!("orphan record for inode {ino}, which does not exist or has links"));
        }
        Ok(rep)
    }

    // ---- cluster records (membership) ----

    pub fn cluster_get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, WireError> {
        self.store.get(Cf::Cluster, key)?.map(|v| dec(&v)).transpose()
    }

    pub fn cluster_scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, WireError> {
        self.store.scan(Cf::Cluster, prefix, prefix, usize::MAX)?.iter().map(|(_, v)| dec(v)).collect()
    }

    pub fn cluster_put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), WireError> {
        let t = {
            let _g = self.lock.lock().unwrap();
            let mut b = Batch::default();
            b.put(Cf::Cluster, key.to_vec(), enc(value));
            self.store.apply(b)?
        };
        Ok(self.store.wait_durable(t)?)
    }

    // ---- mutations ----

    /// A new session owned by `owner`.
    pub fn open_session(&self, owner: &SessionOwner, client: &str) -> Result<u64, WireError> {
        if client.len() > 255 {
            return Err(err(ErrorCode::InvalidArgument, "client name longer than 255 bytes"));
        }
        let (id, t) = {
            let mut c = self.lock.lock().unwrap();
            let id = c.next_session;
            c.next_session += 1;
            let mut b = Batch::default();
            b.put(Cf::Cluster, KEY_NEXT_SESSION.to_vec(), enc(&c.next_session));
            b.put(Cf::Sessions, session_key(id), enc(&SessionRec { owner: owner.clone(), client: client.to_string(), opened: now_ns() }));
            (id, self.store.apply(b)?)
        };
        self.store.wait_durable(t)?;
        Ok(id)
    }

    /// Apply `op` once for `(session, seq)` and return its reply when it is durable. Only the
    /// certificate that opened the session may use it.
    pub fn mutate(&self, owner: &SessionOwner, session: u64, seq: u64, op: Mutation) -> MetaResponse {
        match self.mutate_inner(owner, session, seq, op) {
            Ok(r) => r,
            Err(e) => MetaResponse::Error(e),
        }
    }

    fn check_session(&self, owner: &SessionOwner, session: u64) -> Result<(), WireError> {
        let unknown = || err(ErrorCode::UnknownSession, format!("unknown session {session}; open a new one"));
        let rec: SessionRec = dec(&self.store.get(Cf::Sessions, &session_key(session))?.ok_or_else(unknown)?)?;
        if rec.owner.fingerprint != owner.fingerprint {
            // Answered as unknown: a session is not a capability that another certificate can use.
            tracing::warn!(session, owner = %rec.owner.name, peer = %owner.name, "a session used by another certificate was refused");
            return Err(unknown());
        }
        Ok(())
    }

    fn mutate_inner(&self, owner: &SessionOwner, session: u64, seq: u64, op: Mutation) -> Result<MetaResponse, WireError> {
        self.store.check_ok()?;
        let skey = pair_key(session, seq);
        let (reply, ticket) = {
            let mut c = self.lock.lock().unwrap();
            self.check_session(owner, session)?;
            if let Some(v) = self.store.get(Cf::Sessions, &skey)? {
                drop(c);
                // The original may still be on its way to disk: wait for everything written.
                self.store.wait_durable(self.store.apply(Batch::default())?)?;
                return dec(&v);
            }
            let is_create = matches!(op, Mutation::Create { .. });
            let cmd = Command { session, seq, now: now_ns(), new_ino: c.next_ino, op };
            let (mut batch, reply) = match self.execute(&cmd) {
                Ok(x) => x,
                Err(e) => (Batch::default(), MetaResponse::Error(e)),
            };
            if is_create && !matches!(reply, MetaResponse::Error(_)) {
                c.next_ino += 1;
                batch.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&c.next_ino));
            }
            batch.put(Cf::Sessions, skey, enc(&reply));
            if seq > RETRY_WINDOW {
                batch.delete(Cf::Sessions, pair_key(session, seq - RETRY_WINDOW));
            }
            let t = self.store.apply(batch)?;
            (reply, t)
        };
        self.store.wait_durable(ticket)?;
        Ok(reply)
    }

    /// Validate `cmd` against the current state and build its batch. Deterministic.
    pub fn execute(&self, cmd: &Command) -> Result<(Batch, MetaResponse), WireError> {
        let mut tx = Txn {
            store: &self.store,
            batch: Batch::default(),
            inodes: HashMap::new(),
            dirents: HashMap::new(),
            blocks: BTreeMap::new(),
            inline: HashMap::new(),
            refs: HashMap::new(),
            session: cmd.session,
            files: 0,
            bytes: 0,
            now: cmd.now,
            block_size: self.params.block_size as u64,
        };
        let now = cmd.now;
        let reply = match &cmd.op {
            Mutation::Create { parent, name, kind, perm, uid, gid, rdev, target } => {
                check_name(name)?;
                tx.dir(*parent)?;
                if tx.dirent(*parent, name)?.is_some() {
                    return Err(err(ErrorCode::Exists, "entry exists"));
                }
                let size = match (kind, target) {
                    (FileKind::Symlink, Some(t)) if !t.is_empty() && t.len() <= MAX_SYMLINK_LEN && !t.contains(&0) => t.len() as u64,
                    (FileKind::Symlink, Some(t)) if t.len() > MAX_SYMLINK_LEN => return Err(err(ErrorCode::NameTooLong, "symlink target too long")),
                    (FileKind::Symlink, _) => return Err(err(ErrorCode::InvalidArgument, "bad symlink target")),
                    (_, None) => 0,
                    (_, Some(_)) => return Err(err(ErrorCode::InvalidArgument, "target given for a non-symlink")),
                };
                let ino = cmd.new_ino;
                let r = InodeRec {
                    kind: *kind,
                    perm: perm & 0o7777,
                    nlink: if *kind == FileKind::Dir { 2 } else { 1 },
                    uid: *uid,
                    gid: *gid,
                    size,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    rdev: *rdev,
                    target: target.clone(),
                    parent: *parent,
                    next_cookie: 3,
                };
                tx.add_dirent(*parent, name, ino, *kind)?;
                let a = attr(ino, &r);
                tx.put_inode(ino, r);
                tx.files += 1;
                MetaResponse::Attr(a)
            }
            Mutation::SetAttr { ino, attr: s } => {
                let mut r = tx.inode(*ino)?;
                if let Some(m) = s.mode {
                    r.perm = (m & 0o7777) as u16;
                }
                if let Some(u) = s.uid {
                    r.uid = u;
                }
                if let Some(g) = s.gid {
                    r.gid = g;
                }
                if let Some(size) = s.size {
                    if size > MAX_FILE_SIZE {
                        return Err(err(ErrorCode::InvalidArgument, "file size too large"));
                    }
                    match r.kind {
                        FileKind::File => tx.truncate(*ino, &mut r, size)?,
                        FileKind::Dir => return Err(err(ErrorCode::IsDir, "cannot truncate a directory")),
                        _ => return Err(err(ErrorCode::InvalidArgument, "cannot truncate this kind of file")),
                    }
                }
                let t = |x: SetTime| match x {
                    SetTime::Now => now,
                    SetTime::At(t) => t,
                };
                if let Some(a) = s.atime {
                    r.atime = t(a);
                }
                if let Some(m) = s.mtime {
                    r.mtime = t(m);
                }
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::Unlink { parent, name, keep } => {
                check_name(name)?;
                tx.dir(*parent)?;
                let d = tx.dirent(*parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
                if d.kind == FileKind::Dir {
                    return Err(err(ErrorCode::IsDir, "is a directory"));
                }
                tx.remove_dirent(*parent, name, &d)?;
                MetaResponse::Unlinked { orphan: tx.unlink_inode(d.ino, *keep)? }
            }
            Mutation::Rmdir { parent, name } => {
                check_name(name)?;
                tx.dir(*parent)?;
                let d = tx.dirent(*parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
                if d.kind != FileKind::Dir {
                    return Err(err(ErrorCode::NotDir, "not a directory"));
                }
                self.ensure_empty(d.ino)?;
                tx.remove_dirent(*parent, name, &d)?;
                let r = tx.inode(d.ino)?;
                tx.drop_inode(d.ino, &r)?;
                MetaResponse::Done
            }
            Mutation::Rename { parent, name, new_parent, new_name, flags, keep } => {
                MetaResponse::Unlinked { orphan: self.rename(&mut tx, (*parent, name), (*new_parent, new_name), *flags, *keep)? }
            }
            Mutation::DropOrphan { ino } => {
                let key = pair_key(cmd.session, *ino);
                if self.store.get(Cf::Orphans, &key)?.is_some() {
                    match tx.inode(*ino) {
                        Ok(r) if r.nlink == 0 => tx.drop_inode(*ino, &r)?,
                        // Linked again cannot happen (Link refuses nlink 0); keep the inode.
                        Ok(_) => {}
                        Err(e) if e.code == ErrorCode::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    tx.batch.delete(Cf::Orphans, key);
                }
                MetaResponse::Done
            }
            Mutation::Link { ino, new_parent, new_name } => {
                check_name(new_name)?;
                let mut r = tx.inode(*ino)?;
                if r.kind == FileKind::Dir {
                    return Err(err(ErrorCode::PermissionDenied, "cannot hard-link a directory"));
                }
                if r.nlink == 0 {
                    // An orphan (unlinked, still open) cannot get a name back, as in Linux.
                    return Err(err(ErrorCode::NotFound, format!("inode {ino} has no links")));
                }
                tx.dir(*new_parent)?;
                if tx.dirent(*new_parent, new_name)?.is_some() {
                    return Err(err(ErrorCode::Exists, "entry exists"));
                }
                tx.add_dirent(*new_parent, new_name, *ino, r.kind)?;
                r.nlink += 1;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::CommitBlocks { ino, blocks, size } => {
                if *size > MAX_FILE_SIZE {
                    return Err(err(ErrorCode::InvalidArgument, "file size too large"));
                }
                let mut r = tx.inode(*ino)?;
                if r.kind != FileKind::File {
                    return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
                }
                let bs = self.params.block_size;
                if *size < r.size {
                    tx.truncate(*ino, &mut r, *size)?;
                }
                let mut seen = HashSet::with_capacity(blocks.len());
                if let Some((idx, _)) = blocks.iter().find(|(idx, _)| !seen.insert(*idx)) {
                    return Err(err(ErrorCode::InvalidArgument, format!("block index {idx} given twice")));
                }
                tx.inline.insert(*ino, None);
                for (idx, b) in blocks {
                    if b.len == 0 || b.len > bs || idx.saturating_mul(bs as u64) >= *size {
                        return Err(err(ErrorCode::InvalidArgument, format!("block {idx} does not fit the file")));
                    }
                    tx.set_block(*ino, *idx, Some(*b))?;
                }
                tx.bytes += *size as i64 - r.size as i64;
                r.size = *size;
                r.mtime = now;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
            Mutation::CommitInline { ino, data } => {
                let mut r = tx.inode(*ino)?;
                if r.kind != FileKind::File {
                    return Err(err(ErrorCode::InvalidArgument, "not a regular file"));
                }
                if data.len() > tessera_common::INLINE_MAX {
                    return Err(err(ErrorCode::InvalidArgument, "inline data too large"));
                }
                tx.drop_blocks_from(*ino, 0)?;
                tx.put_inline(*ino, data);
                tx.bytes += data.len() as i64 - r.size as i64;
                r.size = data.len() as u64;
                r.mtime = now;
                r.ctime = now;
                let a = attr(*ino, &r);
                tx.put_inode(*ino, r);
                MetaResponse::Attr(a)
            }
        };
        Ok((tx.finish()?, reply))
    }

    fn ensure_empty(&self, dir: u64) -> Result<(), WireError> {
        if !self.store.scan(Cf::Dirents, &ino_key(dir), &ino_key(dir), 1)?.is_empty() {
            return Err(err(ErrorCode::NotEmpty, "directory not empty"));
        }
        Ok(())
    }

    /// Refuse making directory `dir` a descendant of itself by putting it under `dest`.
    fn check_not_under(&self, tx: &mut Txn, dir: u64, dest: u64) -> Result<(), WireError> {
        let mut x = dest;
        loop {
            if x == dir {
                return Err(err(ErrorCode::InvalidArgument, "cannot move a directory into itself"));
            }
            if x == ROOT_INO {
                return Ok(());
            }
            x = tx.inode(x)?.parent;
        }
    }

    /// Rename `from` to `to` in one step (see `Mutation::Rename`). Returns the orphan kept, if any.
    fn rename(&self, tx: &mut Txn, from: (u64, &[u8]), to: (u64, &[u8]), flags: u32, keep: bool) -> Result<Option<u64>, WireError> {
        let ((parent, name), (np, nname)) = (from, to);
        check_name(name)?;
        check_name(nname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(err(ErrorCode::InvalidArgument, "unsupported rename flags"));
        }
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(err(ErrorCode::InvalidArgument, "RENAME_NOREPLACE and RENAME_EXCHANGE exclude each other"));
        }
        tx.dir(parent)?;
        tx.dir(np)?;
        let s = tx.dirent(parent, name)?.ok_or_else(|| err(ErrorCode::NotFound, "no such entry"))?;
        let t = tx.dirent(np, nname)?;
        if flags & RENAME_EXCHANGE != 0 {
            let t = t.ok_or_else(|| err(ErrorCode::NotFound, "no entry to exchange with"))?;
            self.exchange(tx, (parent, name, s), (np, nname, t))?;
            return Ok(None);
        }
        if parent == np && name == nname {
            return Ok(None);
        }
        if s.kind == FileKind::Dir && parent != np {
            self.check_not_under(tx, s.ino, np)?;
        }
        let mut orphan = None;
        if let Some(t) = t {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(err(ErrorCode::Exists, "target exists"));
            }
            if t.ino == s.ino {
                // Two links of one file: POSIX says do nothing.
                return Ok(None);
            }
            if s.kind == FileKind::Dir {
                if t.kind != FileKind::Dir {
                    return Err(err(ErrorCode::NotDir, "target is not a directory"));
                }
                self.ensure_empty(t.ino)?;
            } else if t.kind == FileKind::Dir {
                return Err(err(ErrorCode::IsDir, "target is a directory"));
            }
            tx.remove_dirent(np, nname, &t)?;
            if t.kind == FileKind::Dir {
                let r = tx.inode(t.ino)?;
                tx.drop_inode(t.ino, &r)?;
            } else {
                orphan = tx.unlink_inode(t.ino, keep)?;
            }
        }
        tx.remove_dirent(parent, name, &s)?;
        tx.add_dirent(np, nname, s.ino, s.kind)?;
        let mut r = tx.inode(s.ino)?;
        r.ctime = tx.now;
        if s.kind == FileKind::Dir {
            r.parent = np;
        }
        tx.put_inode(s.ino, r);
        Ok(orphan)
    }

    /// `RENAME_EXCHANGE`: each name now names the other's inode. The entries keep their
    /// cookies (a readdir in progress sees each name once); directories moved between parents
    /// carry their `..` link with them.
    fn exchange(&self, tx: &mut Txn, a: (u64, &[u8], DirentRec), b: (u64, &[u8], DirentRec)) -> Result<(), WireError> {
        let ((pa, na, da), (pb, nb, db)) = (a, b);
        if da.ino == db.ino {
            return Ok(());
        }
        if pa != pb {
            if da.kind == FileKind::Dir {
                self.check_not_under(tx, da.ino, pb)?;
            }
            if db.kind == FileKind::Dir {
                self.check_not_under(tx, db.ino, pa)?;
            }
        }
        tx.dirents.insert((pa, na.to_vec()), Some(DirentRec { ino: db.ino, kind: db.kind, cookie: da.cookie }));
        tx.dirents.insert((pb, nb.to_vec()), Some(DirentRec { ino: da.ino, kind: da.kind, cookie: db.cookie }));
        let dirs = |d: &DirentRec| u32::from(d.kind == FileKind::Dir);
        for (p, gains, loses) in [(pa, dirs(&db), dirs(&da)), (pb, dirs(&da), dirs(&db))] {
            let mut r = tx.dir(p)?;
            if pa != pb {
                r.nlink = r.nlink + gains - loses;
            }
            r.mtime = tx.now;
            r.ctime = tx.now;
            tx.put_inode(p, r);
        }
        for (d, new_parent) in [(da, pb), (db, pa)] {
            let mut r = tx.inode(d.ino)?;
            if d.kind == FileKind::Dir {
                r.parent = new_parent;
            }
            r.ctime = tx.now;
            tx.put_inode(d.ino, r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> (tempfile::TempDir, Namespace) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, Namespace::open(s, FsParams { block_size: 4096 }).unwrap())
    }

    fn owner(name: &str) -> SessionOwner {
        SessionOwner { name: name.into(), fingerprint: BlockId::of(name.as_bytes()).0 }
    }

    struct C<'a> {
        ns: &'a Namespace,
        seq: u64,
        session: u64,
    }

    impl<'a> C<'a> {
        fn new(ns: &'a Namespace) -> Self {
            C { ns, seq: 0, session: ns.open_session(&owner("test"), "test").unwrap() }
        }
        fn m(&mut self, op: Mutation) -> MetaResponse {
            self.seq += 1;
            self.ns.mutate(&owner("test"), self.session, self.seq, op)
        }
        fn mk(&mut self, parent: u64, name: &str, kind: FileKind) -> u64 {
            match self.m(Mutation::Create { parent, name: name.into(), kind, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None }) {
                MetaResponse::Attr(a) => a.ino,
                r => panic!("create {name}: {r:?}"),
            }
        }
        fn code(&mut self, op: Mutation) -> Option<ErrorCode> {
            match self.m(op) {
                MetaResponse::Error(e) => Some(e.code),
                _ => None,
            }
        }
    }

    fn names(ns: &Namespace, dir: u64) -> Vec<String> {
        ns.readdir(dir, 0, 1000).unwrap().0.into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect()
    }

    fn bref(n: u8, len: u32) -> BlockRef {
        BlockRef { id: BlockId::of(&[n]), len }
    }

    #[test]
    fn create_rename_unlink_rmdir_rules() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let a = c.mk(ROOT_INO, "a", FileKind::Dir);
        let b = c.mk(a, "b", FileKind::Dir);
        let f = c.mk(b, "f", FileKind::File);
        let g = c.mk(ROOT_INO, "g", FileKind::File);
        assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: "g".into(), kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None }), Some(ErrorCode::Exists));
        assert_eq!(c.code(Mutation::Rmdir { parent: ROOT_INO, name: "a".into() }), Some(ErrorCode::NotEmpty));
        assert_eq!(c.code(Mutation::Unlink { parent: ROOT_INO, name: "a".into(), keep: false }), Some(ErrorCode::IsDir));
        assert_eq!(c.code(Mutation::Rmdir { parent: ROOT_INO, name: "g".into() }), Some(ErrorCode::NotDir));
        // A directory cannot move into its own subtree.
        assert_eq!(c.code(Mutation::Rename { parent: ROOT_INO, name: "a".into(), new_parent: b, new_name: "x".into(), flags: 0, keep: false }), Some(ErrorCode::InvalidArgument));
        // Rename over an existing file replaces it; the replaced inode is gone.
        assert_eq!(c.code(Mutation::Rename { parent: b, name: "f".into(), new_parent: ROOT_INO, new_name: "g".into(), flags: 0, keep: false }), None);
        assert_eq!(ns.lookup(ROOT_INO, b"g").unwrap().ino, f);
        assert!(ns.getattr(g).is_err());
        assert!(names(&ns, b).is_empty());
        // A file cannot replace a directory, nor a directory a file.
        assert_eq!(c.code(Mutation::Rename { parent: ROOT_INO, name: "g".into(), new_parent: ROOT_INO, new_name: "a".into(), flags: 0, keep: false }), Some(ErrorCode::IsDir));
        assert_eq!(c.code(Mutation::Rename { parent: ROOT_INO, name: "a".into(), new_parent: ROOT_INO, new_name: "g".into(), flags: 0, keep: false }), Some(ErrorCode::NotDir));
        assert_eq!(c.code(Mutation::Rename { parent: ROOT_INO, name: "g".into(), new_parent: a, new_name: "b".into(), flags: RENAME_NOREPLACE, keep: false }), Some(ErrorCode::Exists));
        // Moving a directory across parents fixes both link counts.
        let nl = |ino| ns.getattr(ino).unwrap().nlink;
        assert_eq!((nl(ROOT_INO), nl(a)), (3, 3));
        assert_eq!(c.code(Mutation::Rename { parent: a, name: "b".into(), new_parent: ROOT_INO, new_name: "b2".into(), flags: 0, keep: false }), None);
        assert_eq!((nl(ROOT_INO), nl(a)), (4, 2));
        assert_eq!(c.code(Mutation::Rmdir { parent: ROOT_INO, name: "b2".into() }), None);
        assert_eq!(c.code(Mutation::Rmdir { parent: ROOT_INO, name: "a".into() }), None);
        assert_eq!(names(&ns, ROOT_INO), vec!["g"]);
        // Hard links.
        assert!(matches!(c.m(Mutation::Link { ino: f, new_parent: ROOT_INO, new_name: "h".into() }), MetaResponse::Attr(ref x) if x.nlink == 2));
        assert_eq!(c.code(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: false }), None);
        assert_eq!(ns.getattr(f).unwrap().nlink, 1);
        assert_eq!(ns.stats().unwrap().files, 2);
        // Names: too long, slash.
        assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: vec![b'x'; 256], kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None }), Some(ErrorCode::NameTooLong));
        assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: b"a/b".to_vec(), kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None }), Some(ErrorCode::InvalidArgument));
    }

    fn refs(ns: &Namespace) -> HashMap<BlockId, u64> {
        ns.list_blocks(None, 1000).unwrap().into_iter().collect()
    }

    fn rename(from: (u64, &str), to: (u64, &str), flags: u32, keep: bool) -> Mutation {
        Mutation::Rename { parent: from.0, name: from.1.into(), new_parent: to.0, new_name: to.1.into(), flags, keep }
    }

    #[test]
    fn replace_with_keep_leaves_an_orphan_until_it_is_dropped() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let old = c.mk(ROOT_INO, "target", FileKind::File);
        let new = c.mk(ROOT_INO, "new", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: old, blocks: vec![(0, bref(1, 4096)), (1, bref(2, 100))], size: 4196 });
        c.m(Mutation::CommitBlocks { ino: new, blocks: vec![(0, bref(3, 10))], size: 10 });
        let before = ns.stats().unwrap();
        // One atomic step: the name now points at `new`, the old inode is kept as an orphan.
        assert_eq!(c.m(rename((ROOT_INO, "new"), (ROOT_INO, "target"), 0, true)), MetaResponse::Unlinked { orphan: Some(old) });
        assert_eq!(ns.lookup(ROOT_INO, b"target").unwrap().ino, new);
        assert_eq!(names(&ns, ROOT_INO), vec!["target"]);
        let a = ns.getattr(old).unwrap();
        assert_eq!((a.nlink, a.size), (0, 4196));
        assert_eq!(ns.get_blocks(old, 0, 10).unwrap().1, vec![(0, bref(1, 4096)), (1, bref(2, 100))]);
        assert_eq!(refs(&ns).len(), 3, "the orphan keeps its blocks referenced");
        assert_eq!((ns.stats().unwrap().files, ns.stats().unwrap().logical_bytes), (before.files, before.logical_bytes), "an orphan still counts");
        // It cannot get a name back.
        assert_eq!(c.code(Mutation::Link { ino: old, new_parent: ROOT_INO, new_name: "back".into() }), Some(ErrorCode::NotFound));
        // Another session cannot drop it; this one can, once.
        let other = ns.open_session(&owner("test"), "other").unwrap();
        assert_eq!(ns.mutate(&owner("test"), other, 1, Mutation::DropOrphan { ino: old }), MetaResponse::Done);
        assert!(ns.getattr(old).is_ok(), "another session's DropOrphan dropped it");
        assert_eq!(c.m(Mutation::DropOrphan { ino: old }), MetaResponse::Done);
        assert!(ns.getattr(old).is_err());
        assert_eq!(refs(&ns).keys().copied().collect::<Vec<_>>(), vec![BlockId::of(&[3])]);
        assert_eq!(ns.stats().unwrap().files, before.files - 1);
        assert_eq!(ns.stats().unwrap().logical_bytes, 10);
        assert_eq!(ns.stats().unwrap().blocks, 1);
        assert_eq!(c.m(Mutation::DropOrphan { ino: old }), MetaResponse::Done, "idempotent");
        assert_eq!(c.m(Mutation::DropOrphan { ino: new }), MetaResponse::Done, "not an orphan: left alone");
        assert!(ns.getattr(new).is_ok());
        // Unlink with keep; without keep (or with another link left) nothing is kept.
        assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "target".into(), keep: true }), MetaResponse::Unlinked { orphan: Some(new) });
        let g = c.mk(ROOT_INO, "g", FileKind::File);
        c.m(Mutation::Link { ino: g, new_parent: ROOT_INO, new_name: "g2".into() });
        assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: true }), MetaResponse::Unlinked { orphan: None });
        assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "g2".into(), keep: false }), MetaResponse::Unlinked { orphan: None });
        assert!(ns.getattr(g).is_err());
    }

    #[test]
    fn a_refused_rename_changes_nothing() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let d = c.mk(ROOT_INO, "d", FileKind::Dir);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        let g = c.mk(d, "g", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        let snapshot = |ns: &Namespace| (names(ns, ROOT_INO), names(ns, d), ns.getattr(ROOT_INO).unwrap(), ns.getattr(d).unwrap(), ns.getattr(f).unwrap(), refs(ns), ns.stats().unwrap().files);
        let before = snapshot(&ns);
        assert_eq!(c.code(rename((d, "g"), (ROOT_INO, "f"), RENAME_NOREPLACE, true)), Some(ErrorCode::Exists));
        assert_eq!(c.code(rename((ROOT_INO, "d"), (ROOT_INO, "f"), 0, true)), Some(ErrorCode::NotDir));
        assert_eq!(c.code(rename((ROOT_INO, "f"), (ROOT_INO, "d"), 0, true)), Some(ErrorCode::IsDir));
        assert_eq!(c.code(rename((ROOT_INO, "f"), (d, "g"), RENAME_NOREPLACE | RENAME_EXCHANGE, true)), Some(ErrorCode::InvalidArgument));
        assert_eq!(c.code(rename((ROOT_INO, "f"), (d, "missing"), RENAME_EXCHANGE, true)), Some(ErrorCode::NotFound));
        assert_eq!(c.code(rename((ROOT_INO, "f"), (d, "g"), 4, true)), Some(ErrorCode::InvalidArgument));
        let after = snapshot(&ns);
        assert_eq!(before, after);
        assert_eq!(ns.getattr(g).unwrap().nlink, 1);
    }

    #[test]
    fn rename_exchange_swaps_files_and_directories() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let a = c.mk(ROOT_INO, "a", FileKind::Dir);
        let b = c.mk(ROOT_INO, "b", FileKind::Dir);
        let f1 = c.mk(a, "f1", FileKind::File);
        let f2 = c.mk(b, "f2", FileKind::File);
        // file/file across parents
        assert_eq!(c.m(rename((a, "f1"), (b, "f2"), RENAME_EXCHANGE, false)), MetaResponse::Unlinked { orphan: None });
        assert_eq!((ns.lookup(a, b"f1").unwrap().ino, ns.lookup(b, b"f2").unwrap().ino), (f2, f1));
        // dir/file across parents: the directory moves from root into a, f2 moves out to root.
        let sub = c.mk(ROOT_INO, "sub", FileKind::Dir);
        c.mk(sub, "inside", FileKind::File);
        let nl = |ino| ns.getattr(ino).unwrap().nlink;
        assert_eq!((nl(ROOT_INO), nl(a)), (5, 2));
        assert_eq!(c.code(rename((ROOT_INO, "sub"), (a, "f1"), RENAME_EXCHANGE, false)), None);
        assert_eq!(ns.lookup(a, b"f1").unwrap().ino, sub);
        assert_eq!(ns.lookup(ROOT_INO, b"sub").unwrap().ino, f2);
        assert_eq!((nl(ROOT_INO), nl(a), nl(sub)), (4, 3, 2));
        assert_eq!(ns.lookup(sub, b"inside").unwrap().kind, FileKind::File, "the moved directory keeps its content");
        // `..` of the moved directory is its new parent: moving a (its ancestor) under it is refused.
        assert_eq!(c.code(rename((ROOT_INO, "a"), (sub, "inside"), RENAME_EXCHANGE, false)), Some(ErrorCode::InvalidArgument));
        // dir/dir in one parent: nothing to fix in link counts.
        assert_eq!(c.code(rename((ROOT_INO, "a"), (ROOT_INO, "b"), RENAME_EXCHANGE, false)), None);
        assert_eq!((ns.lookup(ROOT_INO, b"a").unwrap().ino, ns.lookup(ROOT_INO, b"b").unwrap().ino), (b, a));
        assert_eq!(nl(ROOT_INO), 4);
        let mut got = names(&ns, ROOT_INO);
        got.sort();
        assert_eq!(got, vec!["a", "b", "sub"], "each name once");
        assert_eq!(ns.stats().unwrap().files, 7);
    }

    #[test]
    fn readdir_offsets_survive_changes() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        for i in 0..10 {
            c.mk(ROOT_INO, &format!("f{i}"), FileKind::File);
        }
        let (first, done) = ns.readdir(ROOT_INO, 0, 4).unwrap();
        assert!(!done);
        // Remove an entry already returned and one not yet returned, add a new one.
        c.m(Mutation::Unlink { parent: ROOT_INO, name: "f1".into(), keep: false });
        c.m(Mutation::Unlink { parent: ROOT_INO, name: "f7".into(), keep: false });
        c.mk(ROOT_INO, "new", FileKind::File);
        let rest = ns.readdir(ROOT_INO, first.last().unwrap().cookie, 100).unwrap().0;
        let got: Vec<String> = first.iter().chain(rest.iter()).map(|e| String::from_utf8(e.name.clone()).unwrap()).collect();
        assert_eq!(got, vec!["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f8", "f9", "new"]);
    }

    #[test]
    fn commit_truncate_and_refcounts() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        let blocks = vec![(0, bref(1, 4096)), (1, bref(2, 4096)), (2, bref(1, 4096)), (3, bref(3, 100))];
        assert!(matches!(c.m(Mutation::CommitBlocks { ino: f, blocks, size: 3 * 4096 + 100 }), MetaResponse::Attr(ref a) if a.size == 12388));
        let refs: HashMap<BlockId, u64> = ns.list_blocks(None, 100).unwrap().into_iter().collect();
        assert_eq!(refs[&BlockId::of(&[1])], 2);
        assert_eq!(ns.stats().unwrap().blocks, 3);
        assert_eq!(ns.stats().unwrap().logical_bytes, 12388);
        // Truncate into block 1: blocks 2 and 3 go, block 1 keeps its id with a shorter length.
        c.m(Mutation::SetAttr { ino: f, attr: SetAttr { size: Some(4096 + 10), ..Default::default() } });
        let (size, map, _) = ns.get_blocks(f, 0, 100).unwrap();
        assert_eq!(size, 4106);
        assert_eq!(map, vec![(0, bref(1, 4096)), (1, bref(2, 10))]);
        let refs: HashMap<BlockId, u64> = ns.list_blocks(None, 100).unwrap().into_iter().collect();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[&BlockId::of(&[1])], 1);
        // Blocks must lie inside the file.
        assert_eq!(c.code(Mutation::CommitBlocks { ino: f, blocks: vec![(9, bref(4, 10))], size: 100 }), Some(ErrorCode::InvalidArgument));
        // Unlinking the file drops every reference.
        c.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false });
        assert!(ns.list_blocks(None, 100).unwrap().is_empty());
        assert_eq!(ns.stats().unwrap().blocks, 0);
        assert_eq!(ns.stats().unwrap().logical_bytes, 0);
    }

    #[test]
    fn commit_with_a_repeated_index_is_refused_and_a_shared_block_keeps_its_references() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        let g = c.mk(ROOT_INO, "g", FileKind::File);
        // Block 1 is shared (deduplicated) by f and g.
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        c.m(Mutation::CommitBlocks { ino: g, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        let refs = |ns: &Namespace| ns.list_blocks(None, 100).unwrap().into_iter().collect::<HashMap<BlockId, u64>>();
        assert_eq!(refs(&ns)[&BlockId::of(&[1])], 2);
        let dup = Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(2, 4096)), (0, bref(3, 4096))], size: 4096 };
        assert_eq!(c.code(dup), Some(ErrorCode::InvalidArgument));
        // Nothing changed: g's block still has both references, f still points at it.
        assert_eq!(refs(&ns)[&BlockId::of(&[1])], 2);
        assert_eq!(ns.get_blocks(f, 0, 10).unwrap().1, vec![(0, bref(1, 4096))]);
        assert_eq!(refs(&ns).len(), 1);
    }

    #[test]
    fn refcount_underflow_is_an_error_not_a_clamp() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        // Corrupt the store: the block's reference count is gone.
        let mut b = Batch::default();
        b.delete(Cf::Refcounts, BlockId::of(&[1]).0.to_vec());
        ns.store().apply(b).unwrap();
        match c.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false }) {
            MetaResponse::Error(e) => assert!(e.code == ErrorCode::Internal && e.message.contains("below zero"), "{e:?}"),
            r => panic!("unlink over a corrupt refcount: {r:?}"),
        }
        assert_eq!(ns.lookup(ROOT_INO, b"f").unwrap().ino, f, "nothing written");
        assert_eq!(ns.stats().unwrap().files, 2);
    }

    #[test]
    fn inline_data_replaces_blocks_and_truncates() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        assert!(matches!(c.m(Mutation::CommitInline { ino: f, data: b"hello world".to_vec() }), MetaResponse::Attr(ref a) if a.size == 11));
        assert_eq!(ns.get_blocks(f, 0, 10).unwrap(), (11, vec![], Some(b"hello world".to_vec())));
        assert!(ns.list_blocks(None, 10).unwrap().is_empty(), "the replaced block lost its reference");
        c.m(Mutation::SetAttr { ino: f, attr: SetAttr { size: Some(5), ..Default::default() } });
        assert_eq!(ns.get_blocks(f, 0, 10).unwrap(), (5, vec![], Some(b"hello".to_vec())));
        assert_eq!(c.code(Mutation::CommitInline { ino: f, data: vec![0; tessera_common::INLINE_MAX + 1] }), Some(ErrorCode::InvalidArgument));
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(2, 4096))], size: 4096 });
        assert_eq!(ns.get_blocks(f, 0, 10).unwrap().2, None, "blocks replace inline data");
        assert_eq!(ns.stats().unwrap().logical_bytes, 4096);
    }

    #[test]
    fn a_retried_mutation_is_answered_not_reapplied() {
        let (_d, ns) = ns();
        let a = owner("a");
        let s = ns.open_session(&a, "a").unwrap();
        let op = Mutation::Create { parent: ROOT_INO, name: "x".into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None };
        let first = ns.mutate(&a, s, 1, op.clone());
        assert!(matches!(first, MetaResponse::Attr(_)));
        assert_eq!(ns.mutate(&a, s, 1, op.clone()), first, "same (session, seq): the stored reply");
        assert!(matches!(ns.mutate(&a, s, 2, op), MetaResponse::Error(ref e) if e.code == ErrorCode::Exists));
    }

    #[test]
    fn a_session_belongs_to_the_certificate_that_opened_it() {
        let (_d, ns) = ns();
        let (a, b) = (owner("client-a"), owner("client-b"));
        let sa = ns.open_session(&a, "mount-a").unwrap();
        let create = |name: &str| Mutation::Create { parent: ROOT_INO, name: name.into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None };
        let reply = ns.mutate(&a, sa, 1, create("secret"));
        assert!(matches!(reply, MetaResponse::Attr(_)));
        let unknown = |r: MetaResponse| matches!(r, MetaResponse::Error(ref e) if e.code == ErrorCode::UnknownSession);
        // B names A's (session, seq): no stored reply for B.
        let r = ns.mutate(&b, sa, 1, create("secret"));
        assert!(unknown(r.clone()), "B read A's stored reply: {r:?}");
        // B pre-empts A's next sequence number: refused, and A's own mutation still applies.
        assert!(unknown(ns.mutate(&b, sa, 2, create("b-was-here"))));
        assert!(ns.lookup(ROOT_INO, b"b-was-here").is_err());
        assert!(matches!(ns.mutate(&a, sa, 2, create("second")), MetaResponse::Attr(_)));
        // A session id never opened.
        assert!(unknown(ns.mutate(&a, 999, 1, create("x"))));
        // B's own session works.
        let sb = ns.open_session(&b, "mount-b").unwrap();
        assert!(matches!(ns.mutate(&b, sb, 1, create("b")), MetaResponse::Attr(_)));
    }

    #[test]
    fn a_failed_wal_sync_stops_every_change() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "before", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        let create = |name: &str| Mutation::Create { parent: ROOT_INO, name: name.into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None };
        ns.store().fail_next_sync_for_test();
        // The change whose sync failed is not acknowledged.
        assert_eq!(c.code(create("lost")), Some(ErrorCode::Unavailable));
        // Nothing later is applied (so nothing builds on the unsynced change), not even a retry.
        assert_eq!(c.code(create("after")), Some(ErrorCode::Unavailable));
        assert!(ns.lookup(ROOT_INO, b"after").is_err(), "a mutation after the failed sync was applied");
        assert_eq!(c.code(Mutation::Unlink { parent: ROOT_INO, name: "before".into(), keep: false }), Some(ErrorCode::Unavailable));
        assert!(ns.lookup(ROOT_INO, b"before").is_ok());
        c.seq -= 3;
        assert_eq!(c.code(create("lost")), Some(ErrorCode::Unavailable), "a retry is not answered from the unsynced reply");
        assert!(ns.open_session(&owner("x"), "x").is_err());
        assert!(ns.cluster_put(b"k", &1u64).is_err());
        // Garbage collection treats every block as referenced.
        assert!(ns.is_referenced(&BlockId::of(&[9])).is_err());
        let why = ns.store().failure().expect("the failure is recorded");
        assert!(why.starts_with("WAL sync failed at 20") && why.contains("UTC"), "{why}");
    }

    #[test]
    fn audit_finds_wrong_counts_dangling_entries_and_leaked_inodes() {
        let (_d, ns) = ns();
        let mut c = C::new(&ns);
        let f = c.mk(ROOT_INO, "f", FileKind::File);
        let g = c.mk(ROOT_INO, "g", FileKind::File);
        c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096)), (1, bref(2, 4096)), (2, bref(1, 4096))], size: 3 * 4096 });
        c.m(Mutation::CommitBlocks { ino: g, blocks: vec![(0, bref(1, 4096))], size: 4096 });
        c.m(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: true });
        let clean = ns.audit_refs().unwrap();
        assert!(clean.clean(), "{clean:?}");
        assert_eq!((clean.entries, clean.blocks, clean.orphans), (4, 2, 1));
        // Corrupt the store directly: block 1 has 3 references, store 2; block 9 is counted
        // but nothing uses it; an entry of inode 999, which does not exist; an inode without
        // a link that is nobody's orphan.
        let mut b = Batch::default();
        b.put(Cf::Refcounts, BlockId::of(&[1]).0.to_vec(), 2u64.to_le_bytes().to_vec());
        b.put(Cf::Refcounts, BlockId::of(&[9]).0.to_vec(), 1u64.to_le_bytes().to_vec());
        b.put(Cf::BlockMap, pair_key(999, 0), enc_bref(&bref(2, 10)));
        let mut r = ns.get_inode(f).unwrap();
        r.nlink = 0;
        b.put(Cf::Inodes, ino_key(f), enc(&r));
        ns.store().apply(b).unwrap();
        let bad = ns.audit_refs().unwrap();
        assert!(!bad.clean());
        // Block 2 now has 2 entries (f and 999) but 1 stored: a mismatch too.
        assert_eq!((bad.refcount_mismatches, bad.dangling_entries, bad.unlinked_not_orphans, bad.stale_orphans), (3, 1, 1, 0), "{bad:#?}");
        let text = bad.problems.join("\n");
        assert!(text.contains(&format!("block {}: reference count 2 stored, 3 block-map entries", BlockId::of(&[1]).to_hex())), "{text}");
        assert!(text.contains("inode 999 does not exist"), "{text}");
    }

    #[test]
    fn state_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let ino = {
            let ns = Namespace::open(Store::open(d.path()).unwrap(), FsParams { block_size: 4096 }).unwrap();
            let mut c = C::new(&ns);
            c.mk(ROOT_INO, "keep", FileKind::File)
        };
        let ns = Namespace::open(Store::open(d.path()).unwrap(), FsParams { block_size: 1 << 20 }).unwrap();
        assert_eq!(ns.params.block_size, 4096, "block size is fixed at creation");
        assert_eq!(ns.lookup(ROOT_INO, b"keep").unwrap().ino, ino);
        let mut c = C::new(&ns);
        assert!(c.mk(ROOT_INO, "next", FileKind::File) > ino, "inode numbers are never reused");
    }
}
