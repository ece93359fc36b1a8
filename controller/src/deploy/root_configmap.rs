//! The mesh root certificate as the ConfigMap every namespace gets (what workloads and
//! waypoints mount, as istiod publishes it): its name and key. Applying it is `apply`'s
//! business.

/// The ConfigMap carrying the mesh root in every namespace (Istio's name and key).
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
