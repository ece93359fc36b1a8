//! Incremental recomputation: each event changes exactly the resources it should.

use ambit_shared::proto::workload::{address, Address, TunnelProtocol, Workload};
use prost::Message;

use super::*;
use crate::manifest::{parse_object, split_yaml, Parsed};

fn objects(yaml: &str) -> Vec<Event> {
    let (docs, err) = split_yaml("t", yaml);
    assert!(err.is_none());
    docs.into_iter()
        .map(|d| match parse_object("t", d).unwrap() {
            Parsed::Object(o) => Event::Apply(o),
            Parsed::Ignored { .. } => panic!("ignored"),
        })
        .collect()
}

fn names(changes: &[Change]) -> Vec<(String, bool)> {
    let mut v: Vec<_> = changes.iter().map(|c| (c.name.clone(), c.body.is_some())).collect();
    v.sort();
    v
}

/// The Service resource `name` among `changes`, when it is one.
fn service_change(changes: &[Change], name: &str) -> Option<ambit_shared::proto::workload::Service> {
    let c = changes.iter().find(|c| c.name == name)?;
    match Address::decode(c.body.as_ref()?.value.as_ref()).ok()?.r#type {
        Some(address::Type::Service(s)) => Some(s),
        _ => None,
    }
}

fn workload(changes: &[Change], name: &str) -> Workload {
    let c = changes.iter().find(|c| c.name == name).expect(name);
    match Address::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap().r#type {
        Some(address::Type::Workload(w)) => w,
        other => panic!("{other:?}"),
    }
}

const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec:
  nodeName: node-1
  serviceAccountName: cart
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.1.0.5, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front}}
spec: {nodeName: node-2}
status: {phase: Running, podIP: 10.1.0.6}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80, targetPort: http}]}
";

#[test]
fn initial_load_translates_everything_once() {
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(BASE));
    assert_eq!(
        names(&changes),
        vec![
            ("Kubernetes//Pod/shop/cart-1".to_owned(), true),
            ("Kubernetes//Pod/shop/front-1".to_owned(), true),
            ("shop/cart.shop.svc.cluster.local".to_owned(), true),
        ]
    );
    let cart = workload(&changes, "Kubernetes//Pod/shop/cart-1");
    assert_eq!(cart.addresses, vec![vec![10, 1, 0, 5]]);
    assert_eq!(cart.service_account, "cart");
    assert_eq!(cart.node, "node-1");
    assert_eq!(cart.tunnel_protocol, TunnelProtocol::None as i32, "namespace not in the mesh yet");
    assert_eq!(cart.canonical_name, "cart");
    assert_eq!(cart.status, 0, "ready pod is healthy");
    let ports = &cart.services["shop/cart.shop.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080), "named targetPort resolved");
    assert_eq!(workload(&changes, "Kubernetes//Pod/shop/front-1").status, 1, "no Ready condition: unhealthy");
}

#[test]
fn a_pod_change_recomputes_only_that_pod() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-1, namespace: shop, labels: {app: cart}}\nspec: {nodeName: node-1, serviceAccountName: cart}\nstatus: {phase: Running, podIP: 10.1.0.99}",
    ));
    assert_eq!(names(&changes), vec![("Kubernetes//Pod/shop/cart-1".to_owned(), true)]);
    // Re-applying an identical object changes nothing at all.
    let same = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}";
    assert!(index.apply(objects(same)).is_empty());
}

