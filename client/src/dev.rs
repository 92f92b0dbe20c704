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
    pub replicas: u32,
    /// Seconds before an unreferenced block is collected.
    pub gc_grace: u64,
    /// Seconds a mount's session lives without a heartbeat.
    pub session_lease: u64,
    /// Metrics of the metadata server on this address, of chunk server i on its port + i, of
    /// the mount on its port + N + 1.
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

fn ensure_certs(dir: &Path, chunk_servers: usize) -> anyhow::Result<()> {
    let ca = dir.join("ca");
    if !ca.join("ca.key").exists() {
        tls::init_ca(&ca)?;
    }
    let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let mut want = vec![("meta".to_string(), Role::Meta), ("client".into(), Role::Client), ("admin".into(), Role::Admin)];
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
    ensure_certs(&certs, o.chunk_servers)?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let meta = tessera_meta::start(
        MetaConfig {
            data_dir: data.join("meta"),
            certs: certs.join("meta"),
            replicas: o.replicas,
            gc_grace: Duration::from_secs(o.gc_grace),
            gc_interval: Duration::from_secs(o.gc_grace.clamp(1, 600)),
            session_lease: Duration::from_secs(o.session_lease),
            metrics: metrics_at(o.metrics, 0)?,
            ..Default::default()
        },
        stop_rx.clone(),
    )
    .await
    .context("starting the metadata server")?;
    let meta_addr = meta.addr.to_string();
    let mut chunks = Vec::new();
    for i in 1..=o.chunk_servers {
        let c = tessera_chunk::start(
            tessera_chunk::ChunkConfig {
                data_dir: data.join(format!("chunk-{i}")),
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                meta: vec![meta_addr.clone()],
                certs: certs.join(format!("chunk-{i}")),
                zone: format!("zone-{i}"),
                capacity: None,
                reserve: None,
                heartbeat: Duration::from_secs(1),
                repair_rate: 100.0,
                scan_interval: Duration::from_secs(10),
                scrub_rate: 50.0,
                scrub_interval: Duration::from_secs(24 * 3600),
                metrics: metrics_at(o.metrics, i)?,
            },
            stop_rx.clone(),
        )
        .await
        .with_context(|| format!("starting chunk server {i}"))?;
        chunks.push(c);
    }
    wait_for_ring(&certs.join("admin"), &meta_addr, &chunks).await?;

    let env = data.join("cluster.env");
    std::fs::write(&env, format!("TESSERA_META={meta_addr}\nTESSERA_CERTS={}\n", certs.join("admin").display()))
        .with_context(|| format!("writing {}", env.display()))?;

    let client = NodeCerts::load(&certs.join("client"))?;
    let fs = mount::connect(&client, std::slice::from_ref(&meta_addr)).await?;
    if let Some(at) = metrics_at(o.metrics, o.chunk_servers + 1)? {
        mount::serve_metrics(&fs, at).await?;
    }
    let mounted = mount::mount(fs, &mountpoint, "tessera", &[], tokio::runtime::Handle::current())?;
    println!(
        "tessera dev: mounted at {} (metadata {}, {} chunk servers, {} replicas)\n\
         tessera dev: for admin commands run: set -a; . {}; set +a   (then: tessera status)\n\
         tessera dev: press Ctrl-C to unmount and stop",
        mountpoint.display(),
        meta_addr,
        o.chunk_servers,
        o.replicas,
        env.display()
    );
    let r = mounted.run_until_signal().await;
    let _ = stop.send(true);
    for c in chunks {
        let _ = c.task.await;
    }
    let _ = meta.task.await;
    println!("tessera dev: stopped");
    r
}

/// Wait until the published ring lists every chunk server at its current address.
async fn wait_for_ring(admin: &Path, meta: &str, chunks: &[tessera_chunk::ChunkServer]) -> anyhow::Result<()> {
    let certs = NodeCerts::load(admin)?;
    let link = MetaLink::new(net::client_endpoint(&certs)?, &[meta.to_string()], Duration::from_secs(5));
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
