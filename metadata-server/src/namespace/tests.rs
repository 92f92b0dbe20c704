use super::*;

pub(super) fn ns() -> (tempfile::TempDir, Namespace) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, Namespace::open(s, FsParams { block_size: 4096 }).unwrap())
}

fn owner(name: &str) -> SessionOwner {
    SessionOwner { name: name.into(), fingerprint: BlockId::of(name.as_bytes()).0 }
}

pub(super) struct C<'a> {
    pub(super) ns: &'a Namespace,
    seq: u64,
    session: u64,
}

impl<'a> C<'a> {
    pub(super) fn new(ns: &'a Namespace) -> Self {
        C { ns, seq: 0, session: ns.open_session(&owner("test"), "test").unwrap() }
    }
    pub(super) fn m(&mut self, op: Mutation) -> MetaResponse {
        self.seq += 1;
        self.ns.mutate(&owner("test"), self.session, self.seq, op)
    }
    pub(super) fn mk(&mut self, parent: u64, name: &str, kind: FileKind) -> u64 {
        match self.m(Mutation::Create { parent, name: name.into(), kind, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }) {
            MetaResponse::Attr(a) => a.ino,
            r => panic!("create {name}: {r:?}"),
        }
    }
    pub(super) fn code(&mut self, op: Mutation) -> Option<ErrorCode> {
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
    assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: "g".into(), kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }), Some(ErrorCode::Exists));
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
    assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: vec![b'x'; 256], kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }), Some(ErrorCode::NameTooLong));
    assert_eq!(c.code(Mutation::Create { parent: ROOT_INO, name: b"a/b".to_vec(), kind: FileKind::File, perm: 0, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }), Some(ErrorCode::InvalidArgument));
}

fn refs(ns: &Namespace) -> HashMap<BlockId, u64> {
    ns.list_blocks(None, 1000).unwrap().into_iter().collect()
}

fn rename(from: (u64, &str), to: (u64, &str), flags: u32, keep: bool) -> Mutation {
    Mutation::Rename { parent: from.0, name: from.1.into(), new_parent: to.0, new_name: to.1.into(), flags, keep }
}

/// `CreateOpen` leaves the new file open by the session, as `Create` then `Open` would:
/// unlinked, it stays an orphan until the session closes it.
#[test]
fn a_file_created_open_is_open_by_its_session() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let MetaResponse::Attr(f) = c.m(Mutation::CreateOpen { parent: ROOT_INO, name: "f".into(), perm: 0o640, uid: 7, gid: 8, umask: 0 }) else { panic!() };
    assert_eq!((f.kind, f.perm, f.uid, f.gid, f.nlink), (FileKind::File, 0o640, 7, 8, 1));
    assert_eq!(ns.lookup(ROOT_INO, b"f").unwrap(), f);
    assert!(ns.is_open_by(c.session, f.ino).unwrap());
    assert_eq!(c.code(Mutation::CreateOpen { parent: ROOT_INO, name: "f".into(), perm: 0o640, uid: 7, gid: 8, umask: 0 }), Some(ErrorCode::Exists));
    assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false }), MetaResponse::Unlinked { orphan: Some(f.ino) });
    assert_eq!(ns.getattr(f.ino).unwrap().nlink, 0);
    assert_eq!(c.m(Mutation::Close { ino: f.ino }), MetaResponse::Done);
    assert!(ns.getattr(f.ino).is_err(), "the one close drops it");
    // The next inode number moved on: a second file gets a new one.
    let g = c.mk(ROOT_INO, "g", FileKind::File);
    assert!(g > f.ino);
    assert!(!ns.is_open_by(c.session, g).unwrap());
    assert!(ns.audit_refs().unwrap().clean());
}

