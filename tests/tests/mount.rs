//! End-to-end tests through a real FUSE mount of a `tessera dev` cluster (one metadata server,
//! three chunk servers, three replicas). Each test gets its own cluster in a fresh temporary
//! directory; the harness unmounts it whatever happens.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use tessera_tests::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: u64 = 1 << 30;

fn errno(e: &std::io::Error) -> String {
    format!("{e} (errno {:?})", e.raw_os_error())
}

/// Write `mib` MiB of random bytes to `path` in 1 MiB writes, fsync; return the BLAKE3 of
/// what was written.
fn write_random_file(path: &Path, mib: usize, rng: &mut impl RngCore) -> blake3::Hash {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {}", path.display(), errno(&e)));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB];
    for i in 0..mib {
        rng.fill_bytes(&mut buf);
        h.update(&buf);
        f.write_all(&buf).unwrap_or_else(|e| panic!("write of MiB {i} of {}: {}", path.display(), errno(&e)));
    }
    f.sync_all().unwrap_or_else(|e| panic!("fsync {}: {}", path.display(), errno(&e)));
    h.finalize()
}

fn assert_zeros(buf: &[u8], what: &str) {
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        panic!("{what}: expected zeros, found byte {:#04x} at offset {i}", buf[i]);
    }
}

fn assert_not_found(path: &Path) {
    match fs::symlink_metadata(path) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "stat {}: {}", path.display(), errno(&e)),
        Ok(m) => panic!("{} still exists ({:?})", path.display(), m.file_type()),
    }
    let e = File::open(path).expect_err("opening a removed file must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "open {}: {}", path.display(), errno(&e));
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {}", dir.display(), errno(&e)))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn large_file_round_trip_256mib() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let path = c.path("big.bin");

    let t = Instant::now();
    let written = write_random_file(&path, 256, &mut rng);
    eprintln!("wrote 256 MiB in {:?}", t.elapsed());

    assert_eq!(fs::metadata(&path).unwrap().len(), 256 * MIB as u64, "size after write");
    let t = Instant::now();
    let read = hash_file(&path).unwrap_or_else(|e| panic!("reading back: {}", errno(&e)));
    eprintln!("read 256 MiB in {:?}", t.elapsed());
    assert_eq!(read, written, "BLAKE3 of the bytes read back differs from the bytes written");

    // A second client has none of this in its caches: it reads from the chunk servers.
    let mut m2 = c.second_mount("mnt2");
    let other = c.root().join("mnt2/big.bin");
    assert_eq!(fs::metadata(&other).unwrap().len(), 256 * MIB as u64, "size seen by a second client");
    let t = Instant::now();
    let read2 = hash_file(&other).unwrap_or_else(|e| panic!("reading back through a second mount: {}", errno(&e)));
    eprintln!("read 256 MiB through a second mount in {:?}", t.elapsed());
    assert_eq!(read2, written, "BLAKE3 of the bytes a second client reads differs from the bytes written");
    let status = m2.stop();
    assert!(status.success(), "tessera mount exited with {status} on SIGTERM\n{}", tail(&m2.log, 40));
    assert!(!is_mounted(&c.root().join("mnt2")), "tessera mount exited but left its mount behind");
}

#[test]
fn thousand_small_files() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let dir = c.path("small");
    fs::create_dir(&dir).unwrap();

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut hashes = HashSet::new();
    while files.len() < 1000 {
        let len = rng.random_range(KIB..=10 * KIB);
        let data = random_bytes(&mut rng, len);
        if !hashes.insert(blake3::hash(&data)) {
            continue; // keep the contents distinct
        }
        files.push((format!("file-{:04}.dat", files.len()), data));
    }

    let t = Instant::now();
    for (name, data) in &files {
        fs::write(dir.join(name), data).unwrap_or_else(|e| panic!("writing {name}: {}", errno(&e)));
    }
    eprintln!("wrote 1000 files in {:?}", t.elapsed());

    for (name, data) in &files {
        let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {}", errno(&e)));
        assert_eq!(got.len(), data.len(), "size of {name}");
        assert!(got == *data, "contents of {name} differ from what was written");
    }

    // And through a second client, which reads from the servers.
    let _m2 = c.second_mount("mnt2");
    let dir2 = c.root().join("mnt2/small");
    for (name, data) in &files {
        let got = fs::read(dir2.join(name)).unwrap_or_else(|e| panic!("reading {name} through a second mount: {}", errno(&e)));
        assert!(got == *data, "contents of {name} seen by a second client differ from what was written");
    }
    assert_eq!(names(&dir2).len(), 1000, "entries listed by a second client");

    let listed = names(&dir);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1000, "read_dir entry count");
    let expected: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(listed, expected, "read_dir names");
}

