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

/// Each server sends READY=1 to `$NOTIFY_SOCKET` once it listens (so a `Type=notify` unit
/// becomes active only then), and nothing without the variable.
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
    let meta = Proc::spawn(
        "tessera-meta",
        Command::new(bin("tessera-meta"))
            .args(["--data-dir"])
            .arg(d.join("meta-data"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--replicas", "1", "--certs"])
            .arg(d.join("meta"))
            .env("NOTIFY_SOCKET", &sock_path),
        &d.join("meta.log"),
    );
    assert_eq!(recv_notification(&sock), "READY=1\n", "tessera-meta's notification");
    assert!(udp_port_in_use(port), "tessera-meta said READY before it listened on {port}");

    let cport = free_port();
    let chunk = Proc::spawn(
        "tessera-chunk",
        Command::new(bin("tessera-chunk"))
            .args(["--data-dir"])
            .arg(d.join("chunk-data"))
            .args(["--listen", &format!("127.0.0.1:{cport}"), "--meta", &format!("127.0.0.1:{port}"), "--certs"])
            .arg(d.join("chunk"))
            .env("NOTIFY_SOCKET", &sock_path),
        &d.join("chunk.log"),
    );
    assert_eq!(recv_notification(&sock), "READY=1\n", "tessera-chunk's notification");
    assert!(udp_port_in_use(cport), "tessera-chunk said READY before it listened on {cport}");
    drop(chunk);
    drop(meta);

    // Without NOTIFY_SOCKET nothing arrives.
    let port = free_port();
    let _meta = start_meta(&d.join("meta-data2"), port, &d.join("meta"), 1, &d.join("meta2.log"));
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 16];
    assert!(sock.recv(&mut buf).is_err(), "a server without NOTIFY_SOCKET sent a notification");
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
    let dir = c.root().join("fstab-mnt");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();

    let refused = run_timeout(Command::new(helper()).arg(&c.meta_addr).arg(&dir).args(["-o", "_netdev"]).env("TESSERA_BIN", bin("tessera")), Duration::from_secs(30));
    assert!(!refused.status.success(), "mounted without certificates");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("certs=") && why.trim().lines().count() == 1, "reason: {why}");
    assert!(!is_mounted(&dir));

    let opts = format!("rw,certs={},_netdev,noatime", c.client.display());
    let out = run_timeout(Command::new(helper()).arg(&c.meta_addr).arg(&dir).args(["-o", &opts]).env("TESSERA_BIN", bin("tessera")), Duration::from_secs(90));
    assert!(out.status.success(), "mount.tessera failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let unmount = scopeguard(&dir);
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

/// Unmounts `dir` on drop if it is still mounted (a failed assertion must not leave a mount).
fn scopeguard(dir: &Path) -> impl Drop + '_ {
    struct G<'a>(&'a Path);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                force_unmount(self.0);
            }
        }
    }
    G(dir)
}
