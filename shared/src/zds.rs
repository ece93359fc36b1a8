//! ZDS, the protocol by which a node agent hands pods' network namespaces to ztunnel
//! (Istio's `istio.workload.zds`), over a Unix `SOCK_SEQPACKET` socket: one protobuf message
//! per packet (at most 1 KiB), the pod's netns file descriptor riding along as `SCM_RIGHTS`.
//!
//! The agent serves; ztunnel connects and says `ZdsHello{V1}`; the agent sends `add` (with the
//! fd) for every pod, optionally `keep`, then `snapshot_sent`, then `add`/`del` as pods come
//! and go; ztunnel answers each request with `Ack{error}`. Both ends live here so ours can be
//! driven by Istio's istio-cni and Istio's ztunnel by our agent.
//!
//! This module owns the sockets and framing; what a pod means is the caller's business.

#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use prost::Message;
use tokio::io::unix::AsyncFd;

use crate::proto::zds::{
    workload_request, workload_response, Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version,
    WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

/// Istio's limit on one ZDS message.
pub const MAX_MESSAGE: usize = 1024;
/// Istio's socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ZDS socket {path}: {source}")]
    Socket { path: String, source: nix::Error },
    #[error("ZDS I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("ZDS message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ZDS message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("ZDS peer closed the connection")]
    Closed,
    #[error("ZDS peer sent an unexpected message: {0}")]
    Unexpected(String),
    #[error("ZDS add for {0} carried no network namespace fd")]
    NoFd(String),
    #[error("ztunnel refused {uid}: {error}")]
    Refused { uid: String, error: String },
    #[error("ZDS version {0} is not supported (only V1)")]
    Version(i32),
    #[error("ZDS peer sent no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
}

/// How long the agent waits for a connecting ztunnel's hello.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A SOCK_SEQPACKET connection, non-blocking under tokio.
pub struct Conn {
    fd: AsyncFd<OwnedFd>,
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
}

fn send_raw(fd: RawFd, bytes: &[u8], pass: Option<BorrowedFd<'_>>) -> std::io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let fds = pass.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = fds.as_ref().map(|f| ControlMessage::ScmRights(f)).into_iter().collect();
    socket::sendmsg::<()>(fd, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(std::io::Error::from)
}

fn recv_raw(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut received = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our table for us (SCM_RIGHTS); we
                // own it, and wrapping it at once makes sure it is closed exactly once.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ZDS message truncated"));
    }
    Ok((msg.bytes, received))
}

/// Registers a socket we own with tokio's reactor.
fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, ZdsError> {
    // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`, so the descriptor stays open and
    // the same for the `AsyncFd`'s whole life, and `OwnedFd::as_raw_fd` always returns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| ZdsError::Io(e.into()))
}

impl Conn {
    fn new(fd: OwnedFd) -> Result<Self, ZdsError> {
        Ok(Conn { fd: register(fd)? })
    }