#[test]
fn directories_rename_unlink_rmdir() {
    let c = DevCluster::start();

    // Nested mkdir.
    fs::create_dir_all(c.path("a/b/c/d")).unwrap();
    for p in ["a", "a/b", "a/b/c", "a/b/c/d"] {
        assert!(fs::metadata(c.path(p)).unwrap().is_dir(), "{p} is not a directory");
    }
    assert_eq!(names(&c.path("a/b")), set(&["c"]));

    // Rename a file across directories.
    fs::write(c.path("a/b/c/d/file"), b"hello across directories").unwrap();
    fs::create_dir(c.path("x")).unwrap();
    fs::rename(c.path("a/b/c/d/file"), c.path("x/moved")).unwrap();
    assert_eq!(fs::read(c.path("x/moved")).unwrap(), b"hello across directories");
    assert_not_found(&c.path("a/b/c/d/file"));
    assert!(names(&c.path("a/b/c/d")).is_empty(), "source directory still lists the moved file");

    // Rename over an existing file: the target's contents are replaced, the source is gone.
    fs::write(c.path("x/src"), b"new contents").unwrap();
    fs::write(c.path("x/dst"), b"old contents, longer than the new ones").unwrap();
    let src_ino = fs::metadata(c.path("x/src")).unwrap().ino();
    fs::rename(c.path("x/src"), c.path("x/dst")).unwrap();
    assert_eq!(fs::read(c.path("x/dst")).unwrap(), b"new contents");
    assert_eq!(fs::metadata(c.path("x/dst")).unwrap().ino(), src_ino, "target is not the renamed inode");
    assert_not_found(&c.path("x/src"));
    assert_eq!(names(&c.path("x")), set(&["dst", "moved"]));

    // Rename a directory with contents.
    fs::write(c.path("a/b/c/inner"), b"inner").unwrap();
    fs::rename(c.path("a/b"), c.path("x/b2")).unwrap();
    assert_eq!(fs::read(c.path("x/b2/c/inner")).unwrap(), b"inner");
    assert!(fs::metadata(c.path("x/b2/c/d")).unwrap().is_dir());
    assert_not_found(&c.path("a/b"));

    // Unlink.
    fs::remove_file(c.path("x/moved")).unwrap();
    assert_not_found(&c.path("x/moved"));
    assert_eq!(names(&c.path("x")), set(&["b2", "dst"]));

    // rmdir of a non-empty directory fails with ENOTEMPTY and changes nothing.
    let e = fs::remove_dir(c.path("x/b2/c")).expect_err("rmdir of a non-empty directory succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "rmdir of a non-empty directory: {}", errno(&e));
    assert_eq!(fs::read(c.path("x/b2/c/inner")).unwrap(), b"inner");

    // rmdir of an empty one succeeds.
    fs::remove_dir(c.path("x/b2/c/d")).unwrap();
    assert_not_found(&c.path("x/b2/c/d"));
    fs::remove_file(c.path("x/b2/c/inner")).unwrap();
    fs::remove_dir(c.path("x/b2/c")).unwrap();
    assert!(names(&c.path("x/b2")).is_empty());
    fs::remove_dir(c.path("a")).unwrap();
    assert_eq!(names(&c.mnt), set(&["x"]));
}

#[test]
fn truncate_append_and_sparse_write() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();

    // Truncate up: the new bytes read as zero.
    let p = c.path("t");
    let data = random_bytes(&mut rng, 10_000);
    fs::write(&p, &data).unwrap();
    OpenOptions::new().write(true).open(&p).unwrap().set_len(20_000).unwrap();
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 20_000, "size after truncate up");
    assert!(got[..10_000] == data[..], "old bytes changed by truncate up");
    assert_zeros(&got[10_000..], "bytes added by truncate up");

    // Truncate down: size and contents.
    OpenOptions::new().write(true).open(&p).unwrap().set_len(5_000).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 5_000, "size after truncate down");
    let got = fs::read(&p).unwrap();
    assert!(got == data[..5_000], "contents after truncate down");
    // Growing again must not bring the cut bytes back.
    OpenOptions::new().write(true).open(&p).unwrap().set_len(8_000).unwrap();
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 8_000);
    assert!(got[..5_000] == data[..5_000]);
    assert_zeros(&got[5_000..], "bytes past an earlier truncate point");

    // The same across block boundaries (blocks are 4 MiB): 9 MiB, cut inside the second block.
    let p = c.path("multi");
    let data = random_bytes(&mut rng, 9 * MIB);
    fs::write(&p, &data).unwrap();
    let cut = 5 * MIB + 123;
    OpenOptions::new().write(true).open(&p).unwrap().set_len(cut as u64).unwrap();
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), cut, "size after truncating a multi-block file");
    assert!(got == data[..cut], "contents after truncating a multi-block file");
    OpenOptions::new().write(true).open(&p).unwrap().set_len(9 * MIB as u64).unwrap();
    let got = fs::read(&p).unwrap();
    assert!(got[..cut] == data[..cut]);
    assert_zeros(&got[cut..], "multi-block file regrown after truncate");

    // Append.
    let p = c.path("log");
    fs::write(&p, b"first\n").unwrap();
    for line in [&b"second\n"[..], b"third\n"] {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(line).unwrap();
    }
    {
        // An append handle writes at the end even after a seek elsewhere.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(b"fourth\n").unwrap();
    }
    assert_eq!(fs::read_to_string(&p).unwrap(), "first\nsecond\nthird\nfourth\n");

    // A write at a 1 GiB offset: a hole before it.
    let p = c.path("sparse");
    let data = random_bytes(&mut rng, 100_000);
    {
        let f = File::create(&p).unwrap();
        f.write_all_at(&data, GIB).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), GIB + data.len() as u64, "size after writing at 1 GiB");
    let f = File::open(&p).unwrap();
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, GIB).unwrap();
    assert!(got == data, "data read at the 1 GiB offset differs");
    // The whole hole reads as zeros.
    let t = Instant::now();
    let mut buf = vec![0xffu8; MIB];
    let mut off = 0u64;
    while off < GIB {
        f.read_exact_at(&mut buf, off).unwrap_or_else(|e| panic!("reading the hole at {off}: {}", errno(&e)));
        assert_zeros(&buf, &format!("hole at offset {off}"));
        off += MIB as u64;
    }
    eprintln!("read the 1 GiB hole in {:?}", t.elapsed());
    // A read across the end of the hole.
    let mut edge = vec![0xffu8; 2 * KIB];
    f.read_exact_at(&mut edge, GIB - KIB as u64).unwrap();
    assert_zeros(&edge[..KIB], "last KiB of the hole");
    assert!(edge[KIB..] == data[..KIB], "first KiB of the data after the hole");
    drop(f);

    // A second client, reading from the servers, sees the same.
    let multi = fs::read(c.path("multi")).unwrap();
    let _m2 = c.second_mount("mnt2");
    let m2 = c.root().join("mnt2");
    assert_eq!(fs::read(m2.join("t")).unwrap(), fs::read(c.path("t")).unwrap(), "'t' seen by a second client");
    assert!(fs::read(m2.join("multi")).unwrap() == multi, "'multi' seen by a second client");
    assert_eq!(fs::read_to_string(m2.join("log")).unwrap(), "first\nsecond\nthird\nfourth\n", "'log' seen by a second client");
    let f = File::open(m2.join("sparse")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), GIB + data.len() as u64, "sparse size seen by a second client");
    f.read_exact_at(&mut got, GIB).unwrap();
    assert!(got == data, "data at 1 GiB seen by a second client");
    for off in [0, GIB / 2, GIB - MIB as u64] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert_zeros(&buf, &format!("hole at {off} seen by a second client"));
    }
}

