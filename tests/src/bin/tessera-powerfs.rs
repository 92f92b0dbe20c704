//! The power-loss simulator (`tessera_tests::powerfs`) as a process, for `scripts/cluster up
//! --powerfs` and `scripts/fault powercut`: `tessera-powerfs MOUNTPOINT CAPACITY_BYTES` mounts it
//! and serves until SIGTERM or SIGINT (then unmounts). SIGUSR1 cuts the power: everything not
//! synced is dropped; whoever sends it must have killed the processes using the mount first.
//! SIGUSR2 makes everything durable, as a machine's periodic writeback would have by then.

use nix::sys::signal::{SigSet, Signal};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(Ok(capacity))) = (args.first(), args.get(1).map(|c| c.parse::<u64>())) else {
        eprintln!("usage: tessera-powerfs MOUNTPOINT CAPACITY_BYTES");
        std::process::exit(2);
    };
    // Blocked before the FUSE threads start, so that they inherit the mask and only `wait` below
    // takes these signals.
    let mut set = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("tessera-powerfs: blocking signals: {e}");
        std::process::exit(1);
    }
    let fs = match tessera_tests::powerfs::PowerFs::mount_with_capacity(Path::new(dir), capacity) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("tessera-powerfs: mounting at {dir}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("tessera-powerfs: mounted at {dir} ({capacity} bytes)");
    loop {
        match set.wait() {
            Ok(Signal::SIGUSR1) => {
                let r = fs.power_cut();
                eprintln!("tessera-powerfs: power cut: {} lost, {} rolled back", r.lost_nodes, r.rolled_back);
            }
            Ok(Signal::SIGUSR2) => fs.sync_all(),
            Ok(_) => break,
            Err(e) => {
                eprintln!("tessera-powerfs: waiting for signals: {e}");
                break;
            }
        }
    }
    drop(fs);
    eprintln!("tessera-powerfs: unmounted {dir}");
}
