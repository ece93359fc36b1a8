//! The controller's configuration: flags and environment, validated once at start-up and shown
//! on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_shared::lifecycle::{distinct_addresses, AddressClash};
use ambit_shared::telemetry::LogArgs;
use ambit_shared::Identity;

pub use crate::deploy::waypoint_objects::PathNormalization;

/// The control plane: reads Kubernetes (or a directory of the same manifests), serves delta
/// xDS to ztunnels and waypoints, and is the mesh's certificate authority.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "controller", version, about)]
pub struct Config {
    /// Serve this directory of Kubernetes manifests instead of a Kubernetes API server. Files
    /// (`*.yaml`, `*.yml`, `*.json`, any layout) are watched; changes apply without a restart.
    #[arg(long, env = "MANIFEST_DIR")]
    pub manifests: Option<PathBuf>,
    /// How often the manifest directory is scanned for changes, in milliseconds.
    #[arg(long, env = "MANIFEST_POLL_MS", default_value_t = 300)]
    pub manifest_poll_ms: u64,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Cluster name written into workloads (Istio's CLUSTER_ID).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Namespace whose policies apply mesh-wide (Istio's root namespace).
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// DNS domain of services (`<svc>.<ns>.svc.<domain>`).
    #[arg(long, env = "DOMAIN_SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,
    /// xDS and CA listener (TLS), Istio's 15012.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Admin endpoint: `/ready`, `/metrics`, `/debug/config`, `/debug/config_dump`, `/debug/rejected`.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Open xDS/CA connections in all; more are closed at accept.
    #[arg(long, env = "GRPC_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub grpc_max_connections: usize,
    /// Open xDS/CA connections from one address (a node's ztunnel and the waypoints beside it
    /// share one); more are closed at accept.
    #[arg(long, env = "GRPC_MAX_CONNECTIONS_PER_PEER", default_value_t = 256)]
    pub grpc_max_connections_per_peer: usize,
    /// Lifetime of issued workload certificates, in seconds (Istio's SECRET_TTL).
    #[arg(long, env = "CERT_LIFETIME_SECONDS", default_value_t = 24 * 3600)]
    pub cert_lifetime_seconds: u64,
    /// Longest lifetime a caller may ask for, in seconds.
    #[arg(long, env = "MAX_CERT_LIFETIME_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub max_cert_lifetime_seconds: u64,
    /// Local mode: directory keeping the root certificate and key (created on first start).
    #[arg(long, env = "CA_DIR", default_value = "/var/lib/ambit/ca")]
    pub ca_dir: PathBuf,
    /// Operator-supplied root certificate (PEM); with --ca-key-file, replaces the generated root.
    #[arg(long, env = "CA_CERT_FILE", requires = "ca_key_file")]
    pub ca_cert_file: Option<PathBuf>,
    /// Operator-supplied root key (PKCS#8 PEM).
    #[arg(long, env = "CA_KEY_FILE", requires = "ca_cert_file")]
    pub ca_key_file: Option<PathBuf>,
    /// Kubernetes mode: the Secret (in --namespace) that keeps the root.
    #[arg(long, env = "CA_SECRET", default_value = "ambit-ca-root")]
    pub ca_secret: String,
    /// Local mode: YAML file of bootstrap tokens callers authenticate with.
    #[arg(long, env = "TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Kubernetes mode: audience service-account tokens must be issued for.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "istio-ca")]
    pub token_audience: String,
    /// Namespace the controller runs in (its identity and the root Secret's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ambit-system")]
    pub namespace: String,
    /// Service account the controller runs as (its serving identity).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "ambit-controller")]
    pub service_account: String,
    /// The Service in front of the controller: its serving certificate names
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.<domain suffix>`, so standard
    /// TLS clients (Istio's ztunnel) verify it by the name they dial.
    #[arg(long, env = "SERVICE_NAME", default_value = "ambit-controller")]
    pub service_name: String,
    /// More DNS names for the serving certificate (e.g. `istiod.istio-system.svc`, to stand in
    /// for istiod).
    #[arg(long, env = "CERT_DNS_NAMES", value_delimiter = ',')]
    pub cert_dns_names: Vec<String>,
    /// The controller's pod address, also in its serving certificate.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Service accounts (`<ns>/<sa>`) of node proxies, allowed to request certificates for
    /// workloads on their node.
    #[arg(long, env = "NODE_PROXY_ACCOUNTS", value_delimiter = ',', default_value = "ambit-system/ztunnel")]
    pub node_proxy_accounts: Vec<String>,
    /// Quiet time before a batch of changes is pushed, in milliseconds.
    #[arg(long, env = "PUSH_DEBOUNCE_MS", default_value_t = 100)]
    pub push_debounce_ms: u64,
    /// Longest a change waits for pushes during continuous churn, in milliseconds.
    #[arg(long, env = "PUSH_MAX_DELAY_MS", default_value_t = 1000)]
    pub push_max_delay_ms: u64,
    /// Directory mode: where the objects of each waypoint (ServiceAccount, Deployment,
    /// Service) are written, one file per waypoint Gateway, for whoever runs them.
    #[arg(long, env = "WAYPOINT_DIR")]
    pub waypoint_dir: Option<PathBuf>,
    /// Image of waypoint Deployments.
    #[arg(long, env = "WAYPOINT_IMAGE", default_value = concat!("ambit/waypoint:", env!("CARGO_PKG_VERSION")))]
    pub waypoint_image: String,
    /// The control plane's address as waypoints reach it (xDS and CA).
    #[arg(long, env = "WAYPOINT_XDS_ADDRESS", default_value = "ambit-controller.ambit-system.svc:15012")]
    pub waypoint_xds_address: String,
    /// Kubernetes mode: elect a leader among replicas through the Lease `ambit-controller` in
    /// `--namespace`; only the leader writes waypoint objects and statuses.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// This replica's name in the Lease (default: `ambit-controller-<pid>`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// OTLP/HTTP collector waypoints export spans to (a Gateway's `ambit.dev/otlp-endpoint`
    /// annotation overrides it).
    #[arg(long, env = "WAYPOINT_OTLP_ENDPOINT")]
    pub waypoint_otlp_endpoint: Option<String>,
    /// Image pull secrets of waypoint pods (comma list; each must exist in the waypoint's
    /// namespace).
    #[arg(long, env = "WAYPOINT_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub waypoint_image_pull_secrets: Vec<String>,
    /// How waypoints normalize request paths before authorization and routing (Istio's
    /// meshConfig `pathNormalization`): NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(long, env = "PATH_NORMALIZATION", value_enum, ignore_case = true, default_value = "BASE")]
    pub path_normalization: PathNormalization,
    /// What pods may reach outside the mesh's registry (Istio's meshConfig
    /// `outboundTrafficPolicy.mode`): ALLOW_ANY, or REGISTRY_ONLY to have ztunnel refuse
    /// destinations that are neither mesh workloads, services nor ServiceEntries. A `Sidecar`
    /// in the root namespace, a namespace or selecting workloads overrides it.
    #[arg(long, env = "OUTBOUND_TRAFFIC_POLICY", value_enum, ignore_case = true, default_value = "ALLOW_ANY")]
    pub outbound_traffic_policy: crate::translate::OutboundMode,
    /// Where ServiceEntry hosts without `addresses` get a virtual address from (one IPv4 and
    /// one IPv6 block, comma-separated; Istio's defaults). ztunnel's DNS proxy answers the
    /// hosts with them.
    #[arg(long, env = "AUTO_ALLOCATE_RANGES", value_delimiter = ',', default_value = "240.240.0.0/16,2001:2::/48")]
    #[serde(serialize_with = "as_text")]
    pub auto_allocate_ranges: Vec<ambit_shared::cidr::Cidr>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Blocks as their text (`240.240.0.0/16`) on `/debug/config`.
fn as_text<S: serde::Serializer>(ranges: &[ambit_shared::cidr::Cidr], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ranges.iter().map(ToString::to_string))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--service-name / --cert-dns-names (SERVICE_NAME / CERT_DNS_NAMES): {0:?} is not a lowercase DNS name")]
    CertName(String),
    #[error("--trust-domain / TRUST_DOMAIN {0:?}: {1}")]
    TrustDomain(String, ambit_shared::IdentityError),
    #[error("--cert-lifetime-seconds / CERT_LIFETIME_SECONDS {0} is outside 600..=31536000 (10 minutes to a year)")]
    CertLifetime(u64),
    #[error("--max-cert-lifetime-seconds / MAX_CERT_LIFETIME_SECONDS {0} is below --cert-lifetime-seconds {1}")]
    MaxCertLifetime(u64, u64),
    #[error("--manifests / MANIFEST_DIR {0:?} is not a directory")]
    Manifests(std::path::PathBuf),
    #[error("--token-file / TOKEN_FILE is required with --manifests (callers need tokens to authenticate)")]
    NoTokenFile,
    #[error("--node-proxy-accounts / NODE_PROXY_ACCOUNTS entry {0:?}: {1}")]
    NodeProxy(String, String),
    #[error("--namespace / --service-account {0:?}: {1}")]
    OwnIdentity(String, ambit_shared::IdentityError),
    #[error("--auto-allocate-ranges / AUTO_ALLOCATE_RANGES: {0}")]
    AutoAllocate(String),
    #[error("--push-max-delay-ms {1} is below --push-debounce-ms {0}")]
    Debounce(u64, u64),
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
        if self.max_cert_lifetime_seconds < self.cert_lifetime_seconds {
            return Err(ConfigError::MaxCertLifetime(self.max_cert_lifetime_seconds, self.cert_lifetime_seconds));
        }
        if let Some(dir) = &self.manifests {
            if !dir.is_dir() {
                return Err(ConfigError::Manifests(dir.clone()));
            }
            if self.token_file.is_none() {
                return Err(ConfigError::NoTokenFile);
            }
        }
        self.node_proxies()?;
        self.own_identity()?;
        for name in std::iter::once(format!("{}.{}.svc", self.service_name, self.namespace))
            .chain(self.cert_dns_names.iter().cloned())
        {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !valid {
                return Err(ConfigError::CertName(name));
            }
        }
        if self.push_max_delay_ms < self.push_debounce_ms {
            return Err(ConfigError::Debounce(self.push_debounce_ms, self.push_max_delay_ms));
        }
        distinct_addresses(&[("--grpc-addr", self.grpc_addr), ("--admin-addr", self.admin_addr)])?;
        let ranges = &self.auto_allocate_ranges;
        for (v4, name) in [(true, "IPv4"), (false, "IPv6")] {
            if ranges.iter().filter(|r| r.addr().is_ipv4() == v4).count() > 1 {
                return Err(ConfigError::AutoAllocate(format!("more than one {name} range")));
            }
        }
        if let Some(r) = ranges.iter().find(|r| r.prefix() > if r.addr().is_ipv4() { 30 } else { 126 }) {
            return Err(ConfigError::AutoAllocate(format!("{r} is too small (at least 4 addresses)")));
        }
        Ok(())
    }

    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_seconds)
    }

    /// The DNS names and addresses in the controller's serving certificate: its Service's
    /// names, the extra names, its pod address and a specific listen address.
    pub fn serving_names(&self) -> (Vec<String>, Vec<std::net::IpAddr>) {
        let (svc, ns) = (&self.service_name, &self.namespace);
        let mut names = vec![format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.{}", self.domain_suffix)];
        for n in &self.cert_dns_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let mut ips: Vec<std::net::IpAddr> = self.pod_ip.into_iter().collect();
        let listen = self.grpc_addr.ip();
        if !listen.is_unspecified() && !ips.contains(&listen) {
            ips.push(listen);
        }
        (names, ips)
    }

    pub fn node_proxies(&self) -> Result<Vec<Identity>, ConfigError> {
        self.node_proxy_accounts
            .iter()
            .map(|entry| {
                let (ns, sa) = entry.split_once('/').ok_or_else(|| {
                    ConfigError::NodeProxy(entry.clone(), "expected <namespace>/<service-account>".into())
                })?;
                Identity::new(&self.trust_domain, ns, sa)
                    .map_err(|e| ConfigError::NodeProxy(entry.clone(), e.to_string()))
            })
            .collect()
    }

    /// The identity the controller serves xDS and the CA as.
    pub fn own_identity(&self) -> Result<Identity, ConfigError> {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
            .map_err(|e| ConfigError::OwnIdentity(format!("{}/{}", self.namespace, self.service_account), e))
    }

    pub fn waypoint_settings(&self) -> crate::deploy::waypoint_objects::WaypointSettings {
        crate::deploy::waypoint_objects::WaypointSettings {
            image: self.waypoint_image.clone(),
            xds_address: self.waypoint_xds_address.clone(),
            trust_domain: self.trust_domain.clone(),
            otlp_endpoint: self.waypoint_otlp_endpoint.clone(),
            control_plane_account: format!("{}/{}", self.namespace, self.service_account),
            token_audience: self.token_audience.clone(),
            image_pull_secrets: self.waypoint_image_pull_secrets.clone(),
            path_normalization: self.path_normalization,
        }
    }

    pub fn mesh(&self) -> crate::translate::MeshSettings {
        crate::translate::MeshSettings {
            trust_domain: self.trust_domain.clone(),
            cluster_id: self.cluster_id.clone(),
            root_namespace: self.root_namespace.clone(),
            domain_suffix: self.domain_suffix.clone(),
            outbound: self.outbound_traffic_policy,
            auto_allocate: self.auto_allocate_ranges.clone(),
        }
    }
}