#[test]
fn two_processes_write_at_once() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    // Sources outside the mount.
    let mut expected = Vec::new();
    for i in 0..2 {
        let src = c.root().join(format!("src{i}"));
        let data = random_bytes(&mut rng, 32 * MIB);
        fs::write(&src, &data).unwrap();
        expected.push((src, blake3::hash(&data)));
    }
    let mut children: Vec<_> = (0..2)
        .map(|i| {
            Command::new("dd")
                .arg(format!("if={}", expected[i].0.display()))
                .arg(format!("of={}", c.path(format!("f{i}")).display()))
                .args(["bs=1M", "conv=fsync", "status=none"])
                .spawn()
                .expect("spawning dd")
        })
        .collect();
    for (i, ch) in children.iter_mut().enumerate() {
        let status = wait_timeout(ch, Duration::from_secs(180)).unwrap_or_else(|| {
            let _ = ch.kill();
            panic!("dd {i} did not finish within 180 s");
        });
        assert!(status.success(), "dd {i} into the mount failed: {status}");
    }
    for (i, (_, want)) in expected.iter().enumerate() {
        let p = c.path(format!("f{i}"));
        assert_eq!(fs::metadata(&p).unwrap().len(), 32 * MIB as u64, "size of f{i}");
        assert_eq!(hash_file(&p).unwrap(), *want, "contents of f{i} differ from its source");
    }
    let _m2 = c.second_mount("mnt2");
    for (i, (_, want)) in expected.iter().enumerate() {
        let p = c.root().join(format!("mnt2/f{i}"));
        assert_eq!(hash_file(&p).unwrap(), *want, "contents of f{i} seen by a second client differ from its source");
    }
}

