//! Commands are deterministic: the same commands on two fresh RocksDB stores leave the same
//! bytes in every column family, and apply takes its time from the command, never the clock.

use super::*;
use crate::membership::Membership;
use crate::store::StoreError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

/// Every entry of every column family, in key order.
fn dump(s: &Store) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let (v, mut out) = (s.view(), Vec::new());
    for cf in Cf::ALL {
        v.for_each::<StoreError>(cf, |k, val| {
            out.push((cf.name(), k.to_vec(), val.to_vec()));
            Ok(())
        })
        .unwrap();
    }
    out
}

fn owner(n: u8) -> SessionOwner {
    SessionOwner { name: format!("cert{n}"), fingerprint: [n; 32] }
}

fn bref(n: u8, len: u32) -> BlockRef {
    BlockRef { id: BlockId::of(&[n]), len }
}

/// A random mutation on the inodes `inos` (some of them gone by now) and four names.
fn random_mutation(rng: &mut StdRng, inos: &[u64]) -> Mutation {
    let ino = inos[rng.random_range(0..inos.len())];
    let dir = if rng.random_bool(0.6) { ROOT_INO } else { ino };
    let name = [&b"a"[..], b"b", b"c", b"d"][rng.random_range(0..4)].to_vec();
    let time = |rng: &mut StdRng| if rng.random_bool(0.5) { SetTime::Now } else { SetTime::At(rng.random_range(0..1 << 40)) };
    match rng.random_range(0..16) {
        0..=2 => {
            let kind = [FileKind::File, FileKind::File, FileKind::Dir, FileKind::Symlink][rng.random_range(0..4)];
            let target = (kind == FileKind::Symlink).then(|| b"t".to_vec());
            Mutation::Create { parent: dir, name, kind, perm: 0o644, uid: rng.random_range(0..3), gid: 0, rdev: 0, target, umask: 0o022 }
        }
        3 => Mutation::Unlink { parent: dir, name, keep: false },
        4 => Mutation::Rmdir { parent: dir, name },
        5 => Mutation::Rename { parent: dir, name, new_parent: inos[rng.random_range(0..inos.len())], new_name: b"r".to_vec(), flags: [0, RENAME_NOREPLACE, RENAME_EXCHANGE][rng.random_range(0..3)], keep: false },
        6 => Mutation::Link { ino, new_parent: dir, new_name: name },
        7 => {
            let size: u64 = rng.random_range(1..=5 * 4096);
            let mut blocks = Vec::new();
            for i in 0..size.div_ceil(4096) {
                if rng.random_bool(0.7) {
                    blocks.push((i, bref(rng.random_range(0..5), rng.random_range(1..=4096))));
                }
            }
            Mutation::CommitBlocks { ino, blocks, size }
        }
        8 if rng.random_bool(0.5) => Mutation::CommitInline { ino, data: vec![rng.random(); rng.random_range(0..100)] },
        8 => Mutation::CommitInlineSetAttr { ino, data: vec![rng.random(); rng.random_range(0..100)], attr: SetAttr { mtime: Some(time(rng)), ..Default::default() } },
        9 => Mutation::SetAttr { ino, attr: SetAttr { size: rng.random_bool(0.5).then(|| rng.random_range(0..3 * 4096)), mode: rng.random_bool(0.3).then_some(0o600), atime: Some(time(rng)), mtime: Some(time(rng)), ..Default::default() } },
        10 => Mutation::SetXattr { ino, name: b"user.x".to_vec(), value: vec![rng.random(); 3], flags: 0 },
        11 => Mutation::RemoveXattr { ino, name: b"user.x".to_vec() },
        12 => Mutation::Open { ino },
        13 => Mutation::Close { ino },
        14 => Mutation::SetLock { ino, lock: LockSpec { owner: rng.random_range(0..2), kind: [LockKind::Read, LockKind::Write, LockKind::Unlock][rng.random_range(0..3)], start: rng.random_range(0..10), end: rng.random_range(10..20), pid: 1 } },
        _ => Mutation::PunchBlocks { ino, first: rng.random_range(0..3), count: rng.random_range(0..3) },
    }
}

