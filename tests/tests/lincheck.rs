//! Linearizability of the metadata service across a leader failure: three metadata servers
//! under Raft, `lin-load run` with three clients (each its own session) creating, unlinking,
//! renaming and looking up four names, while the leader is killed with SIGKILL and restarted;
//! then `lin-load check` must find a linearization of everything the clients saw. The checker
//! must also reject the same history with one read made stale, or it proves nothing.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tessera_tests::lincheck::{self, Op, Outcome, Record};
use tessera_tests::*;

/// Three metadata servers (no chunk servers: the workload touches metadata only).
struct Group {
    root: PathBuf,
    ports: Vec<u16>,
    metas: Vec<Option<Proc>>,
    admin: PathBuf,
    client: PathBuf,
    list: String,
    _dir: tempfile::TempDir,
}

impl Group {
    fn start() -> Group {
        let dir = tempfile::Builder::new().prefix("tessera-lincheck-").tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let ca = root.join("ca");
        cert_init(&ca);
        for i in 0..3 {
            cert_issue(&ca, &root.join(format!("certs/meta{i}")), &format!("meta-{i}"), "meta");
        }
        cert_issue(&ca, &root.join("certs/admin"), "admin", "admin");
        cert_issue(&ca, &root.join("certs/client"), "client-1", "client");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let list = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut g = Group { admin: root.join("certs/admin"), client: root.join("certs/client"), root, ports, metas: vec![None, None, None], list, _dir: dir };
        for i in 0..3 {
            g.start_meta(i, &format!("meta{i}.log"));
        }
        g
    }

    fn peers(&self) -> String {
        self.ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",")
    }

    fn start_meta(&mut self, i: usize, log: &str) {
        let peers = self.peers();
        let r = &self.root;
        self.metas[i] = Some(start_meta_with(&r.join(format!("meta{i}")), self.ports[i], &r.join(format!("certs/meta{i}")), 3, &r.join(log), &["--id", &(i + 1).to_string(), "--peers", &peers]));
    }

    /// The server that leads, once the others follow it with nothing missing.
    fn leader(&self) -> usize {
        let found = wait_for(Duration::from_secs(30), || {
            let out = run_timeout(Command::new(bin("tessera")).args(["status", "--json", "--meta", &self.list, "--certs"]).arg(&self.admin).env_remove("TESSERA_META"), Duration::from_secs(30));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = v["meta_servers"].as_array()?;
            let at = |r: &serde_json::Value| self.ports.iter().position(|p| r["addr"].as_str().unwrap_or("").ends_with(&format!(":{p}")));
            let lead = at(rows.iter().find(|r| r["role"] == "leader")?)?;
            (rows.len() == 3 && rows.iter().all(|r| r["lag"] == 0)).then_some(lead)
        });
        found.expect("no metadata server leads with the others caught up within 30 s")
    }

    fn kill9(&mut self, i: usize) {
        let mut p = self.metas[i].take().expect("running");
        kill(Pid::from_raw(p.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
        assert!(wait_for(Duration::from_secs(10), || p.exited()).is_some(), "meta{i} still runs after SIGKILL");
    }

    fn logs(&self) -> String {
        (0..3).map(|i| tail(&self.root.join(format!("meta{i}.log")), 30)).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.metas.clear(); // SIGTERM, wait, SIGKILL
        // TESSERA_KEEP=1 keeps the directory (logs, data, history) of a failed test, =always of any.
        let keep = std::env::var("TESSERA_KEEP").ok();
        if keep.as_deref() == Some("always") || (keep.is_some() && std::thread::panicking()) {
            eprintln!("keeping {}", self.root.display());
            std::mem::forget(std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap()));
        }
    }
}

/// The last line of a log that parses as a JSON object.
fn last_json(log: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(log).ok()?.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v.is_object()))
}

