//! Power loss, simulated: the servers' data directories live on [`PowerFs`] mounts, which keep
//! what was written in memory until it is synced. A "power cut" of a server is SIGKILL, then a
//! cut of its file system (everything not synced is dropped), then a restart on what is left.
//! Every write whose `fsync` returned must read back exactly afterwards, and `tessera fsck
//! --deep` must find every copy of every block (the repair scan is kept out of the way, so it
//! cannot hide a lost copy).
//!
//! The servers' startup state (data directory layout, node id, the RocksDB files of a new
//! database) is made durable with `sync_all` before the workload, as the periodic writeback of
//! a real machine would have done: what is tested is that what the servers acknowledge later is
//! durable by their own syncs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tessera_tests::cluster::block_ids_of;
use tessera_tests::powerfs::PowerFs;
use tessera_tests::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Files up to this size are kept inline in the metadata (no blocks).
const INLINE_MAX: usize = 16 * KIB;

/// One server: its data directory (on a `PowerFs` or on the real disk) and its process. The
/// process is declared before the file system, so it is stopped before the unmount.
struct Server {
    name: String,
    data: PathBuf,
    port: u16,
    certs: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    fs: Option<PowerFs>,
}

impl Server {
    fn new(root: &Path, name: &str, on_powerfs: bool) -> Server {
        let (data, fs) = if on_powerfs {
            let mnt = root.join(format!("{name}.powerfs"));
            fs::create_dir_all(&mnt).unwrap();
            let p = PowerFs::mount(&mnt).unwrap_or_else(|e| panic!("mounting powerfs on {}: {e}", mnt.display()));
            let data = p.path().join("data");
            fs::create_dir(&data).unwrap();
            p.sync_all();
            (data, Some(p))
        } else {
            (root.join(name), None)
        };
        Server { name: name.into(), data, port: free_port(), certs: root.join(format!("certs/{name}")), log: root.join(format!("{name}.log")), proc: None, fs }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL by PID and reap.
    fn kill9(&mut self) {
        let mut p = self.proc.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = p.pid().expect("pid");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
        assert!(wait_for(Duration::from_secs(10), || p.exited()).is_some(), "{} (pid {pid}) still runs 10 s after SIGKILL", self.name);
        drop(p);
    }

    /// Drop what the server's file system had not made durable (the server must be dead).
    fn cut(&self) {
        assert!(self.proc.is_none(), "{} must be killed before its power is cut", self.name);
        self.fs.as_ref().expect("the server is not on a powerfs").power_cut();
    }

    fn sync_all(&self) {
        if let Some(f) = &self.fs {
            f.sync_all();
        }
    }
}

/// Serialises these tests across nextest's processes: each is half a dozen servers and mounts
/// on a small machine.
struct RunLock(#[allow(dead_code)] File);

impl RunLock {
    fn take() -> RunLock {
        use std::os::fd::AsRawFd;
        let f = File::options().create(true).truncate(false).write(true).open(std::env::temp_dir().join("tessera-powerloss-tests.lock")).unwrap();
        // SAFETY: a valid open file descriptor.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        RunLock(f)
    }
}

/// A metadata server and three chunk servers (three replicas, all three acknowledged before a
/// write commits, so every acknowledged block has a copy on every server), some of them on
/// power-loss file systems, and a client mount.
struct PowerCluster {
    /// Dropped first: the mount goes before the servers.
    mount: Option<Proc>,
    mnt: PathBuf,
    meta: Server,
    chunks: Vec<Server>,
    admin: PathBuf,
    client: PathBuf,
    started: Instant,
    /// Acknowledged files: path under the mount → contents hash.
    acked: BTreeMap<String, blake3::Hash>,
    /// Names that must be gone (renamed away).
    gone: Vec<String>,
    /// Block ids (hex) of the acknowledged files; with three servers and three replicas every
    /// server holds each of them.
    blocks: BTreeSet<String>,
    rng: rand::rngs::SmallRng,
    _lock: RunLock,
    root: tempfile::TempDir,
}

impl PowerCluster {
    fn start(meta_on_powerfs: bool, chunks_on_powerfs: bool) -> PowerCluster {
        Self::start_with(meta_on_powerfs, chunks_on_powerfs, true)
    }

    /// `sync_startup`: make the servers' startup state durable before the workload (see the
    /// module docs); false leaves it to the servers' own syncs.
    fn start_with(meta_on_powerfs: bool, chunks_on_powerfs: bool, sync_startup: bool) -> PowerCluster {
        let lock = RunLock::take();
        let root = tempfile::Builder::new().prefix("tessera-powerloss-").tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        let ca = r.join("ca");
        cert_init(&ca);
        cert_issue(&ca, &r.join("certs/admin"), "admin", "admin");
        cert_issue(&ca, &r.join("certs/client"), "client-1", "client");
        let meta = Server::new(&r, "meta", meta_on_powerfs);
        cert_issue(&ca, &meta.certs, "meta-1", "meta");
        let chunks: Vec<Server> = (0..3)
            .map(|i| {
                let s = Server::new(&r, &format!("chunk{i}"), chunks_on_powerfs);
                cert_issue(&ca, &s.certs, &format!("chunk-{i}"), "chunk");
                s
            })
            .collect();
        let mnt = r.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mut c = PowerCluster {
            mount: None,
            mnt,
            meta,
            chunks,
            admin: r.join("certs/admin"),
            client: r.join("certs/client"),
            started: Instant::now(),
            acked: BTreeMap::new(),
            gone: Vec::new(),
            blocks: BTreeSet::new(),
            rng: seeded_rng(),
            _lock: lock,
            root,
        };
        c.start_meta();
        for i in 0..3 {
            c.start_chunk(i);
        }
        c.wait_all_up();
        if sync_startup {
            c.meta.sync_all();
            for s in &c.chunks {
                s.sync_all();
            }
        }
        c.mount = Some(start_mount(&c.meta.addr(), &c.client, &c.mnt, &c.root.path().join("mount.log")));
        eprintln!("{} cluster up (metadata on powerfs: {meta_on_powerfs}, chunks on powerfs: {chunks_on_powerfs})", c.t());
        c
    }

    fn t(&self) -> String {
        format!("[{:6.1}s]", self.started.elapsed().as_secs_f64())
    }

    fn start_meta(&mut self) {
        let m = &self.meta;
        let mut cmd = Command::new(bin("tessera-meta"));
        cmd.arg("--data-dir").arg(&m.data).arg("--listen").arg(m.addr()).arg("--certs").arg(&m.certs).args(["--replicas", "3", "--write-quorum", "3"]);
        let mut p = Proc::spawn("tessera-meta", &mut cmd, &m.log);
        let up = wait_for(Duration::from_secs(30), || {
            p.assert_running();
            udp_port_in_use(m.port).then_some(())
        });
        assert!(up.is_some(), "tessera-meta is not listening on {} after 30 s\n{}", m.addr(), tail(&m.log, 40));
        self.meta.proc = Some(p);
    }

    fn start_chunk(&mut self, i: usize) {
        let s = &self.chunks[i];
        let zone = format!("z{i}");
        let cap = (64u64 << 30).to_string();
        // No repair scan during the test: a lost copy must show in fsck, not be quietly refilled.
        let args = ["--zone", &zone, "--capacity", &cap, "--scan-interval", "3600"];
        let p = start_chunk(&s.data, s.port, &self.meta.addr(), &s.certs, &s.log, &args);
        self.chunks[i].proc = Some(p);
    }

    fn tessera(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin("tessera"));
        cmd.args(args).arg("--meta").arg(self.meta.addr()).arg("--certs").arg(&self.admin).env_remove("TESSERA_META").env_remove("TESSERA_CERTS");
        run_timeout(&mut cmd, Duration::from_secs(120))
    }

    fn wait_all_up(&self) {
        let mut last = String::new();
        let ok = wait_for(Duration::from_secs(60), || {
            let out = self.tessera(&["status", "--json"]);
            last = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = v["nodes"].as_array()?;
            self.chunks.iter().all(|s| nodes.iter().any(|n| n["addr"] == s.addr().as_str() && n["state"] == "up")).then_some(())
        });
        assert!(ok.is_some(), "the three chunk servers are not all up 60 s after asking; last status: {last}\n{}", tail(&self.meta.log, 30));
    }

    /// Write a batch of files (and a directory, and a rename) through the mount, each file
    /// fsynced; once `fsync` returned, the file is acknowledged.
    fn write_batch(&mut self, batch: &str) {
        let sizes = [17, 3 * KIB, 200 * KIB, MIB + 5, 4 * MIB, 4 * MIB + 3 * KIB, 9 * MIB];
        let dir = batch.to_string();
        fs::create_dir(self.mnt.join(&dir)).unwrap();
        for (k, &n) in sizes.iter().enumerate() {
            let rel = format!("{dir}/f{k}");
            let data = random_bytes(&mut self.rng, n);
            let path = self.mnt.join(&rel);
            let mut f = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            f.write_all(&data).unwrap();
            f.sync_all().unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
            drop(f);
            self.acked.insert(rel, blake3::hash(&data));
            if n > INLINE_MAX {
                self.blocks.extend(block_ids_of(&data));
            }
        }
        // A rename, after which the new name is what must survive.
        let (from, to) = (format!("{dir}/f0"), format!("{dir}/renamed"));
        fs::rename(self.mnt.join(&from), self.mnt.join(&to)).unwrap();
        let h = self.acked.remove(&from).unwrap();
        self.acked.insert(to, h);
        self.gone.push(from);
        eprintln!("{} batch {batch}: {} files written and fsynced", self.t(), sizes.len());
    }

    /// Right after the cut, before the server restarts (so no repair can refill it): every
    /// acknowledged block is on chunk server `i`'s disk with the right bytes.
    fn check_disk(&self, i: usize) {
        let s = &self.chunks[i];
        let (mut missing, mut corrupt) = (Vec::new(), Vec::new());
        for id in &self.blocks {
            let p = s.data.join("blocks").join(&id[..2]).join(id);
            match fs::read(&p) {
                Ok(b) if blake3::hash(&b).to_hex().as_str() == id => {}
                Ok(b) => corrupt.push(format!("{}.. ({} bytes)", &id[..12], b.len())),
                Err(_) => missing.push(format!("{}..", &id[..12])),
            }
        }
        assert!(
            missing.is_empty() && corrupt.is_empty(),
            "after the power cut, {} lost acknowledged blocks: {} of {} missing {missing:?}, {} corrupt {corrupt:?}",
            s.name,
            missing.len(),
            self.blocks.len(),
            corrupt.len()
        );
        eprintln!("{} {}: all {} acknowledged blocks on disk after the cut", self.t(), s.name, self.blocks.len());
    }

    /// Every acknowledged file reads back exactly through a fresh mount (nothing from the first
    /// mount's caches); renamed-away names are gone; `fsck --deep` is clean.
    fn check(&self, when: &str) {
        let mnt2 = self.root.path().join("check");
        fs::create_dir_all(&mnt2).unwrap();
        let mut m = start_mount(&self.meta.addr(), &self.client, &mnt2, &self.root.path().join(format!("check-{}.log", when.replace(' ', "-"))));
        let mut bad = Vec::new();
        for (rel, want) in &self.acked {
            match hash_file(&mnt2.join(rel)) {
                Ok(h) if h == *want => {}
                Ok(_) => bad.push(format!("{rel}: different bytes")),
                Err(e) => bad.push(format!("{rel}: {e}")),
            }
        }
        for rel in &self.gone {
            if mnt2.join(rel).exists() {
                bad.push(format!("{rel}: renamed away, but back"));
            }
        }
        m.stop();
        assert!(bad.is_empty(), "after {when}: {} of {} acknowledged files are not intact: {bad:?}", bad.len(), self.acked.len());
        let out = self.tessera(&["fsck", "--deep"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("fsck: clean"), "after {when}: tessera fsck --deep is not clean ({}):\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
        eprintln!("{} after {when}: {} acknowledged files intact, fsck --deep clean", self.t(), self.acked.len());
    }
}

impl Drop for PowerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in std::iter::once(&self.meta).chain(&self.chunks) {
                eprintln!("{}", tail(&s.log, 30));
            }
            eprintln!("{}", tail(&self.root.path().join("mount.log"), 30));
        }
    }
}

