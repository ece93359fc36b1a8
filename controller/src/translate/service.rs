//! Service and ServiceEntry → `istio.workload.Service`, as istiod builds them for ztunnel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_shared::proto::workload::{
    gateway_address, load_balancing, AppProtocol, GatewayAddress, IpFamilies, LoadBalancing, NamespacedHostname,
    NetworkAddress, Port, PortList, Service as PbService, TunnelProtocol, Workload, WorkloadStatus,
};
use ambit_shared::Cidr;

use crate::model::{keys, IntOrString, Kind, Object, Service, ServiceEntry};
use crate::store::Store;
use crate::translate::allocate::HostKey;
use crate::translate::workload::{ip_bytes, requested_waypoint, waypoint_for};
use crate::translate::MeshSettings;

/// The resource name of a service: `<namespace>/<hostname>`.
pub fn service_resource_name(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

fn app_protocol(app_protocol: Option<&str>, port_name: Option<&str>) -> AppProtocol {
    let by_name = port_name.and_then(|n| n.split('-').next());
    match app_protocol.or(by_name).map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http1" | "kubernetes.io/h2c-prior-knowledge-no") => AppProtocol::Http11,
        Some("http2" | "h2c" | "kubernetes.io/h2c") => AppProtocol::Http2,
        Some("grpc" | "grpc-web") => AppProtocol::Grpc,
        Some("tcp") => AppProtocol::Tcp,
        Some("tls" | "https") => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    }
}

fn load_balancing(s: &Service) -> Option<LoadBalancing> {
    use load_balancing::{HealthPolicy, Mode, Scope};
    let distribution = s.spec.traffic_distribution.as_deref().or(s
        .metadata
        .annotations
        .get(keys::TRAFFIC_DISTRIBUTION)
        .map(String::as_str));
    let mut lb = match (s.spec.internal_traffic_policy.as_deref(), distribution) {
        (Some("Local"), _) => LoadBalancing {
            routing_preference: vec![Scope::Node as i32],
            mode: Mode::Strict as i32,
            ..Default::default()
        },
        (_, Some("PreferClose" | "PreferSameZone")) => LoadBalancing {
            // Istio's scopes for it: the zone, not the subzone.
            routing_preference: [Scope::Network, Scope::Region, Scope::Zone].map(|s| s as i32).to_vec(),
            mode: Mode::Failover as i32,
            ..Default::default()
        },
        (_, Some("PreferSameNode")) => LoadBalancing {
            routing_preference: [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node]
                .map(|s| s as i32)
                .to_vec(),
            mode: Mode::Failover as i32,
            ..Default::default()
        },
        _ => LoadBalancing::default(),
    };
    if s.spec.publish_not_ready_addresses {
        lb.health_policy = HealthPolicy::AllowAll as i32;
    }
    (lb != LoadBalancing::default()).then_some(lb)
}

/// Translates a Kubernetes Service; `None` for ExternalName services.
pub fn translate_service(s: &Service, store: &Store, mesh: &MeshSettings) -> Option<PbService> {
    if s.spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    let mut ips: Vec<IpAddr> = s.spec.cluster_ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(s.spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    let ip_families = match (ips.iter().any(IpAddr::is_ipv4), ips.iter().any(IpAddr::is_ipv6)) {
        (true, true) => IpFamilies::Dual,
        (true, false) => IpFamilies::Ipv4Only,
        (false, true) => IpFamilies::Ipv6Only,
        (false, false) => IpFamilies::Automatic,
    };
    let is_waypoint = s.metadata.labels.contains_key(keys::GATEWAY_NAME);
    Some(PbService {
        name: s.metadata.name.clone(),
        namespace: ns.to_owned(),
        hostname: mesh.hostname(&s.metadata.name, ns),
        addresses: ips.into_iter().map(|ip| NetworkAddress { network: String::new(), address: ip_bytes(ip) }).collect(),
        ports: s
            .spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: u32::from(p.port),
                // A named target port is resolved per workload; 0 here, as istiod sends it.
                target_port: match &p.target_port {
                    None => u32::from(p.port),
                    Some(IntOrString::Int(t)) => u32::try_from(*t).unwrap_or(0),
                    Some(IntOrString::String(_)) => 0,
                },
                app_protocol: app_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
            })
            .collect(),
        waypoint: if is_waypoint { None } else { waypoint_for(&s.metadata.labels, ns, false, store, mesh) },
        load_balancing: load_balancing(s),
        ip_families: ip_families as i32,
        // The Service's label, else its namespace's.
        ingress_use_waypoint: s
            .metadata
            .labels
            .get(keys::INGRESS_USE_WAYPOINT)
            .or_else(|| store.namespace(ns).and_then(|n| n.metadata.labels.get(keys::INGRESS_USE_WAYPOINT)))
            .is_some_and(|v| v == "true"),
        ..Default::default()
    })
}

