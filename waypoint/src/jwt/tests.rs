use ambit_shared::testing::TestIssuer;

use super::*;

fn rule(issuer: &TestIssuer, audiences: &[&str], forward: bool) -> Rule {
    Rule::compile(&pb::JwtRule {
        source: "shop/jwt".into(),
        issuer: issuer.issuer.clone(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: issuer.jwks.clone(),
        output_claim_to_headers: vec![pb::ClaimToHeader { header: "x-group".into(), claim: "group".into() }],
        forward_original_token: forward,
        ..Default::default()
    })
    .unwrap()
}

fn parts(auth: Option<&str>, query: &str) -> http::request::Parts {
    let mut b = http::Request::get(format!("/path{query}"));
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn valid_invalid_and_missing_tokens() {
    let issuer = TestIssuer::new("https://issuer.example");
    let rules = [rule(&issuer, &["shop"], false)];
    let keys = KeySets::default();

    let token = issuer.token("alice", "shop", 300, serde_json::json!({"group": "admins"}));
    let mut p = parts(Some(&format!("Bearer {token}")), "");
    match authenticate(&rules, &keys, &mut p).await {
        Verdict::Valid { principal, claims } => {
            assert_eq!(principal, "https://issuer.example/alice");
            assert_eq!(claims["group"], "admins");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.headers["x-group"], "admins", "claim copied to a header");
    assert!(p.headers.get("authorization").is_none(), "token removed unless forwarded");

    let mut p = parts(None, "");
    assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Anonymous));

    let by_param = issuer.token("bob", "shop", 300, serde_json::json!({}));
    let mut p = parts(None, &format!("?access_token={by_param}"));
    assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Valid { .. }), "access_token parameter");

    let cases = [
        (issuer.token("alice", "shop", -600, serde_json::json!({})), "expired"),
        (issuer.token("alice", "other", 300, serde_json::json!({})), "wrong audience"),
        (TestIssuer::new("https://issuer.example").token("alice", "shop", 300, serde_json::json!({})), "foreign key"),
        (TestIssuer::new("https://elsewhere").token("alice", "shop", 300, serde_json::json!({})), "unknown issuer"),
        ("not.a.token".to_owned(), "garbage"),
    ];
    for (token, what) in cases {
        let mut p = parts(Some(&format!("Bearer {token}")), "");
        assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Invalid(_)), "{what}");
    }

    let forwarding = [rule(&issuer, &[], true)];
    let mut p = parts(Some(&format!("Bearer {token}")), "");
    assert!(matches!(authenticate(&forwarding, &keys, &mut p).await, Verdict::Valid { .. }), "any audience");
    assert!(p.headers.get("authorization").is_some(), "forwardOriginalToken keeps it");
}

#[test]
fn a_bad_key_set_does_not_compile() {
    let err = Rule::compile(&pb::JwtRule {
        source: "shop/jwt".into(),
        issuer: "i".into(),
        jwks: "{".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("shop/jwt"), "{err}");
}

#[tokio::test]
async fn key_sets_are_fetched_from_the_uri_once_and_cached() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let issuer = TestIssuer::new("https://issuer.example");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let (jwks, count) = (issuer.jwks.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (jwks, count) = (jwks.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = http_body_util::Full::new(bytes::Bytes::from(jwks.clone()));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let rules = [Rule::compile(&pb::JwtRule {
        source: "shop/jwt".into(),
        issuer: issuer.issuer.clone(),
        jwks_uri: format!("http://{addr}/.well-known/jwks.json"),
        ..Default::default()
    })
    .unwrap()];
    let keys = KeySets::default();
    for sub in ["a", "b", "c"] {
        let token = issuer.token(sub, "any", 300, serde_json::json!({}));
        let mut p = parts(Some(&format!("Bearer {token}")), "");
        assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Valid { .. }), "{sub}");
    }
    assert_eq!(served.load(Ordering::SeqCst), 1, "fetched once, then cached");
}

#[tokio::test]
async fn key_sets_are_fetched_over_https_with_the_given_roots() {
    let issuer = TestIssuer::new("https://issuer.example");
    // A server certificate for localhost, trusted through its own (self-signed) certificate.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let jwks = issuer.jwks.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |_req| {
                    let body = http_body_util::Full::new(bytes::Bytes::from(jwks.clone()));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let rules = [Rule::compile(&pb::JwtRule {
        source: "shop/jwt".into(),
        issuer: issuer.issuer.clone(),
        jwks_uri: format!("https://localhost:{port}/jwks.json"),
        ..Default::default()
    })
    .unwrap()];
    let token = issuer.token("alice", "any", 300, serde_json::json!({}));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let trusted = KeySets::with_tls(crate::fetch::tls_with_roots(roots));
    let mut p = parts(Some(&format!("Bearer {token}")), "");
    assert!(matches!(authenticate(&rules, &trusted, &mut p).await, Verdict::Valid { .. }), "fetched over https");
    // Without the root, the fetch fails and the token cannot be validated: refused, not passed.
    let untrusted = KeySets::with_tls(crate::fetch::tls_with_roots(rustls::RootCertStore::empty()));
    let mut p = parts(Some(&format!("Bearer {token}")), "");
    assert!(matches!(authenticate(&rules, &untrusted, &mut p).await, Verdict::Invalid(_)), "untrusted server");
}

#[tokio::test]
async fn claim_headers_written_by_the_client_never_reach_the_backend() {
    let issuer = TestIssuer::new("https://issuer.example");
    let rules = [rule(&issuer, &["shop"], false)];
    let keys = KeySets::default();
    let forged = |auth: Option<&str>| {
        let mut p = parts(auth, "");
        p.headers.insert("x-group", HeaderValue::from_static("admins"));
        p
    };
    // No token: anonymous, and the forged claim header is gone.
    let mut p = forged(None);
    assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Anonymous));
    assert!(p.headers.get("x-group").is_none(), "a forged claim header without a token");
    // A valid token without the claim: still gone.
    let token = issuer.token("mallory", "shop", 300, serde_json::json!({}));
    let mut p = forged(Some(&format!("Bearer {token}")));
    assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Valid { .. }));
    assert!(p.headers.get("x-group").is_none(), "a forged claim header beside a token without the claim");
    // An invalid token: gone too.
    let mut p = forged(Some("Bearer not.a.token"));
    assert!(matches!(authenticate(&rules, &keys, &mut p).await, Verdict::Invalid(_)));
    assert!(p.headers.get("x-group").is_none());
}