#[test]
fn ls_symlinks_and_hard_links() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let d = c.path("dir");
    fs::create_dir(&d).unwrap();
    let content = random_bytes(&mut rng, 1234);
    fs::write(d.join("file.txt"), &content).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    symlink("file.txt", d.join("link")).unwrap();

    // ls -l shows names, sizes and type markers.
    let out = run_ok(Command::new("ls").arg("-l").arg(&d).env("LC_ALL", "C"));
    let mut entries: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.starts_with("total")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 9, "unexpected ls -l line: {line:?}\n{out}");
        entries.insert(f[8..].join(" "), (f[0].to_string(), f[4].to_string()));
    }
    let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(keys, ["file.txt", "link -> file.txt", "sub"], "ls -l names:\n{out}");
    let (mode, size) = &entries["file.txt"];
    assert!(mode.starts_with("-rw-"), "file mode in ls -l: {mode}\n{out}");
    assert_eq!(size, "1234", "file size in ls -l:\n{out}");
    let (mode, size) = &entries["link -> file.txt"];
    assert!(mode.starts_with('l'), "symlink mode in ls -l: {mode}\n{out}");
    assert_eq!(size, "8", "a symlink's size is the length of its target:\n{out}");
    let (mode, _) = &entries["sub"];
    assert!(mode.starts_with('d'), "directory mode in ls -l: {mode}\n{out}");

    // Symlink round trip.
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("file.txt"));
    assert!(fs::symlink_metadata(d.join("link")).unwrap().file_type().is_symlink());
    assert!(fs::read(d.join("link")).unwrap() == content, "reading through the symlink");
    symlink("/an/absolute/target/that/does/not/exist", d.join("dangling")).unwrap();
    assert_eq!(fs::read_link(d.join("dangling")).unwrap(), Path::new("/an/absolute/target/that/does/not/exist"));
    assert_eq!(fs::metadata(d.join("dangling")).unwrap_err().raw_os_error(), Some(libc::ENOENT));

    // Hard link: link count 2 on both names, same inode, same bytes.
    fs::hard_link(d.join("file.txt"), d.join("hard")).unwrap();
    let a = fs::metadata(d.join("file.txt")).unwrap();
    let b = fs::metadata(d.join("hard")).unwrap();
    assert_eq!(a.nlink(), 2, "link count of the original after hard_link");
    assert_eq!(b.nlink(), 2, "link count of the new link");
    assert_eq!(a.ino(), b.ino(), "a hard link has the same inode");
    assert!(fs::read(d.join("hard")).unwrap() == content);
    // Removing one name leaves the other intact.
    fs::remove_file(d.join("file.txt")).unwrap();
    assert_eq!(fs::metadata(d.join("hard")).unwrap().nlink(), 1, "link count after removing one name");
    assert!(fs::read(d.join("hard")).unwrap() == content, "contents through the remaining link");
    // The symlink now dangles.
    assert_eq!(fs::read(d.join("link")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn persistence_across_restart() {
    let mut c = DevCluster::start();
    let mut rng = seeded_rng();

    let big = write_random_file(&c.path("big.bin"), 32, &mut rng);
    fs::create_dir_all(c.path("tree/a/b/c")).unwrap();
    fs::create_dir_all(c.path("tree/x/y")).unwrap();
    let mut small = Vec::new();
    for (i, dir) in ["tree", "tree/a", "tree/a/b/c", "tree/x/y", "tree/x/y"].iter().enumerate() {
        let len = rng.random_range(1..=10 * KIB);
        let name = format!("{dir}/small{i}");
        let data = random_bytes(&mut rng, len);
        let mut f = File::create(c.path(&name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        small.push((name, data));
    }
    File::create(c.path("tree/empty")).unwrap();
    symlink("a/b/c/small2", c.path("tree/link")).unwrap();
    fs::set_permissions(c.path("tree/small0"), fs::Permissions::from_mode(0o600)).unwrap();

    c.restart();

    assert_eq!(fs::metadata(c.path("big.bin")).unwrap().len(), 32 * MIB as u64);
    assert_eq!(hash_file(&c.path("big.bin")).unwrap(), big, "32 MiB file after restart");
    assert_eq!(names(&c.mnt), set(&["big.bin", "tree"]));
    assert_eq!(names(&c.path("tree")), set(&["a", "x", "small0", "empty", "link"]));
    assert_eq!(names(&c.path("tree/a")), set(&["b", "small1"]));
    assert_eq!(names(&c.path("tree/a/b")), set(&["c"]));
    assert_eq!(names(&c.path("tree/a/b/c")), set(&["small2"]));
    assert_eq!(names(&c.path("tree/x")), set(&["y"]));
    assert_eq!(names(&c.path("tree/x/y")), set(&["small3", "small4"]));
    for (name, data) in &small {
        let got = fs::read(c.path(name)).unwrap_or_else(|e| panic!("reading {name} after restart: {}", errno(&e)));
        assert!(got == *data, "{name} differs after restart");
    }
    assert_eq!(fs::metadata(c.path("tree/empty")).unwrap().len(), 0);
    assert_eq!(fs::read_link(c.path("tree/link")).unwrap(), Path::new("a/b/c/small2"));
    assert!(fs::read(c.path("tree/link")).unwrap() == small[2].1);
    assert_eq!(fs::metadata(c.path("tree/small0")).unwrap().permissions().mode() & 0o7777, 0o600, "mode after restart");

    // Still writable after the restart.
    fs::write(c.path("tree/after"), b"written after restart").unwrap();
    assert_eq!(fs::read(c.path("tree/after")).unwrap(), b"written after restart");
}

#[test]
fn name_length_limit() {
    let c = DevCluster::start();
    let long = "x".repeat(256);
    let e = File::create(c.path(&long)).expect_err("creating a 256-byte name succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "create with a 256-byte name: {}", errno(&e));
    let e = fs::create_dir(c.path(&long)).expect_err("mkdir with a 256-byte name succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "mkdir with a 256-byte name: {}", errno(&e));

    let ok = "y".repeat(255);
    let mut f = File::create(c.path(&ok)).unwrap_or_else(|e| panic!("creating a 255-byte name: {}", errno(&e)));
    f.write_all(b"max length name").unwrap();
    drop(f);
    assert_eq!(fs::read(c.path(&ok)).unwrap(), b"max length name");
    assert_eq!(names(&c.mnt), set(&[ok.as_str()]), "only the 255-byte name exists");
    let e = fs::rename(c.path(&ok), c.path(&long)).expect_err("renaming to a 256-byte name succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "rename to a 256-byte name: {}", errno(&e));
    assert_eq!(fs::read(c.path(&ok)).unwrap(), b"max length name");
}

#[test]
fn status_reports_nodes_and_bytes() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    write_random_file(&c.path("eight.bin"), 8, &mut rng);

    let v = c.status_json();
    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("no nodes[] in status: {v}"));
    assert_eq!(nodes.len(), 3, "tessera dev starts 3 chunk servers: {v}");
    for n in nodes {
        assert_eq!(n["state"], "up", "node state: {n}");
        for key in ["id", "zone", "addr", "capacity", "used", "blocks"] {
            assert!(!n[key].is_null(), "node has no {key}: {n}");
        }
        assert!(n["capacity"].as_u64().unwrap_or(0) > 0, "node capacity: {n}");
    }
    assert!(v["blocks"]["total"].as_u64().unwrap_or(0) >= 2, "8 MiB is at least two 4 MiB blocks: {v}");
    assert!(v["bytes"]["logical"].as_u64().unwrap_or(0) >= 8 * MIB as u64, "logical bytes: {v}");
    // Stored bytes come with the chunk servers' heartbeats: allow them a few seconds.
    let stored = wait_for(Duration::from_secs(15), || {
        let v = c.status_json();
        let s = v["bytes"]["stored"].as_u64()?;
        (s >= 8 * MIB as u64).then_some(s)
    });
    assert!(stored.is_some(), "stored bytes never reached 8 MiB: {}", c.status_json());
}

#[test]
fn partial_overwrites() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let p = c.path("patched");
    let size = 9 * MIB; // three 4 MiB blocks, the last one partial
    let mut model = random_bytes(&mut rng, size);
    fs::write(&p, &model).unwrap();

    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let apply = |f: &File, model: &mut Vec<u8>, off: usize, len: usize, rng: &mut rand::rngs::SmallRng| {
        let data = random_bytes(rng, len);
        f.write_all_at(&data, off as u64).unwrap_or_else(|e| panic!("pwrite of {len} bytes at {off}: {}", errno(&e)));
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&data);
    };
    // Chosen edges: the start, across the first block boundary, inside the second block, the
    // last bytes, and a write that runs past the end of the file.
    for (off, len) in [(0, 100), (4 * MIB - 50, 100), (5 * MIB + 7, 3000), (size - 10, 10), (size - 5, 20)] {
        apply(&f, &mut model, off, len, &mut rng);
    }
    // Within one mount, a reader sees the writes at once (before any fsync).
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), model.len(), "size seen by a reader before fsync");
    assert!(got == model, "contents seen by a reader before fsync differ");
    // Many small writes at random places.
    for _ in 0..200 {
        let off = rng.random_range(0..model.len());
        let len = rng.random_range(1..=8 * KIB);
        apply(&f, &mut model, off, len, &mut rng);
    }
    f.sync_all().unwrap();
    drop(f);

    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), model.len(), "size after the overwrites");
    assert!(got == model, "contents after the overwrites differ");
    let _m2 = c.second_mount("mnt2");
    let got = fs::read(c.root().join("mnt2/patched")).unwrap();
    assert_eq!(got.len(), model.len(), "size seen by a second client");
    assert!(got == model, "contents seen by a second client differ");
}

