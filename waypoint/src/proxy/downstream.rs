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

use super::failure::Failure;
use crate::gateway::{GatewayL7, PortPlan};
use crate::l7::{authorize, host_name, Denial, Layer, ServiceL7, Subject};

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
    /// At an ingress gateway's HTTP(S) listener: where each request's routes come from.
    pub(super) ingress: Option<IngressRoutes>,
    /// A workload addressed directly (a waypoint serving workloads): requests go to it.
    pub(super) workload: Option<Arc<ambit_dataplane::state::Workload>>,
}

/// An ingress connection's routes, chosen per request from the gateway's configuration as it
/// is when the request arrives (a route, policy or grant withdrawn since the connection opened
/// no longer applies to it).
pub(super) struct IngressRoutes {
    pub(super) config: tokio::sync::watch::Receiver<Option<Arc<GatewayL7>>>,
    pub(super) port: u16,
    /// HTTPS: the listener the SNI chose. A request whose Host another listener claims is
    /// misdirected: listeners sharing a port do not share routes.
    pub(super) sni_listener: Option<String>,
}

impl Downstream {
    /// The configuration a request for `host` is served with: the service's own, or at an
    /// ingress gateway the listener that claims `host` on this port (none: 404; on TLS, not
    /// the SNI's listener: 421).
    pub(super) fn l7_for(&self, host: &str) -> Result<Arc<ServiceL7>, Failure> {
        let Some(ingress) = &self.ingress else { return Ok(self.l7.clone()) };
        let config = ingress.config.borrow().clone().ok_or(Failure::NoRoute)?;
        // The port's plan must still be what the connection is: a plaintext connection is
        // never served an HTTPS listener's routes (the port may have changed protocol).
        let listeners = match (config.ports.get(&ingress.port), &ingress.sni_listener) {
            (Some(PortPlan::Http(l)), None) | (Some(PortPlan::Https(l)), Some(_)) => l.clone(),
            _ => return Err(Failure::NoRoute),
        };
        let name = host_name(host);
        let listener = match (&ingress.sni_listener, name.is_empty()) {
            // No Host (HTTP/1.0): the listener the SNI chose.
            (Some(sni), true) => listeners.listeners.iter().find(|l| l.name == *sni).ok_or(Failure::NoRoute)?,
            _ => listeners.choose(Some(&name)).ok_or(Failure::NoRoute)?,
        };
        if ingress.sni_listener.as_ref().is_some_and(|sni| *sni != listener.name) {
            return Err(Failure::Misdirected);
        }
        Ok(listener.l7.clone())
    }

    /// The verified principal, when the peer has a mesh identity.
    pub(super) fn authenticated(&self) -> Option<&str> {
        self.identity.as_ref().map(|_| &*self.principal)
    }

    /// Authorizes a connection forwarded as TCP, with Istio's L4 semantics: ALLOW rules that
    /// need HTTP attributes cannot match, DENY rules apply their L4 part.
    pub(super) fn authorize_tcp(&self) -> Result<(), Denial> {
        self.authorize_tcp_with(&self.l7)
    }

    /// [`Downstream::authorize_tcp`] against `l7`'s policies (the configuration now, for a
    /// connection already open).
    pub(super) fn authorize_tcp_with(&self, l7: &ServiceL7) -> Result<(), Denial> {
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
        authorize(&l7.policies, &subject, Layer::Tcp)
    }
}