/// Whether `host` is the hostname of a Kubernetes Service of namespace `ns`: an entry of that
/// namespace naming it would share the Service's resource name and replace its configuration
/// (its waypoint policies, routes, endpoints), so such a host is left out of the entry.
pub fn shadows_service(host: &str, ns: &str, store: &Store, mesh: &MeshSettings) -> bool {
    store.services(Some(ns)).any(|s| mesh.hostname(&s.metadata.name, ns).eq_ignore_ascii_case(host))
}

/// `se` without the hosts that are its namespace's Services' names ([`shadows_service`]).
pub fn without_service_hosts<'a>(
    se: &'a ServiceEntry,
    store: &Store,
    mesh: &MeshSettings,
) -> std::borrow::Cow<'a, ServiceEntry> {
    let ns = se.metadata.namespace.as_deref().unwrap_or_default();
    if !se.spec.hosts.iter().any(|h| shadows_service(h, ns, store, mesh)) {
        return std::borrow::Cow::Borrowed(se);
    }
    let mut kept = se.clone();
    kept.spec.hosts.retain(|h| {
        let shadows = shadows_service(h, ns, store, mesh);
        if shadows {
            tracing::warn!(entry = %se.metadata.name, host = %h, "ServiceEntry host is a Service of its namespace; left out");
        }
        !shadows
    });
    std::borrow::Cow::Owned(kept)
}

/// Translates a ServiceEntry: one service per host. With `resolution: NONE` (Istio's
/// default) the services forward to the original destination (`PASSTHROUGH`): the entry's
/// addresses are the real ones. With `STATIC`, its `endpoints` are the workloads behind them
/// ([`service_entry_endpoints`]).
pub fn translate_service_entry(
    se: &ServiceEntry,
    store: &Store,
    mesh: &MeshSettings,
    allocated: &BTreeMap<HostKey, Vec<IpAddr>>,
) -> Vec<PbService> {
    let ns = se.metadata.namespace.as_deref().unwrap_or_default();
    // A Kubernetes Service's cluster IP is that Service's: an entry (from any namespace) naming
    // it would take its traffic, so such an address is left out.
    let cluster_ips: Vec<IpAddr> =
        store.services(None).filter_map(|s| s.spec.cluster_ip.as_deref()?.parse().ok()).collect();
    // Two entries naming one address: the oldest keeps it (then by namespace/name), the same
    // on every ztunnel; the other leaves it out.
    let age = |e: &ServiceEntry| {
        (e.metadata.creation_timestamp.clone(), e.metadata.namespace.clone(), e.metadata.name.clone())
    };
    let older_claims: Vec<IpAddr> = store
        .list(Kind::ServiceEntry, None)
        .filter_map(|o| match o {
            Object::ServiceEntry(other) if age(other) < age(se) => Some(other),
            _ => None,
        })
        .flat_map(|other| other.spec.addresses.iter().filter_map(|a| a.parse::<Cidr>().ok()).map(|c| c.addr()))
        .collect();
    let addresses: Vec<NetworkAddress> = se
        .spec
        .addresses
        .iter()
        .filter_map(|a| a.parse::<Cidr>().ok())
        .filter(|c| {
            let taken = cluster_ips.contains(&c.addr());
            if taken {
                tracing::warn!(entry = %se.metadata.name, address = %c.addr(), "ServiceEntry address is a Service's cluster IP; left out");
            }
            let claimed = older_claims.contains(&c.addr());
            if claimed {
                tracing::warn!(entry = %se.metadata.name, address = %c.addr(), "ServiceEntry address is an older entry's; left out");
            }
            // The allocation ranges are the controller's: an address written there could take
            // over another entry's allocated address (clients holding the old answer).
            let reserved = mesh.auto_allocate.iter().any(|r| r.contains(c.addr()));
            if reserved {
                tracing::warn!(entry = %se.metadata.name, address = %c.addr(), "ServiceEntry address is inside the automatic allocation ranges; left out");
            }
            !taken && !claimed && !reserved
        })
        .map(|c| NetworkAddress { network: String::new(), address: ip_bytes(c.addr()) })
        .collect();
    // Hosts without addresses get allocated ones (see `allocate`), host by host.
    let addresses_of = |host: &String| -> Vec<NetworkAddress> {
        match allocated.get(&(ns.to_owned(), se.metadata.name.clone(), host.clone())) {
            Some(ips) if super::allocate::wants_addresses(se) => {
                ips.iter().map(|ip| NetworkAddress { network: String::new(), address: ip_bytes(*ip) }).collect()
            }
            _ => addresses.clone(),
        }
    };
    let ports: Vec<Port> = se
        .spec
        .ports
        .iter()
        .map(|p| Port {
            service_port: u32::from(p.number),
            target_port: u32::from(p.target_port.unwrap_or(p.number)),
            app_protocol: app_protocol(p.protocol.as_deref(), p.name.as_deref()) as i32,
        })
        .collect();
    // Pods selected by workloadSelector are its endpoints: never a passthrough.
    let passthrough =
        matches!(se.spec.resolution.as_deref(), None | Some("NONE")) && se.spec.workload_selector.is_none();
    se.spec
        .hosts
        .iter()
        .map(|host| PbService {
            name: se.metadata.name.clone(),
            namespace: ns.to_owned(),
            hostname: host.clone(),
            addresses: addresses_of(host),
            ports: ports.clone(),
            subject_alt_names: se.spec.subject_alt_names.clone(),
            waypoint: entry_waypoint(se, ns, store, mesh),
            load_balancing: passthrough
                .then(|| LoadBalancing { mode: load_balancing::Mode::Passthrough as i32, ..Default::default() }),
            ..Default::default()
        })
        .collect()
}