#[test]
fn a_replaced_file_open_in_a_session_stays_an_orphan_until_its_close() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let old = c.mk(ROOT_INO, "target", FileKind::File);
    let new = c.mk(ROOT_INO, "new", FileKind::File);
    c.m(Mutation::CommitBlocks { ino: old, blocks: vec![(0, bref(1, 4096)), (1, bref(2, 100))], size: 4196 });
    c.m(Mutation::CommitBlocks { ino: new, blocks: vec![(0, bref(3, 10))], size: 10 });
    assert_eq!(c.m(Mutation::Open { ino: old }), MetaResponse::Done);
    let before = ns.stats().unwrap();
    // One atomic step: the name now points at `new`, the old inode is kept as an orphan.
    assert_eq!(c.m(rename((ROOT_INO, "new"), (ROOT_INO, "target"), 0, false)), MetaResponse::Unlinked { orphan: Some(old) });
    assert_eq!(ns.lookup(ROOT_INO, b"target").unwrap().ino, new);
    assert_eq!(names(&ns, ROOT_INO), vec!["target"]);
    let a = ns.getattr(old).unwrap();
    assert_eq!((a.nlink, a.size), (0, 4196));
    assert_eq!(ns.get_blocks(old, 0, 10).unwrap().1, vec![(0, bref(1, 4096)), (1, bref(2, 100))]);
    assert_eq!(refs(&ns).len(), 3, "the orphan keeps its blocks referenced");
    assert_eq!((ns.stats().unwrap().files, ns.stats().unwrap().logical_bytes), (before.files, before.logical_bytes), "an orphan still counts");
    assert!(ns.audit_refs().unwrap().clean());
    // It cannot get a name back.
    assert_eq!(c.code(Mutation::Link { ino: old, new_parent: ROOT_INO, new_name: "back".into() }), Some(ErrorCode::NotFound));
    // Another session's close or DropOrphan does not drop it; this session's close does.
    let other = ns.open_session(&owner("test"), "other").unwrap();
    assert_eq!(ns.mutate(&owner("test"), other, 1, Mutation::DropOrphan { ino: old }), MetaResponse::Done);
    assert_eq!(ns.mutate(&owner("test"), other, 2, Mutation::Close { ino: old }), MetaResponse::Done);
    assert!(ns.getattr(old).is_ok(), "another session dropped it");
    assert_eq!(c.m(Mutation::Close { ino: old }), MetaResponse::Done);
    assert!(ns.getattr(old).is_err());
    assert_eq!(refs(&ns).keys().copied().collect::<Vec<_>>(), vec![BlockId::of(&[3])]);
    assert_eq!(ns.stats().unwrap().files, before.files - 1);
    assert_eq!(ns.stats().unwrap().logical_bytes, 10);
    assert_eq!(ns.stats().unwrap().blocks, 1);
    assert_eq!(c.m(Mutation::Close { ino: old }), MetaResponse::Done, "idempotent");
    // Not open anywhere (`keep` is ignored), or another link left: nothing is kept.
    assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "target".into(), keep: true }), MetaResponse::Unlinked { orphan: None });
    assert!(ns.getattr(new).is_err());
    let g = c.mk(ROOT_INO, "g", FileKind::File);
    c.m(Mutation::Open { ino: g });
    c.m(Mutation::Link { ino: g, new_parent: ROOT_INO, new_name: "g2".into() });
    assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: false }), MetaResponse::Unlinked { orphan: None });
    assert_eq!(c.m(Mutation::Unlink { parent: ROOT_INO, name: "g2".into(), keep: false }), MetaResponse::Unlinked { orphan: Some(g) });
    assert!(ns.audit_refs().unwrap().clean());
}

#[test]
fn an_orphan_open_in_two_sessions_goes_with_the_last_close_or_expiry() {
    let (_d, ns) = ns();
    let mut a = C::new(&ns);
    let mut b = C::new(&ns);
    let f = a.mk(ROOT_INO, "f", FileKind::File);
    a.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096))], size: 4096 });
    a.m(Mutation::Open { ino: f });
    b.m(Mutation::Open { ino: f });
    // Opened twice in A (two handles counted once each): one close keeps it open there.
    a.m(Mutation::Open { ino: f });
    // A third session, which does not have it open, unlinks it.
    let mut u = C::new(&ns);
    assert_eq!(u.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false }), MetaResponse::Unlinked { orphan: Some(f) });
    a.m(Mutation::Close { ino: f });
    a.m(Mutation::Close { ino: f });
    assert_eq!(ns.getattr(f).unwrap().nlink, 0, "B still has it open");
    assert_eq!(ns.get_blocks(f, 0, 1).unwrap().1, vec![(0, bref(1, 4096))]);
    // B's client dies: its expiry drops the orphan, its blocks' references and its session.
    let bs = ns.sessions().unwrap().into_iter().find(|s| s.id == b.session).unwrap();
    assert_eq!((bs.open_files, bs.orphans), (1, 1));
    assert!(ns.expire_session(b.session, 42).unwrap());
    assert!(ns.getattr(f).is_err());
    assert!(refs(&ns).is_empty());
    assert!(ns.audit_refs().unwrap().clean(), "{:?}", ns.audit_refs().unwrap());
    assert!(!ns.sessions().unwrap().iter().any(|s| s.id == b.session));
    assert_eq!(b.code(Mutation::Open { ino: ROOT_INO }), Some(ErrorCode::UnknownSession));
    assert!(!ns.expire_session(b.session, 43).unwrap(), "already gone");
    // Nothing of B is left in the store: no record, no stored reply, no open.
    assert!(opens::scan_all(ns.store(), Cf::Sessions, &session_key(b.session)).unwrap().is_empty());
    assert!(ns.open_by(b.session).unwrap().is_empty());
}

