//! ztunnel: Ambit's per-node L4 proxy. The binary has two roles:
//!
//! - the data path: [`proxy`] opens each enrolled pod's listeners inside its network
//!   namespace (outbound 15001, inbound 15006 and HBONE 15008) and carries connections;
//!   [`inpod`] is its side of the hand-over from the node agent (the ZDS client and the
//!   ports and marks shared with the rules); [`rbac`] is L4 authorization with Istio's
//!   semantics; [`metrics`] the `istio_tcp_*` metrics and the access log;
//! - the node: [`node`] holds the node agent (pods from the CNI plugin, redirect rules, ZDS
//!   server), the CNI plugin mode of the binary and its installer.
//!
//! The mesh state, certificates and peer labels come from `ambit-dataplane`, shared with the
//! waypoint; protocols (HBONE, TLS, xDS, ZDS) from `ambit-shared`. [`admin`] serves
//! `/config_dump`; [`config`] and [`run`] are the flags and the daemon's wiring.

pub mod admin;
pub mod config;
pub mod dns_proxy;
pub mod inpod;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod rbac;
pub mod run;
