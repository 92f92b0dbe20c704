//! Metadata throughput: C concurrent sessions (each one client, as a mount's), each creating,
//! looking up and unlinking its own files through the client library, straight at the
//! metadata service. Used by `scripts/meta-bench.sh` to compare one metadata server with a
//! Raft group of three (docs/benchmarks.md).
//!
//! `meta-bench --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR --clients C --rounds R` runs R
//! rounds of (create, lookup, unlink) per client and prints one JSON line: operations, seconds,
//! operations per second, and the p50/p99 latency of one operation in microseconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::meta::MetaClient;
use tessera_common::proto::meta::{FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::{metalink::parse_meta_list, net, tls::NodeCerts, ROOT_INO};

struct Opts {
    meta: Vec<String>,
    certs: PathBuf,
    clients: usize,
    rounds: usize,
}

fn parse() -> Result<Opts, String> {
    let mut a = std::env::args().skip(1);
    let (mut meta, mut certs, mut clients, mut rounds) = (None, None, 16, 200);
    while let Some(k) = a.next() {
        let mut v = || a.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--meta" => meta = Some(parse_meta_list(&v()?)?),
            "--certs" => certs = Some(PathBuf::from(v()?)),
            "--clients" => clients = v()?.parse().map_err(|_| "--clients: not a number".to_string())?,
            "--rounds" => rounds = v()?.parse().map_err(|_| "--rounds: not a number".to_string())?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(Opts { meta: meta.ok_or("--meta is required")?, certs: certs.ok_or("--certs is required")?, clients: clients.max(1), rounds })
}

fn create(parent: u64, name: &str, kind: FileKind) -> Mutation {
    let perm = if kind == FileKind::Dir { 0o755 } else { 0o644 };
    Mutation::Create { parent, name: name.as_bytes().to_vec(), kind, perm, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }
}

/// One client's rounds; the latency of every operation (create, lookup, unlink in turn).
async fn client(mc: Arc<MetaClient>, dir: u64, c: usize, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(rounds * 3);
    for k in 0..rounds {
        let name = format!("c{c}-{k}");
        let t = Instant::now();
        mc.mutate_attr(create(dir, &name, FileKind::File)).await?;
        lat.push(t.elapsed());
        let t = Instant::now();
        match mc.call(MetaRequest::Lookup { parent: dir, name: name.as_bytes().to_vec() }).await? {
            MetaResponse::Attr(_) => {}
            r => anyhow::bail!("lookup of {name}: {r:?}"),
        }
        lat.push(t.elapsed());
        let t = Instant::now();
        mc.mutate_unlinked(Mutation::Unlink { parent: dir, name: name.into_bytes(), keep: false }).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

async fn run(o: Opts) -> anyhow::Result<()> {
    let certs = NodeCerts::load(&o.certs)?;
    let mut sessions = Vec::new();
    for c in 0..o.clients {
        // Each session on its own endpoint, as separate mounts would be.
        let ep = net::client_endpoint(&certs)?;
        sessions.push(Arc::new(MetaClient::connect(ep, &o.meta, &format!("meta-bench-{c}")).await?));
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let dir = sessions[0].mutate_attr(create(ROOT_INO, &format!("meta-bench-{}-{stamp}", std::process::id()), FileKind::Dir)).await?.ino;
    let t = Instant::now();
    let tasks: Vec<_> = sessions.iter().enumerate().map(|(c, mc)| tokio::spawn(client(mc.clone(), dir, c, o.rounds))).collect();
    let mut lat = Vec::new();
    let mut by_kind: [Vec<Duration>; 3] = Default::default();
    for task in tasks {
        let l = task.await??;
        for (i, d) in l.iter().enumerate() {
            by_kind[i % 3].push(*d);
        }
        lat.extend(l);
    }
    let secs = t.elapsed().as_secs_f64();
    sessions[0].mutate_done(Mutation::Rmdir { parent: ROOT_INO, name: format!("meta-bench-{}-{stamp}", std::process::id()).into_bytes() }).await?;
    for s in &sessions {
        let _ = s.close_session().await;
    }
    let q = |lat: &mut Vec<Duration>, p: f64| {
        lat.sort_unstable();
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map(|d| d.as_micros()).unwrap_or(0)
    };
    let [mut c, mut l, mut u] = by_kind;
    println!(
        "{}",
        serde_json::json!({
            "clients": o.clients, "ops": lat.len(), "seconds": secs, "ops_per_s": lat.len() as f64 / secs,
            "p50_us": q(&mut lat, 0.5), "p99_us": q(&mut lat, 0.99),
            "p50_create_us": q(&mut c, 0.5), "p50_lookup_us": q(&mut l, 0.5), "p50_unlink_us": q(&mut u, 0.5),
        })
    );
    Ok(())
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("meta-bench: {e}");
            eprintln!("usage: meta-bench --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR [--clients C] [--rounds R]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("meta-bench: {e:#}");
        std::process::exit(1);
    }
}