#[test]
fn locks_need_an_open_file_conflict_across_sessions_and_go_with_close_and_expiry() {
    let (_d, ns) = ns();
    let mut a = C::new(&ns);
    let mut b = C::new(&ns);
    let f = a.mk(ROOT_INO, "f", FileKind::File);
    let w = |owner, start, end| LockSpec { owner, kind: LockKind::Write, start, end, pid: 100 + owner as u32 };
    assert_eq!(a.code(Mutation::SetLock { ino: f, lock: w(1, 0, 9) }), Some(ErrorCode::InvalidArgument), "not open");
    a.m(Mutation::Open { ino: f });
    b.m(Mutation::Open { ino: f });
    assert_eq!(a.code(Mutation::SetLock { ino: f, lock: w(1, 10, 9) }), Some(ErrorCode::InvalidArgument), "end before start");
    assert_eq!(a.m(Mutation::SetLock { ino: f, lock: w(1, 0, 9) }), MetaResponse::Done);
    // The same owner number in another session is another owner.
    assert_eq!(b.code(Mutation::SetLock { ino: f, lock: w(1, 5, 5) }), Some(ErrorCode::WouldBlock));
    assert_eq!(ns.get_lock(f, b.session, &w(1, 5, 5)).unwrap(), Some(LockHolder { session: a.session, lock: w(1, 0, 9) }));
    assert_eq!(ns.get_lock(f, a.session, &w(1, 5, 5)).unwrap(), None, "an owner does not conflict with itself");
    assert_eq!(b.m(Mutation::SetLock { ino: f, lock: w(2, 10, 19) }), MetaResponse::Done);
    // A refusal is not stored: the same (session, seq) sent again after the unlock is granted.
    let seq = b.seq + 1;
    assert!(matches!(ns.mutate(&owner("test"), b.session, seq, Mutation::SetLock { ino: f, lock: w(2, 0, 0) }), MetaResponse::Error(e) if e.code == ErrorCode::WouldBlock));
    a.m(Mutation::SetLock { ino: f, lock: LockSpec { kind: LockKind::Unlock, ..w(1, 0, 0) } });
    assert_eq!(ns.mutate(&owner("test"), b.session, seq, Mutation::SetLock { ino: f, lock: w(2, 0, 0) }), MetaResponse::Done);
    b.seq = seq;
    assert_eq!(ns.sessions().unwrap().iter().find(|s| s.id == b.session).unwrap().locks, 2, "0..0 and 10..19 are apart: two locks");
    assert_eq!(a.code(Mutation::SetLock { ino: f, lock: w(1, 0, 19) }), Some(ErrorCode::WouldBlock));
    // B's close releases its locks.
    b.m(Mutation::Close { ino: f });
    assert_eq!(a.m(Mutation::SetLock { ino: f, lock: w(1, 0, u64::MAX) }), MetaResponse::Done);
    b.m(Mutation::Open { ino: f });
    assert_eq!(b.code(Mutation::SetLock { ino: f, lock: w(2, 0, 0) }), Some(ErrorCode::WouldBlock));
    // A expires: its lock is free.
    assert!(ns.expire_session(a.session, 7).unwrap());
    assert_eq!(b.m(Mutation::SetLock { ino: f, lock: w(2, 0, 0) }), MetaResponse::Done);
    // The server alone expires sessions.
    assert_eq!(b.code(Mutation::ExpireSession { session: b.session }), Some(ErrorCode::PermissionDenied));
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
fn readdir_plus_gives_each_entry_the_attributes_a_lookup_gives() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let d = c.mk(ROOT_INO, "d", FileKind::Dir);
    for i in 0..7 {
        c.mk(d, &format!("f{i}"), if i % 3 == 0 { FileKind::Dir } else { FileKind::File });
    }
    c.m(Mutation::SetAttr { ino: ns.lookup(d, b"f2").unwrap().ino, attr: SetAttr { size: Some(12345), mode: Some(0o600), ..Default::default() } });
    c.m(Mutation::SetXattr { ino: ns.lookup(d, b"f4").unwrap().ino, name: b"user.tag".to_vec(), value: b"x".to_vec(), flags: 0 });
    let (first, done) = ns.readdir_plus(d, 0, 4).unwrap();
    assert!(!done);
    let (rest, done) = ns.readdir_plus(d, first.last().unwrap().0.cookie, 100).unwrap();
    assert!(done);
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    let plain = ns.readdir(d, 0, 100).unwrap().0;
    assert_eq!(all.iter().map(|(e, _, _)| e.clone()).collect::<Vec<_>>(), plain);
    for (e, a, xattrs) in &all {
        assert_eq!(*a, ns.lookup(d, &e.name).unwrap(), "{}", String::from_utf8_lossy(&e.name));
        assert_eq!(*xattrs, e.name == b"f4", "{}: whether it has extended attributes", String::from_utf8_lossy(&e.name));
    }
    assert_eq!(all[2].1.size, 12345);
    assert_eq!(all[2].1.perm, 0o600);
    assert_eq!(ns.readdir_plus(all[1].0.ino, 0, 10).unwrap_err().code, ErrorCode::NotDir);
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
    let (size, map, _, _) = ns.get_blocks(f, 0, 100).unwrap();
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
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap(), (11, vec![], Some(b"hello world".to_vec()), vec![]));
    assert!(ns.list_blocks(None, 10).unwrap().is_empty(), "the replaced block lost its reference");
    c.m(Mutation::SetAttr { ino: f, attr: SetAttr { size: Some(5), ..Default::default() } });
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap(), (5, vec![], Some(b"hello".to_vec()), vec![]));
    assert_eq!(c.code(Mutation::CommitInline { ino: f, data: vec![0; tessera_common::INLINE_MAX + 1] }), Some(ErrorCode::InvalidArgument));
    c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(2, 4096))], size: 4096 });
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().2, None, "blocks replace inline data");
    assert_eq!(ns.stats().unwrap().logical_bytes, 4096);
}

