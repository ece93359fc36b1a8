//! Ambit's shared crate: the one implementation of every protocol the mesh speaks.
//!
//! - [`api`]: label, annotation and GatewayClass names on Kubernetes objects.
//! - [`admission`]: connection counts per peer and in all, for the listeners' limits.
//! - [`identity`]: SPIFFE identities.
//! - [`cidr`]: IP blocks and matching addresses against them.
//! - [`certs`]: the CA, workload keys and CSRs, certificate chains and renewal times.
//! - [`tls`]: rustls configurations that pin peer identities.
//! - [`hbone`]: HTTP/2 CONNECT tunnels over mutual TLS (pooled client, server).
//! - [`proto`]: generated protobuf types (delta ADS, `istio.workload`, `istio.security`, the CA
//!   service, ZDS).
//! - [`xds`]: the delta ADS client, and the server's wire side (resources encoded once, shared
//!   by every subscriber).
//! - [`zds`]: the node agent → ztunnel protocol (netns fds over SOCK_SEQPACKET).
//! - [`copy`]: bidirectional stream copy with adaptive buffers.
//! - [`lifecycle`]: shutdown signals and start-up checks shared by the daemons.
//! - [`grpc`]: tonic over mesh TLS (client connector, server incoming stream).
//! - [`telemetry`]: logging set-up, Prometheus registry and the admin/readiness server.
//!
//! Daemons (ztunnel, waypoint, controller) and the e2e sandbox build on these; none of them
//! speaks a protocol on its own.

pub mod admission;
pub mod api;
pub mod certs;
pub mod cidr;
pub mod copy;
pub mod grpc;
pub mod hbone;
pub mod identity;
pub mod lifecycle;
pub mod netns;
pub mod proto;
pub mod telemetry;
pub mod tls;
pub mod xds;
pub mod zds;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

// The public interface, by name.
pub use certs::{Ca, CertError, Validity, WorkloadCert, WorkloadKey};
pub use cidr::Cidr;
pub use identity::{Identity, IdentityError};
pub use tls::MeshRoots;
