//! Metadata server protocol.
//!
//! Reads (`Lookup`, `GetAttr`, `ReadDir`, …) are answered from the current state. Every change
//! is a [`Mutation`] sent inside `Mutate { session, seq, op }`: the server applies it once and
//! stores its reply with the effect, so a retry with a known `(session, seq)` gets the stored
//! reply instead of a second application. A session comes from `OpenSession`.
//!
//! Errors come back as `MetaResponse::Error` with a stable [`ErrorCode`](crate::ErrorCode).
//! `NotLeader` tells the caller to retry at another metadata address.

use crate::ring::Ring;
use crate::{BlockId, WireError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Attributes of an inode. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits (07777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub rdev: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
    /// Stable position of this entry: `ReadDir { after: cookie }` continues after it, even
    /// when other entries were added or removed meanwhile.
    pub cookie: u64,
}

/// One block of a file's block map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub id: BlockId,
    pub len: u32,
}

/// A small overwrite of a stored block, kept in the metadata instead of a new block (rules and
/// limits in [`crate::patch`]): `data` replaces the block's bytes from block offset `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    pub at: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(i64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend; block-map entries past the new end are dropped.
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// `rename` flags, as Linux `renameat2`.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Mutation {
    /// Create a file, directory, symlink (with `target`) or special node. Reply: `Attr`.
    /// `umask` is applied to `perm` unless the parent has a default ACL, which the new inode
    /// then inherits (masked by `perm`, as POSIX.1e says).
    Create { parent: u64, name: Vec<u8>, kind: FileKind, perm: u16, uid: u32, gid: u32, rdev: u32, target: Option<Vec<u8>>, umask: u16 },
    /// Reply: `Attr`.
    SetAttr { ino: u64, attr: SetAttr },
    /// Remove a name. With `keep`, a regular file that loses its last link is not dropped but
    /// kept as an orphan of this session (nlink 0, data intact, readable by inode number) until
    /// `DropOrphan`: how a file open on the mount stays readable. Reply: `Unlinked`.
    Unlink { parent: u64, name: Vec<u8>, keep: bool },
    /// Reply: `Done`; `NotEmpty` unless the directory is empty.
    Rmdir { parent: u64, name: Vec<u8> },
    /// One atomic step. `flags`: [`RENAME_NOREPLACE`] (fail with `Exists` if the target
    /// exists) or [`RENAME_EXCHANGE`] (swap the two entries, both must exist), not both. A
    /// replaced regular file that loses its last link is kept as an orphan with `keep`, as in
    /// `Unlink`. Reply: `Unlinked`.
    Rename { parent: u64, name: Vec<u8>, new_parent: u64, new_name: Vec<u8>, flags: u32, keep: bool },
    /// Reply: `Attr` of the linked inode.
    Link { ino: u64, new_parent: u64, new_name: Vec<u8> },
    /// Set block-map entries (index → block) and the new size in one step. Inline data, if the
    /// file had any, is dropped (the client has moved it into block 0). Reply: `Attr`, or
    /// `MissingBlock` (nothing changed) if a block no file references yet is on no chunk
    /// server that is up; the server's check touches the copies it finds (see `proto::chunk`).
    CommitBlocks { ino: u64, blocks: Vec<(u64, BlockRef)>, size: u64 },
    /// Store the whole content of a small file (at most `INLINE_MAX` bytes) in the metadata;
    /// its blocks, if any, are dropped. The size becomes `data.len()`. Reply: `Attr`.
    CommitInline {
        ino: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Drop an orphan of this session (its inode, blocks and inline data). Anything else
    /// (not an orphan, another session's, already dropped) is left alone. Reply: `Done`.
    DropOrphan { ino: u64 },
    /// Set an extended attribute (rules in [`crate::xattr`]). `flags`: [`XATTR_CREATE`] (fail
    /// with `Exists` if it is set) or [`XATTR_REPLACE`] (fail with `NoAttribute` unless it is
    /// set). Setting `system.posix_acl_access` also sets the permission bits from the ACL; an
    /// ACL the bits express alone is not stored. Reply: `Done`.
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
    },
    /// Reply: `Done`, or `NoAttribute`.
    RemoveXattr { ino: u64, name: Vec<u8> },
    /// This session opened `ino` (once per mount and inode, however many handles): while any
    /// live session has a file open, the loss of its last link keeps it (nlink 0, blocks
    /// referenced) as an orphan of the sessions that have it open. Reply: `Done`.
    Open { ino: u64 },
    /// This session closed `ino` (its last handle on the mount): its locks on the file go, and
    /// an orphan that no session has open any more is dropped. Idempotent. Reply: `Done`.
    Close { ino: u64 },
    /// Set, change or remove (`kind: Unlock`) a lock of `(this session, lock.owner)` on an
    /// inode this session has open, with POSIX semantics (see `docs/posix.md`). Refused with
    /// `WouldBlock` (nothing changed, no reply stored) when another owner holds a conflicting
    /// lock. Reply: `Done`.
    SetLock { ino: u64, lock: LockSpec },
    /// Issued by the metadata server for a session whose lease ran out (or that the client
    /// closed): its locks are released, its open files closed (orphans dropped) and its records
    /// and stored replies deleted. Reply: `Done`.
    ExpireSession { session: u64 },
    /// Punch a hole: drop the block-map entries with index in `[first, first + count)` (they
    /// read as zeros); the size stays. Dropping block 0 drops inline data too. Reply: `Attr`.
    PunchBlocks { ino: u64, first: u64, count: u64 },
    /// Copy whole blocks by reference (`copy_file_range`): entries `[src_first, src_first +
    /// count)` of `src`'s block map become entries `[dst_first, dst_first + count)` of `dst`'s,
    /// replacing what was there (a hole copies as a hole). Each block referenced gains a
    /// reference and each replaced one loses one; no bytes move. `end` is where the copied bytes
    /// end in `dst`, inside the range's last block: a block reaching past it counts only the
    /// bytes before it (as after a truncate). `dst`'s size becomes at least `end`; its mtime and
    /// ctime are set. Refused with `InvalidArgument`, nothing changed: either file not a regular
    /// file (`IsDir` for a directory); `count` 0 or above [`COPY_MAX_BLOCKS`]; source bytes past
    /// `src`'s end; a range ending inside a block of `dst` that has bytes after `end`; ranges
    /// that overlap within one file; inline data that the copy would have to keep (inline source
    /// bytes in the range, or inline destination bytes outside it). Reply: `Attr` of `dst`.
    CopyBlocks { src: u64, src_first: u64, dst: u64, dst_first: u64, count: u64, end: u64 },
    /// `open(O_CREAT)` of a new regular file: `Create` of a `File`, which is then open by the
    /// session as after `Open`, in one change instead of two. Reply: `Attr`.
    CreateOpen { parent: u64, name: Vec<u8>, perm: u16, uid: u32, gid: u32, umask: u16 },
    /// Add a patch to block-map entries (index, the entry as the client read it, patch) and set
    /// the size, as `CommitBlocks` does: how a small overwrite is saved without uploading its
    /// whole block (see [`crate::patch`]). Refused with `InvalidArgument`, nothing changed,
    /// when an entry is not the one named (another mount replaced or cut it), a patch does
    /// not fit its block or the file, an index is given twice, or a limit of
    /// [`crate::patch`] would be passed: the client then uploads the whole block. Any later
    /// change of an entry (a commit, truncate, hole, removal) drops or cuts its patches.
    /// Reply: `Attr`.
    PatchBlocks { ino: u64, patches: Vec<(u64, BlockRef, Patch)>, size: u64 },
    /// `CommitInline` and then `SetAttr` of the same file, in one change: how `futimens` after
    /// a small file's writes (`tar -x` does this for every file) sets the mtime without a change
    /// of its own for the data. `attr` may not set the size (`InvalidArgument`, nothing
    /// changed). Reply: `Attr`, after both.
    CommitInlineSetAttr {
        ino: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        attr: SetAttr,
    },
}

