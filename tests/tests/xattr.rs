//! Extended attributes and POSIX ACLs on a real mount: the system calls with their errnos, the
//! values surviving a restart, ACLs enforced by the kernel for another user, default ACLs
//! inherited, and `cp -a` carrying both over. Needs `setfacl`/`getfacl` (package `acl`) and
//! `getfattr` (package `attr`), which scripts/setup.sh installs.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use tessera_tests::*;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// `lsetxattr`: the errno on failure.
fn set(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(c(p).as_ptr(), cs(name).as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// `lgetxattr` into a buffer of `size` bytes (0: ask for the size): the bytes, or the errno.
fn get_sized(p: &Path, name: &str, size: usize) -> Result<(isize, Vec<u8>), i32> {
    let mut buf = vec![0u8; size];
    // SAFETY: as above; `buf` holds `size` bytes.
    let r = unsafe { libc::lgetxattr(c(p).as_ptr(), cs(name).as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r.max(0) as usize);
    Ok((r, buf))
}

fn get(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    get_sized(p, name, 70_000).map(|(_, v)| v)
}

/// `llistxattr`: the names.
fn list(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: as above.
    let r = unsafe { libc::llistxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr {}: errno {}", p.display(), errno());
    let mut names: Vec<String> = buf[..r as usize].split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8(n.to_vec()).unwrap()).collect();
    names.sort();
    names
}

fn remove(p: &Path, name: &str) -> Result<(), i32> {
    // SAFETY: as above.
    let r = unsafe { libc::lremovexattr(c(p).as_ptr(), cs(name).as_ptr()) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// Run `cmd` in `dir` (as another user with `runuser -u USER --` in front); stdout, or the
/// failure's stderr.
fn sh(dir: &Path, cmd: &str) -> Result<String, String> {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().expect("running sh");
    if out.status.success() { Ok(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

fn sh_ok(dir: &Path, cmd: &str) -> String {
    sh(dir, cmd).unwrap_or_else(|e| panic!("`{cmd}` failed: {e}"))
}

#[test]
fn xattrs_round_trip_with_linux_errnos_and_survive_a_restart() {
    let mut cl = DevCluster::start();
    let (f, d, l) = (cl.path("f"), cl.path("d"), cl.path("l"));
    fs::write(&f, b"data").unwrap();
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::symlink("f", &l).unwrap();
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let ctime = fs::metadata(&f).unwrap().ctime_nsec() as i128 + fs::metadata(&f).unwrap().ctime() as i128 * 1_000_000_000;
    std::thread::sleep(std::time::Duration::from_millis(20));
    set(&f, "user.bin", &binary, 0).unwrap();
    let m = fs::metadata(&f).unwrap();
    assert!(m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128 > ctime, "setxattr changes ctime");
    set(&f, "user.empty", b"", 0).unwrap();
    set(&f, "trusted.t", b"root only", 0).unwrap();
    set(&f, "security.s", b"sec", 0).unwrap();
    set(&d, "user.dir", b"on a directory", 0).unwrap();
    // user.* is for files and directories (the kernel's rule); trusted.* goes on anything.
    assert_eq!(set(&l, "user.x", b"", 0), Err(libc::EPERM));
    set(&l, "trusted.link", b"on the symlink itself", 0).unwrap();

    assert_eq!(get(&f, "user.bin").unwrap(), binary);
    assert_eq!(get(&f, "user.empty").unwrap(), b"");
    assert_eq!(list(&f), ["security.s", "trusted.t", "user.bin", "user.empty"]);
    assert_eq!(list(&l), ["trusted.link"]);
    // Size 0 asks for the size; a short buffer is ERANGE.
    assert_eq!(get_sized(&f, "user.bin", 0).unwrap().0, 256);
    assert_eq!(get_sized(&f, "user.bin", 255), Err(libc::ERANGE));
    assert_eq!(get(&f, "user.missing"), Err(libc::ENODATA));
    assert_eq!(set(&f, "user.bin", b"x", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(set(&f, "user.new", b"x", libc::XATTR_REPLACE), Err(libc::ENODATA));
    set(&f, "user.empty", b"now set", libc::XATTR_REPLACE).unwrap();
    let long = format!("user.{}", "n".repeat(251));
    assert_eq!(set(&f, &long, b"", 0), Err(libc::ERANGE), "a 256-byte name");
    set(&f, &long[..255], b"255 bytes is fine", 0).unwrap();
    assert_eq!(set(&f, "user.big", &vec![1; 65537], 0), Err(libc::E2BIG));
    set(&f, "user.big", &vec![1; 65536], 0).unwrap();
    assert_eq!(set(&f, "os2.x", b"", 0), Err(libc::EOPNOTSUPP));
    remove(&f, "user.big").unwrap();
    assert_eq!(remove(&f, "user.big"), Err(libc::ENODATA));
    assert_eq!(get(&f, "user.big"), Err(libc::ENODATA));

    cl.restart();
    assert_eq!(get(&f, "user.bin").unwrap(), binary, "after a restart");
    assert_eq!(get(&f, "user.empty").unwrap(), b"now set");
    assert_eq!(get(&d, "user.dir").unwrap(), b"on a directory");
    assert_eq!(get(&l, "trusted.link").unwrap(), b"on the symlink itself");
    assert_eq!(list(&f).len(), 5);

    // Gone with the inode: a new file of the same name starts bare, and fsck finds no
    // attribute records left over (it counts those whose inode does not exist).
    fs::remove_file(&f).unwrap();
    fs::remove_dir(&d).unwrap();
    fs::remove_file(&l).unwrap();
    fs::write(&f, b"new").unwrap();
    assert!(list(&f).is_empty());
    cl.assert_fsck_clean();
}

#[test]
fn acls_are_enforced_for_another_user_and_default_acls_are_inherited() {
    let c = DevCluster::start();
    let root = c.mnt.clone();
    // Let nobody reach the mount point (the temporary directory is 0700).
    fs::set_permissions(c.root(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::write(c.path("secret"), b"secret\n").unwrap();
    fs::set_permissions(c.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let read = "runuser -u nobody -- cat secret";
    assert!(sh(&root, read).is_err(), "nobody read a 0600 file");
    sh_ok(&root, "setfacl -m u:nobody:r secret");
    assert_eq!(sh(&root, read).unwrap(), "secret\n", "the ACL entry grants nobody read");
    // chmod sets the mask: the named entry loses its effect.
    sh_ok(&root, "chmod 600 secret");
    assert!(sh_ok(&root, "getfacl -c secret").contains("mask::---"));
    assert!(sh(&root, read).is_err(), "the mask from chmod 600 still let nobody read");
    // An entry that denies: other may read, nobody may not.
    fs::write(c.path("public"), b"public\n").unwrap();
    fs::set_permissions(c.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(sh(&root, "runuser -u nobody -- cat public").unwrap(), "public\n");
    sh_ok(&root, "setfacl -m u:nobody:--- public");
    assert!(sh(&root, "runuser -u nobody -- cat public").is_err(), "an ACL entry of --- did not deny");

    // No default ACL: the umask applies.
    sh_ok(&root, "umask 077; touch plain; mkdir plaindir");
    assert_eq!(fs::metadata(c.path("plain")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(c.path("plaindir")).unwrap().mode() & 0o7777, 0o700);

    // A default ACL: new files and directories inherit it, and the umask is ignored.
    fs::create_dir(c.path("shared")).unwrap();
    sh_ok(&root, "setfacl -d -m u:nobody:rwx shared && chmod 777 shared");
    sh_ok(&root, "umask 077; echo x > shared/f; mkdir shared/sub; touch shared/sub/g");
    let facl = sh_ok(&root, "getfacl -c shared/f");
    assert!(facl.contains("user:nobody:rwx"), "{facl}");
    assert!(facl.contains("mask::rw-"), "the mask is limited by the creator's mode 0666: {facl}");
    assert_eq!(fs::metadata(c.path("shared/f")).unwrap().mode() & 0o777, 0o664, "umask 077 ignored under a default ACL");
    let sub = sh_ok(&root, "getfacl -c shared/sub");
    assert!(sub.contains("default:user:nobody:rwx") && sub.contains("user:nobody:rwx"), "{sub}");
    assert!(sh_ok(&root, "getfacl -c shared/sub/g").contains("user:nobody:rwx"), "inherited two levels down");
    // The inherited entry is enforced: nobody may write the root-owned file.
    sh_ok(&root, "runuser -u nobody -- sh -c 'echo more >> shared/f'");
    assert_eq!(fs::read(c.path("shared/f")).unwrap(), b"x\nmore\n");
    // Removing the default ACL stops the inheritance.
    sh_ok(&root, "setfacl -k shared && umask 022 && touch shared/after");
    assert!(!sh_ok(&root, "getfacl -c shared/after").contains("nobody"));
    c.assert_fsck_clean();
}

#[test]
fn cp_a_preserves_user_xattrs_and_acls() {
    let c = DevCluster::start();
    let root = c.mnt.clone();
    sh_ok(&root, "mkdir -p src/sub && echo one > src/a && echo two > src/sub/b && ln -s a src/link");
    set(&c.path("src/a"), "user.binary", &[0, 1, 2, 255, 0], 0).unwrap();
    set(&c.path("src/a"), "user.text", b"hello", 0).unwrap();
    set(&c.path("src/sub"), "user.dir", b"d", 0).unwrap();
    set(&c.path("src/sub/b"), "user.big", &vec![b'z'; 60_000], 0).unwrap();
    sh_ok(&root, "setfacl -m u:nobody:rw,g:nogroup:r src/a && setfacl -d -m u:nobody:rx src/sub && setfacl -m u:nobody:x src/sub");
    sh_ok(&root, "mkdir copy && cp -a src copy/");
    let attrs = |dir: &str| sh_ok(&root.join(dir), "getfattr -R -h -d -e hex .");
    let acls = |dir: &str| sh_ok(&root.join(dir), "getfacl -R -P .");
    let (want_attrs, want_acls) = (attrs("src"), acls("src"));
    assert!(want_attrs.contains("user.binary=0x000102ff00") && want_attrs.contains("user.big="), "{want_attrs}");
    assert!(want_acls.contains("user:nobody:rw-") && want_acls.contains("default:user:nobody:r-x"), "{want_acls}");
    assert_eq!(attrs("copy/src"), want_attrs, "cp -a kept the user.* attributes");
    assert_eq!(acls("copy/src"), want_acls, "cp -a kept the ACLs");
    c.assert_fsck_clean();
}

/// The client remembers that a file has no `security.capability` (the kernel asks before
/// every write); a capability set later is seen at once, and a write still drops it.
#[test]
fn a_file_capability_is_seen_at_once_and_dropped_by_a_write() {
    let c = DevCluster::start();
    let f = c.path("tool");
    let mut file = fs::OpenOptions::new().create(true).write(true).open(&f).unwrap();
    use std::io::Write;
    file.write_all(b"first write: the absence is remembered").unwrap();
    assert_eq!(get(&f, "security.capability"), Err(libc::ENODATA));
    // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE permitted.
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    set(&f, "security.capability", &cap, 0).expect("setting a file capability (needs CAP_SETFCAP)");
    assert_eq!(get(&f, "security.capability").unwrap(), cap, "set through this mount, seen at once");
    file.write_all(b"a write by a non-privileged-aware path").unwrap();
    drop(file);
    assert_eq!(get(&f, "security.capability"), Err(libc::ENODATA), "a write drops the file capability");
    c.assert_fsck_clean();
}