fn lin_check(file: &Path) -> (std::process::Output, serde_json::Value) {
    let out = run_timeout(Command::new(bin("lin-load")).arg("check").arg(file), Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("lin-load check printed no JSON line ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, v)
}

/// A lookup whose `Found(ino)` would certainly be illegal as `NotFound`: the create that made
/// `ino` was acknowledged before the lookup was called, and no unlink or rename away of that
/// name overlaps the time from the create's call to the lookup's return (unknown ones return
/// never, so they overlap everything after their call).
fn provably_stale_if_missed(h: &[Record]) -> Vec<usize> {
    (0..h.len()).filter(|&i| {
        let lk = &h[i];
        let (Op::Lookup(name), Outcome::Found(ino)) = (&lk.op, lk.result) else { return false };
        let Some(cr) = h.iter().find(|x| x.result == Outcome::Created(ino)) else { return false };
        matches!(&cr.op, Op::Create(n) if n == name)
            && cr.ret < lk.call
            && !h.iter().any(|x| matches!(&x.op, Op::Unlink(a) | Op::Rename(a, _) if a == name) && x.call < lk.ret && x.ret > cr.call)
    })
    .collect()
}

#[test]
fn metadata_operations_stay_linearizable_when_the_leader_is_killed() {
    let mut g = Group::start();
    let first = g.leader();
    eprintln!("meta{first} leads");
    let history = g.root.join("history.jsonl");
    let load_log = g.root.join("lin-load.log");
    let seed: u64 = std::env::var("TESSERA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("lin-load seed {seed} (TESSERA_TEST_SEED={seed} to replay)");
    let t0 = Instant::now();
    let mut load = Proc::spawn(
        "lin-load",
        Command::new(bin("lin-load"))
            .args(["run", "--meta", &g.list, "--certs"])
            .arg(&g.client)
            .args(["--seconds", "12", "--seed", &seed.to_string(), "--clients", "3", "--out"])
            .arg(&history),
        &load_log,
    );
    std::thread::sleep(Duration::from_secs(4));
    g.kill9(first);
    eprintln!("[{:.1}s] killed the leader meta{first}", t0.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    g.start_meta(first, &format!("meta{first}-2.log"));
    eprintln!("[{:.1}s] restarted meta{first}", t0.elapsed().as_secs_f64());

    let status = wait_for(Duration::from_secs(120), || load.exited()).unwrap_or_else(|| panic!("lin-load run did not finish within 120 s\n{}", tail(&load_log, 40)));
    assert!(status.success(), "lin-load run failed with {status}\n{}\n{}", tail(&load_log, 40), g.logs());
    let summary = last_json(&load_log).unwrap_or_else(|| panic!("lin-load run printed no summary\n{}", tail(&load_log, 40)));
    eprintln!("lin-load run: {summary}");
    let unknown: Vec<String> = std::fs::read_to_string(&load_log).unwrap().lines().filter(|l| l.contains("recorded as unknown")).take(10).map(str::to_string).collect();
    eprintln!("calls without an answer (at most 10):\n{}", unknown.join("\n"));
    let (out, verdict) = lin_check(&history);
    eprintln!("lin-load check: {verdict}");
    assert!(out.status.success(), "the history ({}) is not linearizable: {verdict}\n{}", history.display(), tail(&load_log, 40));
    let ops = verdict["ops"].as_u64().unwrap();
    assert!(ops > 200, "only {ops} operations in 12 s: {summary}");
    assert_eq!(summary["ops"].as_u64(), Some(ops), "run and check count the same operations");
    // The group is whole again: the new leader with the restarted server caught up.
    let second = g.leader();
    eprintln!("meta{second} leads after the kill");

    // Not vacuous: the same history with one read made stale is refused, whether the read is
    // the first such (before the kill) or the last (after it: the search must get through the
    // failover to find it).
    let h = lincheck::parse_history(&std::fs::read_to_string(&history).unwrap()).unwrap();
    let candidates = provably_stale_if_missed(&h);
    assert!(!candidates.is_empty(), "no lookup found a file long after its create returned");
    for (which, i) in [("first", candidates[0]), ("last", *candidates.last().unwrap())] {
        let mut h = h.clone();
        eprintln!("turning the {which} candidate into a miss: {}", lincheck::to_line(&h[i]));
        h[i].result = Outcome::NotFound;
        let bad = g.root.join(format!("stale-{which}.jsonl"));
        std::fs::write(&bad, h.iter().map(|r| lincheck::to_line(r) + "\n").collect::<String>()).unwrap();
        let (out, verdict) = lin_check(&bad);
        eprintln!("lin-load check of the altered history: {verdict}");
        assert_eq!(out.status.code(), Some(1), "the altered history is refused: {verdict}");
        assert_eq!(verdict["linearizable"], false);
        assert_eq!(verdict["decision"], "not linearizable", "decided, not given up: {verdict}");
    }

    for (i, p) in g.metas.iter_mut().enumerate() {
        p.as_mut().unwrap_or_else(|| panic!("meta{i} runs")).assert_running();
    }
}

#[test]
fn check_refuses_bad_lines_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("h.jsonl");
    std::fs::write(&f, "{\"client\":0,\"op\":\"create\",\"name\":\"a\",\"result\":\"created\",\"ino\":5,\"call\":1,\"ret\":2}\nnot json\n").unwrap();
    let out = run_timeout(Command::new(bin("lin-load")).arg("check").arg(&f), Duration::from_secs(30));
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{err:?}");
    assert!(err.len() == 1 && err[0].contains("line 2"), "{err:?}");
    let out = run_timeout(Command::new(bin("lin-load")).args(["run", "--seconds", "x"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
}
