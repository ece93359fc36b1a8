//! gRPC over mesh TLS for tonic, both ends: a connector that dials with our rustls client
//! configuration (identity-pinned, not DNS-name based), and an incoming-connection stream that
//! terminates TLS for a tonic server and exposes the peer's address and identity.
//!
//! Used by the xDS client, the CA client and the controller's server. Owns transport only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::admission::{Admission, ConnectionLimits, Slot};
use crate::identity::Identity;
use crate::tls::{peer_identity_of, HandshakeFailure};

/// How long a control-plane TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Dials `addr` and runs TLS with `config`, for tonic's `connect_with_connector`.
#[derive(Clone)]
pub struct TlsDialer {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for TlsDialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
            tcp.set_nodelay(true)?;
            let handshake = TlsConnector::from(config).connect(ServerName::IpAddress(addr.ip().into()), tcp);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("TLS to {addr}")))?
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("TLS to {addr}: {}", HandshakeFailure::from_io(&e)),
                    )
                })?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily connecting gRPC channel to `addr` over mesh TLS.
pub fn channel(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Channel {
    // The URI only names the authority for HTTP/2; the dialer decides where to connect.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://control-plane"));
    // Keepalive pings notice a control plane that vanished without a FIN on an idle stream.
    endpoint
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(TlsDialer { addr, config })
}

/// The `authorization: Bearer <token>` value callers of the control plane send; `None` when the
/// token cannot be a header value.
pub fn bearer(token: &str) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {token}").parse().ok()
}

/// Why a control-plane address could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {0}: {1}")]
    Lookup(String, io::Error),
    #[error("{0} resolves to nothing")]
    Nothing(String),
}

/// Resolves a control-plane `host:port` (an IP or a name such as
/// `ambit-controller.ambit-system.svc:15012`) to the address to dial.
pub async fn resolve(address: &str) -> Result<SocketAddr, ResolveError> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| ResolveError::Lookup(address.to_owned(), e))?
        .next()
        .ok_or_else(|| ResolveError::Nothing(address.to_owned()))
}

/// The bearer token a daemon presents to the control plane: fixed, or a file read again at each
/// use — Kubernetes rotates projected service-account tokens in place, and a daemon that kept
/// the first one would be refused once it expires.
#[derive(Debug, Clone)]
pub enum Token {
    Fixed(Arc<str>),
    File(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the token file {0} is empty")]
    Empty(String),
    #[error("the bearer token is not a valid header value")]
    Invalid,
}

impl From<&str> for Token {
    fn from(s: &str) -> Self {
        Token::Fixed(Arc::from(s))
    }
}

impl From<String> for Token {
    fn from(s: String) -> Self {
        Token::Fixed(Arc::from(s))
    }
}

impl Token {
    /// The token as it is now (a file's content, trimmed).
    pub fn read(&self) -> Result<String, TokenError> {
        match self {
            Token::Fixed(t) => Ok(t.to_string()),
            Token::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| TokenError::Read { path: path.display().to_string(), source })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::Empty(path.display().to_string()));
                }
                Ok(token.to_owned())
            }
        }
    }

    /// `Bearer <token>` for the `authorization` metadata.
    pub fn header(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, TokenError> {
        bearer(&self.read()?).ok_or(TokenError::Invalid)
    }
}

/// Who is on the other end of a server-side connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// Present when the client offered a mesh certificate.
    pub identity: Option<Identity>,
}

/// A TLS connection accepted for a tonic server.
pub struct ServerIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Held for the connection's life.
    _slot: Slot,
}

impl Connected for ServerIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and completes TLS on each in its own task, so one slow or broken
/// client never holds up the others; failed handshakes are logged and dropped. Connections
/// beyond `limits` (in all, or from one address) are closed at accept.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
) -> ReceiverStream<io::Result<ServerIo>> {
    let admission = Admission::new(limits);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = admission.admit(addr.ip()) else {
                tracing::warn!(%addr, "control-plane connection refused: connection limit reached");
                continue;
            };
            let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let identity = peer_identity_of(inner.get_ref().1);
                        let io = ServerIo { inner, info: PeerInfo { addr, identity }, _slot: slot };
                        let _ = conn_tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%addr, failure = %HandshakeFailure::from_io(&e), "control-plane TLS handshake failed")
                    }
                    Err(_) => tracing::info!(%addr, "control-plane TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
