//! The node role of the ztunnel binary (the other is the data path in `proxy`):
//!
//! - [`agent`]: the node agent — pods from the CNI plugin, their redirect rules, the ZDS
//!   server that hands their network namespaces to the proxy;
//! - [`cni`]: the CNI plugin mode of the binary (the container runtime's entry point per pod);
//! - [`discover`]: finding running pods' namespaces no CNI call announced (pods older than
//!   the plugin);
//! - [`install`]: `ztunnel install-cni` and the daemon's own plugin placement and chaining;
//! - [`rules`]: Istio's in-pod redirect rules, installed inside each pod's namespace.
//!
//! Nothing here carries traffic.

pub mod agent;
pub mod cni;
pub mod discover;
pub mod install;
pub mod rules;
