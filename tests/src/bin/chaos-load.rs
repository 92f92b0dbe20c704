//! The workload of `scripts/chaos`: writes, renames, unlinks and reads files on a mount while
//! faults are injected, and records every acknowledged operation; then verifies them.
//!
//! `chaos-load run DIR LOG SECONDS SEED MAX_SIZE` appends one line per acknowledged operation to
//! LOG (`put NAME HASH SIZE` once a file was written, fsynced and closed; `rename A B`;
//! `unlink A`; `uncertain A` when a rename or unlink failed, so its outcome is unknown) and
//! checks every read against what was acknowledged (`WRONG NAME`: a violation). It prints one
//! JSON line: operations, bytes, errors, wrong reads, the longest single call and which it was.
//!
//! `chaos-load verify DIR LOG...` replays the logs and checks that every acknowledged file reads
//! back exactly and that nothing unlinked came back; prints one JSON line and exits 1 on a
//! violation.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") if args.len() == 6 => run(&args[1..]),
        Some("verify") if args.len() >= 3 => verify(Path::new(&args[1]), &args[2..]),
        _ => {
            eprintln!("usage: chaos-load run DIR LOG SECONDS SEED MAX_SIZE | chaos-load verify DIR LOG...");
            2
        }
    };
    std::process::exit(code);
}

/// The longest single call seen, and what it was.
#[derive(Default)]
struct Stall {
    ms: u128,
    what: String,
}

impl Stall {
    fn time<T>(&mut self, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let ms = t.elapsed().as_millis();
        if ms >= 1000 || ms > self.ms {
            let what = what();
            if ms >= 1000 {
                // With the wall clock, to be matched with the faults' log.
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                eprintln!("chaos-load: slow call: {what} took {ms} ms, ended at {:.3}", at.as_secs_f64());
            }
            if ms > self.ms {
                self.ms = ms;
                self.what = what;
            }
        }
        r
    }
}

fn hash_of(p: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((h.finalize().to_hex().to_string(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

fn run(a: &[String]) -> i32 {
    let dir = PathBuf::from(&a[0]);
    let (Ok(secs), Ok(seed), Ok(max_size)) = (a[2].parse::<u64>(), a[3].parse::<u64>(), a[4].parse::<usize>()) else {
        eprintln!("chaos-load run: SECONDS, SEED and MAX_SIZE are numbers");
        return 2;
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("chaos-load: creating {}: {e}", dir.display());
        return 1;
    }
    let mut log = match OpenOptions::new().create(true).append(true).open(&a[1]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chaos-load: opening the log {}: {e}", a[1]);
            return 1;
        }
    };
    let mut note = |line: String| {
        let _ = writeln!(log, "{line}");
        let _ = log.flush();
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut files: Vec<(String, String)> = Vec::new();
    let (mut ops, mut bytes, mut errors, mut wrong) = (0u64, 0u64, 0u64, 0u64);
    let mut stall = Stall::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let pick = rng.random_range(0..10);
        let result: Result<(), (String, std::io::Error)> = if pick < 5 || files.is_empty() {
            let name = format!("s{seed}-{i}");
            let mut data = vec![0u8; rng.random_range(1..=max_size)];
            rng.fill_bytes(&mut data);
            let p = dir.join(&name);
            let r = stall.time(
                || format!("write+fsync+close of {name} ({} bytes)", data.len()),
                || -> std::io::Result<()> {
                    let mut f = OpenOptions::new().write(true).create_new(true).open(&p)?;
                    f.write_all(&data)?;
                    f.sync_all()
                },
            );
            match r {
                Ok(()) => {
                    let h = blake3::hash(&data).to_hex().to_string();
                    note(format!("put {name} {h} {}", data.len()));
                    bytes += data.len() as u64;
                    files.push((name, h));
                    Ok(())
                }
                Err(e) => Err((format!("write {name}"), e)),
            }
        } else if pick < 8 {
            let k = rng.random_range(0..files.len());
            let (name, want) = files[k].clone();
            match stall.time(|| format!("read of {name}"), || hash_of(&dir.join(&name))) {
                Ok((h, n)) if h == want => {
                    bytes += n;
                    Ok(())
                }
                Ok((h, n)) => {
                    wrong += 1;
                    note(format!("WRONG {name} {h} {n}"));
                    Ok(())
                }
                Err(e) => Err((format!("read {name}"), e)),
            }
        } else if pick == 8 {
            let k = rng.random_range(0..files.len());
            let (name, h) = files.swap_remove(k);
            let to = format!("{name}.r");
            match stall.time(|| format!("rename of {name}"), || fs::rename(dir.join(&name), dir.join(&to))) {
                Ok(()) => {
                    note(format!("rename {name} {to}"));
                    files.push((to, h));
                    Ok(())
                }
                Err(e) => {
                    note(format!("uncertain {name}"));
                    note(format!("uncertain {to}"));
                    Err((format!("rename {name}"), e))
                }
            }
        } else {
            let k = rng.random_range(0..files.len());
            let (name, _) = files.swap_remove(k);
            match stall.time(|| format!("unlink of {name}"), || fs::remove_file(dir.join(&name))) {
                Ok(()) => {
                    note(format!("unlink {name}"));
                    Ok(())
                }
                Err(e) => {
                    note(format!("uncertain {name}"));
                    Err((format!("unlink {name}"), e))
                }
            }
        };
        ops += 1;
        if let Err((what, e)) = result {
            errors += 1;
            eprintln!("chaos-load: {what}: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "{{\"ops\":{ops},\"bytes\":{bytes},\"errors\":{errors},\"wrong\":{wrong},\"max_stall_ms\":{},\"max_stall_op\":{:?}}}",
        stall.ms, stall.what
    );
    if wrong > 0 { 1 } else { 0 }
}

fn verify(dir: &Path, logs: &[String]) -> i32 {
    // name -> Some(hash) when it must exist, None when it must not.
    let mut want: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut wrong_reads = 0u64;
    for l in logs {
        let f = match File::open(l) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("chaos-load verify: {l}: {e}");
                return 2;
            }
        };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["put", name, h, _] => {
                    want.insert(name.to_string(), Some(h.to_string()));
                }
                ["rename", a, b] => {
                    let h = want.insert(a.to_string(), None).flatten();
                    want.insert(b.to_string(), h);
                }
                ["unlink", a] => {
                    want.insert(a.to_string(), None);
                }
                ["uncertain", a] => {
                    want.remove(*a);
                }
                ["WRONG", ..] => wrong_reads += 1,
                _ => {}
            }
        }
    }
    let (mut checked, mut bytes, mut missing, mut wrong, mut resurrected) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for (name, h) in &want {
        let p = dir.join(name);
        match (h, hash_of(&p)) {
            (Some(h), Ok((got, n))) if *h == got => {
                checked += 1;
                bytes += n;
            }
            (Some(_), Ok(_)) => {
                wrong += 1;
                eprintln!("chaos-load verify: {name} does not read back as written");
            }
            (Some(_), Err(e)) => {
                missing += 1;
                eprintln!("chaos-load verify: {name} was acknowledged but reading it fails: {e}");
            }
            (None, Ok(_)) => {
                resurrected += 1;
                eprintln!("chaos-load verify: {name} was unlinked or renamed away, and is back");
            }
            (None, Err(_)) => checked += 1,
        }
    }
    println!("{{\"checked\":{checked},\"bytes\":{bytes},\"missing\":{missing},\"wrong\":{wrong},\"resurrected\":{resurrected},\"wrong_reads\":{wrong_reads}}}");
    if missing + wrong + resurrected + wrong_reads > 0 { 1 } else { 0 }
}
