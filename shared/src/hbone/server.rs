//! HBONE server: accepts mutual-TLS HTTP/2 connections and hands each CONNECT to a handler,
//! which looks at the request (destination, verified peer identity, headers) and either
//! accepts it — getting the tunnel's byte stream — or rejects it with a status.
//!
//! Malformed requests (not CONNECT, an authority that is not `ip:port`) get 400 here and never
//! reach the handler. A bad connection affects only itself.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::read_ahead::ReadAhead;
use super::{
    keepalive, tune_socket, H2Stream, HboneError, CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, SEND_BUFFER,
    SERVER_MAX_CONCURRENT_STREAMS, STREAM_WINDOW,
};
use crate::admission::{Admission, ConnectionLimits};
use crate::identity::Identity;
use crate::tls::{peer_identity_of, HandshakeFailure};

/// One CONNECT, as the handler sees it.
#[derive(Debug, Clone)]
pub struct InboundConnect {
    /// The `:authority`: where the client wants to go.
    pub authority: SocketAddr,
    /// The client's verified identity (from its certificate).
    pub peer_identity: Identity,
    /// The TCP peer (a ztunnel or waypoint, not necessarily the original client).
    pub peer_addr: SocketAddr,
    /// The address the connection arrived on.
    pub local_addr: SocketAddr,
    pub headers: HeaderMap,
}

/// Answers one CONNECT: exactly one of `accept` or `reject` (dropping it sends 503).
pub struct Responder {
    respond: Option<SendResponse<Bytes>>,
    body: Option<RecvStream>,
}

impl Responder {
    /// Sends 200 and returns the tunnel's byte stream.
    pub fn accept(self) -> Result<H2Stream, HboneError> {
        self.accept_with(HeaderMap::new())
    }

    /// Sends 200 with extra response headers (e.g. `baggage`).
    pub fn accept_with(mut self, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        let (Some(mut respond), Some(body)) = (self.respond.take(), self.body.take()) else {
            return Err(HboneError::Rejected(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = respond.send_response(response, false)?;
        Ok(H2Stream::new(send, body, None))
    }

    /// Refuses with `status` (401 policy denial, 503 unreachable, 400 bad request).
    pub fn reject(mut self, status: StatusCode) {
        if let Some(respond) = self.respond.as_mut() {
            send_status(respond, status);
        }
        self.respond = None;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.as_mut() {
            send_status(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

fn send_status(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Err(e) = respond.send_response(response, true) {
        tracing::debug!(error = %e, "could not send HBONE status {status}");
    }
}

/// Decides what to do with each CONNECT. Implemented by ztunnel's inbound path and the waypoint.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: InboundConnect, responder: Responder) -> impl Future<Output = ()> + Send;
}

/// Chooses the server certificate for a connection by the address it arrived on (ztunnel
/// serves many pods, each with its own identity). `None` refuses the connection.
pub trait CertResolver: Send + Sync + 'static {
    fn config_for(&self, local_addr: SocketAddr) -> Option<Arc<ServerConfig>>;
}

impl CertResolver for Arc<ServerConfig> {
    fn config_for(&self, _: SocketAddr) -> Option<Arc<ServerConfig>> {
        Some(self.clone())
    }
}

/// What a 15008 listener (or several sharing one [`Budget`]) takes on at once, so a flood of
/// connections or streams from one peer, or from all, costs bounded memory and tasks while
/// other clients are still served. Streams per connection are bounded by the HTTP/2 setting
/// [`SERVER_MAX_CONCURRENT_STREAMS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, serde::Serialize)]
pub struct Limits {
    /// Open HBONE connections in all; more are closed at accept.
    #[arg(long = "hbone-max-connections", env = "HBONE_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// Open HBONE connections from one peer address; more are closed at accept.
    #[arg(long = "hbone-max-connections-per-peer", env = "HBONE_MAX_CONNECTIONS_PER_PEER", default_value_t = 1_024)]
    pub max_connections_per_peer: usize,
    /// CONNECT streams being handled or carrying bytes, in all; more are answered 503.
    #[arg(long = "hbone-max-streams", env = "HBONE_MAX_STREAMS", default_value_t = 65_536)]
    pub max_streams: usize,
    /// CONNECT streams from one peer address (a quarter of the total by default, so one peer
    /// holding idle tunnels cannot take every stream); more are answered 503.
    #[arg(long = "hbone-max-streams-per-peer", env = "HBONE_MAX_STREAMS_PER_PEER", default_value_t = 16_384)]
    pub max_streams_per_peer: usize,
    /// Bytes read from an HBONE socket per syscall beneath TLS once data streams (0: off, at
    /// most 1 MiB); also used by the proxy's outgoing HBONE pools. See `read_ahead`.
    #[arg(
        long = "hbone-read-ahead",
        env = "HBONE_READ_AHEAD",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(super::read_ahead::MAX_READ_AHEAD))
    )]
    pub read_ahead: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            max_connections_per_peer: 1_024,
            max_streams: 65_536,
            max_streams_per_peer: 16_384,
            read_ahead: 0,
        }
    }
}

/// The counters behind [`Limits`], shared by every server given the same budget.
#[derive(Debug)]
pub struct Budget {
    connections: Arc<Admission>,
    streams: Arc<Admission>,
    /// Read-ahead beneath TLS for accepted connections ([`Limits::read_ahead`]).
    read_ahead: usize,
}

