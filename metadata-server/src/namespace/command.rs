//! Commands: every change to the stored state, as the (future Raft) leader will propose it.
//!
//! A [`Command`] holds everything its apply depends on that is not in the store: the time, and
//! who asks. [`Namespace::apply`] reads only the command and the store (inode and session
//! counters, the retry cache, sessions, node records and the ring are all stored), so every
//! replica that applies the same commands in the same order holds the same bytes. The request
//! path forms a command and applies it at once ([`Namespace::submit`]).
//!
//! Encoding ([`Command::encode`]): a version byte, then bincode (standard config) of the
//! command. It embeds wire types (`Mutation`, `SessionOwner`, `RingNode`); the test
//! `command_encoding_is_pinned` fixes its bytes, so a change to any of them that would change
//! what a log holds fails there, and needs a new version with a decoder for the old one.

use super::*;
use crate::membership::{self, Admin};
use tessera_common::ring::RingNode;

/// Encoding version of a command (first byte).
const CMD_V1: u8 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    /// Wall-clock time (ns since the epoch) fixed when the command is formed: every timestamp
    /// it writes (mtime, ctime, atime "now", a session's opening, an orphan's) is this one.
    pub now: i64,
    pub op: Op,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Create the root directory, the counters and `params` (a new namespace; nothing if one
    /// exists).
    Init { params: FsParams },
    /// A new session for `owner`; the id is the stored session counter.
    OpenSession { owner: SessionOwner, client: String },
    /// A client's mutation, at most once per `(session, seq)`: its reply is stored in the same
    /// batch, and a command for a pair already answered returns that reply and changes nothing.
    Mutate { owner: SessionOwner, session: u64, seq: u64, op: Mutation },
    /// Release everything `session` holds and delete it (lease expiry or its own close).
    ExpireSession { session: u64 },
    /// After a restore: no inode number, session id or ring version below `floor` is handed
    /// out again (see `backup::restore_floor`).
    RaiseFloor { floor: u64 },
    /// A chunk server registered (its admin state, if it had one, is kept).
    RegisterNode { id: u64, addr: String, zone: String, capacity: u64 },
    /// `tessera node remove|drain`.
    SetNodeAdmin { id: u64, admin: Admin },
    /// Publish `nodes` (sorted by id) as the ring: the stored ring's version if its members are
    /// these, else the next one.
    PublishRing { nodes: Vec<RingNode> },
    /// Drop up to `DROP_BOUND` block-map entries of a file being dropped in steps, and the
    /// inode with the last of them.
    Reap { ino: u64 },
    /// `tessera meta remove ID`: the metadata server id is retired, never to be used again.
    RetireMetaServer { id: u64 },
}

/// What applying a command produced (besides its batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A mutation's reply; `again` when it was answered from the retry cache.
    Reply { reply: MetaResponse, again: bool },
    Session(u64),
    /// Whether the session existed.
    Expired(bool),
    /// The published ring version.
    Ring(u64),
    /// Whether the file is gone (or was not being dropped).
    Reaped(bool),
    Done,
}

/// A command applied and written.
pub struct Written {
    pub out: Outcome,
    /// For `Store::wait_durable`.
    pub ticket: u64,
    /// It changed only open records and the retry cache.
    pub soft: bool,
}

impl Command {
    pub fn new(op: Op) -> Self {
        Command { now: now_ns(), op }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CMD_V1];
        out.extend(bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("encoding a command"));
        out
    }

    pub fn decode(b: &[u8]) -> Result<Command, WireError> {
        match b.split_first() {
            Some((&CMD_V1, rest)) => match bincode::serde::decode_from_slice(rest, bincode::config::standard()) {
                Ok((c, n)) if n == rest.len() => Ok(c),
                Ok(_) => Err(err(ErrorCode::Internal, "corrupt command: trailing bytes")),
                Err(e) => Err(err(ErrorCode::Internal, format!("corrupt command: {e}"))),
            },
            Some((v, _)) => Err(err(ErrorCode::Internal, format!("command with unknown encoding version {v}"))),
            None => Err(err(ErrorCode::Internal, "empty command")),
        }
    }
}

impl Namespace {
    /// Apply `cmd` and write its batch (not yet durable: wait on the ticket). Commands are
    /// applied one at a time, in the order of this lock.
    pub fn submit(&self, cmd: &Command) -> Result<Written, WireError> {
        if let Some(r) = self.replica.get() {
            // Durable on a majority once applied; ticket 0 needs no wait.
            return Ok(Written { out: r.propose(cmd)?, ticket: 0, soft: false });
        }
        let _g = self.lock.lock().unwrap();
        #[cfg(test)]
        self.log.lock().unwrap().push(cmd.encode());
        let (batch, out) = self.apply(cmd)?;
        let soft = batch.only_in(&[Cf::Opens, Cf::Sessions]);
        Ok(Written { out, ticket: self.store.apply(batch)?, soft })
    }

    /// Under Raft: apply the command of a committed entry (none for a blank or membership
    /// entry) and write its batch with `extra` (the applied log id) in one write. Not synced:
    /// the log is, and a replica that loses this write applies the entry again.
    /// Returns the write's ticket (for `Store::wait_durable`) and the command's outcome.
    pub(crate) fn apply_logged(&self, cmd: Option<&Command>, extra: Batch) -> Result<(u64, Result<Outcome, WireError>), StoreError> {
        let _g = self.lock.lock().unwrap();
        let (mut batch, out) = match cmd.map(|c| self.apply(c)) {
            Some(Ok((b, out))) => (b, Ok(out)),
            Some(Err(e)) => (Batch::default(), Err(e)),
            None => (Batch::default(), Ok(Outcome::Done)),
        };
        batch.append(extra);
        Ok((self.store.apply(batch)?, out))
    }

