use http::{HeaderValue, Method};

use super::authz::canonical_host;
use super::*;

/// Request-level authorization, as the HTTP pipeline calls it.
fn authorize(policies: &[Policy], s: &Subject<'_>) -> Result<(), Denial> {
    super::authorize(policies, s, Layer::Http)
}

fn subject<'a>(headers: &'a http::HeaderMap, principal: &'a str, method: &'a str, path: &'a str) -> Subject<'a> {
    Subject {
        principal: Some(principal),
        // Leaked: a test's subject borrows its identity for as long as the test runs.
        identity: principal.parse::<ambit_shared::Identity>().ok().map(|id| &*Box::leak(Box::new(id))),
        namespace: principal.split("/ns/").nth(1).and_then(|r| r.split('/').next()),
        request_principal: None,
        source_ip: "10.244.1.5".parse().unwrap(),
        remote_ip: "10.244.1.5".parse().unwrap(),
        destination_ip: "10.96.0.10".parse().unwrap(),
        host: "reviews.shop.svc.cluster.local:8080",
        port: 8080,
        method,
        path,
        query: None,
        headers,
        claims: None,
    }
}

fn policy(action: pb::Action, rule: pb::Rule) -> Policy {
    Policy::compile(&pb::Policy {
        name: "p".into(),
        namespace: "shop".into(),
        action: action as i32,
        rules: vec![rule],
        dry_run: false,
    })
    .unwrap()
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const VISITOR: &str = "spiffe://cluster.local/ns/outside/sa/visitor";

#[test]
fn authorization_follows_istios_order_and_string_forms() {
    let h = http::HeaderMap::new();
    let allow_frontend_get = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source {
                principals: vec!["cluster.local/ns/shop/sa/frontend".into()],
                ..Default::default()
            }],
            to: vec![pb::Operation { methods: vec!["GET".into()], paths: vec!["/api/*".into()], ..Default::default() }],
            when: vec![],
        },
    );
    let deny_admin = policy(
        pb::Action::Deny,
        pb::Rule {
            to: vec![pb::Operation { paths: vec!["*/admin".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    let both = [allow_frontend_get, deny_admin];
    let cases = [
        (FRONTEND, "GET", "/api/items", true),
        (FRONTEND, "POST", "/api/items", false),
        (FRONTEND, "GET", "/other", false),
        (VISITOR, "GET", "/api/items", false),
        (FRONTEND, "GET", "/api/admin", false),
    ];
    for (who, method, path, ok) in cases {
        assert_eq!(authorize(&both, &subject(&h, who, method, path)).is_ok(), ok, "{who} {method} {path}");
    }
    assert!(authorize(&[], &subject(&h, VISITOR, "DELETE", "/")).is_ok(), "no policy: allowed");
}

#[test]
fn service_accounts_match_the_peer_principal() {
    let h = http::HeaderMap::new();
    let only_frontend = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source { service_accounts: vec!["shop/frontend".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(authorize(std::slice::from_ref(&only_frontend), &subject(&h, FRONTEND, "GET", "/")).is_ok());
    assert!(authorize(std::slice::from_ref(&only_frontend), &subject(&h, VISITOR, "GET", "/")).is_err());
    let unrelated = "spiffe://cluster.local/ns/shopfront/sa/end";
    assert!(authorize(std::slice::from_ref(&only_frontend), &subject(&h, unrelated, "GET", "/")).is_err());
    let not_visitor = policy(
        pb::Action::Deny,
        pb::Rule {
            from: vec![pb::Source { not_service_accounts: vec!["shop/frontend".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(authorize(std::slice::from_ref(&not_visitor), &subject(&h, FRONTEND, "GET", "/")).is_ok());
    assert!(authorize(std::slice::from_ref(&not_visitor), &subject(&h, VISITOR, "GET", "/")).is_err());
}

#[test]
fn not_forms_namespaces_ip_blocks_and_headers() {
    let mut h = http::HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("tester"));
    let p = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source {
                namespaces: vec!["shop".into()],
                not_ip_blocks: vec!["10.244.2.0/24".into()],
                ..Default::default()
            }],
            to: vec![pb::Operation {
                not_methods: vec!["DELETE".into()],
                ports: vec!["8080".into()],
                ..Default::default()
            }],
            when: vec![pb::Condition {
                key: "request.headers[X-User]".into(),
                values: vec!["test*".into()],
                not_values: vec![],
            }],
        },
    );
    let ps = [p];
    assert!(authorize(&ps, &subject(&h, FRONTEND, "GET", "/")).is_ok());
    assert!(authorize(&ps, &subject(&h, FRONTEND, "DELETE", "/")).is_err());
    assert!(authorize(&ps, &subject(&h, VISITOR, "GET", "/")).is_err(), "other namespace");
    let empty = http::HeaderMap::new();
    assert!(authorize(&ps, &subject(&empty, FRONTEND, "GET", "/")).is_err(), "header condition");
    let mut s = subject(&h, FRONTEND, "GET", "/");
    s.source_ip = "10.244.2.9".parse().unwrap();
    assert!(authorize(&ps, &s).is_err(), "notIpBlocks");
}

#[test]
fn bad_policy_values_do_not_compile() {
    let err = Policy::compile(&pb::Policy {
        name: "p".into(),
        namespace: "shop".into(),
        rules: vec![pb::Rule {
            from: vec![pb::Source { ip_blocks: vec!["10.0.0.0/40".into()], ..Default::default() }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("ipBlocks"), "{err}");
}

fn route(m: pb::Match) -> Route {
    Route::compile("r", &pb::Route { matches: vec![m], ..Default::default() }).unwrap()
}

#[test]
fn path_header_query_and_method_matches() {
    let h = {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("tester"));
        h
    };
    let view = |method: &'static Method, path: &'static str, query: Option<&'static str>| RequestView {
        method,
        path,
        query,
        headers: Box::leak(Box::new(h.clone())),
    };
    let prefix = route(pb::Match { has_path: true, path: "/api".into(), ..Default::default() });
    assert!(prefix.matches[0].matches(&view(&Method::GET, "/api", None)));
    assert!(prefix.matches[0].matches(&view(&Method::GET, "/api/x", None)));
    assert!(!prefix.matches[0].matches(&view(&Method::GET, "/apix", None)), "whole segments");
    let exact = route(pb::Match {
        has_path: true,
        path: "/a".into(),
        path_kind: pb::PathKind::PathExact as i32,
        ..Default::default()
    });
    assert!(!exact.matches[0].matches(&view(&Method::GET, "/a/b", None)));
    let re = route(pb::Match {
        has_path: true,
        path: "/v[0-9]+".into(),
        path_kind: pb::PathKind::PathRegex as i32,
        ..Default::default()
    });
    assert!(re.matches[0].matches(&view(&Method::GET, "/v12", None)));
    assert!(!re.matches[0].matches(&view(&Method::GET, "/v12/x", None)), "regex matches the whole path");
    let header = route(pb::Match {
        headers: vec![pb::HeaderMatch {
            name: "X-User".into(),
            value: Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Exact("tester".into())) }),
            invert: false,
        }],
        query: vec![pb::HeaderMatch {
            name: "v".into(),
            value: Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Exact("2".into())) }),
            invert: false,
        }],
        method: "POST".into(),
        ..Default::default()
    });
    assert!(header.matches[0].matches(&view(&Method::POST, "/", Some("a=1&v=2"))));
    assert!(!header.matches[0].matches(&view(&Method::GET, "/", Some("v=2"))));
    assert!(!header.matches[0].matches(&view(&Method::POST, "/", Some("v=3"))));
}

#[test]
fn weighted_backends_spread_by_weight() {
    let backend = |name: &str, weight| pb::Backend {
        hostname: name.into(),
        namespace: "shop".into(),
        port: 8080,
        weight,
        ..Default::default()
    };
    let r = Route::compile(
        "r",
        &pb::Route { backends: vec![backend("a", 90), backend("b", 10), backend("c", 0)], ..Default::default() },
    )
    .unwrap();
    let mut counts = HashMap::new();
    for _ in 0..10_000 {
        *counts.entry(r.pick_backend().unwrap().hostname.clone()).or_insert(0) += 1;
    }
    assert!((8_700..=9_300).contains(&counts["a"]), "{counts:?}");
    assert!(!counts.contains_key("c"), "weight 0 never picked");
    let none = Route::compile("r", &pb::Route { backends: vec![backend("a", 0)], ..Default::default() }).unwrap();
    assert!(none.pick_backend().is_none());
}

use std::collections::HashMap;

/// A connection forwarded as TCP: ALLOW rules needing HTTP attributes cannot match; DENY rules
/// keep their L4 part (so a DENY on paths denies every TCP connection its L4 part covers).
#[test]
fn tcp_connections_are_authorized_with_l4_semantics() {
    let h = http::HeaderMap::new();
    let tcp = |ps: &[Policy], who: &str, port: u16| {
        let mut s = subject(&h, who, "", "");
        s.port = port;
        s.host = "";
        super::authorize(ps, &s, Layer::Tcp)
    };
    let deny_admin = policy(
        pb::Action::Deny,
        pb::Rule {
            to: vec![pb::Operation { paths: vec!["/admin".into(), "/admin/*".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(tcp(std::slice::from_ref(&deny_admin), FRONTEND, 8080).is_err(), "a path DENY denies TCP outright");
    let deny_get_on_9000 = policy(
        pb::Action::Deny,
        pb::Rule {
            to: vec![pb::Operation { methods: vec!["GET".into()], ports: vec!["9000".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(tcp(std::slice::from_ref(&deny_get_on_9000), FRONTEND, 9000).is_err(), "L4 part: the port");
    assert!(tcp(std::slice::from_ref(&deny_get_on_9000), FRONTEND, 8080).is_ok(), "other ports pass");
    let deny_header = policy(
        pb::Action::Deny,
        pb::Rule {
            from: vec![pb::Source {
                principals: vec!["cluster.local/ns/outside/sa/visitor".into()],
                ..Default::default()
            }],
            when: vec![pb::Condition {
                key: "request.headers[x-evil]".into(),
                values: vec!["1".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert!(tcp(std::slice::from_ref(&deny_header), VISITOR, 8080).is_err(), "the header condition is dropped");
    assert!(tcp(std::slice::from_ref(&deny_header), FRONTEND, 8080).is_ok(), "the principal still counts");
    let allow_get = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source {
                principals: vec!["cluster.local/ns/shop/sa/frontend".into()],
                ..Default::default()
            }],
            to: vec![pb::Operation { methods: vec!["GET".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(tcp(std::slice::from_ref(&allow_get), FRONTEND, 8080).is_err(), "an HTTP ALLOW cannot match TCP");
    let allow_frontend = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source {
                principals: vec!["cluster.local/ns/shop/sa/frontend".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let both = [allow_get, allow_frontend];
    assert!(tcp(&both, FRONTEND, 8080).is_ok(), "an L4 ALLOW matches");
    assert!(tcp(&both, VISITOR, 8080).is_err());
    let jwt_only = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source { request_principals: vec!["*".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(tcp(std::slice::from_ref(&jwt_only), FRONTEND, 8080).is_err(), "no JWT over TCP");
}

/// An IPv4 peer seen through a dual-stack socket matches IPv4 blocks.
#[test]
fn ipv4_mapped_sources_match_ipv4_blocks() {
    let h = http::HeaderMap::new();
    let deny_block = policy(
        pb::Action::Deny,
        pb::Rule {
            from: vec![pb::Source { ip_blocks: vec!["10.244.1.0/24".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    let mut s = subject(&h, FRONTEND, "GET", "/");
    s.source_ip = "::ffff:10.244.1.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&deny_block), &s).is_err());
}

/// A block written in IPv4-mapped form covers the IPv4 peers it names, as at ztunnel.
#[test]
fn blocks_in_ipv4_mapped_form_match_ipv4_sources() {
    let h = http::HeaderMap::new();
    let deny_block = policy(
        pb::Action::Deny,
        pb::Rule {
            from: vec![pb::Source { ip_blocks: vec!["::ffff:10.244.1.0/120".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    let mut s = subject(&h, FRONTEND, "GET", "/");
    s.source_ip = "10.244.1.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&deny_block), &s).is_err());
    s.source_ip = "10.244.2.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&deny_block), &s).is_ok());
    // The same block in an ALLOW admits exactly those peers; in notIpBlocks it exempts them.
    let allow_block = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source { ip_blocks: vec!["::ffff:10.244.1.0/120".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(authorize(std::slice::from_ref(&allow_block), &s).is_err(), "10.244.2.5 is outside the block");
    s.source_ip = "10.244.1.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&allow_block), &s).is_ok());
    let deny_others = policy(
        pb::Action::Deny,
        pb::Rule {
            from: vec![pb::Source { not_ip_blocks: vec!["::ffff:10.244.1.0/120".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(authorize(std::slice::from_ref(&deny_others), &s).is_ok());
    s.source_ip = "10.244.2.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&deny_others), &s).is_err());
    // An IPv6-only block never covers an IPv4 peer, however it is seen.
    let allow_v6 = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source { ip_blocks: vec!["::/0".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    assert!(authorize(std::slice::from_ref(&allow_v6), &s).is_err());
    s.source_ip = "::ffff:10.244.2.5".parse().unwrap();
    assert!(authorize(std::slice::from_ref(&allow_v6), &s).is_err());
}

fn when(key: &str, values: &[&str]) -> pb::Policy {
    pb::Policy {
        name: "p".into(),
        namespace: "shop".into(),
        action: pb::Action::Deny as i32,
        rules: vec![pb::Rule {
            when: vec![pb::Condition {
                key: key.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
                not_values: vec![],
            }],
            ..Default::default()
        }],
        dry_run: false,
    }
}

#[test]
fn unknown_condition_keys_do_not_compile() {
    // A DENY on a key we cannot evaluate must not become a rule that never fires.
    for key in [
        "connection.sni",
        "request.headers",
        "request.headers[]",
        "request.headers[a][b]",
        "request.auth.claims",
        "request.auth.claims[]",
        "experimental.envoy.filters.network.mysql_proxy[db.table]",
        "source.labels[app]",
        "Source.IP",
    ] {
        let err = Policy::compile(&when(key, &["x"])).expect_err(key);
        assert!(err.to_string().contains("when.key"), "{key}: {err}");
    }
    for key in [
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "destination.ip",
        "destination.port",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "request.headers[X-Token]",
        "request.auth.claims[groups]",
        "request.auth.claims[realm][roles]",
    ] {
        assert!(Policy::compile(&when(key, &["x"])).is_ok(), "{key}");
    }
}

#[test]
fn token_conditions_read_the_verified_claims() {
    let claims = serde_json::json!({
        "aud": ["shop", "billing"],
        "azp": "web",
        "realm": {"roles": ["admin"]},
    });
    let h = http::HeaderMap::new();
    let mut s = subject(&h, FRONTEND, "GET", "/");
    s.claims = Some(&claims);
    for (key, value, denied) in [
        ("request.auth.audiences", "billing", true),
        ("request.auth.audiences", "other", false),
        ("request.auth.presenter", "web", true),
        ("request.auth.claims[realm][roles]", "admin", true),
        ("request.auth.claims[realm][roles]", "user", false),
    ] {
        let ps = [Policy::compile(&when(key, &[value])).unwrap()];
        assert_eq!(authorize(&ps, &s).is_err(), denied, "{key} = {value}");
    }
}

#[test]
fn host_spellings_do_not_escape_hosts_rules() {
    let p = policy(
        pb::Action::Deny,
        pb::Rule {
            to: vec![pb::Operation { hosts: vec!["admin.example".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    let ps = [p];
    let h = http::HeaderMap::new();
    for host in [
        "admin.example",
        "ADMIN.example",
        "admin.example.",
        "admin.example:",
        "admin.example:99999",
        "admin.example:8080",
    ] {
        let mut s = subject(&h, FRONTEND, "GET", "/");
        s.host = host;
        assert!(authorize(&ps, &s).is_err(), "{host} must be denied");
    }
    let mut s = subject(&h, FRONTEND, "GET", "/");
    s.host = "other.example";
    assert!(authorize(&ps, &s).is_ok());
    assert_eq!(canonical_host("[fd00::1]:8080"), "[fd00::1]");
}

#[test]
fn request_line_headers_and_binary_values_are_matched() {
    let mut h = http::HeaderMap::new();
    h.insert("x-debug", HeaderValue::from_bytes(b"1\xff").unwrap());
    let s = subject(&h, FRONTEND, "DELETE", "/admin");
    for (key, value) in [
        (":method", "DELETE"),
        (":path", "/admin"),
        (":authority", "reviews.shop.svc.cluster.local:8080"),
        ("x-debug", "*"),
    ] {
        let ps = [Policy::compile(&when(&format!("request.headers[{key}]"), &[value])).unwrap()];
        assert!(authorize(&ps, &s).is_err(), "a DENY on request.headers[{key}] fires");
    }
    assert!(Policy::compile(&when("request.headers[bad header]", &["x"])).is_err(), "invalid header names refused");
}

#[test]
fn the_path_pseudo_header_includes_the_query() {
    let h = http::HeaderMap::new();
    let mut s = subject(&h, FRONTEND, "GET", "/api/items");
    s.query = Some("debug=1");
    let ps = [Policy::compile(&when("request.headers[:path]", &["*?debug=1"])).unwrap()];
    assert!(authorize(&ps, &s).is_err(), "a DENY on the query fires");
    s.query = None;
    assert!(authorize(&ps, &s).is_ok());
}

#[test]
fn denials_name_the_policy_as_the_log_always_did() {
    let h = http::HeaderMap::new();
    let deny = policy(pb::Action::Deny, pb::Rule::default());
    let denial = authorize(std::slice::from_ref(&deny), &subject(&h, VISITOR, "GET", "/")).unwrap_err();
    assert_eq!(denial, Denial::Deny { policy: "shop/p".into(), rule: 0 });
    assert_eq!(denial.to_string(), "shop/p");
    assert_eq!(denial.action(), pb::Action::Deny);
    let allow = policy(
        pb::Action::Allow,
        pb::Rule {
            from: vec![pb::Source { namespaces: vec!["nobody".into()], ..Default::default() }],
            ..Default::default()
        },
    );
    let denial = authorize(std::slice::from_ref(&allow), &subject(&h, VISITOR, "GET", "/")).unwrap_err();
    assert_eq!(denial.to_string(), "no ALLOW policy matched");
    assert_eq!(denial.action(), pb::Action::Allow);
}

#[test]
fn subsets_compile_with_their_members_and_ports_pick_their_own_policy() {
    let policy = |max| pb::BackendPolicy { max_connections: max, ..Default::default() };
    let config = pb::ServiceConfig {
        hostname: "reviews.shop.svc.cluster.local".into(),
        subsets: vec![pb::Subset {
            name: "v1".into(),
            workload_uids: vec!["Kubernetes//Pod/shop/reviews-v1-0".into()],
            backend: Some(pb::BackendPolicy {
                port_level: vec![pb::PortBackendPolicy { port: 9000, policy: Some(policy(7)) }],
                ..policy(3)
            }),
        }],
        ..Default::default()
    };
    let l7 = ServiceL7::compile(&config).unwrap();
    let v1 = &l7.subsets["v1"];
    assert!(v1.members.contains("Kubernetes//Pod/shop/reviews-v1-0"));
    assert!(!v1.members.contains("Kubernetes//Pod/shop/reviews-v2-0"));
    let base = v1.backend.as_ref().unwrap();
    assert_eq!(port_policy(base, 8080).max_connections, 3);
    assert_eq!(port_policy(base, 9000).max_connections, 7, "the port's own policy, whole");
    assert!(!l7.subsets.contains_key("v2"));
}
