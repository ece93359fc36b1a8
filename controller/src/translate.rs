//! Translation: the mesh model to the resources ztunnels consume.
//!
//! - `workload`: Pod → `istio.workload.Workload`;
//! - `service`: Service / ServiceEntry → `istio.workload.Service`;
//! - `authz`: AuthorizationPolicy and PeerAuthentication → `istio.security.Authorization`.
//!
//! - `waypoint`: a service bound to a waypoint → `ambit.waypoint.ServiceConfig` (routes,
//!   authorization policies for the waypoint);
//! - `ingress`: an ingress gateway → `ambit.waypoint.GatewayConfig` (listeners, certificates,
//!   attached routes) and its Gateway API status.
//!
//! Pure functions of model values and a read-only view of the store; no I/O.

pub mod allocate;
pub mod authz;
pub mod ingress;
pub mod service;
pub mod waypoint;
pub mod workload;

/// Mesh-wide settings translation needs.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub cluster_id: String,
    /// Istio's root namespace: policies there apply mesh-wide.
    pub root_namespace: String,
    /// DNS suffix of service hostnames (`svc.cluster.local`).
    pub domain_suffix: String,
    /// meshConfig `outboundTrafficPolicy.mode`: what a pod may reach outside the registry,
    /// unless a Sidecar says otherwise for its namespace or workload.
    pub outbound: OutboundMode,
    /// Ranges ServiceEntry hosts without addresses get theirs from ([`allocate`]).
    pub auto_allocate: Vec<ambit_shared::cidr::Cidr>,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Destinations outside the registry are reached directly (Istio's default).
    #[default]
    AllowAny,
    /// Only mesh workloads, services and ServiceEntries: anything else is refused by ztunnel.
    RegistryOnly,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            root_namespace: "istio-system".into(),
            domain_suffix: "cluster.local".into(),
            outbound: OutboundMode::AllowAny,
            auto_allocate: default_auto_allocate(),
        }
    }
}

/// Istio's ranges for automatically allocated ServiceEntry addresses.
pub fn default_auto_allocate() -> Vec<ambit_shared::cidr::Cidr> {
    ["240.240.0.0/16", "2001:2::/48"].iter().filter_map(|r| r.parse().ok()).collect()
}

impl MeshSettings {
    pub fn hostname(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.domain_suffix)
    }
}
