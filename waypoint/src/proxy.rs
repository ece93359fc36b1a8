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

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ambit_dataplane::cert_manager::CertManager;
use ambit_dataplane::labels::{Peer, ServiceLabels};
use ambit_dataplane::state::{ip_from_bytes, pick_endpoint, Destination, Service, State, Workload};
use ambit_shared::hbone::client::{Client as HboneClient, ConnectRequest};
use ambit_shared::hbone::server::{Handler, InboundConnect, Responder};
use ambit_shared::hbone::{H2Stream, HBONE_PORT};
use ambit_shared::proto::waypoint::Protocol;
use ambit_shared::proto::workload::{gateway_address, GatewayAddress};
use ambit_shared::Identity;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::balance::{Backends, HashInput, Outcome};
use crate::l7::normalize::{normalize, Normalization};
use crate::l7::{authorize, BackendRef, Filter, Layer, RequestView, Route, ServiceL7, Subject};
use crate::metrics::{Flag, Metrics, RequestLabels};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Requests whose bodies are buffered (retries, mirrors) may not exceed this.
const MAX_BUFFERED_BODY: usize = 1024 * 1024;
/// How long a connection on an undeclared port may stay silent before it is treated as TCP.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

fn body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn respond(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body(text));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The connection to an endpoint: an HBONE stream, or TCP for endpoints outside the mesh.
pub enum Conn {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Dials endpoints for the HTTP clients' pools: HBONE as the waypoint's identity to meshed
/// workloads (their ztunnel checks it), plain TCP only to workloads the state says are outside
/// the mesh; an address the state no longer knows is refused, never dialed in plaintext.
#[derive(Clone)]
pub struct Dialer {
    pub network: Arc<str>,
    pub state: Arc<RwLock<State>>,
    pub certs: Arc<CertManager>,
    pub identity: Identity,
    pub hbone: HboneClient,
}

impl Dialer {
    pub async fn dial(&self, addr: SocketAddr) -> Result<Conn, BoxError> {
        let workload = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            state.workload_by_addr(&self.network, addr.ip()).cloned()
        };
        match workload {
            Some(w) if w.hbone => {
                let cert = self.certs.fetch(&self.identity).await?;
                let req = ConnectRequest {
                    source: cert,
                    destination_identities: vec![w.identity.clone()],
                    hbone_addr: SocketAddr::new(addr.ip(), HBONE_PORT),
                    authority: addr,
                    headers: HeaderMap::new(),
                };
                Ok(Conn::Hbone(self.hbone.connect(&req).await?))
            }
            Some(_) => {
                let tcp = tokio::time::timeout(ambit_shared::hbone::CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| format!("connecting to {addr}: timed out"))??;
                let _ = tcp.set_nodelay(true);
                Ok(Conn::Tcp(tcp))
            }
            // Chosen from the state but gone from it since: never guess plaintext for it.
            None => Err(format!("endpoint {addr} is no longer known").into()),
        }
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("upstream URI without host")?;
            let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse()?;
            let port = uri.port_u16().ok_or("upstream URI without port")?;
            dialer.dial(SocketAddr::new(ip, port)).await.map(TokioIo::new)
        })
    }
}

/// A service's L7 configuration as the waypoint holds it.
#[derive(Debug, Clone)]
pub enum L7Entry {
    /// Compiled and in force.
    Ready(Arc<ServiceL7>),
    /// Refused (NACKed) with no earlier version to keep: the service is answered 503, never
    /// forwarded without its policies.
    Rejected(Arc<str>),
}

/// The L7 configuration of every service, by service key (`ns/hostname`).
pub type L7Map = Arc<RwLock<HashMap<String, L7Entry>>>;

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

