//! Pod → `istio.workload.Workload`, as istiod builds it for ztunnel.

use std::collections::HashMap;
use std::net::IpAddr;

use ambit_shared::proto::workload::{
    gateway_address, Extension, GatewayAddress, Locality, NamespacedHostname, NetworkAddress, NetworkMode, Port,
    PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use crate::model::{
    keys, Gateway, IntOrString, Kind, Labels, Object, PeerAuthentication, Pod, Service, Sidecar, WAYPOINT_CLASSES,
};
use crate::store::{selects, Store};
use crate::translate::authz::{peer_authn_outcome, PeerAuthnChain, STATIC_STRICT};
use crate::translate::{MeshSettings, OutboundMode};

/// The resource name (and uid) of a pod's workload: `<cluster>//Pod/<ns>/<name>`.
pub fn workload_uid(mesh: &MeshSettings, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", mesh.cluster_id)
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = pod.status.pod_ips.iter().filter_map(|p| p.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(pod.status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    ips
}

/// Ambient membership: the pod or its namespace says `ambient`, the pod does not say `none`,
/// or the CNI already reports redirection.
pub fn in_ambient(pod: &Pod, store: &Store) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    // A host-network pod shares its node's network: there is nothing of its own to capture,
    // and advertising it as HBONE would send its clients to the node's 15008 (as Istio, it
    // stays out of the mesh).
    if pod.spec.host_network {
        return false;
    }
    if pod.metadata.annotations.get(keys::REDIRECTION).is_some_and(|v| v == "enabled") {
        return true;
    }
    match pod.metadata.labels.get(keys::DATAPLANE_MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => store
            .namespace(ns)
            .and_then(|n| n.metadata.labels.get(keys::DATAPLANE_MODE))
            .is_some_and(|m| m == "ambient"),
    }
}

/// A node's region, zone and subzone from its topology labels; none when it has none.
fn node_locality(node: &str, store: &Store) -> Option<Locality> {
    let Some(Object::Node(n)) =
        store.get(&crate::model::ObjectKey { kind: Kind::Node, namespace: "".into(), name: node.into() })
    else {
        return None;
    };
    let label = |k: &str| n.metadata.labels.get(k).cloned().unwrap_or_default();
    let locality = Locality {
        region: label(keys::TOPOLOGY_REGION),
        zone: label(keys::TOPOLOGY_ZONE),
        subzone: label(keys::TOPOLOGY_SUBZONE),
    };
    (locality != Locality::default()).then_some(locality)
}

/// The workload name: Deployment from the ReplicaSet owner (minus `-<pod-template-hash>`),
/// CronJob from a Job named `<name>-<digits>`, otherwise the owner or the pod.
fn workload_name(pod: &Pod) -> String {
    if let Some(name) = pod.metadata.labels.get(keys::WORKLOAD_NAME) {
        return name.clone();
    }
    let owner = pod.metadata.owner_references.iter().find(|o| o.controller == Some(true));
    let Some(owner) = owner.filter(|_| pod.metadata.generate_name.is_some()) else {
        return pod.metadata.name.clone();
    };
    match owner.kind.as_str() {
        "ReplicaSet" => match pod.metadata.labels.get(keys::POD_TEMPLATE_HASH) {
            Some(hash) => owner.name.strip_suffix(&format!("-{hash}")).unwrap_or(&owner.name).to_owned(),
            None => owner.name.clone(),
        },
        "Job" => match owner.name.rsplit_once('-') {
            Some((base, digits)) if (8..=10).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) => {
                base.to_owned()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str)
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The waypoint an object (pod or service) uses, given its labels and namespace, if the named
/// Gateway exists, is of a waypoint class and serves this kind of traffic.
pub fn waypoint_for(
    labels: &Labels,
    namespace: &str,
    for_workloads: bool,
    store: &Store,
    mesh: &MeshSettings,
) -> Option<GatewayAddress> {
    waypoint_gateway(labels, namespace, for_workloads, store).map(|gw| gateway_address(gw, mesh))
}

/// The Gateway behind [`waypoint_for`].
pub fn waypoint_gateway<'s>(
    labels: &Labels,
    namespace: &str,
    for_workloads: bool,
    store: &'s Store,
) -> Option<&'s Gateway> {
    let (wp_ns, name) = requested_waypoint(labels, namespace, store)?;
    let gw = store.gateway(&wp_ns, &name)?;
    waypoint_serves(gw, for_workloads).then_some(gw)
}

/// The waypoint an object asks for by label (its own, else its namespace's): (namespace, name).
/// `none` asks for none.
pub fn requested_waypoint(labels: &Labels, namespace: &str, store: &Store) -> Option<(String, String)> {
    let ns_labels = store.namespace(namespace).map(|n| &n.metadata.labels);
    let (name, wp_ns) = match labels.get(keys::USE_WAYPOINT) {
        Some(name) => (name, labels.get(keys::USE_WAYPOINT_NAMESPACE)),
        None => {
            let l = ns_labels?;
            (l.get(keys::USE_WAYPOINT)?, l.get(keys::USE_WAYPOINT_NAMESPACE))
        }
    };
    if name == "none" {
        return None;
    }
    Some((wp_ns.map(String::as_str).unwrap_or(namespace).to_owned(), name.clone()))
}

fn waypoint_serves(gw: &Gateway, for_workloads: bool) -> bool {
    if !WAYPOINT_CLASSES.contains(&gw.spec.gateway_class_name.as_str()) {
        return false;
    }
    let traffic = gw.metadata.labels.get(keys::WAYPOINT_FOR).map(String::as_str).unwrap_or("service");
    match traffic {
        "all" => true,
        "workload" => for_workloads,
        "service" => !for_workloads,
        _ => false,
    }
}

/// Where a waypoint is reached: its published IP when the Gateway has one, otherwise the
/// hostname of the Service the controller deploys for it.
pub fn gateway_address(gw: &Gateway, mesh: &MeshSettings) -> GatewayAddress {
    let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let ip = gw.status.addresses.iter().find_map(|a| a.value.parse::<IpAddr>().ok());
    let destination = match ip {
        Some(ip) => {
            gateway_address::Destination::Address(NetworkAddress { network: String::new(), address: ip_bytes(ip) })
        }
        None => gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: ns.to_owned(),
            hostname: mesh.hostname(&gw.metadata.name, ns),
        }),
    };
    GatewayAddress { destination: Some(destination), hbone_mtls_port: u32::from(ambit_shared::hbone::HBONE_PORT) }
}

