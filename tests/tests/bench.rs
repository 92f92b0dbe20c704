//! `tessera bench DIR` and `tessera stats ADDRS` on a real mount (docs/metrics.md, "Watching
//! and timing a mount").

use std::process::Command;
use std::time::Duration;
use tessera_tests::cluster::write_file_synced;
use tessera_tests::*;

#[test]
fn bench_times_a_mount_and_stats_shows_what_it_is_doing() {
    let c = ManualCluster::start(3, 3);
    let mnt = c.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let port = free_tcp_port();
    let addr = format!("127.0.0.1:{port}");
    let mut m = start_mount_with(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"), &["--metrics", &addr]);

    let out = run_timeout(
        Command::new(bin("tessera")).arg("bench").arg(&mnt).args(["--big-file-size", "16", "--small-files", "20", "--small-file-size", "64", "--json"]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let items: Vec<&str> = rows.iter().map(|r| r["item"].as_str().unwrap()).collect();
    assert_eq!(items, ["write big file", "read big file", "write small files", "read small files", "stat small files", "remove small files"]);
    for r in &rows {
        assert!(r["value"].as_f64().unwrap() > 0.0 && r["ms_per_op"].as_f64().unwrap() > 0.0, "{r}");
    }
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "bench left {left:?} behind");

    // While files are written, stats shows the writes (the mount's --metrics page).
    let dir = mnt.clone();
    let writer = std::thread::spawn(move || {
        let data = vec![7u8; 1 << 20];
        for i in 0..40 {
            write_file_synced(&dir.join(format!("w{i}")), &data).unwrap();
        }
    });
    let out = run_timeout(Command::new(bin("tessera")).args(["stats", &addr, "--count", "3", "--interval", "0.5", "--json"]), Duration::from_secs(60));
    writer.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().any(|l| l["write_mib_per_sec"].as_f64().unwrap() > 0.0 && l["fuse_ops_per_sec"].as_f64().unwrap() > 0.0), "{lines:?}");

    // Bad input: one line, nothing done.
    let out = run_timeout(Command::new(bin("tessera")).args(["bench", "/nonexistent/dir"]), Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory") && err.trim().lines().count() == 1, "{err}");
    let out = run_timeout(Command::new(bin("tessera")).args(["stats", &format!("127.0.0.1:{}", free_tcp_port()), "--count", "1"]), Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no metrics page") && err.trim().lines().count() == 1, "{err}");

    m.stop();
    c.assert_fsck_clean();
}
