//! Fill a directory with many empty files fast, for the scale measurements
//! (`scripts/scale.sh`): one session straight at the metadata service, many creates in flight
//! at once (the server puts concurrent commands into one log write). The files are what a
//! mount's `touch` makes (a `Create` of a regular file); the mount then measures at that size.
//!
//! `meta-fill --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR --dir INO --files N [--prefix P]
//! [--first F] [--tree D] [--inflight K]` creates files `P{F}` .. `P{F+N-1}` in directory INO,
//! or with `--tree D` file `Pk` in its subdirectory `d{k % D}` (made if missing), and prints
//! one JSON line: files, seconds, files per second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tessera_client::meta::MetaClient;
use tessera_common::proto::meta::{FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::{metalink::parse_meta_list, net, tls::NodeCerts, ErrorCode};

struct Opts {
    meta: Vec<String>,
    certs: PathBuf,
    dir: u64,
    files: u64,
    first: u64,
    prefix: String,
    tree: u64,
    inflight: usize,
}

fn parse() -> Result<Opts, String> {
    let mut a = std::env::args().skip(1);
    let mut o = Opts { meta: Vec::new(), certs: PathBuf::new(), dir: 0, files: 0, first: 0, prefix: "f".into(), tree: 0, inflight: 64 };
    let num = |k: &str, v: String| v.parse::<u64>().map_err(|_| format!("{k}: not a number: {v}"));
    while let Some(k) = a.next() {
        let v = a.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--meta" => o.meta = parse_meta_list(&v)?,
            "--certs" => o.certs = PathBuf::from(v),
            "--dir" => o.dir = num(&k, v)?,
            "--files" => o.files = num(&k, v)?,
            "--first" => o.first = num(&k, v)?,
            "--prefix" => o.prefix = v,
            "--tree" => o.tree = num(&k, v)?,
            "--inflight" => o.inflight = num(&k, v)?.max(1) as usize,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if o.meta.is_empty() || o.certs.as_os_str().is_empty() || o.dir == 0 {
        return Err("--meta, --certs and --dir are required".into());
    }
    Ok(o)
}

fn create(parent: u64, name: &str, kind: FileKind) -> Mutation {
    let perm = if kind == FileKind::Dir { 0o755 } else { 0o644 };
    Mutation::Create { parent, name: name.as_bytes().to_vec(), kind, perm, uid: 0, gid: 0, rdev: 0, target: None, umask: 0o022 }
}

/// The inode of subdirectory `name` of `parent`, made if missing.
async fn subdir(mc: &MetaClient, parent: u64, name: &str) -> anyhow::Result<u64> {
    match mc.mutate_attr(create(parent, name, FileKind::Dir)).await {
        Ok(a) => Ok(a.ino),
        Err(tessera_client::error::FsError::Wire(e)) if e.code == ErrorCode::Exists => match mc.call(MetaRequest::Lookup { parent, name: name.as_bytes().to_vec() }).await? {
            MetaResponse::Attr(a) => Ok(a.ino),
            r => anyhow::bail!("lookup of {name}: {r:?}"),
        },
        Err(e) => anyhow::bail!("mkdir {name}: {e}"),
    }
}

async fn run(o: Opts) -> anyhow::Result<()> {
    let certs = NodeCerts::load(&o.certs)?;
    let mc = Arc::new(MetaClient::connect(net::client_endpoint(&certs)?, &o.meta, "meta-fill").await?);
    let mut dirs = vec![o.dir];
    if o.tree > 0 {
        dirs.clear();
        for d in 0..o.tree {
            dirs.push(subdir(&mc, o.dir, &format!("d{d}")).await?);
        }
    }
    let t = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(o.inflight));
    let mut tasks = tokio::task::JoinSet::new();
    for k in o.first..o.first + o.files {
        let permit = slots.clone().acquire_owned().await?;
        let (mc, parent, name) = (mc.clone(), dirs[(k % dirs.len() as u64) as usize], format!("{}{k}", o.prefix));
        tasks.spawn(async move {
            let _permit = permit;
            mc.mutate_attr(create(parent, &name, FileKind::File)).await.map(|_| ()).map_err(|e| anyhow::anyhow!("create {name}: {e}"))
        });
        // Reap as we go: the first failure ends the run.
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = mc.close_session().await;
    println!("{}", serde_json::json!({ "files": o.files, "seconds": secs, "files_per_s": o.files as f64 / secs }));
    Ok(())
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("meta-fill: {e}");
            eprintln!("usage: meta-fill --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR --dir INO --files N [--prefix P] [--first F] [--tree D] [--inflight K]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("meta-fill: {e:#}");
        std::process::exit(1);
    }
}
