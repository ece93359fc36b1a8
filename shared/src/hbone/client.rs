//! HBONE client: a pool of mutual-TLS HTTP/2 connections, keyed by (source identity,
//! destination identity, destination address), each carrying up to
//! [`MAX_STREAMS_PER_CONNECTION`] CONNECT streams.
//!
//! One task dials per key at a time (others wait for it and then share the connection); a full
//! connection makes the next request dial another; a connection the peer closed, or one idle
//! past the idle timeout, leaves the pool.
//!
//! Concurrent streams to one key are spread over up to [`CONNECTIONS_PER_KEY`] connections: a
//! stream that finds every pooled connection already carrying one dials another (and falls back
//! to the least busy one if that dial fails), and streams go to the least busy connection. Each
//! connection is driven by its own task with its own TLS session, so bulk streams to one peer
//! encrypt on several cores instead of queueing behind one connection's crypto.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::read_ahead::ReadAhead;
use super::{
    keepalive, tune_socket, H2Stream, HboneError, CONNECTION_WINDOW, CONNECT_RESPONSE_TIMEOUT, CONNECT_TIMEOUT,
    MAX_FRAME_SIZE, MAX_STREAMS_PER_CONNECTION, SEND_BUFFER, STREAM_WINDOW,
};
use crate::certs::WorkloadCert;
use crate::identity::Identity;
use crate::tls::{client_config, HandshakeFailure, MeshRoots, ALPN_H2};

