//! Connections to endpoints, keyed by the endpoint as it was chosen from the mesh state: its
//! address and how it must be reached — HBONE to a meshed workload, expecting the identity the
//! state gave it (its ztunnel proves it), or plain TCP to a workload the state says is outside
//! the mesh. Nothing here reads the state: an [`Endpoint`] exists only as the result of a
//! choice from it ([`Endpoint::of`]), so an address nobody chose is never dialed, and a pooled
//! connection is reused only for the same address, mode and identity. HTTP/1 and HTTP/2
//! pools, one per endpoint, are hyper's. It does not choose endpoints (see [`super`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ambit_dataplane::cert_manager::CertManager;
use ambit_dataplane::state::Workload;
use ambit_shared::hbone::client::{Client as HboneClient, ConnectRequest};
use ambit_shared::hbone::{H2Stream, HBONE_PORT};
use ambit_shared::Identity;
use http::{HeaderMap, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::body::{Body, BoxError};

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The connection to an endpoint: an HBONE stream, or TCP (or TLS originated over it) for
/// endpoints outside the mesh.
pub enum Conn {
    Hbone(H2Stream),
    Tcp(TcpStream),
    /// Boxed: a TLS session is large and rare beside the other two.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// How an endpoint is reached, as the state said when it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tunnel {
    /// HBONE as the waypoint's identity; the endpoint's ztunnel must prove this identity.
    Hbone(Identity),
    /// Plain TCP: a workload outside the mesh.
    Plain,
    /// TLS originated over TCP to a workload outside the mesh (DestinationRule `SIMPLE`):
    /// the server name sent and, when `verify`, checked against the system's roots; ALPN for
    /// HTTP/2 (`h2`) or HTTP/1.1.
    Tls { sni: Arc<str>, verify: bool, h2: bool },
    /// HBONE to a waypoint (the endpoint's address is the waypoint pod's HBONE address), asking
    /// for `authority` — the service's `VIP:port` — as ztunnel does: the waypoint applies the
    /// service's policies and routes. An ingress gateway's way to a service labelled
    /// `istio.io/ingress-use-waypoint`.
    Waypoint { identity: Identity, authority: SocketAddr },
}

/// An endpoint chosen from the mesh state: the key of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The workload's address and the port it is reached on.
    pub addr: SocketAddr,
    /// HBONE with the identity to expect, or plain TCP.
    pub tunnel: Tunnel,
}

impl Endpoint {
    /// The endpoint of workload `w` (chosen from the state) at `port`; `None` for a workload
    /// without an address.
    pub fn of(w: &Workload, port: u16) -> Option<Self> {
        let ip = *w.addresses.first()?;
        let tunnel = if w.hbone { Tunnel::Hbone(w.identity.clone()) } else { Tunnel::Plain };
        Some(Endpoint { addr: SocketAddr::new(ip, port), tunnel })
    }
}

/// Dials endpoints: HBONE as the waypoint's identity to meshed workloads (their ztunnel checks
/// it, and the waypoint checks theirs), plain TCP only to workloads the state said are outside
/// the mesh.
#[derive(Clone)]
pub struct Dialer {
    pub certs: Arc<CertManager>,
    pub identity: Identity,
    pub hbone: HboneClient,
    /// Client configurations for TLS originated to endpoints outside the mesh.
    pub upstream_tls: super::tls::UpstreamTls,
}