/// A random workload through the request path (mutations of three sessions with retries,
/// session opens and expiries, chunk-server registration and rings) on a fresh store; the
/// commands it formed, replayed from their encoding on a second fresh store, leave the same
/// bytes in every column family.
fn replay(seed: u64, steps: usize) -> usize {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Arc::new(Namespace::open(Store::open(da.path()).unwrap(), FsParams { block_size: 4096 }).unwrap());
    let members = Membership::load(a.clone(), 2, Duration::from_secs(60), Duration::from_secs(600)).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sessions: Vec<(u8, u64, u64)> = (1..=3).map(|n| (n, a.open_session(&owner(n), "s").unwrap(), 0)).collect();
    let mut inos = vec![ROOT_INO];
    let mut done = 0;
    for _ in 0..steps {
        match rng.random_range(0..40) {
            0 => {
                let i = rng.random_range(0..sessions.len());
                assert!(a.expire_session(sessions[i].1, now_ns()).unwrap());
                let n = sessions[i].0;
                sessions[i] = (n, a.open_session(&owner(n), "again").unwrap(), 0);
            }
            1 => {
                let id = rng.random_range(1..4);
                members.register(id, format!("127.0.0.1:{id}"), "z".into(), 1 << 30).unwrap();
                if rng.random_bool(0.3) {
                    members.admin(id, tessera_common::proto::meta::NodeAction::Drain).unwrap();
                }
            }
            _ => {
                let i = rng.random_range(0..sessions.len());
                let (n, session, seq) = sessions[i];
                // Now and then a retry of an earlier seq: answered from the retry cache.
                let seq = if seq > 0 && rng.random_bool(0.1) { rng.random_range(1..=seq) } else { seq + 1 };
                sessions[i].2 = sessions[i].2.max(seq);
                let reply = a.mutate(&owner(n), session, seq, random_mutation(&mut rng, &inos));
                match reply {
                    MetaResponse::Error(_) => {}
                    MetaResponse::Attr(at) => {
                        done += 1;
                        if !inos.contains(&at.ino) {
                            inos.push(at.ino);
                        }
                    }
                    _ => done += 1,
                }
            }
        }
    }
    let log = std::mem::take(&mut *a.log.lock().unwrap());
    let b = Namespace::unopened(Store::open(db.path()).unwrap());
    for bytes in &log {
        b.submit(&Command::decode(bytes).unwrap()).unwrap();
    }
    let (sa, sb) = (dump(a.store()), dump(b.store()));
    assert!(sa.len() > 50, "seed {seed}: only {} records", sa.len());
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x, y, "seed {seed}: first difference");
    }
    assert_eq!(sa.len(), sb.len(), "seed {seed}: record counts");
    done
}

#[test]
fn the_same_commands_on_two_fresh_stores_leave_identical_bytes() {
    let done: usize = (1..=6).map(|seed| replay(seed, 600)).sum();
    // Most random mutations are refused (no such entry, not a file); enough are applied.
    assert!(done > 600, "only {done} mutations succeeded");
}

/// A namespace created by `Init` at `t`, with nothing from the clock.
fn at(t: i64) -> (tempfile::TempDir, Namespace) {
    let d = tempfile::tempdir().unwrap();
    let ns = Namespace::unopened(Store::open(d.path()).unwrap());
    ns.submit(&Command { now: t, op: Op::Init { params: FsParams { block_size: 4096 } } }).unwrap();
    (d, ns)
}

fn mutate(ns: &Namespace, now: i64, session: u64, seq: u64, op: Mutation) -> MetaResponse {
    match ns.submit(&Command { now, op: Op::Mutate { owner: owner(1), session, seq, op } }).unwrap().out {
        Outcome::Reply { reply, .. } => reply,
        o => panic!("{o:?}"),
    }
}