    /// Connects to an agent's socket.
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        let err = |source| ZdsError::Socket { path: path.display().to_string(), source };
        let fd = seqpacket().map_err(err)?;
        let addr = UnixAddr::new(path).map_err(err)?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(nix::Error::EINPROGRESS) => {}
            Err(e) => return Err(err(e)),
        }
        let conn = Conn::new(fd)?;
        let _ = conn.fd.writable().await?;
        Ok(conn)
    }

    /// Sends one message, with an fd if given.
    pub async fn send(&self, msg: &impl Message, pass: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let bytes = msg.encode_to_vec();
        if bytes.len() > MAX_MESSAGE {
            return Err(ZdsError::TooLarge(bytes.len()));
        }
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| send_raw(inner.get_ref().as_raw_fd(), &bytes, pass)) {
                Ok(result) => return result.map(drop).map_err(Into::into),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the fd that came with it.
    pub async fn recv<M: Message + Default>(&self) -> Result<(M, Option<OwnedFd>), ZdsError> {
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_raw(inner.get_ref().as_raw_fd(), &mut buf)) {
                Ok(Ok((0, _))) => return Err(ZdsError::Closed),
                Ok(Ok((n, fd))) => return Ok((M::decode(&buf[..n])?, fd)),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The agent's listening socket.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// Binds `path` (replacing a stale socket file left by a previous run).
    pub fn bind(path: &Path) -> Result<Self, ZdsError> {
        let err = |source| ZdsError::Socket { path: path.display().to_string(), source };
        let _ = std::fs::remove_file(path);
        let fd = seqpacket().map_err(err)?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(err)?).map_err(err)?;
        socket::listen(&fd, Backlog::new(16).map_err(err)?).map_err(err)?;
        Ok(Listener { fd: register(fd)? })
    }

    /// Accepts one ztunnel and reads its hello.
    pub async fn accept(&self) -> Result<AgentConn, ZdsError> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|inner| {
                socket::accept4(inner.get_ref().as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC)
                    .map_err(std::io::Error::from)
            });
            match accepted {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let conn = Conn::new(unsafe { OwnedFd::from_raw_fd(raw) })?;
                    // A peer that connects and never says hello must not stall the agent.
                    let (hello, _) = tokio::time::timeout(HELLO_TIMEOUT, conn.recv::<ZdsHello>())
                        .await
                        .map_err(|_| ZdsError::HelloTimeout)??;
                    if hello.version != Version::V1 as i32 {
                        return Err(ZdsError::Version(hello.version));
                    }
                    return Ok(AgentConn { conn });
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The agent's side of one ztunnel connection.
pub struct AgentConn {
    conn: Conn,
}

impl AgentConn {
    async fn request(
        &self,
        uid: &str,
        payload: workload_request::Payload,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        self.conn.send(&WorkloadRequest { payload: Some(payload) }, fd).await?;
        let (resp, _) = self.conn.recv::<WorkloadResponse>().await?;
        match resp.payload {
            Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(()),
            Some(workload_response::Payload::Ack(Ack { error })) => {
                Err(ZdsError::Refused { uid: uid.to_owned(), error })
            }
            None => Err(ZdsError::Unexpected("empty response".into())),
        }
    }

    /// Hands a pod's network namespace to ztunnel and waits for its ack.
    pub async fn add(&self, uid: &str, info: WorkloadInfo, netns: BorrowedFd<'_>) -> Result<(), ZdsError> {
        let payload = workload_request::Payload::Add(AddWorkload { uid: uid.to_owned(), workload_info: Some(info) });
        self.request(uid, payload, Some(netns)).await
    }

    /// During the snapshot: keep a pod ztunnel already has.
    pub async fn keep(&self, uid: &str) -> Result<(), ZdsError> {
        self.request(uid, workload_request::Payload::Keep(KeepWorkload { uid: uid.to_owned() }), None).await
    }

    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        self.request(uid, workload_request::Payload::Del(DelWorkload { uid: uid.to_owned() }), None).await
    }

    /// Ends the snapshot: ztunnel drops pods it was not told about.
    pub async fn snapshot_sent(&self) -> Result<(), ZdsError> {
        self.request("", workload_request::Payload::SnapshotSent(SnapshotSent {}), None).await
    }
}

/// One instruction ztunnel receives.
#[derive(Debug)]
pub enum ZdsEvent {
    Add { uid: String, info: WorkloadInfo, netns: OwnedFd },
    Keep { uid: String },
    Del { uid: String },
    SnapshotSent,
}

/// ztunnel's side.
pub struct ProxyConn {
    conn: Conn,
}

impl ProxyConn {
    /// Connects and says hello.
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        let conn = Conn::connect(path).await?;
        conn.send(&ZdsHello { version: Version::V1 as i32 }, None).await?;
        Ok(ProxyConn { conn })
    }

    /// The next instruction. Every one must be answered with [`ProxyConn::ack`].
    pub async fn next(&self) -> Result<ZdsEvent, ZdsError> {
        let (req, fd) = self.conn.recv::<WorkloadRequest>().await?;
        match req.payload {
            Some(workload_request::Payload::Add(add)) => {
                let netns = fd.ok_or_else(|| ZdsError::NoFd(add.uid.clone()))?;
                Ok(ZdsEvent::Add { uid: add.uid, info: add.workload_info.unwrap_or_default(), netns })
            }
            Some(workload_request::Payload::Keep(k)) => Ok(ZdsEvent::Keep { uid: k.uid }),
            Some(workload_request::Payload::Del(d)) => Ok(ZdsEvent::Del { uid: d.uid }),
            Some(workload_request::Payload::SnapshotSent(_)) => Ok(ZdsEvent::SnapshotSent),
            None => Err(ZdsError::Unexpected("empty request".into())),
        }
    }

    /// Answers the last instruction (`None`: done; `Some(reason)`: refused).
    pub async fn ack(&self, error: Option<String>) -> Result<(), ZdsError> {
        let ack = Ack { error: error.unwrap_or_default() };
        self.conn.send(&WorkloadResponse { payload: Some(workload_response::Payload::Ack(ack)) }, None).await
    }
}

impl AsFd for ProxyConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.fd.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests;
