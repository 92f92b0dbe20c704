//! Test harness for Tessera's end-to-end tests: find the release binaries, start a
//! `tessera dev` cluster with a real FUSE mount, or start metadata and chunk servers and mounts
//! by hand. Everything started here is stopped (and everything mounted is unmounted) when its
//! handle is dropped, also when a test panics.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub mod cluster;
pub mod lincheck;
pub mod powerfs;

// ---------------------------------------------------------------------------------------------
// Binaries, ports, mounts, small utilities
// ---------------------------------------------------------------------------------------------

/// Path of a release binary of this workspace (`tessera`, `tessera-meta`, `tessera-chunk`).
///
/// The test executable is `<target>/release/deps/<test>-<hash>`; the binaries sit in
/// `<target>/release`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()));
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {} is missing: run scripts/test.sh, which builds the binaries first \
             (cargo build --release --workspace --bins)",
            path.display()
        );
    }
    path
}

/// A UDP port on 127.0.0.1 that nobody uses right now (QUIC listens on UDP).
pub fn free_port() -> u16 {
    unique_port(|| UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket on 127.0.0.1:0").local_addr().unwrap().port())
}

/// A TCP port on 127.0.0.1 that nothing listens on (for `--metrics`).
pub fn free_tcp_port() -> u16 {
    unique_port(|| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a TCP socket on 127.0.0.1:0").local_addr().unwrap().port())
}

/// A port from `pick` that this test has not been given before: the kernel may hand out a port
/// just released again, and two servers given one port fail in ways that look like bugs.
fn unique_port(pick: impl Fn() -> u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let p = pick();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// True when something listens on UDP 127.0.0.1:`port` (our own bind there fails).
pub fn udp_port_in_use(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// The file-system type `path` is mounted with, from /proc/mounts (the last mount there wins).
pub fn mount_fstype(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    let want = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let _src = f.next()?;
            let mp = f.next()?;
            let ty = f.next()?;
            (mp == want).then(|| ty.to_string())
        })
        .last()
}

/// True when `path` is a FUSE mount point.
pub fn is_fuse_mounted(path: &Path) -> bool {
    mount_fstype(path).is_some_and(|t| t.starts_with("fuse"))
}

/// True when anything is mounted on `path`.
pub fn is_mounted(path: &Path) -> bool {
    mount_fstype(path).is_some()
}

/// Lazily unmount `path` (as often as it is mounted there).
pub fn force_unmount(path: &Path) {
    for _ in 0..5 {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(path).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Unmounts `dir` on drop if it is still mounted (a failed assertion must not leave a mount).
pub fn unmount_on_drop(dir: &Path) -> impl Drop + '_ {
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

/// The last `n` lines of a log file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!("--- last lines of {} ---\n{}\n---", path.display(), lines[from..].join("\n"))
}

/// `GET path` on 127.0.0.1:`port` (a `--metrics` endpoint): the status line and the body.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connecting to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// The Prometheus text served on 127.0.0.1:`port`.
pub fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as printed) in a scrape, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The value of one series served on 127.0.0.1:`port`, if present.
pub fn scrape_value(port: u16, series: &str) -> Option<f64> {
    metric_value(&scrape(port), series)
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
}

/// Wait for `child` up to `timeout`; `None` when it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_for(timeout, || child.try_wait().ok().flatten())
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    sigterm(child);
    if let Some(s) = wait_timeout(child, grace) {
        return Some(s);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Run a command to completion with a deadline; stdout and stderr are captured through files
/// (not pipes, so a daemon that inherits them cannot keep us waiting). Panics on timeout.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = File::create(&out_path).unwrap();
    let err = File::create(&err_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    Output { status, stdout: std::fs::read(&out_path).unwrap(), stderr: std::fs::read(&err_path).unwrap() }
}

/// Run a command with a 60 s deadline and panic unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_timeout(cmd, Duration::from_secs(60));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Non-empty lines of a command's stderr.
pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// A log file opened for appending (stdout and stderr of a child).
fn log_file(path: &Path) -> (File, File) {
    let f = OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let g = f.try_clone().unwrap();
    (f, g)
}

/// BLAKE3 of a file's contents, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

/// `n` random bytes.
pub fn random_bytes(rng: &mut impl rand::RngCore, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A fast RNG with a random seed that is printed, so a failure can be replayed.
pub fn seeded_rng() -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("TESSERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("random seed: {seed} (set TESSERA_TEST_SEED={seed} to replay)");
    rand::rngs::SmallRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------------------------
// `tessera dev`
// ---------------------------------------------------------------------------------------------

/// A `tessera dev MOUNTPOINT --data-dir DATA_DIR` cluster in a fresh temporary directory:
/// `root/mnt` is the mount point, `root/data` the data directory, `root/dev.log` the log.
pub struct DevCluster {
    pub mnt: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    // Dropped last (after `Drop::drop` unmounted everything).
    _root: TempDir,
}

impl DevCluster {
    /// Start with the default options.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra CLI flags (e.g. `["--chunk-servers", "1"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let root = tempfile::Builder::new().prefix("tessera-dev-").tempdir().expect("tempdir");
        // /proc/mounts shows canonical paths.
        let base = root.path().canonicalize().unwrap();
        let mnt = base.join("mnt");
        let data_dir = base.join("data");
        std::fs::create_dir(&mnt).unwrap();
        let mut c = DevCluster {
            mnt,
            data_dir,
            log: base.join("dev.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            _root: root,
        };
        c.spawn();
        c
    }

    /// The temporary directory holding everything of this cluster (for scratch files that must
    /// live outside the mount).
    pub fn root(&self) -> &Path {
        self.mnt.parent().unwrap()
    }

    /// `MOUNTPOINT/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "dev cluster already running");
        assert!(!is_mounted(&self.mnt), "{} is still mounted before start", self.mnt.display());
        let (out, err) = log_file(&self.log);
        let child = Command::new(bin("tessera"))
            .arg("dev")
            .arg(&self.mnt)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning tessera dev");
        self.child = Some(child);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            if is_fuse_mounted(&self.mnt) {
                eprintln!("tessera dev mounted {} after {:?}", self.mnt.display(), started.elapsed());
                return;
            }
            let child = self.child.as_mut().unwrap();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!("tessera dev exited with {status} before mounting {}\n{}", self.mnt.display(), tail(&self.log, 40));
            }
            if Instant::now() >= deadline {
                panic!("{} was not a FUSE mount 60 s after starting tessera dev\n{}", self.mnt.display(), tail(&self.log, 40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM the cluster; assert it exits with status 0 within 30 s and unmounted.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("dev cluster is not running");
        sigterm(&child);
        let status = match wait_timeout(&mut child, Duration::from_secs(30)) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tessera dev did not exit within 30 s of SIGTERM\n{}", tail(&self.log, 40));
            }
        };
        assert!(status.success(), "tessera dev exited with {status} after SIGTERM (expected 0)\n{}", tail(&self.log, 40));
        assert!(!is_mounted(&self.mnt), "{} is still mounted after tessera dev exited", self.mnt.display());
    }

    /// Stop, then start again on the same data directory and mount point.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Crash: SIGKILL the whole cluster (servers and client die together), then clear the dead
    /// FUSE mount it leaves behind.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("dev cluster is not running");
        let _ = child.kill();
        let _ = child.wait();
        force_unmount(&self.mnt);
        assert!(!is_mounted(&self.mnt), "cannot clear the mount of the killed cluster on {}", self.mnt.display());
    }

    /// Start again on the same data directory (after [`crash`](Self::crash)).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Whether the `tessera dev` process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The variables of `DATA_DIR/cluster.env` (`TESSERA_META`, `TESSERA_CERTS`).
    pub fn env(&self) -> Vec<(String, String)> {
        let path = self.data_dir.join("cluster.env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.lines()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let l = l.strip_prefix("export ").unwrap_or(l);
                let (k, v) = l.split_once('=')?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()))
            })
            .collect()
    }

    /// `tessera ARGS` with the environment of `cluster.env`; the output, whatever the status.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("tessera"));
        cmd.args(args).env_remove("TESSERA_META").env_remove("TESSERA_CERTS");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        run_timeout(&mut cmd, Duration::from_secs(300))
    }

    /// `tessera status --json` with the environment of `cluster.env`.
    pub fn status_json(&self) -> serde_json::Value {
        let mut cmd = Command::new(bin("tessera"));
        cmd.args(["status", "--json"]).env_remove("TESSERA_META").env_remove("TESSERA_CERTS");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let out = run_ok(&mut cmd);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tessera status --json printed invalid JSON ({e}):\n{out}"))
    }

    /// A second, independent client: `tessera mount --foreground` of this cluster on
    /// `ROOT/name`, with the address and bundle of `cluster.env`. It has no cache of what the
    /// first mount wrote, so it reads from the servers.
    pub fn second_mount(&self, name: &str) -> Proc {
        let env = self.env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("cluster.env has no {k}: {env:?}"));
        let mnt = self.root().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        start_mount(&get("TESSERA_META"), Path::new(&get("TESSERA_CERTS")), &mnt, &self.root().join(format!("{name}.log")))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// `tessera fsck` reports nothing wrong (the end of every end-to-end test).
    pub fn assert_fsck_clean(&self) {
        let out = self.admin(&["fsck"]);
        assert!(out.status.success(), "fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(30));
        }
        force_unmount(&self.mnt);
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log, 60));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes started by hand
// ---------------------------------------------------------------------------------------------

