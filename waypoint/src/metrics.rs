//! Request telemetry with Istio's names and labels (`reporter="waypoint"`):
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, and one access-log line per request (target `access`). Peer labels
//! are ztunnel's shared `Arc<str>` values from the workload state.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use ambit_dataplane::labels::{encode_peers, Peer, ServiceLabels};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why a request did not complete normally (Envoy's short response flags, as Istio reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    None,
    /// No route matched (NR).
    NoRoute,
    /// No healthy upstream (UH).
    NoHealthyUpstream,
    /// Upstream connection failure (UF).
    UpstreamFailure,
    /// Upstream request timeout (UT).
    UpstreamTimeout,
    /// Fault injection abort (FI) / delay (DI).
    FaultAbort,
    /// Denied by authorization (Envoy's RBAC filter).
    RbacDenied,
    /// A JWT present but invalid (Envoy's jwt_authn filter).
    JwtDenied,
    /// Downstream protocol error (DPE).
    DownstreamProtocolError,
    /// Connection pool / circuit breaker overflow (UO).
    Overflow,
    /// The client went away before the response (DC, response code 0).
    DownstreamTermination,
    /// The upstream's name did not resolve (DF).
    DnsResolutionFailed,
    /// The backend names a subset its service does not have (NC: no cluster found).
    NoClusterFound,
    /// Over a local rate limit (RL).
    RateLimited,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::None => "-",
            Flag::NoRoute => "NR",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamFailure => "UF",
            Flag::UpstreamTimeout => "UT",
            Flag::FaultAbort => "FI",
            Flag::RbacDenied => "RBAC",
            Flag::JwtDenied => "JWT",
            Flag::DownstreamProtocolError => "DPE",
            Flag::Overflow => "UO",
            Flag::DownstreamTermination => "DC",
            Flag::DnsResolutionFailed => "DF",
            Flag::NoClusterFound => "NC",
            Flag::RateLimited => "RL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub source: Peer,
    pub destination: Peer,
    pub service: Option<ServiceLabels>,
    pub protocol: &'static str,
    pub code: u16,
    /// `grpc-status`, when the response carried one.
    pub grpc_status: Option<u8>,
    pub flag: Flag,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut put = |key: &str, value: &str| (key, value).encode(encoder.encode_label());
        put("reporter", "waypoint")?;
        encode_peers(&mut put, &self.source, &self.destination, self.service.as_ref())?;
        put("request_protocol", self.protocol)?;
        put("response_code", &self.code.to_string())?;
        match self.grpc_status {
            Some(s) => put("grpc_response_status", &s.to_string())?,
            None => put("grpc_response_status", "")?,
        }
        put("response_flags", self.flag.as_str())?;
        put("connection_security_policy", "mutual_tls")
    }
}

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Istio's duration buckets (ms) and size buckets (bytes).
const DURATION_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
];
const SIZE_BYTES: &[f64] = &[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0, 100000000.0];

pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, Buckets>,
    request_bytes: Family<RequestLabels, Histogram, Buckets>,
    response_bytes: Family<RequestLabels, Histogram, Buckets>,
    /// The four series of each label set seen, found with one fast hash per request instead of
    /// one SipHash pass and one lock per family.
    handles: RwLock<HashMap<RequestLabels, Arc<Handles>, foldhash::fast::RandomState>>,
}

/// At most this many label sets keep cached handles (the families themselves hold every series).
const MAX_CACHED_LABEL_SETS: usize = 4096;

/// One label set's series in the four families (each shares its state with the family's).
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(Buckets(DURATION_MS)),
            request_bytes: Family::new_with_constructor(Buckets(SIZE_BYTES)),
            response_bytes: Family::new_with_constructor(Buckets(SIZE_BYTES)),
            handles: RwLock::default(),
        };
        registry.register("requests", "Requests handled by the waypoint", m.requests.clone());
        registry.register("request_duration_milliseconds", "Request duration", m.duration.clone());
        registry.register("request_bytes", "Request body sizes", m.request_bytes.clone());
        registry.register("response_bytes", "Response body sizes", m.response_bytes.clone());
        Arc::new(m)
    }

    pub fn record(&self, labels: &RequestLabels, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        let h = self.handles(labels);
        h.requests.inc();
        h.duration.observe(duration_ms);
        h.request_bytes.observe(request_bytes as f64);
        h.response_bytes.observe(response_bytes as f64);
    }

    fn handles(&self, labels: &RequestLabels) -> Arc<Handles> {
        let known = self.handles.read().unwrap_or_else(PoisonError::into_inner).get(labels).cloned();
        if let Some(h) = known {
            return h;
        }
        let h = Arc::new(Handles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        });
        let mut all = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_CACHED_LABEL_SETS {
            // Past the bound, series are still recorded, just found the slower way each time.
            return h;
        }
        all.entry(labels.clone()).or_insert(h).clone()
    }
}