/// Most blocks one `CopyBlocks` references (one atomic batch); a longer copy takes several.
pub const COPY_MAX_BLOCKS: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A byte-range lock (or, with `kind: Unlock`, the range to release). `end` is inclusive;
/// `u64::MAX` is "to the end of the file, however long". `owner` is the kernel's lock owner
/// (per process for `fcntl` locks, per open file for `flock` and OFD locks), unique within a
/// session; `pid` is what `F_GETLK` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSpec {
    pub owner: u64,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// A lock held on an inode, as `GetLock` and `status` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub session: u64,
    pub lock: LockSpec,
}

/// A client session (a mount) as `Status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    pub session: u64,
    /// Name (CN) of the certificate that opened it.
    pub cert: String,
    /// The name the client gave when it opened the session.
    pub client: String,
    /// Peer address of the connection that last heartbeat it (empty when none yet since the
    /// metadata server started).
    pub addr: String,
    /// When it was opened (ns since the epoch).
    pub since: i64,
    /// Milliseconds since its last heartbeat (or since the metadata server started).
    pub last_heartbeat_ms: u64,
    /// Files it has open (distinct inodes) and, of those, how many are unlinked (orphans).
    pub open_files: u64,
    pub orphans: u64,
    pub locks: u64,
}

/// `SetXattr` flags, as Linux `setxattr(2)`.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum MetaRequest {
    /// Register a client session. Reply: `Session`.
    OpenSession { client: String },
    /// Reply: `Attr` of the child.
    Lookup { parent: u64, name: Vec<u8> },
    /// Reply: `Attr`.
    GetAttr { ino: u64 },
    /// Entries with cookie > `after`, at most `limit`. Reply: `Dir`.
    ReadDir { ino: u64, after: u64, limit: u32 },
    /// As `ReadDir`, each entry with its attributes and whether its inode has any extended
    /// attribute, read from the same snapshot (so that `ls -l`, which also asks each file for
    /// its ACL and security label, costs one round trip per page instead of three per entry).
    /// Reply: `DirPlus`.
    ReadDirPlus { ino: u64, after: u64, limit: u32 },
    /// Reply: `Link`.
    ReadLink { ino: u64 },
    /// Reply: `StatFs`.
    StatFs,
    /// Block-map entries with index in `[first, first + count)`, and the inline data of a small
    /// file. Reply: `Blocks`.
    GetBlocks { ino: u64, first: u64, count: u64 },
    /// A change, applied at most once per `(session, seq)`.
    Mutate { session: u64, seq: u64, op: Mutation },
    /// Reply: `Ring` (the current one).
    GetRing,
    /// Chunk servers only. Reply: `Ring`.
    RegisterChunk { node_id: u64, addr: String, zone: String, capacity: u64 },
    /// Chunk servers only. `repair_pending`: copies the server found missing elsewhere in its
    /// last scan and has not sent yet. `full`: its free space is below its reserve; the ring
    /// marks it so and writers skip it. Reply: `HeartbeatAck`.
    Heartbeat { node_id: u64, load: ChunkLoad },
    /// Admin only: take a chunk server out of the ring. Reply: `Done`.
    NodeAdmin { node_id: u64, action: NodeAction },
    /// Admin only. Reply: `Status`.
    Status,
    /// Admin only: referenced blocks with their reference counts, in id order, after `after`.
    /// Reply: `BlockList`.
    ListBlocks { after: Option<BlockId>, limit: u32 },
    /// Admin only: run a garbage-collection pass now; with `wait`, reply when it is done.
    /// Reply: `Gc`.
    Gc { wait: bool },
    /// Admin only: count the references of every block-map entry and compare them with the
    /// stored reference counts, on one consistent snapshot. Reply: `Audit`.
    AuditRefs,
    /// Reply: `Xattr` (the value), or `NoAttribute`.
    GetXattr { ino: u64, name: Vec<u8> },
    /// Reply: `XattrNames`.
    ListXattr { ino: u64 },
    /// Keep `session` alive for one more lease. Reply: `Lease`, or `UnknownSession` once it
    /// has expired.
    SessionHeartbeat { session: u64 },
    /// The first lock of another owner that conflicts with `lock` (`F_GETLK`), if any; locks
    /// of `(session, lock.owner)` never conflict with it. Reply: `Lock`.
    GetLock { ino: u64, session: u64, lock: LockSpec },
    /// Reply (`Done`) as soon as `lock` no longer conflicts with another owner's lock on
    /// `ino`, or after `timeout_ms` (at most 10 s), whichever comes first. Grants nothing: a
    /// waiting `F_SETLKW` sends `SetLock` again when it returns.
    WaitLock { ino: u64, session: u64, lock: LockSpec, timeout_ms: u32 },
    /// End `session` now (a clean unmount), as if its lease ran out. Reply: `Done`.
    CloseSession { session: u64 },
    /// Admin only: take a consistent RocksDB checkpoint of the metadata (on the metadata
    /// server's disk, hard links where possible) and list its files. Reply: `BackupStarted`.
    /// The checkpoint is kept until `BackupEnd`, a restart, or 10 minutes without a read.
    BackupStart,
    /// Admin only: up to `len` bytes (at most [`BACKUP_CHUNK`]) of checkpoint file `name` (as
    /// listed by `BackupStart`) from `offset`. Reply: `BackupData` with the bytes as payload;
    /// fewer than asked only at the end of the file.
    BackupRead { id: u64, name: String, offset: u64, len: u32 },
    /// Admin only: delete checkpoint `id` (unknown ids are fine). Reply: `Done`.
    BackupEnd { id: u64 },
    /// Metadata servers only, to each other: one Raft message, whose body (openraft's request,
    /// bincode) is the payload, for server id `to` (0 for `Probe`, which asks who is there): a
    /// server refuses a message meant for another id, such as one still sent to the address of
    /// a server that was replaced. Reply: `Raft`, with openraft's reply as the payload.
    Raft { rpc: RaftRpc, to: u64 },
    /// Admin only, under Raft: add or remove one metadata server (`tessera meta add|remove`).
    /// Reply: `Done` once the new membership is committed.
    MetaGroup { change: GroupChange },
}

