//! `--metrics ADDR` on real processes (docs/metrics.md): the metadata server, the chunk servers
//! and a mount serve Prometheus text on plain HTTP, and the numbers follow what the mount did.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tessera_tests::cluster::{block_files_in, drop_page_cache, write_file_synced};
use tessera_tests::*;

const MIB: usize = 1 << 20;

use tessera_tests::metric_value as value;

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The metric names (`# TYPE name kind`) of a scrape.
fn names(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

#[test]
fn servers_and_a_mount_count_what_writes_and_reads_did() {
    let meta_port = free_tcp_port();
    let chunk_ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let meta_metrics = format!("127.0.0.1:{meta_port}");
    let ports = chunk_ports.clone();
    let c = ManualCluster::start_with(3, 3, &["--metrics", &meta_metrics], move |i| vec!["--metrics".into(), format!("127.0.0.1:{}", ports[i])]);
    let mount_port = free_tcp_port();
    let mnt = c.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut m = start_mount_with(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"), &["--metrics", &format!("127.0.0.1:{mount_port}")]);

    // Three files of 8 MiB: two 4 MiB blocks each, three copies of every block.
    let mut rng = seeded_rng();
    let files: Vec<Vec<u8>> = (0..3).map(|_| random_bytes(&mut rng, 8 * MIB)).collect();
    for (i, data) in files.iter().enumerate() {
        write_file_synced(&mnt.join(format!("f{i}")), data).unwrap();
    }
    drop_page_cache();
    for (i, data) in files.iter().enumerate() {
        assert_eq!(hash_file(&mnt.join(format!("f{i}"))).unwrap(), blake3::hash(data), "f{i} read back");
    }
    let total = (3 * 8 * MIB) as f64;

    let mount = scrape(mount_port);
    assert!(must(&mount, "tessera_fuse_written_bytes_total") >= total, "{mount}");
    assert!(must(&mount, "tessera_fuse_read_bytes_total") >= total, "{mount}");
    let writes = must(&mount, r#"tessera_fuse_requests_total{op="write"}"#);
    assert!(writes >= 24.0, "at most 1 MiB per FUSE write: {writes} writes for 24 MiB");
    assert_eq!(must(&mount, r#"tessera_fuse_request_seconds_count{op="write"}"#), writes, "every write timed");
    assert!(must(&mount, r#"tessera_fuse_requests_total{op="create"}"#) >= 3.0, "{mount}");
    assert!(must(&mount, "tessera_client_block_puts_total") >= 6.0, "{mount}");
    assert!(must(&mount, "tessera_client_put_bytes_total") >= total, "{mount}");
    assert!(must(&mount, "tessera_client_fetched_bytes_total") + must(&mount, "tessera_client_block_cache_hits_total") * 4.0 * MIB as f64 >= total, "{mount}");

    // Every chunk server counts the blocks it holds as its data directory does, and the copies
    // it took add up to three per block.
    let mut puts = 0.0;
    let mut received = 0.0;
    for (i, port) in chunk_ports.iter().enumerate() {
        let text = scrape(*port);
        let on_disk = block_files_in(&c.root().join(format!("chunk{i}"))).len();
        assert_eq!(must(&text, "tessera_chunk_blocks"), on_disk as f64, "chunk{i}: blocks shown against block files");
        assert!(must(&text, "tessera_chunk_used_bytes") >= (on_disk.saturating_sub(1) * 4 * MIB) as f64, "chunk{i}\n{text}");
        assert_eq!(must(&text, "tessera_chunk_capacity_bytes"), (64u64 << 30) as f64, "chunk{i}: --capacity");
        assert!(must(&text, "tessera_quic_connections") >= 1.0, "chunk{i}: the mount is connected\n{text}");
        assert!(value(&text, r#"tessera_worker_passes_total{worker="heartbeat"}"#).is_some_and(|v| v >= 1.0), "chunk{i}\n{text}");
        puts += value(&text, r#"tessera_rpc_requests_total{op="put"}"#).unwrap_or(0.0);
        received += must(&text, "tessera_rpc_received_bytes_total");
    }
    assert!(puts >= 18.0, "6 blocks, 3 copies each: {puts} puts");
    assert!(received >= 3.0 * total, "3 copies of 24 MiB received: {received}");

    let meta = scrape(meta_port);
    assert_eq!(must(&meta, r#"tessera_meta_chunk_servers{state="up"}"#), 3.0, "{meta}");
    assert_eq!(must(&meta, "tessera_meta_sessions_live"), 1.0, "{meta}");
    assert!(must(&meta, r#"tessera_rpc_requests_total{op="create_open"}"#) >= 3.0, "{meta}");
    assert!(must(&meta, "tessera_meta_store_wal_syncs_total") >= 1.0, "{meta}");
    assert_eq!(must(&meta, "tessera_meta_store_failed"), 0.0, "{meta}");

    // docs/metrics.md names every metric these processes show.
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md")).unwrap();
    let mut shown = names(&mount);
    shown.extend(names(&meta));
    shown.extend(names(&scrape(chunk_ports[0])));
    let missing: Vec<&String> = shown.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "docs/metrics.md does not list {missing:?}");

    // The example dashboard asks only for metrics that exist.
    let dash = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/grafana-dashboard.json")).unwrap();
    for word in dash.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).filter(|w| w.starts_with("tessera_")) {
        let base = ["_total", "_bucket"].iter().fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
        assert!(doc.contains(&format!("`{base}`")), "the dashboard asks for {word}, which docs/metrics.md does not list");
    }

    // Anything but GET /metrics gets a plain answer.
    assert_eq!(http_get(meta_port, "/nothing").0, "HTTP/1.1 404 Not Found");
    m.stop();
    c.assert_fsck_clean();
}

#[test]
fn a_bad_or_taken_metrics_address_is_a_one_line_error() {
    let out = run_timeout(Command::new(bin("tessera-meta")).args(["--data-dir", "/nonexistent", "--listen", "127.0.0.1:0", "--certs", "/nonexistent", "--metrics", "not-an-address"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics") && err.contains("not-an-address"), "{err}");

    // A port that is taken: the server says so and exits instead of running without metrics.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let c = ManualCluster::start(1, 1);
    let certs = c.root().join("certs/chunk0");
    let out = run_timeout(
        Command::new(bin("tessera-chunk"))
            .args(["--data-dir"])
            .arg(c.root().join("another"))
            .args(["--listen", "127.0.0.1:0", "--meta", &c.meta_addr, "--certs"])
            .arg(&certs)
            .args(["--metrics", &format!("127.0.0.1:{port}")]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // Its last word, after the start-up log: one line that names the flag and the reason.
    let last = err.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("tessera-chunk: ") && last.contains(&format!("--metrics 127.0.0.1:{port}: cannot listen")) && last.contains("in use"), "{err}");
    c.assert_fsck_clean();
}

/// `ls -l` of a directory of several pages of entries takes the attributes with the listing
/// (readdirplus), and which files have extended attributes at all: every size and mode it
/// prints is the file's, the ACL of the one file that has one shows (`+`), and the mount asked
/// far fewer lookups and extended attributes than there are entries (without readdirplus: one
/// lookup per entry; without the absence it tells, two attribute reads per entry, for the ACL
/// and the security label). An attribute set right after the listing is seen at once.
#[test]
fn ls_l_takes_the_attributes_with_the_listing() {
    const N: usize = 1200;
    let meta_port = free_tcp_port();
    let c = ManualCluster::start_with(3, 3, &["--metrics", &format!("127.0.0.1:{meta_port}")], |_| vec![]);
    let mount_port = free_tcp_port();
    let mnt = c.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut m = start_mount_with(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"), &["--metrics", &format!("127.0.0.1:{mount_port}")]);
    let xattr_reads = |t: &str| value(t, r#"tessera_rpc_requests_total{op="get_xattr"}"#).unwrap_or(0.0) + value(t, r#"tessera_rpc_requests_total{op="list_xattr"}"#).unwrap_or(0.0);
    let dir = mnt.join("d");
    std::fs::create_dir(&dir).unwrap();
    let meta_before = scrape(meta_port);
    for i in 0..N {
        let p = dir.join(format!("f{i:05}"));
        std::fs::write(&p, vec![b'x'; i % 97]).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(if i % 2 == 0 { 0o640 } else { 0o604 })).unwrap();
    }
    // The kernel asks for `security.capability` before each file's first write; the mount knows
    // that a file it has just created has none.
    let read = xattr_reads(&scrape(meta_port)) - xattr_reads(&meta_before);
    assert!(read < (N / 10) as f64, "{read} extended attribute reads while {N} files were created and written");
    run_ok(Command::new("setfacl").args(["-m", "u:nobody:r", dir.join("f00000").to_str().unwrap()]));
    // Forget the kernel's names and attributes, so that what `ls -l` shows comes from the
    // listing or from lookups.
    drop_page_cache();
    let lookups = |t: &str| value(t, r#"tessera_fuse_requests_total{op="lookup"}"#).unwrap_or(0.0);
    let (before, meta_before) = (scrape(mount_port), scrape(meta_port));
    let out = run_ok(Command::new("ls").args(["-l", "--time-style=+", dir.to_str().unwrap()]));
    let (after, meta_after) = (scrape(mount_port), scrape(meta_port));
    let mut seen = 0;
    for line in out.lines().filter(|l| l.starts_with('-')) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (mode, size, name) = (w[0], w[4], w[w.len() - 1]);
        let i: usize = name.trim_start_matches('f').parse().unwrap_or_else(|_| panic!("name in {line:?}"));
        assert_eq!(size, (i % 97).to_string(), "{line}");
        let want = match i {
            0 => "-rw-r-----+",
            _ if i % 2 == 0 => "-rw-r-----",
            _ => "-rw----r--",
        };
        assert_eq!(mode, want, "{line}");
        seen += 1;
    }
    assert_eq!(seen, N, "ls -l printed {seen} files:\n{out}");
    let asked = lookups(&after) - lookups(&before);
    assert!(asked < (N / 10) as f64, "{asked} lookups for an ls -l of {N} entries");
    assert!(must(&after, r#"tessera_fuse_requests_total{op="readdirplus"}"#) >= 1.0, "{after}");
    let read = xattr_reads(&meta_after) - xattr_reads(&meta_before);
    assert!(read < (N / 10) as f64, "{read} extended attribute reads for an ls -l of {N} entries");
    // This mount sees its own change at once, although the listing said the file had none.
    let f = dir.join("f00001");
    run_ok(Command::new("setfattr").args(["-n", "user.k", "-v", "v1", f.to_str().unwrap()]));
    let got = run_ok(Command::new("getfattr").args(["--only-values", "-n", "user.k", f.to_str().unwrap()]));
    assert_eq!(got, "v1");
    let listed = run_ok(Command::new("getfattr").args(["-d", f.to_str().unwrap()]));
    assert!(listed.contains("user.k=\"v1\""), "{listed}");
    m.stop();
    c.assert_fsck_clean();
}
