//! ztunnel's configuration: flags and environment (Istio's variable names where they exist),
//! validated once at start-up. Serialized on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;

use ambit_shared::lifecycle::distinct_addresses;
use ambit_shared::telemetry::LogArgs;
use ambit_shared::Identity;

/// The node proxy: captures enrolled pods' traffic and carries it over HBONE.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "ztunnel", version, about)]
pub struct Config {
    /// Name of the node this ztunnel serves (pods are matched to it).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Control plane address for xDS (delta ADS) over TLS.
    #[arg(long, env = "XDS_ADDRESS", default_value = "127.0.0.1:15012")]
    pub xds_address: SocketAddr,
    /// Certificate authority address (IstioCertificateService).
    #[arg(long, env = "CA_ADDRESS", default_value = "127.0.0.1:15012")]
    pub ca_address: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Admin endpoint (`/debug/config`), loopback only by default.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-name / NODE_NAME is empty")]
    EmptyNodeName,
    #[error("--trust-domain / TRUST_DOMAIN {0:?}: {1}")]
    TrustDomain(String, ambit_shared::IdentityError),
    #[error(transparent)]
    AddressClash(#[from] ambit_shared::lifecycle::AddressClash),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.trim().is_empty() {
            return Err(ConfigError::EmptyNodeName);
        }
        Identity::new(&self.trust_domain, "default", "default")
            .map_err(|e| ConfigError::TrustDomain(self.trust_domain.clone(), e))?;
        distinct_addresses(&[
            ("--readiness-addr", self.readiness_addr),
            ("--metrics-addr", self.metrics_addr),
            ("--admin-addr", self.admin_addr),
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("ztunnel").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_istios_ports() {
        let c = parse(&["--node-name", "node-1"]);
        assert_eq!(c.readiness_addr.port(), 15021);
        assert_eq!(c.metrics_addr.port(), 15020);
        assert_eq!(c.admin_addr.port(), 15000);
        c.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let err = parse(&["--node-name", "n", "--trust-domain", "Bad_Domain!"]).validate().unwrap_err();
        assert!(err.to_string().contains("TRUST_DOMAIN") && err.to_string().contains("Bad_Domain!"), "{err}");
        let err = parse(&["--node-name", "n", "--metrics-addr", "0.0.0.0:15021"]).validate().unwrap_err();
        assert!(err.to_string().contains("--readiness-addr and --metrics-addr"), "{err}");
        let err = parse(&["--node-name", " "]).validate().unwrap_err();
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
    }
}
