//! Three metadata servers under Raft (docs/raft.md): a mount and the chunk servers hold the
//! list of them; killing the leader with SIGKILL loses no acknowledged file, and the mount goes
//! on through the new leader. A killed server restarted on its data catches up and can carry
//! the group again.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tessera_tests::cluster::{drop_page_cache, write_file_synced};
use tessera_tests::*;

struct Group {
    root: PathBuf,
    ports: Vec<u16>,
    metas: Vec<Option<Proc>>,
    admin: PathBuf,
    list: String,
    extra: Vec<String>,
    chunks: Vec<Proc>,
    /// How many servers `tessera status` should list (3 unless the test changed the group).
    members: usize,
    /// Each server's `--metrics` port, if the test asked for them.
    metrics: Option<Vec<u16>>,
    _dir: tempfile::TempDir,
}

impl Drop for Group {
    /// TESSERA_KEEP=1 keeps the directory (data and logs) of a failed test, =always of any.
    fn drop(&mut self) {
        // A failure shows the end of every log of the test (the mount's, the servers').
        if std::thread::panicking() {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
            logs.sort();
            for l in logs {
                eprintln!("{}", tail(&l, 25));
            }
        }
        let keep = std::env::var("TESSERA_KEEP").ok();
        if keep.as_deref() == Some("always") || (keep.is_some() && std::thread::panicking()) {
            eprintln!("keeping {}", self.root.display());
            std::mem::forget(std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap()));
        }
    }
}

