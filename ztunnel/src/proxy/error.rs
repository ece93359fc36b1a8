//! Why a connection through the proxy failed, classified once: each failure knows the
//! response flag it is recorded with and, for HBONE tunnels the proxy answers, the status
//! it is refused with. Connections end through `ConnectionRecord::fail`, never by setting
//! flags by hand.

use ambit_dataplane::cert_manager::FetchError;
use ambit_shared::hbone::HboneError;
use http::StatusCode;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::{Failure, ResponseFlags};
use crate::rbac::Denial;

/// A connection that ended before it carried data.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Outbound: the destination cannot be routed (no endpoint, no waypoint, a loop).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Inbound: admission refused the connection (wrong pod, the proxy's own port, policy).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Outbound: no certificate for the source pod's identity.
    #[error(transparent)]
    Identity(#[from] FetchError),
    /// Outbound: the HBONE tunnel could not be opened (TLS, the peer's answer, the network).
    #[error(transparent)]
    Tunnel(#[from] HboneError),
    /// The next hop (the application, or a destination outside the mesh) refused or was
    /// unreachable.
    #[error(transparent)]
    Dial(std::io::Error),
    /// Inbound: the tunnel was admitted but its response could not be sent (the client left).
    #[error(transparent)]
    Accept(HboneError),
    /// Outbound: a DNS endpoint's name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ambit_dataplane::resolve::ResolveError),
}

impl Failure for ConnError {
    fn flags(&self) -> ResponseFlags {
        match self {
            ConnError::Route(RouteError::NotInRegistry(_)) => ResponseFlags::BlackHole,
            ConnError::Route(_) | ConnError::Dial(_) | ConnError::Resolve(_) => ResponseFlags::Connect,
            ConnError::Refused(Refused::Denied(_)) => ResponseFlags::Deny,
            ConnError::Refused(_) => ResponseFlags::Connect,
            ConnError::Identity(_) => ResponseFlags::IdentityError,
            ConnError::Tunnel(HboneError::Tls { .. }) => ResponseFlags::TlsFailure,
            ConnError::Tunnel(HboneError::Rejected(s)) if *s == StatusCode::UNAUTHORIZED => ResponseFlags::Deny,
            ConnError::Tunnel(_) => ResponseFlags::Connect,
            // Nothing was refused: the client went away while being answered.
            ConnError::Accept(_) => ResponseFlags::None,
        }
    }
}

impl ConnError {
    /// The status an inbound HBONE CONNECT is refused with.
    pub fn status(&self) -> StatusCode {
        match self {
            ConnError::Refused(Refused::Denied(_)) => StatusCode::UNAUTHORIZED,
            ConnError::Refused(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Why a connection's destination cannot be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("service {0} has no healthy endpoint for port {1}")]
    NoEndpoint(String, u16),
    #[error("waypoint {0} cannot be resolved")]
    Waypoint(String),
    #[error("workload {0} has no address")]
    NoAddress(String),
    #[error("connection to the proxy's own port {0}")]
    Loop(u16),
    /// The source's outbound traffic policy is `REGISTRY_ONLY` and the destination is neither
    /// a mesh workload nor a service (Istio's `BlackHoleCluster`).
    #[error("{0} is not in the mesh's registry (outbound traffic policy REGISTRY_ONLY)")]
    NotInRegistry(SocketAddr),
    /// A DNS endpoint's name resolved to an address it may not lead to (loopback, link-local,
    /// unspecified, multicast, or a meshed pod's).
    #[error("{0} resolved to {1}, which a DNS endpoint may not lead to")]
    Resolved(String, std::net::IpAddr),
    /// A ServiceEntry endpoint's address is a Service's virtual address (or loopback,
    /// link-local…): plain TCP there would reach the Service's pods around their policies.
    #[error("endpoint address {0} is not one an endpoint outside the mesh may lead to")]
    Forbidden(std::net::IpAddr),
}

/// Why an inbound connection was refused before the application was dialed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The destination address is not this pod's (a tunnel cannot name another pod).
    #[error("{dst} is not pod {pod}")]
    NotThisPod { dst: SocketAddr, pod: String },
    /// The destination port is one of the proxy's own listeners.
    #[error("port {port} of {uid} is the proxy's own")]
    ProxyPort { port: u16, uid: Arc<str> },
    /// Authorization refused it.
    #[error("{0}")]
    Denied(Denial),
}
