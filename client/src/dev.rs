//! `tessera dev`: a metadata server and chunk servers in this process on loopback, their
//! certificates, and a mount — one command to a working file system.

use crate::mount;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera_common::metalink::MetaLink;
use tessera_common::net;
use tessera_common::proto::meta::{MetaRequest, MetaResponse};
use tessera_common::tls::{self, NodeCerts, Role};
use tessera_meta::MetaConfig;

pub struct DevOptions {
    pub mountpoint: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub chunk_servers: usize,
    /// 1, or 3 or 5 under Raft.
    pub meta_servers: usize,
    pub replicas: u32,
    /// Seconds before an unreferenced block is collected.
    pub gc_grace: u64,
    /// Seconds a mount's session lives without a heartbeat.
    pub session_lease: u64,
    /// Metrics of metadata server k (from 0) on this address's port + k, then of each chunk
    /// server and of the mount on the ports after.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The `--metrics` address of the `k`th process of a dev cluster (0: the metadata server).
fn metrics_at(base: Option<std::net::SocketAddr>, k: usize) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(mut a) = base else { return Ok(None) };
    let port = (a.port() as usize).checked_add(k).filter(|p| *p <= u16::MAX as usize && a.port() != 0);
    let Some(port) = port else { bail!("--metrics {a}: needs a fixed port with room for {k} more after it") };
    a.set_port(port as u16);
    Ok(Some(a))
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("tessera-dev")
}

fn ensure_certs(dir: &Path, meta_servers: usize, chunk_servers: usize) -> anyhow::Result<()> {
    let ca = dir.join("ca");
    if !ca.join("ca.key").exists() {
        tls::init_ca(&ca)?;
    }
    let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let mut want = vec![("meta".to_string(), Role::Meta), ("client".into(), Role::Client), ("admin".into(), Role::Admin)];
    want.extend((2..=meta_servers).map(|i| (format!("meta-{i}"), Role::Meta)));
    want.extend((1..=chunk_servers).map(|i| (format!("chunk-{i}"), Role::Chunk)));
    for (name, role) in want {
        if !dir.join(&name).join("node.key").exists() {
            tls::issue(&ca, &dir.join(&name), &name, role, &hosts)?;
        }
    }
    Ok(())
}

pub async fn run(o: DevOptions) -> anyhow::Result<()> {
    if o.chunk_servers == 0 || o.chunk_servers > 64 {
        bail!("--chunk-servers must be between 1 and 64");
    }
    std::fs::create_dir_all(&o.mountpoint).with_context(|| format!("creating mount point {}", o.mountpoint.display()))?;
    let mountpoint = mount::check_mountpoint(&o.mountpoint)?;
    let data = o.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let data = std::fs::canonicalize(&data)?;
    println!("tessera dev: data directory {}", data.display());
    let certs = data.join("certs");
    ensure_certs(&certs, o.meta_servers, o.chunk_servers)?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let group = meta_group(&data, o.meta_servers)?;
    let configs = (0..o.meta_servers).map(|k| {
        let name = if k == 0 { "meta".to_string() } else { format!("meta-{}", k + 1) };
        Ok(MetaConfig {
            data_dir: data.join(if group.is_some() { format!("meta-{}", k + 1) } else { "meta".into() }),
            listen: match &group {
                Some(g) => g.peers[&(k as u64 + 1)].parse().context("meta-group")?,
                None => "127.0.0.1:0".parse().unwrap(),
            },
            certs: certs.join(name),
            replicas: o.replicas,
            gc_grace: Duration::from_secs(o.gc_grace),
            gc_interval: Duration::from_secs(o.gc_grace.clamp(1, 600)),
            session_lease: Duration::from_secs(o.session_lease),
            metrics: metrics_at(o.metrics, k)?,
            raft: group.as_ref().map(|g| tessera_meta::RaftGroup { id: k as u64 + 1, ..g.clone() }),
            ..Default::default()
        })
    });
    let configs = configs.collect::<anyhow::Result<Vec<_>>>()?;
    // Together: under Raft each start waits for the group to elect a leader.
    let metas = futures::future::try_join_all(configs.into_iter().map(|c| tessera_meta::start(c, stop_rx.clone()))).await.context("starting the metadata server")?;
    let meta_addrs: Vec<String> = metas.iter().map(|m| m.addr.to_string()).collect();
    let meta_addr = meta_addrs.join(",");
    let mut chunks = Vec::new();
    for i in 1..=o.chunk_servers {
        let c = tessera_chunk::start(
            tessera_chunk::ChunkConfig {
                data_dir: data.join(format!("chunk-{i}")),
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                meta: meta_addrs.clone(),
                certs: certs.join(format!("chunk-{i}")),
                zone: format!("zone-{i}"),
                capacity: None,
                reserve: None,
                heartbeat: Duration::from_secs(1),
                repair_rate: 100.0,
                scan_interval: Duration::from_secs(10),
                scrub_rate: 50.0,
                scrub_interval: Duration::from_secs(24 * 3600),
                metrics: metrics_at(o.metrics, o.meta_servers - 1 + i)?,
            },
            stop_rx.clone(),
        )
        .await
        .with_context(|| format!("starting chunk server {i}"))?;
        chunks.push(c);
    }
    wait_for_ring(&certs.join("admin"), &meta_addrs, &chunks).await?;

    let env = data.join("cluster.env");
    std::fs::write(&env, format!("TESSERA_META={meta_addr}\nTESSERA_CERTS={}\n", certs.join("admin").display()))
        .with_context(|| format!("writing {}", env.display()))?;

    let client = NodeCerts::load(&certs.join("client"))?;
    let fs = mount::connect(&client, &meta_addrs).await?;
    if let Some(at) = metrics_at(o.metrics, o.meta_servers + o.chunk_servers)? {
        mount::serve_metrics(&fs, at).await?;
    }
    let mounted = mount::mount(fs, &mountpoint, "tessera", &[], tokio::runtime::Handle::current())?;
    println!(
        "tessera dev: mounted at {} (metadata {}, {} chunk servers, {} replicas)\n\
         tessera dev: for admin commands run: set -a; . {}; set +a   (then: tessera status)\n\
         tessera dev: press Ctrl-C to unmount and stop",
        mountpoint.display(),
        if o.meta_servers > 1 { format!("{meta_addr} under Raft") } else { meta_addr.clone() },
        o.chunk_servers,
        o.replicas,
        env.display()
    );
    let r = mounted.run_until_signal().await;
    let _ = stop.send(true);
    for c in chunks {
        let _ = c.task.await;
    }
    for m in metas {
        let _ = m.task.await;
    }
    println!("tessera dev: stopped");
    r
}

