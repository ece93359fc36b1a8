//! Who sent a stream and where it was going, fixed per HBONE stream: the peer's identity and
//! address (never a header the client wrote), the service it addressed and that service's L7
//! configuration. Built by [`super::inbound`]; read by the pipeline. It does not look anything
//! up itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_dataplane::labels::Peer;
use ambit_dataplane::state::Service;
use ambit_shared::Identity;
use http::HeaderMap;

use crate::l7::{authorize, Denial, Layer, ServiceL7, Subject};

/// Who sent the request and where it was going, fixed per HBONE stream.
pub(super) struct Downstream {
    /// The peer's SPIFFE id, or `unknown` for a client outside the mesh (at an ingress
    /// gateway); for logs and metrics. Policy reads [`Downstream::authenticated`].
    pub(super) principal: Arc<str>,
    /// The peer's mesh identity, verified by mutual TLS; `None`: a client outside the mesh.
    pub(super) identity: Option<Identity>,
    pub(super) source: Peer,
    /// The connection's peer: the client's address as its ztunnel dialed from the client pod
    /// (or, at an ingress gateway, the outside client's).
    pub(super) source_ip: IpAddr,
    pub(super) vip: SocketAddr,
    pub(super) service: Arc<Service>,
    pub(super) l7: Arc<ServiceL7>,
}

impl Downstream {
    /// The verified principal, when the peer has a mesh identity.
    pub(super) fn authenticated(&self) -> Option<&str> {
        self.identity.as_ref().map(|_| &*self.principal)
    }

    /// Authorizes a connection forwarded as TCP, with Istio's L4 semantics: ALLOW rules that
    /// need HTTP attributes cannot match, DENY rules apply their L4 part.
    pub(super) fn authorize_tcp(&self) -> Result<(), Denial> {
        let headers = HeaderMap::new();
        let subject = Subject {
            principal: self.authenticated(),
            identity: self.identity.as_ref(),
            namespace: self.identity.as_ref().map(|i| i.namespace()),
            request_principal: None,
            source_ip: self.source_ip,
            remote_ip: self.source_ip,
            destination_ip: self.vip.ip(),
            host: "",
            port: self.vip.port(),
            method: "",
            path: "",
            query: None,
            headers: &headers,
            claims: None,
        };
        authorize(&self.l7.policies, &subject, Layer::Tcp)
    }
}
