//! Running as a service: systemd readiness (`Type=notify`) of both servers, and the mount(8)
//! helper `scripts/mount.tessera` that fstab lines and `mount -t tessera` use.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_tests::cluster::*;
use tessera_tests::*;

/// Wait for one datagram on `sock` (at most 30 s).
fn recv_notification(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no systemd notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Start `cmd` with `NOTIFY_SOCKET` naming `sock`; it must say READY=1 once it listens on `port`.
fn start_notifying(name: &str, cmd: &mut Command, log: &Path, sock: (&UnixDatagram, &Path), port: u16) -> Proc {
    let p = Proc::spawn(name, cmd.env("NOTIFY_SOCKET", sock.1), log);
    assert_eq!(recv_notification(sock.0), "READY=1\n", "{name}'s notification");
    assert!(udp_port_in_use(port), "{name} said READY before it listened on {port}");
    p
}

/// Each server sends READY=1 to `$NOTIFY_SOCKET` once it listens, so a `Type=notify` unit
/// becomes active only then.
#[test]
fn servers_tell_systemd_when_they_listen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cert_init(&d.join("ca"));
    cert_issue(&d.join("ca"), &d.join("meta"), "meta-1", "meta");
    cert_issue(&d.join("ca"), &d.join("chunk"), "chunk-1", "chunk");
    let sock_path = d.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    let port = free_port();
    let mut meta_cmd = Command::new(bin("tessera-meta"));
    meta_cmd
        .arg("--data-dir")
        .arg(d.join("meta-data"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--replicas", "1", "--certs"])
        .arg(d.join("meta"));
    let meta = start_notifying("tessera-meta", &mut meta_cmd, &d.join("meta.log"), (&sock, &sock_path), port);

    let cport = free_port();
    let mut chunk_cmd = Command::new(bin("tessera-chunk"));
    chunk_cmd
        .arg("--data-dir")
        .arg(d.join("chunk-data"))
        .args(["--listen", &format!("127.0.0.1:{cport}"), "--meta", &format!("127.0.0.1:{port}"), "--certs"])
        .arg(d.join("chunk"));
    let chunk = start_notifying("tessera-chunk", &mut chunk_cmd, &d.join("chunk.log"), (&sock, &sock_path), cport);
    drop(chunk);
    drop(meta);
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mount.tessera")
}

/// `mount.tessera SPEC DIR -o certs=…,_netdev,noatime`, as mount(8) calls it for an fstab line:
/// the file system is mounted (detached), shares the namespace with the other mount, drops the
/// fstab-only option, and `umount` ends it. Without `certs=` it refuses with a one-line reason.
#[test]
fn the_mount_helper_mounts_what_an_fstab_line_names() {
    let c = Cluster::start_with(ClusterOpts { chunks: 1, replicas: 1, ..Default::default() });
    let dir = c.new_mountpoint("fstab-mnt");

    let refused = run_timeout(Command::new(helper()).arg(&c.meta_addr).arg(&dir).args(["-o", "_netdev"]).env("TESSERA_BIN", bin("tessera")), Duration::from_secs(30));
    assert!(!refused.status.success(), "mounted without certificates");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("certs=") && why.trim().lines().count() == 1, "reason: {why}");
    assert!(!is_mounted(&dir));

    let opts = format!("rw,certs={},_netdev,noatime", c.client.display());
    let out = run_timeout(Command::new(helper()).arg(&c.meta_addr).arg(&dir).args(["-o", &opts]).env("TESSERA_BIN", bin("tessera")), Duration::from_secs(90));
    assert!(out.status.success(), "mount.tessera failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let unmount = unmount_on_drop(&dir);
    assert!(is_mounted(&dir), "{} is not mounted after mount.tessera returned", dir.display());
    let line = std::fs::read_to_string("/proc/mounts").unwrap().lines().find(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap())).map(str::to_string).unwrap();
    assert!(line.contains("noatime"), "noatime not applied: {line}");

    std::fs::write(dir.join("via-fstab"), b"written through the fstab mount").unwrap();
    let other = std::fs::read(c.path("via-fstab")).expect("the file is not visible through the other mount");
    assert_eq!(other, b"written through the fstab mount");

    let u = run_timeout(Command::new("umount").arg(&dir), Duration::from_secs(30));
    assert!(u.status.success(), "umount: {}", String::from_utf8_lossy(&u.stderr));
    assert!(!is_mounted(&dir));
    drop(unmount);
    c.assert_fsck_clean();
}

/// A private mount namespace in which `/usr/sbin` also holds the helper under both names it is
/// installed as (`mount.tessera`, `mount.fuse.tessera`), as docs/deploy.md says, so mount(8)
/// finds it without touching the host's /usr/sbin. Commands run in it through nsenter; its
/// files are reached through /proc/PID/root.
struct MountNs {
    holder: std::process::Child,
    mounted: Vec<PathBuf>,
}

impl MountNs {
    fn new(helpers: &Path) -> MountNs {
        std::fs::create_dir_all(helpers).unwrap();
        for name in ["mount.tessera", "mount.fuse.tessera"] {
            std::os::unix::fs::symlink(helper().canonicalize().unwrap(), helpers.join(name)).unwrap();
        }
        let holder = Command::new("unshare").args(["--mount", "--propagation", "private", "sleep", "900"]).spawn().expect("unshare");
        let ns = MountNs { holder, mounted: Vec::new() };
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let pid = ns.holder.id();
        let apart = wait_for(Duration::from_secs(10), || std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().filter(|l| *l != ours));
        assert!(apart.is_some(), "unshare did not make a mount namespace");
        let lower = format!("lowerdir={}:/usr/sbin", helpers.display());
        let out = ns.run(&["mount", "-t", "overlay", "overlay", "-o", &lower, "/usr/sbin"]);
        assert!(out.status.success(), "overlay on /usr/sbin: {}", String::from_utf8_lossy(&out.stderr));
        ns
    }

    /// Run `args` in the namespace, with the helper's TESSERA_BIN.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id())).arg("--").args(args).env("TESSERA_BIN", bin("tessera"));
        run_timeout(&mut cmd, Duration::from_secs(90))
    }

    /// `path` as the namespace sees it.
    fn path(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.holder.id())).join(path.strip_prefix("/").unwrap())
    }

    /// The namespace's /proc/mounts lines for `dir`.
    fn mounts_on(&self, dir: &Path) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(format!("/proc/{}/mounts", self.holder.id())).unwrap();
        text.lines().map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>()).filter(|f| f[1] == dir.to_str().unwrap()).collect()
    }

    /// The options of the one mount on `dir` (panics unless exactly one is there).
    fn options(&self, dir: &Path) -> Vec<String> {
        let m = self.mounts_on(dir);
        assert_eq!(m.len(), 1, "not exactly one mount on {}: {m:?}", dir.display());
        m[0][3].split(',').map(str::to_string).collect()
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        for d in std::mem::take(&mut self.mounted) {
            while !self.mounts_on(&d).is_empty() {
                if !self.run(&["umount", "-l", d.to_str().unwrap()]).status.success() {
                    break;
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Refused with one line on stderr that contains `want`.
fn refused(out: &std::process::Output, what: &str, want: &str) {
    assert!(!out.status.success(), "{what} succeeded; it should have been refused");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains(want), "{what}: wanted {want:?} in {why:?}");
}

/// `mount -o remount` through mount(8) on a `mount -t tessera` mount that an fstab names:
/// `ro` and back to `rw` change the kernel's flags of the live mount (writes fail with EROFS,
/// then work again) while the same FUSE connection keeps serving and the other flags (noatime)
/// stay; what a live mount cannot change (the cluster, dirsync, FUSE parameters, unknown
/// options) is refused by name and leaves the mount as it was; `mount -a` does not stack a
/// second mount on it.
#[test]
fn remount_changes_the_live_mount_or_refuses_by_name() {
    use std::os::unix::fs::MetadataExt;
    let c = Cluster::start_with(ClusterOpts { chunks: 1, replicas: 1, ..Default::default() });
    let dir = c.new_mountpoint("fstab-mnt");
    let d = dir.to_str().unwrap();
    let fstab = c.root().join("fstab");
    std::fs::write(&fstab, format!("{} {d} tessera certs={},_netdev,noatime 0 0\n", c.meta_addr, c.client.display())).unwrap();
    let fstab = fstab.to_str().unwrap();
    let mut ns = MountNs::new(&c.root().join("sbin"));
    ns.mounted.push(dir.clone());

    let opts = format!("certs={},_netdev,noatime", c.client.display());
    ok(&ns.run(&["mount", "-t", "tessera", &c.meta_addr, d, "-o", &opts]), "mount -t tessera");
    let m = ns.mounts_on(&dir);
    assert_eq!((m[0][0].as_str(), m[0][2].as_str()), (c.meta_addr.as_str(), "fuse.tessera"), "source and type: {m:?}");
    assert!(ns.options(&dir).contains(&"noatime".into()) && ns.options(&dir).contains(&"rw".into()), "{m:?}");
    let inside = ns.path(&dir);
    let dev = std::fs::metadata(&inside).unwrap().dev();
    std::fs::write(inside.join("before"), b"written before the remount").unwrap();

    let again = ns.run(&["mount", "-a", "-T", fstab]);
    assert_eq!(ns.mounts_on(&dir).len(), 1, "mount -a stacked a second mount ({}): {:?}", String::from_utf8_lossy(&again.stderr), ns.mounts_on(&dir));

    // Through fstab: mount(8) passes the line's options (certs=, _netdev) with remount,ro.
    ok(&ns.run(&["mount", "-T", fstab, "-o", "remount,ro", d]), "mount -o remount,ro");
    let o = ns.options(&dir);
    assert!(o.contains(&"ro".into()) && o.contains(&"noatime".into()), "after remount,ro: {o:?}");
    let e = std::fs::write(inside.join("while-ro"), b"x").expect_err("a write succeeded on a read-only remount");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(std::fs::read(inside.join("before")).unwrap(), b"written before the remount");
    assert_eq!(std::fs::metadata(&inside).unwrap().dev(), dev, "remount replaced the mount");

    // Not in the (system) fstab: mount(8) takes the live mount's type, fuse.tessera.
    ok(&ns.run(&["mount", "-o", "remount,rw", d]), "mount -o remount,rw");
    let o = ns.options(&dir);
    assert!(o.contains(&"rw".into()) && o.contains(&"noatime".into()), "after remount,rw: {o:?}");
    std::fs::write(inside.join("after"), b"written after the remount").unwrap();
    assert_eq!(std::fs::read(c.path("after")).unwrap(), b"written after the remount", "the other mount does not see the write");

    refused(&ns.run(&["mount", "-o", "remount,dirsync", d]), "remount,dirsync", "remount cannot change 'dirsync' on a live mount");
    refused(&ns.run(&["mount", "-o", "remount,max_read=4096", d]), "remount,max_read", "remount cannot change 'max_read=4096'");
    refused(&ns.run(&["mount", "-o", "remount,bogus", d]), "remount,bogus", "unknown mount option 'bogus'");
    let other = c.root().join("fstab-other");
    std::fs::write(&other, format!("127.0.0.1:1 {d} tessera certs={} 0 0\n", c.client.display())).unwrap();
    refused(&ns.run(&["mount", "-T", other.to_str().unwrap(), "-o", "remount", d]), "remount from another cluster", &format!("remount cannot change the cluster: {d} is mounted from {}, not 127.0.0.1:1", c.meta_addr));

    // Refusals changed nothing: one mount, same flags, same connection, still serving.
    let o = ns.options(&dir);
    assert!(o.contains(&"rw".into()) && o.contains(&"noatime".into()) && !o.contains(&"dirsync".into()), "{o:?}");
    assert_eq!(std::fs::metadata(&inside).unwrap().dev(), dev);
    std::fs::write(inside.join("after-refusals"), b"still serving").unwrap();
    assert_eq!(std::fs::read(c.path("after-refusals")).unwrap(), b"still serving");

    ok(&ns.run(&["umount", d]), "umount");
    assert!(ns.mounts_on(&dir).is_empty());
    drop(ns);
    c.assert_fsck_clean();
}