    /// `submit`, then wait until it is durable.
    pub(crate) fn submit_durable(&self, cmd: &Command) -> Result<Outcome, WireError> {
        let w = self.submit(cmd)?;
        self.store.wait_durable(w.ticket)?;
        Ok(w.out)
    }

    /// The batch and outcome of `cmd` on the current state. Reads the command and the store,
    /// nothing else: no clock, no counter in memory. An error means nothing changes.
    pub fn apply(&self, cmd: &Command) -> Result<(Batch, Outcome), WireError> {
        let now = cmd.now;
        let mut b = Batch::default();
        let out = match &cmd.op {
            Op::Init { params } => {
                if self.store.get(Cf::Cluster, KEY_FS)?.is_none() {
                    init(&mut b, params, now);
                }
                Outcome::Done
            }
            Op::OpenSession { owner, client } => {
                if client.len() > 255 {
                    return Err(err(ErrorCode::InvalidArgument, "client name longer than 255 bytes"));
                }
                let id = read_u64(&self.store, KEY_NEXT_SESSION)?.unwrap_or(1);
                b.put(Cf::Cluster, KEY_NEXT_SESSION.to_vec(), enc(&(id + 1)));
                b.put(Cf::Sessions, session_key(id), enc(&SessionRec { owner: owner.clone(), client: client.clone(), opened: now }));
                Outcome::Session(id)
            }
            Op::Mutate { owner, session, seq, op } => return self.apply_mutation(now, owner, *session, *seq, op),
            Op::ExpireSession { session } => {
                if self.store.get(Cf::Sessions, &session_key(*session))?.is_none() {
                    return Ok((b, Outcome::Expired(false)));
                }
                let (batch, _) = self.execute(now, *session, 0, &Mutation::ExpireSession { session: *session })?;
                return Ok((batch, Outcome::Expired(true)));
            }
            Op::RaiseFloor { floor } => {
                for key in [KEY_NEXT_INO, KEY_NEXT_SESSION] {
                    let cur = read_u64(&self.store, key)?.unwrap_or(0);
                    b.put(Cf::Cluster, key.to_vec(), enc(&cur.max(*floor)));
                }
                membership::raise_ring_version(self, &mut b, *floor)?;
                Outcome::Done
            }
            Op::RegisterNode { id, addr, zone, capacity } => {
                membership::apply_register(self, &mut b, *id, addr, zone, *capacity)?;
                Outcome::Done
            }
            Op::SetNodeAdmin { id, admin } => {
                membership::apply_admin(self, &mut b, *id, *admin)?;
                Outcome::Done
            }
            Op::PublishRing { nodes } => Outcome::Ring(membership::apply_ring(self, &mut b, nodes)?),
            Op::Reap { ino } => {
                let (batch, done) = self.reap(now, *ino)?;
                return Ok((batch, Outcome::Reaped(done)));
            }
            Op::RetireMetaServer { id } => {
                b.put(Cf::Cluster, retired_meta_key(*id), Vec::new());
                Outcome::Done
            }
        };
        Ok((b, out))
    }

    fn apply_mutation(&self, now: i64, owner: &SessionOwner, session: u64, seq: u64, op: &Mutation) -> Result<(Batch, Outcome), WireError> {
        let refused = |e: WireError| Ok((Batch::default(), Outcome::Reply { reply: MetaResponse::Error(e), again: false }));
        if matches!(op, Mutation::ExpireSession { .. }) {
            return refused(err(ErrorCode::PermissionDenied, "sessions are expired by the metadata server (CloseSession ends one's own)"));
        }
        if let Err(e) = self.check_session(owner, session) {
            return refused(e);
        }
        let skey = pair_key(session, seq);
        if let Some(v) = self.store.get(Cf::Sessions, &skey)? {
            return Ok((Batch::default(), Outcome::Reply { reply: dec(&v)?, again: true }));
        }
        let next_ino = read_u64(&self.store, KEY_NEXT_INO)?.unwrap_or(ROOT_INO + 1);
        let (mut batch, reply) = match self.execute(now, session, next_ino, op) {
            Ok(x) => x,
            Err(e) => (Batch::default(), MetaResponse::Error(e)),
        };
        if matches!(op, Mutation::Create { .. } | Mutation::CreateOpen { .. }) && !matches!(reply, MetaResponse::Error(_)) {
            batch.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&(next_ino + 1)));
        }
        // A refused lock changed nothing: not stored, so that the waiting `F_SETLKW` that
        // sends it again is answered anew.
        if !matches!(&reply, MetaResponse::Error(e) if e.code == ErrorCode::WouldBlock) {
            batch.put(Cf::Sessions, skey, enc(&reply));
        }
        if seq > RETRY_WINDOW {
            batch.delete(Cf::Sessions, pair_key(session, seq - RETRY_WINDOW));
        }
        Ok((batch, Outcome::Reply { reply, again: false }))
    }
}

/// The records of a new namespace: the root directory (timestamps `now`), the counters, the
/// totals and `params`.
fn init(b: &mut Batch, params: &FsParams, now: i64) {
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
    b.put(Cf::Inodes, ino_key(ROOT_INO), enc(&root));
    b.put(Cf::Cluster, KEY_FS.to_vec(), enc(params));
    b.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&(ROOT_INO + 1)));
    b.put(Cf::Cluster, KEY_STATS.to_vec(), enc(&Stats { files: 1, ..Default::default() }));
}