/// Service port → target port for this pod; a named target port resolves against the pod's
/// TCP container ports and is left out when the pod has no such port.
fn ports_for(service: &Service, pod: &Pod) -> Vec<Port> {
    service
        .spec
        .ports
        .iter()
        .filter_map(|sp| {
            let target = match &sp.target_port {
                None => sp.port,
                Some(IntOrString::Int(p)) => u16::try_from(*p).ok()?,
                Some(IntOrString::String(name)) => {
                    pod.spec
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter())
                        .find(|cp| {
                            cp.name.as_deref() == Some(name) && cp.protocol.as_deref().unwrap_or("TCP") == "TCP"
                        })?
                        .container_port
                }
            };
            Some(Port { service_port: u32::from(sp.port), target_port: u32::from(target), app_protocol: 0 })
        })
        .collect()
}

/// The names of the authorization policies that select this pod (sorted), then its
/// PeerAuthentication-derived policy, as istiod lists them.
fn policies_for(pod: &Pod, store: &Store, mesh: &MeshSettings) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = &pod.metadata.labels;
    let mut names: Vec<String> = [Some(ns), Some(mesh.root_namespace.as_str())]
        .into_iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .flat_map(|n| store.authorization_policies(Some(n)))
        .filter(|p| p.spec.target_ref.is_none() && p.spec.target_refs.is_empty())
        .filter(|p| p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, labels)))
        .map(|p| format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name))
        .collect();
    names.sort();
    let outcome = peer_authn_outcome(&peer_authn_chain(pod, store, mesh));
    if let Some(converted) = outcome.converted {
        names.push(format!("{}/{}", converted.namespace, converted.name));
    } else if outcome.static_strict {
        names.push(format!("{}/{STATIC_STRICT}", mesh.root_namespace));
    }
    names
}