/// Why a CONNECT is not served.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no service or workload at this address")]
    Unknown,
    #[error("not bound to this waypoint")]
    NotBound,
    /// A port the service does not declare: nothing (routes, `ports` rules) was written for
    /// it, so nothing is forwarded on it.
    #[error("port {0} is not a port of the service")]
    UndeclaredPort(u16),
    #[error("workload-addressed traffic through a waypoint is not supported yet")]
    Workload,
    #[error("no L7 configuration for the service yet")]
    NoConfig,
    #[error("the service's L7 configuration was rejected: {0}")]
    Rejected(Arc<str>),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unknown | Refusal::UndeclaredPort(_) => StatusCode::NOT_FOUND,
            Refusal::NotBound => StatusCode::UNAUTHORIZED,
            Refusal::Workload | Refusal::NoConfig | Refusal::Rejected(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the waypoint was started with, beside its connections.
pub struct Options {
    pub me: Me,
    /// Request path normalization (meshConfig `pathNormalization`).
    pub normalization: Normalization,
    /// Trace sampling percentage.
    pub sampling: f64,
}

/// An attempt's result: the response and the endpoint, or the failure answer, its flag and the
/// endpoint tried.
/// How a request ended: the response, the flag saying why (none when a backend answered), and
/// the workload that answered or was meant to.
type Handled = (Response<Body>, Flag, Option<Arc<Workload>>);
type Attempt = Result<(Response<Body>, Arc<Workload>), Handled>;

pub struct Waypoint {
    pub dialer: Dialer,
    pub l7: L7Map,
    pub metrics: Arc<Metrics>,
    me: Me,
    normalization: Normalization,
    backends: Arc<Backends>,
    keysets: Arc<crate::jwt::KeySets>,
    tracer: crate::trace::Exporter,
    sampling: f64,
    h1: Client<Dialer, Body>,
    h2: Client<Dialer, Body>,
    /// Without pooling: one request per connection.
    h1_fresh: Client<Dialer, Body>,
    h2_fresh: Client<Dialer, Body>,
}

/// Who sent the request and where it was going, fixed per HBONE stream.
struct Downstream {
    principal: Arc<str>,
    identity: Identity,
    source: Peer,
    /// The connection's peer: the client's address as its ztunnel dialed from the client pod.
    source_ip: IpAddr,
    vip: SocketAddr,
    service: Arc<Service>,
    l7: Arc<ServiceL7>,
}

impl Downstream {
    /// Authorizes a connection forwarded as TCP, with Istio's L4 semantics: ALLOW rules that
    /// need HTTP attributes cannot match, DENY rules apply their L4 part.
    fn authorize_tcp(&self) -> Result<(), String> {
        let headers = HeaderMap::new();
        let subject = Subject {
            principal: Some(&self.principal),
            namespace: Some(self.identity.namespace()),
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

impl Waypoint {
    pub fn new(
        dialer: Dialer,
        l7: L7Map,
        metrics: Arc<Metrics>,
        tracer: crate::trace::Exporter,
        options: Options,
    ) -> Arc<Self> {
        let mut h1 = Client::builder(TokioExecutor::new());
        h1.pool_idle_timeout(Duration::from_secs(90)).pool_timer(TokioTimer::new());
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.http2_only(true).pool_idle_timeout(Duration::from_secs(90)).pool_timer(TokioTimer::new());
        let mut h1_fresh = Client::builder(TokioExecutor::new());
        h1_fresh.pool_max_idle_per_host(0);
        let mut h2_fresh = Client::builder(TokioExecutor::new());
        h2_fresh.http2_only(true).pool_max_idle_per_host(0);
        Arc::new(Waypoint {
            h1: h1.build(dialer.clone()),
            h2: h2.build(dialer.clone()),
            h1_fresh: h1_fresh.build(dialer.clone()),
            h2_fresh: h2_fresh.build(dialer.clone()),
            dialer,
            l7,
            metrics,
            me: options.me,
            normalization: options.normalization,
            backends: Arc::default(),
            keysets: Arc::default(),
            tracer,
            sampling: options.sampling,
        })
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.dialer.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// What a CONNECT to `authority` is for: a service bound to this waypoint, with its L7
    /// configuration. Only looks things up.
    fn target(&self, network: &str, authority: SocketAddr) -> Result<(Arc<Service>, Arc<ServiceL7>), Refusal> {
        let service = {
            let state = self.state();
            match state.destination(network, authority) {
                Destination::Service { service, port } if self.me.is(&state, network, service.waypoint.as_ref()) => {
                    if !service.ports.iter().any(|p| p.service_port == u32::from(port)) {
                        return Err(Refusal::UndeclaredPort(port));
                    }
                    service
                }
                Destination::Workload(w) if self.me.is(&state, network, w.waypoint.as_ref()) => {
                    return Err(Refusal::Workload)
                }
                Destination::Service { .. } | Destination::Workload(_) => return Err(Refusal::NotBound),
                Destination::Passthrough => return Err(Refusal::Unknown),
            }
        };
        let map = self.l7.read().unwrap_or_else(|p| p.into_inner());
        match map.get(&*service.key) {
            Some(L7Entry::Ready(l7)) => Ok((service, l7.clone())),
            Some(L7Entry::Rejected(reason)) => Err(Refusal::Rejected(reason.clone())),
            None => Err(Refusal::NoConfig),
        }
    }

    async fn serve(self: Arc<Self>, req: InboundConnect, responder: Responder) {
        let network = self.dialer.network.clone();
        let (service, l7) = match self.target(&network, req.authority) {
            Ok(found) => found,
            Err(refusal) => {
                tracing::info!(target: "access", status = refusal.status().as_u16(), src.addr = %req.peer_addr, src.identity = %req.peer_identity, dst = %req.authority, reason = %refusal, "connection refused");
                responder.reject(refusal.status());
                return;
            }
        };
        // The peer is the client pod itself (its ztunnel dials from inside it); a `forwarded`
        // header is the client's to write and is never believed.
        let source_ip = req.peer_addr.ip().to_canonical();
        let source_workload = self.state().workload_by_addr(&network, source_ip).cloned();
        let principal: Arc<str> = Arc::from(req.peer_identity.to_string());
        let source = match &source_workload {
            Some(w) => Peer::from_workload(w, Some(principal.clone())),
            None => Peer::from_principal(Some(principal.clone())),
        };
        let down = Arc::new(Downstream {
            principal,
            identity: req.peer_identity.clone(),
            source,
            source_ip,
            vip: req.authority,
            service,
            l7,
        });
        let declared = down.l7.protocol(req.authority.port());
        if declared == Protocol::Tcp {
            // Refused before the tunnel opens: the client's ztunnel sees the denial.
            if let Err(policy) = down.authorize_tcp() {
                tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, src.identity = %down.principal, dst = %down.vip, %policy, response_flags = Flag::RbacDenied.as_str(), "tcp connection denied");
                responder.reject(StatusCode::UNAUTHORIZED);
                return;
            }
        }
        let Ok(stream) = responder.accept() else { return };
        match declared {
            Protocol::Tcp => self.forward_tcp(down, stream).await,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => self.serve_http(down, Prefixed::new(stream)).await,
            Protocol::Unspecified => match sniff(stream).await {
                Ok((true, stream)) => self.serve_http(down, stream).await,
                // Not HTTP (or not yet): TCP, authorized as TCP — never a weaker check.
                Ok((false, stream)) => {
                    if let Err(policy) = down.authorize_tcp() {
                        tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, src.identity = %down.principal, dst = %down.vip, %policy, response_flags = Flag::RbacDenied.as_str(), "tcp connection denied");
                        return;
                    }
                    self.forward_tcp(down, stream).await
                }
                Err(e) => tracing::debug!(error = %e, "connection closed before its protocol was known"),
            },
        }
    }

    /// Plain TCP, already authorized: one endpoint of the service, bytes copied.
    async fn forward_tcp<S>(&self, down: Arc<Downstream>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let endpoint = {
            let state = self.state();
            pick_endpoint(&state.endpoints(&down.service, down.vip.port()))
                .and_then(|(w, port)| Some(SocketAddr::new(*w.addresses.first()?, port)))
        };
        let Some(endpoint) = endpoint else {
            tracing::info!(target: "access", src = %down.source_ip, dst = %down.vip, response_flags = "UH", "tcp connection refused: no healthy endpoint");
            return;
        };
        let start = Instant::now();
        match self.dialer.dial(endpoint).await {
            Ok(mut upstream) => {
                let (t, err) = ambit_shared::copy::copy_bidirectional(&mut stream, &mut upstream).await;
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, src.identity = %down.principal, dst = %down.vip, endpoint = %endpoint, bytes_sent = t.a_to_b, bytes_recv = t.b_to_a, duration = format!("{:.1}ms", start.elapsed().as_secs_f64() * 1e3), error = err.map(|e| e.to_string()), "tcp connection complete");
            }
            Err(e) => {
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, dst = %down.vip, endpoint = %endpoint, response_flags = "UF", error = %e, "tcp connection failed");
            }
        }
    }

    async fn serve_http(self: &Arc<Self>, down: Arc<Downstream>, stream: Prefixed<H2Stream>) {
        let this = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (this, down) = (this.clone(), down.clone());
            async move { Ok::<_, std::convert::Infallible>(this.request(&down, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().max_buf_size(64 * 1024).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
        builder.http2().max_header_list_size(64 * 1024).timer(TokioTimer::new());
        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    }

    /// One request, start to finish, with its telemetry.
    async fn request(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let span = crate::trace::start(req.headers_mut(), self.sampling);
        let span_start = self.tracer.enabled().then(std::time::SystemTime::now);
        let method = req.method().clone();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let protocol = if grpc {
            "grpc"
        } else if req.version() == http::Version::HTTP_2 {
            "http2"
        } else {
            "http"
        };
        let request_bytes =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        let (response, flag, endpoint) = self.handle(down, req).await;
        let destination = match &endpoint {
            Some(w) => Peer::from_workload(w, Some(Arc::from(w.identity.to_string()))),
            None => Peer::unknown(),
        };
        let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
        let completion = Completion {
            metrics: self.metrics.clone(),
            labels: RequestLabels {
                source: down.source.clone(),
                destination,
                service: Some(ServiceLabels::of(&down.service)),
                protocol,
                code: response.status().as_u16(),
                grpc_status,
                flag,
            },
            start,
            request_bytes,
            method,
            path,
            source_ip: down.source_ip,
            principal: down.principal.clone(),
            endpoint: endpoint.map(|w| w.name.clone()),
            span: span_start.map(|t| (span, t, self.tracer.clone())),
        };
        // Recorded when the response body ends (gRPC's status is in its trailers).
        response.map(|inner| Observed { inner, bytes: 0, completion: Some(completion) }.boxed())
    }

    async fn handle(self: &Arc<Self>, down: &Downstream, mut req: Request<Incoming>) -> Handled {
        let port = down.vip.port();
        if let Err(refused) = self.normalize(&mut req) {
            return refused;
        }
        let l7 = down.l7.clone();
        let (request_principal, claims) = if l7.jwt.is_empty() {
            (None, None)
        } else {
            let (mut parts, body) = req.into_parts();
            let verdict = crate::jwt::authenticate(&l7.jwt, &self.keysets, &mut parts).await;
            req = Request::from_parts(parts, body);
            match verdict {
                crate::jwt::Verdict::Anonymous => (None, None),
                crate::jwt::Verdict::Valid { principal, claims } => (Some(principal), Some(claims)),
                crate::jwt::Verdict::Invalid(reason) => {
                    tracing::debug!(%reason, "JWT refused");
                    let text = if reason.contains("issuer is not configured") {
                        "Jwt issuer is not configured"
                    } else {
                        "Jwt verification fails"
                    };
                    return (respond(StatusCode::UNAUTHORIZED, text), Flag::JwtDenied, None);
                }
            }
        };
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        let subject = Subject {
            principal: Some(&down.principal),
            namespace: Some(down.identity.namespace()),
            request_principal: request_principal.as_deref(),
            source_ip: down.source_ip,
            remote_ip: down.source_ip,
            destination_ip: down.vip.ip(),
            host: &host,
            port,
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            claims: claims.as_ref(),
        };
        if let Err(policy) = authorize(&l7.policies, &subject, Layer::Http) {
            tracing::debug!(%policy, "request denied");
            return (respond(StatusCode::FORBIDDEN, "RBAC: access denied"), Flag::RbacDenied, None);
        }
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let routes: Vec<&Route> = l7.routes.iter().filter(|r| r.applies_to(port)).collect();
        let Some(route) = routes.iter().find(|r| r.matches.iter().any(|m| m.matches(&view))).copied() else {
            if routes.is_empty() {
                return self.forward_default(down, req, port).await;
            }
            return (respond(StatusCode::NOT_FOUND, "no route matched"), Flag::NoRoute, None);
        };
        // Filters that answer or rewrite the request.
        let mut response_ops = Vec::new();
        let mut mirrors = Vec::new();
        for f in &route.filters {
            match f {
                Filter::Redirect(r) => return (redirect(r, &req, &host), Flag::None, None),
                Filter::RequestHeaders(ops) => ops.apply(req.headers_mut()),
                Filter::ResponseHeaders(ops) => response_ops.push(ops),
                Filter::Rewrite(r) => rewrite(r, &mut req, route),
                Filter::Mirror { backend, percent } => {
                    if *percent >= 100.0 || fastrand::f64() * 100.0 < *percent {
                        mirrors.push(backend.clone());
                    }
                }
            }
        }
        if let Some(fault) = &route.fault {
            if fault.delay.is_some() && fastrand::f64() * 100.0 < fault.delay_percent {
                if let Some(d) = fault.delay.and_then(|d| Duration::try_from(d).ok()) {
                    tokio::time::sleep(d).await;
                }
            }
            if fault.abort_status != 0 && fastrand::f64() * 100.0 < fault.abort_percent {
                let status = u16::try_from(fault.abort_status).ok().and_then(|s| StatusCode::from_u16(s).ok());
                let mut r = respond(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "fault filter abort");
                for ops in &response_ops {
                    ops.apply(r.headers_mut());
                }
                return (r, Flag::FaultAbort, None);
            }
        }
        let Some(backend) = route.pick_backend() else {
            return (respond(StatusCode::INTERNAL_SERVER_ERROR, "no backend"), Flag::NoRoute, None);
        };
        if let Some(ops) = &backend.request_headers {
            ops.apply(req.headers_mut());
        }
        let buffered = route.retry.is_some() || !mirrors.is_empty();
        let (parts, incoming) = req.into_parts();
        let (body_bytes, streamed) = if buffered {
            match http_body_util::Limited::new(incoming, MAX_BUFFERED_BODY).collect().await {
                Ok(b) => (Some(b.to_bytes()), None),
                Err(_) => {
                    return (
                        respond(StatusCode::PAYLOAD_TOO_LARGE, "request body too large to retry or mirror"),
                        Flag::DownstreamProtocolError,
                        None,
                    )
                }
            }
        } else {
            (None, Some(incoming))
        };
        for m in mirrors {
            if let Some(bytes) = &body_bytes {
                self.mirror(&m, &parts, bytes.clone(), port, down.source_ip);
            }
        }
        let attempt_limit = 1 + route.retry.as_ref().map_or(0, |r| r.attempts);
        let backoff = route
            .retry
            .as_ref()
            .and_then(|r| r.backoff.and_then(|b| Duration::try_from(b).ok()))
            .unwrap_or(Duration::from_millis(25));
        let deadline = route.timeout.map(|t| Instant::now() + t);
        let mut streamed = streamed;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = match (&body_bytes, streamed.take()) {
                (Some(b), _) => crate::proxy::body(b.clone()),
                (None, Some(incoming)) => incoming.map_err(|e| Box::new(e) as BoxError).boxed(),
                (None, None) => crate::proxy::body(Bytes::new()),
            };
            let request = Request::from_parts(parts.clone(), body);
            let per_try = match (route.backend_timeout, deadline) {
                (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
                (Some(t), None) => Some(t),
                (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                (None, None) => None,
            };
            let sent = self.send(backend, request, port, down.source_ip);
            let outcome = match per_try {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r,
                    Err(_) => Err((
                        respond(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                        Flag::UpstreamTimeout,
                        None,
                    )),
                },
                None => sent.await,
            };
            let retryable = match (&outcome, &route.retry) {
                (Ok((r, _)), Some(retry)) => retry.codes.contains(&u32::from(r.status().as_u16())),
                (Err((_, Flag::UpstreamFailure, _)), Some(retry)) => retry.connect_failure,
                _ => false,
            };
            let out_of_time = deadline.is_some_and(|d| Instant::now() + backoff >= d);
            if retryable && attempt < attempt_limit && !out_of_time && body_bytes.is_some() {
                tokio::time::sleep(backoff).await;
                continue;
            }
            let (mut response, flag, endpoint) = match outcome {
                Ok((r, w)) => (r, Flag::None, Some(w)),
                Err((r, flag, w)) => (r, flag, w),
            };
            for ops in &response_ops {
                ops.apply(response.headers_mut());
            }
            return (response, flag, endpoint);
        }
    }

    /// Without routes: the addressed service at the request's port.
    async fn forward_default(&self, down: &Downstream, req: Request<Incoming>, port: u16) -> Handled {
        let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
        match self.dispatch(down.service.clone(), port, req, down.source_ip).await {
            Ok((r, w)) => (r, Flag::None, Some(w)),
            Err(failed) => failed,
        }
    }

    /// The request as Istio would see it: a lower-case method or a path that cannot be
    /// normalized is answered 400; otherwise the normalized path replaces the client's, so
    /// authorization, route matching and the upstream all see the same one.
    #[allow(clippy::result_large_err)]
    fn normalize(&self, req: &mut Request<Incoming>) -> Result<(), Handled> {
        let bad = |text| Err((respond(StatusCode::BAD_REQUEST, text), Flag::DownstreamProtocolError, None));
        if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return bad("method must be upper case");
        }
        // A tunnel inside the tunnel would carry bytes no rule looked at.
        if req.method() == Method::CONNECT {
            return bad("CONNECT is not served here");
        }
        // One readable Host: rules and the upstream must not each pick their own.
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        if let (Some(first), second) = (hosts.next(), hosts.next()) {
            if second.is_some() || !first.to_str().is_ok_and(valid_host) {
                return bad("one valid Host header is required");
            }
        }
        if !req.uri().authority().is_none_or(|a| valid_host(a.as_str())) {
            return bad("invalid request authority");
        }
        // Origin or absolute form only: an authority-form target has no path to authorize.
        let Some(path) = req.uri().path_and_query() else { return bad("request target has no path") };
        let normalized = match normalize(path.as_str(), self.normalization) {
            Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
            Ok(std::borrow::Cow::Owned(p)) => p,
            Err(e) => {
                tracing::debug!(path = %path, error = %e, "request path refused");
                return bad("invalid request path");
            }
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = match normalized.parse() {
            Ok(p) => Some(p),
            Err(_) => return bad("invalid request path"),
        };
        match Uri::from_parts(parts) {
            Ok(uri) => {
                *req.uri_mut() = uri;
                Ok(())
            }
            Err(_) => bad("invalid request path"),
        }
    }

    /// One attempt to a backend service.
    async fn send(&self, backend: &BackendRef, req: Request<Body>, port: u16, source_ip: IpAddr) -> Attempt {
        let port = if backend.port == 0 { port } else { backend.port };
        let service = self.state().service(&backend.service_key).cloned();
        let Some(service) = service else {
            return Err((
                respond(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                Flag::NoHealthyUpstream,
                None,
            ));
        };
        self.dispatch(service, port, req, source_ip).await
    }

    /// A request to a service: its pool limits, an endpoint by its load-balancing policy, the
    /// outcome fed to outlier detection.
    async fn dispatch(&self, service: Arc<Service>, port: u16, req: Request<Body>, source_ip: IpAddr) -> Attempt {
        let l7 = match self.l7.read().unwrap_or_else(|p| p.into_inner()).get(&*service.key) {
            Some(L7Entry::Ready(l7)) => Some(l7.clone()),
            _ => None,
        };
        let policy = l7.as_ref().and_then(|l| l.backend.as_ref());
        let backend = self.backends.get(&service.key);
        let Some(_admission) = backend.admit(policy) else {
            return Err((
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                ),
                Flag::Overflow,
                None,
            ));
        };
        let endpoints = self.state().endpoints(&service, port);
        let count = endpoints.len();
        let input = HashInput { headers: req.headers(), source_ip };
        let Some((w, target)) = backend.choose(endpoints, policy, &input) else {
            return Err((
                respond(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                Flag::NoHealthyUpstream,
                None,
            ));
        };
        backend.started(&w);
        let fresh = policy.is_some_and(|p| p.max_requests_per_connection == 1);
        let result = self.send_to(&w, target, req, fresh).await;
        let outcome = match &result {
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(_) => Outcome::Failure,
        };
        backend.finished(&w, outcome, policy, count);
        match result {
            Ok(r) => Ok((r, w)),
            Err((r, flag)) => Err((r, flag, Some(w))),
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
    ) -> Result<Response<Body>, (Response<Body>, Flag)> {
        let Some(ip) = w.addresses.first() else {
            return Err((
                respond(StatusCode::SERVICE_UNAVAILABLE, "endpoint without address"),
                Flag::NoHealthyUpstream,
            ));
        };
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = SocketAddr::new(*ip, port);
        parts.uri = match format!("http://{authority}{path}").parse() {
            Ok(u) => u,
            Err(_) => {
                return Err((respond(StatusCode::BAD_REQUEST, "bad request path"), Flag::DownstreamProtocolError))
            }
        };
        let h2 = parts.version == http::Version::HTTP_2;
        parts.version = if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        let client = match (h2, fresh) {
            (true, false) => &self.h2,
            (false, false) => &self.h1,
            (true, true) => &self.h2_fresh,
            (false, true) => &self.h1_fresh,
        };
        let result = client.request(req).await;
        match result {
            Ok(r) => Ok(r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
            Err(e) => {
                tracing::debug!(endpoint = %authority, error = %e, "upstream request failed");
                Err((
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers",
                    ),
                    Flag::UpstreamFailure,
                ))
            }
        }
    }

    /// A copy to the mirror backend, answered into the void.
    fn mirror(
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
            if let Err((r, flag, _)) = this.send(&backend, req, port, source_ip).await {
                tracing::debug!(status = r.status().as_u16(), flag = flag.as_str(), "mirror request failed");
            }
        });
    }
}

/// What is recorded for a request once its response has been sent.
struct Completion {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    request_bytes: u64,
    method: http::Method,
    path: String,
    source_ip: IpAddr,
    principal: Arc<str>,
    endpoint: Option<Arc<str>>,
    /// The waypoint's span, when spans are exported.
    span: Option<(crate::trace::SpanContext, std::time::SystemTime, crate::trace::Exporter)>,
}

impl Completion {
    fn finish(self, response_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        if let Some((ctx, started, exporter)) = &self.span {
            let l = &self.labels;
            exporter.record(crate::trace::Span {
                ctx: *ctx,
                name: format!("{} {}", self.method, l.service.as_ref().map_or("unknown", |s| &*s.hostname)),
                start: *started,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("http.method", self.method.to_string()),
                    ("http.url", self.path.clone()),
                    ("http.status_code", l.code.to_string()),
                    ("upstream_cluster", self.endpoint.as_deref().unwrap_or("-").to_owned()),
                    ("response_flags", l.flag.as_str().to_owned()),
                    ("peer.principal", self.principal.to_string()),
                ],
                error: l.code >= 500,
            });
        }
        self.metrics.record(&self.labels, ms, self.request_bytes, response_bytes);
        let l = &self.labels;
        tracing::info!(
            target: "access",
            protocol = l.protocol,
            src.addr = %self.source_ip,
            src.identity = %self.principal,
            dst.service = l.service.as_ref().map(|s| &*s.hostname),
            dst.workload = self.endpoint.as_deref(),
            method = %self.method,
            path = %self.path,
            status = l.code,
            grpc_status = l.grpc_status,
            response_flags = l.flag.as_str(),
            bytes_sent = self.request_bytes,
            bytes_recv = response_bytes,
            duration = format!("{ms:.1}ms"),
            "request complete"
        );
    }
}

/// The response body on its way to the client: counts bytes, reads `grpc-status` from the
/// trailers, and records the request when it ends (or is dropped, for a client gone early).
struct Observed {
    inner: Body,
    bytes: u64,
    completion: Option<Completion>,
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let status = trailers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
                    if let (Some(c), Some(status)) = (this.completion.as_mut(), status) {
                        c.labels.grpc_status = Some(status);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(c) = this.completion.take() {
                    c.finish(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish(self.bytes);
        }
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

fn redirect(r: &ambit_shared::proto::waypoint::Redirect, req: &Request<Incoming>, host: &str) -> Response<Body> {
    let scheme = if r.scheme.is_empty() { "http" } else { r.scheme.as_str() };
    let hostname = if r.hostname.is_empty() { host.split(':').next().unwrap_or(host) } else { r.hostname.as_str() };
    let path = if !r.path_full.is_empty() { r.path_full.clone() } else { req.uri().path().to_owned() };
    let port = match r.port {
        0 => String::new(),
        p => format!(":{p}"),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = format!("{scheme}://{hostname}{port}{path}{query}");
    let mut resp = Response::new(body(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(u16::try_from(r.status_code).unwrap_or(302)).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn rewrite(r: &ambit_shared::proto::waypoint::Rewrite, req: &mut Request<Incoming>, route: &Route) {
    if !r.hostname.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&r.hostname) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let path = req.uri().path();
    let new_path = if !r.path_full.is_empty() {
        Some(r.path_full.clone())
    } else if !r.path_prefix.is_empty() {
        // Replace the matched prefix (the route's first prefix match that holds).
        route.matches.iter().find_map(|m| match &m.path {
            crate::l7::PathMatch::Prefix(p) | crate::l7::PathMatch::StringPrefix(p) if m.path.matches(path) => {
                let matched =
                    if matches!(m.path, crate::l7::PathMatch::Prefix(_)) { p.trim_end_matches('/') } else { p };
                let rest = &path[matched.len()..];
                let base = r.path_prefix.trim_end_matches('/');
                Some(if rest.is_empty() {
                    if base.is_empty() {
                        "/".to_owned()
                    } else {
                        base.to_owned()
                    }
                } else {
                    format!("{base}{rest}")
                })
            }
            _ => None,
        })
    } else {
        None
    };
    if let Some(p) = new_path {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(uri) = format!("{p}{query}").parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}

/// The HBONE server's handler.
pub struct Inbound(pub Arc<Waypoint>);

impl Handler for Inbound {
    async fn handle(&self, req: InboundConnect, responder: Responder) {
        self.0.clone().serve(req, responder).await
    }
}

/// A stream with bytes already read in front of it (what sniffing consumed).
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S) -> Self {
        Prefixed { prefix: Bytes::new(), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const METHODS: &[&[u8]] =
    &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"TRACE ", b"CONNECT "];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Reads the first bytes: `true` when they start an HTTP request (HTTP/1 request line or the
/// HTTP/2 preface). Silence past the timeout (a server-first protocol) means TCP.
pub async fn sniff<S: AsyncRead + Unpin>(mut inner: S) -> std::io::Result<(bool, Prefixed<S>)> {
    let mut buf = vec![0u8; 16];
    let mut have = 0;
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let http = loop {
        let candidates = METHODS.iter().copied().chain([H2_PREFACE]);
        let possible: Vec<&[u8]> = candidates
            .filter(|m| {
                let n = have.min(m.len());
                m[..n] == buf[..n]
            })
            .collect();
        if possible.is_empty() {
            break false;
        }
        if possible.iter().any(|m| have >= m.len()) {
            break true;
        }
        match tokio::time::timeout_at(deadline, inner.read(&mut buf[have..])).await {
            Ok(Ok(0)) => break false,
            Ok(Ok(n)) => have += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => break false,
        }
    };
    buf.truncate(have);
    Ok((http, Prefixed { prefix: Bytes::from(buf), inner }))
}

/// A Host (or `:authority`) a rule can read one way only: `name[:port]` or `[ipv6][:port]`,
/// the port empty or 1–65535, no userinfo, a name of RFC 3986 reg-name characters only.
fn valid_host(host: &str) -> bool {
    let port_ok = |rest: &str| match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some("") => true,
        Some(p) => p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0),
    };
    if host.contains('@') {
        return false;
    }
    match host.strip_prefix('[') {
        Some(rest) => {
            rest.split_once(']').is_some_and(|(ip, rest)| ip.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(rest))
        }
        None => {
            let (name, rest) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            // RFC 3986 reg-name characters only: no whitespace a backend might trim away.
            let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
            !name.is_empty() && name.bytes().all(reg_name) && port_ok(rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts_are_read_one_way_only() {
        for ok in
            ["reviews", "reviews:8080", "reviews.shop.svc.cluster.local:", "[fd00::1]", "[fd00::1]:8080", "10.0.0.1:80"]
        {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "api.example:@internal.example",
            "a@b",
            "x:99999",
            "x:0",
            "x:8o",
            "x:80:90",
            "[fd00::1]junk",
            "[nope]:80",
            ":80",
            "",
            "admin.example\t",
            "admin example",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
