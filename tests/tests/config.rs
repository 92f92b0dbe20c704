//! `--config FILE` on real processes (docs/config.md): servers and admin commands take their
//! settings from the file, a flag and an environment variable each override it, a bad file
//! stops a server before it starts, and a mount from a client file serves a real mount.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_tests::cluster::*;
use tessera_tests::*;

/// `bin` with no TESSERA_* variable from the test's environment (they would override files).
fn command(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TESSERA_") {
            c.env_remove(k);
        }
    }
    c
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// A CA with meta, chunk, admin and client bundles under `d`.
fn certs(d: &Path) {
    cert_init(&d.join("ca"));
    for (name, role) in [("meta", "meta"), ("chunk", "chunk"), ("admin", "admin"), ("client", "client")] {
        cert_issue(&d.join("ca"), &d.join(name), &format!("{name}-1"), role);
    }
}

/// Spawn `cmd` and wait until something listens on `port`.
fn start_listening(name: &str, cmd: &mut Command, log: &Path, port: u16) -> Proc {
    let mut p = Proc::spawn(name, cmd, log);
    let up = wait_for(Duration::from_secs(30), || {
        p.assert_running();
        udp_port_in_use(port).then_some(())
    });
    assert!(up.is_some(), "{name} is not listening on {port} after 30 s\n{}", tail(log, 40));
    p
}

/// A metadata server and a chunk server started with nothing but `--config FILE` take every
/// setting from their files: the addresses they listen on, their data directories, the
/// replica count and the zone, as `tessera --config admin.toml status` (itself configured by
/// a file) reports them.
#[test]
fn servers_started_with_a_config_file_use_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    let (mport, cport) = (free_port(), free_port());
    let meta_toml = write(&d.join("meta.toml"), &format!("# metadata server\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:{mport}\"\ncerts = \"{}\"\nreplicas = 1\ndown-after = 7\n", d.join("meta-data").display(), d.join("meta").display()));
    let chunk_toml = write(
        &d.join("chunk.toml"),
        &format!("data-dir = \"{}\"\nlisten = \"127.0.0.1:{cport}\"\nmeta = \"127.0.0.1:{mport}\"\ncerts = \"{}\"\nzone = \"rack-from-file\"\ncapacity = 268435456\n", d.join("chunk-data").display(), d.join("chunk").display()),
    );
    let admin_toml = write(&d.join("admin.toml"), &format!("meta = \"127.0.0.1:{mport}\"\ncerts = \"{}\"\n", d.join("admin").display()));

    let _meta = start_listening("tessera-meta", command("tessera-meta").arg("--config").arg(&meta_toml), &d.join("meta.log"), mport);
    assert!(d.join("meta-data/db/CURRENT").is_file(), "no RocksDB database in the data-dir the file names");
    let _chunk = start_listening("tessera-chunk", command("tessera-chunk").arg(format!("--config={}", chunk_toml.display())), &d.join("chunk.log"), cport);
    assert!(d.join("chunk-data").is_dir(), "the chunk server did not create the data-dir the file names");

    let status = wait_for(Duration::from_secs(30), || {
        let out = run_timeout(command("tessera").arg("--config").arg(&admin_toml).args(["status", "--json"]), Duration::from_secs(60));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["nodes"].as_array()?.len() == 1 && s["nodes"][0]["state"] == "up").then_some(s)
    })
    .expect("the chunk server from chunk.toml never showed up in tessera status");
    let node = &status["nodes"][0];
    assert_eq!(status["replicas"], 1, "replicas from meta.toml: {status}");
    assert_eq!(node["zone"], "rack-from-file", "zone from chunk.toml: {node}");
    assert_eq!(node["addr"], format!("127.0.0.1:{cport}").as_str(), "listen from chunk.toml: {node}");
    assert_eq!(node["capacity"], 268435456, "capacity from chunk.toml: {node}");
    let fsck = run_timeout(command("tessera").arg("--config").arg(&admin_toml).arg("fsck"), Duration::from_secs(60));
    assert!(fsck.status.success(), "tessera --config admin.toml fsck: {}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
}

/// Precedence: a flag beats the file, an environment variable beats the file, and a flag beats
/// the environment variable (seen in the address the metadata server listens on).
#[test]
fn flags_and_environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let toml = write(&d.join("meta.toml"), &format!("data-dir = \"{}\"\nlisten = \"127.0.0.1:{file_port}\"\ncerts = \"{}\"\nreplicas = 1\n", d.join("meta-data").display(), d.join("meta").display()));

    let mut flag = start_listening("tessera-meta", command("tessera-meta").arg("--config").arg(&toml).args(["--listen", &format!("127.0.0.1:{flag_port}")]), &d.join("flag.log"), flag_port);
    assert!(!udp_port_in_use(file_port), "the file's address is in use although --listen overrode it");
    flag.stop();

    let mut env = start_listening("tessera-meta", command("tessera-meta").arg("--config").arg(&toml).env("TESSERA_LISTEN", format!("127.0.0.1:{env_port}")), &d.join("env.log"), env_port);
    assert!(!udp_port_in_use(file_port), "the file's address is in use although TESSERA_LISTEN overrode it");
    env.stop();

    let both = free_port();
    let mut p = start_listening("tessera-meta", command("tessera-meta").arg("--config").arg(&toml).env("TESSERA_LISTEN", format!("127.0.0.1:{env_port}")).args(["--listen", &format!("127.0.0.1:{both}")]), &d.join("both.log"), both);
    assert!(!udp_port_in_use(env_port) && !udp_port_in_use(file_port), "--listen did not win over TESSERA_LISTEN and the file");
    p.stop();
}