#[test]
fn an_inline_commit_with_attributes_is_one_change() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    let attr = SetAttr { mtime: Some(SetTime::At(1_000_000_000)), mode: Some(0o640), ..Default::default() };
    let a = match c.m(Mutation::CommitInlineSetAttr { ino: f, data: b"hello".to_vec(), attr }) {
        MetaResponse::Attr(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!((a.size, a.mtime, a.perm), (5, 1_000_000_000, 0o640), "the mtime set after the data stays");
    assert_eq!(ns.getattr(f).unwrap(), a);
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().2, Some(b"hello".to_vec()));
    assert_eq!(ns.stats().unwrap().logical_bytes, 5);
    // A size, or a failing commit, changes nothing.
    let size = SetAttr { size: Some(1), ..Default::default() };
    assert_eq!(c.code(Mutation::CommitInlineSetAttr { ino: f, data: b"other".to_vec(), attr: size }), Some(ErrorCode::InvalidArgument));
    let too_big = vec![0; tessera_common::INLINE_MAX + 1];
    assert_eq!(c.code(Mutation::CommitInlineSetAttr { ino: f, data: too_big, attr: SetAttr { mode: Some(0o600), ..Default::default() } }), Some(ErrorCode::InvalidArgument));
    assert_eq!(ns.getattr(f).unwrap(), a);
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().2, Some(b"hello".to_vec()));
}