impl Budget {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Budget {
            connections: Admission::new(ConnectionLimits {
                total: limits.max_connections,
                per_peer: limits.max_connections_per_peer,
            }),
            streams: Admission::new(ConnectionLimits {
                total: limits.max_streams,
                per_peer: limits.max_streams_per_peer,
            }),
            read_ahead: limits.read_ahead as usize,
        })
    }

    /// Open connections: in all, and from `peer`.
    pub fn connections(&self, peer: IpAddr) -> (usize, usize) {
        self.connections.open(peer)
    }

    /// Streams in flight: in all, and from `peer`.
    pub fn streams(&self, peer: IpAddr) -> (usize, usize) {
        self.streams.open(peer)
    }
}

/// The HBONE acceptor.
pub struct Server<H, C> {
    handler: Arc<H>,
    certs: Arc<C>,
    budget: Arc<Budget>,
}

impl<H, C> Clone for Server<H, C> {
    fn clone(&self) -> Self {
        Server { handler: self.handler.clone(), certs: self.certs.clone(), budget: self.budget.clone() }
    }
}

impl<H: Handler, C: CertResolver> Server<H, C> {
    /// A server with the default [`Limits`] of its own.
    pub fn new(handler: Arc<H>, certs: Arc<C>) -> Self {
        Self::with_budget(handler, certs, Budget::new(Limits::default()))
    }

    /// A server counting against `budget` (shared by a daemon's listeners).
    pub fn with_budget(handler: Arc<H>, certs: Arc<C>, budget: Arc<Budget>) -> Self {
        Server { handler, certs, budget }
    }

    /// Accepts connections forever; each runs on its own task. Dropping (aborting) this future
    /// closes every connection it accepted, with their streams.
    pub async fn serve(self, listener: TcpListener) {
        self.serve_until(listener, std::future::pending()).await;
    }

    /// Accepts until `stop` completes, then closes the listener and waits for the connections
    /// already accepted to end (a drain). Dropping the future instead closes them at once.
    pub async fn serve_until(self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => accepted,
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE, ECONNABORTED…: transient; keep serving.
                    tracing::warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.budget.connections.admit(peer.ip()) else {
                tracing::warn!(%peer, "HBONE connection refused: connection limit reached");
                continue;
            };
            let server = self.clone();
            connections.spawn(async move {
                let _slot = slot;
                if let Err(e) = server.serve_connection(tcp).await {
                    tracing::debug!(%peer, error = %e, "HBONE connection failed");
                }
            });
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    /// Runs one connection: TLS, HTTP/2, then a task per CONNECT stream.
    pub async fn serve_connection(&self, tcp: TcpStream) -> Result<(), HboneError> {
        let peer_addr = tcp.peer_addr().map_err(|source| HboneError::Connect { addr: unspecified(), source })?;
        let local_addr = tcp.local_addr().map_err(|source| HboneError::Connect { addr: peer_addr, source })?;
        tune_socket(&tcp).map_err(|source| HboneError::Connect { addr: peer_addr, source })?;
        let config = self.certs.config_for(local_addr).ok_or(HboneError::Rejected(StatusCode::SERVICE_UNAVAILABLE))?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(config).accept(ReadAhead::new(tcp, self.budget.read_ahead)),
        )
        .await
        .map_err(|_| HboneError::ConnectTimeout(peer_addr))?
        .map_err(|e| HboneError::Tls { addr: peer_addr, failure: HandshakeFailure::from_io(&e) })?;
        let peer_identity = peer_identity_of(tls.get_ref().1).ok_or(HboneError::Tls {
            addr: peer_addr,
            failure: HandshakeFailure::Other("verified peer has no identity".into()),
        })?;
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(64 * 1024)
            .handshake::<_, Bytes>(tls);
        let mut connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HboneError::ConnectTimeout(peer_addr))??;
        let ping = connection.ping_pong();
        let accept_loop = async {
            while let Some(next) = connection.accept().await {
                let (request, mut respond) = next?;
                // A stream's permit lives as long as its task (handling, then carrying bytes).
                let Some(permit) = self.budget.streams.admit(peer_addr.ip()) else {
                    tracing::warn!(%peer_addr, "HBONE stream refused: stream limit reached");
                    send_status(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
                    continue;
                };
                let handler = self.handler.clone();
                let peer_identity = peer_identity.clone();
                tokio::spawn(async move {
                    dispatch(&*handler, request, respond, peer_identity, peer_addr, local_addr).await;
                    drop(permit);
                });
            }
            Ok::<(), HboneError>(())
        };
        tokio::select! {
            res = accept_loop => res,
            () = async { match ping { Some(p) => keepalive(p).await, None => std::future::pending().await } } => Ok(()),
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Validates one request and passes it on; malformed ones are answered 400 here.
async fn dispatch<H: Handler>(
    handler: &H,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer_identity: Identity,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
) {
    let authority = match parse_connect(&request) {
        Ok(a) => a,
        Err(reason) => {
            tracing::debug!(%peer_addr, %reason, "malformed HBONE request");
            send_status(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let (parts, body) = request.into_parts();
    let req = InboundConnect { authority, peer_identity, peer_addr, local_addr, headers: parts.headers };
    handler.handle(req, Responder { respond: Some(respond), body: Some(body) }).await;
}

/// The destination of a well-formed HBONE request, or why it is not one.
pub fn parse_connect<B>(request: &Request<B>) -> Result<SocketAddr, &'static str> {
    if request.method() != Method::CONNECT {
        return Err("method is not CONNECT");
    }
    let authority = request.uri().authority().ok_or("no :authority")?;
    authority.as_str().parse().map_err(|_| ":authority is not ip:port")
}