/// Connections one key spreads its concurrent streams over.
pub const CONNECTIONS_PER_KEY: usize = 4;
/// An extra connection (one the stream could do without) gets this long to come up before the
/// stream shares an open one instead. A dial within a cluster takes a few milliseconds; a peer
/// slower than this is busy, and every new stream to the key waits while it is tried.
const GROW_DIAL_TIMEOUT: Duration = Duration::from_millis(250);
/// After an extra connection failed, the key does not try to grow for this long, doubling with
/// each failure in a row up to [`GROW_BACKOFF_MAX`]: a peer that takes no new connections (at
/// its connection budget, or recovering from a restart) must not cost every new stream a failed
/// dial, nor pay a handshake per key every few seconds while it is short of CPU.
const GROW_BACKOFF: Duration = Duration::from_secs(10);
const GROW_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Default time an unused connection stays pooled (Istio: 5 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Tunables of the pool; `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_streams_per_connection: usize,
    /// Connections concurrent streams to one key are spread over before they share.
    pub connections_per_key: usize,
    /// Read-ahead beneath TLS in bytes (0: off); see `read_ahead`.
    pub read_ahead: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            connections_per_key: CONNECTIONS_PER_KEY,
            read_ahead: 0,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// Where and as whom a tunnel is opened. A plain value: ztunnel's decision code builds it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The certificate of the source workload (its identity is part of the pool key).
    pub source: Arc<WorkloadCert>,
    /// Identities the destination may present (a workload's, or a service's SANs).
    pub destination_identities: Vec<Identity>,
    /// The peer's HBONE listener (`pod-ip:15008`, or a waypoint's).
    pub hbone_addr: SocketAddr,
    /// The `:authority`: the final destination `ip:port`.
    pub authority: SocketAddr,
    /// Extra request headers (`forwarded`, `baggage`, `traceparent`).
    pub headers: HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: Identity,
    destination: Vec<Identity>,
    addr: SocketAddr,
}

/// Counts a stream against its connection until dropped.
pub struct StreamSlot {
    conn: Arc<Conn>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.idle.notify_one();
        }
    }
}

struct Conn {
    id: u64,
    addr: SocketAddr,
    sender: h2::client::SendRequest<Bytes>,
    streams: AtomicUsize,
    closed: AtomicBool,
    /// Signalled when the last stream ends, so the idle timer can start.
    idle: Notify,
}

impl Conn {
    /// Takes a stream slot if the connection is open and not full.
    fn try_claim(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max && n < CLOSING).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot { conn: self.clone() })
    }
}

/// A key that may not grow for now (see [`GROW_BACKOFF`]).
struct GrowBackoff {
    until: std::time::Instant,
    streak: u32,
}

/// Serializes dials per key and remembers how the last one failed.
#[derive(Default)]
struct DialState {
    lock: tokio::sync::Mutex<Option<Arc<str>>>,
    attempts: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct PoolState {
    conns: HashMap<PoolKey, Vec<Arc<Conn>>>,
    dialing: HashMap<PoolKey, Arc<DialState>>,
    /// Keys whose extra connections failed: no growing until `until`; `streak` failures in a
    /// row (the next back-off doubles).
    grow_failed: HashMap<PoolKey, GrowBackoff>,
    next_id: u64,
}

/// Creates the TCP sockets a pool dials from. ztunnel's per-pod pools create them inside the
/// pod's network namespace, marked so the pod's redirect rules leave them alone.
pub trait Dialer: Send + Sync + 'static {
    fn socket(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket>;
}

struct Inner {
    roots: MeshRoots,
    settings: PoolSettings,
    dialer: Option<Arc<dyn Dialer>>,
    state: Mutex<PoolState>,
}

/// The HBONE client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("hbone::Client").field("connections", &self.connection_count()).finish()
    }
}

fn lock(state: &Mutex<PoolState>) -> std::sync::MutexGuard<'_, PoolState> {
    // A panic while holding the lock cannot leave the maps inconsistent (each update is a
    // single insert or retain), so a poisoned lock is safe to keep using.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    pub fn new(roots: MeshRoots, settings: PoolSettings) -> Self {
        Client { inner: Arc::new(Inner { roots, settings, dialer: None, state: Mutex::default() }) }
    }

    /// A pool whose connections start from sockets `dialer` makes.
    pub fn with_dialer(roots: MeshRoots, settings: PoolSettings, dialer: Arc<dyn Dialer>) -> Self {
        Client { inner: Arc::new(Inner { roots, settings, dialer: Some(dialer), state: Mutex::default() }) }
    }

    /// Open connections in the pool (for metrics and tests).
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.state)
            .conns
            .values()
            .map(|v| v.iter().filter(|c| !c.closed.load(Ordering::Acquire)).count())
            .sum()
    }

    /// Opens a tunnel. Reuses a pooled connection with room, otherwise dials (one dialer per
    /// key). A pooled connection found dead before the request went out is replaced once.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        let key = PoolKey {
            source: req.source.identity.clone(),
            destination: req.destination_identities.clone(),
            addr: req.hbone_addr,
        };
        let request = build_request(req)?;
        let mut last_err = None;
        for _attempt in 0..2 {
            let (conn, slot) = self.checkout_or_dial(&key, req).await?;
            match send_connect(&conn, request.clone(), slot).await {
                Ok(stream) => return Ok(stream),
                Err(SendError::ConnectionGone(e)) => {
                    conn.closed.store(true, Ordering::Release);
                    last_err = Some(e);
                }
                Err(SendError::Final(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(HboneError::Rejected(StatusCode::SERVICE_UNAVAILABLE)))
    }

    /// The least busy pooled connection with room, and whether the key should grow: every
    /// connection already carries a stream and there is room for another connection.
    fn checkout(&self, key: &PoolKey) -> (Option<(Arc<Conn>, StreamSlot)>, bool) {
        let state = lock(&self.inner.state);
        let settings = &self.inner.settings;
        let Some(list) = state.conns.get(key) else { return (None, false) };
        let open: Vec<&Arc<Conn>> = list.iter().filter(|c| !c.closed.load(Ordering::Acquire)).collect();
        let mut by_load: Vec<&Arc<Conn>> = open.clone();
        by_load.sort_by_key(|c| c.streams.load(Ordering::Acquire));
        let least = by_load.first().map_or(0, |c| c.streams.load(Ordering::Acquire));
        let backing_off = state.grow_failed.get(key).is_some_and(|b| b.until > std::time::Instant::now());
        let grow = open.len() < settings.connections_per_key.max(1) && least >= 1 && !backing_off;
        let found = by_load
            .iter()
            .find_map(|c| c.try_claim(settings.max_streams_per_connection).map(|slot| ((*c).clone(), slot)));
        (found, grow)
    }

    async fn checkout_or_dial(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Result<(Arc<Conn>, StreamSlot), HboneError> {
        match self.checkout(key) {
            (Some(found), false) => return Ok(found),
            // Growing: give the claimed slot back; it is taken again after the dial.
            (Some(found), true) => drop(found),
            (None, _) => {}
        }
        let dial = lock(&self.inner.state).dialing.entry(key.clone()).or_default().clone();
        let attempts_before = dial.attempts.load(Ordering::Acquire);
        let result = {
            let mut last_failure = dial.lock.lock().await;
            // Someone may have dialed while we waited: share their connection, or their failure
            // (waiters must not each redial a dead peer in turn).
            let (found, grow) = self.checkout(key);
            match found {
                Some(found) if !grow => Ok(found),
                None if dial.attempts.load(Ordering::Acquire) != attempts_before && last_failure.is_some() => {
                    Err(HboneError::DialFailed(last_failure.clone().unwrap_or_else(|| "dial failed".into())))
                }
                found => {
                    // Growing keeps the claimed slot as the fallback if the extra dial fails.
                    // Boxed: the TLS and HTTP/2 handshake states are large, and every caller's
                    // future (one per proxied connection, alive for its whole life) would
                    // otherwise carry room for them.
                    let timeout = match found {
                        Some(_) => self.inner.settings.connect_timeout.min(GROW_DIAL_TIMEOUT),
                        None => self.inner.settings.connect_timeout,
                    };
                    let dialed = tokio::time::timeout(timeout, Box::pin(self.dial(key, req)))
                        .await
                        .unwrap_or(Err(HboneError::ConnectTimeout(req.hbone_addr)));
                    // A needed dial's outcome is shared with everyone who queued during it
                    // (counted on completion). An extra dial's failure is not: it may only have
                    // hit the short grow timeout, and a waiter that finds no room must still get
                    // a dial of its own with the full timeout.
                    if found.is_none() || dialed.is_ok() {
                        *last_failure = dialed.as_ref().err().map(|e| Arc::<str>::from(e.to_string()));
                        dial.attempts.fetch_add(1, Ordering::AcqRel);
                    }
                    match (dialed, found) {
                        (Ok(conn), found) => {
                            if found.is_some() {
                                lock(&self.inner.state).grow_failed.remove(key);
                            }
                            drop(found);
                            let slot = conn.try_claim(usize::MAX);
                            slot.map(|slot| (conn, slot))
                                .ok_or(HboneError::DialFailed("connection closed at once".into()))
                        }
                        (Err(e), Some(found)) => {
                            let mut state = lock(&self.inner.state);
                            let now = std::time::Instant::now();
                            state.grow_failed.retain(|_, b| b.until + GROW_BACKOFF_MAX > now);
                            let streak = state.grow_failed.get(key).map_or(0, |b| b.streak).saturating_add(1);
                            let wait =
                                GROW_BACKOFF.saturating_mul(1 << streak.min(6).saturating_sub(1)).min(GROW_BACKOFF_MAX);
                            state.grow_failed.insert(key.clone(), GrowBackoff { until: now + wait, streak });
                            tracing::info!(
                                peer = %req.hbone_addr, error = %e, retry_in_s = wait.as_secs(),
                                "extra HBONE connection failed; sharing an open one"
                            );
                            Ok(found)
                        }
                        (Err(e), None) => Err(e),
                    }
                }
            }
        };
        // Drop the key's dial state once nobody else holds it (ours + the map's = 2).
        let mut state = lock(&self.inner.state);
        if Arc::strong_count(&dial) <= 2 {
            state.dialing.remove(key);
        }
        result
    }

    async fn dial(&self, key: &PoolKey, req: &ConnectRequest) -> Result<Arc<Conn>, HboneError> {
        let addr = req.hbone_addr;
        let tls = client_config(&req.source, &self.inner.roots, req.destination_identities.clone())?;
        // The caller bounds the whole dial (TCP, TLS, HTTP/2 preface) by the connect timeout.
        let tcp = match &self.inner.dialer {
            Some(dialer) => {
                dialer.socket(addr).map_err(|source| HboneError::Connect { addr, source })?.connect(addr).await
            }
            None => TcpStream::connect(addr).await,
        }
        .map_err(|source| HboneError::Connect { addr, source })?;
        tune_socket(&tcp).map_err(|source| HboneError::Connect { addr, source })?;
        let tls = TlsConnector::from(Arc::new(tls))
            .connect(ServerName::IpAddress(addr.ip().into()), ReadAhead::new(tcp, self.inner.settings.read_ahead))
            .await
            .map_err(|e| HboneError::Tls { addr, failure: HandshakeFailure::from_io(&e) })?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(HboneError::NoAlpn(addr));
        }
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(SEND_BUFFER)
            .initial_max_send_streams(self.inner.settings.max_streams_per_connection)
            .max_header_list_size(16 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| handshake_error(addr, e))?;
        let ping = connection.ping_pong();
        let id = {
            let mut state = lock(&self.inner.state);
            state.next_id += 1;
            state.next_id
        };
        let conn = Arc::new(Conn {
            id,
            addr,
            sender,
            streams: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle: Notify::new(),
        });
        lock(&self.inner.state).conns.entry(key.clone()).or_default().push(conn.clone());
        tracing::debug!(%addr, conn = id, "HBONE connection established");

        let weak_pool = Arc::downgrade(&self.inner);
        let driver_conn = conn.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let idle_timeout = weak_pool.upgrade().map(|p| p.settings.idle_timeout).unwrap_or(DEFAULT_IDLE_TIMEOUT);
            tokio::select! {
                res = &mut connection => {
                    if let Err(e) = res { tracing::debug!(%addr, error = %e, "HBONE connection ended"); }
                }
                () = async { match ping { Some(p) => keepalive(p).await, None => std::future::pending().await } } => {}
                () = idle_watch(&driver_conn, idle_timeout) => {
                    tracing::debug!(%addr, conn = driver_conn.id, "HBONE connection idle; closing");
                }
            }
            driver_conn.closed.store(true, Ordering::Release);
            remove(&weak_pool, &key, driver_conn.id);
        });
        Ok(conn)
    }
}

/// In TLS 1.3 the server checks our certificate after our side considers the handshake done,
/// so its refusal arrives as an alert during the HTTP/2 preface: report it as the TLS failure.
fn handshake_error(addr: SocketAddr, e: h2::Error) -> HboneError {
    let tls = e.get_io().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(tls) => HboneError::Tls { addr, failure: HandshakeFailure::from_rustls(tls) },
        // h2 keeps only the kind and text of an I/O error; rustls reports alerts as InvalidData.
        None if e.get_io().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) => {
            HboneError::Tls { addr, failure: HandshakeFailure::RefusedByPeer(e.to_string()) }
        }
        None => HboneError::H2(e),
    }
}

fn remove(pool: &Weak<Inner>, key: &PoolKey, id: u64) {
    let Some(pool) = pool.upgrade() else { return };
    let mut state = lock(&pool.state);
    if let Some(list) = state.conns.get_mut(key) {
        list.retain(|c| c.id != id);
        if list.is_empty() {
            state.conns.remove(key);
        }
    }
}

/// Stream count that marks a connection as closing: no claim succeeds past it.
const CLOSING: usize = usize::MAX / 2;

/// Completes once the connection has carried no stream for `timeout`; from then on no stream
/// can be claimed on it (the count is swapped from 0 to `CLOSING` atomically).
async fn idle_watch(conn: &Conn, timeout: Duration) {
    loop {
        if conn.streams.load(Ordering::Acquire) == 0 {
            let woke = tokio::time::timeout(timeout, conn.idle.notified()).await;
            if woke.is_err() && conn.streams.compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return;
            }
        } else {
            conn.idle.notified().await;
        }
    }
}

/// The CONNECT request for `req`: `:authority` = `ip:port`, no scheme or path.
fn build_request(req: &ConnectRequest) -> Result<Request<()>, HboneError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(req.authority.to_string())
        .version(Version::HTTP_2)
        .body(())
        .map_err(|_| HboneError::Header(":authority"))?;
    request.headers_mut().extend(req.headers.clone());
    Ok(request)
}

enum SendError {
    /// The connection died before our request went out: safe to retry on another.
    ConnectionGone(HboneError),
    Final(HboneError),
}

async fn send_connect(conn: &Conn, request: Request<()>, slot: StreamSlot) -> Result<H2Stream, SendError> {
    let gone = |e: h2::Error| match handshake_error(conn.addr, e) {
        tls @ HboneError::Tls { .. } => SendError::Final(tls),
        other => SendError::ConnectionGone(other),
    };
    let mut sender = conn.sender.clone().ready().await.map_err(gone)?;
    let (response, send) = sender.send_request(request, false).map_err(gone)?;
    // The peer answers once it has connected upstream (its connect has its own deadline); a
    // peer that never answers must not hold the caller forever.
    let response = tokio::time::timeout(CONNECT_RESPONSE_TIMEOUT, response)
        .await
        .map_err(|_| SendError::Final(HboneError::ConnectTimeout(conn.addr)))?;
    let response = response.map_err(|e| {
        // GOAWAY past our stream, or REFUSED_STREAM: the peer never processed it; retry elsewhere.
        if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            SendError::ConnectionGone(e.into())
        } else {
            SendError::Final(handshake_error(conn.addr, e))
        }
    })?;
    if response.status() != StatusCode::OK {
        return Err(SendError::Final(HboneError::Rejected(response.status())));
    }
    Ok(H2Stream::new(send, response.into_body(), Some(slot)))
}