/// A child process with its output in a log file; stopped (SIGTERM, then SIGKILL) on drop. A
/// mount process also gets its mount point unmounted on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    pub mountpoint: Option<PathBuf>,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let (out, err) = log_file(log);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), log: log.to_owned(), mountpoint: None, child: Some(child) }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panic (with the log) unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.exited() {
            panic!("{} exited unexpectedly with {s}\n{}", self.name, tail(&self.log, 40));
        }
    }

    /// SIGTERM and wait up to 30 s; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process already stopped");
        sigterm(&child);
        match wait_timeout(&mut child, Duration::from_secs(30)) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 30 s of SIGTERM\n{}", self.name, tail(&self.log, 40));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
        if let Some(m) = &self.mountpoint {
            force_unmount(m);
        }
    }
}

/// `tessera cert init CA_DIR`.
pub fn cert_init(ca_dir: &Path) {
    run_ok(Command::new(bin("tessera")).args(["cert", "init"]).arg(ca_dir));
}

/// `tessera cert issue CA_DIR NODE_DIR --name NAME --role ROLE --host 127.0.0.1`.
pub fn cert_issue(ca_dir: &Path, node_dir: &Path, name: &str, role: &str) {
    run_ok(
        Command::new(bin("tessera"))
            .args(["cert", "issue"])
            .arg(ca_dir)
            .arg(node_dir)
            .args(["--name", name, "--role", role, "--host", "127.0.0.1"]),
    );
}

