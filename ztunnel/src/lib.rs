//! ztunnel: Ambit's per-node L4 proxy.
//!
//! - [`cni`]: the CNI plugin mode of the binary (the runtime's entry point for each pod);
//! - [`cni_install`]: `ztunnel install-cni`, placing and chaining the plugin on a node;
//! - [`agent`]: the node agent — pods from the CNI plugin, redirect rules, ZDS server;
//! - [`proxy`]: the ZDS client and the per-pod listeners (outbound 15001, inbound 15006 and
//!   HBONE 15008) opened inside each pod's network namespace;
//! - [`state`]: workloads, services and policies from xDS, indexed for per-connection look-ups;
//! - [`rbac`]: L4 authorization with Istio's semantics;
//! - [`identity`]: workload certificates from the CA, renewed at half life;
//! - [`inpod`]: entering pod network namespaces and Istio's in-pod redirect rules;
//! - [`metrics`]: `istio_tcp_*` metrics and the access log;
//! - [`admin`]: the `/config_dump` page;
//! - [`config`], [`run`]: flags and the daemon's wiring.

pub mod admin;
pub mod agent;
pub mod cni;
pub mod cni_install;
pub mod config;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod rbac;
pub mod run;
pub mod state;
