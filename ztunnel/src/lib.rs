//! ztunnel: Ambit's per-node L4 proxy.
//!
//! - [`state`]: workloads, services and policies from xDS, indexed for per-connection look-ups;
//! - [`rbac`]: L4 authorization with Istio's semantics;
//! - [`config`]: flags and environment.
//!
//! In-pod capture (CNI plugin, node agent, ZDS), the proxy listeners and certificates build on
//! these (issue #4).

pub mod config;
pub mod rbac;
pub mod state;
