//! Bad input on the command line: every command exits non-zero with a one-line reason on
//! stderr, leaves nothing behind (no mount, no files), and the servers keep serving.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tessera_tests::*;

/// Unmounts a path on drop (in case a failing command left a mount behind).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

fn tessera() -> Command {
    let mut c = Command::new(bin("tessera"));
    // What a user sees by default; no addresses or certificates from the environment.
    c.env_remove("RUST_LOG").env_remove("TESSERA_META").env_remove("TESSERA_CERTS");
    c
}

fn show(out: &Output) -> String {
    format!(
        "exit status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Non-zero exit and exactly one non-empty line on stderr; returns that line.
fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure\n{}", show(out));
    assert!(out.status.code().is_some(), "killed by a signal instead of exiting\n{}", show(out));
    let lines = stderr_lines(out);
    assert_eq!(lines.len(), 1, "expected a one-line reason on stderr\n{}", show(out));
    lines[0].clone()
}

/// True when `text` names a certificate problem: "certificate" (any case) or the word "CA".
fn mentions_certificate(text: &str) -> bool {
    text.to_lowercase().contains("certificate") || text.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "CA")
}

fn mount_cmd(meta: &str, certs: &Path, mountpoint: &Path, foreground: bool) -> Command {
    let mut c = tessera();
    c.arg("mount").arg("--meta").arg(meta).arg("--certs").arg(certs).arg(mountpoint);
    if foreground {
        c.arg("--foreground");
    }
    c
}

#[test]
fn mount_on_missing_mountpoint() {
    let mut c = ManualCluster::start(1, 1);
    let missing = c.root().join("no-such-dir/mnt");
    let _guard = UnmountOnDrop(missing.clone());
    for foreground in [false, true] {
        let out = run_timeout(&mut mount_cmd(&c.meta_addr, &c.client, &missing, foreground), Duration::from_secs(30));
        let line = one_line_failure(&out);
        assert!(
            line.contains(&*missing.to_string_lossy()),
            "the error (foreground: {foreground}) does not name the mount point {}\n{}",
            missing.display(),
            show(&out)
        );
        assert!(!missing.exists(), "tessera mount created the missing mount point");
    }
    c.assert_running();
}

#[test]
fn mount_with_unreachable_metadata_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    cert_init(&ca);
    let client = dir.path().join("client");
    cert_issue(&ca, &client, "client-1", "client");
    let mnt = dir.path().canonicalize().unwrap().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = UnmountOnDrop(mnt.clone());

    let port = free_port(); // nothing listens there
    let addr = format!("127.0.0.1:{port}");
    for foreground in [false, true] {
        let t = Instant::now();
        let out = run_timeout(&mut mount_cmd(&addr, &client, &mnt, foreground), Duration::from_secs(30));
        let took = t.elapsed();
        assert!(!out.status.success(), "tessera mount (foreground: {foreground}) succeeded without a metadata server\n{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains(&addr) || err.contains("metadata"),
            "the error does not name the metadata server\n{}",
            show(&out)
        );
        assert!(
            ["unreachable", "reach", "connect", "no answer", "timed out", "timeout", "not running", "refused"].iter().any(|w| err.contains(w)),
            "the error does not say that the metadata server cannot be reached\n{}",
            show(&out)
        );
        assert!(!is_mounted(&mnt), "a failed tessera mount (foreground: {foreground}) left a mount behind on {}", mnt.display());
        eprintln!("tessera mount failed in {took:?} (foreground: {foreground})");
    }
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let mut c = ManualCluster::start(1, 1);
    let other = c.root().join("other-ca");
    cert_init(&other);
    let foreign_admin = c.root().join("certs/foreign-admin");
    let foreign_client = c.root().join("certs/foreign-client");
    cert_issue(&other, &foreign_admin, "intruder-admin", "admin");
    cert_issue(&other, &foreign_client, "intruder-client", "client");

    // tessera status with an admin bundle from CA B.
    let out = c.status_output(&foreign_admin);
    assert!(!out.status.success(), "status with a foreign certificate succeeded\n{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(mentions_certificate(&err), "the status error does not mention the certificate or CA\n{}", show(&out));

    // A bundle that trusts the cluster's CA (so the client accepts the server) but whose
    // certificate is signed by CA B: now the server must refuse it.
    let mixed_admin = c.root().join("certs/mixed-admin");
    cert_issue(&other, &mixed_admin, "intruder-admin-2", "admin");
    std::fs::copy(c.ca.join("ca.crt"), mixed_admin.join("ca.crt")).unwrap();
    let out = c.status_output(&mixed_admin);
    assert!(!out.status.success(), "status with a certificate the server cannot verify succeeded\n{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(mentions_certificate(&err), "the status error (server-side refusal) does not mention the certificate or CA\n{}", show(&out));

    // tessera mount with a client bundle from CA B.
    let mnt = c.root().join("mnt-foreign");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = UnmountOnDrop(mnt.clone());
    for foreground in [false, true] {
        let out = run_timeout(&mut mount_cmd(&c.meta_addr, &foreign_client, &mnt, foreground), Duration::from_secs(30));
        assert!(!out.status.success(), "mount with a foreign certificate succeeded (foreground: {foreground})\n{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(mentions_certificate(&err), "the mount error does not mention the certificate or CA\n{}", show(&out));
        assert!(!is_mounted(&mnt), "a refused mount left a mount behind");
    }

    // The servers keep serving: they are alive, status with CA A's admin bundle works, and a
    // client of CA A can mount, write and read.
    c.assert_running();
    let out = c.status_output(&c.admin);
    assert!(out.status.success(), "status with the cluster's own admin bundle failed afterwards\n{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}\n{}", show(&out)));
    let up = v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "up").count());
    assert_eq!(up, Some(1), "chunk servers up after the refused connections: {v}");

    let mnt = c.root().join("mnt-good");
    std::fs::create_dir(&mnt).unwrap();
    let m = start_mount(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"));
    std::fs::write(mnt.join("hello"), b"still serving").unwrap();
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"still serving");
    drop(m);
    assert!(!is_mounted(&mnt));
}

