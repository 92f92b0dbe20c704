//! A multi-process Tessera cluster for replication and failure tests: one CA, a `tessera-meta`
//! with short failure-detection timeouts, N `tessera-chunk`s (each in its own zone, with fast
//! repair scans) and a `tessera mount --foreground` client. Servers can be killed with SIGKILL,
//! restarted on their old data and added while the cluster runs. Everything is stopped (and the
//! mount point always unmounted) when the `Cluster` is dropped, also when a test panics; on a
//! panic the tails of every process's log are printed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{bin, cert_init, cert_issue, force_unmount, free_port, is_mounted, run_timeout, start_chunk, start_mount, tail, udp_port_in_use, wait_for, Proc};

/// The file-system block size (the default, which the metadata server is started with).
pub const BLOCK_SIZE: usize = 4 << 20;

/// Cluster parameters.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub chunks: usize,
    pub replicas: u32,
    pub write_quorum: Option<u32>,
    /// `tessera-meta --down-after` seconds.
    pub down_after: u64,
    /// `tessera-meta --out-after` seconds.
    pub out_after: u64,
    /// `tessera-chunk --scan-interval` seconds.
    pub scan_interval: u64,
    /// `tessera-chunk --repair-rate` MB/s.
    pub repair_rate: u64,
    /// `tessera-chunk --capacity` bytes (the same for every server, so shares are equal).
    pub capacity: u64,
    /// More `tessera-meta` arguments (e.g. `--gc-grace`).
    pub meta_args: Vec<String>,
    /// Data directories for the first chunk servers (e.g. small file systems the test
    /// mounted); the others get one under the cluster's root.
    pub data_dirs: Vec<PathBuf>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts { chunks: 5, replicas: 3, write_quorum: None, down_after: 3, out_after: 10, scan_interval: 2, repair_rate: 200, capacity: 64 << 30, meta_args: Vec::new(), data_dirs: Vec::new() }
    }
}

/// One chunk server: its place on disk and on the network stay the same across restarts.
pub struct ChunkNode {
    pub name: String,
    pub zone: String,
    pub data_dir: PathBuf,
    pub certs: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    proc: Option<Proc>,
}

impl ChunkNode {
    /// `127.0.0.1:PORT`, the address the server registers (and `status` shows).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The node id as `tessera status` prints it (16 hex digits), from `DATA_DIR/node.id`.
    pub fn node_id(&self) -> Option<String> {
        let s = std::fs::read_to_string(self.data_dir.join("node.id")).ok()?;
        let id: u64 = s.trim().parse().ok()?;
        Some(format!("{id:016x}"))
    }

    /// Hex ids of the block files in `DATA_DIR/blocks/xx/`.
    pub fn block_files(&self) -> HashSet<String> {
        block_files_in(&self.data_dir)
    }
}

/// Hex ids of the block files under `data_dir/blocks/xx/`.
pub fn block_files_in(data_dir: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    let Ok(top) = std::fs::read_dir(data_dir.join("blocks")) else { return out };
    for sub in top.flatten() {
        let Ok(rd) = std::fs::read_dir(sub.path()) else { continue };
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(name);
            }
        }
    }
    out
}

/// The block ids (hex) of a file with these contents: BLAKE3 of every `BLOCK_SIZE` piece.
pub fn block_ids_of(data: &[u8]) -> Vec<String> {
    data.chunks(BLOCK_SIZE).map(|c| blake3::hash(c).to_hex().to_string()).collect()
}

/// Serialises the clusters of this file across nextest's test processes: each cluster is a
/// dozen processes on a 2-core machine, and the failure timeouts are tight.
struct RunLock {
    _file: File,
}

impl RunLock {
    fn take() -> Self {
        let path = std::env::temp_dir().join("tessera-cluster-tests.lock");
        let f = File::options().create(true).truncate(false).read(true).write(true).open(&path).expect("opening the cluster lock file");
        use std::os::fd::AsRawFd;
        let t = Instant::now();
        // SAFETY: a valid open file descriptor.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock {}", path.display());
        if t.elapsed() > Duration::from_secs(1) {
            eprintln!("waited {:?} for another cluster test to finish", t.elapsed());
        }
        RunLock { _file: f }
    }
}

