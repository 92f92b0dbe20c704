//! A linearizability workload for the metadata service, and its checker.
//!
//! `lin-load run --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR --seconds S --seed N --clients C
//! --out HISTORY.jsonl`: C clients (each its own session, all in this process so their times
//! come from one monotonic clock) issue random creates, unlinks, renames and lookups on four
//! names of a fresh directory `/lin-N`, one at a time each, through the client library. Every
//! operation is recorded with its call and return times and what it was told (a call that
//! failed without an answer is recorded as unknown). The history is written to HISTORY.jsonl
//! (one JSON object per line, see `tessera_tests::lincheck`), then one JSON line is printed:
//! `{"ops":..,"unknown":..,"per_client":[..],"max_ms":..,"ops_per_s":..}`.
//!
//! `lin-load check HISTORY.jsonl...`: checks each history (one run per file) for
//! linearizability and prints one JSON line per file
//! (`{"file":..,"ops":..,"unknown":..,"linearizable":..,"why":..}`). Exit 1 if one is not
//! linearizable or the search gave up, 2 on bad input.

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::error::FsError;
use tessera_client::meta::MetaClient;
use tessera_common::metalink::parse_meta_list;
use tessera_common::net;
use tessera_common::proto::meta::{FileKind, MetaRequest, MetaResponse, Mutation};
use tessera_common::tls::NodeCerts;
use tessera_common::{ErrorCode, ROOT_INO};
use tessera_tests::lincheck::{self, Decision, Op, Outcome, Record};

const USAGE: &str = "usage: lin-load run --meta ADDR[,ADDR...] --certs CLIENT_CERT_DIR --seconds S --seed N --clients C --out HISTORY.jsonl\n       lin-load check HISTORY.jsonl...";

/// The names the clients work on: few, so that they collide often.
const NAMES: [&str; 4] = ["n0", "n1", "n2", "n3"];

/// How long operations still running at the end may take before they count as unknown (a
/// call retries an unreachable service for a while by itself).
const GRACE: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => match RunArgs::parse(&args[1..]) {
            Ok(a) => run(a),
            Err(e) => {
                eprintln!("lin-load run: {e}\n{USAGE}");
                2
            }
        },
        Some("check") if args.len() >= 2 => check(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

struct RunArgs {
    meta: Vec<String>,
    certs: PathBuf,
    seconds: u64,
    seed: u64,
    clients: u32,
    out: PathBuf,
}

impl RunArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut meta, mut certs, mut seconds, mut seed, mut clients, mut out) = (None, None, None, None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
            match flag.as_str() {
                "--meta" => meta = Some(parse_meta_list(&value()?)?),
                "--certs" => certs = Some(PathBuf::from(value()?)),
                "--seconds" => seconds = Some(num(value()?)?),
                "--seed" => seed = Some(num(value()?)?),
                "--clients" => clients = Some(num(value()?)?),
                "--out" => out = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let clients = clients.unwrap_or(3);
        if !(1..=64).contains(&clients) {
            return Err("--clients must be between 1 and 64".into());
        }
        Ok(RunArgs {
            meta: meta.ok_or("--meta is required")?,
            certs: certs.ok_or("--certs is required")?,
            seconds: seconds.ok_or("--seconds is required")?,
            seed: seed.ok_or("--seed is required")?,
            clients: clients as u32,
            out: out.ok_or("--out is required")?,
        })
    }
}

fn run(a: RunArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lin-load run: starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run_async(&a)) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("lin-load run: {e:#}");
            1
        }
    }
}

fn name(n: &str) -> Vec<u8> {
    n.as_bytes().to_vec()
}

fn create(parent: u64, n: &str, kind: FileKind, perm: u16) -> Mutation {
    Mutation::Create { parent, name: name(n), kind, perm, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 }
}