/// One change of the metadata group's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// A new server, already running with `--id ID --join`: it catches up as a learner, then
    /// votes. An id that was removed once is refused.
    Add { id: u64, addr: String },
    /// The server stops being a member; its id is never used again.
    Remove { id: u64 },
}

/// Reply (in the payload) of `RaftRpc::Probe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The server's `--id`.
    pub id: u64,
    /// Whether it holds a Raft log (it is or was a member of a group).
    pub has_log: bool,
}

/// The Raft messages between metadata servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    Append,
    Vote,
    Snapshot,
    /// Who the server is and whether it holds a log (a member of a group already): asked
    /// before a group is formed and before a server is added. Reply payload: [`ProbeReply`].
    Probe,
}

/// Most bytes one `BackupRead` returns.
pub const BACKUP_CHUNK: u32 = 4 * 1024 * 1024;

/// One file of a metadata checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// A plain file name (no `/`), relative to the checkpoint directory.
    pub name: String,
    pub size: u64,
}

/// Reply of `BackupStart`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: u64,
    pub files: Vec<BackupFile>,
    pub block_size: u32,
    pub replicas: u32,
    /// The ring version when the checkpoint was taken.
    pub ring_version: u64,
}

/// What `AuditRefs` found. Clean when every count except `entries`, `blocks` and `orphans` is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Block-map entries read.
    pub entries: u64,
    /// Distinct blocks they reference.
    pub blocks: u64,
    /// Blocks whose stored reference count differs from the entries that reference them
    /// (a count stored for a block no entry references included).
    pub refcount_mismatches: u64,
    /// Block-map entries whose inode does not exist.
    pub dangling_entries: u64,
    /// Inodes without a link that are not kept as anyone's orphan: leaked.
    pub unlinked_not_orphans: u64,
    /// Orphan records whose inode does not exist.
    pub stale_orphans: u64,
    /// Inodes kept as orphans (unlinked while open on a mount).
    pub orphans: u64,
    /// The first problems found, one line each (at most 100).
    pub problems: Vec<String>,
    /// Extended attributes whose inode does not exist.
    pub dangling_xattrs: u64,
}