#[test]
fn a_scheduled_pod_is_known_before_it_has_an_address() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    // As the CNI plugins run: scheduled on node-1, no IP yet. The node agent must be able to
    // tell whether it belongs to the mesh.
    let changes = index.apply(objects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: cart-2, namespace: shop, labels: {app: cart}}\nspec: {nodeName: node-1, serviceAccountName: cart}\nstatus: {phase: Pending}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: cart-3, namespace: shop, labels: {app: cart}}\nspec: {serviceAccountName: cart}\nstatus: {phase: Pending}",
    ));
    let w = workload(&changes, "Kubernetes//Pod/shop/cart-2");
    assert!(w.addresses.is_empty());
    assert_eq!((w.node.as_str(), w.tunnel_protocol), ("node-1", TunnelProtocol::Hbone as i32));
    assert_eq!(w.status, ambit_shared::proto::workload::WorkloadStatus::Unhealthy as i32, "no endpoint yet");
    assert!(!names(&changes).iter().any(|(n, _)| n.ends_with("cart-3")), "unscheduled: nothing to say yet");
}

#[test]
fn labelling_the_namespace_enrolls_its_pods() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}",
    ));
    assert_eq!(names(&changes).len(), 3, "two pods and the service: {:?}", names(&changes));
    assert_eq!(workload(&changes, "Kubernetes//Pod/shop/cart-1").tunnel_protocol, TunnelProtocol::Hbone as i32);
}

#[test]
fn deleting_a_service_removes_it_and_updates_the_pods_it_selected() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let key = ObjectKey { kind: Kind::Service, namespace: "shop".into(), name: "cart".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert_eq!(
        names(&changes),
        vec![("Kubernetes//Pod/shop/cart-1".to_owned(), true), ("shop/cart.shop.svc.cluster.local".to_owned(), false),]
    );
    assert!(workload(&changes, "Kubernetes//Pod/shop/cart-1").services.is_empty());
}

#[test]
fn a_selector_policy_is_published_and_listed_on_the_pods_it_selects() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-front, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/front]}}]}]",
    ));
    assert_eq!(
        names(&changes),
        vec![("Kubernetes//Pod/shop/cart-1".to_owned(), true), ("shop/only-front".to_owned(), true),]
    );
    assert_eq!(workload(&changes, "Kubernetes//Pod/shop/cart-1").authorization_policies, vec!["shop/only-front"]);
}

#[test]
fn strict_peer_authentication_publishes_the_static_policy() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}",
    ));
    assert!(names(&changes).contains(&("istio-system/istio_converted_static_strict".to_owned(), true)));
    assert_eq!(
        workload(&changes, "Kubernetes//Pod/shop/front-1").authorization_policies,
        vec!["istio-system/istio_converted_static_strict"]
    );
    let key = ObjectKey { kind: Kind::PeerAuthentication, namespace: "shop".into(), name: "default".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert!(names(&changes).contains(&("istio-system/istio_converted_static_strict".to_owned(), false)));
}

#[test]
fn use_waypoint_points_services_at_the_gateway() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}",
    ));
    let svc = changes.iter().find(|c| c.name == "shop/cart.shop.svc.cluster.local").expect("service recomputed");
    let Some(address::Type::Service(s)) = Address::decode(svc.body.as_ref().unwrap().value.as_ref()).unwrap().r#type
    else {
        panic!()
    };
    let wp = s.waypoint.expect("waypoint set");
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert!(format!("{:?}", wp.destination).contains("waypoint.shop.svc.cluster.local"));
    // waypoint-for defaults to service: workloads keep going direct.
    assert!(workload(&changes, "Kubernetes//Pod/shop/cart-1").waypoint.is_none());
}

