//! The ingress gateway's listeners: a socket per port of the current configuration (opened and
//! closed as it changes), and per accepted connection the listener's protocol — plain HTTP,
//! HTTPS (TLS terminated with the certificate the SNI chooses), TLS passthrough (the
//! ClientHello read for its SNI and passed on untouched) or TCP. HTTP requests go through the
//! same pipeline as at a waypoint (authorization by the policies targeting the Gateway, routes,
//! filters, retries) and leave as HBONE with the gateway's identity; TLS passthrough and TCP
//! are authorized as TCP and copied to the route's backend over HBONE.
//!
//! Fail closed: a client outside the mesh has no principal (a policy naming principals never
//! matches it); a port without a plan, an SNI no listener claims, a host no route serves, a
//! ClientHello that does not arrive or parse in time each end that connection only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_dataplane::labels::Peer;
use ambit_dataplane::state::Service;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::downstream::{Downstream, IngressRoutes};
use super::inbound::Prefixed;
use super::Waypoint;
use crate::gateway::{GatewayL7, Listener, PortPlan, SniListeners};
use crate::l7::host_name;
use crate::metrics::Flag;

/// How long a client has to complete its TLS handshake, or to send its whole ClientHello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest ClientHello read for its SNI (a record is at most 16 KiB, plus its header).
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// The gateway's configuration as the listeners read it: `None` until the first arrives (no
/// listener is open), and again if the controller withdraws it.
pub type GatewaySlot = watch::Sender<Option<Arc<GatewayL7>>>;

/// How many connections the listeners hold at once, in all and from one client address (more
/// are closed at accept): one client cannot take the gateway from everyone else.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
}

/// The address a client's connections are counted under: itself for IPv4, its /64 for IPv6
/// (one client holds a whole /64).
fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Connections open per client address.
#[derive(Default)]
struct PerSource(std::sync::Mutex<HashMap<std::net::IpAddr, usize>>);

/// One client address's share, given back when the connection ends.
struct SourceSlot(Arc<PerSource>, std::net::IpAddr);

impl PerSource {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Opens and closes the listeners as the configuration changes, until `stop` fires (a port
/// that cannot be bound is tried again every second); each accepted connection is served with
/// the plan current when it arrived, and each HTTP request with the routes current then.
/// Returns the connection budget, whose permits come back as connections end (for the drain).
pub async fn serve(
    waypoint: Arc<Waypoint>,
    mut config: watch::Receiver<Option<Arc<GatewayL7>>>,
    bind_ip: std::net::IpAddr,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> Arc<Semaphore> {
    let budget = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    // Port → the sender that stops its accept loop (dropping it stops the loop).
    let mut open: HashMap<u16, watch::Sender<bool>> = HashMap::new();
    loop {
        let wanted: Vec<u16> =
            config.borrow_and_update().as_ref().map(|g| g.ports.keys().copied().collect()).unwrap_or_default();
        let mut unbound = false;
        open.retain(|port, _| {
            let keep = wanted.contains(port);
            if !keep {
                tracing::info!(port, "listener closed: no longer configured");
            }
            keep
        });
        for port in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(bind_ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, "listener open");
                    let (tx, rx) = watch::channel(false);
                    open.insert(port, tx);
                    let budgets = (budget.clone(), per_source.clone(), limits.max_per_source);
                    tokio::spawn(accept(waypoint.clone(), listener, port, config.clone(), budgets, rx));
                }
                // Retried in a second (the port's previous socket may still be closing).
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot open the listener");
                    unbound = true;
                }
            }
        }
        let retry = async {
            if unbound {
                tokio::time::sleep(Duration::from_secs(1)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = config.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
            () = retry => {}
        }
    }
    tracing::info!("listeners closed");
    budget
}

async fn accept(
    waypoint: Arc<Waypoint>,
    listener: TcpListener,
    port: u16,
    config: watch::Receiver<Option<Arc<GatewayL7>>>,
    (budget, per_source, max_per_source): (Arc<Semaphore>, Arc<PerSource>, usize),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // The sender is dropped (or set) when the port is no longer configured.
            _ = stop.changed() => return,
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            tracing::warn!(port, src = %peer, response_flags = Flag::Overflow.as_str(), "connection refused: the gateway's connection budget is spent");
            continue;
        };
        let Some(slot) = per_source.take(source_key(peer.ip()), max_per_source) else {
            tracing::warn!(port, src = %peer, response_flags = Flag::Overflow.as_str(), "connection refused: this client holds its share of the gateway's connections");
            continue;
        };
        let Some(gateway) = config.borrow().clone() else { continue };
        let (waypoint, config) = (waypoint.clone(), config.clone());
        tokio::spawn(async move {
            waypoint.ingress(gateway, config, port, stream, peer).await;
            drop((permit, slot));
        });
    }
}

