//! The controller's configuration: flags and environment, validated once at start-up and shown
//! on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_shared::lifecycle::{distinct_addresses, AddressClash};
use ambit_shared::telemetry::LogArgs;
use ambit_shared::Identity;

/// The control plane: xDS server and certificate authority.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "controller", version, about)]
pub struct Config {
    /// Directory of Kubernetes manifests to serve (instead of a Kubernetes API server).
    #[arg(long, env = "MANIFEST_DIR")]
    pub manifests: Option<PathBuf>,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// xDS and CA listener (TLS), Istio's 15012.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Admin endpoint: `/ready`, `/metrics`, `/debug/config` (Istio's monitoring port).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Lifetime of issued workload certificates, in seconds (Istio's SECRET_TTL).
    #[arg(long, env = "CERT_LIFETIME_SECONDS", default_value_t = 24 * 3600)]
    pub cert_lifetime_seconds: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--trust-domain / TRUST_DOMAIN {0:?}: {1}")]
    TrustDomain(String, ambit_shared::IdentityError),
    #[error("--cert-lifetime-seconds / CERT_LIFETIME_SECONDS {0} is outside 600..=31536000 (10 minutes to a year)")]
    CertLifetime(u64),
    #[error("--manifests / MANIFEST_DIR {0:?} is not a directory")]
    Manifests(PathBuf),
    #[error(transparent)]
    AddressClash(#[from] AddressClash),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Identity::new(&self.trust_domain, "default", "default")
            .map_err(|e| ConfigError::TrustDomain(self.trust_domain.clone(), e))?;
        if !(600..=365 * 24 * 3600).contains(&self.cert_lifetime_seconds) {
            return Err(ConfigError::CertLifetime(self.cert_lifetime_seconds));
        }
        if let Some(dir) = &self.manifests {
            if !dir.is_dir() {
                return Err(ConfigError::Manifests(dir.clone()));
            }
        }
        distinct_addresses(&[("--grpc-addr", self.grpc_addr), ("--admin-addr", self.admin_addr)])?;
        Ok(())
    }

    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_seconds)
    }
}