#[test]
fn an_output_shared_by_two_objects_survives_until_both_are_gone() {
    let se = |name: &str, port: u16| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{hosts: [api.example.com], ports: [{{number: {port}, name: https, protocol: TLS}}]}}\n")
    };
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(&format!("{}---\n{}", se("a", 443), se("b", 8443))));
    let key = ObjectKey { kind: Kind::ServiceEntry, namespace: "shop".into(), name: "a".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert_eq!(names(&changes), vec![("shop/api.example.com".to_owned(), true)], "b's version is republished");
    let key = ObjectKey { kind: Kind::ServiceEntry, namespace: "shop".into(), name: "b".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert_eq!(names(&changes), vec![("shop/api.example.com".to_owned(), false)]);
}

#[test]
fn sidecar_outbound_traffic_policy_reaches_the_workloads_it_applies_to() {
    let registry_only =
        |w: &Workload| w.extensions.iter().any(|e| e.name == ambit_shared::proto::REGISTRY_ONLY_EXTENSION);
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(BASE));
    assert!(!registry_only(&workload(&changes, "Kubernetes//Pod/shop/cart-1")), "ALLOW_ANY by default");
    // The root namespace's Sidecar is the mesh default: every pod is recomputed.
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
    ));
    assert!(registry_only(&workload(&changes, "Kubernetes//Pod/shop/cart-1")));
    assert!(registry_only(&workload(&changes, "Kubernetes//Pod/shop/front-1")));
    // The namespace's own Sidecar wins over the root's; one selecting a workload wins over both.
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec: {outboundTrafficPolicy: {mode: ALLOW_ANY}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: cart, namespace: shop}\nspec: {workloadSelector: {labels: {app: cart}}, outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
    ));
    assert!(registry_only(&workload(&changes, "Kubernetes//Pod/shop/cart-1")));
    assert!(!registry_only(&workload(&changes, "Kubernetes//Pod/shop/front-1")));
    // A Sidecar that applies but sets no mode leaves the mesh's setting (meshConfig).
    let mesh = MeshSettings { outbound: crate::translate::OutboundMode::RegistryOnly, ..Default::default() };
    let mut index = Index::new(mesh);
    let changes = index.apply(objects(&format!(
        "{BASE}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec: {{}}"
    )));
    assert!(registry_only(&workload(&changes, "Kubernetes//Pod/shop/front-1")));
}

#[test]
fn service_entries_pass_through_or_name_their_static_endpoints() {
    use ambit_shared::proto::workload::{load_balancing::Mode, Service as PbService};
    let service = |changes: &[Change], name: &str| -> PbService {
        let c = changes.iter().find(|c| c.name == name).expect(name);
        match Address::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap().r#type {
            Some(address::Type::Service(s)) => s,
            other => panic!("{other:?}"),
        }
    };
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: partner, namespace: shop}
spec:
  hosts: [api.partner.example]
  addresses: [203.0.113.10]
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: shop}
spec:
  hosts: [db.legacy.example]
  addresses: [240.0.0.10]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.7, ports: {tcp-pg: 6432}}
  - {address: 192.0.2.8, weight: 3}",
    ));
    // resolution NONE (the default): forward to the address the pod used.
    let partner = service(&changes, "shop/api.partner.example");
    assert_eq!(partner.load_balancing.map(|lb| lb.mode), Some(Mode::Passthrough as i32));
    // STATIC: a workload per endpoint, outside the mesh, serving the host on its port.
    let db = service(&changes, "shop/db.legacy.example");
    assert!(db.load_balancing.is_none_or(|lb| lb.mode != Mode::Passthrough as i32));
    let first = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/db/192.0.2.7");
    assert_eq!(first.addresses, vec![vec![192, 0, 2, 7]]);
    assert_eq!(first.tunnel_protocol, TunnelProtocol::None as i32);
    let ports = &first.services["shop/db.legacy.example"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (5432, 6432), "the endpoint's named port");
    let second = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/db/192.0.2.8");
    assert_eq!(second.services["shop/db.legacy.example"].ports[0].target_port, 5432);
    assert_eq!(second.capacity, Some(3));
    // Endpoints go with the entry.
    let key = ObjectKey { kind: Kind::ServiceEntry, namespace: "shop".into(), name: "db".into() };
    let gone = index.apply(vec![Event::Delete(key)]);
    assert!(gone.iter().any(|c| c.name.ends_with("/db/192.0.2.7") && c.body.is_none()), "{:?}", names(&gone));
}

