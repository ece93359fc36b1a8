//! The DNS proxy, on by default as in Istio's ambient mode: the node agent redirects each
//! captured pod's DNS (UDP and TCP port 53) to port 15053 inside the pod's network namespace,
//! where this module listens (loopback only: other pods cannot reach it). Each message is
//! decided by [`answer::decide`] against the mesh state — names in the registry answered here,
//! with the virtual addresses the controller gives them (ServiceEntries without addresses get
//! one allocated) — and everything else goes upstream through [`forward::Forwarder`], unchanged.
//!
//! It does not own the redirect rules (`node::rules`) nor resolving DNS ServiceEntry endpoints
//! for connections (`proxy::dns`).

pub mod answer;
pub mod forward;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_dataplane::state::State;
use ambit_shared::netns::Netns;
use hickory_proto::op::{Message, ResponseCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

pub use answer::Client;
use answer::Decision;
use forward::{Forwarder, Transport};

/// Where a pod's DNS is redirected, inside its namespace (Istio's port).
pub const DNS_PORT: u16 = 15053;

/// Queries in flight at once, all pods together (each holds a socket upstream); past it a
/// query gets SERVFAIL at once instead of queueing.
const IN_FLIGHT: usize = 1024;
/// A pod's share of them: one pod flooding its resolver cannot starve the node's other pods.
const IN_FLIGHT_PER_POD: usize = 128;
/// Open DNS-over-TCP connections per pod (each a task and a socket until it idles out).
const TCP_PER_POD: usize = 32;
/// How long a TCP connection may sit between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// `istio_dns_*` counters (Istio's ztunnel names).
#[derive(Clone)]
pub struct DnsMetrics {
    requests: Family<OutcomeLabels, Counter>,
    upstream_requests: Family<TransportLabels, Counter>,
    upstream_failures: Family<TransportLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `answered` (from the registry), `forwarded`, `formerr`, `servfail`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

impl DnsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
        };
        registry.register("dns_requests", "DNS messages from pods, by outcome", m.requests.clone());
        registry.register("dns_upstream_requests", "DNS queries forwarded upstream", m.upstream_requests.clone());
        registry.register(
            "dns_upstream_failures",
            "Forwarded DNS queries that got no reply",
            m.upstream_failures.clone(),
        );
        m
    }

    fn outcome(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// One pod's budgets, shared by its listeners.
#[derive(Clone)]
struct PodLimits {
    queries: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

/// What every pod's DNS listeners share.
pub struct DnsProxy {
    state: Arc<RwLock<State>>,
    forwarder: Forwarder,
    metrics: DnsMetrics,
    in_flight: Arc<Semaphore>,
}

impl DnsProxy {
    pub fn new(state: Arc<RwLock<State>>, upstreams: &[SocketAddr], metrics: DnsMetrics) -> Arc<Self> {
        let forwarder = Forwarder::new(upstreams);
        tracing::info!(upstreams = ?forwarder.upstreams(), "DNS proxy on");
        Arc::new(DnsProxy { state, forwarder, metrics, in_flight: Arc::new(Semaphore::new(IN_FLIGHT)) })
    }

    /// Opens the pod's DNS listeners (UDP and TCP on loopback; IPv6 too when the pod has IPv6,
    /// as its other listeners found) and serves them until `stop`; the tasks are returned so
    /// the pod's removal aborts them. A listener that cannot be opened is an error: the pod's
    /// rules would redirect its DNS to nothing.
    pub fn serve_pod(
        self: &Arc<Self>,
        netns: &Netns,
        ipv6: bool,
        client: Client,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Vec<AbortHandle>> {
        let mut addrs = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT))];
        let mut sockets = vec![(udp_in(netns, addrs[0])?, tcp_in(netns, addrs[0])?)];
        if ipv6 {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, DNS_PORT));
            sockets.push((udp_in(netns, v6)?, tcp_in(netns, v6)?));
            addrs.push(v6);
        }
        let mut tasks = Vec::new();
        let limits = PodLimits {
            queries: Arc::new(Semaphore::new(IN_FLIGHT_PER_POD)),
            connections: Arc::new(Semaphore::new(TCP_PER_POD)),
        };
        for (udp, tcp) in sockets {
            let (me, c, s, l) = (self.clone(), client.clone(), stop.clone(), limits.clone());
            tasks.push(tokio::spawn(me.serve_udp(Arc::new(udp), c, s, l)).abort_handle());
            let (me, c, s, l) = (self.clone(), client.clone(), stop.clone(), limits.clone());
            tasks.push(tokio::spawn(me.serve_tcp(tcp, c, s, l)).abort_handle());
        }
        tracing::debug!(?addrs, "DNS listeners open in the pod");
        Ok(tasks)
    }

    /// A query's place in the node's and the pod's budgets, or `None` when either is spent.
    fn admit(&self, limits: &PodLimits) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let pod = limits.queries.clone().try_acquire_owned().ok()?;
        let node = self.in_flight.clone().try_acquire_owned().ok()?;
        Some((pod, node))
    }

    async fn serve_udp(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        client: Client,
        mut stop: watch::Receiver<bool>,
        limits: PodLimits,
    ) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "DNS receive failed");
                        continue;
                    }
                },
            };
            let packet = &buf[..n];
            // Registry names and malformed messages are answered here, whatever the budgets:
            // only forwarding takes a place in them.
            let query = match self.local(packet, &client, Transport::Udp) {
                Local::Reply(reply) => {
                    send_udp(&socket, &reply, from).await;
                    continue;
                }
                Local::Nothing => continue,
                Local::Forward(query) => query,
            };
            let Some(permit) = self.admit(&limits) else {
                self.metrics.outcome("servfail");
                if let Some(reply) = failure(&query) {
                    send_udp(&socket, &reply, from).await;
                }
                continue;
            };
            let (me, socket, packet) = (self.clone(), socket.clone(), packet.to_vec());
            tokio::spawn(async move {
                let reply = me.forward(&query, &packet, Transport::Udp).await;
                drop(permit);
                if let Some(reply) = reply {
                    send_udp(&socket, &reply, from).await;
                }
            });
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        client: Client,
        mut stop: watch::Receiver<bool>,
        limits: PodLimits,
    ) {
        // The connections are this task's: aborting it (the pod is gone) ends them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            match accepted {
                Ok((stream, _)) => {
                    // Over the pod's connection budget: closed at once.
                    let Ok(slot) = limits.connections.clone().try_acquire_owned() else { continue };
                    let (me, client, limits) = (self.clone(), client.clone(), limits.clone());
                    connections.spawn(async move {
                        me.serve_tcp_connection(stream, client, limits).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Messages on one TCP connection, each framed by its 16-bit length, until the client
    /// closes, idles, or sends something that is not a message.
    async fn serve_tcp_connection(self: Arc<Self>, mut stream: TcpStream, client: Client, limits: PodLimits) {
        loop {
            let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
            let mut packet = vec![0u8; usize::from(len)];
            if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await.map_or(true, |r| r.is_err()) {
                return;
            }
            let reply = match self.local(&packet, &client, Transport::Tcp) {
                Local::Reply(reply) => Some(reply),
                Local::Nothing => None,
                Local::Forward(query) => match self.admit(&limits) {
                    Some(permit) => {
                        let reply = self.forward(&query, &packet, Transport::Tcp).await;
                        drop(permit);
                        reply
                    }
                    None => {
                        self.metrics.outcome("servfail");
                        failure(&query)
                    }
                },
            };
            let Some(reply) = reply else { return };
            let Ok(len) = u16::try_from(reply.len()) else { return };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if !matches!(tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// What can be done without going upstream: the message is parsed before the mesh state
    /// is locked, and the lock is held only to look the name up.
    pub fn local(&self, packet: &[u8], client: &Client, transport: Transport) -> Local {
        // The largest reply the asker takes, read from the query parsed once.
        let mut limit = usize::from(u16::MAX);
        let decision = match answer::parse(packet) {
            Ok(query) => {
                if transport == Transport::Udp {
                    limit = answer::udp_limit(&query);
                }
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                answer::decide_query(query, &state, client)
            }
            Err(done) => done,
        };
        match decision {
            Decision::Drop => Local::Nothing,
            Decision::Reply(bytes) => {
                self.metrics.outcome("formerr");
                Local::Reply(bytes)
            }
            Decision::Answer(response) => {
                self.metrics.outcome("answered");
                answer::encode_for_udp(*response, limit).map_or(Local::Nothing, Local::Reply)
            }
            Decision::Forward(query) => Local::Forward(query),
        }
    }

    /// The upstream's reply to `query` (cached or fresh), or SERVFAIL when there is none.
    pub async fn forward(&self, query: &Message, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let labels = TransportLabels {
            transport: match transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
            },
        };
        self.metrics.upstream_requests.get_or_create(&labels).inc();
        match self.forwarder.forward(query, packet, transport).await {
            Ok(reply) => {
                self.metrics.outcome("forwarded");
                Some(reply)
            }
            Err(e) => {
                tracing::debug!(error = %e, "DNS query not forwarded");
                self.metrics.upstream_failures.get_or_create(&labels).inc();
                self.metrics.outcome("servfail");
                failure(query)
            }
        }
    }
}

/// What a message gets without the upstream.
pub enum Local {
    /// This reply (an answer from the registry, FORMERR).
    Reply(Vec<u8>),
    /// No reply at all.
    Nothing,
    /// To be forwarded.
    Forward(Box<Message>),
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(reply, to).await {
        tracing::debug!(error = %e, "DNS reply not sent");
    }
}

/// SERVFAIL for a query that will not be served.
fn failure(query: &Message) -> Option<Vec<u8>> {
    answer::response_to(query, ResponseCode::ServFail, Vec::new()).to_vec().ok()
}

fn socket_in(netns: &Netns, addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = netns
        .run_here(|| Socket::new(Domain::for_address(addr), kind, Some(protocol)))
        .map_err(|e| io::Error::other(e.to_string()))??;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A new ztunnel binds beside the old one during a hand-over.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

fn udp_in(netns: &Netns, addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket_in(netns, addr, Type::DGRAM, Protocol::UDP)?.into())
}

fn tcp_in(netns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_in(netns, addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}
