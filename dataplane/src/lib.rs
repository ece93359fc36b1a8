//! What Ambit's two proxies share, above the protocols in `ambit-shared`:
//!
//! - [`state`]: workloads, services and authorization policies from xDS, indexed for
//!   per-connection look-ups, with endpoint choice ([`state::pick_endpoint`]);
//! - [`cert_manager`]: workload certificates from the mesh CA ([`cert_manager::CaClient`]),
//!   renewed at half life ([`cert_manager::CertManager`]), and the TLS server configuration
//!   built from them ([`cert_manager::ServerTls`]);
//! - [`labels`]: the peer and service labels of Istio's metrics;
//! - [`resolve`]: names of ServiceEntry endpoints resolved per connection.
//!
//! It does not evaluate policies (ztunnel's `rbac` does L4, the waypoint's `l7` does L7),
//! open sockets, or know about pods, nodes or CNI: those belong to the proxies. The
//! dependency direction is `ambit-shared ← ambit-dataplane ← {ambit-ztunnel, ambit-waypoint}`.

pub mod cert_manager;
pub mod labels;
pub mod resolve;
pub mod state;