#[test]
fn a_service_entry_workload_selector_makes_mesh_pods_its_endpoints() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cart-internal, namespace: shop}
spec:
  hosts: [cart.internal.example]
  addresses: [240.0.0.20]
  ports: [{number: 80, targetPort: 8080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: cart}}",
    ));
    let cart = workload(&changes, "Kubernetes//Pod/shop/cart-1");
    let ports = &cart.services["shop/cart.internal.example"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert!(!names(&changes).iter().any(|(n, _)| n.ends_with("front-1")), "only the pods it selects");
    // Removing the entry takes the host off the pod.
    let key = ObjectKey { kind: Kind::ServiceEntry, namespace: "shop".into(), name: "cart-internal".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert!(!workload(&changes, "Kubernetes//Pod/shop/cart-1").services.contains_key("shop/cart.internal.example"));
}

#[test]
fn a_service_entry_cannot_take_a_services_cluster_ip() {
    use ambit_shared::proto::workload::Service as PbService;
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: grab, namespace: evil}
spec: {hosts: [grab.example], addresses: [10.96.0.10, 203.0.113.9], ports: [{number: 80, name: http}]}",
    ));
    let c = changes.iter().find(|c| c.name == "evil/grab.example").expect("the entry");
    let Some(address::Type::Service(s)) = Address::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap().r#type
    else {
        panic!("not a service")
    };
    let s: PbService = s;
    assert_eq!(s.addresses.len(), 1, "the cart Service's cluster IP is left out");
    assert_eq!(s.addresses[0].address, vec![203, 0, 113, 9]);
}

#[test]
fn dns_service_entries_are_resolved_by_name() {
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: shop}
spec:
  hosts: [api.partner.example]
  addresses: [240.0.0.30]
  ports: [{number: 443, name: tls}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: mirrors, namespace: shop}
spec:
  hosts: [mirror.example]
  addresses: [240.0.0.31]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints: [{address: eu.mirror.example, ports: {http: 8080}}, {address: 192.0.2.40}]",
    ));
    let own = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/api/api.partner.example");
    assert_eq!((own.hostname.as_str(), own.addresses.len()), ("api.partner.example", 0));
    assert!(own.services.contains_key("shop/api.partner.example"));
    let eu = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/mirrors/eu.mirror.example");
    assert_eq!(eu.hostname, "eu.mirror.example");
    assert_eq!(eu.services["shop/mirror.example"].ports[0].target_port, 8080);
    let by_ip = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/mirrors/192.0.2.40");
    assert_eq!((by_ip.hostname.as_str(), by_ip.addresses.clone()), ("", vec![vec![192, 0, 2, 40]]));
}

#[test]
fn host_network_pods_stay_out_of_the_mesh() {
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: shop}
spec: {nodeName: node-1, hostNetwork: true}
status: {phase: Running, podIP: 10.240.0.11}",
    ));
    let w = workload(&changes, "Kubernetes//Pod/shop/agent");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32, "not HBONE: its address is the node's");
}

#[test]
fn the_oldest_service_entry_keeps_a_shared_address() {
    let service = service_change;
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: first, namespace: team-a, creationTimestamp: '2026-01-01T00:00:00Z'}
spec: {hosts: [db.example], addresses: [240.0.0.1], ports: [{number: 80, name: http}]}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: second, namespace: team-b, creationTimestamp: '2026-02-01T00:00:00Z'}
spec: {hosts: [cache.example], addresses: [240.0.0.1], ports: [{number: 80, name: http}]}",
    ));
    assert_eq!(service(&changes, "team-a/db.example").unwrap().addresses.len(), 1, "the oldest keeps it");
    assert!(service(&changes, "team-b/cache.example").unwrap().addresses.is_empty(), "the younger leaves it out");
    // The oldest goes: the address passes to the other.
    let key = ObjectKey { kind: Kind::ServiceEntry, namespace: "team-a".into(), name: "first".into() };
    let changes = index.apply(vec![Event::Delete(key)]);
    assert_eq!(service(&changes, "team-b/cache.example").expect("recomputed").addresses.len(), 1);
}

