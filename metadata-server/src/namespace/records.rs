//! What the namespace stores: records, their encodings and their keys.

use super::*;

/// Encoding version of every persisted record (first byte).
pub(super) const V1: u8 = 1;

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![V1];
    out.extend(bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding a record"));
    out
}

pub(super) fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    match b.split_first() {
        Some((&V1, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| err(ErrorCode::Internal, format!("corrupt record: {e}"))),
        _ => Err(err(ErrorCode::Internal, "record with unknown encoding version")),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct InodeRec {
    pub(super) kind: FileKind,
    pub(super) perm: u16,
    pub(super) nlink: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) size: u64,
    pub(super) atime: i64,
    pub(super) mtime: i64,
    pub(super) ctime: i64,
    pub(super) rdev: u32,
    pub(super) target: Option<Vec<u8>>,
    /// Parent directory (directories only; used to refuse moving a directory into itself).
    pub(super) parent: u64,
    /// Next readdir cookie (directories only). 1 and 2 are `.` and `..`.
    pub(super) next_cookie: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct DirentRec {
    pub(super) ino: u64,
    pub(super) kind: FileKind,
    pub(super) cookie: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub files: u64,
    pub logical_bytes: u64,
    pub blocks: u64,
}

pub(super) fn ino_key(ino: u64) -> Vec<u8> {
    ino.to_be_bytes().to_vec()
}
pub(super) fn pair_key(a: u64, b: u64) -> Vec<u8> {
    let mut k = a.to_be_bytes().to_vec();
    k.extend_from_slice(&b.to_be_bytes());
    k
}
pub(super) fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = parent.to_be_bytes().to_vec();
    k.extend_from_slice(name);
    k
}
pub(super) fn tail_u64(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
}

pub(super) fn enc_bref(b: &BlockRef) -> Vec<u8> {
    let mut v = vec![V1];
    v.extend_from_slice(&b.id.0);
    v.extend_from_slice(&b.len.to_le_bytes());
    v
}
pub(super) fn dec_bref(v: &[u8]) -> Result<BlockRef, WireError> {
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
pub(super) struct SessionRec {
    pub(super) owner: SessionOwner,
    /// The name the client gave (`OpenSession { client }`).
    pub(super) client: String,
    pub(super) opened: i64,
}

/// Key of a session's own record in `Cf::Sessions`; its replies are keyed (session, seq).
pub(super) fn session_key(session: u64) -> Vec<u8> {
    ino_key(session)
}

pub(super) const KEY_NEXT_INO: &[u8] = b"next_ino";
pub(super) const KEY_NEXT_SESSION: &[u8] = b"next_session";
pub(super) const KEY_STATS: &[u8] = b"stats";
pub(super) const KEY_FS: &[u8] = b"fs";

/// Key in `Cf::Cluster` that marks metadata server `id` as removed from the group.
pub(super) fn retired_meta_key(id: u64) -> Vec<u8> {
    [b"retired_meta/".as_slice(), &id.to_be_bytes()].concat()
}

/// File-system-wide settings fixed when the namespace is created.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FsParams {
    pub block_size: u32,
}

pub(super) fn attr(ino: u64, r: &InodeRec) -> Attr {
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

pub(super) fn read_u64(store: &Store, key: &[u8]) -> Result<Option<u64>, WireError> {
    store.get(Cf::Cluster, key)?.map(|v| dec::<u64>(&v)).transpose()
}
