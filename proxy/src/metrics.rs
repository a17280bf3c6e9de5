//! Prometheus metrics of the wire proxy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label for traffic direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// `client_to_server` or `server_to_client`.
    pub direction: &'static str,
}

/// Label for an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    /// Short machine-readable kind, e.g. `protocol`, `upstream_connect`.
    pub kind: &'static str,
}

/// The proxy's counters, shared by all sessions.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Sessions opened since start.
    pub sessions_total: Counter,
    /// Sessions open now.
    pub sessions_active: Gauge,
    /// Bytes relayed.
    pub bytes: Family<Direction, Counter>,
    /// Protocol messages relayed.
    pub frames: Family<Direction, Counter>,
    /// Sessions ended by an error, by kind.
    pub errors: Family<ErrorKind, Counter>,
    /// Cancel requests forwarded.
    pub cancels: Counter,
    /// Time to open an upstream connection (TCP + TLS).
    pub upstream_connect_seconds: Histogram,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them under `switchyard_proxy_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            sessions_total: Counter::default(),
            sessions_active: Gauge::default(),
            bytes: Family::default(),
            frames: Family::default(),
            errors: Family::default(),
            cancels: Counter::default(),
            upstream_connect_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("switchyard_proxy");
        r.register(
            "sessions",
            "Client sessions opened",
            m.sessions_total.clone(),
        );
        r.register(
            "sessions_active",
            "Client sessions open now",
            m.sessions_active.clone(),
        );
        r.register("bytes", "Bytes relayed", m.bytes.clone());
        r.register("frames", "Protocol messages relayed", m.frames.clone());
        r.register("errors", "Sessions ended by an error", m.errors.clone());
        r.register(
            "cancel_requests",
            "Cancel requests forwarded",
            m.cancels.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "Time to connect to the upstream server",
            m.upstream_connect_seconds.clone(),
        );
        m
    }

    /// The byte and frame counters of one direction, looked up once per
    /// session so that the hot path only does atomic adds.
    pub fn traffic(&self, direction: &'static str) -> Traffic {
        let label = Direction { direction };
        Traffic {
            bytes: self.bytes.get_or_create(&label).clone(),
            frames: self.frames.get_or_create(&label).clone(),
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorKind { kind }).inc();
    }
}

/// Counters of one traffic direction.
#[derive(Clone, Default)]
pub struct Traffic {
    /// Bytes relayed.
    pub bytes: Counter,
    /// Messages relayed (streamed pieces of one message count once).
    pub frames: Counter,
}

impl Traffic {
    /// Adds one read batch.
    pub fn add(&self, bytes: usize, frames: u64) {
        self.bytes.inc_by(bytes as u64);
        if frames > 0 {
            self.frames.inc_by(frames);
        }
    }
}
