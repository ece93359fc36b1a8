//! L4 telemetry with Istio's names and labels: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total` (prefix `istio_` from the registry), and one access-log
//! line per connection (tracing target `access`).
//!
//! A [`ConnectionRecord`] is made when a connection is accepted (counting it opened) and
//! finished once (counting it closed, adding its bytes, logging it). Label values are shared
//! `Arc<str>`s taken from the workload state, so recording costs reference-count bumps and one
//! hash look-up per family, not string copies.

use std::net::SocketAddr;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use ambit_dataplane::labels::{encode_peers, Peer, ServiceLabels};

/// A failure that ends a connection, as telemetry classifies it.
pub trait Failure: std::fmt::Display {
    /// The response flag it is recorded with.
    fn flags(&self) -> ResponseFlags;
}

/// Which end reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Why a connection did not complete normally (Istio's `response_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    None,
    /// Refused by authorization.
    Deny,
    /// The upstream could not be reached.
    Connect,
    /// The mTLS handshake failed.
    TlsFailure,
    /// No certificate for the source identity.
    IdentityError,
    /// Refused by the source's `REGISTRY_ONLY` outbound traffic policy: the destination is
    /// outside the registry (Istio's `BlackHoleCluster`).
    BlackHole,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
            ResponseFlags::TlsFailure => "TLS_FAILURE",
            ResponseFlags::IdentityError => "IDENTITY_ERROR",
            ResponseFlags::BlackHole => "BLACKHOLE",
        }
    }
}

/// How the connection was secured (Istio's `connection_security_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    MutualTls,
    Unknown,
}

/// The label set of every `istio_tcp_*` series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    pub reporter: Reporter,
    pub source: Peer,
    pub destination: Peer,
    pub service: Option<ServiceLabels>,
    pub security: Security,
    pub flags: ResponseFlags,
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut put = |key: &str, value: &str| (key, value).encode(encoder.encode_label());
        put("reporter", self.reporter.as_str())?;
        encode_peers(&mut put, &self.source, &self.destination, self.service.as_ref())?;
        put("request_protocol", "tcp")?;
        put("response_flags", self.flags.as_str())?;
        put(
            "connection_security_policy",
            match self.security {
                Security::MutualTls => "mutual_tls",
                Security::Unknown => "unknown",
            },
        )
    }
}

/// The four connection counter families, registered under Istio's names; cheap to clone (one shared allocation), as every connection's
/// record holds them for its whole life.
#[derive(Clone, Default)]
pub struct Metrics(std::sync::Arc<Families>);

#[derive(Default)]
struct Families {
    opened: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    received: Family<Labels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Families::default();
        registry.register("tcp_connections_opened", "Connections opened", m.opened.clone());
        registry.register("tcp_connections_closed", "Connections closed", m.closed.clone());
        registry.register("tcp_sent_bytes", "Bytes sent to the destination (request direction)", m.sent.clone());
        registry.register("tcp_received_bytes", "Bytes received from the destination", m.received.clone());
        Metrics(std::sync::Arc::new(m))
    }
}

/// Where a connection went, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One connection's telemetry, from accept to close.
pub struct ConnectionRecord {
    metrics: Metrics,
    pub labels: Labels,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The HBONE peer, when tunnelled.
    pub hbone_addr: Option<SocketAddr>,
    start: Instant,
    opened: bool,
}

impl ConnectionRecord {
    /// Starts a record; `count_open` is false for connections refused before they were
    /// established (they are counted closed only, as Istio does for early denials).
    pub fn new(metrics: &Metrics, labels: Labels, direction: Direction, src: SocketAddr, dst: SocketAddr) -> Self {
        ConnectionRecord {
            metrics: metrics.clone(),
            labels,
            direction,
            src,
            dst,
            hbone_addr: None,
            start: Instant::now(),
            opened: false,
        }
    }

    /// Counts the connection opened (once it is established with its final labels).
    pub fn open(&mut self) {
        if !self.opened {
            self.opened = true;
            self.metrics.0.opened.get_or_create(&self.labels).inc();
        }
    }

    /// Ends a connection that failed before carrying a byte: the failure names its own
    /// response flag, so no path sets one by hand or forgets it.
    pub fn fail(mut self, failure: &impl Failure) {
        self.labels.flags = failure.flags();
        self.finish(0, 0, Some(failure));
    }

    /// Counts it closed, adds its bytes and writes the access-log line.
    pub fn finish(mut self, sent: u64, received: u64, error: Option<&dyn std::fmt::Display>) {
        if !self.opened && self.labels.flags == ResponseFlags::None {
            self.open();
        }
        self.metrics.0.closed.get_or_create(&self.labels).inc();
        if sent > 0 {
            self.metrics.0.sent.get_or_create(&self.labels).inc_by(sent);
        }
        if received > 0 {
            self.metrics.0.received.get_or_create(&self.labels).inc_by(received);
        }
        let l = &self.labels;
        let direction = match self.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let error = error.map(|e| e.to_string());
        macro_rules! access_log {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    target: "access",
                    direction,
                    src.addr = %self.src,
                    src.workload = &*l.source.workload,
                    src.namespace = &*l.source.namespace,
                    src.identity = &*l.source.principal,
                    dst.addr = %self.dst,
                    dst.hbone_addr = self.hbone_addr.map(|a| a.to_string()),
                    dst.service = l.service.as_ref().map(|s| &*s.hostname),
                    dst.workload = &*l.destination.workload,
                    dst.namespace = &*l.destination.namespace,
                    dst.identity = &*l.destination.principal,
                    bytes_sent = sent,
                    bytes_recv = received,
                    duration = format!("{duration_ms:.1}ms"),
                    response_flags = l.flags.as_str(),
                    error = error.as_deref(),
                    $message
                )
            };
        }
        if l.flags == ResponseFlags::None {
            access_log!(info, "connection complete");
        } else {
            access_log!(warn, "connection failed");
        }
    }
}
