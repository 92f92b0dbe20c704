//! Prometheus metrics. `--metrics ADDR` on a server or a mount (off unless given) serves them in
//! the text format on plain HTTP, `GET /metrics`. One [`Metrics`] per server or mount (a `tessera
//! dev` process runs several), every name prefixed `tessera_`; docs/metrics.md lists them all.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use crate::http::Reply;

/// A registry, and what is read from elsewhere at each scrape.
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics { registry: Mutex::new(Registry::with_prefix("tessera")) })
    }

    /// Register a metric that is updated where things happen (`name` without the prefix; a
    /// counter gets `_total` appended).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().unwrap().register(name, help, metric);
    }

    /// Register values read at each scrape from state kept elsewhere (a store's size, workers).
    pub fn register_scrape(&self, read: impl Fn(&mut Samples) + Send + Sync + 'static) {
        self.registry.lock().unwrap().register_collector(Box::new(Scraped(Box::new(read))));
    }

    /// The text format, as served.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String cannot fail");
        out
    }
}

/// Samples of one scrape, grouped by metric name in the order first given.
#[derive(Default)]
pub struct Samples {
    list: Vec<Sample>,
}

struct Sample {
    name: &'static str,
    help: &'static str,
    counter: bool,
    labels: Vec<(&'static str, String)>,
    value: i64,
}

impl Samples {
    /// A count that only grows (as long as the process lives): `name_total`.
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.push(name, help, true, labels, value.min(i64::MAX as u64) as i64);
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: i64) {
        self.push(name, help, false, labels, value);
    }

    fn push(&mut self, name: &'static str, help: &'static str, counter: bool, labels: &[(&'static str, &str)], value: i64) {
        let labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.list.push(Sample { name, help, counter, labels, value });
    }
}

struct Scraped(Box<dyn Fn(&mut Samples) + Send + Sync>);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut s = Samples::default();
        (self.0)(&mut s);
        let mut names: Vec<&'static str> = Vec::new();
        for x in &s.list {
            if !names.contains(&x.name) {
                names.push(x.name);
            }
        }
        for name in names {
            let group: Vec<&Sample> = s.list.iter().filter(|x| x.name == name).collect();
            let first = group[0];
            let kind = if first.counter { ConstCounter::new(0u64).metric_type() } else { ConstGauge::new(0i64).metric_type() };
            let mut e = encoder.encode_descriptor(name, first.help, None, kind)?;
            if first.labels.is_empty() {
                // An unlabelled metric has one value.
                encode_one(first, e)?;
                continue;
            }
            for x in group {
                encode_one(x, e.encode_family(&x.labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_one(x: &Sample, e: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    if x.counter {
        ConstCounter::new(x.value as u64).encode(e)
    } else {
        ConstGauge::new(x.value).encode(e)
    }
}

/// The operation a request or a FUSE call is counted under (a label value).
pub trait OpName {
    fn op_name(&self) -> &'static str;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

fn latency() -> Histogram {
    // 100 µs to about 18 s.
    Histogram::new(exponential_buckets(0.0001, 3.0, 12))
}

/// Calls per operation and how long they took: `{what}_requests_total` and
/// `{what}_request_seconds` (a histogram), labelled `op`.
pub struct Ops {
    requests: Family<OpLabel, Counter>,
    seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl Default for Ops {
    fn default() -> Self {
        Ops { requests: Family::default(), seconds: Family::new_with_constructor(latency) }
    }
}

impl Ops {
    /// Show these counts on `m` (they are kept either way: counting costs an atomic add).
    pub fn register(&self, m: &Metrics, what: &str, served: &str) {
        m.register(format!("{what}_requests").as_str(), &format!("{served} handled, by operation"), self.requests.clone());
        m.register(format!("{what}_request_seconds").as_str(), &format!("Time to answer {served}, by operation"), self.seconds.clone());
    }

    pub fn observe(&self, op: &'static str, took: Duration) {
        let l = OpLabel { op };
        self.requests.get_or_create(&l).inc();
        self.seconds.get_or_create(&l).observe(took.as_secs_f64());
    }
}

/// What a QUIC server counts (`common::net::serve`).
pub struct RpcMetrics {
    pub ops: Ops,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub protocol_errors: Counter,
    pub connections: Gauge,
    pub accepted: Counter,
    pub handshake_failures: Counter,
    pub refused: Counter,
}

impl RpcMetrics {
    pub fn new(m: &Metrics) -> Arc<Self> {
        let r = RpcMetrics {
            ops: Ops::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            protocol_errors: Counter::default(),
            connections: Gauge::default(),
            accepted: Counter::default(),
            handshake_failures: Counter::default(),
            refused: Counter::default(),
        };
        r.ops.register(m, "rpc", "Requests");
        m.register("rpc_received_bytes", "Bytes of requests received (headers and payloads)", r.received_bytes.clone());
        m.register("rpc_sent_bytes", "Bytes of answers sent (headers and payloads)", r.sent_bytes.clone());
        m.register("rpc_protocol_errors", "Requests that broke the protocol (their connection was closed)", r.protocol_errors.clone());
        m.register("quic_connections", "QUIC connections open now", r.connections.clone());
        m.register("quic_accepted", "QUIC connections accepted", r.accepted.clone());
        m.register("quic_handshake_failures", "QUIC or TLS handshakes that failed", r.handshake_failures.clone());
        m.register("quic_refused", "Connections refused for their certificate (wrong role, no identity)", r.refused.clone());
        Arc::new(r)
    }
}

/// Bind `addr` and serve `m` there (`GET /metrics`) for as long as the runtime runs. Binding
/// errors are returned, so a bad `--metrics` is a one-line startup error.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    crate::http::serve(addr, move |path| {
        let m = m.clone();
        async move {
            match path.as_str() {
                "/metrics" => Reply::ok("text/plain; version=0.0.4; charset=utf-8", m.render()),
                "/" => Reply::ok("text/plain; charset=utf-8", "Tessera metrics: GET /metrics\n".into()),
                _ => Reply::not_found("try /metrics"),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scraped_values_and_updated_ones_render_in_the_text_format() {
        let m = Metrics::new();
        let ops = Ops::default();
        ops.register(&m, "rpc", "Requests");
        ops.observe("put", Duration::from_millis(3));
        ops.observe("put", Duration::from_millis(5));
        m.register_scrape(|s| {
            s.gauge("chunk_blocks", "Blocks stored", &[], 7);
            s.counter("worker_runs", "Passes run", &[("worker", "scrub")], 2);
            s.counter("worker_runs", "Passes run", &[("worker", "repair")], 3);
        });
        let text = m.render();
        assert!(text.contains("tessera_rpc_requests_total{op=\"put\"} 2"), "{text}");
        assert!(text.contains("tessera_rpc_request_seconds_count{op=\"put\"} 2"), "{text}");
        assert!(text.contains("tessera_chunk_blocks 7"), "{text}");
        assert!(text.contains("tessera_worker_runs_total{worker=\"scrub\"} 2"), "{text}");
        assert!(text.contains("tessera_worker_runs_total{worker=\"repair\"} 3"), "{text}");
        assert_eq!(text.matches("# TYPE tessera_worker_runs counter").count(), 1, "{text}");
    }
}