#[test]
fn unlinked_open_file_stays_readable() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let p = c.path("doomed");
    let data = random_bytes(&mut rng, 6 * MIB);
    fs::write(&p, &data).unwrap();
    let f = File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_not_found(&p);
    let mut got = vec![0u8; data.len()];
    f.read_exact_at(&mut got, 0).unwrap_or_else(|e| panic!("reading an open file after unlink: {}", errno(&e)));
    assert!(got == data, "an open file's contents changed after unlink");
    // The name can be reused at once for a new file.
    fs::write(&p, b"new file").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"new file");
    f.read_exact_at(&mut got[..4096], 0).unwrap();
    assert!(got[..4096] == data[..4096], "the unlinked file now shows the new file's bytes");
    assert_eq!(f.metadata().unwrap().nlink(), 0, "fstat of an unlinked open file shows no links");
    // After the last close the hidden name goes too (the kernel sends the release right after
    // close returns): soon the directory lists only the new file.
    drop(f);
    let want: BTreeSet<String> = ["doomed".to_string()].into_iter().collect();
    let gone = wait_for(Duration::from_secs(5), || (names(&c.mnt) == want).then_some(()));
    assert!(gone.is_some(), "5 s after the last close the directory still lists {:?}", names(&c.mnt));
}

#[test]
fn fallocate_extends_the_size() {
    let c = DevCluster::start();
    let p = c.path("pre");
    fs::write(&p, b"abc").unwrap();
    let st = Command::new("fallocate").args(["-l", "10000"]).arg(&p).status().unwrap();
    assert!(st.success(), "fallocate -l 10000 failed");
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 10000);
    assert_eq!(&got[..3], b"abc");
    assert_zeros(&got[3..], "allocated range");
    // Punching holes works now (tests/tests/dataops.rs); other modes still say they are unsupported.
    let st = Command::new("fallocate").args(["--punch-hole", "-o", "0", "-l", "2"]).arg(&p).output().unwrap();
    assert!(st.status.success(), "punch hole: {}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(fs::read(&p).unwrap()[..3], *b"\0\0c");
    let st = Command::new("fallocate").args(["--collapse-range", "-o", "0", "-l", "4096"]).arg(&p).output().unwrap();
    assert!(!st.status.success(), "collapsing ranges is not supported and must say so");
}