impl Waypoint {
    /// One connection to an ingress listener.
    async fn ingress(
        self: Arc<Self>,
        gateway: Arc<GatewayL7>,
        config: watch::Receiver<Option<Arc<GatewayL7>>>,
        port: u16,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or_else(|_| SocketAddr::new(peer.ip(), port));
        let Some(plan) = gateway.ports.get(&port) else {
            tracing::info!(target: "access", src = %peer, port, "connection refused: the port has no listener");
            return;
        };
        let down = |l7, ingress| {
            Arc::new(Downstream {
                principal: Arc::from("unknown"),
                identity: None,
                source: Peer::from_principal(None),
                source_ip: peer.ip().to_canonical(),
                vip: local,
                service: gateway.service.clone(),
                l7,
                ingress,
                workload: None,
            })
        };
        // HTTP requests take their listener's routes per request, from the configuration then.
        let routes = |sni_listener: Option<String>| IngressRoutes { config: config.clone(), port, sni_listener };
        match plan {
            PortPlan::Http(listeners) => {
                let Some(first) = listeners.listeners.first() else { return };
                self.serve_http(down(first.l7.clone(), Some(routes(None))), stream, Some("http")).await
            }
            PortPlan::Https(listeners) => {
                let Some(server_config) = listeners.server_config.clone() else { return };
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(target: "access", src = %peer, port, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(target: "access", src = %peer, port, "TLS handshake timed out");
                        return;
                    }
                };
                // The listener whose certificate was served: requests for other listeners'
                // hosts on this connection are misdirected (421).
                let Some(listener) = listeners.choose(tls.get_ref().1.server_name()).cloned() else { return };
                let down = down(listener.l7.clone(), Some(routes(Some(listener.name.clone()))));
                self.serve_http(down, tls, Some("https")).await
            }
            PortPlan::Passthrough(listeners) => {
                self.passthrough(listeners, stream, peer, |l7| down(l7, None), config).await
            }
            PortPlan::Tcp(listener) => {
                let down = down(listener.l7.clone(), None);
                self.to_backend(listener, &down, "", stream, config).await
            }
        }
    }

    /// TLS passed through: the SNI from the ClientHello chooses the listener and its route;
    /// the bytes read go to the backend first, then the rest of the stream.
    async fn passthrough(
        &self,
        listeners: &SniListeners,
        mut stream: TcpStream,
        peer: SocketAddr,
        down: impl Fn(Arc<crate::l7::ServiceL7>) -> Arc<Downstream>,
        config: watch::Receiver<Option<Arc<GatewayL7>>>,
    ) {
        let (read, sni) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, client_hello(&mut stream)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::info!(target: "access", src = %peer, error = %e, "TLS passthrough refused: no ClientHello");
                return;
            }
            Err(_) => {
                tracing::info!(target: "access", src = %peer, "TLS passthrough refused: the ClientHello did not arrive in time");
                return;
            }
        };
        let Some(listener) = listeners.choose(sni.as_deref()) else {
            tracing::info!(target: "access", src = %peer, sni = sni.as_deref().unwrap_or(""), response_flags = Flag::NoRoute.as_str(), "TLS passthrough refused: no listener for the server name");
            return;
        };
        let down = down(listener.l7.clone());
        let sni = sni.map(|s| host_name(&s)).unwrap_or_default();
        self.to_backend(listener, &down, &sni, Prefixed::with_prefix(read, stream), config).await
    }

    /// TLS passthrough and TCP: authorized as TCP by the Gateway's policies, then the first
    /// route serving `host` (any, for TCP), a backend by weight, bytes copied over HBONE.
    async fn to_backend<S>(
        &self,
        listener: &Listener,
        down: &Downstream,
        host: &str,
        stream: S,
        config: watch::Receiver<Option<Arc<GatewayL7>>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Err(policy) = down.authorize_tcp() {
            tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, dst = %down.vip, listener = %listener.name, %policy, response_flags = Flag::RbacDenied.as_str(), "connection denied");
            return;
        }
        let route = listener.l7.routes.iter().find(|r| r.serves_host(host));
        let Some(backend) = route.and_then(|r| r.pick_backend()) else {
            tracing::info!(target: "access", listener = %listener.name, src.addr = %down.source_ip, dst = %down.vip, sni = host, response_flags = Flag::NoRoute.as_str(), "connection refused: no route or backend");
            return;
        };
        let service = self.state().service(&backend.service_key).cloned();
        let Some(service) = service else {
            tracing::info!(target: "access", backend = %backend.service_key, src.addr = %down.source_ip, dst = %down.vip, response_flags = Flag::NoHealthyUpstream.as_str(), "connection refused: the backend service is unknown");
            return;
        };
        let port = backend.port;
        let forward = async {
            if service.ingress_use_waypoint && service.waypoint.is_some() {
                self.to_waypoint(down, &service, port, stream).await
            } else {
                self.forward_tcp_to(down, &service, port, stream).await
            }
        };
        // A connection lasts only while the configuration still lets it through: a new DENY,
        // the route or listener gone, close it (dropping the copy closes both ends).
        let key = (down.vip.port(), listener.name.clone(), host.to_owned());
        tokio::select! {
            () = forward => {}
            () = revoked(config, key, down) => {
                tracing::info!(target: "access", protocol = "tcp", listener = %listener.name, src.addr = %down.source_ip, dst = %down.vip, response_flags = Flag::RbacDenied.as_str(), "connection closed: the gateway's configuration no longer allows it");
            }
        }
    }

    /// TLS passthrough and TCP to a service labelled `istio.io/ingress-use-waypoint`: through
    /// its waypoint (HBONE asking for the service's `VIP:port`), never around it.
    async fn to_waypoint<S>(&self, down: &Downstream, service: &Service, port: u16, mut stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let chosen = {
            let state = self.state();
            super::upstream::waypoint_endpoint(&state, &self.network, service, port)
        };
        let Some((endpoint, _)) = chosen else {
            tracing::info!(target: "access", response = "refused", dst.service = %service.hostname, src.addr = %down.source_ip, response_flags = Flag::NoHealthyUpstream.as_str(), "connection refused: no waypoint to reach");
            return;
        };
        match self.upstream.dialer().dial(&endpoint).await {
            Ok(mut upstream) => {
                let (t, err) = ambit_shared::copy::copy_bidirectional(&mut stream, &mut upstream).await;
                tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, dst.service = %service.hostname, waypoint = %endpoint.addr, bytes_sent = t.a_to_b, bytes_recv = t.b_to_a, error = err.map(|e| e.to_string()), "tcp connection complete");
            }
            Err(e) => {
                tracing::info!(target: "access", protocol = "tcp", src.addr = %down.source_ip, dst.service = %service.hostname, waypoint = %endpoint.addr, response_flags = "UF", error = %e, "tcp connection failed");
            }
        }
    }
}

