//! A real database on a mount: SQLite with several writer processes at once, in WAL mode (they
//! share the memory-mapped `-shm` file and take POSIX locks) and in rollback-journal mode (a
//! `-journal` file created and deleted per transaction, locks on the database file), then an
//! integrity check and a count of every row.

use std::process::Command;
use std::time::Duration;

use tessera_tests::*;

const WRITER: &str = r#"
import sqlite3, sys
path, wid, rows, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
con = sqlite3.connect(path, timeout=60)
con.execute("PRAGMA journal_mode=" + mode)
for i in range(rows):
    con.execute("INSERT INTO t (writer, n, pad) VALUES (?, ?, ?)", (wid, i, "x" * 200))
    con.commit()
con.close()
"#;

const SETUP: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA journal_mode=" + sys.argv[2]).fetchone()[0])
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INT, n INT, pad TEXT)")
con.commit()
con.close()
"#;


fn python(args: &[&str]) -> std::process::Output {
    run_timeout(Command::new("python3").arg("-c").args(args), Duration::from_secs(600))
}

/// `writers` processes insert `rows` rows each into a database in `dir`, with journal `mode`.
fn concurrent_writers(dir: &std::path::Path, mode: &str, writers: usize, rows: usize) {
    let db = dir.join("app.db");
    let db_s = db.to_str().unwrap();
    let out = python(&[SETUP, db_s, mode]);
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), mode.to_lowercase());
    let procs: Vec<_> = (0..writers)
        .map(|w| Command::new("python3").args(["-c", WRITER, db_s, &w.to_string(), &rows.to_string(), mode]).stderr(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    for (w, p) in procs.into_iter().enumerate() {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "writer {w} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = python(&[SQLITE_CHECK, db_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ok"), "integrity_check: {text}");
    let counts: Vec<String> = lines.map(str::to_string).collect();
    let want: Vec<String> = (0..writers).map(|w| format!("{w} {rows}")).collect();
    assert_eq!(counts, want, "rows per writer");
}

fn sqlite_wal_writers(writers: usize, rows: usize) {
    let c = DevCluster::start();
    concurrent_writers(&c.mnt, "WAL", writers, rows);
    let db = c.mnt.join("app.db");
    // Each commit rewrites the WAL's partial block, so this is far more than the database
    // (the old blocks wait for garbage collection): printed, to follow.
    let st = c.status_json();
    eprintln!("database {} bytes; stored on the chunk servers: {}", std::fs::metadata(&db).unwrap().len(), st["bytes"]["stored"]);
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sqlite_wal_with_four_writer_processes() {
    sqlite_wal_writers(4, 100);
}

/// The default journal mode: each transaction creates, writes, fsyncs and deletes `app.db-journal`
/// while the writers contend for the database's locks. Timed beside a local directory.
#[test]
fn sqlite_rollback_journal_with_four_writer_processes() {
    let c = DevCluster::start();
    let local = c.root().join("local");
    std::fs::create_dir(&local).unwrap();
    let t = std::time::Instant::now();
    concurrent_writers(&local, "DELETE", 4, 50);
    let on_local = t.elapsed();
    let t = std::time::Instant::now();
    concurrent_writers(&c.mnt, "DELETE", 4, 50);
    eprintln!("TIMING sqlite rollback journal, 4 writers x 50 rows: tessera {:.2} s, local directory {:.2} s", t.elapsed().as_secs_f64(), on_local.as_secs_f64());
    assert!(!c.mnt.join("app.db-journal").exists(), "the last transaction's journal is deleted");
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck: {}", String::from_utf8_lossy(&out.stdout));
}
