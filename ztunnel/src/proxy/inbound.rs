//! Inbound: tunnels arriving on a pod's 15008 (identity verified by mutual TLS) and plaintext
//! connections redirected to its 15006 (no identity). Both are authorized against the pod's
//! policies (Istio's order: DENY, then ALLOW, default allow) before the application is dialed,
//! from the client's own address.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ambit_shared::copy::copy_bidirectional;
use ambit_shared::hbone::server::{Handler, InboundConnect, Responder};
use ambit_shared::hbone::{copy_tcp_tunnel, H2Stream};
use ambit_shared::Identity;
use tokio::net::TcpStream;

use super::error::{ConnError, Refused};
use super::{sockets, Pod, Proxy};
use crate::inpod::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::metrics::{ConnectionRecord, Direction, Labels, Reporter, ResponseFlags, Security};
use crate::rbac::{Authorize, ConnectionInfo, Denial};
use ambit_dataplane::labels::{Peer, ServiceLabels};
use ambit_dataplane::state::Workload;

/// What was decided about one inbound connection.
struct Admission {
    /// The connection's telemetry, labelled with both ends.
    record: ConnectionRecord,
    /// Whether the application may be dialed.
    verdict: Result<(), Refused>,
}

/// Looks up both ends, builds the labels and authorizes, under one read lock.
fn admit(proxy: &Proxy, pod: &Pod, src: SocketAddr, dst: SocketAddr, peer_identity: Option<&Identity>) -> Admission {
    let network = proxy.config.network.as_str();
    let state = proxy.state.read().unwrap_or_else(|p| p.into_inner());
    let dst_w = state.workload_by_addr(network, dst.ip()).filter(|w| *w.uid == *pod.workload_uid).cloned();
    // The client's workload: by address, and over mTLS only when its identity is the one it
    // proved (labels only; authorization never trusts an address for an identity).
    let src_w =
        state.workload_by_addr(network, src.ip()).filter(|w| peer_identity.is_none_or(|id| *id == w.identity)).cloned();
    let principal = |id: &Identity| Arc::<str>::from(id.to_string());
    let source = match &src_w {
        Some(w) => Peer::from_workload(w, peer_identity.map(principal)),
        None => Peer::from_principal(peer_identity.map(principal)),
    };
    let destination = match &dst_w {
        Some(w) => Peer::from_workload(w, Some(pod.principal.clone())),
        None => Peer::from_principal(Some(pod.principal.clone())),
    };
    let service = dst_w.as_deref().and_then(|w| service_for(&state, w, dst.port()));
    let labels = Labels {
        reporter: Reporter::Destination,
        source,
        destination,
        service,
        security: if peer_identity.is_some() { Security::MutualTls } else { Security::Unknown },
        flags: ResponseFlags::None,
    };
    let record = ConnectionRecord::new(&proxy.metrics, labels, Direction::Inbound, src, dst);
    let verdict = match &dst_w {
        None => Err(Refused::NotThisPod { dst, pod: pod.workload_uid.clone() }),
        Some(w) if matches!(dst.port(), OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | INBOUND_HBONE_PORT) => {
            Err(Refused::ProxyPort { port: dst.port(), uid: w.uid.clone() })
        }
        Some(w) => {
            let info = ConnectionInfo { source_identity: peer_identity, source_ip: src.ip(), destination: dst };
            state.authorize(w, &info).map_err(Refused::Denied)
        }
    };
    Admission { record, verdict }
}

/// The service whose target port this is on the workload (for the `destination_service` label).
fn service_for(state: &ambit_dataplane::state::State, w: &Workload, port: u16) -> Option<ServiceLabels> {
    w.services.iter().find_map(|(key, ports)| {
        let maps = ports
            .iter()
            .any(|p| p.target_port == u32::from(port) || (p.target_port == 0 && p.service_port == u32::from(port)));
        maps.then(|| state.service(key).map(|s| ServiceLabels::of(s))).flatten()
    })
}

pub(super) struct HboneHandler {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
}

impl Handler for HboneHandler {
    async fn handle(&self, req: InboundConnect, responder: Responder) {
        let _guard = self.proxy.guard();
        // Admission and the dial are boxed and gone once the tunnel is accepted: the tunnel's
        // future, alive for its whole life, carries only the copy (see `sizes`).
        let Some((mut app, mut tunnel, mut record, who)) = Box::pin(self.open(req, responder)).await else { return };
        record.open();
        // app → tunnel is the response direction: received; tunnel → app: sent.
        let fd = app.as_raw_fd();
        let copy = std::pin::pin!(copy_tcp_tunnel(&mut app, &mut tunnel));
        let (t, err, denial) = while_allowed(&self.proxy, &who, fd, copy).await;
        finish(record, t.b_to_a, t.a_to_b, err, denial);
    }
}

/// Who an open connection is from and to, for authorizing it again.
struct Who {
    pod_uid: Arc<str>,
    identity: Option<Identity>,
    src: SocketAddr,
    dst: SocketAddr,
}

