//! Extended attributes and POSIX ACLs in the namespace.

use super::tests::{ns, C};
use super::*;
use tessera_common::xattr::{ACL_ACCESS, ACL_DEFAULT, MAX_VALUE_LEN};

fn set(name: &[u8], value: &[u8], flags: u32, ino: u64) -> Mutation {
    Mutation::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), flags }
}

fn xattr_records(ns: &Namespace) -> usize {
    ns.store().scan(Cf::Xattrs, &[], &[], usize::MAX).unwrap().len()
}

/// `(tag, perm, id)` entries in the kernel's ACL encoding.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}
const NONE: u32 = u32::MAX;

/// user::rwx user:1000:rwx group::r-x mask::rwx other::r-x
fn acl_with_user() -> Vec<u8> {
    acl(&[(0x01, 7, NONE), (0x02, 7, 1000), (0x04, 5, NONE), (0x10, 7, NONE), (0x20, 5, NONE)])
}

#[test]
fn set_get_list_remove_and_their_errors() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    let before = ns.getattr(f).unwrap().ctime;
    let binary: Vec<u8> = (0..=255).collect();
    assert_eq!(c.m(set(b"user.bin", &binary, 0, f)), MetaResponse::Done);
    assert_eq!(c.m(set(b"trusted.t", b"", 0, f)), MetaResponse::Done);
    assert_eq!(c.m(set(b"security.s", b"x", 0, f)), MetaResponse::Done);
    assert!(ns.getattr(f).unwrap().ctime > before, "ctime follows a set");
    assert_eq!(ns.get_xattr(f, b"user.bin").unwrap(), binary);
    assert_eq!(ns.get_xattr(f, b"trusted.t").unwrap(), b"");
    assert_eq!(ns.list_xattr(f).unwrap(), vec![b"security.s".to_vec(), b"trusted.t".to_vec(), b"user.bin".to_vec()]);

    assert_eq!(c.code(set(b"user.bin", b"y", XATTR_CREATE, f)), Some(ErrorCode::Exists));
    assert_eq!(c.code(set(b"user.new", b"y", XATTR_REPLACE, f)), Some(ErrorCode::NoAttribute));
    assert_eq!(c.code(set(b"user.new", b"y", XATTR_CREATE | XATTR_REPLACE, f)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.m(set(b"user.bin", b"replaced", XATTR_REPLACE, f)), MetaResponse::Done);
    assert_eq!(ns.get_xattr(f, b"user.bin").unwrap(), b"replaced");
    let mut long = b"user.".to_vec();
    long.resize(256, b'n');
    assert_eq!(c.code(set(&long, b"", 0, f)), Some(ErrorCode::OutOfRange));
    assert_eq!(c.code(set(b"user.big", &vec![1; MAX_VALUE_LEN + 1], 0, f)), Some(ErrorCode::TooBig));
    assert_eq!(c.m(set(b"user.big", &vec![1; MAX_VALUE_LEN], 0, f)), MetaResponse::Done);
    assert_eq!(c.code(set(b"system.foo", b"", 0, f)), Some(ErrorCode::NotSupported));
    assert_eq!(c.code(set(b"user.x", b"", 0, 999)), Some(ErrorCode::NotFound));
    assert_eq!(ns.get_xattr(f, b"user.missing").unwrap_err().code, ErrorCode::NoAttribute);
    assert_eq!(ns.get_xattr(999, b"user.x").unwrap_err().code, ErrorCode::NotFound);

    let before = ns.getattr(f).unwrap().ctime;
    assert_eq!(c.m(Mutation::RemoveXattr { ino: f, name: b"user.bin".to_vec() }), MetaResponse::Done);
    assert!(ns.getattr(f).unwrap().ctime > before, "ctime follows a remove");
    assert_eq!(c.code(Mutation::RemoveXattr { ino: f, name: b"user.bin".to_vec() }), Some(ErrorCode::NoAttribute));
    assert_eq!(ns.get_xattr(f, b"user.bin").unwrap_err().code, ErrorCode::NoAttribute);
}

#[test]
fn the_names_of_one_inode_stay_within_what_listxattr_can_return() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    // 255-byte names, 256 bytes each in the list: 256 of them fill 64 KiB exactly.
    let name = |i: u32| {
        let mut n = format!("user.{i:05}").into_bytes();
        n.resize(255, b'x');
        n
    };
    for i in 0..256 {
        assert_eq!(c.m(set(&name(i), b"", 0, f)), MetaResponse::Done, "name {i}");
    }
    assert_eq!(c.code(set(&name(256), b"", 0, f)), Some(ErrorCode::NoSpace));
    // Replacing a value needs no new room.
    assert_eq!(c.m(set(&name(3), b"v", 0, f)), MetaResponse::Done);
}