#[test]
fn close_to_open_between_two_mounts() {
    let c = DevCluster::start();
    let mut rng = seeded_rng();
    let _m2 = c.second_mount("mnt2");
    let other = c.root().join("mnt2");

    // Look at the file in the second mount first, so that it has something cached.
    let v1 = random_bytes(&mut rng, MIB);
    fs::write(c.path("shared"), &v1).unwrap();
    assert!(fs::read(other.join("shared")).unwrap() == v1, "a file written and closed in mount 1, opened in mount 2");

    // Rewritten (longer) and closed in mount 1: mount 2 opens it again and sees all of it.
    let v2 = random_bytes(&mut rng, 2 * MIB + 5);
    fs::write(c.path("shared"), &v2).unwrap();
    let got = fs::read(other.join("shared")).unwrap();
    assert_eq!(got.len(), v2.len(), "size of a rewritten file in the other mount");
    assert!(got == v2, "contents of a rewritten file in the other mount");

    // Rewritten shorter.
    let v3 = random_bytes(&mut rng, 1000);
    fs::write(c.path("shared"), &v3).unwrap();
    assert_eq!(fs::read(other.join("shared")).unwrap(), v3, "a shortened file in the other mount");

    // The other direction: a partial overwrite in mount 2, read in mount 1.
    {
        let f = OpenOptions::new().write(true).open(other.join("shared")).unwrap();
        f.write_all_at(b"PATCH", 100).unwrap();
    }
    let mut want = v3.clone();
    want[100..105].copy_from_slice(b"PATCH");
    assert_eq!(fs::read(c.path("shared")).unwrap(), want, "a patch made in mount 2, read in mount 1");

    // A new directory and file made in mount 2 appear in mount 1.
    fs::create_dir(other.join("d2")).unwrap();
    fs::write(other.join("d2/f"), b"from mount 2").unwrap();
    assert_eq!(fs::read(c.path("d2/f")).unwrap(), b"from mount 2");
}