/// Resolves when the gateway's configuration no longer lets an open TLS passthrough or TCP
/// connection through — its listener (`key`: port, listener, SNI name) or a route for its
/// name gone, or the Gateway's policies now denying it; never while they still do.
async fn revoked(mut config: watch::Receiver<Option<Arc<GatewayL7>>>, key: (u16, String, String), down: &Downstream) {
    let (port, name, host) = key;
    loop {
        if config.changed().await.is_err() {
            return std::future::pending().await;
        }
        let current = config.borrow_and_update().clone();
        let listener = current.as_ref().and_then(|g| match g.ports.get(&port) {
            Some(PortPlan::Passthrough(l)) => l.listeners.iter().find(|l| l.name == name).cloned(),
            Some(PortPlan::Tcp(l)) if l.name == name => Some(l.clone()),
            _ => None,
        });
        let Some(listener) = listener else { return };
        if !listener.l7.routes.iter().any(|r| r.serves_host(&host)) {
            return;
        }
        if down.authorize_tcp_with(&listener.l7).is_err() {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("connection closed before a ClientHello")]
    Closed,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads a ClientHello (rustls parses it) and returns every byte read, untouched, with its
/// SNI name.
pub async fn client_hello<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Bytes, Option<String>), HelloError> {
    let mut read = BytesMut::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        read.extend_from_slice(&chunk[..n]);
        if read.len() > MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        let mut fed: &[u8] = &chunk[..n];
        while !fed.is_empty() {
            acceptor.read_tls(&mut fed).map_err(|e| HelloError::NotTls(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((read.freeze(), sni));
            }
            Ok(None) => continue,
            Err((e, _)) => return Err(HelloError::NotTls(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
