//! ztunnel: Ambit's per-node L4 proxy.
//!
//! - [`state`]: workloads, services and policies from xDS, indexed for per-connection look-ups;
//! - [`rbac`]: L4 authorization with Istio's semantics;
//! - [`identity`]: workload certificates from the CA, renewed at half life;
//! - [`inpod`]: entering pod network namespaces and Istio's in-pod redirect rules;
//! - [`config`]: flags and environment.
//!
//! In-pod capture (CNI plugin, node agent, ZDS), the proxy listeners and certificates build on
//! these (issue #4).

pub mod config;
pub mod identity;
pub mod inpod;
pub mod rbac;
pub mod state;