/// A file with an unknown key, a bad value, or bad TOML stops the server before it starts:
/// exit status 2, one line naming the file and the key (or line), nothing listening and no
/// data directory created.
#[test]
fn a_bad_config_file_stops_the_server_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    let port = free_port();
    let good = format!("listen = \"127.0.0.1:{port}\"\ncerts = \"{}\"\nmeta = \"127.0.0.1:1\"\n", d.join("chunk").display());
    let cases = [
        ("tessera-chunk", format!("{good}data_dir = \"{}\"\n", d.join("data").display()), "unknown key 'data_dir' (did you mean 'data-dir'?"),
        ("tessera-chunk", format!("{good}data-dir = \"{}\"\nzoen = \"a\"\n", d.join("data").display()), "unknown key 'zoen'"),
        ("tessera-chunk", format!("{good}data-dir = \"{}\"\ncapacity = \"lots\"\n", d.join("data").display()), "key 'capacity': invalid value 'lots'"),
        ("tessera-chunk", format!("{good}data-dir = \"{}\"\nzone = \n", d.join("data").display()), "line 5, column 8: "),
        ("tessera-meta", format!("listen = \"127.0.0.1:{port}\"\ndata-dir = \"{}\"\nrestore = \"/backup\"\n", d.join("data").display()), "key 'restore': --restore can only be given on the command line"),
    ];
    for (i, (binary, text, want)) in cases.iter().enumerate() {
        let file = write(&d.join(format!("bad{i}.toml")), text);
        let out = run_timeout(command(binary).arg("--config").arg(&file), Duration::from_secs(30));
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(2), "{binary} with {text:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{binary} with {text:?}: not one line: {lines:?}");
        assert!(lines[0].starts_with(&format!("{binary}: {}: ", file.display())), "{binary}: the message does not name the file: {lines:?}");
        assert!(lines[0].contains(want), "{binary} with {text:?}: wanted {want:?} in {lines:?}");
        assert!(!udp_port_in_use(port), "{binary} listens although its config file was refused");
        assert!(!d.join("data").exists(), "{binary} created its data directory although its config file was refused");
    }
    let out = run_timeout(command("tessera-meta").args(["--config", "/nonexistent/meta.toml"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr_lines(&out), vec!["tessera-meta: cannot read config file /nonexistent/meta.toml: No such file or directory (os error 2)".to_string()]);
}

/// `tessera mount --config client.toml DIR`: the metadata address, the bundle and the mount
/// options come from the file; the mount serves reads and writes shared with the cluster's
/// own mount, and `umount` ends it.
#[test]
fn a_mount_from_a_client_config_file_serves_reads_and_writes() {
    let c = Cluster::start_with(ClusterOpts { chunks: 1, replicas: 1, ..Default::default() });
    let dir = c.new_mountpoint("from-file");
    let toml = write(&c.root().join("client.toml"), &format!("meta = \"{}\"\ncerts = \"{}\"\noptions = [\"noatime\", \"noexec\"]\n", c.meta_addr, c.client.display()));

    let out = run_timeout(command("tessera").args(["mount", "--config"]).arg(&toml).arg(&dir), Duration::from_secs(90));
    assert!(out.status.success(), "tessera mount --config failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _unmount = unmount_on_drop(&dir);
    let line = std::fs::read_to_string("/proc/mounts").unwrap().lines().find(|l| l.split(' ').nth(1) == dir.to_str()).map(str::to_string).expect("not mounted");
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!((f[0], f[2]), (c.meta_addr.as_str(), "fuse.tessera"), "source and type: {line}");
    assert!(f[3].split(',').any(|o| o == "noatime") && f[3].split(',').any(|o| o == "noexec"), "the file's options are not applied: {line}");

    std::fs::write(dir.join("from-config"), b"mounted from a config file").unwrap();
    assert_eq!(std::fs::read(c.path("from-config")).unwrap(), b"mounted from a config file");
    std::fs::write(c.path("to-config"), b"and back").unwrap();
    assert_eq!(std::fs::read(dir.join("to-config")).unwrap(), b"and back");

    let u = run_timeout(Command::new("umount").arg(&dir), Duration::from_secs(30));
    assert!(u.status.success(), "umount: {}", String::from_utf8_lossy(&u.stderr));
    assert!(!is_mounted(&dir));
    c.assert_fsck_clean();
}
