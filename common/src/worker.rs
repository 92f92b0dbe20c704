//! Background workers: the one shape of every periodic task of a server (session-lease expiry,
//! garbage collection, membership refresh, heartbeat, repair, scrub), each with a name, a state
//! and a progress line that `tessera status` lists, as Garage's `garage worker list` does.
//!
//! [`spawn`] runs a pass every interval after the previous one ended (and, with
//! [`spawn_woken`], also whenever a watch channel changes) until shutdown; a pass is never cut
//! short by the shutdown signal, the server's task aborts it. A pass asked for on demand
//! (`tessera gc --wait`) goes through the same [`Worker::run`], so it is counted in one place.

use crate::metrics::Samples;
use crate::proto::chunk::ScrubReport;
use crate::proto::meta::{GcReport, WorkerStatus};
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The workers of one server, in the order they were added.
#[derive(Default)]
pub struct Workers {
    list: Mutex<Vec<Arc<Worker>>>,
}

impl Workers {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Register a worker named `name` (idle, no pass yet).
    pub fn add(&self, name: &str) -> Arc<Worker> {
        let w = Arc::new(Worker { name: name.to_string(), inner: Mutex::default() });
        self.list.lock().unwrap().push(w.clone());
        w
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.list.lock().unwrap().iter().map(|w| w.status()).collect()
    }

    /// Every worker's passes, errors, state and totals, for `--metrics`.
    pub fn sample(&self, s: &mut Samples) {
        for w in self.list.lock().unwrap().iter() {
            let i = w.inner.lock().unwrap();
            let name = [("worker", w.name.as_str())];
            s.counter("worker_passes", "Passes a background worker finished", &name, i.passes);
            s.counter("worker_errors", "Passes of a background worker that failed", &name, i.errors);
            s.gauge("worker_running", "Passes of a background worker under way now", &name, i.running as i64);
            s.gauge("worker_last_pass_milliseconds", "How long a background worker's last pass took", &name, i.last_duration.as_millis() as i64);
            for (what, n) in &i.tally {
                s.counter("worker_items", "What background workers' passes did (item: copies_deleted, blocks_checked, ...)", &[("worker", w.name.as_str()), ("item", what)], *n);
            }
        }
    }
}

