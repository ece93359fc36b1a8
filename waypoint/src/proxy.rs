//! The waypoint's data path: HBONE in (its own identity), HTTP/1.1, HTTP/2 and gRPC handled
//! per request — authorization, route, filters, fault, backend by weight, endpoint, pooled
//! HBONE out — and plain TCP forwarded for ports that are not HTTP.
//!
//! The connection's protocol comes from the service port (`appProtocol`, port name) or, when
//! undeclared, from its first bytes (the HTTP/2 preface, an HTTP/1 request line, else TCP).
//!
//! Fail closed: a CONNECT is served only for a service bound to this waypoint and only with its
//! L7 configuration in hand (503 without it); every path through — HTTP, gRPC, TCP by
//! declaration or by sniffing — is authorized (TCP with Istio's L4 semantics, so no protocol
//! choice is a weaker check); the source for policy is the connection's peer, never a header
//! the client wrote; request paths are normalized before authorization, routing and the
//! upstream request.
//!
//! This module owns the [`Waypoint`] itself (what it holds, how it is built) and who it is
//! ([`Me`]); the rooms below own the rest, from the outside in:
//! - [`inbound`]: the HBONE handler — CONNECT admission, TCP authorization, sniffing;
//! - [`downstream`]: who sent a stream and where it was going, fixed per HBONE stream;
//! - [`pipeline`]: one HTTP request's stages (validation, authn, authz, route, filters and
//!   faults, retry);
//! - [`upstream`]: the dispatch of one attempt to an endpoint, the dialer and the pools keyed
//!   by the chosen endpoint;
//! - [`failure`]: why the waypoint answered a request itself, typed and classified by side;
//! - [`telemetry`]: the request's metrics, access-log line and span, recorded once;
//! - [`body`]: the body type and the waypoint's plain-text answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use ambit_dataplane::state::{ip_from_bytes, Destination, Service, State};
use ambit_shared::proto::workload::{gateway_address, GatewayAddress};

use crate::l7::normalize::Normalization;
use crate::metrics::Metrics;

mod body;
mod downstream;
mod failure;
mod inbound;
pub mod ingress;
mod pipeline;
mod telemetry;
mod upstream;

pub use crate::l7::{L7Entry, L7Map};
pub use body::{Body, BoxError};
pub use inbound::{sniff, Inbound, Prefixed};
pub use upstream::{Conn, Connector, Dialer, Endpoint, Pools, Tunnel, Upstream, UpstreamTls};

/// The waypoint itself: what bindings name (its Gateway) and where it runs.
#[derive(Debug, Clone)]
pub struct Me {
    pub namespace: String,
    pub gateway: String,
    pub pod_ip: Option<IpAddr>,
}

impl Me {
    /// Whether a service's or workload's `waypoint` is this waypoint: its Service by hostname
    /// or address, or its own pod address.
    pub fn is(&self, state: &State, network: &str, gw: Option<&GatewayAddress>) -> bool {
        let mine = |s: &Service| *s.namespace == *self.namespace && *s.name == *self.gateway;
        match gw.and_then(|g| g.destination.as_ref()) {
            Some(gateway_address::Destination::Hostname(h)) => {
                h.namespace == self.namespace
                    && state.service(&format!("{}/{}", h.namespace, h.hostname)).is_some_and(|s| mine(s))
            }
            Some(gateway_address::Destination::Address(a)) => ip_from_bytes(&a.address).is_some_and(|ip| {
                Some(ip) == self.pod_ip
                    || matches!(state.destination(network, SocketAddr::new(ip, 0)),
                        Destination::Service { service, .. } if mine(&service))
            }),
            None => false,
        }
    }
}

/// What the waypoint was started with, beside its connections.
pub struct Options {
    pub me: Me,
    /// The network the waypoint's addresses are on.
    pub network: Arc<str>,
    /// The mesh state, kept current by xDS.
    pub state: Arc<RwLock<State>>,
    /// Request path normalization (meshConfig `pathNormalization`).
    pub normalization: Normalization,
    /// Trace sampling percentage.
    pub sampling: f64,
    /// Names of DNS ServiceEntry endpoints, resolved per request.
    pub resolver: Arc<ambit_dataplane::resolve::Resolver>,
    /// An ingress gateway: requests go upstream in the HTTP version the backend's port
    /// declares, not the client's (a browser's HTTP/2 is not the backend's).
    pub ingress: bool,
    /// Bumped at every xDS update: open TCP streams are authorized again on it.
    pub changes: tokio::sync::watch::Receiver<u64>,
}

pub struct Waypoint {
    /// The network the waypoint's addresses are on.
    network: Arc<str>,
    /// The way out: the mesh state, the backends' limits and the endpoints' pools.
    upstream: Arc<Upstream>,
    pub l7: L7Map,
    pub metrics: Arc<Metrics>,
    me: Me,
    normalization: Normalization,
    keysets: Arc<crate::jwt::KeySets>,
    tracer: crate::trace::Exporter,
    sampling: f64,
    /// Bumped at every xDS update (see [`Options::changes`]).
    changes: tokio::sync::watch::Receiver<u64>,
    /// RateLimitPolicy token buckets, kept across configuration updates.
    buckets: crate::l7::ratelimit::Buckets,
}

impl Waypoint {
    pub fn new(
        dialer: Dialer,
        l7: L7Map,
        metrics: Arc<Metrics>,
        tracer: crate::trace::Exporter,
        options: Options,
    ) -> Arc<Self> {
        Arc::new(Waypoint {
            upstream: Arc::new(
                Upstream::new(
                    options.state,
                    options.network.clone(),
                    l7.clone(),
                    Pools::new(dialer),
                    options.resolver,
                    options.me.pod_ip,
                )
                .for_ingress(options.ingress),
            ),
            network: options.network,
            l7,
            metrics,
            me: options.me,
            normalization: options.normalization,
            keysets: Arc::default(),
            tracer,
            sampling: options.sampling,
            changes: options.changes,
            buckets: crate::l7::ratelimit::Buckets::default(),
        })
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.upstream.state()
    }
}
