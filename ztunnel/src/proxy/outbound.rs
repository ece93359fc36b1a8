//! Outbound (15001): a pod's redirected connection, sent where its original destination
//! points — an HBONE tunnel to the chosen endpoint (or to the waypoint in front of it), or
//! plain TCP from the pod's address when the destination is outside the mesh.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_shared::copy::copy_bidirectional;
use ambit_shared::hbone::client::ConnectRequest;
use ambit_shared::hbone::{copy_tcp_tunnel, forwarded_header, headers, Baggage, HboneError, HBONE_PORT};
use ambit_shared::proto::workload::{gateway_address, GatewayAddress};
use ambit_shared::Identity;
use http::{HeaderMap, HeaderValue};
use tokio::net::TcpStream;

use super::{sockets, Pod, Proxy};
use crate::inpod::rules::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::metrics::{ConnectionRecord, Direction, Labels, Peer, Reporter, ResponseFlags, Security, ServiceLabels};
use crate::state::{pick_endpoint, Destination, Service, State, Workload};

/// Where one connection goes.
#[derive(Debug)]
enum Plan {
    Hbone { hbone_addr: SocketAddr, authority: SocketAddr, identities: Vec<Identity> },
    Direct(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error("service {0} has no healthy endpoint for port {1}")]
    NoEndpoint(String, u16),
    #[error("waypoint {0} cannot be resolved")]
    Waypoint(String),
    #[error("workload {0} has no address")]
    NoAddress(String),
    #[error("connection to the proxy's own port {0}")]
    Loop(u16),
}

fn address_like(w: &Workload, like: IpAddr) -> Option<IpAddr> {
    w.addresses.iter().find(|a| a.is_ipv4() == like.is_ipv4()).or(w.addresses.first()).copied()
}

fn to_workload(w: &Workload, port: u16, like: IpAddr) -> Result<Plan, RouteError> {
    let ip = address_like(w, like).ok_or_else(|| RouteError::NoAddress(w.uid.to_string()))?;
    Ok(if w.hbone {
        Plan::Hbone {
            hbone_addr: SocketAddr::new(ip, HBONE_PORT),
            authority: SocketAddr::new(ip, port),
            identities: vec![w.identity.clone()],
        }
    } else {
        Plan::Direct(SocketAddr::new(ip, port))
    })
}

/// The waypoint's HBONE address and identities; the authority stays the original target.
fn to_waypoint(state: &State, network: &str, gw: &GatewayAddress, authority: SocketAddr) -> Result<Plan, RouteError> {
    let port = u16::try_from(gw.hbone_mtls_port).ok().filter(|p| *p != 0).unwrap_or(HBONE_PORT);
    let describe = || format!("{gw:?}");
    let endpoint = match &gw.destination {
        Some(gateway_address::Destination::Address(a)) => {
            let ip = crate::state::ip_from_bytes(&a.address).ok_or_else(|| RouteError::Waypoint(describe()))?;
            match state.destination(network, SocketAddr::new(ip, port)) {
                Destination::Service { service, .. } => pick_endpoint(&state.endpoints(&service, port)),
                Destination::Workload(w) => Some((w, port)),
                Destination::Passthrough => None,
            }
        }
        Some(gateway_address::Destination::Hostname(h)) => state
            .service(&format!("{}/{}", h.namespace, h.hostname))
            .and_then(|s| pick_endpoint(&state.endpoints(s, port))),
        None => None,
    };
    let (w, _) = endpoint.ok_or_else(|| RouteError::Waypoint(describe()))?;
    let ip = address_like(&w, authority.ip()).ok_or_else(|| RouteError::NoAddress(w.uid.to_string()))?;
    Ok(Plan::Hbone { hbone_addr: SocketAddr::new(ip, port), authority, identities: vec![w.identity.clone()] })
}

/// A routing decision: the plan, and the service and workload the metrics name.
type Routed = (Result<Plan, RouteError>, Option<Arc<Service>>, Option<Arc<Workload>>);

/// Decides, under the read lock, where `dst` goes and what the metrics will say.
fn route(state: &State, network: &str, dst: SocketAddr) -> Routed {
    match state.destination(network, dst) {
        Destination::Service { service, port } => {
            if let Some(gw) = &service.waypoint {
                return (to_waypoint(state, network, gw, dst), Some(service.clone()), None);
            }
            match pick_endpoint(&state.endpoints(&service, port)) {
                Some((w, target)) => (to_workload(&w, target, dst.ip()), Some(service), Some(w)),
                None => (Err(RouteError::NoEndpoint(service.hostname.to_string(), port)), Some(service), None),
            }
        }
        Destination::Workload(w) => {
            let plan = match &w.waypoint {
                Some(gw) => to_waypoint(state, network, gw, dst),
                None => to_workload(&w, dst.port(), dst.ip()),
            };
            (plan, None, Some(w))
        }
        Destination::Passthrough => (Ok(Plan::Direct(dst)), None, None),
    }
}

