//! Outbound (15001): a pod's redirected connection, sent where its original destination
//! points — an HBONE tunnel to the chosen endpoint (or to the waypoint in front of it), or
//! plain TCP from the pod's address when the destination is outside the mesh.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_shared::copy::copy_bidirectional;
use ambit_shared::hbone::client::ConnectRequest;
use ambit_shared::hbone::{copy_tcp_tunnel, forwarded_header, headers, Baggage, H2Stream, HBONE_PORT};
use ambit_shared::proto::workload::{gateway_address, GatewayAddress};
use ambit_shared::Identity;
use http::{HeaderMap, HeaderValue};
use tokio::net::TcpStream;

use super::error::{ConnError, RouteError};
use super::{sockets, Pod, Proxy};
use crate::inpod::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::metrics::{ConnectionRecord, Direction, Labels, Reporter, ResponseFlags, Security};
use ambit_dataplane::labels::{Peer, ServiceLabels};
use ambit_dataplane::resolve::outside_ok;
use ambit_dataplane::state::{pick_endpoint, Destination, Service, State, Workload};

/// Where one connection goes.
#[derive(Debug)]
enum Plan {
    Hbone {
        hbone_addr: SocketAddr,
        authority: SocketAddr,
        identities: Vec<Identity>,
    },
    Direct(SocketAddr),
    /// Plain TCP to `host` (resolved when connecting), port `port`: a DNS endpoint; `like`
    /// picks the address family.
    Resolve {
        host: Arc<str>,
        port: u16,
        like: IpAddr,
    },
}

fn address_like(w: &Workload, like: IpAddr) -> Option<IpAddr> {
    w.addresses.iter().find(|a| a.is_ipv4() == like.is_ipv4()).or(w.addresses.first()).copied()
}

