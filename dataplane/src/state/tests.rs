use super::testing::{svc, wl};
use super::*;

const CART: &str = "shop/cart.shop.svc.cluster.local";

#[test]
fn original_destination_lookup() {
    let mut s = State::default();
    s.insert_service(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]));
    s.insert_workload(wl("w1", "shop", "cart", "10.1.0.5", Some(CART), true));
    match s.destination("", "10.96.0.10:80".parse().unwrap()) {
        Destination::Service { service, port } => assert_eq!((&*service.key, port), (CART, 80)),
        other => panic!("{other:?}"),
    }
    match s.destination("", "10.1.0.5:8080".parse().unwrap()) {
        Destination::Workload(w) => assert_eq!(&*w.uid, "w1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.destination("", "93.184.216.34:443".parse().unwrap()), Destination::Passthrough));
    assert!(matches!(s.destination("other-net", "10.1.0.5:8080".parse().unwrap()), Destination::Passthrough));
    // Removal cleans the indexes.
    assert!(s.remove_workload("w1"));
    assert!(matches!(s.destination("", "10.1.0.5:8080".parse().unwrap()), Destination::Passthrough));
}

#[test]
fn endpoint_selection_skips_unhealthy_and_spreads_evenly() {
    let mut s = State::default();
    let service = svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10]);
    s.insert_service(service.clone());
    s.insert_workload(wl("a", "shop", "cart", "10.1.0.5", Some(CART), true));
    s.insert_workload(wl("b", "shop", "cart", "10.1.0.6", Some(CART), true));
    s.insert_workload(wl("sick", "shop", "cart", "10.1.0.7", Some(CART), false));
    let eps = s.endpoints(&service, 80);
    assert_eq!(eps.len(), 2);
    assert!(eps.iter().all(|(w, port)| &*w.uid != "sick" && *port == 8080));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10_000 {
        let (w, _) = pick_endpoint(&eps).unwrap();
        *counts.entry(w.uid.to_string()).or_default() += 1;
    }
    for (uid, n) in &counts {
        assert!((4_500..=5_500).contains(n), "{uid} picked {n} times of 10000");
    }
    assert!(s.endpoints(&service, 443).is_empty(), "no endpoint maps port 443");
    let mut remote = wl("r", "shop", "cart", "10.9.0.5", Some(CART), true);
    remote.network = "west".into();
    s.insert_workload(remote);
    assert_eq!(s.endpoints(&service, 80).len(), 3);
    let local = s.endpoints_on(&service, 80, "");
    assert!(local.len() == 2 && local.iter().all(|(w, _)| &*w.uid != "r"), "another network's endpoint is not local");
    assert_eq!(&*s.endpoints_on(&service, 80, "west")[0].0.uid, "r");
    assert!(pick_endpoint(&[]).is_none());
}

#[test]
fn malformed_xds_resources_are_rejected_by_name() {
    use prost::Message;
    let mut updater = Updater::default();
    let bad_addr = pb::Address {
        r#type: Some(address::Type::Workload(pb::Workload {
            uid: "w".into(),
            addresses: vec![vec![1, 2, 3]],
            namespace: "a".into(),
            ..Default::default()
        })),
    };
    let good = pb::Address {
        r#type: Some(address::Type::Workload(pb::Workload {
            uid: "ok".into(),
            namespace: "a".into(),
            ..Default::default()
        })),
    };
    let res = |name: &str, m: &pb::Address| xds::Resource {
        name: name.into(),
        version: "1".into(),
        body: ambit_shared::proto::Any { type_url: ADDRESS.into(), value: m.encode_to_vec().into() },
    };
    let rejected = xds::Handler::handle(
        &mut updater,
        Update { type_url: ADDRESS, added: vec![res("w", &bad_addr), res("ok", &good)], removed: vec![] },
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "w");
    assert!(rejected[0].reason.contains("3 bytes"), "{}", rejected[0].reason);
    assert!(updater.state.read().unwrap().workload("ok").is_some());
    xds::Handler::handle(&mut updater, Update { type_url: ADDRESS, added: vec![], removed: vec!["ok".into()] });
    assert!(updater.state.read().unwrap().workload("ok").is_none());
}

