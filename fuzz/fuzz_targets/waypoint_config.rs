//! A waypoint's L7 configuration as the control plane (or anyone who could forge it) sends it:
//! decoding and compiling never panic, and a compiled configuration authorizes both an HTTP
//! request and a TCP connection without panicking.
#![no_main]

use ambit_shared::proto::waypoint as pb;
use ambit_waypoint::l7::{authorize, Layer, ServiceL7, Subject};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = pb::ServiceConfig::decode(data) else { return };
    let Ok(compiled) = ServiceL7::compile(&config) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", http::HeaderValue::from_static("tester"));
    let claims = serde_json::json!({"aud": ["shop"], "groups": ["admins"], "realm": {"roles": ["x"]}});
    let identity: Option<ambit_shared::Identity> = "spiffe://cluster.local/ns/shop/sa/frontend".parse().ok();
    let subject = Subject {
        principal: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
        identity: identity.as_ref(),
        namespace: Some("shop"),
        request_principal: Some("https://issuer.example/user"),
        source_ip: "10.244.1.5".parse().expect("ip"),
        remote_ip: "::ffff:10.244.1.5".parse().expect("ip"),
        destination_ip: "10.96.0.10".parse().expect("ip"),
        host: "reviews.shop.svc.cluster.local:8080",
        port: 8080,
        method: "GET",
        path: "/admin/keys",
        query: Some("debug=1"),
        headers: &headers,
        claims: Some(&claims),
    };
    let _ = authorize(&compiled.policies, &subject, Layer::Http);
    let _ = authorize(&compiled.policies, &subject, Layer::Tcp);
});