impl AuditReport {
    pub fn clean(&self) -> bool {
        self.refcount_mismatches == 0 && self.dangling_entries == 0 && self.dangling_xattrs == 0 && self.unlinked_not_orphans == 0 && self.stale_orphans == 0
    }
}

/// What a garbage-collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Copies looked at on all servers.
    pub scanned: u64,
    /// Unreferenced copies past the grace period that were deleted.
    pub deleted: u64,
    /// Servers that could not be asked.
    pub unreachable: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAction {
    /// Leave the ring now; the remaining copies are re-replicated.
    Remove,
    /// Leave the ring but keep serving: the server hands its blocks to their new owners.
    Drain,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
    pub block_size: u32,
}

/// What a chunk server reports with each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoad {
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    pub repair_pending: u64,
    /// Bytes it may still take: free space above its reserve (0 when full).
    pub free: u64,
    /// Free space below the reserve: it takes no new blocks.
    pub full: bool,
    /// Its background workers (heartbeat, repair, scrub), as of this heartbeat.
    pub workers: Vec<WorkerStatus>,
}

/// One background worker of a server (`common::worker`), as `tessera status` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    /// `idle` (waiting for its next pass), `running` or `stopped`.
    pub state: String,
    /// Passes finished since the server started, periodic or asked for.
    pub passes: u64,
    /// Passes that failed, in all and in a row up to the last one (0: the last pass went well).
    pub errors: u64,
    pub consecutive_errors: u64,
    /// When the last pass started, Unix milliseconds (0: none yet).
    pub last_start_ms: u64,
    pub last_duration_ms: u64,
    /// The error of the last pass that failed, kept after later good passes.
    pub last_error: Option<String>,
    /// One line the worker sets: what it is at, or what its last pass did.
    pub progress: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub zone: String,
    pub addr: String,
    /// `up`, `down` or `out`.
    pub state: String,
    pub capacity: u64,
    pub used: u64,
    pub blocks: u64,
    /// Milliseconds since the last heartbeat.
    pub last_heartbeat_ms: u64,
    pub draining: bool,
    pub repair_pending: u64,
    /// Bytes it may still take (free space above its reserve).
    pub free: u64,
    /// Free space below the server's reserve: it takes no new blocks.
    pub full: bool,
    /// Its background workers, as its last heartbeat reported them.
    pub workers: Vec<WorkerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    pub ring_version: u64,
    pub replicas: u32,
    pub files: u64,
    pub logical_bytes: u64,
    /// Distinct blocks referenced by the namespace.
    pub blocks: u64,
    /// `ok`, or `failed: <why>` once the metadata server has stopped accepting changes (a WAL
    /// sync failed); it stays so until the server is restarted.
    pub meta_state: String,
    /// Client sessions (mounts), by session id.
    pub mounts: Vec<MountStatus>,
    /// The metadata server's background workers (the chunk servers' are in `nodes`).
    pub workers: Vec<WorkerStatus>,
    /// What happened lately, oldest first (kept in the metadata server's memory).
    pub events: Vec<Event>,
    /// The metadata servers of a replicated group, as the leader sees them (empty when the
    /// metadata server runs alone).
    pub meta_servers: Vec<MetaServerStatus>,
}