/// The waypoint an entry's traffic goes through. One it asks for that does not exist (or does
/// not serve services) is still its waypoint, by name: connections to the entry fail until it
/// exists, rather than going around the policies meant to apply there.
fn entry_waypoint(se: &ServiceEntry, ns: &str, store: &Store, mesh: &MeshSettings) -> Option<GatewayAddress> {
    if let Some(gw) = waypoint_for(&se.metadata.labels, ns, false, store, mesh) {
        return Some(gw);
    }
    let (wp_ns, name) = requested_waypoint(&se.metadata.labels, ns, store)?;
    tracing::warn!(entry = %se.metadata.name, waypoint = %format!("{wp_ns}/{name}"), "ServiceEntry asks for a waypoint that does not serve it; its traffic is refused until it does");
    Some(GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            hostname: mesh.hostname(&name, &wp_ns),
            namespace: wp_ns,
        })),
        hbone_mtls_port: u32::from(ambit_shared::hbone::HBONE_PORT),
    })
}

/// The workloads behind a ServiceEntry, as istiod builds them for ztunnel, all outside the
/// mesh (plain TCP): with `resolution: STATIC`, one per `endpoints` entry (an address); with
/// `DNS`, one per endpoint (an address, or a hostname ztunnel resolves per connection) or,
/// without endpoints, one per host, resolving that host. Each serves the entry's hosts (a
/// host's own workload, only that host), each port mapped to the endpoint's port of the same
/// name, else `targetPort`, else the number.
pub fn service_entry_endpoints(se: &ServiceEntry, mesh: &MeshSettings) -> Vec<Workload> {
    let ns = se.metadata.namespace.as_deref().unwrap_or_default();
    let name = &se.metadata.name;
    let ports_for = |named: &BTreeMap<String, u32>| -> Vec<Port> {
        se.spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: u32::from(p.number),
                target_port: p
                    .name
                    .as_ref()
                    .and_then(|n| named.get(n))
                    .copied()
                    .unwrap_or(u32::from(p.target_port.unwrap_or(p.number))),
                app_protocol: app_protocol(p.protocol.as_deref(), p.name.as_deref()) as i32,
            })
            .collect()
    };
    let workload = |address: &str,
                    hosts: &[String],
                    named: &BTreeMap<String, u32>,
                    network: Option<&String>,
                    weight: Option<u32>| {
        let ports = ports_for(named);
        let services =
            hosts.iter().map(|h| (service_resource_name(ns, h), PortList { ports: ports.clone() })).collect();
        let ip: Option<IpAddr> = address.parse().ok();
        Workload {
            uid: service_entry_endpoint_uid(mesh, ns, name, address),
            name: name.clone(),
            namespace: ns.to_owned(),
            addresses: ip.map(ip_bytes).into_iter().collect(),
            hostname: if ip.is_some() { String::new() } else { address.to_owned() },
            network: network.cloned().unwrap_or_default(),
            tunnel_protocol: TunnelProtocol::None as i32,
            service_account: "default".into(),
            canonical_name: name.clone(),
            canonical_revision: "latest".into(),
            workload_name: name.clone(),
            services,
            status: WorkloadStatus::Healthy as i32,
            cluster_id: mesh.cluster_id.clone(),
            capacity: weight.filter(|w| *w > 1),
            ..Default::default()
        }
    };
    match se.spec.resolution.as_deref() {
        Some("STATIC" | "DNS" | "DNS_ROUND_ROBIN") if !se.spec.endpoints.is_empty() => se
            .spec
            .endpoints
            .iter()
            .filter(|e| se.spec.resolution.as_deref() != Some("STATIC") || e.address.parse::<IpAddr>().is_ok())
            .map(|e| workload(&e.address, &se.spec.hosts, &e.ports, e.network.as_ref(), e.weight))
            .collect(),
        Some("DNS" | "DNS_ROUND_ROBIN") => se
            .spec
            .hosts
            .iter()
            .filter(|h| !h.starts_with('*'))
            .map(|h| workload(h, std::slice::from_ref(h), &BTreeMap::new(), None, None))
            .collect(),
        _ => Vec::new(),
    }
}

/// Istio's uid for a ServiceEntry endpoint's workload.
pub fn service_entry_endpoint_uid(mesh: &MeshSettings, namespace: &str, name: &str, address: &str) -> String {
    format!("{}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}", mesh.cluster_id)
}