#[test]
fn cert_issue_with_bogus_role() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    cert_init(&ca);
    let node = dir.path().join("node");
    let out = run_timeout(
        tessera().args(["cert", "issue"]).arg(&ca).arg(&node).args(["--name", "n1", "--role", "bogus", "--host", "127.0.0.1"]),
        Duration::from_secs(30),
    );
    let line = one_line_failure(&out);
    assert!(line.contains("bogus"), "the error does not name the bad role\n{}", show(&out));
    assert!(!node.join("node.key").exists() && !node.join("node.crt").exists(), "a refused cert issue wrote a bundle");
}

#[test]
fn cert_init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    cert_init(&ca);
    let key = std::fs::read(ca.join("ca.key")).unwrap();
    let out = run_timeout(tessera().args(["cert", "init"]).arg(&ca), Duration::from_secs(30));
    let line = one_line_failure(&out);
    assert!(line.contains("ca.key") || line.to_lowercase().contains("exist"), "the error does not say the CA exists\n{}", show(&out));
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), key, "cert init overwrote the CA key");
}

#[test]
fn servers_reject_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    cert_init(&ca);
    let meta_certs = dir.path().join("meta");
    let client_certs = dir.path().join("client");
    cert_issue(&ca, &meta_certs, "meta-1", "meta");
    cert_issue(&ca, &client_certs, "client-1", "client");
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");

    let meta = |certs: &Path, replicas: &str| {
        let mut c = Command::new(bin("tessera-meta"));
        c.env_remove("RUST_LOG").env_remove("TESSERA_CERTS");
        c.arg("--data-dir").arg(&data).args(["--listen", listen.as_str(), "--certs"]).arg(certs).args(["--replicas", replicas]);
        run_timeout(&mut c, Duration::from_secs(30))
    };

    // --replicas 0.
    let out = meta(&meta_certs, "0");
    let line = one_line_failure(&out);
    assert!(line.contains("replicas"), "the error does not name --replicas\n{}", show(&out));

    // A client certificate for a metadata server.
    let out = meta(&client_certs, "1");
    let line = one_line_failure(&out);
    assert!(line.contains("role"), "the error does not name the role problem\n{}", show(&out));

    // A missing certificate directory.
    let missing = dir.path().join("no-certs");
    let out = meta(&missing, "1");
    let line = one_line_failure(&out);
    assert!(line.contains(&*missing.to_string_lossy()), "the error does not name the missing directory\n{}", show(&out));

    // tessera-chunk with an unparsable --meta.
    let mut c = Command::new(bin("tessera-chunk"));
    c.env_remove("RUST_LOG").env_remove("TESSERA_CERTS").env_remove("TESSERA_META");
    c.arg("--data-dir").arg(dir.path().join("chunk")).args(["--listen", listen.as_str(), "--meta", "not-an-address", "--certs"]).arg(&meta_certs);
    let out = run_timeout(&mut c, Duration::from_secs(30));
    let line = one_line_failure(&out);
    assert!(line.contains("not-an-address"), "the error does not name the bad address\n{}", show(&out));
}
