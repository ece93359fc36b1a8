//! Sockets in a pod's network namespace: the proxy's listeners (SO_REUSEPORT, so a new ztunnel
//! can bind beside the old one during a hand-over), and the sockets it connects from — marked
//! `0x539` so the pod's redirect rules let them through, and for inbound delivery transparent,
//! bound to the client's address so the application sees who really called.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_shared::hbone::client::Dialer;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::inpod::PROXY_MARK;
use ambit_shared::netns::Netns;

fn netns_err(e: ambit_shared::netns::NetnsError) -> io::Error {
    io::Error::other(e.to_string())
}

fn socket_in(netns: &Netns, domain: Domain) -> io::Result<Socket> {
    let socket = netns.run_here(|| Socket::new(domain, Type::STREAM, Some(Protocol::TCP))).map_err(netns_err)??;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

/// Binds `addr` inside the namespace (an IPv6 address binds IPv6 only; it fails when the
/// namespace has no IPv6).
pub fn listen(netns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_in(netns, Domain::for_address(addr))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// A socket in the namespace that the pod's redirect rules skip.
pub fn marked(netns: &Netns, addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = socket_in(netns, Domain::for_address(addr))?;
    socket.set_mark(PROXY_MARK)?;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(socket)))
}

/// Connects to `dst` in the namespace from `src_ip` (any address: IP_TRANSPARENT), marked so
/// the application's replies are routed back to us.
pub async fn connect_transparent(netns: &Netns, src: std::net::IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket_in(netns, Domain::for_address(dst))?;
    socket.set_mark(PROXY_MARK)?;
    match src {
        std::net::IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        std::net::IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    if src.is_ipv4() == dst.is_ipv4() {
        socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    let stream = with_deadline(TcpSocket::from_std_stream(std::net::TcpStream::from(socket)).connect(dst)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Every connect a proxy makes has a deadline: a destination that never answers must not hold
/// a task (and the client's stream) forever.
async fn with_deadline(connect: impl std::future::Future<Output = io::Result<TcpStream>>) -> io::Result<TcpStream> {
    tokio::time::timeout(ambit_shared::hbone::CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Connects to `dst` from the pod, uncaptured.
pub async fn connect_marked(netns: &Netns, dst: SocketAddr) -> io::Result<TcpStream> {
    let stream = with_deadline(marked(netns, dst)?.connect(dst)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Where a redirected connection was going (SO_ORIGINAL_DST).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() { sock.original_dst_v4()? } else { sock.original_dst_v6()? };
    addr.as_socket().ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// The HBONE pool's dialer for one pod.
pub struct PodDialer(pub Arc<Netns>);

impl Dialer for PodDialer {
    fn socket(&self, addr: SocketAddr) -> io::Result<TcpSocket> {
        marked(&self.0, addr)
    }
}
