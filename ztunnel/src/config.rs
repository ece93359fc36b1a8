//! ztunnel's configuration: flags and environment (Istio's variable names where they exist),
//! validated once at start-up. Serialized on the admin endpoint at `/debug/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Control plane address for xDS (delta ADS) over TLS: `host:port` (a name is resolved at
    /// start, e.g. `ambit-controller.ambit-system.svc:15012`).
    #[arg(long, env = "XDS_ADDRESS", default_value = "127.0.0.1:15012")]
    pub xds_address: String,
    /// Certificate authority address (IstioCertificateService), `host:port`.
    #[arg(long, env = "CA_ADDRESS", default_value = "127.0.0.1:15012")]
    pub ca_address: String,
    /// Cluster the node belongs to (part of workload names: `<cluster>//Pod/<ns>/<name>`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The cluster's DNS domain (Istio's `CLUSTER_DOMAIN`): names under it are Kubernetes
    /// names, which the DNS proxy answers only by exact hostnames of their own namespace.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Network the node's pods are on (empty: the default network).
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// The mesh root certificate(s), PEM: trust anchor for peers and the control plane.
    #[arg(long, env = "ROOT_CERT", default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub root_cert: PathBuf,
    /// Token presented to the control plane (`authorization: Bearer`).
    #[arg(long, env = "TOKEN_FILE", default_value = "/var/run/secrets/tokens/istio-token")]
    pub token_file: PathBuf,
    /// The control plane's service account, `<namespace>/<name>` (its certificate must name it).
    #[arg(long, env = "CONTROL_PLANE_ACCOUNT", default_value = "ambit-system/ambit-controller")]
    pub control_plane_account: String,
    /// Lifetime requested for workload certificates, in seconds (renewed at half).
    #[arg(long, env = "SECRET_TTL_SECONDS", default_value_t = 86_400)]
    pub cert_lifetime_seconds: u64,
    /// ZDS socket: where the node agent hands pods' network namespaces to the proxy.
    #[arg(long, env = "INPOD_UDS", default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    /// Run the node agent in this process (serving the CNI plugin and ZDS). Off when another
    /// agent (for example Istio's istio-cni) drives this proxy over `--zds-socket`.
    #[arg(long, env = "NODE_AGENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub node_agent: bool,
    /// Socket the CNI plugin reaches the node agent on.
    #[arg(long, env = "CNI_AGENT_SOCKET", default_value = "/var/run/ambit/cni.sock")]
    pub cni_socket: PathBuf,
    /// Where the node agent keeps the pods it captured, to reconcile after a restart.
    /// With --cni-conf-dir: install the CNI plugin into this directory of the host's (mounted)
    /// once the node agent listens, keep it chained, and remove it when this ztunnel stops
    /// without a successor (a rolling update's new ztunnel keeps it).
    #[arg(long, env = "CNI_BIN_DIR", requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
    /// The host's CNI configuration directory (mounted), for --cni-bin-dir.
    #[arg(long, env = "CNI_CONF_DIR", requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The agent socket's path as the plugin, on the host, reaches it (default --cni-socket).
    #[arg(long, env = "CNI_HOST_SOCKET")]
    pub cni_host_socket: Option<String>,
    /// Namespaces the installed plugin lets through without asking the agent (comma list):
    /// put the mesh's own namespace here, so a ztunnel pod can start on a node whose agent is
    /// gone.
    #[arg(long, env = "CNI_EXCLUDE_NAMESPACES", value_delimiter = ',', default_value = "kube-system")]
    pub cni_exclude_namespaces: Vec<String>,
    #[arg(long, env = "AGENT_STATE_DIR", default_value = "/var/run/ambit/pods")]
    pub agent_state_dir: PathBuf,
    /// Capture pods of the mesh that no CNI call announced (running before the plugin was
    /// installed): their network namespaces are found among those the runtime pinned in
    /// --netns-dir.
    #[arg(long, env = "DISCOVER_RUNNING_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    pub discover_running_pods: bool,
    /// Where the container runtime pins pod network namespaces (mounted from the host).
    #[arg(long, env = "NETNS_DIR", default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,
    /// How long a CNI ADD waits for the control plane to describe a new pod, in milliseconds.
    #[arg(long, env = "ENROLL_WAIT_MS", default_value_t = 5_000)]
    pub enroll_wait_ms: u64,
    /// On SIGTERM: stop accepting, then let open connections finish for this long (seconds).
    #[arg(long, env = "TERMINATION_GRACE_PERIOD_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Prometheus endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Admin endpoint (`/debug/config`), loopback only by default.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Data-path worker threads (Istio's ztunnel: `ZTUNNEL_WORKER_THREADS`, default 2). More
    /// threads spread encryption of busy connections over more cores; fewer cost less CPU per
    /// request at low rates (fewer cross-thread wake-ups).
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Name servers (`ip:port`, comma-separated) for the hostnames of DNS ServiceEntry
    /// endpoints and the DNS proxy's upstream (what it does not answer goes there); empty:
    /// the node's `/etc/resolv.conf`.
    #[arg(long, env = "DNS_NAMESERVERS", value_delimiter = ',')]
    pub dns_nameservers: Vec<std::net::SocketAddr>,
    /// The DNS proxy (Istio's `DNS_PROXY`, on by default): pods' DNS (port 53) is redirected
    /// to ztunnel inside each pod, which answers for the mesh's names and forwards the rest.
    /// The node agent's rules and the proxy's listeners follow this one setting.
    #[arg(long, env = "DNS_PROXY", default_value_t = true, action = clap::ArgAction::Set)]
    pub dns_proxy: bool,
    /// Connection and stream budgets of the HBONE listeners (all of them together).
    #[command(flatten)]
    pub hbone_limits: ambit_shared::hbone::server::Limits,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-name / NODE_NAME is empty")]
    EmptyNodeName,
    #[error("--trust-domain / TRUST_DOMAIN {0:?}: {1}")]
    TrustDomain(String, ambit_shared::IdentityError),
    #[error("--control-plane-account / CONTROL_PLANE_ACCOUNT {0:?}: {1}")]
    ControlPlane(String, String),
    #[error("--cert-lifetime-seconds / SECRET_TTL_SECONDS must be at least 60, not {0}")]
    CertLifetime(u64),
    #[error("--worker-threads / ZTUNNEL_WORKER_THREADS must be at least 1")]
    Workers,
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
        self.control_plane_identity()?;
        if self.cert_lifetime_seconds < 60 {
            return Err(ConfigError::CertLifetime(self.cert_lifetime_seconds));
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Workers);
        }
        distinct_addresses(&[
            ("--readiness-addr", self.readiness_addr),
            ("--metrics-addr", self.metrics_addr),
            ("--admin-addr", self.admin_addr),
        ])?;
        Ok(())
    }

    /// The identity the control plane's certificate must carry.
    pub fn control_plane_identity(&self) -> Result<Identity, ConfigError> {
        let err = |m: String| ConfigError::ControlPlane(self.control_plane_account.clone(), m);
        let (ns, sa) = self
            .control_plane_account
            .split_once('/')
            .ok_or_else(|| err("expected <namespace>/<service-account>".into()))?;
        Identity::new(&self.trust_domain, ns, sa).map_err(|e| err(e.to_string()))
    }

    /// The workload name (`<cluster>//Pod/<ns>/<name>`) the control plane gives a pod.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> String {
        format!("{}//Pod/{namespace}/{name}", self.cluster_id)
    }

    pub fn cert_lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_seconds)
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
        let err = parse(&["--node-name", "n", "--control-plane-account", "istiod"]).validate().unwrap_err();
        assert!(err.to_string().contains("CONTROL_PLANE_ACCOUNT") && err.to_string().contains("istiod"), "{err}");
        let err = parse(&["--node-name", "n", "--cert-lifetime-seconds", "5"]).validate().unwrap_err();
        assert!(err.to_string().contains("SECRET_TTL_SECONDS"), "{err}");
        let err = parse(&["--node-name", " "]).validate().unwrap_err();
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
        let err = parse(&["--node-name", "n", "--worker-threads", "0"]).validate().unwrap_err();
        assert!(err.to_string().contains("ZTUNNEL_WORKER_THREADS"), "{err}");
        assert_eq!(parse(&["--node-name", "n"]).worker_threads, 2, "Istio's default");
        assert_eq!(parse(&["--node-name", "n"]).hbone_limits.read_ahead, 0, "read-ahead is off by default");
        assert_eq!(parse(&["--node-name", "n", "--hbone-read-ahead", "65536"]).hbone_limits.read_ahead, 65_536);
        let err = Config::try_parse_from(["ztunnel", "--node-name", "n", "--hbone-read-ahead", "2000000"]).unwrap_err();
        assert!(err.to_string().contains("hbone-read-ahead"), "{err}");
    }
}
