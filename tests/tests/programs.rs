//! Real programs end to end on a real mount: git, tar, rsync, make with a C compiler. Each
//! test runs the same shell steps in a local directory first and then on the mount, asserts
//! what the programs report (and `diff -r`), prints both times, and ends with a clean fsck.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use tessera_tests::*;

/// Run `script` with bash (`-euo pipefail`) in `dir`; its stdout. Git gets a fixed identity
/// and no user or system configuration.
fn sh(dir: &Path, script: &str) -> String {
    let out = run_timeout(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Tessera Test")
            .env("GIT_AUTHOR_EMAIL", "test@tessera.invalid")
            .env("GIT_COMMITTER_NAME", "Tessera Test")
            .env("GIT_COMMITTER_EMAIL", "test@tessera.invalid"),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "in {}: {script}\nexit {}\nstdout: {}\nstderr: {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local directory and a directory on the mount, both empty, with the steps run in each.
struct Side {
    local: PathBuf,
    mounted: PathBuf,
}

impl Side {
    fn new(c: &DevCluster, name: &str) -> Side {
        let local = c.root().join(format!("local-{name}"));
        let mounted = c.path(name);
        std::fs::create_dir(&local).unwrap();
        std::fs::create_dir(&mounted).unwrap();
        Side { local, mounted }
    }

    /// `steps(dir)` in the local directory, then on the mount; prints both times.
    fn run(&self, what: &str, steps: impl Fn(&Path)) {
        let t = Instant::now();
        steps(&self.local);
        let local = t.elapsed();
        let t = Instant::now();
        steps(&self.mounted);
        let mounted = t.elapsed();
        eprintln!("TIMING {what}: tessera {:.2} s, local directory {:.2} s", mounted.as_secs_f64(), local.as_secs_f64());
    }
}

/// A source tree: `files` files in nested directories, sizes from empty to a few hundred KiB
/// and one of 5 MiB (more than a block), with symlinks, a hard link, an executable and an
/// empty directory.
fn make_tree(root: &Path, files: usize) {
    let mut rng = seeded_rng();
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    for i in 0..files {
        let dir = root.join(format!("d{}/s{}", i % 7, i % 13));
        std::fs::create_dir_all(&dir).unwrap();
        let n = match i % 10 {
            0 => 0,
            1..=6 => rng.random_range(1..4096),
            7 | 8 => rng.random_range(4096..65536),
            _ => rng.random_range(65536..300_000),
        };
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        std::fs::write(dir.join(format!("f{i}.c")), &data).unwrap();
    }
    std::fs::write(root.join("big.bin"), random_bytes(&mut rng, 5 << 20)).unwrap();
    std::os::unix::fs::symlink("d0/s0/f0.c", root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("no/such/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("d1/s1/f1.c"), root.join("hardlink")).unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    sh(root, "chmod 0755 run.sh; chmod 0600 d2/s2/f2.c");
}

#[test]
fn git_init_commit_clone_fsck_and_commit_in_the_clone() {
    let c = DevCluster::start();
    let s = Side::new(&c, "git");
    s.run("git", |dir| {
        sh(
            dir,
            r#"
            git init -q -b main work
            cd work
            for i in $(seq 1 40); do mkdir -p src/m$((i % 5)); seq 1 $((i * 50)) > src/m$((i % 5))/f$i.txt; done
            git add -A
            git commit -q -m first
            for i in $(seq 1 10); do echo change $i >> src/m0/f5.txt; git commit -q -am "change $i"; done
            git gc -q
            cd ..
            git clone -q --bare work bare.git
            git clone -q --no-local "file://$PWD/bare.git" clone
            "#,
        );
        for repo in ["work", "bare.git", "clone"] {
            sh(&dir.join(repo), "git fsck --full --strict --no-progress");
        }
        assert_eq!(sh(&dir.join("clone"), "git rev-list --count HEAD").trim(), "11");
        assert_eq!(sh(dir, "git -C work rev-parse HEAD"), sh(dir, "git -C clone rev-parse HEAD"));
        let out = sh(
            &dir.join("clone"),
            r#"
            echo new > new.txt
            git rm -q src/m1/f1.txt
            git add new.txt
            git commit -q -m "in the clone"
            git push -q origin main
            git status --porcelain
            git fsck --full --strict --no-progress
            "#,
        );
        assert_eq!(out, "", "clean work tree after the commit");
        assert_eq!(sh(&dir.join("bare.git"), "git rev-list --count main").trim(), "12");
        assert_eq!(sh(&dir.join("bare.git"), "git show main:new.txt"), "new\n");
        // The checkout matches the repository, byte for byte.
        sh(&dir.join("clone"), "git diff --quiet HEAD && test -z \"$(git ls-files --others --exclude-standard)\"");
    });
    c.assert_fsck_clean();
}

#[test]
fn a_source_tree_through_tar_create_and_extract() {
    let c = DevCluster::start();
    let src = c.root().join("src");
    make_tree(&src, 300);
    let tarball = c.root().join("src.tar");
    sh(c.root(), "tar -cf src.tar src");
    let s = Side::new(&c, "tar");
    s.run("tar -x, diff -r, tar -c, tar -x", |dir| {
        sh(dir, &format!("tar -xpf {} && diff -r --no-dereference {} src", tarball.display(), src.display()));
        // tar -c reading from the directory, and its archive extracted again.
        sh(dir, "tar -cf again.tar src && mkdir back && tar -xpf again.tar -C back && diff -r --no-dereference src back/src");
        let stat = sh(dir, "stat -c '%a %h' src/run.sh src/d2/s2/f2.c src/hardlink && readlink src/link-to-file src/dangling");
        assert_eq!(stat, "755 1\n600 1\n644 2\nd0/s0/f0.c\nno/such/target\n", "modes, the hard link and the symlinks survive");
        // tar -d compares sizes, modes, mtimes and contents with the archive.
        sh(dir, &format!("tar -df {}", tarball.display()));
    });
    c.assert_fsck_clean();
}

#[test]
fn rsync_archive_in_and_out() {
    let c = DevCluster::start();
    let src = c.root().join("src");
    make_tree(&src, 200);
    let s = Side::new(&c, "rsync");
    s.run("rsync -a in, again, out", |dir| {
        sh(dir, &format!("rsync -a {}/ in/ && diff -r --no-dereference {} in", src.display(), src.display()));
        // Sizes, mtimes and modes were kept: a second run has nothing to do.
        let again = sh(dir, &format!("rsync -a --itemize-changes {}/ in/", src.display()));
        assert_eq!(again, "", "a second rsync -a finds differences");
        sh(dir, "rsync -a in/ out/ && diff -r --no-dereference in out");
        let again = sh(dir, "rsync -a --checksum --itemize-changes in/ out/");
        assert_eq!(again, "", "rsync --checksum finds different bytes");
    });
    c.assert_fsck_clean();
}

const MAKEFILE: &str = "CFLAGS = -O1 -Wall -Werror
OBJS = $(patsubst %.c,%.o,$(wildcard *.c))
calc: $(OBJS)
\t$(CC) -o $@ $^
%.o: %.c calc.h
\t$(CC) $(CFLAGS) -c -o $@ $<
";

#[test]
fn make_j2_builds_a_c_program_on_the_mount() {
    let c = DevCluster::start();
    let s = Side::new(&c, "make");
    s.run("make -j2 (9 C files), rebuild after touch", |dir| {
        let proj = dir.join("proj");
        std::fs::create_dir(&proj).unwrap();
        std::fs::write(proj.join("Makefile"), MAKEFILE).unwrap();
        let mut header = String::from("#pragma once\n");
        let mut main = String::from("#include <stdio.h>\n#include \"calc.h\"\nint main(void) {\n    long s = 0;\n");
        for i in 0..8 {
            header.push_str(&format!("long f{i}(long x);\n"));
            std::fs::write(proj.join(format!("f{i}.c")), format!("#include \"calc.h\"\nlong f{i}(long x) {{ long s = 0; for (long k = 0; k < x; k++) s += k * {i}; return s; }}\n")).unwrap();
            main.push_str(&format!("    s += f{i}(100);\n"));
        }
        main.push_str("    printf(\"%ld\\n\", s);\n    return 0;\n}\n");
        std::fs::write(proj.join("calc.h"), header).unwrap();
        std::fs::write(proj.join("main.c"), main).unwrap();
        let built = sh(&proj, "make -j2");
        assert_eq!(built.lines().filter(|l| l.contains("-c -o")).count(), 9, "nine objects compiled:\n{built}");
        // sum over i of i * (0 + 1 + ... + 99) = 28 * 4950
        assert_eq!(sh(&proj, "./calc"), format!("{}\n", 28 * 4950));
        assert!(sh(&proj, "make").contains("is up to date"), "make sees nothing to do");
        // mtimes order the rebuild: one touched source, one object and the link.
        let rebuilt = sh(&proj, "sleep 0.01; touch f3.c; make -j2");
        assert_eq!(rebuilt.lines().filter(|l| l.contains("-c -o")).count(), 1, "only f3.o rebuilt:\n{rebuilt}");
        assert_eq!(sh(&proj, "./calc"), format!("{}\n", 28 * 4950));
    });
    c.assert_fsck_clean();
}
