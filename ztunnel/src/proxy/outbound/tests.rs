use crate::metrics::Failure;
use ambit_shared::proto::workload::{GatewayAddress, NetworkAddress};

use super::*;
use ambit_dataplane::state::testing::{svc, wl};

const CART: &str = "shop/cart.shop.svc.cluster.local";

fn waypoint_at(ip: [u8; 4]) -> GatewayAddress {
    GatewayAddress {
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: String::new(),
            address: ip.to_vec(),
        })),
        hbone_mtls_port: 15008,
    }
}

#[test]
fn service_vip_goes_over_hbone_to_an_endpoint_with_its_identity() {
    let mut s = State::default();
    s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true));
    let Routed { plan, service, workload } = route(&s, "", "10.96.0.10:80".parse().unwrap(), None);
    match plan.unwrap() {
        Plan::Hbone { hbone_addr, authority, identities } => {
            assert_eq!(hbone_addr, "10.1.0.5:15008".parse().unwrap());
            assert_eq!(authority, "10.1.0.5:8080".parse().unwrap(), "target port of the endpoint");
            assert_eq!(identities[0].to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(service.unwrap().key.as_ref(), CART);
    assert_eq!(&*workload.unwrap().uid, "w1");
}

#[test]
fn no_healthy_endpoint_is_an_error_and_unknown_addresses_pass_through() {
    let mut s = State::default();
    s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), false));
    assert!(matches!(route(&s, "", "10.96.0.10:80".parse().unwrap(), None).plan, Err(RouteError::NoEndpoint(..))));
    let dst = "93.184.216.34:443".parse().unwrap();
    assert!(matches!(route(&s, "", dst, None).plan, Ok(Plan::Direct(d)) if d == dst));
}

#[test]
fn workloads_outside_hbone_get_plain_tcp() {
    let mut s = State::default();
    let mut w = wl("w1", "shop", "cart", "10.1.0.5", None, true);
    w.hbone = false;
    s.insert_workload(w);
    let dst = "10.1.0.5:9000".parse().unwrap();
    assert!(matches!(route(&s, "", dst, None).plan, Ok(Plan::Direct(d)) if d == dst));
}

#[test]
fn a_waypoint_gets_the_connection_with_the_original_vip_as_authority() {
    let mut s = State::default();
    let mut cart = svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]);
    cart.waypoint = Some(waypoint_at([10, 1, 0, 99]));
    s.insert_service(cart);
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true));
    s.insert_workload(wl("wp", "shop", "waypoint", "10.1.0.99", None, true));
    match route(&s, "", "10.96.0.10:80".parse().unwrap(), None).plan.unwrap() {
        Plan::Hbone { hbone_addr, authority, identities } => {
            assert_eq!(hbone_addr, "10.1.0.99:15008".parse().unwrap());
            assert_eq!(authority, "10.96.0.10:80".parse().unwrap(), "authority = VIP:port");
            assert_eq!(identities[0].to_string(), "spiffe://cluster.local/ns/shop/sa/waypoint");
        }
        other => panic!("{other:?}"),
    }
    // A workload bound to a waypoint directly.
    let mut w2 = wl("w2", "shop", "cart", "10.1.0.6", None, true);
    w2.waypoint = Some(waypoint_at([10, 1, 0, 99]));
    s.insert_workload(w2);
    match route(&s, "", "10.1.0.6:8080".parse().unwrap(), None).plan.unwrap() {
        Plan::Hbone { hbone_addr, authority, .. } => {
            assert_eq!((hbone_addr, authority), ("10.1.0.99:15008".parse().unwrap(), "10.1.0.6:8080".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    // An unresolvable waypoint fails closed rather than bypassing it.
    let mut w3 = wl("w3", "shop", "cart", "10.1.0.7", None, true);
    w3.waypoint = Some(waypoint_at([10, 1, 0, 250]));
    s.insert_workload(w3);
    assert!(matches!(route(&s, "", "10.1.0.7:8080".parse().unwrap(), None).plan, Err(RouteError::Waypoint(_))));
}

#[test]
fn endpoints_on_another_network_are_never_dialed_directly() {
    let mut s = State::default();
    s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
    let mut remote = wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true);
    remote.network = "west".into();
    remote.hbone = false;
    s.insert_workload(remote);
    assert!(matches!(route(&s, "", "10.96.0.10:80".parse().unwrap(), None).plan, Err(RouteError::NoEndpoint(..))));
}

#[test]
fn registry_only_sources_cannot_leave_the_registry() {
    let mut s = State::default();
    s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true));
    let mut plain = wl("w2", "legacy", "db", "10.1.0.9", None, true);
    plain.hbone = false;
    s.insert_workload(plain);
    let mut client = wl("c1", "shop", "client", "10.1.0.7", None, true);
    client.registry_only = true;
    let outside: SocketAddr = "93.184.216.34:443".parse().unwrap();
    // Outside the registry: refused, named, counted as the black hole (no service, no workload).
    let routed = route(&s, "", outside, Some(&client));
    assert!(matches!(routed.plan, Err(RouteError::NotInRegistry(d)) if d == outside), "{routed:?}");
    assert!(routed.service.is_none() && routed.workload.is_none());
    assert_eq!(ConnError::Route(RouteError::NotInRegistry(outside)).flags(), crate::metrics::ResponseFlags::BlackHole);
    // The registry stays reachable: a service over HBONE, a known workload outside HBONE directly.
    assert!(matches!(route(&s, "", "10.96.0.10:80".parse().unwrap(), Some(&client)).plan, Ok(Plan::Hbone { .. })));
    let legacy: SocketAddr = "10.1.0.9:5432".parse().unwrap();
    assert!(matches!(route(&s, "", legacy, Some(&client)).plan, Ok(Plan::Direct(d)) if d == legacy));
    // Without the policy, or with no known source workload, outside is reached directly.
    client.registry_only = false;
    assert!(matches!(route(&s, "", outside, Some(&client)).plan, Ok(Plan::Direct(_))));
    assert!(matches!(route(&s, "", outside, None).plan, Ok(Plan::Direct(_))));
}