fn principal(id: &Identity) -> Arc<str> {
    Arc::from(id.to_string())
}

fn baggage(w: Option<&Workload>) -> Option<HeaderValue> {
    let w = w?;
    let b = Baggage {
        cluster: Some(w.cluster_id.to_string()),
        namespace: Some(w.namespace.to_string()),
        workload: Some(("pod".into(), w.workload_name.to_string())),
        service: Some(w.canonical_name.to_string()),
        version: Some(w.canonical_revision.to_string()),
        region: None,
        zone: None,
    };
    b.to_header().ok()
}

fn flags_of(e: &HboneError) -> ResponseFlags {
    match e {
        HboneError::Tls { .. } => ResponseFlags::TlsFailure,
        HboneError::Rejected(s) if *s == http::StatusCode::UNAUTHORIZED => ResponseFlags::Deny,
        _ => ResponseFlags::Connect,
    }
}

pub(super) async fn handle(proxy: Arc<Proxy>, pod: Arc<Pod>, mut client: TcpStream, peer: SocketAddr) {
    let _guard = proxy.guard();
    let _ = client.set_nodelay(true);
    let network = proxy.config.network.as_str();
    let dst = match sockets::original_dst(&client) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::debug!(pod = %pod.uid, %peer, error = %e, "outbound connection without an original destination");
            return;
        }
    };
    let (plan, service, dst_workload, src_workload) = {
        let state = proxy.state.read().unwrap_or_else(|p| p.into_inner());
        let src =
            state.workload(&pod.workload_uid).cloned().or_else(|| state.workload_by_addr(network, peer.ip()).cloned());
        let (plan, service, dst_w) = route(&state, network, dst);
        (plan, service, dst_w, src)
    };
    let plan = match plan {
        Ok(Plan::Direct(addr))
            if matches!(addr.port(), OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | INBOUND_HBONE_PORT)
                && address_is_pod(&src_workload, addr.ip()) =>
        {
            Err(RouteError::Loop(addr.port()))
        }
        other => other,
    };
    let source = match &src_workload {
        Some(w) => Peer::from_workload(w, Some(principal(&pod.identity))),
        None => Peer::from_principal(Some(principal(&pod.identity))),
    };
    let destination = match &dst_workload {
        Some(w) => Peer::from_workload(w, w.hbone.then(|| principal(&w.identity))),
        None => Peer::unknown(),
    };
    let security = if matches!(plan, Ok(Plan::Hbone { .. })) { Security::MutualTls } else { Security::Unknown };
    let labels = Labels {
        reporter: Reporter::Source,
        source,
        destination,
        service: service.as_deref().map(ServiceLabels::of),
        security,
        flags: ResponseFlags::None,
    };
    let mut record = ConnectionRecord::new(&proxy.metrics, labels, Direction::Outbound, peer, dst);
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            record.labels.flags = ResponseFlags::Connect;
            record.finish(0, 0, Some(&e));
            return;
        }
    };
    match plan {
        Plan::Direct(addr) => match sockets::connect_marked(&pod.netns, addr).await {
            Ok(mut upstream) => {
                record.open();
                let (t, err) = copy_bidirectional(&mut client, &mut upstream).await;
                record.finish(t.a_to_b, t.b_to_a, err.as_ref().map(|e| e as &dyn std::fmt::Display));
            }
            Err(e) => {
                record.labels.flags = ResponseFlags::Connect;
                record.finish(0, 0, Some(&e));
            }
        },
        Plan::Hbone { hbone_addr, authority, identities } => {
            record.hbone_addr = Some(hbone_addr);
            let cert = match Box::pin(proxy.certs.fetch(&pod.identity)).await {
                Ok(cert) => cert,
                Err(e) => {
                    record.labels.flags = ResponseFlags::IdentityError;
                    record.finish(0, 0, Some(&e));
                    return;
                }
            };
            let mut headers = HeaderMap::new();
            if let Ok(v) = forwarded_header(peer, None) {
                headers.insert(headers::FORWARDED, v);
            }
            if let Some(v) = baggage(src_workload.as_deref()) {
                headers.insert(headers::BAGGAGE, v);
            }
            let request =
                ConnectRequest { source: cert, destination_identities: identities, hbone_addr, authority, headers };
            // Boxed so the connection's long-lived future does not carry the pool's states.
            match Box::pin(pod.hbone.connect(&request)).await {
                Ok(mut tunnel) => {
                    record.open();
                    let (t, err) = copy_tcp_tunnel(&mut client, &mut tunnel).await;
                    record.finish(t.a_to_b, t.b_to_a, err.as_ref().map(|e| e as &dyn std::fmt::Display));
                }
                Err(e) => {
                    record.labels.flags = flags_of(&e);
                    record.finish(0, 0, Some(&e));
                }
            }
        }
    }
}

fn address_is_pod(w: &Option<Arc<Workload>>, ip: IpAddr) -> bool {
    ip.is_loopback() || w.as_ref().is_some_and(|w| w.addresses.contains(&ip))
}

#[cfg(test)]
mod tests;
