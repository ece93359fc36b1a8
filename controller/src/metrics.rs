//! The controller's metrics, under istiod's names so existing dashboards keep working.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

pub struct Metrics {
    /// Connected xDS subscribers (`pilot_xds`).
    pub xds_connected: Gauge,
    /// Responses sent, by type (`pilot_xds_pushes`).
    pub xds_pushes: Family<Labels, Counter>,
    /// NACKs received, by type (`pilot_total_xds_rejects`).
    pub xds_rejects: Family<Labels, Counter>,
    /// Publish-to-send latency in seconds (`pilot_xds_push_time`).
    pub xds_push_time: Histogram,
    /// CSRs received (`citadel_server_csr_count`).
    pub csr_count: Counter,
    /// Certificates issued (`citadel_server_success_cert_issuance_count`).
    pub certs_issued: Counter,
    /// Requests refused, by reason (`citadel_server_cert_denied`).
    pub certs_denied: Family<Labels, Counter>,
    /// Objects currently rejected by validation.
    pub rejected_objects: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            xds_connected: Gauge::default(),
            xds_pushes: Family::default(),
            xds_rejects: Family::default(),
            xds_push_time: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            csr_count: Counter::default(),
            certs_issued: Counter::default(),
            certs_denied: Family::default(),
            rejected_objects: Gauge::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("pilot_xds", "Connected xDS subscribers", self.xds_connected.clone());
        registry.register("pilot_xds_pushes", "xDS responses sent, by type", self.xds_pushes.clone());
        registry.register("pilot_total_xds_rejects", "xDS NACKs received, by type", self.xds_rejects.clone());
        registry.register("pilot_xds_push_time", "Seconds from publish to send", self.xds_push_time.clone());
        registry.register("citadel_server_csr_count", "Certificate signing requests received", self.csr_count.clone());
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued",
            self.certs_issued.clone(),
        );
        registry.register(
            "citadel_server_cert_denied",
            "Certificate requests refused, by reason",
            self.certs_denied.clone(),
        );
        registry.register("ambit_rejected_objects", "Objects rejected by validation", self.rejected_objects.clone());
    }

    pub fn denied(&self, reason: &str) {
        self.certs_denied.get_or_create(&vec![("reason".to_owned(), reason.to_owned())]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
