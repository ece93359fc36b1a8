//! The HBONE handler: CONNECT admission (a service bound to this waypoint, on a declared port,
//! with its L7 configuration in hand), TCP authorization before the tunnel opens, protocol
//! sniffing on undeclared ports, and the hand-off to the HTTP pipeline or to a TCP copy. It
//! does not handle requests (see [`super::pipeline`]) nor dial (see [`super::upstream`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ambit_dataplane::labels::Peer;
use ambit_dataplane::state::{pick_endpoint, Destination, Service};
use ambit_shared::hbone::server::{Handler, InboundConnect, Responder};
use ambit_shared::proto::waypoint::Protocol;
use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::downstream::Downstream;
use super::upstream::Endpoint;
use super::Waypoint;
use crate::l7::L7Entry;
use crate::l7::ServiceL7;
use crate::metrics::Flag;

/// How long a connection on an undeclared port may stay silent before it is treated as TCP.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

/// What a CONNECT is for.
struct Target {
    /// The service addressed, or (for a workload) the waypoint's own.
    service: Arc<Service>,
    l7: Arc<ServiceL7>,
    /// A workload addressed directly: requests go to it, not to a service's endpoints.
    workload: Option<Arc<ambit_dataplane::state::Workload>>,
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
            Refusal::NoConfig | Refusal::Rejected(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl Waypoint {
    /// What a CONNECT to `authority` is for: a service bound to this waypoint, with its L7
    /// configuration; or a workload this waypoint serves (`istio.io/waypoint-for: workload|all`),
    /// with the waypoint's own configuration (the policies targeting its Gateway). Only looks
    /// things up.
    fn target(&self, network: &str, authority: SocketAddr) -> Result<Target, Refusal> {
        let (service, workload) = {
            let state = self.state();
            match state.destination(network, authority) {
                Destination::Service { service, port } if self.me.is(&state, network, service.waypoint.as_ref()) => {
                    if !service.ports.iter().any(|p| p.service_port == u32::from(port)) {
                        return Err(Refusal::UndeclaredPort(port));
                    }
                    (service, None)
                }
                Destination::Workload(w) if self.me.is(&state, network, w.waypoint.as_ref()) => {
                    // The waypoint's own Service carries its configuration for workloads.
                    // The Kubernetes Service deployed for it (`<gateway>.<ns>.svc.…`), never a
                    // ServiceEntry that happens to share its name.
                    let prefix = format!("{}.{}.svc.", self.me.gateway, self.me.namespace);
                    let own = state
                        .services()
                        .find(|s| {
                            *s.namespace == *self.me.namespace
                                && *s.name == *self.me.gateway
                                && s.hostname.starts_with(&prefix)
                        })
                        .cloned()
                        .ok_or(Refusal::NoConfig)?;
                    (own, Some(w))
                }
                Destination::Service { .. } | Destination::Workload(_) => return Err(Refusal::NotBound),
                Destination::Passthrough => return Err(Refusal::Unknown),
            }
        };
        let map = self.l7.read().unwrap_or_else(|p| p.into_inner());
        match map.get(&*service.key) {
            Some(L7Entry::Ready(l7)) => Ok(Target { service, l7: l7.clone(), workload }),
            Some(L7Entry::Rejected(reason)) => Err(Refusal::Rejected(reason.clone())),
            None => Err(Refusal::NoConfig),
        }
    }

    async fn serve(self: Arc<Self>, req: InboundConnect, responder: Responder) {
        let network = self.network.clone();
        let Target { service, l7, workload } = match self.target(&network, req.authority) {
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
            identity: Some(req.peer_identity.clone()),
            source,
            source_ip,
            vip: req.authority,
            service,
            l7,
            ingress: None,
            workload,
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
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                self.serve_http(down, Prefixed::new(stream), None).await
            }
            Protocol::Unspecified => match sniff(stream).await {
                Ok((true, stream)) => self.serve_http(down, stream, None).await,
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

    /// Plain TCP, already authorized: one endpoint of the addressed service, bytes copied.
    async fn forward_tcp<S>(&self, down: Arc<Downstream>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The host's DestinationRule asks for TLS to this port, which is originated for HTTP
        // only: refused rather than sent in plaintext.
        if down.l7.backend.as_ref().is_some_and(|b| crate::l7::port_policy(b, down.vip.port()).tls.is_some()) {
            tracing::info!(target: "access", src = %down.source_ip, dst = %down.vip, response_flags = "UF", "tcp connection refused: TLS origination is for HTTP; this port carries TCP");
            return;
        }
        let (service, port) = (down.service.clone(), down.vip.port());
        let copy = async {
            match down.workload.clone() {
                Some(w) => self.forward_tcp_to_workload(&down, &w, port, stream).await,
                None => self.forward_tcp_to(&down, &service, port, stream).await,
            }
        };
        // Open while the service's policies (as they are now) still allow it; dropping the
        // copy closes both ends.
        tokio::select! {
            () = copy => {}
            () = self.tcp_revoked(&down) => {
                tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, src.identity = %down.principal, dst = %down.vip, response_flags = Flag::RbacDenied.as_str(), "tcp connection closed: the policies changed while it was open and now deny it");
            }
        }
    }

    /// Resolves once the open TCP stream `down` would no longer be admitted — no longer bound
    /// to this waypoint, its configuration withdrawn, or its policies now denying it; checked at
    /// every xDS update.
    async fn tcp_revoked(&self, down: &Downstream) {
        let mut changes = self.changes.clone();
        loop {
            changes.mark_unchanged();
            // Admitted again as a new stream would be: still bound to this waypoint, to the
            // same service (or workload), and allowed by its policies as they are now.
            match self.target(&self.network, down.vip) {
                Ok(now)
                    if now.service.key == down.service.key
                        && now.workload.as_ref().map(|w| &w.uid) == down.workload.as_ref().map(|w| &w.uid) =>
                {
                    if down.authorize_tcp_with(&now.l7).is_err() {
                        return;
                    }
                }
                _ => return,
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Plain TCP to the workload a CONNECT addressed (a waypoint serving workloads).
    async fn forward_tcp_to_workload<S>(
        &self,
        down: &Downstream,
        w: &ambit_dataplane::state::Workload,
        port: u16,
        mut stream: S,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(endpoint) = Endpoint::of(w, port).filter(|_| w.hbone) else {
            tracing::info!(target: "access", src = %down.source_ip, dst = %down.vip, response_flags = "UH", "tcp connection refused: the workload is not reachable over HBONE");
            return;
        };
        match self.upstream.dialer().dial(&endpoint).await {
            Ok(mut upstream) => {
                let (t, err) = ambit_shared::copy::copy_bidirectional(&mut stream, &mut upstream).await;
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, src.identity = %down.principal, dst = %down.vip, dst.workload = %w.name, bytes_sent = t.a_to_b, bytes_recv = t.b_to_a, error = err.map(|e| e.to_string()), "tcp connection complete");
            }
            Err(e) => {
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, dst = %down.vip, response_flags = "UF", error = %e, "tcp connection failed");
            }
        }
    }

    /// Plain TCP, already authorized: one endpoint of `service` at `port`, bytes copied.
    pub(super) async fn forward_tcp_to<S>(&self, down: &Downstream, service: &Service, port: u16, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let chosen = {
            let state = self.state();
            let mut endpoints = state.endpoints_on(service, port, &self.network);
            endpoints.retain(|(w, _)| !w.addresses.is_empty() || w.resolvable());
            pick_endpoint(&self.upstream.closest(&state, service, endpoints))
        };
        let endpoint = match chosen {
            Some((w, port)) => match (Endpoint::of(&w, port), w.hostname.as_deref()) {
                (Some(endpoint), _) if !w.hbone && !self.upstream.may_dial(endpoint.addr.ip(), &service.key) => {
                    Err("UH")
                }
                (Some(endpoint), _) => Ok(endpoint),
                (None, Some(host)) => self.upstream.resolved(host, port, &service.key).await.map_err(|_| "DF"),
                (None, None) => Err("UH"),
            },
            None => Err("UH"),
        };
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(flag) => {
                tracing::info!(target: "access", src = %down.source_ip, dst = %down.vip, dst.service = %service.hostname, response_flags = flag, "tcp connection refused: no usable endpoint");
                return;
            }
        };
        let start = Instant::now();
        match self.upstream.dialer().dial(&endpoint).await {
            Ok(mut upstream) => {
                let (t, err) = ambit_shared::copy::copy_bidirectional(&mut stream, &mut upstream).await;
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, src.identity = %down.principal, dst = %down.vip, dst.service = %service.hostname, endpoint = %endpoint.addr, bytes_sent = t.a_to_b, bytes_recv = t.b_to_a, duration = format!("{:.1}ms", start.elapsed().as_secs_f64() * 1e3), error = err.map(|e| e.to_string()), "tcp connection complete");
            }
            Err(e) => {
                tracing::info!(target: "access", protocol = "tcp", src = %down.source_ip, dst = %down.vip, dst.service = %service.hostname, endpoint = %endpoint.addr, response_flags = "UF", error = %e, "tcp connection failed");
            }
        }
    }

    /// HTTP/1.1 and HTTP/2 (by its preface) on one stream, each request through the pipeline.
    /// `forwarded`: at an ingress gateway, the scheme the client used — the client's address
    /// and scheme are then written into `x-forwarded-for` / `x-forwarded-proto` for the
    /// backend (replacing what the client wrote).
    pub(super) async fn serve_http<S>(
        self: &Arc<Self>,
        down: Arc<Downstream>,
        stream: S,
        forwarded: Option<&'static str>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let (this, down) = (this.clone(), down.clone());
            if let Some(scheme) = forwarded {
                let headers = req.headers_mut();
                if let Ok(ip) = http::HeaderValue::from_str(&down.source_ip.to_string()) {
                    headers.insert("x-forwarded-for", ip);
                }
                headers.insert("x-forwarded-proto", http::HeaderValue::from_static(scheme));
            }
            async move { Ok::<_, std::convert::Infallible>(this.request(&down, req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().max_buf_size(64 * 1024).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
        builder.http2().max_header_list_size(64 * 1024).timer(TokioTimer::new());
        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
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

    /// `prefix` is read first, then `inner`.
    pub fn with_prefix(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
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