/// Start `tessera-meta` on `127.0.0.1:port` and wait until it listens.
pub fn start_meta(data_dir: &Path, port: u16, certs: &Path, replicas: u32, log: &Path) -> Proc {
    start_meta_with(data_dir, port, certs, replicas, log, &[])
}

/// [`start_meta`] with more flags for `tessera-meta`.
pub fn start_meta_with(data_dir: &Path, port: u16, certs: &Path, replicas: u32, log: &Path, extra: &[&str]) -> Proc {
    let mut p = Proc::spawn(
        "tessera-meta",
        Command::new(bin("tessera-meta"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--certs")
            .arg(certs)
            .arg("--replicas")
            .arg(replicas.to_string())
            .args(extra),
        log,
    );
    let up = wait_for(Duration::from_secs(30), || {
        p.assert_running();
        udp_port_in_use(port).then_some(())
    });
    if up.is_none() {
        panic!("tessera-meta is not listening on 127.0.0.1:{port} after 30 s\n{}", tail(log, 40));
    }
    p
}

/// Start `tessera-chunk` on `127.0.0.1:port` and wait until it listens.
pub fn start_chunk(data_dir: &Path, port: u16, meta: &str, certs: &Path, log: &Path, extra: &[&str]) -> Proc {
    let mut p = Proc::spawn(
        "tessera-chunk",
        Command::new(bin("tessera-chunk"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--meta")
            .arg(meta)
            .arg("--certs")
            .arg(certs)
            .args(extra),
        log,
    );
    let up = wait_for(Duration::from_secs(30), || {
        p.assert_running();
        udp_port_in_use(port).then_some(())
    });
    if up.is_none() {
        panic!("tessera-chunk is not listening on 127.0.0.1:{port} after 30 s\n{}", tail(log, 40));
    }
    p
}

/// Start `tessera mount --meta META --certs CERTS MOUNTPOINT --foreground` and wait (up to 60 s)
/// until the mount point is a FUSE mount.
pub fn start_mount(meta: &str, certs: &Path, mountpoint: &Path, log: &Path) -> Proc {
    start_mount_with(meta, certs, mountpoint, log, &[])
}

/// [`start_mount`] with more flags for `tessera mount`.
pub fn start_mount_with(meta: &str, certs: &Path, mountpoint: &Path, log: &Path, extra: &[&str]) -> Proc {
    // /proc/mounts shows canonical paths.
    let mountpoint = &mountpoint.canonicalize().unwrap_or_else(|e| panic!("mount point {}: {e}", mountpoint.display()));
    let mut p = Proc::spawn(
        "tessera mount",
        Command::new(bin("tessera"))
            .arg("mount")
            .arg("--meta")
            .arg(meta)
            .arg("--certs")
            .arg(certs)
            .arg(mountpoint)
            .arg("--foreground")
            .args(extra),
        log,
    );
    p.mountpoint = Some(mountpoint.to_owned());
    let up = wait_for(Duration::from_secs(60), || {
        p.assert_running();
        is_fuse_mounted(mountpoint).then_some(())
    });
    if up.is_none() {
        panic!("{} is not a FUSE mount 60 s after tessera mount started\n{}", mountpoint.display(), tail(log, 40));
    }
    p
}

/// A cluster started by hand in a temporary directory: one CA, `tessera-meta`, a few
/// `tessera-chunk`s, and bundles for an admin and a client.
pub struct ManualCluster {
    pub ca: PathBuf,
    pub admin: PathBuf,
    pub client: PathBuf,
    pub meta_addr: String,
    pub meta: Proc,
    pub chunks: Vec<Proc>,
    /// Each chunk server's port and flags, to start it again.
    chunk_starts: Vec<(u16, Vec<String>)>,
    /// Canonical path of `root`.
    base: PathBuf,
    _root: TempDir,
}

impl ManualCluster {
    pub fn start(chunks: usize, replicas: u32) -> Self {
        Self::start_with(chunks, replicas, &[], |_| Vec::new())
    }

    /// [`start`](Self::start) with more flags for the metadata server and for chunk server `i`.
    pub fn start_with(chunks: usize, replicas: u32, meta_extra: &[&str], chunk_extra: impl Fn(usize) -> Vec<String>) -> Self {
        let root = tempfile::Builder::new().prefix("tessera-manual-").tempdir().expect("tempdir");
        let base = root.path().canonicalize().unwrap();
        let r = base.as_path();
        let ca = r.join("ca");
        cert_init(&ca);
        cert_issue(&ca, &r.join("certs/meta"), "meta-1", "meta");
        cert_issue(&ca, &r.join("certs/admin"), "admin", "admin");
        cert_issue(&ca, &r.join("certs/client"), "client-1", "client");
        let meta_port = free_port();
        let meta_addr = format!("127.0.0.1:{meta_port}");
        let meta = start_meta_with(&r.join("meta"), meta_port, &r.join("certs/meta"), replicas, &r.join("meta.log"), meta_extra);
        let mut procs = Vec::new();
        let mut chunk_starts = Vec::new();
        for i in 0..chunks {
            let certs = r.join(format!("certs/chunk{i}"));
            cert_issue(&ca, &certs, &format!("chunk-{i}"), "chunk");
            let mut args = vec!["--zone".to_string(), format!("z{i}"), "--capacity".into(), (64u64 << 30).to_string()];
            args.extend(chunk_extra(i));
            let port = free_port();
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            procs.push(start_chunk(&r.join(format!("chunk{i}")), port, &meta_addr, &certs, &r.join(format!("chunk{i}.log")), &a));
            chunk_starts.push((port, args));
        }
        let c = ManualCluster { ca, admin: r.join("certs/admin"), client: r.join("certs/client"), meta_addr, meta, chunks: procs, chunk_starts, base: base.clone(), _root: root };
        let ready = wait_for(Duration::from_secs(30), || {
            let out = c.status_output(&c.admin);
            if !out.status.success() {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let up = v["nodes"].as_array()?.iter().filter(|n| n["state"] == "up").count();
            (up == chunks).then_some(())
        });
        if ready.is_none() {
            panic!(
                "the cluster did not report {chunks} chunk servers up within 30 s\nlast status: {:?}\n{}",
                c.status_output(&c.admin),
                tail(&c.meta.log, 40)
            );
        }
        c
    }

    pub fn root(&self) -> &Path {
        &self.base
    }

    /// Start chunk server `i` again (after a stop or a crash) on its data, port and flags.
    pub fn restart_chunk(&mut self, i: usize) {
        let (port, args) = &self.chunk_starts[i];
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = &self.base;
        self.chunks[i] = start_chunk(&r.join(format!("chunk{i}")), *port, &self.meta_addr, &r.join(format!("certs/chunk{i}")), &r.join(format!("chunk{i}-2.log")), &a);
    }

    /// Panic (with its log) if the metadata server or a chunk server has exited.
    pub fn assert_running(&mut self) {
        self.meta.assert_running();
        for c in &mut self.chunks {
            c.assert_running();
        }
    }

    /// `tessera status --meta ADDR --certs CERTS --json` (30 s deadline).
    pub fn status_output(&self, certs: &Path) -> Output {
        self.tessera(&["status", "--json"], certs)
    }

    /// `tessera ARGS --meta ADDR --certs CERTS` (30 s deadline).
    pub fn tessera(&self, args: &[&str], certs: &Path) -> Output {
        run_timeout(
            Command::new(bin("tessera"))
                .args(args)
                .args(["--meta", &self.meta_addr, "--certs"])
                .arg(certs)
                .env_remove("TESSERA_META")
                .env_remove("TESSERA_CERTS"),
            Duration::from_secs(30),
        )
    }

    /// `tessera fsck` reports nothing wrong (the end of every end-to-end test).
    pub fn assert_fsck_clean(&self) {
        let out = self.tessera(&["fsck"], &self.admin);
        assert!(out.status.success(), "fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

/// A Python script: SQLite's integrity check of the database `argv[1]`, then the distinct rows
/// per writer of its table `t (writer, n)`, a line each.
pub const SQLITE_CHECK: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA integrity_check").fetchone()[0])
for w, c in con.execute("SELECT writer, COUNT(DISTINCT n) FROM t GROUP BY writer ORDER BY writer"):
    print(w, c)
"#;