/// The Raft group of a dev cluster with several metadata servers: loopback ports picked on the
/// first run and kept in `DATA/meta-group` (ids and addresses must stay the same across
/// restarts). A data directory keeps the number of metadata servers it was created with.
fn meta_group(data: &Path, n: usize) -> anyhow::Result<Option<tessera_meta::RaftGroup>> {
    let file = data.join("meta-group");
    let single = data.join("meta").exists();
    match n {
        1 if file.exists() => bail!("{} was created with several metadata servers (see {}); pass the same --meta-servers, or use a new --data-dir", data.display(), file.display()),
        1 => return Ok(None),
        3 | 5 if single => bail!("{} was created with one metadata server; use a new --data-dir for --meta-servers {n}", data.display()),
        3 | 5 => {}
        _ => bail!("--meta-servers must be 1, 3 or 5"),
    }
    let list = match std::fs::read_to_string(&file) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            let mut ports = Vec::new();
            for _ in 0..n {
                // Held until all are picked, so that they differ.
                ports.push(std::net::UdpSocket::bind("127.0.0.1:0")?);
            }
            let list = ports.iter().enumerate().map(|(i, s)| Ok(format!("{}={}", i + 1, s.local_addr()?))).collect::<std::io::Result<Vec<_>>>()?.join(",");
            tessera_common::durable::write_file(&file, list.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
            list
        }
    };
    let peers = tessera_meta::raft::parse_peers(&list).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if peers.len() != n {
        bail!("{} lists {} metadata servers; pass --meta-servers {}, or use a new --data-dir", file.display(), peers.len(), peers.len());
    }
    Ok(Some(tessera_meta::RaftGroup { id: 1, peers, snapshot_every: 10_000, join: false }))
}

/// Wait until the published ring lists every chunk server at its current address.
async fn wait_for_ring(admin: &Path, meta: &[String], chunks: &[tessera_chunk::ChunkServer]) -> anyhow::Result<()> {
    let certs = NodeCerts::load(admin)?;
    let link = MetaLink::new(net::client_endpoint(&certs)?, meta, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(MetaResponse::Ring(r)) = link.call(&MetaRequest::GetRing).await {
            if chunks.iter().all(|c| r.node(c.node_id).is_some_and(|n| n.addr == c.addr.to_string())) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("chunk servers did not register within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
