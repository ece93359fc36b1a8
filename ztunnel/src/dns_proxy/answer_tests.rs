use super::*;
use ambit_dataplane::state::testing::{svc, wl};
use hickory_proto::op::Query;
use hickory_proto::rr::Name;

fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x1234).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m.to_vec().unwrap()
}

fn client(ns: &str) -> Client {
    Client {
        namespace: ns.into(),
        network: "".into(),
        workload_uid: "nobody".into(),
        cluster_domain: "cluster.local".into(),
    }
}

fn state() -> State {
    let mut s = State::default();
    s.insert_service(svc("shop", "frontend.shop.svc.cluster.local", [10, 96, 0, 5]));
    s.insert_service(svc("other", "frontend.shop.svc.cluster.local", [10, 96, 0, 99]));
    s.insert_service(svc("egress", "api.example.com", [240, 240, 0, 7]));
    s.insert_service(svc("egress", "*.wild.example", [240, 240, 0, 8]));
    // A headless service: no virtual address, its pods answer.
    let mut headless = svc("shop", "db.shop.svc.cluster.local", [0, 0, 0, 0]);
    headless.vips.clear();
    s.insert_service(headless);
    s.insert_workload(wl("db-0", "shop", "db", "10.244.1.7", Some("shop/db.shop.svc.cluster.local"), true));
    s.insert_workload(wl("db-1", "shop", "db", "10.244.2.7", Some("shop/db.shop.svc.cluster.local"), false));
    // A DNS entry without an address: left to the real DNS.
    let mut dns = svc("egress", "plain.example.org", [0, 0, 0, 0]);
    dns.vips.clear();
    s.insert_service(dns);
    s
}

fn answered(d: Decision) -> Message {
    match d {
        Decision::Answer(m) => *m,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers().iter().map(|r| r.data().to_string()).collect()
}

#[test]
fn registry_names_get_their_addresses() {
    let s = state();
    let m = answered(decide(&query("frontend.shop.svc.cluster.local.", RecordType::A), &s, &client("shop")));
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative() && m.recursion_available() && m.recursion_desired());
    assert_eq!(addresses(&m), ["10.96.0.5"], "the client's own namespace first");
    assert_eq!(m.answers()[0].ttl(), ANSWER_TTL);
    assert_eq!(m.queries()[0].name().to_ascii(), "frontend.shop.svc.cluster.local.");
    let m = answered(decide(&query("frontend.shop.svc.cluster.local.", RecordType::A), &s, &client("visitors")));
    assert_eq!(addresses(&m), ["10.96.0.5"], "else the Kubernetes name's own namespace, not another's claim");
    let m = answered(decide(&query("frontend.shop.svc.cluster.local.", RecordType::A), &s, &client("other")));
    assert_eq!(addresses(&m), ["10.96.0.5"], "a Kubernetes name is its namespace's, even for the claimant's pods");
    let m = answered(decide(&query("API.Example.COM.", RecordType::A), &s, &client("shop")));
    assert_eq!(addresses(&m), ["240.240.0.7"], "names are case-insensitive");
    assert_eq!(m.queries()[0].name().to_ascii(), "API.Example.COM.", "the question is echoed as asked");
}

#[test]
fn no_namespace_answers_for_another() {
    let mut s = state();
    // Wildcards over the cluster domain, over a top-level domain, a Kubernetes pod name of
    // another namespace, and a public name claimed by two namespaces.
    s.insert_service(svc("evil", "*.svc.cluster.local", [198, 51, 100, 1]));
    s.insert_service(svc("evil", "*.cluster.local", [198, 51, 100, 2]));
    s.insert_service(svc("evil", "*.com", [198, 51, 100, 3]));
    s.insert_service(svc("evil", "web-0.nginx.shop.svc.cluster.local", [198, 51, 100, 4]));
    s.insert_service(svc("evil", "db.cluster.local", [198, 51, 100, 6]));
    s.insert_service(svc("aaa", "api.stripe.com", [198, 51, 100, 5]));
    s.insert_service(svc("payments", "api.stripe.com", [240, 240, 1, 1]));
    for name in [
        "api.stripe.com.shop.svc.cluster.local.",
        "anything.cluster.local.",
        "db.cluster.local.",
        "x.com.",
        "web-0.nginx.shop.svc.cluster.local.",
        "api.stripe.com.",
    ] {
        assert!(
            matches!(decide(&query(name, RecordType::A), &s, &client("shop")), Decision::Forward(_)),
            "{name} is left to the real DNS for a pod of shop"
        );
    }
    let m = answered(decide(&query("api.stripe.com.", RecordType::A), &s, &client("payments")));
    assert_eq!(addresses(&m), ["240.240.1.1"], "a namespace's own entry");
    let m = answered(decide(&query("db.cluster.local.", RecordType::A), &s, &client("evil")));
    assert_eq!(addresses(&m), ["198.51.100.6"], "a cluster name outside svc: only for the claimant's own pods");
}

