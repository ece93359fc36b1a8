//! Names users and peers see on Kubernetes objects — Istio's label and annotation keys and the
//! GatewayClasses that make a Gateway a waypoint — so the controller that reads them and the
//! sandbox that plays the cluster spell them one way. Their meaning is the controller's.

/// Well-known label and annotation keys (Istio's).
pub mod keys {
    pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
    pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
    pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
    pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
    pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
    pub const REDIRECTION: &str = "ambient.istio.io/redirection";
    pub const DRY_RUN: &str = "istio.io/dry-run";
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    pub const WORKLOAD_NAME: &str = "service.istio.io/workload-name";
    pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
    pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";
    pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
    /// A node's place, as Kubernetes and Istio label it (a workload's locality).
    pub const TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
    pub const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
    pub const TOPOLOGY_SUBZONE: &str = "topology.istio.io/subzone";
}

/// Gateway classes that make a Gateway a waypoint (ours, and Istio's as an alias).
pub const WAYPOINT_CLASSES: &[&str] = &["ambit-waypoint", "istio-waypoint"];

/// Gateway classes that make a Gateway an ingress gateway (ours, and Istio's as an alias).
pub const INGRESS_CLASSES: &[&str] = &["ambit", "istio"];

/// The controller name in our GatewayClasses and in route status `parents[].controllerName`.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint-controller";

/// The resource name of an ingress gateway's configuration, and who may read it: the
/// gateway's service account is its name.
pub fn gateway_resource(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}
