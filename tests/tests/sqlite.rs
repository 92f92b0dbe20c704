//! A real database on a mount: SQLite in WAL mode with several writer processes at once (they
//! share the memory-mapped `-shm` file and take POSIX locks), then an integrity check and a
//! count of every row.

use std::process::Command;
use std::time::Duration;

use tessera_tests::*;

const WRITER: &str = r#"
import sqlite3, sys
path, wid, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, timeout=60)
con.execute("PRAGMA journal_mode=WAL")
for i in range(rows):
    con.execute("INSERT INTO t (writer, n, pad) VALUES (?, ?, ?)", (wid, i, "x" * 200))
    con.commit()
con.close()
"#;

const SETUP: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, writer INT, n INT, pad TEXT)")
con.commit()
con.close()
"#;

const CHECK: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("PRAGMA integrity_check").fetchone()[0])
for w, c in con.execute("SELECT writer, COUNT(DISTINCT n) FROM t GROUP BY writer ORDER BY writer"):
    print(w, c)
"#;

fn python(args: &[&str]) -> std::process::Output {
    run_timeout(Command::new("python3").arg("-c").args(args), Duration::from_secs(600))
}

fn sqlite_wal_writers(writers: usize, rows: usize) {
    let c = DevCluster::start();
    let db = c.mnt.join("app.db");
    let db_s = db.to_str().unwrap();
    let out = python(&[SETUP, db_s]);
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wal");
    let procs: Vec<_> = (0..writers)
        .map(|w| Command::new("python3").args(["-c", WRITER, db_s, &w.to_string(), &rows.to_string()]).stderr(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    for (w, p) in procs.into_iter().enumerate() {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "writer {w} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = python(&[CHECK, db_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ok"), "integrity_check: {text}");
    let counts: Vec<String> = lines.map(str::to_string).collect();
    let want: Vec<String> = (0..writers).map(|w| format!("{w} {rows}")).collect();
    assert_eq!(counts, want, "rows per writer");
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