#[test]
fn service_entries_without_addresses_get_allocated_ones() {
    use ambit_shared::proto::workload::Service as PbService;
    let service = service_change;
    let ips = |s: &PbService| -> Vec<std::net::IpAddr> {
        s.addresses
            .iter()
            .filter_map(|a| match a.address.len() {
                4 => <[u8; 4]>::try_from(a.address.as_slice()).ok().map(std::net::IpAddr::from),
                _ => <[u8; 16]>::try_from(a.address.as_slice()).ok().map(std::net::IpAddr::from),
            })
            .collect()
    };
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: shop, creationTimestamp: '2026-01-01T00:00:00Z'}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls}], resolution: DNS}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cdn, namespace: shop}
spec: {hosts: [static.example.com, '*.cdn.example.com'], ports: [{number: 443, name: tls}], resolution: STATIC, endpoints: [{address: 192.0.2.1}]}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: passthrough, namespace: shop}
spec: {hosts: [pass.example.com], ports: [{number: 443, name: tls}]}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: opted-out, namespace: shop, labels: {networking.istio.io/enable-autoallocate-ip: 'false'}}
spec: {hosts: [out.example.com], ports: [{number: 443, name: tls}], resolution: DNS}";
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(yaml));
    let api = service(&changes, "shop/api.example.com").unwrap();
    let got = ips(&api);
    assert_eq!(got.len(), 2, "one IPv4 and one IPv6 address: {got:?}");
    let (v4, v6): (ambit_shared::Cidr, ambit_shared::Cidr) =
        ("240.240.0.0/16".parse().unwrap(), "2001:2::/48".parse().unwrap());
    assert!(v4.contains(got[0]) && v6.contains(got[1]), "from Istio's ranges: {got:?}");
    assert!(service(&changes, "shop/*.cdn.example.com").unwrap().addresses.is_empty(), "wildcards get none");
    assert_eq!(service(&changes, "shop/static.example.com").unwrap().addresses.len(), 2, "STATIC entries get them too");
    assert!(service(&changes, "shop/pass.example.com").unwrap().addresses.is_empty(), "resolution NONE gets none");
    assert!(service(&changes, "shop/out.example.com").unwrap().addresses.is_empty(), "the opt-out label");
    // Every replica and every restart computes the same addresses.
    let mut other = Index::new(MeshSettings::default());
    assert_eq!(ips(&service(&other.apply(objects(yaml)), "shop/api.example.com").unwrap()), got);
    // An entry naming an allocated address explicitly takes nothing: addresses inside the
    // ranges are left out of it, and the other entry keeps its own.
    let thief = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: thief, namespace: evil}}\nspec: {{hosts: [evil.example.com], addresses: ['{}'], ports: [{{number: 443, name: tls}}]}}",
        got[0]
    );
    let changes = index.apply(objects(&thief));
    assert!(service(&changes, "evil/evil.example.com").unwrap().addresses.is_empty(), "left out");
    if let Some(api) = service(&changes, "shop/api.example.com") {
        assert_eq!(ips(&api), got, "the victim keeps its address");
    }
    // Configured ranges are used.
    let mesh = MeshSettings { auto_allocate: vec!["198.18.0.0/20".parse().unwrap()], ..Default::default() };
    let mut custom = Index::new(mesh);
    let custom_ips = ips(&service(&custom.apply(objects(yaml)), "shop/api.example.com").unwrap());
    assert!(custom_ips.len() == 1 && "198.18.0.0/20".parse::<ambit_shared::Cidr>().unwrap().contains(custom_ips[0]));
}

