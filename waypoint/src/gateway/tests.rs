use ambit_shared::proto::waypoint as pb;

use super::*;

fn cert(names: &[&str]) -> pb::ServerCertificate {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    pb::ServerCertificate { cert_chain: cert.pem(), private_key: key.serialize_pem(), source: "shop/tls".into() }
}

fn route(name: &str, hosts: &[&str], backend_port: u32) -> pb::Route {
    pb::Route {
        name: name.into(),
        hostnames: hosts.iter().map(|h| h.to_string()).collect(),
        backends: vec![pb::Backend {
            namespace: "shop".into(),
            hostname: "frontend.shop.svc.cluster.local".into(),
            port: backend_port,
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str, port: u32, protocol: pb::ListenerProtocol, hostname: &str) -> pb::GatewayListener {
    pb::GatewayListener {
        name: name.into(),
        port,
        protocol: protocol as i32,
        hostname: hostname.into(),
        certificates: if protocol == pb::ListenerProtocol::ListenerHttps { vec![cert(&[hostname])] } else { vec![] },
        routes: vec![route(&format!("r-{name}"), &[], 80)],
    }
}

fn gateway(listeners: Vec<pb::GatewayListener>) -> pb::GatewayConfig {
    pb::GatewayConfig { namespace: "ingress".into(), name: "public".into(), listeners, ..Default::default() }
}

#[test]
fn listeners_on_a_port_share_one_plan_by_protocol() {
    let g = GatewayL7::compile(&gateway(vec![
        listener("http", 8080, pb::ListenerProtocol::ListenerHttp, ""),
        listener("a", 8443, pb::ListenerProtocol::ListenerHttps, "a.example.com"),
        listener("wild", 8443, pb::ListenerProtocol::ListenerHttps, "*.example.com"),
        listener("tls", 9443, pb::ListenerProtocol::ListenerTlsPassthrough, "db.example.com"),
        listener("tcp", 9000, pb::ListenerProtocol::ListenerTcp, ""),
    ]))
    .expect("compiles");
    assert!(matches!(g.ports.get(&8080), Some(PortPlan::Http(l7)) if l7.routed_only && l7.routes.len() == 1));
    let Some(PortPlan::Https(https)) = g.ports.get(&8443) else { panic!("8443 is HTTPS") };
    assert_eq!(https.choose(Some("a.example.com")).map(|l| l.name.as_str()), Some("a"), "exact beats wildcard");
    assert_eq!(https.choose(Some("B.Example.com.")).map(|l| l.name.as_str()), Some("wild"));
    assert_eq!(
        https.choose(Some("x.y.example.com")).map(|l| l.name.as_str()),
        Some("wild"),
        "a wildcard covers any depth"
    );
    assert!(https.choose(Some("example.com")).is_none(), "a wildcard never covers its own suffix");
    assert!(https.choose(None).is_none(), "no SNI: only a listener without a hostname");
    assert!(matches!(g.ports.get(&9443), Some(PortPlan::Passthrough(_))));
    assert!(matches!(g.ports.get(&9000), Some(PortPlan::Tcp(l)) if l.name == "tcp"));
}

#[test]
fn a_listener_without_a_hostname_takes_what_no_other_claims() {
    let g = GatewayL7::compile(&gateway(vec![
        listener("any", 443, pb::ListenerProtocol::ListenerHttps, ""),
        listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com"),
    ]))
    .expect("compiles");
    let Some(PortPlan::Https(https)) = g.ports.get(&443) else { panic!("HTTPS") };
    assert_eq!(https.choose(Some("a.example.com")).map(|l| l.name.as_str()), Some("a"));
    assert_eq!(https.choose(Some("other.test")).map(|l| l.name.as_str()), Some("any"));
    assert_eq!(https.choose(None).map(|l| l.name.as_str()), Some("any"));
}

#[test]
fn refuses_what_it_cannot_serve_safely() {
    // Two protocols on one port.
    let err = GatewayL7::compile(&gateway(vec![
        listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com"),
        listener("b", 443, pb::ListenerProtocol::ListenerTlsPassthrough, "b.example.com"),
    ]))
    .expect_err("mixed");
    assert!(err.to_string().contains("mix protocols"), "{err}");
    // HTTPS without a certificate.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates.clear();
    assert!(GatewayL7::compile(&gateway(vec![l])).is_err());
    // A key that is not the certificate's.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates[0].private_key = cert(&["other"]).private_key;
    let err = GatewayL7::compile(&gateway(vec![l])).expect_err("mismatch");
    assert!(err.to_string().contains("does not match"), "{err}");
    // A backend without a port: there is no request port to fall back to.
    let mut l = listener("h", 80, pb::ListenerProtocol::ListenerHttp, "");
    l.routes[0].backends[0].port = 0;
    assert!(GatewayL7::compile(&gateway(vec![l])).is_err());
    // Garbage for a certificate.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates[0].cert_chain = "not a certificate".into();
    assert!(GatewayL7::compile(&gateway(vec![l])).is_err());
}

#[test]
fn http_listeners_on_a_port_put_specific_hosts_first() {
    let mut any = listener("any", 80, pb::ListenerProtocol::ListenerHttp, "");
    any.routes = vec![route("catch-all", &[], 80)];
    let mut shop = listener("shop", 80, pb::ListenerProtocol::ListenerHttp, "shop.example.com");
    shop.routes = vec![route("shop", &["shop.example.com"], 80)];
    let g = GatewayL7::compile(&gateway(vec![any, shop])).expect("compiles");
    let Some(PortPlan::Http(l7)) = g.ports.get(&80) else { panic!("HTTP") };
    let names: Vec<&str> = l7.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop", "catch-all"]);
    assert!(l7.routes[0].serves_host("shop.example.com") && !l7.routes[0].serves_host("other"));
}