impl Group {
    fn peers(&self) -> String {
        self.ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",")
    }

    fn start_meta(&mut self, i: usize, log: &str) {
        let mut args = vec!["--id".to_string(), (i + 1).to_string(), "--peers".into(), self.peers()];
        args.extend(self.extra.iter().cloned());
        if let Some(ports) = &self.metrics {
            args.extend(["--metrics".to_string(), format!("127.0.0.1:{}", ports[i])]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = &self.root;
        self.metas[i] = Some(start_meta_with(&r.join(format!("meta{i}")), self.ports[i], &r.join(format!("certs/meta{i}")), 3, &r.join(log), &args));
    }

    fn tessera(&self, args: &[&str], meta: &str) -> std::process::Output {
        run_timeout(Command::new(bin("tessera")).args(args).args(["--meta", meta, "--certs"]).arg(&self.admin).env_remove("TESSERA_META"), Duration::from_secs(30))
    }

    /// The metadata servers as `tessera status --json` lists them (through the leader).
    fn group(&self) -> Option<Vec<serde_json::Value>> {
        let out = self.tessera(&["status", "--json"], &self.list);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["meta_servers"].as_array().cloned()
    }

    /// The server that leads, as `tessera status` shows it, once the other running servers
    /// follow it with nothing missing.
    fn leader(&self) -> usize {
        let found = wait_for(Duration::from_secs(30), || {
            let rows = self.group()?;
            if rows.len() != self.members {
                return None;
            }
            let lead = rows.iter().find(|r| r["role"] == "leader")?;
            let addr = lead["addr"].as_str()?;
            let i = self.ports.iter().position(|p| addr.ends_with(&format!(":{p}")))?;
            let settled = rows.iter().all(|r| {
                let j = self.ports.iter().position(|p| r["addr"].as_str().unwrap_or("").ends_with(&format!(":{p}"))).unwrap();
                self.metas[j].is_none() || r["lag"] == 0
            });
            settled.then_some(i)
        });
        found.unwrap_or_else(|| panic!("no metadata server leads with the others caught up within 30 s ({} expected): {:?}", self.members, self.group()))
    }

    /// Three metadata servers (with `extra` flags), three chunk servers and a mount, listing the
    /// metadata servers leader-last (the first is most often elected: a mount starts at a
    /// follower).
    fn start(extra: &[&str]) -> (Group, Proc, PathBuf) {
        Self::start_with(extra, false)
    }

    /// As `start`; with `metrics`, each metadata server serves `--metrics` (`Group::metrics`).
    fn start_with(extra: &[&str], metrics: bool) -> (Group, Proc, PathBuf) {
        let dir = tempfile::Builder::new().prefix("tessera-raft-").tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let ca = root.join("ca");
        cert_init(&ca);
        for i in 0..3 {
            cert_issue(&ca, &root.join(format!("certs/meta{i}")), &format!("meta-{i}"), "meta");
        }
        cert_issue(&ca, &root.join("certs/admin"), "admin", "admin");
        cert_issue(&ca, &root.join("certs/client"), "client-1", "client");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let list = ports.iter().rev().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut g = Group { root: root.clone(), ports, metas: vec![None, None, None], admin: root.join("certs/admin"), list, extra, chunks: vec![], members: 3, metrics: metrics.then(|| (0..3).map(|_| free_tcp_port()).collect()), _dir: dir };
        for i in 0..3 {
            g.start_meta(i, &format!("meta{i}.log"));
        }
        for i in 0..3 {
            let certs = root.join(format!("certs/chunk{i}"));
            cert_issue(&ca, &certs, &format!("chunk-{i}"), "chunk");
            let zone = format!("z{i}");
            let c = start_chunk(&root.join(format!("chunk{i}")), free_port(), &g.list, &certs, &root.join(format!("chunk{i}.log")), &["--zone", &zone]);
            g.chunks.push(c);
        }
        let up = wait_for(Duration::from_secs(30), || {
            let out = g.tessera(&["status", "--json"], &g.list);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["nodes"].as_array()?.iter().filter(|n| n["state"] == "up").count() == 3).then_some(())
        });
        assert!(up.is_some(), "three chunk servers up within 30 s: {:?}", g.tessera(&["status"], &g.list));
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = start_mount(&g.list, &root.join("certs/client"), &mnt, &root.join("mount.log"));
        (g, m, mnt)
    }

    /// Unmount, fsck clean, nothing crashed but what was killed.
    fn finish(mut self, mut m: Proc) {
        m.stop();
        let out = self.tessera(&["fsck"], &self.list);
        assert!(out.status.success(), "fsck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for c in &mut self.chunks {
            c.assert_running();
        }
        for p in self.metas.iter_mut().flatten() {
            p.assert_running();
        }
    }

    fn id_of(&self, i: usize) -> String {
        (i + 1).to_string()
    }

    fn addr_of(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn kill9(&mut self, i: usize) {
        let mut p = self.metas[i].take().expect("running");
        kill(Pid::from_raw(p.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
        assert!(wait_for(Duration::from_secs(10), || p.exited()).is_some(), "meta{i} still runs after SIGKILL");
    }
}

fn check(files: &[(PathBuf, Vec<u8>)]) {
    for (path, data) in files {
        assert_eq!(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())), data, "{} reads back as written", path.display());
    }
}

/// Create, write and fsync one file; the time it took.
fn write_one(mnt: &Path, name: &str, rng: &mut impl rand::RngCore, files: &mut Vec<(PathBuf, Vec<u8>)>) -> Duration {
    let len = 100_000 + (rng.next_u32() % 3_000_000) as usize;
    let data = random_bytes(rng, len);
    let path = mnt.join(name);
    let t = Instant::now();
    write_file_synced(&path, &data).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    files.push((path, data));
    t.elapsed()
}

#[test]
fn killing_the_leader_loses_nothing_and_the_mount_goes_on() {
    let (mut g, m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    for k in 0..10 {
        write_one(&mnt, &format!("before-{k}"), &mut rng, &mut files);
    }
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::rename(mnt.join("before-0"), mnt.join("dir/renamed")).unwrap();
    files[0].0 = mnt.join("dir/renamed");

    // Kill the leader; the next write goes through the new one.
    let first = g.leader();
    let text = String::from_utf8_lossy(&g.tessera(&["status"], &g.list).stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains(" leader ") && text.matches(" follower ").count() == 2, "tessera status lists the group:\n{text}");
    // Given only a follower's address, a command follows it to the leader.
    let follower = format!("127.0.0.1:{}", g.ports[(first + 1) % 3]);
    let out = g.tessera(&["status", "--json"], &follower);
    assert!(out.status.success(), "tessera status --meta FOLLOWER: {}", String::from_utf8_lossy(&out.stderr));
    g.kill9(first);
    let took = write_one(&mnt, "after-kill", &mut rng, &mut files);
    eprintln!("the first write after killing the leader (meta{first}) took {took:?}");
    let second = g.leader();
    assert_ne!(second, first, "a new leader was elected");
    // The chunk servers learn the new term from their heartbeats: the old leader's deletes
    // would be refused from now on.
    let term = g.group().unwrap()[0]["term"].as_u64().unwrap();
    let fenced = wait_for(Duration::from_secs(10), || {
        (0..3).all(|i| std::fs::read_to_string(g.root.join(format!("chunk{i}/fence"))).ok().and_then(|t| t.trim().parse::<u64>().ok()) >= Some(term)).then_some(())
    });
    assert!(fenced.is_some(), "every chunk server stored term {term} within 10 s");
    check(&files);
    assert!(!mnt.join("before-0").exists(), "the rename before the kill holds");
    for k in 0..5 {
        write_one(&mnt, &format!("after-{k}"), &mut rng, &mut files);
    }

    // The killed server comes back on its data and catches up; then the second leader is
    // killed too, and the group of the restarted server and the third still serves.
    g.start_meta(first, &format!("meta{first}-2.log"));
    std::thread::sleep(Duration::from_secs(2));
    g.kill9(second);
    let took = write_one(&mnt, "after-second-kill", &mut rng, &mut files);
    eprintln!("the first write after killing the second leader (meta{second}) took {took:?}");
    check(&files);
    let names: Vec<String> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 9 + 1 + 1 + 5 + 1, "every file once, nothing else: {names:?}");

    // All three again; everything is there, and fsck finds the namespace and blocks agree.
    g.start_meta(second, &format!("meta{second}-2.log"));
    drop_page_cache();
    check(&files);
    g.finish(m);
}

#[test]
fn a_server_behind_the_compacted_log_gets_a_snapshot_and_can_lead() {
    let (mut g, m, mnt) = Group::start(&["--raft-snapshot-every", "40"]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    write_one(&mnt, "first", &mut rng, &mut files);
    let leader = g.leader();
    let behind = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    g.kill9(behind);
    // Each file is several commands (create, open, commit, close): far more than 40 entries,
    // so the log the stopped server needs is compacted away.
    for k in 0..40 {
        write_one(&mnt, &format!("while-down-{k}"), &mut rng, &mut files);
    }
    std::fs::remove_file(mnt.join("while-down-0")).unwrap();
    files.retain(|(p, _)| !p.ends_with("while-down-0"));
    g.start_meta(behind, &format!("meta{behind}-2.log"));
    let caught_up = wait_for(Duration::from_secs(30), || tail(&g.root.join(format!("meta{behind}-2.log")), 400).contains("installed a snapshot from the leader").then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    // Only the server that was behind has everything now besides the leader: stop the third,
    // write on, then kill the leader and bring the third back, which missed the last writes.
    // The server that got the snapshot must lead, and serve every file.
    g.kill9(third);
    for k in 0..3 {
        write_one(&mnt, &format!("after-snapshot-{k}"), &mut rng, &mut files);
    }
    g.kill9(leader);
    g.start_meta(third, &format!("meta{third}-2.log"));
    drop_page_cache();
    check(&files);
    assert!(!mnt.join("while-down-0").exists(), "the unlink made while the server was down holds");
    assert_eq!(g.leader(), behind, "the server that installed the snapshot leads (the other one missed writes)");
    assert!(caught_up.is_some(), "the restarted server's log mentions a snapshot install:\n{}", tail(&g.root.join(format!("meta{behind}-2.log")), 60));
    g.finish(m);
}

#[test]
fn tessera_dev_runs_three_metadata_servers_and_keeps_them_across_a_restart() {
    let mut d = DevCluster::start_with(&["--meta-servers", "3"]);
    let data = random_bytes(&mut seeded_rng(), 5 << 20);
    write_file_synced(&d.path("f"), &data).unwrap();
    let group = |d: &DevCluster| d.status_json()["meta_servers"].as_array().cloned().unwrap_or_default();
    let rows = group(&d);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1, "{rows:?}");
    let before = std::fs::read_to_string(d.data_dir.join("meta-group")).unwrap();

    d.restart();
    assert_eq!(std::fs::read_to_string(d.data_dir.join("meta-group")).unwrap(), before, "the same ids and addresses");
    assert_eq!(std::fs::read(d.path("f")).unwrap(), data);
    assert_eq!(group(&d).len(), 3);
    d.assert_fsck_clean();
    d.stop();

    // The data directory keeps its number of metadata servers.
    let out = run_timeout(Command::new(bin("tessera")).arg("dev").arg(&d.mnt).arg("--data-dir").arg(&d.data_dir), Duration::from_secs(60));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was created with several metadata servers") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn a_wiped_first_server_rejoins_the_group_instead_of_founding_a_new_one() {
    let (mut g, m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    for k in 0..5 {
        write_one(&mnt, &format!("f{k}"), &mut rng, &mut files);
    }
    // Server 1 (the one that forms a group on a first start) loses its disk.
    g.kill9(0);
    std::fs::remove_dir_all(g.root.join("meta0")).unwrap();
    write_one(&mnt, "while-wiped", &mut rng, &mut files);
    g.start_meta(0, "meta0-2.log");
    let log = g.root.join("meta0-2.log");
    let refused = wait_for(Duration::from_secs(20), || tail(&log, 200).contains("not forming a new group").then_some(()));
    assert!(refused.is_some(), "the wiped server saw the group's log elsewhere:\n{}", tail(&log, 40));
    // It is brought up to date (the leader shows no lag), and then carries the group: one
    // other server goes down, files change, the last original one goes down and the first
    // comes back behind, so only the wiped server has everything and must lead.
    let _ = g.leader();
    g.kill9(1);
    write_one(&mnt, "after-1", &mut rng, &mut files);
    g.kill9(2);
    g.start_meta(1, "meta1-2.log");
    drop_page_cache();
    check(&files);
    assert_eq!(g.leader(), 0, "the server that was wiped and brought up to date leads");
    g.start_meta(2, "meta2-2.log");
    g.finish(m);
}

#[test]
fn bad_group_flags_get_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    cert_init(&ca);
    cert_issue(&ca, &dir.path().join("meta"), "meta-1", "meta");
    let cases: &[(&[&str], &str)] = &[
        (&["--id", "4", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"], "must name this server's --id 4"),
        (&["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"], "odd number of servers"),
        (&["--id", "1", "--peers", "1=127.0.0.1:1,1=127.0.0.1:2,3=127.0.0.1:3"], "names id 1 twice"),
        (&["--id", "1", "--peers", "1=127.0.0.1:1,2=nowhere,3=127.0.0.1:3"], "is not HOST:PORT"),
        (&["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3", "--restore", "/nonexistent"], "--restore starts a group of one"),
        (&["--id", "4", "--peers", "4=127.0.0.1:4", "--join", "--restore", "/nonexistent"], "--restore starts a group of one"),
    ];
    for (args, want) in cases {
        let out = run_timeout(
            Command::new(bin("tessera-meta")).args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data")).arg("--certs").arg(dir.path().join("meta")).args(*args),
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    assert!(!dir.path().join("data/db").exists(), "a refused start created no database");

    // A server that ran alone keeps metadata in no log: it may become a group of one (and
    // grow with `tessera meta add`), not form a group of three whose others would start empty.
    let port = free_port();
    let alone = dir.path().join("alone");
    let mut p = start_meta_with(&alone, port, &dir.path().join("meta"), 3, &dir.path().join("alone.log"), &[]);
    p.stop();
    let peers = format!("1=127.0.0.1:{port},2=127.0.0.1:{},3=127.0.0.1:{}", free_port(), free_port());
    let out = run_timeout(
        Command::new(bin("tessera-meta")).args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(&alone).arg("--certs").arg(dir.path().join("meta")).args(["--id", "1", "--peers", &peers]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("start it as a group of one") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn meta_add_and_remove_change_the_group_one_server_at_a_time() {
    let (mut g, m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    for k in 0..3 {
        write_one(&mnt, &format!("f{k}"), &mut rng, &mut files);
    }
    let leader = g.leader();
    let gone = (leader + 1) % 3;
    let list = g.list.clone();
    let fails = |g: &Group, args: &[&str], want: &str| {
        let out = g.tessera(args, &list);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want) && err.trim().lines().count() == 1, "{args:?}: {err}");
    };
    // Bad changes get a one-line reason and change nothing.
    fails(&g, &["meta", "remove", "9"], "no metadata server 9 in the group");
    let nobody = format!("127.0.0.1:{}", free_port());
    fails(&g, &["meta", "add", "4", &nobody], "no metadata server answers");
    fails(&g, &["meta", "add", &g.id_of(gone), &nobody], "is a member already");
    fails(&g, &["meta", "add", "4", "nowhere"], "is not HOST:PORT");
    assert_eq!(g.group().unwrap().len(), 3, "nothing changed");

    // Remove a follower, then stop it: two servers carry on.
    let out = g.tessera(&["meta", "remove", &g.id_of(gone)], &list);
    assert!(out.status.success(), "meta remove: {}", String::from_utf8_lossy(&out.stderr));
    g.members = 2;
    let _ = g.leader();
    g.kill9(gone);
    write_one(&mnt, "two-left", &mut rng, &mut files);
    // A removed id is never used again.
    fails(&g, &["meta", "add", &g.id_of(gone), &g.addr_of(gone)], "never used again");

    // A new server (id 4) on an empty disk joins, catches up and votes.
    let ca = g.root.join("ca");
    cert_issue(&ca, &g.root.join("certs/meta3"), "meta-3", "meta");
    let port = free_port();
    g.ports.push(port);
    let peers = format!("4=127.0.0.1:{port}");
    g.metas.push(Some(start_meta_with(&g.root.join("meta3"), port, &g.root.join("certs/meta3"), 3, &g.root.join("meta3.log"), &["--id", "4", "--peers", &peers, "--join"])));
    let out = g.tessera(&["meta", "add", "4", &g.addr_of(3)], &list);
    assert!(out.status.success(), "meta add: {}\n{}", String::from_utf8_lossy(&out.stderr), tail(&g.root.join("meta3.log"), 30));
    assert!(String::from_utf8_lossy(&out.stdout).contains("metadata server 4 (127.0.0.1:"), "{}", String::from_utf8_lossy(&out.stdout));
    // Asking again for a change that is done answers as done (a retry after a lost reply).
    assert!(g.tessera(&["meta", "add", "4", &g.addr_of(3)], &list).status.success());
    g.members = 3;
    let leader = g.leader();
    let rows = g.group().unwrap();
    assert!(rows.iter().any(|r| r["id"] == 4 && r["role"] != "learner"), "server 4 votes: {rows:?}");
    assert!(!rows.iter().any(|r| r["id"].as_u64() == Some(gone as u64 + 1)), "the removed server is not listed: {rows:?}");

    // Server 4 counts: with the leader killed, the last original server and 4 are the majority.
    g.kill9(leader);
    write_one(&mnt, "after-leader-killed", &mut rng, &mut files);
    check(&files);
    g.start_meta(leader, &format!("meta{leader}-2.log"));
    let now = g.leader();

    // Removing the leader itself: it steps down, the other two elect one of them.
    let out = g.tessera(&["meta", "remove", &g.id_of(now)], &list);
    assert!(out.status.success(), "meta remove (the leader): {}", String::from_utf8_lossy(&out.stderr));
    g.members = 2;
    let next = g.leader();
    assert_ne!(next, now, "a server that was not removed leads");
    g.kill9(now);
    write_one(&mnt, "after-leader-removed", &mut rng, &mut files);
    drop_page_cache();
    check(&files);
    g.finish(m);
}

/// A server that lost its disk is started again, empty, under a new id at its old address
/// before its old id is removed (the leader still sends that id appends and heartbeats). It
/// takes none of them: it neither holds the old id's log nor votes in its name, and joins
/// under its new id once the old one is removed.
#[test]
fn a_replacement_at_the_old_address_takes_nothing_meant_for_the_old_id() {
    let (mut g, m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    write_one(&mnt, "before", &mut rng, &mut files);
    let leader = g.leader();
    let lost = (leader + 1) % 3;
    g.kill9(lost);
    let ca = g.root.join("ca");
    cert_issue(&ca, &g.root.join("certs/meta-new"), "meta-new", "meta");
    let port = g.ports[lost];
    let peers = format!("7=127.0.0.1:{port}");
    g.metas[lost] = Some(start_meta_with(&g.root.join("meta-new"), port, &g.root.join("certs/meta-new"), 3, &g.root.join("meta-new.log"), &["--id", "7", "--peers", &peers, "--join"]));
    // The leader's connection to the old server ends after 5 s of silence (the QUIC idle
    // timeout); its next messages for the old id then reach the new server.
    std::thread::sleep(Duration::from_secs(8));
    write_one(&mnt, "while-replaced", &mut rng, &mut files);
    let list = g.list.clone();
    let out = g.tessera(&["meta", "remove", &g.id_of(lost)], &list);
    assert!(out.status.success(), "meta remove: {}", String::from_utf8_lossy(&out.stderr));
    let out = g.tessera(&["meta", "add", "7", &g.addr_of(lost)], &list);
    assert!(out.status.success(), "meta add: {}\n{}", String::from_utf8_lossy(&out.stderr), tail(&g.root.join("meta-new.log"), 30));
    let _ = g.leader();
    let rows = g.group().unwrap();
    assert!(rows.iter().any(|r| r["id"] == 7 && r["role"] != "learner"), "server 7 votes: {rows:?}");
    // It counts: with the leader killed, server 7 and the last original one are the majority.
    g.kill9(leader);
    write_one(&mnt, "after", &mut rng, &mut files);
    drop_page_cache();
    check(&files);
    g.finish(m);
}

#[test]
fn a_backup_restored_into_a_group_of_one_grows_to_three_and_outlives_its_first_server() {
    let (mut g, mut m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    for k in 0..5 {
        write_one(&mnt, &format!("f{k}"), &mut rng, &mut files);
    }
    let backup = g.root.join("backup");
    let out = g.tessera(&["meta", "backup", backup.to_str().unwrap()], &g.list);
    assert!(out.status.success(), "meta backup: {}", String::from_utf8_lossy(&out.stderr));
    let mut later = Vec::new();
    write_one(&mnt, "after-backup", &mut rng, &mut later);
    m.stop();
    // Every metadata server loses its disk.
    for i in 0..3 {
        g.kill9(i);
        std::fs::remove_dir_all(g.root.join(format!("meta{i}"))).unwrap();
    }
    // Server 1 from the backup, alone; then 2 and 3 join on empty disks, one at a time.
    let peers = format!("1={}", g.addr_of(0));
    g.metas[0] = Some(start_meta_with(&g.root.join("meta0"), g.ports[0], &g.root.join("certs/meta0"), 3, &g.root.join("meta0-restored.log"), &["--id", "1", "--peers", &peers, "--restore", backup.to_str().unwrap()]));
    for i in 1..3 {
        let (id, addr) = (g.id_of(i), g.addr_of(i));
        let peers = format!("{id}={addr}");
        g.metas[i] = Some(start_meta_with(&g.root.join(format!("meta{i}")), g.ports[i], &g.root.join(format!("certs/meta{i}")), 3, &g.root.join(format!("meta{i}-joined.log")), &["--id", &id, "--peers", &peers, "--join"]));
        let out = g.tessera(&["meta", "add", &id, &addr], &g.list);
        assert!(out.status.success(), "meta add {id}: {}\n{}", String::from_utf8_lossy(&out.stderr), tail(&g.root.join("meta0-restored.log"), 30));
    }
    assert_eq!(g.leader(), 0, "the restored server leads the group it grew");
    // The joined servers got the restored namespace (as a snapshot): without server 1 they
    // serve every file of the backup, and not the one written after it.
    assert!(tail(&g.root.join("meta1-joined.log"), 2000).contains("installed a snapshot from the leader"), "server 2 got the restored namespace as a snapshot:\n{}", tail(&g.root.join("meta1-joined.log"), 40));
    g.kill9(0);
    let m = start_mount(&g.list, &g.root.join("certs/client"), &mnt, &g.root.join("mount-2.log"));
    drop_page_cache();
    check(&files);
    assert!(!mnt.join("after-backup").exists(), "a file written after the backup is not in it");
    write_one(&mnt, "after-restore", &mut rng, &mut files);
    g.start_meta(0, "meta0-2.log");
    let _ = g.leader();
    check(&files);
    g.finish(m);
}

/// The leader answers reads from its read lease (docs/raft.md) while the followers keep
/// accepting its heartbeats. Frozen (SIGSTOP) past its lease while the others elect a new
/// leader and change the namespace, it answers no read from the lease it lost when it thaws:
/// asked straight away, it names another leader or gives the new state, never the old.
#[test]
fn a_frozen_leader_answers_no_read_from_the_lease_it_lost() {
    use tessera_common::proto::meta::{MetaRequest, MetaResponse};
    use tessera_common::{net, tls, ErrorCode, ROOT_INO};
    let (mut g, m, mnt) = Group::start_with(&[], true);
    std::fs::write(mnt.join("before"), b"old").unwrap();
    let first = g.leader();
    let port = g.metrics.as_ref().unwrap()[first];
    let lease_reads = |port| scrape_value(port, r#"tessera_meta_reads_total{how="lease"}"#).unwrap_or(0.0);
    let before = lease_reads(port);
    for _ in 0..50 {
        drop_page_cache();
        assert_eq!(std::fs::read(mnt.join("before")).unwrap(), b"old");
    }
    let after = lease_reads(port);
    assert!(after - before >= 50.0, "the leader answered {} reads from its lease (of at least 100 lookups and reads)", after - before);

    // A connection to the leader made now, so that the lookups below reach it the moment it
    // runs again.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = tls::NodeCerts::load(&g.root.join("certs/client")).unwrap();
    let c = rt.block_on(async { net::RpcClient::new(net::client_endpoint(&certs).unwrap(), &g.addr_of(first), 1, Duration::from_secs(10), tls::Role::Meta) });
    assert!(matches!(rt.block_on(c.call::<_, MetaResponse>(&MetaRequest::StatFs, &[])), Ok((MetaResponse::StatFs(_), _))));

    // Freeze the leader; the others elect one of them, and the mount changes the namespace
    // through it.
    let pid = Pid::from_raw(g.metas[first].as_mut().unwrap().pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    std::fs::write(mnt.join("after"), b"new").unwrap();
    std::fs::remove_file(mnt.join("before")).unwrap();
    eprintln!("create and unlink with the leader frozen took {:?}", t.elapsed());

    // Thaw it and ask it at once.
    kill(pid, Signal::SIGCONT).unwrap();
    let (mut stale, mut answered, mut redirected) = (vec![], 0, 0);
    for k in 0..40 {
        for (name, exists) in [("after", true), ("before", false)] {
            let req = MetaRequest::Lookup { parent: ROOT_INO, name: name.as_bytes().to_vec() };
            match rt.block_on(c.call::<_, MetaResponse>(&req, &[])).map(|r| r.0) {
                Ok(MetaResponse::NotLeader { .. }) => redirected += 1,
                Ok(MetaResponse::Attr(_)) if exists => answered += 1,
                Ok(MetaResponse::Error(e)) if e.code == ErrorCode::NotFound && !exists => answered += 1,
                other => stale.push(format!("lookup {k} of {name:?}: {other:?}")),
            }
        }
    }
    assert!(stale.is_empty(), "the thawed leader answered from the old state: {stale:?}");
    eprintln!("the thawed leader answered {answered} of 80 lookups with the new state and {redirected} with NotLeader");
    assert_eq!(answered + redirected, 80);
    assert_eq!(std::fs::read(mnt.join("after")).unwrap(), b"new");
    g.finish(m);
}

/// A server elected leader answers for the chunk servers from its first answer: the ring it
/// serves is never older than the one its predecessor published (a mount that took an older,
/// empty ring failed its next write with EIO, "no chunk server is up"). Both survivors of a
/// killed leader are asked for the ring without pause from the kill until one of them has
/// answered for a while.
#[test]
fn a_new_leader_never_serves_a_ring_older_than_the_published_one() {
    use tessera_common::proto::meta::{MetaRequest, MetaResponse};
    use tessera_common::{net, tls};
    let (mut g, m, mnt) = Group::start(&[]);
    let mut rng = seeded_rng();
    let mut files = Vec::new();
    write_one(&mnt, "before", &mut rng, &mut files);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = tls::NodeCerts::load(&g.root.join("certs/client")).unwrap();
    let ask = |addr: &str| {
        let ep = rt.block_on(async { net::client_endpoint(&certs).unwrap() });
        std::sync::Arc::new(rt.block_on(async { net::RpcClient::new(ep, addr, 1, Duration::from_secs(10), tls::Role::Meta) }))
    };
    let first = g.leader();
    let published = match rt.block_on(ask(&g.addr_of(first)).call::<_, MetaResponse>(&MetaRequest::GetRing, &[])) {
        Ok((MetaResponse::Ring(r), _)) => r,
        other => panic!("GetRing at the leader: {other:?}"),
    };
    assert!(published.version >= 1 && published.nodes.len() == 3, "the leader's ring: version {}, {} servers", published.version, published.nodes.len());

    let others: Vec<_> = (1..3).map(|k| ask(&g.addr_of((first + k) % 3))).collect();
    g.kill9(first);
    // (version, servers, servers up) of every ring answered, by either survivor.
    let rings = rt.block_on(async {
        let mut seen: Vec<(u64, usize, usize)> = Vec::new();
        let mut since_first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while since_first.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) && Instant::now() < deadline {
            let (a, b) = tokio::join!(others[0].call::<_, MetaResponse>(&MetaRequest::GetRing, &[]), others[1].call::<_, MetaResponse>(&MetaRequest::GetRing, &[]));
            for a in [a, b] {
                if let Ok((MetaResponse::Ring(r), _)) = a {
                    since_first.get_or_insert_with(Instant::now);
                    seen.push((r.version, r.nodes.len(), r.nodes.iter().filter(|n| n.up).count()));
                }
            }
        }
        seen
    });
    assert!(!rings.is_empty(), "a survivor answered GetRing within 30 s of the leader's death");
    let older: Vec<_> = rings.iter().filter(|(v, n, _)| *v < published.version || *n != 3).collect();
    eprintln!("{} rings answered after the kill; {} older than version {} or without the 3 servers", rings.len(), older.len(), published.version);
    assert!(older.is_empty(), "the new leader served rings older than the published one: {:?}", &older[..older.len().min(5)]);
    write_one(&mnt, "after", &mut rng, &mut files);
    check(&files);
    g.finish(m);
}
