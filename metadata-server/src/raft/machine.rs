//! The state machine: the namespace. A committed entry's command is applied by
//! [`Namespace::apply_logged`], and its log id (and a membership entry's membership) is written
//! in the same batch, so the applied state and the applied id never disagree.
//!
//! A snapshot is every record of the state's column families as of one RocksDB snapshot (a
//! point-in-time view, what a checkpoint would hold), with the log id it reflects, followed by
//! its BLAKE3. It is held in memory and sent in chunks to a follower that is new or behind the
//! purged log; installing it replaces the follower's state in one synced batch.

use super::log::{dec, enc};
use super::{io_err, Applied, TypeConfig};
use crate::namespace::{Command, Namespace};
use crate::store::{Batch, Cf};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, Entry, EntryPayload, LogId, StorageError, StorageIOError, StoredMembership};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use tessera_common::{ErrorCode, WireError};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The last command applied within an entry: (the entry's log id, its position).
const KEY_APPLIED_PART: &[u8] = b"applied_part";

type Meta = SnapshotMeta<u64, BasicNode>;

/// Whether the store holds a namespace that no log entry made: one restored from a backup, or
/// kept by a server that ran alone (no applied log id beside it).
pub fn holds_unlogged_namespace(ns: &Namespace) -> Result<bool, String> {
    Ok(ns.load_params().map_err(|e| e.message)? && ns.store().get(Cf::RaftState, KEY_APPLIED).map_err(|e| e.to_string())?.is_none())
}

#[derive(Clone)]
pub struct StateMachine {
    ns: Arc<Namespace>,
    /// The last snapshot built or installed. Only its description is kept: its bytes (the
    /// whole namespace, about 160 MB at a million files) are dumped again when a follower
    /// needs them, so that the server's memory does not grow with the namespace.
    current: Arc<Mutex<Option<Meta>>>,
}

impl StateMachine {
    pub fn new(ns: Arc<Namespace>) -> Self {
        StateMachine { ns, current: Arc::default() }
    }
}

/// The state as one byte string: `cf u8 | key len u32 | key | value len u32 | value`, repeated,
/// then the BLAKE3 of all that.
fn dump(ns: &Namespace) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>, Vec<u8>), String> {
    let view = ns.store().view();
    let applied = match view.get(Cf::RaftState, KEY_APPLIED).map_err(|e| e.to_string())? {
        Some(v) => dec(&v)?,
        None => None,
    };
    let membership = match view.get(Cf::RaftState, KEY_MEMBERSHIP).map_err(|e| e.to_string())? {
        Some(v) => dec(&v)?,
        None => StoredMembership::default(),
    };
    let mut out = Vec::new();
    for (i, cf) in Cf::STATE.iter().enumerate() {
        view.for_each::<crate::store::StoreError>(*cf, |k, v| {
            out.push(i as u8);
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok((applied, membership, out))
}

/// The records of a snapshot made by [`dump`], checked against its BLAKE3.
fn parse(data: &[u8]) -> Result<Vec<(Cf, &[u8], &[u8])>, String> {
    let body_len = data.len().checked_sub(32).ok_or("snapshot too short")?;
    let (body, sum) = data.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return Err("snapshot does not match its BLAKE3".into());
    }
    let mut out = Vec::new();
    let mut rest = body;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("snapshot truncated".into());
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Ok(a)
    }
    while !rest.is_empty() {
        let cf = *Cf::STATE.get(take(&mut rest, 1)?[0] as usize).ok_or("snapshot names an unknown column family")?;
        let kl = u32::from_le_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
        let k = take(&mut rest, kl)?;
        let vl = u32::from_le_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
        let v = take(&mut rest, vl)?;
        out.push((cf, k, v));
    }
    Ok(out)
}

impl StateMachine {
    /// A snapshot of the state as applied now.
    async fn snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let ns = self.ns.clone();
        let (applied, membership, data) = tokio::task::spawn_blocking(move || dump(&ns))
            .await
            .map_err(|e| io_err(StorageIOError::read_state_machine, e.to_string()))?
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        let id = format!("{}-{}", applied.map(|l| l.index).unwrap_or(0), crate::namespace::now_ns());
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id: id };
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let snap = self.snapshot_now().await?;
        *self.current.lock().unwrap() = Some(snap.meta.clone());
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let store = self.ns.store();
        let get = |k| store.get(Cf::RaftState, k).map_err(|e| io_err(StorageIOError::read_state_machine, e.to_string()));
        let applied = match get(KEY_APPLIED)? {
            Some(v) => dec(&v).map_err(|e| io_err(StorageIOError::read_state_machine, e))?,
            None => None,
        };
        let membership = match get(KEY_MEMBERSHIP)? {
            Some(v) => dec(&v).map_err(|e| io_err(StorageIOError::read_state_machine, e))?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        // On this task, not a blocking thread: the writes are not synced (a few tens of
        // microseconds), and a hand-off to a blocking thread and back was most of an apply's
        // time, on the path of every metadata change.
        let ns = &self.ns;
        let mut out = Vec::new();
        for e in entries {
            let failed = |err: String| io_err(|a| StorageIOError::apply(e.log_id, a), err);
            // The applied log id goes with the entry's last write (its last command's).
            let mut applied = Batch::default();
            applied.put(Cf::RaftState, KEY_APPLIED.to_vec(), enc(&Some(e.log_id)));
            let mut marker = Some(applied);
            let outcomes = match e.payload {
                EntryPayload::Blank => vec![],
                EntryPayload::Membership(m) => {
                    if let Some(b) = marker.as_mut() {
                        b.put(Cf::RaftState, KEY_MEMBERSHIP.to_vec(), enc(&StoredMembership::new(Some(e.log_id), m)));
                    }
                    vec![]
                }
                EntryPayload::Normal(p) => {
                    // Each command's write says how far into the entry it got: after a
                    // crash that kept only the first writes of an entry, the entry is
                    // applied again from the first command not yet applied.
                    let done: Option<(LogId<u64>, usize)> = match ns.store().get(Cf::RaftState, KEY_APPLIED_PART).map_err(|err| failed(err.to_string()))? {
                        Some(v) => dec(&v).map_err(failed)?,
                        None => None,
                    };
                    let skip = match done {
                        Some((id, k)) if id == e.log_id => k + 1,
                        _ => 0,
                    };
                    let n = p.0.len();
                    let mut outcomes = Vec::with_capacity(n);
                    for (k, bytes) in p.0.iter().enumerate() {
                        if k < skip {
                            outcomes.push(Err(WireError::new(ErrorCode::Unavailable, "applied before a restart")));
                            continue;
                        }
                        let cmd = Command::decode(bytes).map_err(|err| failed(err.message))?;
                        let mut extra = if k + 1 == n { marker.take().unwrap_or_default() } else { Batch::default() };
                        extra.put(Cf::RaftState, KEY_APPLIED_PART.to_vec(), enc(&Some((e.log_id, k))));
                        let (_, r) = ns.apply_logged(Some(&cmd), extra).map_err(|err| failed(err.to_string()))?;
                        outcomes.push(r);
                    }
                    outcomes
                }
            };
            if let Some(b) = marker {
                // No command wrote it: the entry's own write (its outcome is `Done`).
                let _ = ns.apply_logged(None, b).map_err(|err| failed(err.to_string()))?;
            }
            out.push(Applied(outcomes));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError<u64>> {
        let (ns, d, m) = (self.ns.clone(), snapshot.into_inner(), meta.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let records = parse(&d)?;
            let mut b = Batch::default();
            {
                let view = ns.store().view();
                for cf in Cf::STATE {
                    view.for_each::<crate::store::StoreError>(cf, |k, _| {
                        b.delete(cf, k.to_vec());
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                }
            }
            let n = records.len();
            for (cf, k, v) in records {
                b.put(cf, k.to_vec(), v.to_vec());
            }
            b.put(Cf::RaftState, KEY_APPLIED.to_vec(), enc(&m.last_log_id));
            b.put(Cf::RaftState, KEY_MEMBERSHIP.to_vec(), enc(&m.last_membership));
            let (ticket, _) = ns.apply_logged(None, b).map_err(|e| e.to_string())?;
            ns.store().wait_durable(ticket).map_err(|e| e.to_string())?;
            ns.load_params().map_err(|e| e.message)?;
            tracing::info!(records = n, index = m.last_log_id.map(|l| l.index), "installed a snapshot from the leader");
            Ok(())
        })
        .await
        .map_err(|e| io_err(|a| StorageIOError::write_snapshot(Some(meta.signature()), a), e.to_string()))?
        .map_err(|e| io_err(|a| StorageIOError::write_snapshot(Some(meta.signature()), a), e))?;
        *self.current.lock().unwrap() = Some(meta.clone());
        Ok(())
    }

    /// The state as applied now, once a snapshot was built or installed: it covers at least
    /// what that one did (the log behind it may be purged).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        if self.current.lock().unwrap().is_none() {
            return Ok(None);
        }
        Ok(Some(self.snapshot_now().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{FsParams, Op, Outcome, SessionOwner};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn open_session(client: &str) -> Vec<u8> {
        Command::new(Op::OpenSession { owner: SessionOwner { name: "t".into(), fingerprint: [7; 32] }, client: client.into() }).encode()
    }

    /// An entry of three commands whose first one was applied before a crash (its write kept,
    /// the rest lost): applying the entry again applies only the other two.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_entry_cut_short_by_a_crash_is_applied_from_where_it_stopped() {
        let d = tempfile::tempdir().unwrap();
        let ns = Arc::new(Namespace::open(crate::store::Store::open(d.path()).unwrap(), FsParams { block_size: 4096 }).unwrap());
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let entry = |cmds: Vec<Vec<u8>>| Entry::<TypeConfig> { log_id, payload: EntryPayload::Normal(super::super::Proposal(cmds)) };
        // The first command's write, as the crash left it.
        let first = Command::decode(&open_session("a")).unwrap();
        let mut part = Batch::default();
        part.put(Cf::RaftState, KEY_APPLIED_PART.to_vec(), enc(&Some((log_id, 0usize))));
        let (_, r) = ns.apply_logged(Some(&first), part).unwrap();
        assert_eq!(r.unwrap(), Outcome::Session(1));

        let mut sm = StateMachine::new(ns.clone());
        let out = sm.apply(vec![entry(vec![open_session("a"), open_session("b"), open_session("c")])]).await.unwrap();
        let outcomes = &out[0].0;
        assert!(outcomes[0].is_err(), "the command applied before the crash is not applied again");
        assert_eq!(outcomes[1..].iter().map(|o| o.clone().unwrap()).collect::<Vec<_>>(), vec![Outcome::Session(2), Outcome::Session(3)]);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id), "the entry counts as applied once its last command is");
        // Without the marker (a fresh entry), every command is applied.
        let next = LogId::new(CommittedLeaderId::new(1, 1), 6);
        let out = sm.apply(vec![Entry::<TypeConfig> { log_id: next, payload: EntryPayload::Normal(super::super::Proposal(vec![open_session("d"), open_session("e")])) }]).await.unwrap();
        assert_eq!(out[0].0.iter().map(|o| o.clone().unwrap()).collect::<Vec<_>>(), vec![Outcome::Session(4), Outcome::Session(5)]);
    }
}
