//! Upstream: the dispatch of one attempt — the backend service's pool limits, an endpoint by
//! its load-balancing policy (the one look-up of the mesh state on the way out), the request
//! sent on that endpoint's pooled client, the outcome fed to outlier detection — and, in
//! [`dial`], the connections keyed by the chosen endpoint. It does not decide routes, retries
//! or filters (see [`super::pipeline`]).

use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ambit_dataplane::resolve::{outside_ok, Resolver};
use ambit_dataplane::state::{Service, State, Workload};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::BodyExt;

mod dial;
mod tls;

pub use dial::{Conn, Connector, Dialer, Endpoint, Pools, Tunnel};
pub use tls::UpstreamTls;

use super::body::{body, Body, BoxError};
use super::failure::{Failed, Failure};
use crate::balance::{Backends, HashInput, Outcome};
use crate::l7::{port_policy, BackendRef, L7Entry, L7Map};

/// An attempt's result: the response and the workload that gave it, or the failure (with the
/// workload tried, if one was).
pub(super) type Attempt = Result<(Response<Body>, Arc<Workload>), Failed<'static>>;

/// The way out of the waypoint.
pub struct Upstream {
    /// The mesh state: services and their endpoints.
    state: Arc<RwLock<State>>,
    /// The waypoint's network: only endpoints on it are dialed (others sit behind a gateway).
    network: Arc<str>,
    /// Every service's L7 configuration (its DestinationRule's traffic policy).
    l7: L7Map,
    /// Per service: pool limits, outlier detection, load-balancing state.
    backends: Backends,
    /// The endpoints' HTTP clients and the dialer under them.
    pools: Pools,
    /// Endpoints known by name (DNS ServiceEntries) are resolved per request.
    resolver: Arc<Resolver>,
    /// The waypoint's own address: never an endpoint outside the mesh.
    own_ip: Option<IpAddr>,
    /// At an ingress gateway: the upstream HTTP version is the backend port's.
    ingress: bool,
}

impl Upstream {
    pub fn new(
        state: Arc<RwLock<State>>,
        network: Arc<str>,
        l7: L7Map,
        pools: Pools,
        resolver: Arc<Resolver>,
        own_ip: Option<IpAddr>,
    ) -> Self {
        Upstream { state, network, l7, backends: Backends::default(), pools, resolver, own_ip, ingress: false }
    }

    /// At an ingress gateway: requests go upstream as HTTP/2 only to ports that speak it
    /// (`appProtocol` http2/grpc, or a gRPC request), as HTTP/1.1 otherwise.
    pub fn for_ingress(mut self, ingress: bool) -> Self {
        self.ingress = ingress;
        self
    }

    pub(super) fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn dialer(&self) -> &Dialer {
        self.pools.dialer()
    }

    /// What the service's locality preference leaves of `endpoints`, judged from this proxy's
    /// own workload (a waypoint prefers endpoints close to itself, as Istio's do).
    pub(super) fn closest(
        &self,
        state: &State,
        service: &Service,
        endpoints: Vec<(Arc<Workload>, u16)>,
    ) -> Vec<(Arc<Workload>, u16)> {
        match &service.routing {
            None => endpoints,
            Some(routing) => {
                let own = self.own_ip.and_then(|ip| state.workload_by_addr(&self.network, ip));
                routing.prefer(own.map(|w| &**w), endpoints)
            }
        }
    }

    /// One attempt to a backend service.
    pub(super) async fn send(&self, backend: &BackendRef, req: Request<Body>, port: u16, source_ip: IpAddr) -> Attempt {
        let port = if backend.port == 0 { port } else { backend.port };
        let service = self.state().service(&backend.service_key).cloned();
        let Some(service) = service else { return Err(Failure::NoHealthyUpstream.into()) };
        self.dispatch(service, backend.subset.as_deref(), port, req, source_ip).await
    }