pub struct Worker {
    name: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Passes under way: a periodic one and ones asked for on demand may overlap (the worker's
    /// own lock, if it has one, then makes them take turns).
    running: u32,
    stopped: bool,
    passes: u64,
    errors: u64,
    consecutive_errors: u64,
    last_start_ms: u64,
    last_duration: Duration,
    last_error: Option<String>,
    progress: String,
    /// Totals of the passes' [`Outcome::tally`], in the order first seen.
    tally: Vec<(&'static str, u64)>,
}

/// What a pass tells about its success; a failed pass is counted and its error kept.
pub trait Outcome {
    fn error(&self) -> Option<String>;
    /// What the pass did, as counts to add to the worker's totals (`tessera_worker_items_total`).
    fn tally(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

impl Outcome for () {
    fn error(&self) -> Option<String> {
        None
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    fn error(&self) -> Option<String> {
        self.as_ref().err().map(|e| e.to_string())
    }
}

impl Outcome for GcReport {
    fn error(&self) -> Option<String> {
        (self.unreachable > 0).then(|| format!("{} server(s) could not be listed", self.unreachable))
    }
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![("copies_scanned", self.scanned), ("copies_deleted", self.deleted)]
    }
}

impl Outcome for ScrubReport {
    fn error(&self) -> Option<String> {
        (self.corrupt > self.repaired).then(|| format!("{} corrupt copies found no good copy elsewhere", self.corrupt - self.repaired))
    }
    fn tally(&self) -> Vec<(&'static str, u64)> {
        vec![("blocks_checked", self.checked), ("bytes_checked", self.bytes), ("corrupt_found", self.corrupt), ("corrupt_repaired", self.repaired)]
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Marks the end of a pass even when its future is dropped (the task aborted).
struct Running<'a>(&'a Worker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut i = self.0.inner.lock().unwrap();
        i.running = i.running.saturating_sub(1);
    }
}

impl Worker {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The one-line progress `tessera status` shows (what the pass is at, or what the last did).
    pub fn set_progress(&self, progress: impl Into<String>) {
        self.inner.lock().unwrap().progress = progress.into();
    }

    /// Run one pass, counting it, its time and its error.
    pub async fn run<T: Outcome>(&self, pass: impl Future<Output = T>) -> T {
        let start = Instant::now();
        {
            let mut i = self.inner.lock().unwrap();
            i.running += 1;
            i.last_start_ms = unix_ms();
        }
        let running = Running(self);
        let out = pass.await;
        drop(running);
        let mut i = self.inner.lock().unwrap();
        i.passes += 1;
        i.last_duration = start.elapsed();
        for (what, n) in out.tally() {
            match i.tally.iter_mut().find(|t| t.0 == what) {
                Some(t) => t.1 += n,
                None => i.tally.push((what, n)),
            }
        }
        match out.error() {
            Some(e) => {
                i.errors += 1;
                i.consecutive_errors += 1;
                i.last_error = Some(e);
            }
            None => i.consecutive_errors = 0,
        }
        drop(i);
        out
    }

    pub fn status(&self) -> WorkerStatus {
        let i = self.inner.lock().unwrap();
        WorkerStatus {
            name: self.name.clone(),
            state: if i.running > 0 { "running" } else if i.stopped { "stopped" } else { "idle" }.into(),
            passes: i.passes,
            errors: i.errors,
            consecutive_errors: i.consecutive_errors,
            last_start_ms: i.last_start_ms,
            last_duration_ms: i.last_duration.as_millis() as u64,
            last_error: i.last_error.clone(),
            progress: i.progress.clone(),
        }
    }
}

/// When a worker's passes run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Time from the end of one pass to the start of the next.
    pub every: Duration,
    /// The first pass runs at once (a heartbeat registers first), not after `every`.
    pub at_start: bool,
}

impl Schedule {
    pub fn every(every: Duration) -> Self {
        Schedule { every, at_start: false }
    }

    pub fn at_start(self) -> Self {
        Schedule { at_start: true, ..self }
    }
}

/// Run `pass` on `schedule` until `shutdown` changes.
pub fn spawn<F, Fut>(worker: Arc<Worker>, schedule: Schedule, shutdown: watch::Receiver<bool>, pass: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome + Send,
{
    tokio::spawn(run_loop::<(), _, _>(worker, schedule, None, shutdown, pass))
}

/// As [`spawn`], and also a pass as soon as `wake` changes (a repair scan when the ring does).
pub fn spawn_woken<W, F, Fut>(worker: Arc<Worker>, schedule: Schedule, wake: watch::Receiver<W>, shutdown: watch::Receiver<bool>, pass: F) -> JoinHandle<()>
where
    W: Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome + Send,
{
    tokio::spawn(run_loop(worker, schedule, Some(wake), shutdown, pass))
}

async fn run_loop<W, F, Fut>(worker: Arc<Worker>, schedule: Schedule, mut wake: Option<watch::Receiver<W>>, mut shutdown: watch::Receiver<bool>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let mut first = true;
    loop {
        if !(first && schedule.at_start) {
            let woken = async {
                match wake.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(schedule.every) => {}
                ok = woken => if !ok {
                    // The sender is gone: nothing will wake us again, the interval still does.
                    wake = None;
                    continue;
                },
                _ = shutdown.changed() => break,
            }
        }
        first = false;
        worker.run(pass()).await;
    }
    worker.inner.lock().unwrap().stopped = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn one(workers: &Workers) -> WorkerStatus {
        workers.status().into_iter().next().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn passes_are_counted_and_shutdown_stops_the_worker() {
        let workers = Workers::new();
        let w = workers.add("tick");
        assert_eq!(one(&workers).state, "idle");
        let (stop, shutdown) = watch::channel(false);
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let w2 = w.clone();
        let task = spawn(w.clone(), Schedule::every(Duration::from_secs(10)), shutdown, move || {
            let (c, w) = (c.clone(), w2.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                w.set_progress(format!("pass {n}"));
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(one(&workers).passes, 0, "the first pass waits for the interval");
        tokio::time::sleep(Duration::from_secs(21)).await;
        let s = one(&workers);
        assert_eq!((s.passes, s.errors, s.progress.as_str(), s.state.as_str()), (2, 0, "pass 2", "idle"));
        assert!(s.last_start_ms > 0);
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(one(&workers).state, "stopped");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "no pass after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_is_recorded_and_cleared_from_the_streak() {
        let workers = Workers::new();
        let w = workers.add("flaky");
        let r: Result<(), String> = w.run(async { Err("disk on fire".to_string()) }).await;
        assert!(r.is_err());
        let s = one(&workers);
        assert_eq!((s.passes, s.errors, s.consecutive_errors), (1, 1, 1));
        assert_eq!(s.last_error.as_deref(), Some("disk on fire"));
        w.run(async { Ok::<_, String>(()) }).await.unwrap();
        let s = one(&workers);
        assert_eq!((s.passes, s.errors, s.consecutive_errors), (2, 1, 0));
        assert_eq!(s.last_error.as_deref(), Some("disk on fire"), "the last error is kept after a good pass");
        let report = w.run(async { GcReport { unreachable: 1, ..Default::default() } }).await;
        assert_eq!(report.unreachable, 1);
        assert_eq!(one(&workers).errors, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn at_start_and_wake_run_a_pass_early() {
        let workers = Workers::new();
        let (_stop, shutdown) = watch::channel(false);
        let (ring, wake) = watch::channel(0u64);
        let w = workers.add("woken");
        spawn_woken(w.clone(), Schedule::every(Duration::from_secs(100)).at_start(), wake, shutdown, || async {});
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(w.status().passes, 1, "at_start runs the first pass at once");
        ring.send_replace(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(w.status().passes, 2, "a change of the wake channel runs a pass");
        drop(ring);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(w.status().passes, 2, "a dropped wake sender does not spin");
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(w.status().passes, 3, "the interval still runs passes");
    }

    #[tokio::test(start_paused = true)]
    async fn state_is_running_during_a_pass() {
        let workers = Workers::new();
        let w = workers.add("slow");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let w2 = w.clone();
        let t = tokio::spawn(async move { w2.run(async { rx.await.ok(); }).await });
        tokio::task::yield_now().await;
        assert_eq!(w.status().state, "running");
        tx.send(()).unwrap();
        t.await.unwrap();
        assert_eq!(w.status().state, "idle");
    }
}