#[test]
fn fsynced_data_survives_sigkill() {
    let mut c = DevCluster::start();
    let mut rng = seeded_rng();
    let big = write_random_file(&c.path("durable.bin"), 8, &mut rng);
    fs::create_dir_all(c.path("d/e")).unwrap();
    let small = random_bytes(&mut rng, 5000);
    {
        let mut f = File::create(c.path("d/e/small")).unwrap();
        f.write_all(&small).unwrap();
        f.sync_all().unwrap();
    }
    // Overwrite part of the big file and fsync: the new bytes must survive too.
    let patch = random_bytes(&mut rng, 4096);
    {
        let f = OpenOptions::new().write(true).open(c.path("durable.bin")).unwrap();
        f.write_all_at(&patch, 3 * MIB as u64).unwrap();
        f.sync_all().unwrap();
    }
    let content = fs::read(c.path("durable.bin")).unwrap();
    assert!(content[3 * MIB..3 * MIB + 4096] == patch[..], "the patch is not visible before the crash");
    assert_ne!(blake3::hash(&content), big);
    let want = blake3::hash(&content);

    c.crash();
    c.start_again();

    assert_eq!(hash_file(&c.path("durable.bin")).unwrap(), want, "fsynced file after SIGKILL");
    assert_eq!(fs::read(c.path("d/e/small")).unwrap(), small, "fsynced small file after SIGKILL");
}