    /// A request to a service (or one of its DestinationRule subsets): its pool limits, an
    /// endpoint by its load-balancing policy, the outcome fed to outlier detection. The
    /// policy and that state are per service port and subset, as Envoy's clusters are.
    pub(super) async fn dispatch(
        &self,
        service: Arc<Service>,
        subset: Option<&str>,
        port: u16,
        req: Request<Body>,
        source_ip: IpAddr,
    ) -> Attempt {
        let l7 = match self.l7.read().unwrap_or_else(|p| p.into_inner()).get(&*service.key) {
            Some(L7Entry::Ready(l7)) => Some(l7.clone()),
            _ => None,
        };
        // An ingress gateway sends a service labelled `istio.io/ingress-use-waypoint` through
        // its waypoint, which applies the service's policies and routes and chooses.
        if self.ingress && service.ingress_use_waypoint && service.waypoint.is_some() {
            return self.via_waypoint(&service, port, req).await;
        }
        let (policy, members) = match subset {
            None => (l7.as_ref().and_then(|l| l.backend.as_ref()), None),
            // A subset the service does not define: no endpoints stand in for it.
            Some(name) => match l7.as_ref().and_then(|l| l.subsets.get(name)) {
                Some(s) => (s.backend.as_ref(), Some(&s.members)),
                None => return Err(Failure::NoCluster.into()),
            },
        };
        let policy = policy.map(|p| port_policy(p, port));
        let backend = self.backends.get(&format!("{}|{port}|{}", service.key, subset.unwrap_or_default()));
        let Some(_admission) = backend.admit(policy) else { return Err(Failure::Overflow.into()) };
        // The service's (or subset's) endpoints; without those outlier detection ejected (so
        // a close locality whose endpoints are all ejected fails over, as Envoy's does); then
        // the closest. Endpoints without an address are candidates only when known by name
        // (resolved below).
        let (endpoints, count) = {
            let state = self.state();
            let mut endpoints = state.endpoints_on(&service, port, &self.network);
            if let Some(members) = members {
                endpoints.retain(|(w, _)| members.contains(&w.uid));
            }
            endpoints.retain(|(w, _)| !w.addresses.is_empty() || w.resolvable());
            let count = endpoints.len();
            (self.closest(&state, &service, backend.not_ejected(endpoints)), count)
        };
        let input = HashInput { headers: req.headers(), source_ip };
        let Some((w, target)) = backend.choose(endpoints, policy, &input) else {
            return Err(Failure::NoHealthyUpstream.into());
        };
        let mut req = req;
        if self.ingress {
            *req.version_mut() = upstream_version(&service, port, &req);
        }
        backend.started(&w);
        let fresh = policy.is_some_and(|p| p.max_requests_per_connection == 1);
        let tls = policy.and_then(|p| p.tls.as_ref());
        let result = self.send_to(&w, target, req, fresh, tls, &service.key).await;
        let outcome = match &result {
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(_) => Outcome::Failure,
        };
        backend.finished(&w, outcome, policy, count);
        match result {
            Ok(r) => Ok((r, w)),
            Err(failure) => Err(Failed { failure, endpoint: Some(w), response_ops: Vec::new() }),
        }
    }