#[test]
fn a_retried_mutation_is_answered_not_reapplied() {
    let (_d, ns) = ns();
    let a = owner("a");
    let s = ns.open_session(&a, "a").unwrap();
    let op = Mutation::Create { parent: ROOT_INO, name: "x".into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
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
    let create = |name: &str| Mutation::Create { parent: ROOT_INO, name: name.into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
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
    let create = |name: &str| Mutation::Create { parent: ROOT_INO, name: name.into(), kind: FileKind::File, perm: 0o600, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
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
    assert!(ns.raise_floor(1 << 40).is_err());
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
    c.m(Mutation::Open { ino: g });
    c.m(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: false });
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
    assert_eq!(ns.params().block_size, 4096, "block size is fixed at creation");
    assert_eq!(ns.lookup(ROOT_INO, b"keep").unwrap().ino, ino);
    let mut c = C::new(&ns);
    assert!(c.mk(ROOT_INO, "next", FileKind::File) > ino, "inode numbers are never reused");
}

#[test]
fn copy_blocks_references_the_source_blocks_and_counts_each_entry_once() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let (f, g, h) = (c.mk(ROOT_INO, "f", FileKind::File), c.mk(ROOT_INO, "g", FileKind::File), c.mk(ROOT_INO, "h", FileKind::File));
    let id = |n: u8| BlockId::of(&[n]);
    let copy = |src, src_first, dst, dst_first, count, end| Mutation::CopyBlocks { src, src_first, dst, dst_first, count, end };
    // f: 1, 2, 1, hole, 3 (a 100-byte tail). g: 2, 4, 5.
    c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096)), (1, bref(2, 4096)), (2, bref(1, 4096)), (4, bref(3, 100))], size: 4 * 4096 + 100 });
    c.m(Mutation::CommitBlocks { ino: g, blocks: vec![(0, bref(2, 4096)), (1, bref(4, 4096)), (2, bref(5, 4096))], size: 3 * 4096 });
    // f's blocks 0..3 over g's 1..4: block 1 is named twice in the copy, 4 and 5 lose their
    // only reference, and g grows by a block.
    assert!(matches!(c.m(copy(f, 0, g, 1, 3, 4 * 4096)), MetaResponse::Attr(ref a) if a.size == 4 * 4096));
    assert_eq!(ns.get_blocks(g, 0, 10).unwrap().1, vec![(0, bref(2, 4096)), (1, bref(1, 4096)), (2, bref(2, 4096)), (3, bref(1, 4096))]);
    assert_eq!(refs(&ns), HashMap::from([(id(1), 4), (id(2), 3), (id(3), 1)]));
    assert_eq!((ns.stats().unwrap().blocks, ns.stats().unwrap().logical_bytes), (3, 4 * 4096 + 100 + 4 * 4096));
    // A hole copies as a hole (g's block 3 loses its reference), and the tail to the end of the file.
    c.m(copy(f, 3, g, 3, 2, 4 * 4096 + 100));
    assert_eq!(ns.get_blocks(g, 0, 10).unwrap(), (4 * 4096 + 100, vec![(0, bref(2, 4096)), (1, bref(1, 4096)), (2, bref(2, 4096)), (4, bref(3, 100))], None, vec![]));
    // One file, ranges apart: f's block 0 into its hole at 3; the size stays.
    assert!(matches!(c.m(copy(f, 0, f, 3, 1, 4 * 4096)), MetaResponse::Attr(ref a) if a.size == 4 * 4096 + 100));
    // A copy ending inside the source's tail block counts only the bytes copied.
    c.m(copy(f, 4, h, 0, 1, 50));
    assert_eq!(ns.get_blocks(h, 0, 10).unwrap(), (50, vec![(0, bref(3, 50))], None, vec![]));
    let before = refs(&ns);
    assert_eq!(before, HashMap::from([(id(1), 4), (id(2), 3), (id(3), 3)]));
    // Refused, nothing changed.
    assert_eq!(c.code(copy(f, 0, f, 1, 2, 3 * 4096)), Some(ErrorCode::InvalidArgument), "overlap within one file");
    assert_eq!(c.code(copy(g, 4, f, 9, 1, 10 * 4096)), Some(ErrorCode::InvalidArgument), "past the source's end");
    assert_eq!(c.code(copy(f, 0, g, 0, 1, 100)), Some(ErrorCode::InvalidArgument), "ends inside a block with bytes after it");
    assert_eq!(c.code(copy(f, 0, g, 0, 2, 4096)), Some(ErrorCode::InvalidArgument), "end not in the last block");
    assert_eq!(c.code(copy(f, 0, g, 0, 0, 4096)), Some(ErrorCode::InvalidArgument), "no blocks");
    assert_eq!(c.code(copy(f, 0, g, 0, COPY_MAX_BLOCKS + 1, (COPY_MAX_BLOCKS + 1) * 4096)), Some(ErrorCode::InvalidArgument), "too many blocks");
    assert_eq!(c.code(copy(f, 0, ROOT_INO, 0, 1, 4096)), Some(ErrorCode::IsDir));
    assert_eq!(c.code(copy(f, 0, 999, 0, 1, 4096)), Some(ErrorCode::NotFound));
    // Inline data: a source's block 0 is not in the block map, a destination's is dropped only
    // when block 0 is replaced.
    let i = c.mk(ROOT_INO, "i", FileKind::File);
    let j = c.mk(ROOT_INO, "j", FileKind::File);
    c.m(Mutation::CommitInline { ino: i, data: b"hello".to_vec() });
    assert_eq!(c.code(copy(i, 0, j, 0, 1, 5)), Some(ErrorCode::InvalidArgument), "inline source");
    assert_eq!(c.code(copy(f, 0, i, 1, 1, 2 * 4096)), Some(ErrorCode::InvalidArgument), "inline destination, block 0 kept");
    // Blocks smaller than the inline limit: inline bytes reach past block 0.
    let k = c.mk(ROOT_INO, "k", FileKind::File);
    c.m(Mutation::CommitInline { ino: k, data: vec![7; 9000] });
    assert_eq!(c.code(copy(k, 1, j, 0, 1, 4096)), Some(ErrorCode::InvalidArgument), "inline source bytes in block 1");
    assert_eq!(c.code(copy(f, 0, k, 0, 1, 4096)), Some(ErrorCode::InvalidArgument), "inline destination bytes past the copy");
    assert_eq!(ns.get_blocks(k, 0, 10).unwrap(), (9000, vec![], Some(vec![7; 9000]), vec![]));
    assert_eq!(refs(&ns), before);
    assert!(ns.audit_refs().unwrap().clean());
    c.m(copy(f, 0, i, 0, 1, 4096));
    assert_eq!(ns.get_blocks(i, 0, 10).unwrap(), (4096, vec![(0, bref(1, 4096))], None, vec![]));
    // The source goes: the copies keep their blocks.
    c.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false });
    assert_eq!(refs(&ns), HashMap::from([(id(1), 2), (id(2), 2), (id(3), 2)]));
    let audit = ns.audit_refs().unwrap();
    assert!(audit.clean(), "{audit:?}");
    assert_eq!(ns.stats().unwrap().logical_bytes, (4 * 4096 + 100) + 50 + 4096 + 9000);
}