/// Runs `copy` while the pod's policies still allow the connection: checked again once it is
/// running (a change between admission and now is not missed) and at every xDS update after;
/// once denied (a new DENY, an ALLOW withdrawn, the pod gone) the application side is shut
/// down so the copy ends with its byte counts — or, if the client keeps its side open, dropped
/// after a grace period — and the client sees the connection close. A policy the pod names that
/// has not arrived yet (ADDRESS and AUTHORIZATION updates come separately) is not a reason to
/// close: admission already failed closed on it, and the next update settles it. Istio's
/// ztunnel keeps such connections (ztunnel#311).
async fn while_allowed<F, T, E>(
    proxy: &Proxy,
    who: &Who,
    app_fd: RawFd,
    mut copy: std::pin::Pin<&mut F>,
) -> (T, Option<E>, Option<Denial>)
where
    F: std::future::Future<Output = (T, Option<E>)>,
    T: Default,
{
    let mut changes = proxy.changes.clone();
    // Boxed: the watch lives on the heap (one small allocation per connection), so the
    // connection's future stays the copy's size (see `sizes`).
    let denied = Box::pin(async move {
        loop {
            changes.mark_unchanged();
            {
                let network = proxy.config.network.as_str();
                let state = proxy.state.read().unwrap_or_else(|p| p.into_inner());
                let Some(w) = state.workload_by_addr(network, who.dst.ip()).filter(|w| *w.uid == *who.pod_uid) else {
                    return Denial::NotAllowed;
                };
                let info = ConnectionInfo {
                    source_identity: who.identity.as_ref(),
                    source_ip: who.src.ip(),
                    destination: who.dst,
                };
                match state.authorize(w, &info) {
                    Ok(()) | Err(Denial::UnknownPolicy(_)) => {}
                    Err(denial) => return denial,
                }
            }
            if changes.changed().await.is_err() {
                return std::future::pending::<Denial>().await;
            }
        }
    });
    tokio::select! {
        (t, err) = copy.as_mut() => (t, err, None),
        denial = denied => {
            // Both directions of the application's socket: the copy sees it end.
            let _ = nix::sys::socket::shutdown(app_fd, nix::sys::socket::Shutdown::Both);
            match tokio::time::timeout(REVOKED_GRACE, copy.as_mut()).await {
                Ok((t, err)) => (t, err, Some(denial)),
                // The client holds its side open: the copy is dropped (the caller closes both).
                Err(_) => (T::default(), None, Some(denial)),
            }
        }
    }
}

/// How long a denied connection's copy may take to end once the application side is shut.
const REVOKED_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Records the end of an inbound connection; one closed by a policy change is counted with
/// `response_flags="DENY"` and logged with the policy.
fn finish<E: std::fmt::Display>(
    mut record: ConnectionRecord,
    sent: u64,
    received: u64,
    err: Option<E>,
    denial: Option<Denial>,
) {
    match denial {
        Some(denial) => {
            record.labels.flags = ResponseFlags::Deny;
            let why = format!("closed: {denial} (the policies changed while it was open)");
            record.finish(sent, received, Some(&why as &dyn std::fmt::Display));
        }
        None => record.finish(sent, received, err.as_ref().map(|e| e as &dyn std::fmt::Display)),
    }
}

impl HboneHandler {
    /// Admits the tunnel, dials the application and accepts the CONNECT; `None` when refused or
    /// failed (answered and recorded here).
    async fn open(
        &self,
        req: InboundConnect,
        responder: Responder,
    ) -> Option<(TcpStream, H2Stream, ConnectionRecord, Who)> {
        let (src, authority) = (req.peer_addr, req.authority);
        let who = Who {
            pod_uid: Arc::from(self.pod.workload_uid.as_str()),
            identity: Some(req.peer_identity.clone()),
            src,
            dst: authority,
        };
        let Admission { record, verdict } = admit(&self.proxy, &self.pod, src, authority, Some(&req.peer_identity));
        // The request's headers are not needed past admission.
        drop(req);
        let dialed = match verdict {
            Ok(()) => sockets::connect_transparent(&self.pod.netns, src.ip(), authority).await.map_err(ConnError::Dial),
            Err(refused) => Err(ConnError::Refused(refused)),
        };
        let app = match dialed {
            Ok(app) => app,
            Err(e) => {
                responder.reject(e.status());
                record.fail(&e);
                return None;
            }
        };
        match responder.accept() {
            Ok(tunnel) => Some((app, tunnel, record, who)),
            Err(e) => {
                record.fail(&ConnError::Accept(e));
                None
            }
        }
    }
}

pub(super) async fn plaintext(proxy: Arc<Proxy>, pod: Arc<Pod>, mut client: TcpStream, src: SocketAddr) {
    let _guard = proxy.guard();
    let _ = client.set_nodelay(true);
    let dst = match sockets::original_dst(&client) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::debug!(pod = %pod.uid, %src, error = %e, "inbound connection without an original destination");
            return;
        }
    };
    let Admission { mut record, verdict } = admit(&proxy, &pod, src, dst, None);
    if let Err(refused) = verdict {
        record.fail(&ConnError::Refused(refused));
        return;
    }
    // Boxed: the dial's state is gone once it completes (see `sizes`).
    match Box::pin(sockets::connect_transparent(&pod.netns, src.ip(), dst)).await {
        Ok(mut app) => {
            record.open();
            let who = Who { pod_uid: Arc::from(pod.workload_uid.as_str()), identity: None, src, dst };
            let fd = app.as_raw_fd();
            let copy = std::pin::pin!(copy_bidirectional(&mut client, &mut app));
            let (t, err, denial) = while_allowed(&proxy, &who, fd, copy).await;
            finish(record, t.a_to_b, t.b_to_a, err, denial);
        }
        Err(e) => record.fail(&ConnError::Dial(e)),
    }
}