#[test]
fn other_family_is_no_data_not_nxdomain() {
    let m = answered(decide(&query("api.example.com.", RecordType::AAAA), &state(), &client("shop")));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
}

#[test]
fn clients_get_only_their_address_families() {
    let mut s = state();
    let mut dual = svc("shop", "dual.shop.svc.cluster.local", [10, 96, 0, 6]);
    dual.vips.push(("".into(), "fd00::6".parse().unwrap()));
    s.insert_service(dual);
    s.insert_workload(wl("v4-pod", "shop", "sa", "10.244.1.9", None, true));
    let v4_only = Client { workload_uid: "v4-pod".into(), ..client("shop") };
    let m = answered(decide(&query("dual.shop.svc.cluster.local.", RecordType::AAAA), &s, &v4_only));
    assert!(m.answers().is_empty(), "an IPv4-only pod gets no IPv6 address");
    let m = answered(decide(&query("dual.shop.svc.cluster.local.", RecordType::AAAA), &s, &client("shop")));
    assert_eq!(addresses(&m), ["fd00::6"], "a pod not known yet gets both families");
}

#[test]
fn wildcards_cover_subdomains() {
    let s = state();
    let m = answered(decide(&query("a.b.wild.example.", RecordType::A), &s, &client("shop")));
    assert_eq!(addresses(&m), ["240.240.0.8"]);
    assert!(matches!(decide(&query("wild.example.", RecordType::A), &s, &client("shop")), Decision::Forward(_)));
}

#[test]
fn headless_services_answer_their_healthy_pods() {
    let m = answered(decide(&query("db.shop.svc.cluster.local.", RecordType::A), &state(), &client("shop")));
    assert_eq!(addresses(&m), ["10.244.1.7"]);
}

#[test]
fn what_is_not_ours_is_forwarded() {
    let s = state();
    for (name, kind) in [
        ("www.debian.org.", RecordType::A),
        ("plain.example.org.", RecordType::A),
        ("frontend.shop.svc.cluster.local.", RecordType::TXT),
        ("_http._tcp.frontend.shop.svc.cluster.local.", RecordType::SRV),
        ("frontend.shop.svc.cluster.local.", RecordType::ANY),
        ("frontend.shop.shop.svc.cluster.local.", RecordType::A),
    ] {
        assert!(matches!(decide(&query(name, kind), &s, &client("shop")), Decision::Forward(_)), "{name} {kind}");
    }
    let mut update = Message::from_vec(&query("shop.example.", RecordType::SOA)).unwrap();
    update.set_op_code(OpCode::Update);
    assert!(
        matches!(decide(&update.to_vec().unwrap(), &s, &client("shop")), Decision::Forward(_)),
        "DNS UPDATE goes to the server that can take it"
    );
}

#[test]
fn malformed_messages_get_formerr_and_responses_nothing() {
    let s = state();
    assert!(matches!(decide(&[1, 2, 3], &s, &client("shop")), Decision::Drop), "no header, no reply");
    let mut bad = query("api.example.com.", RecordType::A);
    bad.truncate(bad.len() - 3);
    match decide(&bad, &s, &client("shop")) {
        Decision::Reply(r) => {
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(m.id(), 0x1234);
            assert_eq!(m.response_code(), ResponseCode::FormErr);
            assert_eq!(m.message_type(), MessageType::Response);
        }
        other => panic!("expected FORMERR, got {other:?}"),
    }
    let mut two = Message::from_vec(&query("api.example.com.", RecordType::A)).unwrap();
    two.add_query(Query::query(Name::from_ascii("b.example.").unwrap(), RecordType::A));
    assert!(matches!(decide(&two.to_vec().unwrap(), &s, &client("shop")), Decision::Reply(_)), "two questions");
    let mut response = query("api.example.com.", RecordType::A);
    response[2] |= 0x80;
    assert!(matches!(decide(&response, &s, &client("shop")), Decision::Drop), "a response is never answered");
}

#[test]
fn udp_answers_that_do_not_fit_are_truncated() {
    let mut s = State::default();
    let mut many = svc("shop", "many.shop.svc.cluster.local", [0, 0, 0, 0]);
    many.vips.clear();
    s.insert_service(many);
    for i in 0..60u8 {
        s.insert_workload(wl(
            &format!("p{i}"),
            "shop",
            "sa",
            &format!("10.244.3.{i}"),
            Some("shop/many.shop.svc.cluster.local"),
            true,
        ));
    }
    let packet = query("many.shop.svc.cluster.local.", RecordType::A);
    let m = answered(decide(&packet, &s, &client("shop")));
    assert_eq!(m.answers().len(), 60);
    let q = Message::from_vec(&packet).unwrap();
    let bytes = encode_for_udp(m.clone(), udp_limit(&q)).unwrap();
    let udp = Message::from_vec(&bytes).unwrap();
    assert!(udp.truncated() && udp.answers().is_empty(), "over 512 bytes without EDNS: TC, ask over TCP");
    let tcp = Message::from_vec(&encode_for_udp(m, 65_535).unwrap()).unwrap();
    assert_eq!(tcp.answers().len(), 60);
}
