//! Connecting to a cluster and mounting it: shared by `tessera mount` and `tessera dev`.

use crate::blocks::Blocks;
use crate::fs::Fs;
use crate::fuse::FuseFs;
use crate::meta::MetaClient;
use anyhow::{bail, Context};
use fuser::{Config, MountOption, SessionACL};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_common::net;
use tessera_common::tls::NodeCerts;
use tokio::sync::oneshot;
use tracing::info;

/// Block cache per mount.
const CACHE_BYTES: usize = 512 << 20;
/// Readahead set on the mount's backing device, in KiB.
const READ_AHEAD_KB: u32 = 16384;

/// Refuse a mount point that is missing or not a directory, naming it.
pub fn check_mountpoint(p: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(std::fs::canonicalize(p)?),
        Ok(_) => bail!("mount point {} is not a directory", p.display()),
        Err(e) => bail!("mount point {}: {e}", p.display()),
    }
}

/// Open a session with the metadata service and set up block access.
pub async fn connect(certs: &NodeCerts, meta: &[String]) -> anyhow::Result<Arc<Fs>> {
    let ep = net::client_endpoint(certs)?;
    let mc = MetaClient::connect(ep.clone(), meta, &certs.identity.name)
        .await
        .with_context(|| format!("cannot connect to the metadata server at {}", meta.join(",")))?;
    let mc = Arc::new(mc);
    let blocks = Blocks::new(ep, mc.first_ring.clone(), mc.replicas as usize, mc.write_quorum as usize, CACHE_BYTES);
    let fs = Fs::new(mc.clone(), blocks.clone());
    // Follow ring changes (servers joining, leaving).
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Ok(r) = mc.ring().await {
                blocks.set_ring(r);
            }
        }
    });
    tokio::spawn(crate::closes::Closes::run(Arc::downgrade(&fs)));
    let weak = Arc::downgrade(&fs);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match weak.upgrade() {
                Some(fs) => fs.commit_idle().await,
                None => return,
            }
        }
    });
    // The cluster's free space, so that writes get ENOSPC before fsync would (`room.rs`).
    let weak = Arc::downgrade(&fs);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(fs) = weak.upgrade() else { return };
            if let Err(e) = fs.statfs().await {
                tracing::debug!("asking for free space failed: {e}");
            }
        }
    });
    // Keep the session's lease: a mount that stops heartbeating (killed, cut off) loses its
    // locks and open files at the metadata server when the lease runs out.
    let weak = Arc::downgrade(&fs);
    tokio::spawn(async move {
        loop {
            let Some(fs) = weak.upgrade() else { return };
            let pause = match fs.meta.heartbeat().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("session heartbeat failed: {e}");
                    Duration::from_secs(1)
                }
            };
            drop(fs);
            tokio::time::sleep(pause).await;
        }
    });
    let weak = Arc::downgrade(&fs);
    let meta = fs.meta.clone();
    tokio::spawn(async move {
        loop {
            meta.renewed.notified().await;
            match weak.upgrade() {
                Some(fs) => fs.reopen_all().await,
                None => return,
            }
        }
    });
    Ok(fs)
}

/// The options a mount starts with. The source shown in /proc/mounts is `source` (the `--meta`
/// list, as an fstab line names it, so mount(8) and the remount helper can match the two); the
/// type is `fuse.tessera`, set through the kernel's own `subtype=` (fuser's `Subtype` reaches
/// only fusermount), so `mount -o remount` finds the helper `mount.fuse.tessera`. Without root
/// the mount goes through fusermount, which splits options at commas: the source is then plain
/// `tessera`.
fn mount_options(opts: &[String], source: &str) -> anyhow::Result<Vec<MountOption>> {
    let source = if nix::unistd::geteuid().is_root() && !source.is_empty() { source } else { "tessera" };
    let mut out = vec![MountOption::FSName(source.into()), MountOption::CUSTOM("subtype=tessera".into()), MountOption::DefaultPermissions];
    for o in opts.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        out.push(match o {
            "ro" => MountOption::RO,
            "rw" => MountOption::RW,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "nosuid" => MountOption::NoSuid,
            "nodev" => MountOption::NoDev,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "sync" => MountOption::Sync,
            "dirsync" => MountOption::DirSync,
            // Always on: other users need access (permission checks are the kernel's).
            "allow_other" | "default_permissions" => continue,
            other => bail!("unknown mount option '{other}'"),
        });
    }
    Ok(out)
}

/// A live mount. Dropping it without `unmount` leaves the session thread running.
pub struct Mounted {
    pub mountpoint: PathBuf,
    fs: Arc<Fs>,
    unmounter: fuser::SessionUnmounter,
    ended: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Mount `fs` at `mountpoint` as `source` (the metadata addresses); requests are served on `rt`.
/// Serve the mount's metrics on `at` (`--metrics`); a taken or bad address is an error.
pub async fn serve_metrics(fs: &Fs, at: std::net::SocketAddr) -> anyhow::Result<std::net::SocketAddr> {
    let reg = tessera_common::metrics::Metrics::new();
    fs.blocks.metrics.register(&reg);
    let bound = tessera_common::metrics::serve(at, reg).await.with_context(|| format!("--metrics {at}: cannot listen"))?;
    tracing::info!(%bound, "metrics on http://{bound}/metrics");
    Ok(bound)
}

pub fn mount(fs: Arc<Fs>, mountpoint: &Path, source: &str, opts: &[String], rt: tokio::runtime::Handle) -> anyhow::Result<Mounted> {
    let mut cfg = Config::default();
    cfg.mount_options = mount_options(opts, source)?;
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(2);
    let fuse = FuseFs::new(fs.clone(), rt);
    let notifier = fuse.notifier_slot();
    let mut session = fuser::Session::new(fuse, mountpoint, &cfg).with_context(|| format!("mounting {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    let unmounter = session.unmount_callable();
    let (tx, ended) = oneshot::channel();
    let thread = std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
        if let Err(e) = session.run() {
            tracing::error!("FUSE session ended: {e}");
        }
        let _ = tx.send(());
    })?;
    raise_readahead(mountpoint);
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Mounted { mountpoint: mountpoint.to_owned(), fs, unmounter, ended, thread })
}

fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(mountpoint) else { return };
    let dev = m.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    if let Err(e) = std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        tracing::debug!("could not raise readahead at {path}: {e}");
    }
}

impl Mounted {
    /// Serve until SIGINT/SIGTERM or an external unmount; then unmount and wait.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = tessera_common::wait_for_signal() => {}
            _ = &mut self.ended => { info!("unmounted from outside"); }
        }
        self.unmount().await
    }

    pub async fn unmount(mut self) -> anyhow::Result<()> {
        if self.unmounter.unmount().is_err() {
            // Busy (a process still has a file open): detach so the mount goes away anyway.
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())?;
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let (thread, fs) = (self.thread, self.fs);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        // Release our locks and open files now rather than at the lease's end.
        if let Err(e) = fs.meta.close_session().await {
            tracing::warn!("closing the session failed (it expires with its lease): {e}");
        }
        info!("unmounted");
        Ok(())
    }
}