#[test]
fn a_retried_set_is_applied_once() {
    let (_d, ns) = ns();
    let o = SessionOwner { name: "t".into(), fingerprint: [7; 32] };
    let s = ns.open_session(&o, "t").unwrap();
    let f = match ns.mutate(&o, s, 1, Mutation::Create { parent: ROOT_INO, name: b"f".to_vec(), kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }) {
        MetaResponse::Attr(a) => a.ino,
        r => panic!("{r:?}"),
    };
    let op = set(b"user.once", b"1", XATTR_CREATE, f);
    assert_eq!(ns.mutate(&o, s, 2, op.clone()), MetaResponse::Done);
    let ctime = ns.getattr(f).unwrap().ctime;
    // A retry of seq 2 gets the stored reply, not `Exists`, and changes nothing.
    assert_eq!(ns.mutate(&o, s, 2, op.clone()), MetaResponse::Done);
    assert_eq!(ns.getattr(f).unwrap().ctime, ctime);
    assert!(matches!(ns.mutate(&o, s, 3, op), MetaResponse::Error(e) if e.code == ErrorCode::Exists));
    let rm = Mutation::RemoveXattr { ino: f, name: b"user.once".to_vec() };
    assert_eq!(ns.mutate(&o, s, 4, rm.clone()), MetaResponse::Done);
    assert_eq!(ns.mutate(&o, s, 4, rm), MetaResponse::Done);
}

#[test]
fn attributes_go_with_their_inode_and_no_record_is_left() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let d = c.mk(ROOT_INO, "d", FileKind::Dir);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    let g = c.mk(ROOT_INO, "g", FileKind::File);
    let o = c.mk(ROOT_INO, "o", FileKind::File);
    let l = c.mk(ROOT_INO, "l", FileKind::Fifo);
    for ino in [d, f, g, o, l] {
        c.m(set(b"user.a", b"1", 0, ino));
        c.m(set(b"trusted.b", b"2", 0, ino));
    }
    c.m(set(ACL_DEFAULT, &acl_with_user(), 0, d));
    assert_eq!(xattr_records(&ns), 11);
    // A second link keeps the inode and its attributes.
    c.m(Mutation::Link { ino: f, new_parent: ROOT_INO, new_name: b"f2".to_vec() });
    c.m(Mutation::Unlink { parent: ROOT_INO, name: b"f".to_vec(), keep: false });
    assert_eq!(ns.get_xattr(f, b"user.a").unwrap(), b"1");
    c.m(Mutation::Unlink { parent: ROOT_INO, name: b"f2".to_vec(), keep: false });
    c.m(Mutation::Rmdir { parent: ROOT_INO, name: b"d".to_vec() });
    c.m(Mutation::Unlink { parent: ROOT_INO, name: b"l".to_vec(), keep: false });
    // Replaced by a rename.
    c.m(Mutation::Rename { parent: ROOT_INO, name: b"o".to_vec(), new_parent: ROOT_INO, new_name: b"g".to_vec(), flags: 0, keep: false });
    assert_eq!(xattr_records(&ns), 2, "only the renamed file's attributes are left");
    assert_eq!(ns.get_xattr(o, b"trusted.b").unwrap(), b"2");
    // Unlinked while open (an orphan): kept until its last close.
    c.m(Mutation::Open { ino: o });
    assert!(matches!(c.m(Mutation::Unlink { parent: ROOT_INO, name: b"g".to_vec(), keep: false }), MetaResponse::Unlinked { orphan: Some(_) }));
    assert_eq!(xattr_records(&ns), 2);
    c.m(Mutation::Close { ino: o });
    assert_eq!(xattr_records(&ns), 0);
    let rep = ns.audit_refs().unwrap();
    assert!(rep.clean(), "{rep:#?}");
}

#[test]
fn audit_finds_attributes_without_an_inode() {
    let (_d, ns) = ns();
    let mut b = Batch::default();
    b.put(Cf::Xattrs, dirent_key(999, b"user.a"), vec![V1, 1]);
    b.put(Cf::Xattrs, dirent_key(999, b"user.b"), vec![V1, 2]);
    ns.store().apply(b).unwrap();
    let rep = ns.audit_refs().unwrap();
    assert!(!rep.clean());
    assert_eq!(rep.dangling_xattrs, 1, "one inode, counted once: {rep:#?}");
    assert!(rep.problems.join("\n").contains("inode 999"), "{rep:#?}");
}