    /// One request to an endpoint; `fresh`: on a connection of its own, closed afterwards
    /// (`maxRequestsPerConnection: 1`).
    async fn send_to(
        &self,
        w: &Workload,
        port: u16,
        req: Request<Body>,
        fresh: bool,
        tls: Option<&ambit_shared::proto::waypoint::UpstreamTls>,
        service_key: &str,
    ) -> Result<Response<Body>, Failure> {
        let endpoint = match (Endpoint::of(w, port), w.hostname.as_deref()) {
            // An address outside the mesh (a ServiceEntry's): only where an entry may lead.
            (Some(endpoint), _) if !w.hbone && !self.may_dial(endpoint.addr.ip(), service_key) => {
                tracing::debug!(endpoint = %endpoint.addr, "endpoint outside the mesh refused");
                return Err(Failure::NoEndpointAddress);
            }
            (Some(endpoint), _) => endpoint,
            (None, Some(host)) if w.resolvable() => self.resolved(host, port, service_key).await?,
            (None, _) => return Err(Failure::NoEndpointAddress),
        };
        let h2 = req.version() == http::Version::HTTP_2;
        // TLS originated to an endpoint outside the mesh when the DestinationRule says SIMPLE.
        let endpoint = match (tls, &endpoint.tunnel) {
            (Some(t), Tunnel::Plain) => Endpoint {
                addr: endpoint.addr,
                tunnel: Tunnel::Tls { sni: Arc::from(t.sni.as_str()), verify: !t.insecure_skip_verify, h2 },
            },
            _ => endpoint,
        };
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = endpoint.addr;
        // An HTTP/2 client's name is its :authority (no Host header): an HTTP/1.1 request
        // upstream carries it as Host, so the backend sees the name whichever version the
        // client spoke. (HTTP/2 upstream keeps the endpoint as :authority, one pool per
        // endpoint, and no Host that would disagree with it.)
        if parts.version != http::Version::HTTP_2 && !parts.headers.contains_key(http::header::HOST) {
            if let Some(v) = parts.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        // Over TLS the server sees `https` and its own name (HTTP/2's :scheme and :authority).
        let target = match &endpoint.tunnel {
            Tunnel::Tls { sni, .. } => format!("https://{sni}{path}"),
            _ => format!("http://{authority}{path}"),
        };
        parts.uri = match target.parse() {
            Ok(u) => u,
            Err(_) => return Err(Failure::BadUpstreamPath),
        };
        let h2 = parts.version == http::Version::HTTP_2;
        parts.version = if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        let client = self.pools.client(&endpoint, h2, fresh);
        let result = client.request(req).await;
        match result {
            Ok(r) => Ok(r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
            Err(e) => {
                tracing::debug!(endpoint = %authority, error = %e, "upstream request failed");
                Err(Failure::Connect)
            }
        }
    }

    /// One request to the workload a CONNECT addressed (a waypoint serving workloads): over
    /// HBONE to it, never in plaintext.
    pub(super) async fn to_workload(
        &self,
        w: &Workload,
        port: u16,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failed<'static>> {
        if !w.hbone {
            return Err(Failure::NoEndpointAddress.into());
        }
        self.send_to(w, port, req, false, None, "").await.map_err(Into::into)
    }

    /// One request to `service` through its waypoint: HBONE to a waypoint pod, asking for the
    /// service's `VIP:port`. No waypoint to reach: 503, never the endpoints around it.
    async fn via_waypoint(&self, service: &Service, port: u16, req: Request<Body>) -> Attempt {
        let endpoint = {
            let state = self.state();
            waypoint_endpoint(&state, &self.network, service, port)
        };
        let Some((endpoint, waypoint)) = endpoint else {
            tracing::debug!(service = %service.key, "no waypoint endpoint for an ingress-use-waypoint service");
            return Err(Failure::NoHealthyUpstream.into());
        };
        let mut req = req;
        *req.version_mut() = upstream_version(service, port, &req);
        let h2 = req.version() == http::Version::HTTP_2;
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if !h2 && !parts.headers.contains_key(http::header::HOST) {
            if let Some(v) = parts.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        parts.uri = match format!("http://{}{path}", endpoint.addr).parse() {
            Ok(u) => u,
            Err(_) => return Err(Failure::BadUpstreamPath.into()),
        };
        strip_hop_by_hop(&mut parts.headers);
        let client = self.pools.client(&endpoint, h2, false);
        match client.request(Request::from_parts(parts, body)).await {
            Ok(r) => Ok((r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()), waypoint)),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.addr, error = %e, "request through the waypoint failed");
                Err(Failed { failure: Failure::Connect, endpoint: Some(waypoint), response_ops: Vec::new() })
            }
        }
    }

    /// Whether plain TCP may go to `ip` (an endpoint outside the mesh): never the waypoint's
    /// own address, and only where [`outside_ok`] allows.
    pub(super) fn may_dial(&self, ip: IpAddr, service_key: &str) -> bool {
        Some(ip.to_canonical()) != self.own_ip && outside_ok(&self.state(), &self.network, ip, Some(service_key))
    }

