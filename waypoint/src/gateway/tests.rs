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
        refused: false,
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
    .compiled();
    assert!(
        matches!(g.ports.get(&8080), Some(PortPlan::Http(l)) if l.listeners[0].l7.routed_only && l.listeners[0].l7.routes.len() == 1)
    );
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
    .compiled();
    let Some(PortPlan::Https(https)) = g.ports.get(&443) else { panic!("HTTPS") };
    assert_eq!(https.choose(Some("a.example.com")).map(|l| l.name.as_str()), Some("a"));
    assert_eq!(https.choose(Some("other.test")).map(|l| l.name.as_str()), Some("any"));
    assert_eq!(https.choose(None).map(|l| l.name.as_str()), Some("any"));
}

/// What compiled, with nothing left out.
trait Compiled {
    fn compiled(self) -> GatewayL7;
}

impl Compiled for (GatewayL7, Vec<GatewayError>) {
    fn compiled(self) -> GatewayL7 {
        assert!(self.1.is_empty(), "{:?}", self.1);
        self.0
    }
}

#[test]
fn what_it_cannot_serve_only_claims_its_hostname_and_the_rest_serves() {
    let good = || listener("good", 8080, pb::ListenerProtocol::ListenerHttp, "");
    // (compiled, why), the good listener serving in every case.
    let compile = |l: pb::GatewayListener| {
        let (g, dropped) = GatewayL7::compile(&gateway(vec![good(), l]));
        assert!(g.ports.contains_key(&8080), "the good listener serves");
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        (g, dropped[0].to_string())
    };
    // A claim: its hostname is held (no certificate, no routes), so its hosts never reach a
    // less specific listener.
    let claimed = |g: &GatewayL7, port: u16, host: &str| {
        let l = match g.ports.get(&port) {
            Some(PortPlan::Https(l) | PortPlan::Http(l)) => l.choose(Some(host)).expect("claimed").clone(),
            other => panic!("{other:?}"),
        };
        assert!(l.key.is_none() && l.l7.routes.is_empty() && l.l7.routed_only, "{l:?}");
    };
    // Two protocols on one port: the later one is left out.
    let (g, why) = compile(listener("b", 8080, pb::ListenerProtocol::ListenerTlsPassthrough, "b.example.com"));
    assert!(why.contains("mix protocols"), "{why}");
    assert!(matches!(g.ports.get(&8080), Some(PortPlan::Http(l)) if l.listeners.len() == 1));
    // HTTPS without a certificate.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates.clear();
    claimed(&compile(l).0, 443, "a.example.com");
    // A key that is not the certificate's.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates[0].private_key = cert(&["other"]).private_key;
    let (g, why) = compile(l);
    assert!(why.contains("does not match"), "{why}");
    claimed(&g, 443, "a.example.com");
    // A backend without a port: there is no request port to fall back to.
    let mut l = listener("h", 80, pb::ListenerProtocol::ListenerHttp, "h.example.com");
    l.routes[0].backends[0].port = 0;
    claimed(&compile(l).0, 80, "h.example.com");
    // Garbage for a certificate.
    let mut l = listener("a", 443, pb::ListenerProtocol::ListenerHttps, "a.example.com");
    l.certificates[0].cert_chain = "not a certificate".into();
    claimed(&compile(l).0, 443, "a.example.com");
    // A regular expression that only compiles unanchored.
    let mut l = listener("r", 81, pb::ListenerProtocol::ListenerHttp, "r.example.com");
    l.routes[0].matches = vec![pb::Match {
        path: "(?x)a#".into(),
        has_path: true,
        path_kind: pb::PathKind::PathRegex as i32,
        ..Default::default()
    }];
    claimed(&compile(l).0, 81, "r.example.com");
    // One the controller refused: a claim, nothing to report.
    let mut l = listener("x", 443, pb::ListenerProtocol::ListenerHttps, "x.example.com");
    l.refused = true;
    l.certificates.clear();
    let (g, dropped) = GatewayL7::compile(&gateway(vec![good(), l]));
    assert!(dropped.is_empty());
    claimed(&g, 443, "x.example.com");
}

#[test]
fn http_listeners_on_a_port_keep_their_own_routes() {
    let mut any = listener("any", 80, pb::ListenerProtocol::ListenerHttp, "");
    any.routes = vec![route("catch-all", &[], 80)];
    let mut shop = listener("shop", 80, pb::ListenerProtocol::ListenerHttp, "shop.example.com");
    shop.routes = vec![route("shop", &["shop.example.com"], 80)];
    let g = GatewayL7::compile(&gateway(vec![any, shop])).compiled();
    let Some(PortPlan::Http(listeners)) = g.ports.get(&80) else { panic!("HTTP") };
    // A Host chooses its listener, whose routes alone apply: shop's requests never fall
    // through to the catch-all listener's routes.
    let chosen = listeners.choose(Some("shop.example.com")).unwrap();
    assert_eq!(chosen.name, "shop");
    assert_eq!(chosen.l7.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["shop"]);
    assert_eq!(listeners.choose(Some("other.test")).unwrap().name, "any");
}