#[test]
fn chunk_server_power_cut_keeps_every_acknowledged_block() {
    let mut c = PowerCluster::start(false, true);
    for i in 0..3 {
        c.write_batch(&format!("before-cut-{i}"));
        c.chunks[i].kill9();
        c.chunks[i].cut();
        c.check_disk(i);
        c.start_chunk(i);
        c.wait_all_up();
        c.check(&format!("power cut of chunk{i}"));
    }
}

#[test]
fn metadata_server_power_cut_keeps_every_acknowledged_file_and_name() {
    let mut c = PowerCluster::start(true, false);
    for round in 0..2 {
        c.write_batch(&format!("round-{round}"));
        c.meta.kill9();
        c.meta.cut();
        c.start_meta();
        c.wait_all_up();
        c.check(&format!("power cut {round} of the metadata server"));
    }
}

#[test]
fn power_cut_of_every_server_at_once_keeps_every_acknowledged_fsync() {
    let mut c = PowerCluster::start(true, true);
    c.write_batch("all");
    c.meta.kill9();
    for s in &mut c.chunks {
        s.kill9();
    }
    c.meta.cut();
    for i in 0..3 {
        c.chunks[i].cut();
        c.check_disk(i);
    }
    c.start_meta();
    for i in 0..3 {
        c.start_chunk(i);
    }
    c.wait_all_up();
    c.check("a power cut of every server");
}

#[test]
fn chunk_server_keeps_its_identity_through_a_power_cut_right_after_its_first_start() {
    let mut c = PowerCluster::start_with(false, true, false);
    let id_file = c.chunks[0].data.join("node.id");
    let before = fs::read_to_string(&id_file).unwrap();
    c.chunks[0].kill9();
    c.chunks[0].cut();
    let after = fs::read_to_string(&id_file);
    assert_eq!(after.as_deref().ok(), Some(before.as_str()), "chunk0's node id after a power cut: {after:?}");
}

#[test]
fn metadata_server_keeps_its_database_through_a_power_cut_right_after_its_first_start() {
    let mut c = PowerCluster::start_with(true, false, false);
    c.write_batch("first");
    c.meta.kill9();
    c.meta.cut();
    c.start_meta();
    c.wait_all_up();
    c.check("a power cut soon after the metadata server's first start");
}