    /// The endpoint a DNS ServiceEntry's hostname stands for now: plain TCP (it is outside the
    /// mesh) to an address [`Upstream::may_dial`] allows.
    pub(super) async fn resolved(&self, host: &str, port: u16, service_key: &str) -> Result<Endpoint, Failure> {
        let like = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        match self.resolver.resolve_outside(host, like, |ip| self.may_dial(ip, service_key)).await {
            Ok(ip) => Ok(Endpoint { addr: std::net::SocketAddr::new(ip, port), tunnel: Tunnel::Plain }),
            Err(e) => {
                tracing::debug!(error = %e, "DNS endpoint not resolved");
                Err(Failure::Resolve)
            }
        }
    }

    /// A copy to the mirror backend, answered into the void.
    pub(super) fn mirror(
        self: &Arc<Self>,
        backend: &BackendRef,
        parts: &http::request::Parts,
        bytes: Bytes,
        port: u16,
        source_ip: IpAddr,
    ) {
        let mut parts = parts.clone();
        // Envoy marks mirrored requests' host with `-shadow`.
        if let Some(host) = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()) {
            if let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow")) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        let req = Request::from_parts(parts, body(bytes));
        let (backend, this) = (backend.clone(), Arc::clone(self));
        tokio::spawn(async move {
            if let Err(failed) = this.send(&backend, req, port, source_ip).await {
                let (status, flag) = (failed.failure.status(), failed.failure.flag());
                tracing::debug!(status = status.as_u16(), flag = flag.as_str(), "mirror request failed");
            }
        });
    }
}

/// Removes what belongs to one hop only (RFC 9110 §7.6.1): the headers `Connection` names, the
/// fixed hop-by-hop set, and `te` unless it says only `trailers` (gRPC needs that on HTTP/2).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        headers.remove(h);
    }
    let te_is_trailers =
        headers.get_all(http::header::TE).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(http::header::TE);
    }
}

/// The HTTP version an ingress gateway sends a request upstream in: HTTP/2 to a port declared
/// HTTP/2 or gRPC (or for a gRPC request, which needs it), HTTP/1.1 otherwise.
fn upstream_version<B>(service: &Service, port: u16, req: &Request<B>) -> http::Version {
    use ambit_shared::proto::workload::AppProtocol;
    let declared = service.ports.iter().find(|p| p.service_port == u32::from(port)).map(|p| p.app_protocol());
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    // gRPC needs HTTP/2; only a port declared HTTP/1.1 keeps it off (and fails it there).
    if matches!(declared, Some(AppProtocol::Http2 | AppProtocol::Grpc))
        || (grpc && declared != Some(AppProtocol::Http11))
    {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    }
}

/// The waypoint in front of `service`, as an endpoint asking for the service's `VIP:port` on
/// `network` (with the waypoint workload chosen). `None`: no VIP, or no waypoint pod to reach.
pub(super) fn waypoint_endpoint(
    state: &State,
    network: &str,
    service: &Service,
    port: u16,
) -> Option<(Endpoint, Arc<Workload>)> {
    use ambit_dataplane::state::{ip_from_bytes, pick_endpoint, Destination};
    use ambit_shared::proto::workload::gateway_address;
    let gw = service.waypoint.as_ref()?;
    let vip = service.vips.iter().find(|(n, _)| &**n == network).map(|(_, ip)| *ip)?;
    let hbone = u16::try_from(gw.hbone_mtls_port).ok().filter(|p| *p != 0).unwrap_or(15008);
    let chosen = match gw.destination.as_ref()? {
        gateway_address::Destination::Address(a) => {
            let ip = ip_from_bytes(&a.address)?;
            match state.destination(network, std::net::SocketAddr::new(ip, hbone)) {
                Destination::Service { service, .. } => pick_endpoint(&state.endpoints_on(&service, hbone, network)),
                Destination::Workload(w) => Some((w, hbone)),
                Destination::Passthrough => None,
            }
        }
        gateway_address::Destination::Hostname(h) => state
            .service(&format!("{}/{}", h.namespace, h.hostname))
            .and_then(|s| pick_endpoint(&state.endpoints_on(s, hbone, network))),
    };
    let (w, _) = chosen?;
    let ip = *w.addresses.first()?;
    let endpoint = Endpoint {
        addr: std::net::SocketAddr::new(ip, hbone),
        tunnel: Tunnel::Waypoint { identity: w.identity.clone(), authority: std::net::SocketAddr::new(vip, port) },
    };
    Some((endpoint, w))
}