/// A lookup reads the name, then its inode. A rename that replaces the target between those
/// two reads drops the old inode, so unless both come from one view the lookup answers
/// NotFound for a name that never stopped existing (found by the linearizability check).
#[test]
fn a_lookup_never_misses_a_name_that_renames_keep_replacing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    c.mk(ROOT_INO, "t", FileKind::File);
    let done = AtomicBool::new(false);
    let (mut lookups, mut misses) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..3000 {
                c.mk(ROOT_INO, "src", FileKind::File);
                assert!(matches!(c.m(rename((ROOT_INO, "src"), (ROOT_INO, "t"), 0, false)), MetaResponse::Unlinked { .. }));
            }
            done.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            lookups += 1;
            if ns.lookup(ROOT_INO, b"t").is_err() {
                misses += 1;
            }
        }
    });
    assert!(lookups > 1000, "only {lookups} lookups ran beside the renames");
    assert_eq!(misses, 0, "{misses} of {lookups} lookups of a name that always existed answered an error");
}

#[test]
fn patches_stay_with_their_entry_and_go_with_it() {
    use tessera_common::patch::{PATCHES_PER_BLOCK, PATCH_FILE_BYTES};
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    let patch = |at: u32, data: &[u8]| Patch { at, data: data.to_vec() };
    c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(1, 4096)), (1, bref(2, 100))], size: 4196 });
    let pb = |idx: u64, base: BlockRef, p: Patch, size: u64| Mutation::PatchBlocks { ino: f, patches: vec![(idx, base, p)], size };
    assert!(matches!(c.m(pb(0, bref(1, 4096), patch(10, b"abc"), 4196)), MetaResponse::Attr(ref a) if a.size == 4196));
    c.m(pb(0, bref(1, 4096), patch(11, b"Z"), 4196));
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().3, vec![(0, vec![patch(10, b"abc"), patch(11, b"Z")])], "in the order they were added");
    // Refused, nothing changed: another entry than the one named; past the file's end; an
    // empty patch; the same index twice.
    assert_eq!(c.code(pb(0, bref(2, 4096), patch(0, b"x"), 4196)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(pb(1, bref(2, 100), patch(95, b"0123456789"), 4196)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(pb(1, bref(2, 100), patch(4090, b"0123456789"), 3 * 4096)), Some(ErrorCode::InvalidArgument), "past the block");
    assert_eq!(c.code(pb(1, bref(2, 100), patch(4, b""), 4196)), Some(ErrorCode::InvalidArgument));
    let twice = Mutation::PatchBlocks { ino: f, patches: vec![(1, bref(2, 100), patch(0, b"a")), (1, bref(2, 100), patch(1, b"b"))], size: 4196 };
    assert_eq!(c.code(twice), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(pb(5, bref(2, 4096), patch(0, b"x"), 8192 * 4)), Some(ErrorCode::InvalidArgument), "a hole has no entry to patch");
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().3.len(), 1);
    // A patch past the stored bytes grows the file (an append and fsync).
    assert!(matches!(c.m(pb(1, bref(2, 100), patch(98, b"tail"), 4198)), MetaResponse::Attr(ref a) if a.size == 4198));
    // A truncate cuts the patches of the entry it ends in.
    c.m(Mutation::SetAttr { ino: f, attr: SetAttr { size: Some(4096 + 99), ..Default::default() } });
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().3, vec![(0, vec![patch(10, b"abc"), patch(11, b"Z")]), (1, vec![patch(98, b"t")])]);
    // A new block for an entry drops its patches.
    c.m(Mutation::CommitBlocks { ino: f, blocks: vec![(0, bref(3, 4096))], size: 4195 });
    assert_eq!(ns.get_blocks(f, 0, 10).unwrap().3, vec![(1, vec![patch(98, b"t")])]);
    // Bounds: patches per entry, and entries with patches per file.
    for i in 1..PATCHES_PER_BLOCK as u32 {
        c.m(pb(1, bref(2, 99), patch(i, b"p"), 4195));
    }
    assert_eq!(ns.get_blocks(f, 1, 1).unwrap().3[0].1.len(), PATCHES_PER_BLOCK);
    assert_eq!(c.code(pb(1, bref(2, 99), patch(0, b"p"), 4195)), Some(ErrorCode::InvalidArgument));
    // Every block of g takes one patch of 4 KiB, up to the bound of the file's bytes.
    let g = c.mk(ROOT_INO, "g", FileKind::File);
    let n = PATCH_FILE_BYTES / 4096 + 1;
    c.m(Mutation::CommitBlocks { ino: g, blocks: (0..n).map(|i| (i, bref(4, 4096))).collect(), size: n * 4096 });
    let on = |range: std::ops::Range<u64>| Mutation::PatchBlocks { ino: g, patches: range.map(|i| (i, bref(4, 4096), patch(0, &[b'q'; 4096]))).collect(), size: n * 4096 };
    assert_eq!(c.code(on(0..n)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(on(0..n - 1)), None);
    assert_eq!(c.code(on(n - 1..n)), Some(ErrorCode::InvalidArgument), "the count is kept across commands");
    c.m(Mutation::PunchBlocks { ino: g, first: 0, count: 1 });
    assert_eq!(c.code(on(n - 1..n)), None, "a hole took one entry's patches with it");
    // A copy by reference of a patched block is refused (the client copies its bytes).
    let copy = Mutation::CopyBlocks { src: g, src_first: 1, dst: f, dst_first: 4, count: 1, end: 5 * 4096 };
    assert_eq!(c.code(copy), Some(ErrorCode::InvalidArgument));
    // Removing the files leaves no patch and no count behind.
    c.m(Mutation::Unlink { parent: ROOT_INO, name: "f".into(), keep: false });
    c.m(Mutation::Unlink { parent: ROOT_INO, name: "g".into(), keep: false });
    assert_eq!(ns.store().scan(Cf::Patches, &[], &[], 10).unwrap(), vec![]);
}