/// One metadata server of a Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaServerStatus {
    pub id: u64,
    pub addr: String,
    /// `leader` or `follower`.
    pub role: String,
    /// The leader's term.
    pub term: u64,
    /// The highest log index the server is known to hold (for a follower: what it acknowledged).
    pub log_index: u64,
    /// Entries behind the leader's log.
    pub lag: u64,
    /// The commit index (what a majority holds); the same for every row.
    pub commit_index: u64,
    /// The highest index applied to its state: known for the leader only.
    pub applied_index: Option<u64>,
}

/// One event of the cluster (a server went down, a mount's session expired, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Session { session: u64, block_size: u32, replicas: u32, write_quorum: u32, ring: Ring },
    Attr(Attr),
    Dir { entries: Vec<DirEntry>, done: bool },
    /// Each entry, its attributes, and whether its inode has any extended attribute.
    DirPlus { entries: Vec<(DirEntry, Attr, bool)>, done: bool },
    Link(Vec<u8>),
    StatFs(StatFs),
    /// A page of a block map; `patches` are those of the entries in `blocks`, in the order they
    /// were added (each applies over the ones before it).
    Blocks {
        size: u64,
        blocks: Vec<(u64, BlockRef)>,
        #[serde(with = "serde_bytes")]
        inline: Option<Vec<u8>>,
        patches: Vec<(u64, Vec<Patch>)>,
    },
    Done,
    Ring(Ring),
    /// `term`: the leader's Raft term (0 when the metadata server runs alone), which fences
    /// older leaders' deletes at the chunk server.
    HeartbeatAck { ring_version: u64, term: u64 },
    Status(ClusterStatus),
    BlockList(Vec<(BlockId, u64)>),
    Gc(GcReport),
    Error(WireError),
    /// This server does not lead; retry at `leader` if known.
    NotLeader { leader: Option<String> },
    /// Reply of `Unlink` and `Rename`: the inode kept as an orphan, if one was.
    Unlinked { orphan: Option<u64> },
    Audit(AuditReport),
    Xattr(#[serde(with = "serde_bytes")] Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    /// Reply of `SessionHeartbeat`: the session lease; heartbeat well within it.
    Lease { lease_ms: u64 },
    /// Reply of `GetLock`.
    Lock(Option<LockHolder>),
    BackupStarted(BackupInfo),
    /// Reply of `BackupRead`; the bytes are the payload.
    BackupData,
    /// Reply of `Raft`; openraft's reply is the payload.
    Raft,
}

impl crate::metrics::OpName for MetaRequest {
    /// A mutation is counted under its own name (`create`, `rename`, ...).
    fn op_name(&self) -> &'static str {
        match self {
            MetaRequest::Mutate { op, .. } => op.into(),
            other => other.into(),
        }
    }
}