#[test]
fn a_service_entry_bound_to_a_waypoint_gets_its_waypoint_configuration() {
    use ambit_shared::proto::waypoint::ServiceConfig;
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: egress, namespace: egress}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: www, namespace: egress, labels: {istio.io/use-waypoint: egress}}
spec: {hosts: [www.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-private, namespace: egress}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: egress}]
  action: DENY
  rules: [{to: [{operation: {paths: [/private]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete, namespace: egress}
spec:
  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: www}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: www, namespace: egress}
spec: {host: www.example.com, trafficPolicy: {tls: {mode: SIMPLE}}}
---
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: weaker, namespace: team-a, creationTimestamp: '2020-01-01T00:00:00Z'}
spec: {host: www.example.com, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}}",
    ));
    let c = changes
        .iter()
        .find(|c| c.type_url == WAYPOINT_SERVICE && c.name == "egress/www.example.com")
        .expect("the entry's host is configured at its waypoint");
    let config = ServiceConfig::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap();
    assert_eq!(config.hostname, "www.example.com");
    assert_eq!(config.waypoint, "egress/egress");
    assert_eq!(config.ports.len(), 1);
    assert_eq!(config.policies.len(), 2, "the Gateway- and the entry-targeted policies apply");
    assert!(config.routes.is_empty(), "requests go to the entry's own endpoints");
    let tls = config.backend.and_then(|b| b.tls).expect("the DestinationRule's TLS origination");
    assert_eq!(tls.sni, "www.example.com", "the host is the server name by default");
    assert!(!tls.insecure_skip_verify, "verified: another namespace's older rule for the host is not looked at");
}

#[test]
fn a_service_entry_hosts_port_level_tls_reaches_its_waypoint() {
    use ambit_shared::proto::waypoint::ServiceConfig;
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: egress, namespace: egress}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: egress, labels: {istio.io/use-waypoint: egress}}
spec: {hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: http-alt, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: egress}
spec: {host: api.example.com, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]}}",
    ));
    let c = changes.iter().find(|c| c.type_url == WAYPOINT_SERVICE && c.name == "egress/api.example.com").unwrap();
    let backend = ServiceConfig::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap().backend.unwrap();
    assert!(backend.tls.is_none(), "port 8080 is not asked for TLS");
    let port: Vec<_> =
        backend.port_level.iter().map(|p| (p.port, p.policy.as_ref().and_then(|p| p.tls.clone()))).collect();
    assert_eq!(port.len(), 1);
    assert_eq!(port[0].0, 80);
    assert_eq!(port[0].1.as_ref().map(|t| t.sni.as_str()), Some("api.example.com"), "port 80: TLS originated");
}

#[test]
fn a_service_entry_cannot_take_a_services_name() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: grab, namespace: shop}
spec: {hosts: [cart.shop.svc.cluster.local, other.example.com], addresses: [203.0.113.7], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 203.0.113.8}]}",
    ));
    assert!(
        !changes.iter().any(|c| c.name == "shop/cart.shop.svc.cluster.local"),
        "the Service's resource is not replaced by the entry's"
    );
    assert!(service_change(&changes, "shop/other.example.com").is_some(), "its other hosts stay");
    let ep = workload(&changes, "Kubernetes/networking.istio.io/ServiceEntry/shop/grab/203.0.113.8");
    assert!(!ep.services.contains_key("shop/cart.shop.svc.cluster.local"), "its endpoints do not join the Service");
}

#[test]
fn a_service_entry_asking_for_a_missing_waypoint_is_not_routed_around_it() {
    use ambit_shared::proto::workload::gateway_address::Destination;
    let mut index = Index::new(MeshSettings::default());
    let changes = index.apply(objects(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: www, namespace: egress, labels: {istio.io/use-waypoint: not-there}}
spec: {hosts: [www.example.com], ports: [{number: 80, name: http}], resolution: DNS}",
    ));
    let s = service_change(&changes, "egress/www.example.com").unwrap();
    match s.waypoint.and_then(|w| w.destination) {
        Some(Destination::Hostname(h)) => assert_eq!(h.hostname, "not-there.egress.svc.cluster.local"),
        other => panic!("the entry must keep its waypoint by name (connections refused), got {other:?}"),
    }
}

