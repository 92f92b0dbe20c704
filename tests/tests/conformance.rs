//! POSIX conformance in CI: pjdfstest (scripts/pjdfstest.sh, the configuration of the shared
//! conformance script) on a `tessera dev` mount must report no failed test. The skips are
//! explained in docs/posix.md.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera_tests::*;

#[test]
fn pjdfstest_reports_no_failure() {
    let c = DevCluster::start();
    // pjdfstest acts as nobody and tests too: they must reach the mount point.
    std::fs::set_permissions(c.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // On another file system than the mount: the EXDEV tests of link and rename.
    let secondary = c.root().join("secondary");
    std::fs::create_dir(&secondary).unwrap();
    std::fs::set_permissions(&secondary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pjdfstest.sh");
    let out = run_timeout(Command::new(script).arg(&c.mnt).arg(&secondary), Duration::from_secs(1800));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let summary = text.lines().last().unwrap_or_default();
    let field = |k: &str| summary.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok());
    assert!(out.status.success(), "pjdfstest.sh failed ({}): {summary}", out.status);
    assert_eq!(field("failed="), Some(0), "{summary}");
    assert!(field("passed=").unwrap_or(0) >= 384, "fewer tests passed than before: {summary}");
    let out = c.admin(&["fsck"]);
    assert!(out.status.success(), "fsck: {}", String::from_utf8_lossy(&out.stdout));
}
