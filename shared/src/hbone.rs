//! HBONE: HTTP/2 CONNECT over mutual TLS, wire-compatible with Istio's ztunnel.
//!
//! A tunnel is one HTTP/2 stream: the client sends `CONNECT` with `:authority` = `ip:port` of the
//! final destination (no `:scheme`, no `:path`) plus `forwarded` / `baggage` / `traceparent`
//! headers; the server answers 200 once the destination is reached (401 denied by policy,
//! 400 malformed request, 503 upstream unreachable), then bytes flow both ways as DATA frames.
//!
//! This module owns the wire format, the HTTP/2 settings, the connection pool (`client`) and the
//! CONNECT acceptor (`server`). It does not decide where traffic goes nor who may send it: that
//! is the caller's (ztunnel, waypoint) business, through the request values and the handler.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::HandshakeFailure;

pub mod client;
pub mod read_ahead;
pub mod server;

/// The port every mesh pod accepts HBONE on.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 settings shared by both ends. Windows are large so one stream can fill a fast link
/// without waiting for WINDOW_UPDATEs (4 MiB at 10 Gbit/s is ~3 ms of data in flight).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Frames we accept. Each received DATA frame becomes one allocation in h2's decoder; frames
/// above the allocator's mmap threshold (128 KiB) cost an mmap, page faults and an munmap each
/// (a profile of bulk transfers showed a quarter of ztunnel's time there with 1 MiB frames).
/// 64 KiB keeps per-frame overhead negligible (9 header bytes) and allocations on the heap.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Largest chunk one write hands h2 (one allocation each): below the mmap threshold, for the
/// same reason.
pub const MAX_WRITE_CHUNK: usize = 64 * 1024;
/// Data h2 may buffer per stream before a write waits (bounds memory per busy stream).
pub const SEND_BUFFER: usize = 1024 * 1024;
/// Streams a client puts on one pooled connection before it opens another.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Streams a server accepts on one connection (peers may pool more than we do).
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Server side: TLS plus the HTTP/2 preface must complete within this, or the connection is
/// dropped (a client that connects and sends nothing must not pin a task).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive: ping after this much silence, give up when no answer within the timeout.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP connect timeout towards a peer's 15008, and towards an application from a proxy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the answer to its CONNECT. The server connects upstream within
/// [`CONNECT_TIMEOUT`] before it answers, so this is that plus room for the round trips.
pub const CONNECT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Request header names HBONE uses.
pub mod headers {
    pub const FORWARDED: &str = "forwarded";
    pub const BAGGAGE: &str = "baggage";
    pub const TRACEPARENT: &str = "traceparent";
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {addr}: {failure}")]
    Tls { addr: SocketAddr, failure: HandshakeFailure },
    #[error("peer {0} did not negotiate ALPN h2")]
    NoAlpn(SocketAddr),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The server answered the CONNECT with a non-200 status (401: denied by policy,
    /// 503: destination unreachable, 400: bad request).
    #[error("CONNECT refused with {0}")]
    Rejected(StatusCode),
    #[error("building the TLS configuration: {0}")]
    TlsConfig(#[from] crate::tls::TlsError),
    #[error("invalid header value for {0}")]
    Header(&'static str),
    /// Another request's dial to the same peer just failed; this one shares the outcome.
    #[error("peer unreachable: {0}")]
    DialFailed(std::sync::Arc<str>),
}

impl HboneError {
    /// The status the server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HboneError::Rejected(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether a fresh connection might succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HboneError::Rejected(s) => s.is_server_error(),
            HboneError::Tls { .. } | HboneError::TlsConfig(_) | HboneError::Header(_) | HboneError::NoAlpn(_) => false,
            _ => true,
        }
    }
}

/// Runs on drop of a stream; the client pool uses it to count streams per connection.
pub(crate) type StreamGuard = Option<client::StreamSlot>;

/// One tunnel's bidirectional byte stream over an HTTP/2 stream.
///
/// Reads hand out DATA frames as they arrive (flow-control credit is returned at once, the
/// window bounds what is in flight); writes copy into one `Bytes` per call, which h2 frames.
/// Shutdown sends END_STREAM, which the peer reads as EOF (half-close).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    ended: bool,
    _slot: StreamGuard,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream").field("stream_id", &self.send.stream_id()).field("ended", &self.ended).finish()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: StreamGuard) -> Self {
        H2Stream { send, recv, pending: Bytes::new(), ended: false, _slot: slot }
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        match e.into_io() {
            Some(io) => io,
            None => io::Error::other("h2 I/O error"),
        }
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let len = data.len();
                    // Credit back immediately; the data is now ours, and the window alone
                    // bounds what the peer may have in flight.
                    let _ = self.recv.flow_control().release_capacity(len);
                    self.pending = data;
                }
                // END_STREAM ends reads with `None` above; a reset (even NO_ERROR) is an abort.
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let available = self.send.capacity();
            if available > 0 {
                let n = available.min(buf.len()).min(MAX_WRITE_CHUNK);
                self.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_to_io)?;
                return Poll::Ready(Ok(n));
            }
            self.send.reserve_capacity(buf.len());
            match ready!(self.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                Some(Ok(_)) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames as soon as the connection task runs; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Copies between a TCP connection and a tunnel until both directions end (half-close
/// propagated each way), or one fails. Unlike the generic [`crate::copy::copy_bidirectional`]
/// it moves no byte through an intermediate buffer: TCP reads land in a `BytesMut` whose filled
/// part goes to h2 as it is, and DATA frames from h2 are written to TCP straight from their own
/// buffers — two copies per byte fewer on the data path. `a_to_b` counts TCP → tunnel.
pub async fn copy_tcp_tunnel(
    tcp: &mut tokio::net::TcpStream,
    tunnel: &mut H2Stream,
) -> (crate::copy::Transferred, Option<crate::copy::CopyError>) {
    use crate::copy::{CopyError, Direction, Transferred};
    let mut up =
        Upstream { buf: bytes::BytesMut::new(), chunk: Bytes::new(), amount: 0, read_done: false, done: false };
    let mut down = Downstream { chunk: std::mem::take(&mut tunnel.pending), amount: 0, done: false };
    let result = std::future::poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(Err((op, source))) = up.poll(cx, tcp, tunnel) {
                return Poll::Ready(Err(CopyError { direction: Direction::AToB, op, source }));
            }
        }
        if !down.done {
            if let Poll::Ready(Err((op, source))) = down.poll(cx, tunnel, tcp) {
                return Poll::Ready(Err(CopyError { direction: Direction::BToA, op, source }));
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    (Transferred { a_to_b: up.amount, b_to_a: down.amount }, result.err())
}

type CopyResult = Poll<Result<(), (crate::copy::Op, io::Error)>>;

/// TCP → tunnel.
struct Upstream {
    buf: bytes::BytesMut,
    /// Read from TCP, not yet handed to h2 (waiting for flow-control capacity).
    chunk: Bytes,
    amount: u64,
    read_done: bool,
    done: bool,
}

impl Upstream {
    /// Read size: small while a connection is quiet, up to [`MAX_WRITE_CHUNK`] once it is busy.
    fn want(&self) -> usize {
        match self.amount {
            0..=65_535 => 4 * 1024,
            _ => MAX_WRITE_CHUNK,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, tcp: &mut tokio::net::TcpStream, tunnel: &mut H2Stream) -> CopyResult {
        use crate::copy::Op;
        loop {
            if !self.chunk.is_empty() {
                let available = tunnel.send.capacity();
                if available == 0 {
                    tunnel.send.reserve_capacity(self.chunk.len());
                    match ready!(tunnel.send.poll_capacity(cx)) {
                        None => return Poll::Ready(Err((Op::Write, io::ErrorKind::BrokenPipe.into()))),
                        Some(Err(e)) => return Poll::Ready(Err((Op::Write, h2_to_io(e)))),
                        Some(Ok(_)) => continue,
                    }
                }
                let n = available.min(self.chunk.len());
                let part = self.chunk.split_to(n);
                tunnel.send.send_data(part, false).map_err(|e| (Op::Write, h2_to_io(e)))?;
                self.amount += n as u64;
                continue;
            }
            if self.read_done {
                if !tunnel.ended {
                    tunnel.ended = true;
                    tunnel.send.send_data(Bytes::new(), true).map_err(|e| (Op::Write, h2_to_io(e)))?;
                }
                self.done = true;
                self.buf = bytes::BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            ready!(tcp.poll_read_ready(cx)).map_err(|e| (Op::Read, e))?;
            let want = self.want();
            if self.buf.capacity() - self.buf.len() < want {
                // Reuses the previous allocation when h2 is done with what was split off it.
                self.buf.reserve(want);
            }
            match tcp.try_read_buf(&mut self.buf) {
                Ok(0) => self.read_done = true,
                Ok(_) => {
                    self.chunk = self.buf.split().freeze();
                    if self.amount < 65_536 {
                        // A quiet connection keeps no buffer between reads (idle connections
                        // are most connections); a busy one keeps it for reuse.
                        self.buf = bytes::BytesMut::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err((Op::Read, e))),
            }
        }
    }
}

/// Tunnel → TCP.
struct Downstream {
    chunk: Bytes,
    amount: u64,
    done: bool,
}

impl Downstream {
    fn poll(&mut self, cx: &mut Context<'_>, tunnel: &mut H2Stream, tcp: &mut tokio::net::TcpStream) -> CopyResult {
        use crate::copy::Op;
        use tokio::io::AsyncWrite;
        loop {
            while !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.chunk)).map_err(|e| (Op::Write, e))?;
                if n == 0 {
                    return Poll::Ready(Err((Op::Write, io::ErrorKind::WriteZero.into())));
                }
                bytes::Buf::advance(&mut self.chunk, n);
                self.amount += n as u64;
            }
            // An emptied `Bytes` still holds its frame's buffer: let it go before waiting.
            self.chunk = Bytes::new();
            match ready!(tunnel.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = tunnel.recv.flow_control().release_capacity(data.len());
                    self.chunk = data;
                }
                None => {
                    ready!(Pin::new(&mut *tcp).poll_shutdown(cx)).map_err(|e| (Op::Write, e))?;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err((Op::Read, h2_to_io(e)))),
            }
        }
    }
}

/// Applies the socket options every HBONE TCP connection gets: no Nagle delay (tunnelled
/// protocols do their own batching) and keepalive as Istio (180 s idle, 180 s interval, 9 probes).
pub(crate) fn tune_socket(stream: &tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(180))
        .with_interval(Duration::from_secs(180))
        .with_retries(9);
    sock.set_tcp_keepalive(&ka)
}

/// Drives a ping/pong keepalive: completes when the peer stops answering.
pub(crate) async fn keepalive(mut ping: h2::PingPong) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => continue,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HBONE keepalive ping failed");
                return;
            }
            Err(_) => {
                tracing::warn!("HBONE peer did not answer a ping within {PING_TIMEOUT:?}; closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Source workload attributes carried in the `baggage` header, as Istio's ztunnel writes them
/// (W3C baggage list; unset members are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    /// Workload kind in lower case (`deployment`, `pod`, `job`…) and its name.
    pub workload: Option<(String, String)>,
    pub service: Option<String>,
    pub version: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
}

impl Baggage {
    /// The header value: `k8s.cluster.name=…,k8s.namespace.name=…,k8s.deployment.name=…,…`.
    pub fn to_header(&self) -> Result<http::HeaderValue, HboneError> {
        let workload_key = self.workload.as_ref().map(|(kind, _)| format!("k8s.{kind}.name"));
        let workload_name = self.workload.as_ref().map(|(_, name)| name.clone());
        let members: Vec<String> = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (workload_key.as_deref().unwrap_or_default(), &workload_name),
            ("service.name", &self.service),
            ("service.version", &self.version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        http::HeaderValue::from_str(&members.join(",")).map_err(|_| HboneError::Header(headers::BAGGAGE))
    }

    /// Reads a `baggage` header; unknown members are ignored, as W3C baggage requires.
    pub fn parse(value: &str) -> Self {
        let mut b = Baggage::default();
        for member in value.split(',') {
            let Some((k, v)) = member.trim().split_once('=') else { continue };
            let v = v.trim().to_owned();
            match k.trim() {
                "k8s.cluster.name" => b.cluster = Some(v),
                "k8s.namespace.name" => b.namespace = Some(v),
                "service.name" => b.service = Some(v),
                "service.version" => b.version = Some(v),
                "cloud.region" => b.region = Some(v),
                "cloud.availability_zone" => b.zone = Some(v),
                k => {
                    if let Some(kind) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name")) {
                        b.workload = Some((kind.to_owned(), v));
                    }
                }
            }
        }
        b
    }
}

/// The `forwarded` header value naming the original client: `for="ip:port"`, plus
/// `;host=<service hostname>` when the destination service is known.
pub fn forwarded_header(client: SocketAddr, host: Option<&str>) -> Result<http::HeaderValue, HboneError> {
    let value = match host {
        Some(h) => format!("for=\"{client}\";host={h}"),
        None => format!("for=\"{client}\""),
    };
    http::HeaderValue::from_str(&value).map_err(|_| HboneError::Header(headers::FORWARDED))
}

/// The original client address from a `forwarded` header, if it names one.
pub fn forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim_matches('"').parse().ok()
    })
}