#[test]
fn relabelling_a_pod_moves_it_between_subsets() {
    use ambit_shared::proto::waypoint::ServiceConfig;
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    index.apply(objects(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: shop}\nspec: {host: cart, subsets: [{name: v1, labels: {version: v1}}]}",
    ));
    let pod = |version: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: cart-1, namespace: shop, labels: {{app: cart, version: {version}}}}}\nspec: {{nodeName: node-1}}\nstatus: {{phase: Running, podIP: 10.1.0.5}}")
    };
    let members = |changes: &[Change]| {
        let c = changes
            .iter()
            .find(|c| c.type_url == ambit_shared::proto::type_url::WAYPOINT_SERVICE && c.name.contains("cart"))
            .expect("the service's L7 configuration recomputed");
        ServiceConfig::decode(c.body.as_ref().unwrap().value.as_ref()).unwrap().subsets[0].workload_uids.clone()
    };
    assert_eq!(members(&index.apply(objects(&pod("v1")))), ["Kubernetes//Pod/shop/cart-1"]);
    assert!(members(&index.apply(objects(&pod("v2")))).is_empty(), "relabelled out of v1");
    // A status change alone leaves the configuration as it was.
    let status_only = pod("v2").replace("10.1.0.5", "10.1.0.7");
    assert!(!index
        .apply(objects(&status_only))
        .iter()
        .any(|c| c.type_url == ambit_shared::proto::type_url::WAYPOINT_SERVICE));
}

#[test]
fn node_topology_labels_are_their_pods_locality() {
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let node = |zone: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: node-1, labels: {{topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: {zone}}}}}")
    };
    let changes = index.apply(objects(&node("eu-a")));
    let locality = workload(&changes, "Kubernetes//Pod/shop/cart-1").locality.expect("the node's place");
    assert_eq!((locality.region.as_str(), locality.zone.as_str(), locality.subzone.as_str()), ("eu", "eu-a", ""));
    assert!(!changes.iter().any(|c| c.name.contains("front-1")), "pods on other nodes are untouched");
    let moved = index.apply(objects(&node("eu-b")));
    assert_eq!(workload(&moved, "Kubernetes//Pod/shop/cart-1").locality.unwrap().zone, "eu-b");
}

#[test]
fn traffic_distribution_and_local_policy_become_the_services_load_balancing() {
    use ambit_shared::proto::workload::load_balancing::{Mode, Scope};
    let mut index = Index::new(MeshSettings::default());
    index.apply(objects(BASE));
    let mut lb = |spec: &str, annotations: &str| {
        let changes = index.apply(objects(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: cart, namespace: shop, annotations: {{{annotations}}}}}\nspec: {{clusterIP: 10.96.0.10, selector: {{app: cart}}, ports: [{{port: 80}}]{spec}}}"
        )));
        let lb = service_change(&changes, "shop/cart.shop.svc.cluster.local")
            .and_then(|s| s.load_balancing)
            .unwrap_or_default();
        (lb.routing_preference.iter().map(|s| Scope::try_from(*s).unwrap()).collect::<Vec<_>>(), lb.mode())
    };
    let close = (vec![Scope::Network, Scope::Region, Scope::Zone], Mode::Failover);
    assert_eq!(lb(", trafficDistribution: PreferClose", ""), close, "the zone, not the subzone (as Istio)");
    assert_eq!(lb("", "networking.istio.io/traffic-distribution: PreferClose"), close, "Istio's annotation");
    assert_eq!(
        lb(", internalTrafficPolicy: Local, trafficDistribution: PreferClose", ""),
        (vec![Scope::Node], Mode::Strict)
    );
    assert_eq!(lb(", trafficDistribution: PreferSameNode", "").0.last(), Some(&Scope::Node));
}