#[test]
fn a_passthrough_service_entry_is_reached_as_addressed_and_is_in_the_registry() {
    let mut s = State::default();
    let mut entry = svc("ext", "api.example.com", [203, 0, 113, 10]);
    entry.passthrough = true;
    s.insert_service(entry);
    // Its address also belongs to a meshed pod: that pod stays in the mesh.
    let mut pinned = svc("evil", "pinned.example.com", [10, 1, 0, 5]);
    pinned.passthrough = true;
    s.insert_service(pinned);
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true));
    let mut client = wl("c1", "shop", "client", "10.1.0.7", None, true);
    client.registry_only = true;
    let dst: SocketAddr = "203.0.113.10:80".parse().unwrap();
    let routed = route(&s, "", dst, Some(&client));
    assert!(matches!(routed.plan, Ok(Plan::Direct(d)) if d == dst), "{routed:?}");
    assert_eq!(routed.service.unwrap().hostname.as_ref(), "api.example.com", "counted as the entry");
    let routed = route(&s, "", "10.1.0.5:8080".parse().unwrap(), Some(&client));
    assert!(matches!(routed.plan, Ok(Plan::Hbone { .. })), "never plaintext to a meshed pod: {routed:?}");
}

#[test]
fn registry_only_sources_reach_host_network_workloads_through_services_only() {
    let mut s = State::default();
    let mut node_agent = wl("ds-1", "kube-system", "agent", "10.240.0.12", None, true);
    node_agent.hbone = false;
    node_agent.host_network = true;
    s.insert_workload(node_agent);
    let mut client = wl("c1", "shop", "client", "10.1.0.7", None, true);
    client.registry_only = true;
    let kubelet: SocketAddr = "10.240.0.12:10250".parse().unwrap();
    assert!(matches!(route(&s, "", kubelet, Some(&client)).plan, Err(RouteError::NotInRegistry(_))));
    client.registry_only = false;
    assert!(matches!(route(&s, "", kubelet, Some(&client)).plan, Ok(Plan::Direct(_))));
}