fn to_workload(w: &Workload, port: u16, like: IpAddr) -> Result<Plan, RouteError> {
    if let Some(host) = w.hostname.as_ref().filter(|_| w.resolvable()) {
        return Ok(Plan::Resolve { host: host.clone(), port, like });
    }
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
/// The waypoint pod is chosen as any endpoint is: closest to the client when the waypoint's
/// Service prefers close endpoints.
fn to_waypoint(
    state: &State,
    network: &str,
    gw: &GatewayAddress,
    authority: SocketAddr,
    src: Option<&Workload>,
) -> Result<Plan, RouteError> {
    let port = u16::try_from(gw.hbone_mtls_port).ok().filter(|p| *p != 0).unwrap_or(HBONE_PORT);
    let describe = || format!("{gw:?}");
    let endpoint = match &gw.destination {
        Some(gateway_address::Destination::Address(a)) => {
            let ip =
                ambit_dataplane::state::ip_from_bytes(&a.address).ok_or_else(|| RouteError::Waypoint(describe()))?;
            match state.destination(network, SocketAddr::new(ip, port)) {
                Destination::Service { service, .. } => {
                    pick_endpoint(&state.endpoints_for(&service, port, network, src))
                }
                Destination::Workload(w) => Some((w, port)),
                Destination::Passthrough => None,
            }
        }
        Some(gateway_address::Destination::Hostname(h)) => state
            .service(&format!("{}/{}", h.namespace, h.hostname))
            .and_then(|s| pick_endpoint(&state.endpoints_for(s, port, network, src))),
        None => None,
    };
    let (w, _) = endpoint.ok_or_else(|| RouteError::Waypoint(describe()))?;
    let ip = address_like(&w, authority.ip()).ok_or_else(|| RouteError::NoAddress(w.uid.to_string()))?;
    Ok(Plan::Hbone { hbone_addr: SocketAddr::new(ip, port), authority, identities: vec![w.identity.clone()] })
}

/// A routing decision for one outbound connection: what `route` found by looking things up.
#[derive(Debug)]
struct Routed {
    /// Where the connection goes, or why it cannot go anywhere.
    plan: Result<Plan, RouteError>,
    /// The service the connection was addressed to, when it was (the `destination_service*`
    /// labels).
    service: Option<Arc<Service>>,
    /// The workload that will serve it, when the proxy chose it (the `destination_*` labels;
    /// `None` behind a waypoint, which chooses).
    workload: Option<Arc<Workload>>,
}

/// Decides, under the read lock, where `dst` goes and what the metrics will say. `src`, the
/// connecting pod's workload, decides whether a destination outside the registry may be
/// reached directly (its outbound traffic policy; a pod whose workload is not known yet has
/// none, so the mesh default `ALLOW_ANY` applies).
fn route(state: &State, network: &str, dst: SocketAddr, src: Option<&Workload>) -> Routed {
    // A mesh workload's own address is that workload's, whatever else claims it: no
    // ServiceEntry (from any namespace) can take traffic addressed to a meshed pod. Cluster IPs
    // are never pod addresses, so no Service is shadowed by this.
    if let Some(w) = state.workload_by_addr(network, dst.ip()).filter(|w| w.hbone).cloned() {
        let service = match state.destination(network, dst) {
            Destination::Service { service, .. } => Some(service),
            _ => None,
        };
        let plan = to_known_workload(state, network, &w, dst, src);
        return Routed { plan, service, workload: Some(w) };
    }
    let registry_only = src.is_some_and(|w| w.registry_only);
    match state.destination(network, dst) {
        Destination::Service { service, port } => {
            if let Some(gw) = &service.waypoint {
                let plan = to_waypoint(state, network, gw, dst, src);
                return Routed { plan, service: Some(service.clone()), workload: None };
            }
            if service.passthrough {
                // A registered destination (a ServiceEntry with resolution NONE): reached as
                // addressed, counted as the service — on the ports it declares; any other port
                // of the address is outside the registry.
                if !service.ports.iter().any(|p| p.service_port == u32::from(port)) && registry_only {
                    return Routed { plan: Err(RouteError::NotInRegistry(dst)), service: None, workload: None };
                }
                return Routed { plan: Ok(Plan::Direct(dst)), service: Some(service), workload: None };
            }
            match pick_endpoint(&state.endpoints_for(&service, port, network, src)) {
                // An endpoint outside the mesh whose address is a mesh workload's (a
                // ServiceEntry endpoint naming a pod): that workload, over HBONE.
                Some((w, target)) if !w.hbone => {
                    let meshed = w
                        .addresses
                        .iter()
                        .find_map(|ip| state.workload_by_addr(network, *ip).filter(|m| m.hbone).cloned());
                    match meshed {
                        Some(m) => {
                            let plan = match &m.waypoint {
                                Some(gw) => to_waypoint(state, network, gw, dst, src),
                                None => to_workload(&m, target, dst.ip()),
                            };
                            Routed { plan, service: Some(service), workload: Some(m) }
                        }
                        // A Service's virtual address (or loopback, link-local…) as an
                        // endpoint would reach the Service's pods in plaintext, around their
                        // waypoint: refused.
                        None => {
                            match w.addresses.iter().find(|ip| !outside_ok(state, network, **ip, Some(&service.key))) {
                                Some(ip) => Routed {
                                    plan: Err(RouteError::Forbidden(*ip)),
                                    service: Some(service),
                                    workload: Some(w),
                                },
                                None => Routed {
                                    plan: to_workload(&w, target, dst.ip()),
                                    service: Some(service),
                                    workload: Some(w),
                                },
                            }
                        }
                    }
                }
                Some((w, target)) => {
                    Routed { plan: to_workload(&w, target, dst.ip()), service: Some(service), workload: Some(w) }
                }
                None => {
                    let plan = Err(RouteError::NoEndpoint(service.hostname.to_string(), port));
                    Routed { plan, service: Some(service), workload: None }
                }
            }
        }
        // A host-network workload's address is its node's: every port of the node (kubelet,
        // sshd, node ports) would count as that workload. Under REGISTRY_ONLY it is reached
        // through its services only.
        Destination::Workload(w) if w.host_network && registry_only => {
            Routed { plan: Err(RouteError::NotInRegistry(dst)), service: None, workload: None }
        }
        Destination::Workload(w) => {
            let plan = to_known_workload(state, network, &w, dst, src);
            Routed { plan, service: None, workload: Some(w) }
        }
        Destination::Passthrough if registry_only => {
            Routed { plan: Err(RouteError::NotInRegistry(dst)), service: None, workload: None }
        }
        Destination::Passthrough => Routed { plan: Ok(Plan::Direct(dst)), service: None, workload: None },
    }
}

/// A connection addressed to a workload: through its waypoint when it has one, else to it.
fn to_known_workload(
    state: &State,
    network: &str,
    w: &Workload,
    dst: SocketAddr,
    src: Option<&Workload>,
) -> Result<Plan, RouteError> {
    match &w.waypoint {
        Some(gw) => to_waypoint(state, network, gw, dst, src),
        None => to_workload(w, dst.port(), dst.ip()),
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
        let Routed { plan, service, workload } = route(&state, network, dst, src.as_deref());
        (plan, service, workload, src)
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
        Some(w) => Peer::from_workload(w, Some(pod.principal.clone())),
        None => Peer::from_principal(Some(pod.principal.clone())),
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
        service: match service.as_deref() {
            Some(s) => Some(ServiceLabels::of(s)),
            // Istio's name for where refused registry-only traffic goes.
            None if matches!(plan, Err(RouteError::NotInRegistry(_))) => Some(ServiceLabels::black_hole()),
            None => None,
        },
        security,
        flags: ResponseFlags::None,
    };
    let mut record = ConnectionRecord::new(&proxy.metrics, labels, Direction::Outbound, peer, dst);
    // Opening is boxed and gone once the upstream is there: the connection's future, alive for
    // its whole life, carries only the carrying state (see `sizes`).
    let opened = match plan {
        Err(e) => Err(ConnError::Route(e)),
        Ok(Plan::Direct(addr)) => {
            Box::pin(sockets::connect_marked(&pod.netns, addr)).await.map(Upstream::Tcp).map_err(ConnError::Dial)
        }
        Ok(Plan::Resolve { host, port, like }) => Box::pin(async {
            // An answer must not lead where a ServiceEntry could not: the pod itself, the
            // node's link-local services, a meshed pod or a Service's address in plaintext.
            let own = service.as_ref().map(|s| s.key.clone());
            let allowed = |ip| {
                let state = proxy.state.read().unwrap_or_else(|p| p.into_inner());
                ambit_dataplane::resolve::outside_ok(&state, network, ip, own.as_deref())
            };
            let ip = match proxy.resolver.resolve_outside(&host, like, allowed).await {
                Ok(ip) => ip,
                Err(ambit_dataplane::resolve::ResolveError::Refused { ip, .. }) => {
                    return Err(ConnError::Route(RouteError::Resolved(host.to_string(), ip)))
                }
                Err(e) => return Err(e.into()),
            };
            sockets::connect_marked(&pod.netns, SocketAddr::new(ip, port)).await.map_err(ConnError::Dial)
        })
        .await
        .map(Upstream::Tcp),
        Ok(Plan::Hbone { hbone_addr, authority, identities }) => {
            record.hbone_addr = Some(hbone_addr);
            let hop = Hop { hbone_addr, authority, identities };
            Box::pin(open_tunnel(&proxy, &pod, peer, src_workload.as_deref(), hop)).await.map(Upstream::Tunnel)
        }
    };
    drop((src_workload, dst_workload, service));
    match opened {
        Ok(upstream) => {
            record.open();
            let (t, err) = match upstream {
                Upstream::Tcp(mut tcp) => copy_bidirectional(&mut client, &mut tcp).await,
                Upstream::Tunnel(mut tunnel) => copy_tcp_tunnel(&mut client, &mut tunnel).await,
            };
            record.finish(t.a_to_b, t.b_to_a, err.as_ref().map(|e| e as &dyn std::fmt::Display));
        }
        Err(e) => record.fail(&e),
    }
}

/// Where an outbound connection's bytes go once it is open.
enum Upstream {
    /// Plain TCP from the pod's address to a destination outside the mesh.
    Tcp(TcpStream),
    /// An HBONE tunnel to an endpoint or its waypoint.
    Tunnel(H2Stream),
}

/// One HBONE hop: where the tunnel goes and whom it must reach.
struct Hop {
    /// The peer's HBONE listener.
    hbone_addr: SocketAddr,
    /// The CONNECT target (the original destination, or the endpoint's address and port).
    authority: SocketAddr,
    /// The identities the peer's certificate may carry.
    identities: Vec<Identity>,
}

/// Opens an HBONE tunnel with the pod's own certificate, to an endpoint or its waypoint. The
/// request (headers, certificate, identities) is dropped once the tunnel is up.
async fn open_tunnel(
    proxy: &Proxy,
    pod: &Pod,
    peer: SocketAddr,
    src_workload: Option<&Workload>,
    hop: Hop,
) -> Result<H2Stream, ConnError> {
    let cert = proxy.certs.fetch(&pod.identity).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = forwarded_header(peer, None) {
        headers.insert(headers::FORWARDED, v);
    }
    if let Some(v) = baggage(src_workload) {
        headers.insert(headers::BAGGAGE, v);
    }
    let Hop { hbone_addr, authority, identities } = hop;
    let request = ConnectRequest { source: cert, destination_identities: identities, hbone_addr, authority, headers };
    Ok(pod.hbone.connect(&request).await?)
}

fn address_is_pod(w: &Option<Arc<Workload>>, ip: IpAddr) -> bool {
    ip.is_loopback() || w.as_ref().is_some_and(|w| w.addresses.contains(&ip))
}

#[cfg(test)]
mod tests;