#[test]
fn apply_takes_every_time_from_the_command() {
    // 1970-01-02 and the days after: far from any clock.
    let day = 86_400_000_000_000i64;
    let (_d, ns) = at(day);
    assert_eq!((ns.getattr(ROOT_INO).unwrap().mtime, ns.getattr(ROOT_INO).unwrap().ctime), (day, day));
    let Outcome::Session(s) = ns.submit(&Command { now: 2 * day, op: Op::OpenSession { owner: owner(1), client: "c".into() } }).unwrap().out else { panic!() };
    assert_eq!(ns.sessions().unwrap()[0].opened, 2 * day);
    let create = Mutation::Create { parent: ROOT_INO, name: b"f".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
    let MetaResponse::Attr(f) = mutate(&ns, 3 * day, s, 1, create) else { panic!() };
    assert_eq!((f.atime, f.mtime, f.ctime), (3 * day, 3 * day, 3 * day));
    let root = ns.getattr(ROOT_INO).unwrap();
    assert_eq!((root.atime, root.mtime, root.ctime), (day, 3 * day, 3 * day));
    mutate(&ns, 4 * day, s, 2, Mutation::SetAttr { ino: f.ino, attr: SetAttr { mtime: Some(SetTime::Now), atime: Some(SetTime::At(7)), ..Default::default() } });
    let g = ns.getattr(f.ino).unwrap();
    assert_eq!((g.atime, g.mtime, g.ctime), (7, 4 * day, 4 * day));
    mutate(&ns, 5 * day, s, 3, Mutation::CommitBlocks { ino: f.ino, blocks: vec![(0, bref(1, 10))], size: 10 });
    assert_eq!((ns.getattr(f.ino).unwrap().mtime, ns.getattr(f.ino).unwrap().ctime), (5 * day, 5 * day));
    // An orphan is stamped with the time of the unlink that made it.
    mutate(&ns, 5 * day, s, 4, Mutation::Open { ino: f.ino });
    mutate(&ns, 6 * day, s, 5, Mutation::Unlink { parent: ROOT_INO, name: b"f".to_vec(), keep: false });
    assert_eq!(ns.store().get(Cf::Orphans, &pair_key(s, f.ino)).unwrap(), Some(enc(&(6 * day))));
    assert_eq!(ns.getattr(ROOT_INO).unwrap().mtime, 6 * day);
}

#[test]
fn a_command_applied_again_is_answered_and_changes_nothing() {
    let (_d, ns) = at(1);
    let Outcome::Session(s) = ns.submit(&Command { now: 2, op: Op::OpenSession { owner: owner(1), client: "c".into() } }).unwrap().out else { panic!() };
    let cmd = Command { now: 3, op: Op::Mutate { owner: owner(1), session: s, seq: 1, op: Mutation::Create { parent: ROOT_INO, name: b"f".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 } } };
    let first = ns.submit(&cmd).unwrap().out;
    let before = dump(ns.store());
    // The same command again (a Raft log replayed, a client retry): the stored reply, no change.
    let Outcome::Reply { reply, again: true } = ns.submit(&Command { now: 4, ..cmd.clone() }).unwrap().out else { panic!("applied twice") };
    assert_eq!(Outcome::Reply { reply, again: false }, first);
    assert_eq!(dump(ns.store()), before);
    // Another certificate naming the session, or a session never opened: nothing is written.
    for (o, session) in [(owner(2), s), (owner(1), s + 100)] {
        let w = ns.submit(&Command { now: 5, op: Op::Mutate { owner: o, session, seq: 9, op: Mutation::Open { ino: ROOT_INO } } }).unwrap();
        assert!(matches!(w.out, Outcome::Reply { reply: MetaResponse::Error(ref e), .. } if e.code == ErrorCode::UnknownSession), "{:?}", w.out);
    }
    assert_eq!(dump(ns.store()), before);
}

#[test]
fn command_encoding_is_pinned() {
    let cmd = Command {
        now: 1_700_000_000_000_000_000,
        op: Op::Mutate { owner: SessionOwner { name: "c".into(), fingerprint: [1; 32] }, session: 2, seq: 3, op: Mutation::Create { parent: 1, name: b"f".to_vec(), kind: FileKind::File, perm: 0o644, uid: 4, gid: 5, rdev: 0, target: None, umask: 0o22 } },
    };
    let bytes = cmd.encode();
    assert_eq!(hex::encode(&bytes), "01fd0000546cfc392f2f020163010101010101010101010101010101010101010101010101010101010101010102030001016600fba4010405000012");
    assert_eq!(Command::decode(&bytes).unwrap().encode(), bytes);
    let mut other = bytes.clone();
    other[0] = 2;
    assert!(Command::decode(&other).unwrap_err().message.contains("unknown encoding version 2"));
    other = bytes.clone();
    other.push(0);
    assert!(Command::decode(&other).unwrap_err().message.contains("trailing"));
}

#[test]
fn a_large_file_is_dropped_by_bounded_commands() {
    let (_d, ns) = at(1);
    let Outcome::Session(s) = ns.submit(&Command { now: 2, op: Op::OpenSession { owner: owner(1), client: "c".into() } }).unwrap().out else { panic!() };
    let MetaResponse::Attr(f) = mutate(&ns, 3, s, 1, Mutation::Create { parent: ROOT_INO, name: b"big".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }) else { panic!() };
    let n = 3 * DROP_BOUND as u64 + 5;
    let blocks = (0..n).map(|i| (i, bref((i % 7) as u8, 4096))).collect();
    assert!(matches!(mutate(&ns, 4, s, 2, Mutation::CommitBlocks { ino: f.ino, blocks, size: n * 4096 }), MetaResponse::Attr(_)));
    let entries = |ns: &Namespace| ns.store().scan(Cf::BlockMap, &ino_key(f.ino), &ino_key(f.ino), usize::MAX).unwrap().len();
    // The unlink removes the name at once and drops no block-map entry itself.
    assert_eq!(mutate(&ns, 5, s, 3, Mutation::Unlink { parent: ROOT_INO, name: b"big".to_vec(), keep: false }), MetaResponse::Unlinked { orphan: None });
    assert_eq!(ns.lookup(ROOT_INO, b"big").unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(entries(&ns), n as usize);
    assert!(ns.audit_refs().unwrap().clean());
    // Each Reap drops at most DROP_BOUND entries; the last takes the inode.
    let mut left = n as usize;
    for step in 1.. {
        let w = ns.submit(&Command { now: 5 + step, op: Op::Reap { ino: f.ino } }).unwrap();
        let now = entries(&ns);
        assert!(left - now <= DROP_BOUND, "step {step} dropped {}", left - now);
        left = now;
        assert!(ns.audit_refs().unwrap().clean(), "after step {step}");
        if w.out == Outcome::Reaped(true) {
            assert_eq!(step, 4);
            break;
        }
    }
    assert_eq!(left, 0);
    assert_eq!(ns.getattr(f.ino).unwrap_err().code, ErrorCode::NotFound);
    let st = ns.stats().unwrap();
    assert_eq!((st.files, st.logical_bytes, st.blocks), (1, 0, 0));
    assert!(ns.list_blocks(None, 100).unwrap().is_empty());
    // Nothing is left for the reaper.
    assert_eq!(ns.reap_pending().unwrap(), 0);
}