#[test]
fn the_registry_only_extension_is_read_by_name() {
    let base = pb::Workload {
        uid: "w".into(),
        namespace: "shop".into(),
        addresses: vec![vec![10, 1, 0, 5]],
        ..Default::default()
    };
    assert!(!Workload::try_from(base.clone()).unwrap().registry_only);
    let other = pb::Extension { name: "example.com/other".into(), config: None };
    let mine = pb::Extension { name: ambit_shared::proto::REGISTRY_ONLY_EXTENSION.into(), config: None };
    let w = pb::Workload { extensions: vec![other.clone()], ..base.clone() };
    assert!(!Workload::try_from(w).unwrap().registry_only);
    let w = pb::Workload { extensions: vec![other, mine], ..base };
    assert!(Workload::try_from(w).unwrap().registry_only);
}

#[test]
fn a_mesh_workload_keeps_its_address_against_a_plain_one() {
    let mut s = State::default();
    let pod = wl("pod", "shop", "cart", "10.1.0.5", None, true);
    let mut entry = wl("se-endpoint", "evil", "default", "10.1.0.5", None, true);
    entry.hbone = false;
    s.insert_workload(pod);
    s.insert_workload(entry.clone());
    let at = |s: &State| s.workload_by_addr("", "10.1.0.5".parse().unwrap()).map(|w| w.uid.to_string());
    assert_eq!(at(&s).as_deref(), Some("pod"), "a later plain workload does not take a mesh pod's address");
    // Gone and back: whoever is left holds the address, the mesh one first.
    s.remove_workload("pod");
    assert_eq!(at(&s).as_deref(), Some("se-endpoint"));
    s.insert_workload(wl("pod", "shop", "cart", "10.1.0.5", None, true));
    assert_eq!(at(&s).as_deref(), Some("pod"));
    s.remove_workload("se-endpoint");
    assert_eq!(at(&s).as_deref(), Some("pod"), "removing the shadowed one leaves the owner");
}

#[test]
fn a_vip_claimed_twice_stays_with_the_other_claimant_when_one_goes() {
    let mut s = State::default();
    s.insert_service(svc("team-a", "db.example", [240, 0, 0, 1]));
    s.insert_service(svc("team-b", "cache.example", [240, 0, 0, 1]));
    s.remove_service("team-b/cache.example");
    match s.destination("", "240.0.0.1:80".parse().unwrap()) {
        Destination::Service { service, .. } => assert_eq!(&*service.key, "team-a/db.example"),
        other => panic!("the VIP fell out of the registry: {other:?}"),
    }
}

#[test]
fn prefer_close_keeps_the_closest_endpoints_and_fails_over() {
    use pb::load_balancing::{Mode, Scope};
    let at = |uid: &str, node: &str, zone: &str| {
        let mut w = wl(uid, "shop", "sa", "10.0.0.1", Some("shop/web"), true);
        w.node = node.into();
        w.locality = ["r".into(), zone.into(), "".into()];
        Arc::new(w)
    };
    let client = at("client", "node-1", "a");
    let endpoints = |all: &[&Arc<Workload>]| all.iter().map(|w| (Arc::clone(w), 8080)).collect::<Vec<_>>();
    let (same_node, same_zone, far) = (at("n1", "node-1", "a"), at("z", "node-2", "a"), at("f", "node-3", "b"));
    let uids = |e: Vec<(Arc<Workload>, u16)>| e.iter().map(|(w, _)| w.uid.to_string()).collect::<Vec<_>>();
    let close = Routing::of(&pb::LoadBalancing {
        routing_preference: [Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone].map(|s| s as i32).to_vec(),
        mode: Mode::Failover as i32,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(uids(close.prefer(Some(&client), endpoints(&[&same_node, &same_zone, &far]))), ["n1", "z"]);
    assert_eq!(uids(close.prefer(Some(&client), endpoints(&[&far]))), ["f"], "the zone empty: fails over");
    assert_eq!(uids(close.prefer(None, endpoints(&[&far, &same_zone]))).len(), 2, "unknown client: any");
    let local = Routing::of(&pb::LoadBalancing {
        routing_preference: vec![Scope::Node as i32],
        mode: Mode::Strict as i32,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(uids(local.prefer(Some(&client), endpoints(&[&same_node, &same_zone]))), ["n1"]);
    assert!(local.prefer(Some(&client), endpoints(&[&same_zone, &far])).is_empty(), "strict: never elsewhere");
    assert!(local.prefer(None, endpoints(&[&same_node])).is_empty(), "strict: an unknown client gets none");
    assert!(Routing::of(&pb::LoadBalancing::default()).is_none());
}