#[test]
fn an_access_acl_sets_the_mode_and_chmod_sets_its_mask() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let f = c.mk(ROOT_INO, "f", FileKind::File);
    c.m(Mutation::SetAttr { ino: f, attr: SetAttr { mode: Some(0o4600), ..Default::default() } });
    assert_eq!(c.m(set(ACL_ACCESS, &acl_with_user(), 0, f)), MetaResponse::Done);
    assert_eq!(ns.getattr(f).unwrap().perm, 0o4775, "owner, mask and other entries give the bits; setuid kept");
    c.m(Mutation::SetAttr { ino: f, attr: SetAttr { mode: Some(0o640), ..Default::default() } });
    let stored = ns.get_xattr(f, ACL_ACCESS).unwrap();
    assert_eq!(stored, acl(&[(0x01, 6, NONE), (0x02, 7, 1000), (0x04, 5, NONE), (0x10, 4, NONE), (0x20, 0, NONE)]), "chmod changed the mask, not the group entry");
    // An ACL the bits hold alone is not stored, only its bits.
    assert_eq!(c.m(set(ACL_ACCESS, &acl(&[(0x01, 7, NONE), (0x04, 0, NONE), (0x20, 1, NONE)]), 0, f)), MetaResponse::Done);
    assert_eq!(ns.getattr(f).unwrap().perm, 0o701);
    assert_eq!(ns.get_xattr(f, ACL_ACCESS).unwrap_err().code, ErrorCode::NoAttribute);
    // Bad ACLs change nothing.
    assert_eq!(c.code(set(ACL_ACCESS, b"junk", 0, f)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(set(ACL_ACCESS, &acl(&[(0x01, 7, NONE), (0x02, 7, 1), (0x04, 0, NONE), (0x20, 1, NONE)]), 0, f)), Some(ErrorCode::InvalidArgument));
    assert_eq!(c.code(set(ACL_DEFAULT, &acl_with_user(), 0, f)), Some(ErrorCode::InvalidArgument), "a file has no default ACL");
    assert_eq!(ns.getattr(f).unwrap().perm, 0o701);
}

#[test]
fn a_default_acl_is_inherited_and_replaces_the_umask() {
    let (_d, ns) = ns();
    let mut c = C::new(&ns);
    let create = |parent, name: &[u8], kind, perm| Mutation::Create { parent, name: name.to_vec(), kind, perm, uid: 0, gid: 0, rdev: 0, target: None, umask: 0o027 };
    let attr = |r: MetaResponse| match r {
        MetaResponse::Attr(a) => a,
        r => panic!("{r:?}"),
    };
    // No default ACL: the umask applies.
    let plain = attr(c.m(create(ROOT_INO, b"plain", FileKind::File, 0o666)));
    assert_eq!(plain.perm, 0o640);
    assert!(ns.list_xattr(plain.ino).unwrap().is_empty());
    let d = attr(c.m(create(ROOT_INO, b"d", FileKind::Dir, 0o777))).ino;
    c.m(set(ACL_DEFAULT, &acl_with_user(), 0, d));
    // A file: access ACL = default limited by the requested mode; the umask is ignored.
    let f = attr(c.m(create(d, b"f", FileKind::File, 0o664)));
    assert_eq!(f.perm, 0o664);
    assert_eq!(ns.get_xattr(f.ino, ACL_ACCESS).unwrap(), acl(&[(0x01, 6, NONE), (0x02, 7, 1000), (0x04, 5, NONE), (0x10, 6, NONE), (0x20, 4, NONE)]));
    assert_eq!(ns.get_xattr(f.ino, ACL_DEFAULT).unwrap_err().code, ErrorCode::NoAttribute);
    // A directory: the same access ACL, and the default ACL passed on.
    let sub = attr(c.m(create(d, b"sub", FileKind::Dir, 0o777)));
    assert_eq!(sub.perm, 0o775);
    assert_eq!(ns.get_xattr(sub.ino, ACL_DEFAULT).unwrap(), acl_with_user());
    assert_eq!(ns.get_xattr(sub.ino, ACL_ACCESS).unwrap(), acl(&[(0x01, 7, NONE), (0x02, 7, 1000), (0x04, 5, NONE), (0x10, 7, NONE), (0x20, 5, NONE)]));
    let deeper = attr(c.m(create(sub.ino, b"f", FileKind::File, 0o600)));
    assert_eq!(deeper.perm, 0o600);
    // A symlink takes nothing.
    let l = attr(c.m(Mutation::Create { parent: d, name: b"l".to_vec(), kind: FileKind::Symlink, perm: 0o777, uid: 0, gid: 0, rdev: 0, target: Some(b"f".to_vec()), umask: 0 }));
    assert!(ns.list_xattr(l.ino).unwrap().is_empty());
}