async fn run_async(a: &RunArgs) -> anyhow::Result<serde_json::Value> {
    let certs = NodeCerts::load(&a.certs).with_context(|| format!("loading the certificates in {}", a.certs.display()))?;
    let ep = net::client_endpoint(&certs).context("opening a QUIC endpoint")?;
    let mut clients = Vec::new();
    for k in 0..a.clients {
        let mc = MetaClient::connect(ep.clone(), &a.meta, &format!("{}/lin-load-{k}", certs.identity.name))
            .await
            .with_context(|| format!("client {k}: cannot connect to the metadata service at {}", a.meta.join(",")))?;
        clients.push(Arc::new(mc));
    }
    // Keep the sessions' leases: an expired session would lose its retry cache.
    let heartbeats: Vec<_> = clients
        .iter()
        .map(|mc| {
            let mc = mc.clone();
            tokio::spawn(async move {
                loop {
                    let pause = mc.heartbeat().await.unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();

    let dir_name = format!("lin-{}", a.seed);
    let dir = match clients[0].mutate(create(ROOT_INO, &dir_name, FileKind::Dir, 0o755)).await {
        Ok(MetaResponse::Attr(attr)) => attr.ino,
        Err(FsError::Wire(e)) if e.code == ErrorCode::Exists => bail!("/{dir_name} exists already (an earlier run with --seed {}): use another seed", a.seed),
        Ok(r) => bail!("creating /{dir_name}: unexpected reply {r:?}"),
        Err(e) => bail!("creating /{dir_name}: {e}"),
    };

    // One clock for every client: times are nanoseconds since `t0`.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.seconds);
    let give_up = tokio::time::Instant::from_std(deadline + GRACE);
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, mc)| {
            let mc = mc.clone();
            let seed = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64;
            tokio::spawn(async move { client_loop(k as u32, &mc, dir, seed, t0, deadline, give_up).await })
        })
        .collect();
    let mut history: Vec<Record> = Vec::new();
    let mut per_client = Vec::new();
    let mut max_ns = 0u64;
    for t in tasks {
        let (records, longest) = t.await.context("a client task failed")?;
        per_client.push(records.len());
        max_ns = max_ns.max(longest);
        history.extend(records);
    }
    let elapsed = t0.elapsed();
    for h in heartbeats {
        h.abort();
    }
    for mc in &clients {
        // Best effort: an unclosed session just runs out its lease.
        let _ = tokio::time::timeout(Duration::from_secs(5), mc.close_session()).await;
    }
    history.sort_by_key(|r| (r.call, r.client));
    write_history(&a.out, &history).with_context(|| format!("writing the history to {}", a.out.display()))?;
    let unknown = history.iter().filter(|r| r.result == Outcome::Unknown).count();
    Ok(serde_json::json!({
        "ops": history.len(),
        "unknown": unknown,
        "per_client": per_client,
        "max_ms": max_ns / 1_000_000,
        "ops_per_s": (history.len() as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "dir": format!("/{dir_name}"),
    }))
}

fn write_history(path: &std::path::Path, history: &[Record]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in history {
        writeln!(f, "{}", lincheck::to_line(r))?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// One client: random operations, one at a time, until `deadline`. Returns its records and
/// its longest call (ns).
async fn client_loop(client: u32, mc: &MetaClient, dir: u64, seed: u64, t0: Instant, deadline: Instant, give_up: tokio::time::Instant) -> (Vec<Record>, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut longest = 0;
    let now = || t0.elapsed().as_nanos() as u64;
    while Instant::now() < deadline {
        let pick = |rng: &mut StdRng| NAMES[rng.random_range(0..NAMES.len())].to_string();
        let op = match rng.random_range(0..100) {
            0..30 => Op::Create(pick(&mut rng)),
            30..45 => Op::Unlink(pick(&mut rng)),
            45..60 => {
                let from = pick(&mut rng);
                let to = loop {
                    let t = pick(&mut rng);
                    if t != from {
                        break t;
                    }
                };
                Op::Rename(from, to)
            }
            _ => Op::Lookup(pick(&mut rng)),
        };
        let call = now();
        let result = tokio::time::timeout_at(give_up, apply(mc, dir, &op)).await.unwrap_or_else(|_| {
            eprintln!("lin-load: client {client}: {op} still running {GRACE:?} after the end; recorded as unknown");
            Outcome::Unknown
        });
        let end = now();
        longest = longest.max(end - call);
        let ret = if result == Outcome::Unknown { u64::MAX } else { end };
        out.push(Record { client, op, result, call, ret });
    }
    (out, longest)
}

/// Send `op` and map the answer to an outcome: only answers that say what happened count,
/// anything else (a transport error, a timeout, an unexpected error code) is unknown.
async fn apply(mc: &MetaClient, dir: u64, op: &Op) -> Outcome {
    let r = match op {
        Op::Create(n) => mc.mutate(create(dir, n, FileKind::File, 0o644)).await,
        Op::Unlink(n) => mc.mutate(Mutation::Unlink { parent: dir, name: name(n), keep: false }).await,
        Op::Rename(a, b) => mc.mutate(Mutation::Rename { parent: dir, name: name(a), new_parent: dir, new_name: name(b), flags: 0, keep: false }).await,
        Op::Lookup(n) => mc.call(MetaRequest::Lookup { parent: dir, name: name(n) }).await,
    };
    match (op, r) {
        (Op::Create(_), Ok(MetaResponse::Attr(a))) => Outcome::Created(a.ino),
        (Op::Lookup(_), Ok(MetaResponse::Attr(a))) => Outcome::Found(a.ino),
        (Op::Unlink(_) | Op::Rename(..), Ok(MetaResponse::Unlinked { .. })) => Outcome::Done,
        (Op::Create(_), Err(FsError::Wire(e))) if e.code == ErrorCode::Exists => Outcome::Exists,
        (Op::Unlink(_) | Op::Rename(..) | Op::Lookup(_), Err(FsError::Wire(e))) if e.code == ErrorCode::NotFound => Outcome::NotFound,
        (_, Ok(r)) => {
            eprintln!("lin-load: {op}: unexpected reply {r:?}; recorded as unknown");
            Outcome::Unknown
        }
        (_, Err(e)) => {
            eprintln!("lin-load: {op}: {e}; recorded as unknown");
            Outcome::Unknown
        }
    }
}

fn check(files: &[String]) -> i32 {
    let mut code = 0;
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lin-load check: reading {f}: {e}");
                return 2;
            }
        };
        let history = match lincheck::parse_history(&text) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("lin-load check: {f}: {e}");
                return 2;
            }
        };
        let t = Instant::now();
        let v = lincheck::check(&history);
        let decision = match v.decision {
            Decision::Linearizable => "linearizable",
            Decision::NotLinearizable => "not linearizable",
            Decision::Undecided => "undecided",
            Decision::Invalid => "invalid",
        };
        println!(
            "{}",
            serde_json::json!({
                "file": f,
                "ops": v.ops,
                "unknown": v.unknown,
                "linearizable": v.linearizable(),
                "decision": decision,
                "steps": v.steps,
                "ms": t.elapsed().as_millis() as u64,
                "why": v.why,
            })
        );
        match v.decision {
            Decision::Linearizable => {}
            Decision::Invalid => return 2,
            _ => code = 1,
        }
    }
    code
}