#[test]
fn no_service_entry_takes_traffic_addressed_to_a_meshed_pod() {
    let mut s = State::default();
    s.insert_workload(wl("pay", "payments", "pay", "10.1.0.17", None, true));
    // An entry claiming the pod's address as its VIP, with its own (plain) endpoint.
    let mut grab = svc("evil", "grab.example", [10, 1, 0, 17]);
    grab.passthrough = false;
    s.insert_service(grab);
    let mut attacker = wl("evil-ep", "evil", "default", "10.9.9.9", Some("evil/grab.example"), true);
    attacker.hbone = false;
    s.insert_workload(attacker);
    let routed = route(&s, "", "10.1.0.17:80".parse().unwrap(), None);
    match routed.plan {
        Ok(Plan::Hbone { hbone_addr, identities, .. }) => {
            assert_eq!(hbone_addr, "10.1.0.17:15008".parse().unwrap());
            assert_eq!(identities[0].to_string(), "spiffe://cluster.local/ns/payments/sa/pay");
        }
        other => panic!("traffic to a meshed pod went elsewhere: {other:?}"),
    }
    // An entry whose plain endpoint is a meshed pod's address: that pod, over HBONE.
    let mut s = State::default();
    s.insert_workload(wl("pay", "payments", "pay", "10.1.0.17", None, true));
    s.insert_service(svc("evil", "db.example", [240, 0, 0, 9]));
    let mut endpoint = wl("se-ep", "evil", "default", "10.1.0.17", Some("evil/db.example"), true);
    endpoint.hbone = false;
    s.insert_workload(endpoint);
    let routed = route(&s, "", "240.0.0.9:80".parse().unwrap(), None);
    assert!(matches!(routed.plan, Ok(Plan::Hbone { .. })), "plaintext to a meshed pod: {routed:?}");
    // An entry whose plain endpoint is a Service's virtual address (kube-proxy would carry it
    // to the Service's pods in plaintext, around their waypoint), or the same written as an
    // IPv4-mapped address: refused.
    for vip in ["10.96.0.10", "::ffff:10.96.0.10"] {
        let mut s = State::default();
        s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
        s.insert_service(svc("evil", "db.example", [240, 0, 0, 9]));
        let mut endpoint = wl("se-ep", "evil", "default", vip, Some("evil/db.example"), true);
        endpoint.hbone = false;
        s.insert_workload(endpoint);
        let routed = route(&s, "", "240.0.0.9:80".parse().unwrap(), None);
        assert!(matches!(routed.plan, Err(RouteError::Forbidden(_))), "{vip}: {routed:?}");
    }
    // An entry's own address as its endpoint (STATIC with `addresses: [X]`, `endpoints: [X]`)
    // is the entry's, not another service's: allowed.
    let mut s = State::default();
    s.insert_service(svc("egress", "db.example", [203, 0, 113, 9]));
    let mut endpoint = wl("se-ep", "egress", "default", "203.0.113.9", Some("egress/db.example"), true);
    endpoint.hbone = false;
    s.insert_workload(endpoint);
    let routed = route(&s, "", "203.0.113.9:80".parse().unwrap(), None);
    assert!(matches!(routed.plan, Ok(Plan::Direct(_))), "{routed:?}");
}

#[test]
fn a_passthrough_entry_registers_only_its_ports() {
    let mut s = State::default();
    let mut entry = svc("ext", "api.example.com", [203, 0, 113, 10]);
    entry.passthrough = true;
    s.insert_service(entry);
    let mut client = wl("c1", "shop", "client", "10.1.0.7", None, true);
    client.registry_only = true;
    assert!(matches!(route(&s, "", "203.0.113.10:80".parse().unwrap(), Some(&client)).plan, Ok(Plan::Direct(_))));
    let ssh: SocketAddr = "203.0.113.10:22".parse().unwrap();
    assert!(matches!(route(&s, "", ssh, Some(&client)).plan, Err(RouteError::NotInRegistry(_))));
}

#[test]
fn dns_answers_may_not_lead_to_the_pod_or_the_node() {
    for bad in ["127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.1", "::1", "fe80::1", "::ffff:127.0.0.1"] {
        assert!(!ambit_dataplane::resolve::routable(bad.parse().unwrap()), "{bad}");
    }
    for good in ["10.240.0.12", "203.0.113.9", "2001:db8::1"] {
        assert!(ambit_dataplane::resolve::routable(good.parse().unwrap()), "{good}");
    }
}

#[test]
fn a_waypoint_that_does_not_exist_refuses_the_connection() {
    use ambit_shared::proto::workload::NamespacedHostname;
    let mut s = State::default();
    let mut entry = svc("egress", "www.example.com", [240, 240, 0, 9]);
    entry.waypoint = Some(GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: "egress".into(),
            hostname: "not-there.egress.svc.cluster.local".into(),
        })),
        hbone_mtls_port: 15008,
    });
    s.insert_service(entry);
    let mut endpoint = wl("ep", "egress", "default", "203.0.113.5", Some("egress/www.example.com"), true);
    endpoint.hbone = false;
    s.insert_workload(endpoint);
    let routed = route(&s, "", "240.240.0.9:80".parse().unwrap(), None);
    assert!(matches!(routed.plan, Err(RouteError::Waypoint(_))), "never around the waypoint: {routed:?}");
}