impl Dialer {
    pub async fn dial(&self, endpoint: &Endpoint) -> Result<Conn, BoxError> {
        let addr = endpoint.addr;
        match &endpoint.tunnel {
            Tunnel::Hbone(identity) => {
                let cert = self.certs.fetch(&self.identity).await?;
                let req = ConnectRequest {
                    source: cert,
                    destination_identities: vec![identity.clone()],
                    hbone_addr: SocketAddr::new(addr.ip(), HBONE_PORT),
                    authority: addr,
                    headers: HeaderMap::new(),
                };
                Ok(Conn::Hbone(self.hbone.connect(&req).await?))
            }
            Tunnel::Waypoint { identity, authority } => {
                let cert = self.certs.fetch(&self.identity).await?;
                let req = ConnectRequest {
                    source: cert,
                    destination_identities: vec![identity.clone()],
                    hbone_addr: addr,
                    authority: *authority,
                    headers: HeaderMap::new(),
                };
                Ok(Conn::Hbone(self.hbone.connect(&req).await?))
            }
            Tunnel::Plain => Ok(Conn::Tcp(plain(addr).await?)),
            Tunnel::Tls { sni, verify, h2 } => {
                let tcp = plain(addr).await?;
                let name = rustls::pki_types::ServerName::try_from(sni.to_string())
                    .map_err(|e| format!("server name {sni:?}: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(self.upstream_tls.config(*verify, *h2));
                let tls = tokio::time::timeout(ambit_shared::hbone::CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| format!("TLS to {addr} ({sni}): timed out"))?
                    .map_err(|e| format!("TLS to {addr} ({sni}): {e}"))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }
}

async fn plain(addr: SocketAddr) -> Result<TcpStream, BoxError> {
    let tcp = tokio::time::timeout(ambit_shared::hbone::CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The connector of one endpoint's HTTP client: dials that endpoint whatever the request's
/// URI says (hyper asks with the URI; the endpoint was fixed when the client was made).
#[derive(Clone)]
pub struct Connector {
    dialer: Dialer,
    endpoint: Arc<Endpoint>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (dialer, endpoint) = (self.dialer.clone(), self.endpoint.clone());
        Box::pin(async move { dialer.dial(&endpoint).await.map(TokioIo::new) })
    }
}

/// An endpoint's pooled client and when it was last used.
struct Pooled {
    client: Client<Connector, Body>,
    used: Instant,
}

/// The HTTP clients of the endpoints, by endpoint and HTTP version.
pub struct Pools {
    dialer: Dialer,
    clients: Mutex<HashMap<(Endpoint, bool), Pooled>>,
}

impl Pools {
    pub fn new(dialer: Dialer) -> Self {
        Pools { dialer, clients: Mutex::default() }
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The client for `endpoint` over HTTP/2 (`h2`) or HTTP/1.1; `fresh`: one request per
    /// connection (`maxRequestsPerConnection: 1`), nothing kept.
    pub fn client(&self, endpoint: &Endpoint, h2: bool, fresh: bool) -> Client<Connector, Body> {
        if fresh {
            let mut builder = Client::builder(TokioExecutor::new());
            builder.http2_only(h2).pool_max_idle_per_host(0);
            return builder.build(self.connector(endpoint));
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (endpoint.clone(), h2);
        if let Some(pooled) = clients.get_mut(&key) {
            pooled.used = now;
            return pooled.client.clone();
        }
        // Endpoints unused for longer than a connection may idle have nothing pooled left.
        clients.retain(|_, p| now.duration_since(p.used) < POOL_IDLE);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(h2).pool_idle_timeout(POOL_IDLE).pool_timer(TokioTimer::new());
        let client = builder.build(self.connector(endpoint));
        clients.insert(key, Pooled { client: client.clone(), used: now });
        client
    }

    fn connector(&self, endpoint: &Endpoint) -> Connector {
        Connector { dialer: self.dialer.clone(), endpoint: Arc::new(endpoint.clone()) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Endpoint, Tunnel};
    use crate::testing::workload;

    #[test]
    fn an_endpoint_carries_what_the_state_said() {
        let meshed = workload("a");
        let endpoint = Endpoint::of(&meshed, 8080).unwrap();
        assert_eq!(endpoint.addr, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(endpoint.tunnel, Tunnel::Hbone(meshed.identity.clone()));
        let mut outside = Arc::unwrap_or_clone(workload("b"));
        outside.hbone = false;
        assert_eq!(Endpoint::of(&outside, 80).unwrap().tunnel, Tunnel::Plain);
        outside.addresses.clear();
        assert!(Endpoint::of(&outside, 80).is_none(), "no address, nothing to dial");
    }
}