pub struct Cluster {
    pub opts: ClusterOpts,
    pub ca: PathBuf,
    pub admin: PathBuf,
    pub client: PathBuf,
    pub meta_addr: String,
    pub meta_log: PathBuf,
    /// The mount point of the cluster's client.
    pub mnt: PathBuf,
    pub mount_log: PathBuf,
    pub chunks: Vec<ChunkNode>,
    meta: Option<Proc>,
    mount: Option<Proc>,
    extra_logs: Vec<PathBuf>,
    started: Instant,
    _lock: RunLock,
    // Dropped last, after `Drop::drop` stopped and unmounted everything.
    root: TempDir,
}

impl Cluster {
    /// Start the default cluster: five chunk servers, three replicas.
    pub fn start() -> Self {
        Self::start_with(ClusterOpts::default())
    }

    pub fn start_with(opts: ClusterOpts) -> Self {
        let lock = RunLock::take();
        let root = tempfile::Builder::new().prefix("tessera-cluster-").tempdir().expect("tempdir");
        let r = root.path().to_owned();
        let ca = r.join("ca");
        cert_init(&ca);
        cert_issue(&ca, &r.join("certs/meta"), "meta-1", "meta");
        cert_issue(&ca, &r.join("certs/admin"), "admin", "admin");
        cert_issue(&ca, &r.join("certs/client"), "client-1", "client");
        let meta_port = free_port();
        let meta_addr = format!("127.0.0.1:{meta_port}");
        let mnt = r.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut c = Cluster {
            opts: opts.clone(),
            ca,
            admin: r.join("certs/admin"),
            client: r.join("certs/client"),
            meta_addr,
            meta_log: r.join("meta.log"),
            mnt,
            mount_log: r.join("mount.log"),
            chunks: Vec::new(),
            meta: None,
            mount: None,
            extra_logs: Vec::new(),
            started: Instant::now(),
            _lock: lock,
            root,
        };
        // From here on a panic drops `c`, which stops whatever was started.
        c.spawn_meta(&r.join("meta"), &[]);
        for _ in 0..opts.chunks {
            c.spawn_new_chunk();
        }
        let n = opts.chunks;
        let ready = c.wait_until(Duration::from_secs(30), |c| c.try_status().is_ok_and(|s| count_state(&s, "up") == n));
        assert!(ready, "the cluster did not report {n} chunk servers up within 30 s; last status: {:?}", c.try_status());
        c.mount = Some(start_mount(&c.meta_addr, &c.client, &c.mnt, &c.mount_log));
        eprintln!("cluster of {n} chunk servers up and mounted at {} after {:?}", c.mnt.display(), c.started.elapsed());
        c
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Start `tessera-meta` on `data_dir` (with the cluster's options and `extra` arguments) at
    /// the cluster's metadata address, and wait until it listens.
    pub fn spawn_meta(&mut self, data_dir: &Path, extra: &[String]) {
        assert!(self.meta.is_none(), "tessera-meta is already running");
        let opts = &self.opts;
        let mut cmd = Command::new(bin("tessera-meta"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(&self.meta_addr)
            .arg("--certs")
            .arg(self.root().join("certs/meta"))
            .arg("--replicas")
            .arg(opts.replicas.to_string())
            .arg("--down-after")
            .arg(opts.down_after.to_string())
            .arg("--out-after")
            .arg(opts.out_after.to_string())
            .args(&opts.meta_args)
            .args(extra);
        if let Some(q) = opts.write_quorum {
            cmd.arg("--write-quorum").arg(q.to_string());
        }
        self.meta = Some(Proc::spawn("tessera-meta", &mut cmd, &self.meta_log));
        let port: u16 = self.meta_addr.rsplit_once(':').unwrap().1.parse().unwrap();
        let up = wait_for(Duration::from_secs(30), || {
            self.meta.as_mut().unwrap().assert_running();
            udp_port_in_use(port).then_some(())
        });
        assert!(up.is_some(), "tessera-meta is not listening on {} after 30 s", self.meta_addr);
    }

    /// Stop the metadata server (SIGTERM) and wait for it to exit.
    pub fn stop_meta(&mut self) {
        let mut m = self.meta.take().expect("tessera-meta is not running");
        let s = m.stop();
        eprintln!("{} stopped tessera-meta ({s})", self.t());
    }

    /// Stop the main mount (SIGTERM; asserts a clean exit) and unmount it.
    pub fn stop_mount(&mut self) {
        if let Some(mut m) = self.mount.take() {
            let s = m.stop();
            assert!(s.success(), "tessera mount exited with {s} on SIGTERM\n{}", tail(&self.mount_log, 40));
        }
        force_unmount(&self.mnt);
    }

    /// Mount the main mount point again (after [`stop_mount`](Self::stop_mount)).
    pub fn start_mount(&mut self) {
        assert!(self.mount.is_none(), "already mounted");
        self.mount = Some(start_mount(&self.meta_addr, &self.client, &self.mnt, &self.mount_log));
    }

    /// Stop chunk server `i` (SIGTERM) and wait for it to exit.
    pub fn stop_chunk(&mut self, i: usize) {
        let mut p = self.chunks[i].proc.take().unwrap_or_else(|| panic!("chunk{i} is not running"));
        p.stop();
    }

    /// A new, empty directory `ROOT/name` for another mount, canonical as /proc/mounts shows it.
    pub fn new_mountpoint(&self, name: &str) -> PathBuf {
        let dir = self.root().join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir.canonicalize().unwrap()
    }

    /// `MOUNTPOINT/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Seconds since the cluster started (for progress messages).
    pub fn t(&self) -> String {
        format!("[{:6.1}s]", self.started.elapsed().as_secs_f64())
    }

    fn chunk_args(&self, i: usize) -> Vec<String> {
        vec![
            "--zone".into(),
            self.chunks[i].zone.clone(),
            "--capacity".into(),
            self.opts.capacity.to_string(),
            "--repair-rate".into(),
            self.opts.repair_rate.to_string(),
            "--scan-interval".into(),
            self.opts.scan_interval.to_string(),
        ]
    }

    fn spawn_new_chunk(&mut self) -> usize {
        let i = self.chunks.len();
        let r = self.root().to_owned();
        let certs = r.join(format!("certs/chunk{i}"));
        cert_issue(&self.ca, &certs, &format!("chunk-{i}"), "chunk");
        self.chunks.push(ChunkNode {
            name: format!("chunk{i}"),
            zone: format!("z{i}"),
            data_dir: self.opts.data_dirs.get(i).cloned().unwrap_or_else(|| r.join(format!("chunk{i}"))),
            certs,
            port: free_port(),
            log: r.join(format!("chunk{i}.log")),
            proc: None,
        });
        self.spawn_chunk(i);
        i
    }

    fn spawn_chunk(&mut self, i: usize) {
        assert!(self.chunks[i].proc.is_none(), "chunk{i} is already running");
        let args = self.chunk_args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let n = &self.chunks[i];
        let p = start_chunk(&n.data_dir, n.port, &self.meta_addr, &n.certs, &n.log, &args);
        self.chunks[i].proc = Some(p);
    }

    /// Start one more chunk server (its own zone) and wait until the metadata server reports it
    /// up. Returns its index.
    pub fn add_chunk(&mut self) -> usize {
        let i = self.spawn_new_chunk();
        self.wait_state(i, "up", Duration::from_secs(30));
        i
    }

    /// SIGKILL chunk server `i` by its PID and reap it.
    pub fn kill9(&mut self, i: usize) {
        let mut p = self.chunks[i].proc.take().unwrap_or_else(|| panic!("chunk{i} is not running"));
        let pid = p.pid().expect("pid");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
        let gone = wait_for(Duration::from_secs(10), || p.exited());
        assert!(gone.is_some(), "chunk{i} (pid {pid}) still runs 10 s after SIGKILL");
        eprintln!("{} killed chunk{i} ({}) with SIGKILL", self.t(), self.chunks[i].addr());
        drop(p);
    }

    /// Freeze chunk server `i` (SIGSTOP: its connections stay open and silent) or thaw it
    /// (SIGCONT).
    pub fn freeze(&self, i: usize, frozen: bool) {
        let p = self.chunks[i].proc.as_ref().unwrap_or_else(|| panic!("chunk{i} is not running"));
        let pid = p.pid().expect("pid");
        kill(Pid::from_raw(pid as i32), if frozen { Signal::SIGSTOP } else { Signal::SIGCONT }).expect("kill -STOP/-CONT");
        eprintln!("{} {} chunk{i} ({})", self.t(), if frozen { "froze" } else { "thawed" }, self.chunks[i].addr());
    }

    /// `tessera fsck` exits 0: every referenced block has its copies, reference counts match.
    pub fn assert_fsck_clean(&self) {
        let out = run_timeout(
            Command::new(bin("tessera")).args(["fsck", "--meta", &self.meta_addr, "--certs"]).arg(&self.admin).env_remove("TESSERA_META").env_remove("TESSERA_CERTS"),
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    /// Start chunk server `i` again on its old data directory and port, and wait until it is up.
    pub fn restart_chunk(&mut self, i: usize) {
        self.spawn_chunk(i);
        eprintln!("{} restarted chunk{i} on its old data", self.t());
        self.wait_state(i, "up", Duration::from_secs(30));
    }

    /// Indices of the chunk servers whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.chunks.len()).filter(|&i| self.chunks[i].is_running()).collect()
    }

    /// Panic (with the log) if the metadata server, a chunk server that should run, or the mount
    /// process has exited.
    pub fn assert_running(&mut self) {
        if let Some(m) = self.meta.as_mut() {
            m.assert_running();
        }
        for n in &mut self.chunks {
            if let Some(p) = n.proc.as_mut() {
                p.assert_running();
            }
        }
        if let Some(m) = self.mount.as_mut() {
            m.assert_running();
        }
    }

    /// `tessera status --json` with the admin bundle; `Err` with the reason when it fails.
    pub fn try_status(&self) -> Result<serde_json::Value, String> {
        let t = Instant::now();
        let out = run_timeout(
            Command::new(bin("tessera"))
                .args(["status", "--json", "--meta", &self.meta_addr, "--certs"])
                .arg(&self.admin)
                .env_remove("TESSERA_META")
                .env_remove("TESSERA_CERTS"),
            Duration::from_secs(90),
        );
        if t.elapsed() > Duration::from_secs(3) {
            eprintln!("{} note: tessera status took {:?}", self.t(), t.elapsed());
        }
        if !out.status.success() {
            return Err(format!("tessera status failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("tessera status --json printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `tessera status --json`; panics when it fails.
    pub fn status_json(&self) -> serde_json::Value {
        self.try_status().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `nodes[]` entry of chunk server `i` in `status` (matched by address).
    pub fn node_json<'a>(&self, status: &'a serde_json::Value, i: usize) -> Option<&'a serde_json::Value> {
        let addr = self.chunks[i].addr();
        status["nodes"].as_array()?.iter().find(|n| n["addr"] == addr.as_str())
    }

    /// The state (`up`, `down`, `out`) of chunk server `i` in `status`.
    pub fn node_state(&self, status: &serde_json::Value, i: usize) -> Option<String> {
        self.node_json(status, i).and_then(|n| n["state"].as_str()).map(str::to_string)
    }

    /// Wait until `status` reports chunk server `i` in `state`; panics after `timeout`.
    pub fn wait_state(&self, i: usize, state: &str, timeout: Duration) {
        let t = Instant::now();
        let ok = self.wait_until(timeout, |c| c.try_status().is_ok_and(|s| c.node_state(&s, i).as_deref() == Some(state)));
        assert!(ok, "chunk{i} is not `{state}` {timeout:?} after asking; last status: {:?}", self.try_status());
        eprintln!("{} chunk{i} is {state} (waited {:?})", self.t(), t.elapsed());
    }

    /// Wait until `status` reports chunk server `i` as not `up` (`down` or `out`): status may
    /// take longer than the down-to-out interval right after a server died.
    pub fn wait_not_up(&self, i: usize, timeout: Duration) -> String {
        let t = Instant::now();
        let mut state = None;
        let ok = self.wait_until(timeout, |c| {
            state = c.try_status().ok().and_then(|s| c.node_state(&s, i));
            matches!(state.as_deref(), Some("down" | "out"))
        });
        assert!(ok, "chunk{i} is still `{state:?}` {timeout:?} after it was killed");
        let state = state.unwrap();
        eprintln!("{} chunk{i} is {state} (waited {:?})", self.t(), t.elapsed());
        state
    }

    /// Poll `cond` (every 500 ms) until it holds or `timeout` passes; returns whether it held.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `tessera node drain|remove ID` with the admin bundle; returns the command's output.
    pub fn node_admin(&self, action: &str, i: usize) -> std::process::Output {
        let id = self.chunks[i].node_id().unwrap_or_else(|| panic!("chunk{i} has no node.id"));
        run_timeout(
            Command::new(bin("tessera"))
                .args(["node", action, &id, "--meta", &self.meta_addr, "--certs"])
                .arg(&self.admin)
                .env_remove("TESSERA_META")
                .env_remove("TESSERA_CERTS"),
            Duration::from_secs(60),
        )
    }

    /// How many of the data directories of `servers` hold each of `ids` (as block files).
    pub fn copies(&self, ids: &[String], servers: &[usize]) -> BTreeMap<String, usize> {
        let held: Vec<HashSet<String>> = servers.iter().map(|&i| self.chunks[i].block_files()).collect();
        ids.iter().map(|id| (id.clone(), held.iter().filter(|h| h.contains(id)).count())).collect()
    }

    /// Which servers (indices) hold the block file `id`.
    pub fn holders(&self, id: &str) -> Vec<usize> {
        (0..self.chunks.len()).filter(|&i| self.chunks[i].data_dir.join("blocks").join(&id[..2]).join(id).is_file()).collect()
    }

    /// The ids of `ids` that do not have exactly `n` copies on `servers`, with their counts.
    pub fn wrong_copies(&self, ids: &[String], servers: &[usize], n: usize) -> Vec<(String, usize)> {
        self.copies(ids, servers).into_iter().filter(|(_, c)| *c != n).collect()
    }

    /// Block files per server, for messages.
    pub fn block_counts(&self) -> HashMap<String, usize> {
        self.chunks.iter().map(|n| (n.name.clone(), n.block_files().len())).collect()
    }

    /// Start another, independent client on `ROOT/name` (no caches from the main mount).
    pub fn extra_mount(&mut self, name: &str) -> Proc {
        let mnt = self.root().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let log = self.root().join(format!("{name}.log"));
        self.extra_logs.push(log.clone());
        start_mount(&self.meta_addr, &self.client, &mnt, &log)
    }

    /// Stop the main mount (SIGTERM; asserts a clean exit and unmount) and mount again: the new
    /// client has an empty block cache and a fresh view of the ring.
    pub fn remount(&mut self) {
        self.stop_mount();
        self.start_mount();
    }

    /// Print the tails of every log (meta, chunk servers, mounts).
    pub fn dump_logs(&self, lines: usize) {
        eprintln!("{}", tail(&self.meta_log, lines));
        for n in &self.chunks {
            eprintln!("{}", tail(&n.log, lines));
        }
        eprintln!("{}", tail(&self.mount_log, lines));
        for l in &self.extra_logs {
            eprintln!("{}", tail(l, lines));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The mount first, and always unmounted, whatever happened.
        if let Some(m) = self.mount.take() {
            drop(m); // SIGTERM, wait, SIGKILL; then `umount -l` if still mounted
        }
        force_unmount(&self.mnt);
        if is_mounted(&self.mnt) {
            eprintln!("warning: {} is still mounted", self.mnt.display());
        }
        let keep = std::env::var("TESSERA_KEEP").ok();
        if std::thread::panicking() {
            self.dump_logs(40);
        }
        // TESSERA_KEEP=1 keeps the directory (data and logs) of a failed test, =always of any.
        if keep.as_deref() == Some("always") || (keep.is_some() && std::thread::panicking()) {
            eprintln!("keeping {}", self.root.path().display());
            std::mem::forget(std::mem::replace(&mut self.root, tempfile::tempdir().unwrap()));
        }
        for n in &mut self.chunks {
            drop(n.proc.take());
        }
        drop(self.meta.take());
    }
}

/// How many nodes of a status are in `state`.
pub fn count_state(status: &serde_json::Value, state: &str) -> usize {
    status["nodes"].as_array().map(|a| a.iter().filter(|n| n["state"] == state).count()).unwrap_or(0)
}

/// `blocks.<field>` of a status as a number (`u64::MAX` when absent, so waits do not succeed).
pub fn blocks_field(status: &serde_json::Value, field: &str) -> u64 {
    status["blocks"][field].as_u64().unwrap_or(u64::MAX)
}

/// Flush dirty pages and drop the kernel's page cache, so reads go to the file system.
pub fn drop_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    match File::options().write(true).open("/proc/sys/vm/drop_caches").and_then(|mut f| f.write_all(b"3\n")) {
        Ok(()) => {}
        Err(e) => eprintln!("warning: cannot drop the page cache: {e}"),
    }
}

/// Write `data` to `path` in 1 MiB writes and fsync it.
pub fn write_file_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    for c in data.chunks(1 << 20) {
        f.write_all(c)?;
    }
    f.sync_all()?;
    Ok(())
}
