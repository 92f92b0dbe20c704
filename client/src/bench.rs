//! `tessera bench DIR` (as `juicefs bench`): one big file written and read, then small files
//! created, read, stat'ed and removed, in a fresh directory under DIR that is removed after.
//! Prints a table (or JSON); progress bars on a terminal.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct BenchOptions {
    pub dir: PathBuf,
    /// MiB in the big file.
    pub big_file_mib: u64,
    pub small_files: u64,
    /// KiB in each small file.
    pub small_file_kib: u64,
}

#[derive(Serialize, Debug)]
pub struct Row {
    pub item: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// Milliseconds per operation (per MiB for the big file).
    pub ms_per_op: f64,
}

/// Removes the bench directory however the run ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let b = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        b.set_draw_target(ProgressDrawTarget::hidden());
    }
    b.set_style(ProgressStyle::with_template("{msg:<22} [{bar:40}] {pos}/{len}").unwrap().progress_chars("=> "));
    b.set_message(what.to_string());
    b
}

/// Ask the kernel to forget the file's cached pages, so the read goes to the file system.
fn drop_pages(f: &File) {
    // SAFETY: a valid descriptor; the call only advises the kernel.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

pub fn run(o: &BenchOptions, quiet: bool) -> anyhow::Result<Vec<Row>> {
    if !o.dir.is_dir() {
        bail!("{}: not a directory", o.dir.display());
    }
    if o.big_file_mib == 0 && o.small_files == 0 {
        bail!("nothing to do: --big-file-size and --small-files are both 0");
    }
    let scratch = Scratch(o.dir.join(format!("__tessera_bench_{}", std::process::id())));
    fs::create_dir(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let mut rows = Vec::new();
    const MIB: usize = 1 << 20;
    // Incompressible and not deduplicable: every MiB differs.
    let mut chunk = vec![0u8; MIB];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut fill = |buf: &mut [u8]| {
        for w in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            w.copy_from_slice(&seed.to_le_bytes()[..w.len()]);
        }
    };
    if o.big_file_mib > 0 {
        let path = scratch.0.join("big");
        let b = bar(o.big_file_mib, "write big file (MiB)", quiet);
        let t = Instant::now();
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        for _ in 0..o.big_file_mib {
            fill(&mut chunk);
            f.write_all(&chunk).with_context(|| format!("writing {}", path.display()))?;
            b.inc(1);
        }
        f.sync_all().with_context(|| format!("fsync of {}", path.display()))?;
        drop(f);
        rows.push(rate("write big file", o.big_file_mib as f64, "MiB/s", t));
        b.finish_and_clear();

        let b = bar(o.big_file_mib, "read big file (MiB)", quiet);
        let mut f = File::open(&path)?;
        drop_pages(&f);
        let t = Instant::now();
        for _ in 0..o.big_file_mib {
            f.read_exact(&mut chunk).with_context(|| format!("reading {}", path.display()))?;
            b.inc(1);
        }
        rows.push(rate("read big file", o.big_file_mib as f64, "MiB/s", t));
        b.finish_and_clear();
        fs::remove_file(&path)?;
    }
    if o.small_files > 0 {
        let n = o.small_files;
        let mut data = vec![0u8; (o.small_file_kib as usize) << 10];
        let name = |i: u64| scratch.0.join(format!("small.{i}"));
        rows.push(timed(n, "write small files", quiet, |i| {
            fill(&mut data);
            let mut f = OpenOptions::new().write(true).create_new(true).open(name(i)).with_context(|| format!("creating {}", name(i).display()))?;
            f.write_all(&data)?;
            Ok(f.sync_all()?)
        })?);
        rows.push(timed(n, "read small files", quiet, |i| {
            let mut f = File::open(name(i))?;
            drop_pages(&f);
            Ok(f.read_exact(&mut data)?)
        })?);
        rows.push(timed(n, "stat small files", quiet, |i| Ok(fs::metadata(name(i)).map(|_| ())?))?);
        rows.push(timed(n, "remove small files", quiet, |i| Ok(fs::remove_file(name(i))?))?);
    }
    Ok(rows)
}

/// `step(i)` for i in 0..n, with a progress bar: files per second.
fn timed(n: u64, item: &'static str, quiet: bool, mut step: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<Row> {
    let b = bar(n, item, quiet);
    let t = Instant::now();
    for i in 0..n {
        step(i)?;
        b.inc(1);
    }
    b.finish_and_clear();
    Ok(rate(item, n as f64, "files/s", t))
}

fn rate(item: &'static str, n: f64, unit: &'static str, since: Instant) -> Row {
    let secs = since.elapsed().as_secs_f64().max(1e-9);
    Row { item, value: n / secs, unit, ms_per_op: secs * 1000.0 / n }
}

pub fn print(rows: &[Row], dir: &Path) {
    println!("tessera bench on {}", dir.display());
    println!("{:<20} {:>12} {:<8} {:>12}", "ITEM", "VALUE", "UNIT", "COST");
    for r in rows {
        let per = if r.unit == "MiB/s" { "ms/MiB" } else { "ms/file" };
        println!("{:<20} {:>12.1} {:<8} {:>8.2} {per}", r.item, r.value, r.unit, r.ms_per_op);
    }
}