#[test]
fn dev_with_one_chunk_server_and_one_replica() {
    let c = DevCluster::start_with(&["--chunk-servers", "1", "--replicas", "1"]);
    let mut rng = seeded_rng();
    let h = write_random_file(&c.path("f"), 5, &mut rng);
    assert_eq!(hash_file(&c.path("f")).unwrap(), h);
    let v = c.status_json();
    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("no nodes[] in status: {v}"));
    assert_eq!(nodes.len(), 1, "--chunk-servers 1: {v}");
    assert_eq!(nodes[0]["state"], "up", "{v}");
    assert!(v["blocks"]["total"].as_u64().unwrap_or(0) >= 2, "5 MiB is two 4 MiB blocks: {v}");
}

/// The names of an open directory stream read to its end (`readdir`), without "." and "..".
fn read_stream(dir: *mut libc::DIR) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        // SAFETY: `dir` is an open stream; the entry is read before the next call.
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            return out;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
}

/// A listing of several pages gives every name once; read again from its start (rewinddir)
/// on the same open stream, it shows the directory as it is now, not the pages read before.
#[test]
fn a_listing_read_again_from_its_start_shows_the_directory_as_it_is_now() {
    let c = DevCluster::start();
    let d = c.path("big");
    fs::create_dir(&d).unwrap();
    let made: BTreeSet<String> = (0..1300).map(|i| format!("f{i:04}")).collect();
    for n in &made {
        File::create(d.join(n)).unwrap();
    }
    assert_eq!(names(&d), made);
    let path = std::ffi::CString::new(d.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; the stream is closed below.
    let dir = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!dir.is_null(), "opendir: {}", std::io::Error::last_os_error());
    let first = read_stream(dir);
    assert_eq!(first.len(), 1300);
    assert_eq!(first.iter().cloned().collect::<BTreeSet<_>>(), made, "every name once");
    File::create(d.join("new")).unwrap();
    fs::remove_file(d.join("f0007")).unwrap();
    unsafe { libc::rewinddir(dir) };
    let again: BTreeSet<String> = read_stream(dir).into_iter().collect();
    unsafe { libc::closedir(dir) };
    assert!(again.contains("new"), "a name created before rewinddir is listed");
    assert!(!again.contains("f0007"), "a name removed before rewinddir is not listed");
    assert_eq!(again.len(), 1300);
    c.assert_fsck_clean();
}
