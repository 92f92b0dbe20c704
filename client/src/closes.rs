//! Last closes, reported a moment late and together. The last close of a file on this mount
//! tells the metadata server (`Close`), which until then keeps the file even if it is unlinked.
//! Under Raft every command is a log write; sent at once, each close took a write of its own
//! beside the next file's create. Collected for [`DELAY`], the closes of a burst are sent at
//! once and share a log entry (the server's batcher puts concurrent commands into one).
//!
//! The delay changes nothing a user can see but timing: an unlinked file's space is freed that
//! much later. A close with locks of this mount on the file is not delayed (it releases them
//! at the server), nor is a reopen: the server counts opens, so an `Open` sent meanwhile
//! keeps the file open whichever arrives first.

use crate::fs::Fs;
use std::sync::{Mutex, Weak};
use std::time::Duration;
use tessera_common::proto::meta::Mutation;

/// How long a close waits for others.
const DELAY: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Closes {
    queue: Mutex<Vec<u64>>,
    wake: tokio::sync::Notify,
}

impl Closes {
    /// Report the last close of `ino` soon.
    pub fn push(&self, ino: u64) {
        let first = {
            let mut q = self.queue.lock().unwrap();
            q.push(ino);
            q.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Send the queued closes, [`DELAY`] after the first of each burst, until the mount is gone.
    pub async fn run(fs: Weak<Fs>) {
        let Some(closes) = fs.upgrade().map(|f| f.closes.clone()) else { return };
        loop {
            closes.wake.notified().await;
            tokio::time::sleep(DELAY).await;
            let Some(fs) = fs.upgrade() else { return };
            let inos = std::mem::take(&mut *closes.queue.lock().unwrap());
            let sent = inos.iter().map(|&ino| {
                let fs = &fs;
                async move {
                    if let Err(e) = fs.meta.mutate_done(Mutation::Close { ino }).await {
                        // The session's expiry closes it in the end.
                        tracing::warn!(ino, "reporting a close failed: {e}");
                    }
                }
            });
            futures::future::join_all(sent).await;
        }
    }
}
