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
