//! The waypoint's configuration: flags and environment, validated once at start-up and shown
//! on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_shared::lifecycle::{distinct_addresses, AddressClash};
use ambit_shared::telemetry::LogArgs;
use ambit_shared::Identity;

/// The per-namespace L7 proxy.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "waypoint", version, about)]
pub struct Config {
    /// Namespace the waypoint runs in (its identity's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the Gateway this waypoint was deployed for.
    #[arg(long, env = "GATEWAY_NAME", default_value = "waypoint")]
    pub gateway: String,
    /// Service account the waypoint runs as (default: the Gateway's name, as deployed).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Network of the workloads (empty: the default network).
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// Control plane address (`host:port`) for xDS (delta ADS) and the CA, over TLS.
    #[arg(long, env = "XDS_ADDRESS", default_value = "ambit-controller.ambit-system.svc:15012")]
    pub xds_address: String,
    /// The mesh root certificate(s), PEM.
    #[arg(long, env = "ROOT_CERT", default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub root_cert: PathBuf,
    /// Token presented to the control plane (`authorization: Bearer`).
    #[arg(long, env = "TOKEN_FILE", default_value = "/var/run/secrets/tokens/istio-token")]
    pub token_file: PathBuf,
    /// The control plane's service account, `<namespace>/<name>`.
    #[arg(long, env = "CONTROL_PLANE_ACCOUNT", default_value = "ambit-system/ambit-controller")]
    pub control_plane_account: String,
    /// Lifetime requested for the waypoint's certificate, in seconds (renewed at half).
    #[arg(long, env = "SECRET_TTL_SECONDS", default_value_t = 86_400)]
    pub cert_lifetime_seconds: u64,
    /// Name servers (`ip:port`, comma-separated) for the hostnames of DNS ServiceEntry
    /// endpoints (egress through the waypoint); empty: the pod's `/etc/resolv.conf`.
    #[arg(long, env = "DNS_NAMESERVERS", value_delimiter = ',')]
    pub dns_nameservers: Vec<SocketAddr>,
    /// HBONE listener (mutual TLS, HTTP/2 CONNECT).
    #[arg(long, env = "HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// OTLP/HTTP collector for spans (`http://host:4318`); no export when empty.
    #[arg(long, env = "OTLP_ENDPOINT", default_value = "")]
    pub otlp_endpoint: String,
    /// Percent of requests without a sampling decision that start a sampled trace.
    #[arg(long, env = "TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,
    /// Data-path worker threads.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Grace period for open connections on SIGTERM, in seconds.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Request path normalization before authorization, routing and the upstream request
    /// (Istio's meshConfig `pathNormalization`): NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES.
    #[arg(long, env = "PATH_NORMALIZATION", default_value = "BASE")]
    pub path_normalization: String,
    /// What this proxy is: `waypoint` (HBONE in, for the services bound to its Gateway) or
    /// `ingress` (its Gateway's listeners, for clients outside the mesh).
    #[arg(long, env = "PROXY_MODE", value_enum, default_value_t = Mode::Waypoint)]
    pub mode: Mode,
    /// Ingress mode: the address the listeners bind (their ports come from the Gateway).
    #[arg(long, env = "INGRESS_BIND_IP", default_value = "0.0.0.0")]
    pub ingress_bind_ip: std::net::IpAddr,
    /// Ingress mode: connections open at once over all listeners; more are closed at accept.
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub ingress_max_connections: usize,
    /// Ingress mode: connections open at once from one client address.
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 1_024)]
    pub ingress_max_connections_per_source: usize,
    /// Connection and stream budgets of the HBONE listeners (all of them together).
    #[command(flatten)]
    pub hbone_limits: ambit_shared::hbone::server::Limits,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A waypoint: HBONE in, for the services (and workloads) bound to its Gateway.
    Waypoint,
    /// An ingress gateway: its Gateway's listeners, for clients outside the mesh.
    Ingress,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--gateway / GATEWAY_NAME is empty")]
    EmptyGateway,
    #[error("identity {0}: {1}")]
    Identity(String, String),
    #[error("--cert-lifetime-seconds {0} is below 60")]
    CertLifetime(u64),
    #[error("--trace-sampling {0} is not a percentage (0-100)")]
    Sampling(f64),
    #[error("--otlp-endpoint {0:?} is not an http(s):// URL")]
    Otlp(String),
    #[error("--worker-threads must be at least 1")]
    Workers,
    #[error("--ingress-max-connections and --ingress-max-connections-per-source must be at least 1")]
    IngressConnections,
    #[error("--path-normalization / PATH_NORMALIZATION {0:?}: expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")]
    Normalization(String),
    #[error(transparent)]
    AddressClash(#[from] AddressClash),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway.trim().is_empty() {
            return Err(ConfigError::EmptyGateway);
        }
        self.identity()?;
        self.control_plane_identity()?;
        if self.cert_lifetime_seconds < 60 {
            return Err(ConfigError::CertLifetime(self.cert_lifetime_seconds));
        }
        if !(0.0..=100.0).contains(&self.trace_sampling) {
            return Err(ConfigError::Sampling(self.trace_sampling));
        }
        if !self.otlp_endpoint.is_empty()
            && !self.otlp_endpoint.starts_with("http://")
            && !self.otlp_endpoint.starts_with("https://")
        {
            return Err(ConfigError::Otlp(self.otlp_endpoint.clone()));
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Workers);
        }
        if self.ingress_max_connections == 0 || self.ingress_max_connections_per_source == 0 {
            return Err(ConfigError::IngressConnections);
        }
        self.normalization()?;
        distinct_addresses(&[
            ("--hbone-addr", self.hbone_addr),
            ("--readiness-addr", self.readiness_addr),
            ("--metrics-addr", self.metrics_addr),
        ])?;
        Ok(())
    }

    /// The request path normalization.
    pub fn normalization(&self) -> Result<crate::l7::normalize::Normalization, ConfigError> {
        self.path_normalization.parse().map_err(|_| ConfigError::Normalization(self.path_normalization.clone()))
    }

    /// The waypoint's own identity.
    pub fn identity(&self) -> Result<Identity, ConfigError> {
        let sa = self.service_account.as_deref().unwrap_or(&self.gateway);
        Identity::new(&self.trust_domain, &self.namespace, sa)
            .map_err(|e| ConfigError::Identity(format!("{}/{sa}", self.namespace), e.to_string()))
    }

    pub fn control_plane_identity(&self) -> Result<Identity, ConfigError> {
        let err = |m: String| ConfigError::Identity(self.control_plane_account.clone(), m);
        let (ns, sa) =
            self.control_plane_account.split_once('/').ok_or_else(|| err("expected <namespace>/<name>".into()))?;
        Identity::new(&self.trust_domain, ns, sa).map_err(|e| err(e.to_string()))
    }

    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_seconds)
    }
}
