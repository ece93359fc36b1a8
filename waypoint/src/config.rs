//! The waypoint's configuration: flags and environment, validated once at start-up and shown
//! on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;

use ambit_shared::lifecycle::{distinct_addresses, AddressClash};
use ambit_shared::telemetry::LogArgs;

/// The per-namespace L7 proxy.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "waypoint", version, about)]
pub struct Config {
    /// Namespace the waypoint serves.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the Gateway this waypoint was deployed for.
    #[arg(long, env = "GATEWAY_NAME", default_value = "waypoint")]
    pub gateway: String,
    /// Control plane address for xDS (delta ADS) and the CA, over TLS.
    #[arg(long, env = "XDS_ADDRESS", default_value = "127.0.0.1:15012")]
    pub xds_address: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--gateway / GATEWAY_NAME is empty")]
    EmptyGateway,
    #[error(transparent)]
    AddressClash(#[from] AddressClash),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway.trim().is_empty() {
            return Err(ConfigError::EmptyGateway);
        }
        distinct_addresses(&[("--readiness-addr", self.readiness_addr), ("--metrics-addr", self.metrics_addr)])?;
        Ok(())
    }
}