fn oldest<'a>(it: impl Iterator<Item = &'a PeerAuthentication>) -> Option<&'a PeerAuthentication> {
    it.min_by(|a, b| {
        (a.metadata.creation_timestamp.as_deref(), &a.metadata.name)
            .cmp(&(b.metadata.creation_timestamp.as_deref(), &b.metadata.name))
    })
}

/// A PeerAuthentication without a selector, or with an empty one, covers its whole namespace.
fn namespace_wide(p: &PeerAuthentication) -> bool {
    p.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty())
}

/// The mesh-wide and namespace-wide PeerAuthentications for `namespace` (oldest wins in each).
pub fn inherited_peer_authn<'a>(
    namespace: &str,
    store: &'a Store,
    mesh: &MeshSettings,
) -> (Option<&'a PeerAuthentication>, Option<&'a PeerAuthentication>) {
    let mesh_pa = oldest(store.peer_authentications(Some(&mesh.root_namespace)).filter(|p| namespace_wide(p)));
    let ns_pa = if namespace == mesh.root_namespace {
        None
    } else {
        oldest(store.peer_authentications(Some(namespace)).filter(|p| namespace_wide(p)))
    };
    (mesh_pa, ns_pa)
}

/// The mesh, namespace and workload PeerAuthentications for a pod (oldest wins within each).
pub fn peer_authn_chain<'a>(pod: &Pod, store: &'a Store, mesh: &MeshSettings) -> PeerAuthnChain<'a> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let (mesh_pa, namespace_pa) = inherited_peer_authn(ns, store, mesh);
    let workload_pa = if ns == mesh.root_namespace {
        None
    } else {
        oldest(store.peer_authentications(Some(ns)).filter(|p| {
            !namespace_wide(p)
                && p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, &pod.metadata.labels))
        }))
    };
    PeerAuthnChain { mesh: mesh_pa, namespace: namespace_pa, workload: workload_pa }
}

/// The Sidecar that applies to a pod, as Istio picks it: one in its namespace selecting it,
/// else its namespace's without a selector, else the root namespace's without a selector
/// (the oldest within a level).
fn sidecar_for<'a>(pod: &Pod, store: &'a Store, mesh: &MeshSettings) -> Option<&'a Sidecar> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sidecars = |namespace: &str| {
        store.list(Kind::Sidecar, Some(namespace)).filter_map(|o| match o {
            Object::Sidecar(s) => Some(s),
            _ => None,
        })
    };
    let oldest = |it: &mut dyn Iterator<Item = &'a Sidecar>| {
        it.min_by(|a, b| {
            (a.metadata.creation_timestamp.as_deref(), &a.metadata.name)
                .cmp(&(b.metadata.creation_timestamp.as_deref(), &b.metadata.name))
        })
    };
    let wide = |s: &&Sidecar| s.spec.workload_selector.as_ref().is_none_or(|w| w.labels.is_empty());
    oldest(
        &mut sidecars(ns)
            .filter(|s| !wide(s))
            .filter(|s| s.spec.workload_selector.as_ref().is_some_and(|w| selects(&w.labels, &pod.metadata.labels))),
    )
    .or_else(|| oldest(&mut sidecars(ns).filter(wide)))
    .or_else(|| oldest(&mut sidecars(&mesh.root_namespace).filter(wide)))
}

/// A pod's outbound traffic policy: its Sidecar's `outboundTrafficPolicy.mode` when set, else
/// the mesh's (Istio's precedence).
pub fn outbound_mode(pod: &Pod, store: &Store, mesh: &MeshSettings) -> OutboundMode {
    match sidecar_for(pod, store, mesh).and_then(|s| s.spec.outbound_traffic_policy.as_ref()?.mode.as_deref()) {
        Some("REGISTRY_ONLY") => OutboundMode::RegistryOnly,
        Some(_) => OutboundMode::AllowAny,
        None => mesh.outbound,
    }
}

