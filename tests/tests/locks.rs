//! Locks across two mounts of one cluster: `flock`, `fcntl` byte ranges, `F_GETLK`, a waiting
//! `F_SETLKW` (woken by the unlock, ended by a signal), and a mount killed while it holds a
//! lock and an unlinked open file (both released when its lease runs out).
//!
//! The lockers are small python3 processes (`LOCKER`), so each lock has a real process and
//! pid as its owner.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_tests::*;

/// `locker PATH OP START LEN`: open PATH read-write, do OP, print one line (`ok`, `EAGAIN`,
/// `EINTR`, or for `getlk` the lock in the way), then hold what it got until stdin closes.
const LOCKER: &str = r#"
import fcntl, os, signal, struct, sys
path, op, start, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR)
def flock(t): return struct.pack("hhqqi4x", t, 0, start, length, 0)
def out(s):
    sys.stdout.write(s + "\n"); sys.stdout.flush()
class Alarm(Exception): pass
def alarm(*_): raise Alarm()
try:
    if op == "flock_ex_nb": fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif op == "wr_nb": fcntl.fcntl(fd, fcntl.F_SETLK, flock(fcntl.F_WRLCK))
    elif op == "ofd_wr_nb": fcntl.fcntl(fd, 37, flock(fcntl.F_WRLCK))  # F_OFD_SETLK
    elif op == "rd_nb": fcntl.fcntl(fd, fcntl.F_SETLK, flock(fcntl.F_RDLCK))
    elif op == "wr_wait": fcntl.fcntl(fd, fcntl.F_SETLKW, flock(fcntl.F_WRLCK))
    elif op == "wr_wait_alarm":
        signal.signal(signal.SIGALRM, alarm); signal.alarm(1)
        fcntl.fcntl(fd, fcntl.F_SETLKW, flock(fcntl.F_WRLCK))
    elif op == "getlk":
        t, _, s, l, p = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, flock(fcntl.F_WRLCK)))
        out("getlk %s %d %d %d" % ({fcntl.F_UNLCK: "unlck", fcntl.F_WRLCK: "wr", fcntl.F_RDLCK: "rd"}[t], s, l, p)); sys.exit(0)
    out("ok")
except Alarm:
    out("EINTR"); sys.exit(0)
except OSError as e:
    out({11: "EAGAIN", 13: "EAGAIN", 4: "EINTR"}.get(e.errno, "errno %d" % e.errno)); sys.exit(0)
sys.stdin.read()
"#;

struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Locker {
    fn start(path: &Path, op: &str, start: u64, len: u64) -> Locker {
        let mut child = Command::new("python3")
            .args(["-c", LOCKER])
            .arg(path)
            .args([op, &start.to_string(), &len.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        Locker { child, stdin, out }
    }

    /// Its one line of result.
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close stdin: it exits, its file closes, its locks go.
    fn release(mut self) {
        drop(self.stdin.take());
        let status = wait_timeout(&mut self.child, Duration::from_secs(20)).expect("the locker did not exit");
        assert!(status.success());
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run OP once (holding nothing afterwards) and return its line.
fn try_lock(path: &Path, op: &str, start: u64, len: u64) -> String {
    let mut l = Locker::start(path, op, start, len);
    let line = l.line();
    l.release();
    line
}

/// A cluster with a short session lease, a file `f` in it, and a second mount.
fn two_mounts(extra: &[&str]) -> (DevCluster, Proc, PathBuf) {
    let mut args = vec!["--session-lease", "3"];
    args.extend_from_slice(extra);
    let c = DevCluster::start_with(&args);
    std::fs::write(c.path("f"), vec![7u8; 1000]).unwrap();
    let b = c.second_mount("b");
    let bmnt = b.mountpoint.clone().unwrap();
    (c, b, bmnt)
}

#[test]
fn flock_through_one_mount_blocks_the_other_until_released() {
    let (c, _b, bmnt) = two_mounts(&[]);
    let mut a = Locker::start(&c.path("f"), "flock_ex_nb", 0, 0);
    assert_eq!(a.line(), "ok");
    assert_eq!(try_lock(&bmnt.join("f"), "flock_ex_nb", 0, 0), "EAGAIN", "flock -n through B while A holds it");
    // A process of the same mount is refused too (the kernel asks the server).
    assert_eq!(try_lock(&c.path("f"), "flock_ex_nb", 0, 0), "EAGAIN");
    a.release();
    // The release is sent when A's file closes; the next try through B gets it.
    let got = wait_for(Duration::from_secs(10), || (try_lock(&bmnt.join("f"), "flock_ex_nb", 0, 0) == "ok").then_some(()));
    assert!(got.is_some(), "B never got the flock after A released it");
    c.assert_fsck_clean();
}

#[test]
fn byte_ranges_conflict_only_where_they_overlap_and_getlk_names_the_holder() {
    let (c, _b, bmnt) = two_mounts(&[]);
    let bf = bmnt.join("f");
    let mut a = Locker::start(&c.path("f"), "wr_nb", 0, 100);
    assert_eq!(a.line(), "ok");
    // Beside A's range: granted; inside it, read or write: EAGAIN.
    let mut b = Locker::start(&bf, "wr_nb", 100, 100);
    assert_eq!(b.line(), "ok", "a write lock on [100, 200) next to A's [0, 100)");
    assert_eq!(try_lock(&bf, "wr_nb", 50, 10), "EAGAIN");
    assert_eq!(try_lock(&bf, "rd_nb", 99, 1), "EAGAIN");
    // F_GETLK through B reports A's lock and pid.
    assert_eq!(try_lock(&bf, "getlk", 10, 5), format!("getlk wr 0 100 {}", a.pid()));
    assert_eq!(try_lock(&bf, "getlk", 150, 1), format!("getlk wr 100 100 {}", b.pid()));
    // Nothing in the way: F_UNLCK, the range left as asked.
    assert_eq!(try_lock(&bf, "getlk", 200, 10), "getlk unlck 200 10 0");
    a.release();
    let free = wait_for(Duration::from_secs(10), || (try_lock(&bf, "rd_nb", 0, 100) == "ok").then_some(()));
    assert!(free.is_some(), "A's range stayed locked after A closed the file");
    b.release();
    // OFD locks reach the server too: one through A blocks a byte-range lock through B.
    let mut ofd = Locker::start(&c.path("f"), "ofd_wr_nb", 500, 10);
    assert_eq!(ofd.line(), "ok");
    assert_eq!(try_lock(&bf, "wr_nb", 505, 1), "EAGAIN", "an OFD lock through A did not block B");
    ofd.release();
    c.assert_fsck_clean();
}

#[test]
fn a_waiting_setlkw_is_woken_by_the_unlock_and_ended_by_a_signal() {
    let (c, _b, bmnt) = two_mounts(&[]);
    let mut a = Locker::start(&c.path("f"), "wr_nb", 0, 0);
    assert_eq!(a.line(), "ok");
    // A signal ends the wait with EINTR (the handler raises): about 1 s, not the lock's life.
    let t = Instant::now();
    assert_eq!(try_lock(&bmnt.join("f"), "wr_wait_alarm", 0, 10), "EINTR");
    assert!(t.elapsed() < Duration::from_secs(8), "the interrupted wait took {:?}", t.elapsed());
    // SIGKILL ends a waiter too (it does not hang in the kernel waiting for the lock).
    let mut killed = Locker::start(&bmnt.join("f"), "wr_wait", 0, 10);
    std::thread::sleep(Duration::from_millis(500));
    killed.child.kill().unwrap();
    assert!(wait_timeout(&mut killed.child, Duration::from_secs(5)).is_some(), "a SIGKILLed F_SETLKW waiter did not exit");
    let mut w = Locker::start(&bmnt.join("f"), "wr_wait", 0, 10);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.child.try_wait().unwrap().is_none(), "F_SETLKW returned while A held the lock");
    let unlocked = Instant::now();
    a.release();
    assert_eq!(w.line(), "ok");
    let woke = unlocked.elapsed();
    assert!(woke < Duration::from_secs(5), "the waiter was woken {woke:?} after the unlock");
    eprintln!("F_SETLKW returned {woke:?} after the unlock");
    // It holds the lock now.
    assert_eq!(try_lock(&c.path("f"), "wr_nb", 5, 1), "EAGAIN");
    w.release();
    c.assert_fsck_clean();
}

fn stored(c: &DevCluster) -> u64 {
    c.status_json()["bytes"]["stored"].as_u64().unwrap()
}

fn status_mounts(c: &DevCluster) -> Vec<serde_json::Value> {
    c.status_json()["mounts"].as_array().expect("status lists mounts").clone()
}

#[test]
fn a_killed_mount_loses_its_lock_and_unlinked_open_file_when_its_lease_runs_out() {
    let (c, mut b, bmnt) = two_mounts(&["--gc-grace", "1", "--replicas", "1", "--chunk-servers", "1"]);
    let big = bmnt.join("big");
    let mut rng = seeded_rng();
    std::fs::write(&big, random_bytes(&mut rng, 9 << 20)).unwrap();
    let files_before = c.status_json()["files"].as_u64().unwrap();
    assert!(wait_for(Duration::from_secs(10), || (stored(&c) >= 9 << 20).then_some(())).is_some(), "the file's blocks are not stored");
    // Through B: hold a lock on f, and keep `big` open after unlinking it.
    let mut held = Locker::start(&bmnt.join("f"), "wr_nb", 0, 0);
    assert_eq!(held.line(), "ok");
    let open = std::fs::File::open(&big).unwrap();
    std::fs::remove_file(&big).unwrap();
    assert_eq!(try_lock(&c.path("f"), "wr_nb", 0, 1), "EAGAIN");
    let mounts = status_mounts(&c);
    assert_eq!(mounts.len(), 2, "{mounts:#?}");
    let bm = mounts.iter().find(|m| m["locks"] == 1).unwrap_or_else(|| panic!("no mount with the lock: {mounts:#?}"));
    assert_eq!((bm["open_files"].as_u64(), bm["orphans"].as_u64(), bm["cert"].as_str()), (Some(2), Some(1), Some("admin")), "{bm:#?}");
    assert!(bm["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{bm:#?}");
    let bsession = bm["session"].as_u64().unwrap();
    // Kill the mount process: no unmount, no goodbye.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.pid().unwrap() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = wait_for(Duration::from_secs(10), || b.exited());
    drop(held);
    drop(open);
    force_unmount(&bmnt);
    let started = Instant::now();
    let gone = wait_for(Duration::from_secs(30), || (!status_mounts(&c).iter().any(|m| m["session"] == bsession)).then_some(()));
    assert!(gone.is_some(), "the killed mount's session is still listed 30 s later");
    let expired_after = started.elapsed();
    assert!(expired_after >= Duration::from_secs(1), "expired {expired_after:?} after the kill: before its lease could run out");
    assert_eq!(try_lock(&c.path("f"), "wr_nb", 0, 1), "ok", "the lock of the expired mount is still held");
    assert_eq!(c.status_json()["files"].as_u64().unwrap(), files_before - 1, "the unlinked file is still counted");
    c.assert_fsck_clean();
    assert_eq!(c.status_json()["blocks"]["total"].as_u64(), Some(0), "blocks still referenced");
    // Unreferenced, they are collected (the grace is 1 s; passes also run every second).
    let collected = wait_for(Duration::from_secs(20), || {
        assert!(c.admin(&["gc", "--wait"]).status.success());
        (stored(&c) == 0).then_some(())
    });
    assert!(collected.is_some(), "{} bytes still stored after the orphan was dropped", stored(&c));
}

#[test]
fn a_file_unlinked_through_b_stays_readable_and_writable_through_a() {
    use std::os::unix::fs::FileExt;
    let (c, _b, bmnt) = two_mounts(&["--replicas", "1", "--chunk-servers", "1"]);
    let mut rng = seeded_rng();
    let data = random_bytes(&mut rng, 5 << 20);
    std::fs::write(c.path("g"), &data).unwrap();
    let files_before = c.status_json()["files"].as_u64().unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(c.path("g")).unwrap();
    std::fs::remove_file(bmnt.join("g")).unwrap();
    assert!(!bmnt.join("g").exists(), "the name is still there on B");
    // A's kernel may trust its cached name for up to a second.
    assert!(wait_for(Duration::from_secs(3), || (!c.path("g").exists()).then_some(())).is_some(), "the name is still there on A");
    // A's descriptor still reads the whole file, writes, fsyncs and reads its write back.
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0).expect("reading the unlinked file through A");
    assert!(got == data, "the unlinked file's bytes changed");
    f.write_all_at(b"still here", 4 << 20).unwrap();
    f.sync_all().expect("fsync of the unlinked file");
    let mut back = [0u8; 10];
    f.read_exact_at(&mut back, 4 << 20).unwrap();
    assert_eq!(&back, b"still here");
    assert_eq!(c.status_json()["files"].as_u64().unwrap(), files_before, "kept while open through A");
    drop(f);
    let freed = wait_for(Duration::from_secs(10), || (c.status_json()["files"].as_u64().unwrap() == files_before - 1).then_some(()));
    assert!(freed.is_some(), "the file was not dropped after A closed it");
    assert_eq!(c.status_json()["blocks"]["total"].as_u64(), Some(0));
    c.assert_fsck_clean();
    let _ = std::io::stderr().flush();
}


/// A mount that is frozen (SIGSTOP) past its lease loses its session at the metadata server;
/// thawed, it opens a new one and registers its open files again, so a descriptor it held
/// keeps working: write, fsync and read back, and the new session is listed with the file.
///
/// The descriptor is held by a python process, not by this test: while the mount is frozen,
/// every close of a descriptor of it waits for the mount (FUSE flushes at each close, even the
/// close-on-exec of a child being spawned), so this process must hold none to run `status`.
#[test]
fn a_mount_frozen_past_its_lease_renews_its_session_and_keeps_its_open_file() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const HOLDER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
sys.stdin.readline()
os.pwrite(fd, b"after the thaw", 100)
os.fsync(fd)
print(os.pread(fd, 14, 100).decode(), flush=True)
sys.stdin.readline()
"#;
    let (c, b, bmnt) = two_mounts(&["--replicas", "1", "--chunk-servers", "1"]);
    let pid = Pid::from_raw(b.pid().unwrap() as i32);
    let mut holder = Command::new("python3").args(["-c", HOLDER]).arg(bmnt.join("f")).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3");
    let mut to = holder.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(holder.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines() {
            let _ = tx.send(l.unwrap_or_default());
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).as_deref(), Ok("open"));
    let before = status_mounts(&c).iter().find(|m| m["open_files"] == 1).map(|m| m["session"].clone());
    let before = before.unwrap_or_else(|| panic!("no mount lists the open file: {:#?}", status_mounts(&c)));
    kill(pid, Signal::SIGSTOP).unwrap();
    let expired = wait_for(Duration::from_secs(30), || (!status_mounts(&c).iter().any(|m| m["session"] == before)).then_some(()));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(expired.is_some(), "the frozen mount's session did not expire within 30 s (lease 3 s)");
    writeln!(to, "go").unwrap();
    let got = rx.recv_timeout(Duration::from_secs(60));
    if got.is_err() {
        let _ = holder.kill();
    }
    assert_eq!(got.as_deref(), Ok("after the thaw"), "write, fsync and read back through the thawed mount");
    let renewed = wait_for(Duration::from_secs(10), || status_mounts(&c).into_iter().find(|m| m["open_files"] == 1 && m["session"] != before));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(renewed.is_some(), "no new session lists the open file: {:#?}", status_mounts(&c));
    let back = std::fs::read(c.path("f")).unwrap();
    assert_eq!(&back[100..114], b"after the thaw", "the other mount does not see the fsynced write");
    drop(b);
    c.assert_fsck_clean();
}

/// `racers PATH PROCS ROUNDS`: PROCS processes open PATH at the same moment and each takes a
/// read lock right away (as every SQLite connection does on its first read), ROUNDS times;
/// prints each failed lock, then how many failed.
const RACERS: &str = r#"
import fcntl, os, struct, sys, multiprocessing as mp
path, procs, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bar = mp.Barrier(procs)
def work(i, q):
    bad = 0
    for r in range(rounds):
        bar.wait()
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 1 << 30, 1, 0))
        except OSError as e:
            bad += 1
            print("process %d round %d: %s" % (i, r, e), file=sys.stderr)
        os.close(fd)
        bar.wait()
    q.put(bad)
q = mp.Queue()
ps = [mp.Process(target=work, args=(i, q)) for i in range(procs)]
for p in ps: p.start()
failed = sum(q.get() for _ in ps)
for p in ps: p.join()
print(failed)
"#;

/// An open that joins another process's open of the same file (the mount reports only the
/// first to the metadata server) is ready to lock when it returns. It used to return before
/// the first open's report was applied, and a lock taken at once was refused as "not open"
/// (EINVAL): SQLite's "disk I/O error" in one of four writers.
#[test]
fn a_lock_taken_right_after_an_open_that_joined_another_is_granted() {
    let c = DevCluster::start();
    let path = c.path("db");
    std::fs::write(&path, b"x").unwrap();
    let out = run_timeout(Command::new("python3").args(["-c", RACERS]).arg(&path).args(["16", "400"]), Duration::from_secs(300));
    assert!(out.status.success(), "racers: {}", String::from_utf8_lossy(&out.stderr));
    let failed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(failed, "0", "locks refused right after open:\n{}", String::from_utf8_lossy(&out.stderr));
    c.assert_fsck_clean();
}
