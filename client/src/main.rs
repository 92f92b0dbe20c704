use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_client::{admin, dev, mount};
use tessera_common::metalink::parse_meta_list;
use tessera_common::proto::meta::{GroupChange, NodeAction};
use tessera_common::tls::{self, NodeCerts, Role};

/// Tessera: a distributed block file system.
#[derive(Parser)]
#[command(name = "tessera", version)]
struct Cli {
    /// A TOML file of flag values (keys are the long flag names, see docs/config.md); flags and
    /// environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    #[allow(dead_code)] // read by config::parse, before clap parses
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the file system.
    Mount {
        /// Metadata servers, comma-separated.
        #[arg(long, env = "TESSERA_META")]
        meta: String,
        /// Certificate bundle (ca.crt, node.crt, node.key): role client for mount, admin for the
        /// admin commands.
        #[arg(long, env = "TESSERA_CERTS")]
        certs: PathBuf,
        mountpoint: PathBuf,
        /// Mount options, comma-separated (ro, noatime, nosuid, nodev, noexec, sync, dirsync).
        #[arg(short = 'o', long = "options", env = "TESSERA_MOUNT_OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground (default: detach once mounted).
        #[arg(long, env = "TESSERA_FOREGROUND")]
        foreground: bool,
        /// Serve the mount's Prometheus metrics on this TCP address, plain HTTP (`GET
        /// /metrics`); off unless set. Use a loopback or private address.
        #[arg(long, env = "TESSERA_METRICS", value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Run a local cluster (metadata server + chunk servers) and mount it, until Ctrl-C.
    Dev {
        mountpoint: PathBuf,
        /// Where state and certificates live (default: ~/.local/share/tessera-dev).
        #[arg(long, env = "TESSERA_DEV_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Chunk servers to run.
        #[arg(long, env = "TESSERA_DEV_CHUNK_SERVERS", default_value_t = 3)]
        chunk_servers: usize,
        /// Metadata servers to run: 1, or 3 or 5 under Raft (docs/raft.md). Fixed when the data
        /// directory is created.
        #[arg(long, env = "TESSERA_DEV_META_SERVERS", default_value_t = 1)]
        meta_servers: usize,
        /// Copies of every block.
        #[arg(long, env = "TESSERA_DEV_REPLICAS", default_value_t = 3)]
        replicas: u32,
        /// Seconds an unreferenced block stays before garbage collection deletes it.
        #[arg(long, env = "TESSERA_DEV_GC_GRACE", default_value_t = 3600)]
        gc_grace: u64,
        /// Seconds a mount may go without a heartbeat before its session expires and its locks
        /// and open files are released.
        #[arg(long, env = "TESSERA_DEV_SESSION_LEASE", default_value_t = 30)]
        session_lease: u64,
        /// Serve Prometheus metrics from ADDR:PORT on: metadata server k (from 0) on PORT+k,
        /// then each chunk server, then the mount, on the ports after (plain HTTP,
        /// `GET /metrics`; off unless set).
        #[arg(long, env = "TESSERA_DEV_METRICS", value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Show the cluster: servers, capacity, blocks, replication health.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Time a mount: a big file written and read, small files created, read, stat'ed and
    /// removed, in a directory of its own under DIR that is removed after.
    Bench {
        dir: PathBuf,
        /// MiB in the big file (0: skip).
        #[arg(long, default_value_t = 1024)]
        big_file_size: u64,
        /// Small files to create (0: skip).
        #[arg(long, default_value_t = 100)]
        small_files: u64,
        /// KiB in each small file.
        #[arg(long, default_value_t = 128)]
        small_file_size: u64,
        #[arg(long)]
        json: bool,
    },
    /// A line per second of what mounts and servers are doing, read from their --metrics pages.
    Stats {
        /// Their --metrics addresses, comma-separated (HOST:PORT,...); the lines sum them.
        #[arg(value_name = "ADDRS")]
        metrics: String,
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many lines (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Serve a read-only status page (what `status` shows, refreshed every 5 s) until Ctrl-C.
    Web {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// TCP address of the page, loopback only (it has no authentication of its own).
        #[arg(long, env = "TESSERA_WEB_LISTEN", default_value = "127.0.0.1:7180")]
        listen: std::net::SocketAddr,
    },
    /// Run a garbage-collection pass now: delete blocks no file references, once unused for the
    /// grace period.
    Gc {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Wait for the pass to finish and print what it deleted.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every stored block on every server now; corrupt copies are replaced.
    Scrub {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Wait for the passes to finish and print blocks checked, corrupt and repaired.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check that every referenced block has N reachable, correct copies; report orphan blocks
    /// and dangling references. Exits non-zero when anything is wrong.
    Fsck {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Copy under-replicated blocks to the servers that should hold them.
        #[arg(long)]
        repair: bool,
        /// Read every copy and re-hash it.
        #[arg(long)]
        deep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Take a chunk server out of the ring: `remove` now (its copies are re-replicated from
    /// the others), or `drain` (it keeps serving while it hands its blocks to their new owners).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Metadata server administration: `backup DIR`.
    Meta {
        #[command(subcommand)]
        cmd: MetaCmd,
    },
    /// Create the cluster CA and issue node certificates.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
}

/// How an admin command reaches the cluster.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Metadata servers, comma-separated.
    #[arg(long, env = "TESSERA_META")]
    meta: String,
    /// Certificate bundle (ca.crt, node.crt, node.key): role client for mount, admin for the
    /// admin commands.
    #[arg(long, env = "TESSERA_CERTS")]
    certs: PathBuf,
}

impl ClusterArgs {
    /// Connect to the metadata service, then run `f` on a fresh runtime.
    fn run<T, F>(&self, f: impl FnOnce(admin::Admin) -> F) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let meta = meta_list(&self.meta)?;
        let certs = NodeCerts::load(&self.certs)?;
        runtime()?.block_on(async { f(admin::Admin::connect(&certs, &meta)?).await })
    }
}

#[derive(Subcommand)]
enum NodeCmd {
    Remove {
        /// Server id as shown by `tessera status`.
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    Drain {
        id: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Subcommand)]
enum MetaCmd {
    /// Add metadata server ID, already running at ADDR with `--id ID --join`, to the group: it
    /// catches up, then votes (docs/raft.md). One server at a time; an id once removed is
    /// refused.
    Add {
        id: u64,
        addr: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove metadata server ID from the group (stop it afterwards). Its id is never used
    /// again. Removing the leader makes it step down; the others elect one of them.
    Remove {
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Copy a consistent checkpoint of the metadata (taken while the cluster serves) into DIR,
    /// a new or empty directory, with a manifest of sizes and BLAKE3 hashes. `tessera-meta
    /// --restore DIR` starts a metadata server from it.
    Backup {
        dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create a CA (ca.crt, ca.key) in CA_DIR.
    Init { ca_dir: PathBuf },
    /// Issue a node bundle (ca.crt, node.crt, node.key) into NODE_DIR.
    Issue {
        ca_dir: PathBuf,
        node_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// meta, chunk, client or admin.
        #[arg(long)]
        role: String,
        /// Host name or IP address the node is reached at (servers); repeatable. Only meta and
        /// chunk certificates may act as TLS servers; client and admin ones are for connecting.
        #[arg(long)]
        host: Vec<String>,
    },
}

fn main() {
    tessera_common::init_logging();
    let cli: Cli = tessera_common::config::parse();
    if let Err(e) = run(cli) {
        eprintln!("tessera: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn meta_list(s: &str) -> anyhow::Result<Vec<String>> {
    parse_meta_list(s).map_err(anyhow::Error::msg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Cert { cmd: CertCmd::Init { ca_dir } } => {
            tls::init_ca(&ca_dir)?;
            println!("created CA in {}", ca_dir.display());
            Ok(())
        }
        Cmd::Cert { cmd: CertCmd::Issue { ca_dir, node_dir, name, role, host } } => {
            let role: Role = role.parse()?;
            if name.is_empty() {
                bail!("--name must not be empty");
            }
            tls::issue(&ca_dir, &node_dir, &name, role, &host)?;
            println!("issued {name} ({role}) into {}", node_dir.display());
            Ok(())
        }
        Cmd::Status { cluster, json } => cluster.run(|a| async move { a.status(json).await }),
        Cmd::Bench { dir, big_file_size, small_files, small_file_size, json } => {
            let o = tessera_client::bench::BenchOptions { dir, big_file_mib: big_file_size, small_files, small_file_kib: small_file_size };
            let rows = tessera_client::bench::run(&o, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                tessera_client::bench::print(&rows, &o.dir);
            }
            Ok(())
        }
        Cmd::Stats { metrics, interval, count, json } => {
            if !(interval > 0.0 && interval.is_finite()) {
                bail!("--interval must be a positive number of seconds");
            }
            let addrs: Vec<String> = metrics.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
            tessera_client::stats::run(&addrs, Duration::from_secs_f64(interval), count, json)
        }
        Cmd::Web { cluster, listen } => cluster.run(|a| async move {
            let bound = tessera_client::web::serve(a, listen).await?;
            println!("tessera web: the status page is at http://{bound}/ (Ctrl-C stops it)");
            tessera_common::wait_for_signal().await;
            Ok(())
        }),
        Cmd::Fsck { cluster, repair, deep, json } => {
            let r = cluster.run(|a| async move { a.fsck(deep, repair).await })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                tessera_client::fsck::print(&r, repair);
            }
            if !r.ok(repair) {
                std::process::exit(3);
            }
            Ok(())
        }
        Cmd::Gc { cluster, wait, json } => {
            let r = cluster.run(|a| async move { a.gc(wait).await })?;
            if json {
                println!("{}", serde_json::json!({ "scanned": r.scanned, "deleted": r.deleted, "unreachable": r.unreachable }));
            } else if wait {
                println!("gc: {} copies scanned, {} deleted, {} servers unreachable", r.scanned, r.deleted, r.unreachable);
            } else {
                println!("gc: pass started");
            }
            Ok(())
        }
        Cmd::Scrub { cluster, wait, json } => {
            let r = cluster.run(|a| async move { a.scrub(wait).await })?;
            if json {
                println!("{}", serde_json::json!({ "checked": r.checked, "corrupt": r.corrupt, "repaired": r.repaired, "bytes": r.bytes }));
            } else if wait {
                println!("scrub: {} blocks checked ({}), {} corrupt, {} repaired", r.checked, admin::human(r.bytes), r.corrupt, r.repaired);
            } else {
                println!("scrub: started on every server that is up");
            }
            Ok(())
        }
        Cmd::Node { cmd } => {
            let (id, cluster, action) = match cmd {
                NodeCmd::Remove { id, cluster } => (id, cluster, NodeAction::Remove),
                NodeCmd::Drain { id, cluster } => (id, cluster, NodeAction::Drain),
            };
            let node_id = u64::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| anyhow::anyhow!("'{id}' is not a server id (16 hex digits, see tessera status)"))?;
            cluster.run(|a| async move { a.node(node_id, action).await })?;
            println!("server {node_id:016x}: {}", if action == NodeAction::Remove { "removed from the ring" } else { "draining" });
            Ok(())
        }
        Cmd::Meta { cmd: MetaCmd::Add { id, addr, cluster } } => {
            if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                bail!("'{addr}' is not HOST:PORT");
            }
            cluster.run(|a| async move { a.meta_group(GroupChange::Add { id, addr: addr.clone() }).await.map(|()| addr) }).map(|addr| println!("metadata server {id} ({addr}) added to the group"))
        }
        Cmd::Meta { cmd: MetaCmd::Remove { id, cluster } } => {
            cluster.run(|a| async move { a.meta_group(GroupChange::Remove { id }).await })?;
            println!("metadata server {id} removed from the group; stop it now");
            Ok(())
        }
        Cmd::Meta { cmd: MetaCmd::Backup { dir, cluster, json } } => {
            let s = cluster.run(|a| async move { tessera_client::backup::backup(&a, &dir).await.map(|s| (s, dir)) })?;
            let (s, dir) = s;
            if json {
                println!("{}", serde_json::json!({ "dir": dir, "files": s.files, "bytes": s.bytes, "seconds": s.took.as_secs_f64(), "created": s.manifest.created, "ring_version": s.manifest.ring_version }));
            } else {
                println!("backup: {} files, {} in {} ({:.2} s), taken {}", s.files, admin::human(s.bytes), dir.display(), s.took.as_secs_f64(), s.manifest.created);
            }
            Ok(())
        }
        Cmd::Dev { mountpoint, data_dir, chunk_servers, meta_servers, replicas, gc_grace, session_lease, metrics } => {
            runtime()?.block_on(dev::run(dev::DevOptions { mountpoint, data_dir, chunk_servers, meta_servers, replicas, gc_grace, session_lease, metrics }))
        }
        Cmd::Mount { meta: source, certs, mountpoint, options, foreground, metrics } => {
            let meta = meta_list(&source)?;
            let mp = mount::check_mountpoint(&mountpoint)?;
            let certs_b = NodeCerts::load(&certs)?;
            if !foreground {
                return detach(&mp);
            }
            let rt = runtime()?;
            rt.block_on(async {
                let fs = mount::connect(&certs_b, &meta).await?;
                if let Some(at) = metrics {
                    mount::serve_metrics(&fs, at).await?;
                }
                let m = mount::mount(fs, &mp, &source, &options, tokio::runtime::Handle::current())?;
                m.run_until_signal().await
            })
        }
    }
}

fn is_mounted(mp: &std::path::Path) -> bool {
    let want = mp.to_string_lossy();
    std::fs::read_to_string("/proc/mounts").map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*want))).unwrap_or(false)
}

/// Re-run this command in the foreground as a detached child; return once it has mounted.
fn detach(mp: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::env::temp_dir().join(format!("tessera-mount-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&args).stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(mp) {
            println!("mounted {} (pid {}, log {})", mp.display(), child.id(), log.display());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            let reason = text.lines().rev().find(|l| l.starts_with("tessera:")).map(|l| l.trim_start_matches("tessera:").trim().to_string());
            bail!("{}", reason.unwrap_or_else(|| format!("mount process exited with {status}; see {}", log.display())));
        }
        if Instant::now() > deadline {
            bail!("not mounted after 60s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

tessera_common::config_docs_test!(Cli);