/// Translates one pod; `None` for pods neither scheduled nor addressed, or that have
/// terminated. A pod scheduled on a node but without an IP yet is sent (without addresses,
/// unhealthy): in Kubernetes the IP only appears after the CNI plugins ran, and the node agent
/// must know at CNI ADD whether the pod belongs to the mesh, to capture it before it starts.
pub fn translate_pod(pod: &Pod, store: &Store, mesh: &MeshSettings) -> Option<Workload> {
    let ips = pod_ips(pod);
    if (ips.is_empty() && pod.spec.node_name.is_none())
        || matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let addressed = !ips.is_empty();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = &pod.metadata.labels;
    let name = workload_name(pod);
    let mut services: HashMap<String, PortList> = store
        .services(Some(ns))
        .filter(|s| s.spec.selector.as_ref().is_some_and(|sel| !sel.is_empty() && selects(sel, labels)))
        .filter(|s| s.spec.type_.as_deref() != Some("ExternalName"))
        .map(|s| (format!("{ns}/{}", mesh.hostname(&s.metadata.name, ns)), PortList { ports: ports_for(s, pod) }))
        .collect();
    // ServiceEntries whose workloadSelector selects the pod: it serves their hosts.
    for o in store.list(Kind::ServiceEntry, Some(ns)) {
        let Object::ServiceEntry(se) = o else { continue };
        let Some(sel) = se.spec.workload_selector.as_ref().filter(|s| !s.labels.is_empty()) else { continue };
        if !selects(&sel.labels, labels) {
            continue;
        }
        let ports: Vec<Port> = se
            .spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: u32::from(p.number),
                target_port: u32::from(p.target_port.unwrap_or(p.number)),
                app_protocol: 0,
            })
            .collect();
        // A host that is a Service's name here stays the Service's (see `shadows_service`).
        for host in se.spec.hosts.iter().filter(|h| !super::service::shadows_service(h, ns, store, mesh)) {
            services.insert(format!("{ns}/{host}"), PortList { ports: ports.clone() });
        }
    }
    let is_waypoint = labels.contains_key(keys::GATEWAY_NAME);
    let tunnel = if in_ambient(pod, store) { TunnelProtocol::Hbone } else { TunnelProtocol::None };
    Some(Workload {
        uid: workload_uid(mesh, ns, &pod.metadata.name),
        name: pod.metadata.name.clone(),
        namespace: ns.to_owned(),
        addresses: ips.into_iter().map(ip_bytes).collect(),
        tunnel_protocol: tunnel as i32,
        trust_domain: if mesh.trust_domain == "cluster.local" { String::new() } else { mesh.trust_domain.clone() },
        service_account: pod.spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        waypoint: if is_waypoint { None } else { waypoint_for(labels, ns, true, store, mesh) },
        node: pod.spec.node_name.clone().unwrap_or_default(),
        canonical_name: first_label(labels, &[keys::CANONICAL_NAME, "app.kubernetes.io/name", "app"])
            .map(str::to_owned)
            .unwrap_or_else(|| name.clone()),
        canonical_revision: first_label(labels, &[keys::CANONICAL_REVISION, "app.kubernetes.io/version", "version"])
            .unwrap_or("latest")
            .to_owned(),
        workload_type: WorkloadType::Pod as i32,
        workload_name: name,
        locality: pod.spec.node_name.as_deref().and_then(|n| node_locality(n, store)),
        services,
        authorization_policies: policies_for(pod, store, mesh),
        status: if is_ready(pod) && addressed { WorkloadStatus::Healthy } else { WorkloadStatus::Unhealthy } as i32,
        cluster_id: mesh.cluster_id.clone(),
        network_mode: if pod.spec.host_network { NetworkMode::HostNetwork } else { NetworkMode::Standard } as i32,
        extensions: match outbound_mode(pod, store, mesh) {
            OutboundMode::RegistryOnly => {
                vec![Extension { name: ambit_shared::proto::REGISTRY_ONLY_EXTENSION.into(), config: None }]
            }
            OutboundMode::AllowAny => Vec::new(),
        },
        ..Default::default()
    })
}
