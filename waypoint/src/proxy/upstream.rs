//! Upstream: the dialer the HTTP clients' pools use (HBONE as the waypoint's identity, plain
//! TCP only to workloads the state says are outside the mesh) and the dispatch of one attempt
//! — the backend service's pool limits, an endpoint by its load-balancing policy, the request
//! sent, the outcome fed to outlier detection. It does not decide routes, retries or filters
//! (see [`super::pipeline`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use ambit_shared::hbone::client::{Client as HboneClient, ConnectRequest};
use ambit_shared::hbone::{H2Stream, HBONE_PORT};
use ambit_shared::Identity;
use ambit_ztunnel::identity::CertManager;
use ambit_ztunnel::state::{Service, State, Workload};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{body, respond, Attempt, Body, BoxError, L7Entry, Waypoint};
use crate::balance::{HashInput, Outcome};
use crate::l7::BackendRef;
use crate::metrics::Flag;

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

impl Waypoint {
    /// One attempt to a backend service.
    pub(super) async fn send(&self, backend: &BackendRef, req: Request<Body>, port: u16, source_ip: IpAddr) -> Attempt {
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
    pub(super) async fn dispatch(
        &self,
        service: Arc<Service>,
        port: u16,
        req: Request<Body>,
        source_ip: IpAddr,
    ) -> Attempt {
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
            if let Err((r, flag, _)) = this.send(&backend, req, port, source_ip).await {
                tracing::debug!(status = r.status().as_u16(), flag = flag.as_str(), "mirror request failed");
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
