use super::*;
use crate::manifest::{parse_object, Parsed};

fn objects(yaml: &str) -> Store {
    let mut store = Store::default();
    for doc in yaml.split("\n---\n") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        match parse_object("test", v) {
            Ok(Parsed::Object(o)) => {
                store.upsert(*o);
            }
            other => panic!("{other:?}"),
        }
    }
    store
}

fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn secret(ns: &str, name: &str, chain: &str, key: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"tls.crt": chain, "tls.key": key},
    })
    .to_string()
}

const APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1\nkind: Namespace\nmetadata: {name: ingress}
---
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: gw-local, namespace: ingress}\nspec: {ports: [{port: 80}]}";

fn translate_in(yaml: &str) -> Ingress {
    let store = objects(&format!("{APP}\n---\n{yaml}"));
    let gw = store.gateway("ingress", "public").unwrap();
    translate(gw, &store, &MeshSettings::default())
}

fn listener<'a>(i: &'a Ingress, name: &str) -> &'a ListenerReport {
    i.listeners.iter().find(|l| l.name == name).unwrap()
}

fn condition<'a>(l: &'a ListenerReport, type_: &str) -> &'a Condition {
    l.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn hostnames_intersect_as_gateway_api_says() {
    let any: Vec<String> = Vec::new();
    assert_eq!(intersect(None, &any), Some(vec![]));
    assert_eq!(intersect(Some("a.example.com"), &any), Some(vec!["a.example.com".to_owned()]));
    assert_eq!(intersect(Some("*.example.com"), &["a.example.com".into()]), Some(vec!["a.example.com".to_owned()]));
    assert_eq!(intersect(Some("a.example.com"), &["*.example.com".into()]), Some(vec!["a.example.com".to_owned()]));
    assert_eq!(intersect(Some("*.example.com"), &["*.a.example.com".into()]), Some(vec!["*.a.example.com".to_owned()]));
    assert_eq!(intersect(Some("a.example.com"), &["b.example.com".into()]), None);
    assert_eq!(intersect(Some("*.example.com"), &["example.com".into()]), None, "a wildcard never covers its suffix");
}

#[test]
fn listeners_report_what_is_wrong_and_the_rest_are_served() {
    let (chain, key) = pem_pair("shop.example.com");
    let (other_chain, _) = pem_pair("broken.example.com");
    let ingress = translate_in(&[
        secret("ingress", "good", &chain, &key),
        secret("ingress", "broken", &other_chain, &key),
        secret("shop", "elsewhere", &chain, &key),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners:\n  - {name: good, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: good}]}}\n  - {name: broken, port: 443, protocol: HTTPS, hostname: broken.example.com, tls: {certificateRefs: [{name: broken}]}}\n  - {name: missing, port: 443, protocol: HTTPS, hostname: missing.example.com, tls: {certificateRefs: [{name: nope}]}}\n  - {name: foreign, port: 443, protocol: HTTPS, hostname: foreign.example.com, tls: {certificateRefs: [{name: elsewhere, namespace: shop}]}}\n  - {name: udp, port: 53, protocol: UDP}\n  - {name: admin, port: 15021, protocol: HTTP}\n  - {name: tls-terminate, port: 8443, protocol: TLS}\n  - {name: clash, port: 443, protocol: TCP}".to_owned(),
    ]
    .join("\n---\n"));
    assert!(condition(listener(&ingress, "good"), "Programmed").status);
    let broken = condition(listener(&ingress, "broken"), "ResolvedRefs");
    assert_eq!((broken.status, broken.reason), (false, "InvalidCertificateRef"));
    assert!(broken.message.contains("does not match"), "{}", broken.message);
    let missing = condition(listener(&ingress, "missing"), "ResolvedRefs");
    assert_eq!(missing.reason, "InvalidCertificateRef");
    assert!(
        missing.message.contains("spec.listeners[2].tls.certificateRefs[0]") && missing.message.contains("not found")
    );
    // A Secret in another namespace needs a ReferenceGrant there.
    assert_eq!(condition(listener(&ingress, "foreign"), "ResolvedRefs").reason, "RefNotPermitted");
    assert_eq!(condition(listener(&ingress, "udp"), "Accepted").reason, "UnsupportedProtocol");
    assert_eq!(condition(listener(&ingress, "admin"), "Accepted").reason, "PortUnavailable");
    assert_eq!(condition(listener(&ingress, "tls-terminate"), "Accepted").reason, "UnsupportedValue");
    assert_eq!(condition(listener(&ingress, "clash"), "Conflicted").reason, "ProtocolConflict");
    // Only the good listener is served, with its certificate; the accepted ones that cannot
    // be served still claim their hostnames (no certificate, no routes), so their hosts never
    // fall to a less specific listener.
    let names: Vec<(&str, bool)> = ingress.config.listeners.iter().map(|l| (l.name.as_str(), l.refused)).collect();
    assert_eq!(names, [("good", false), ("broken", true), ("missing", true), ("foreign", true)]);
    assert_eq!(ingress.config.listeners[0].certificates[0].source, "ingress/good");
    assert!(ingress.config.listeners[1..].iter().all(|l| l.certificates.is_empty() && l.routes.is_empty()));

    // The grant makes the foreign Secret usable.
    let granted = translate_in(&[
        secret("shop", "elsewhere", &chain, &key),
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: gw-certs, namespace: shop}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: ingress}]\n  to: [{group: '', kind: Secret}]".to_owned(),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners:\n  - {name: foreign, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: elsewhere, namespace: shop}]}}".to_owned(),
    ]
    .join("\n---\n"));
    assert!(condition(listener(&granted, "foreign"), "ResolvedRefs").status);
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: istio\n  listeners:\n  - {name: web, port: 80, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: shop}}}}}\n  - {name: local, port: 8080, protocol: HTTP}";

fn route_report<'a>(i: &'a Ingress, name: &str) -> &'a RouteParentReport {
    i.routes.iter().find(|r| &*r.route.name == name).unwrap()
}

#[test]
fn routes_attach_where_listeners_allow_them() {
    let ingress = translate_in(&[
        GATEWAY,
        // Allowed by the namespace selector, hostname intersected.
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: shop, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: web}]\n  hostnames: [shop.example.com, shop.other.org]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        // The same namespace's listener only (from: Same by default).
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: sneaky, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: local}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: nohost, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: web}]\n  hostnames: [shop.other.org]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: wrong-port, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, port: 9999}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        // A TCPRoute on an HTTP listener.
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: tcp, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        // From the gateway's own namespace to a Service in shop, without a grant.
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reach, namespace: ingress}\nspec:\n  parentRefs: [{name: public, sectionName: local}]\n  rules: [{backendRefs: [{name: web, namespace: shop, port: 80, weight: 3}, {name: gw-local, port: 80, weight: 1}]}]",
    ]
    .join("\n---\n"));
    let accepted = |name: &str| route_report(&ingress, name).conditions[0].clone();
    assert!(accepted("shop").status);
    assert_eq!(accepted("sneaky").reason, "NotAllowedByListeners");
    assert_eq!(accepted("nohost").reason, "NoMatchingListenerHostname");
    assert_eq!(accepted("wrong-port").reason, "NoMatchingParent");
    assert_eq!(accepted("tcp").reason, "NotAllowedByListeners");
    assert!(accepted("reach").status);
    assert_eq!(route_report(&ingress, "reach").conditions[1].reason, "RefNotPermitted");

    let web = ingress.config.listeners.iter().find(|l| l.name == "web").unwrap();
    assert_eq!(web.routes.len(), 1);
    assert_eq!(web.routes[0].hostnames, ["shop.example.com"], "only what the listener's hostname covers");
    let local = ingress.config.listeners.iter().find(|l| l.name == "local").unwrap();
    // The refused backend keeps its weight and leads nowhere; the granted one is as written.
    let backends = &local.routes[0].backends;
    assert_eq!((backends[0].hostname.as_str(), backends[0].weight), ("", 3));
    assert_eq!(backends[1].hostname, "gw-local.ingress.svc.cluster.local");
    assert_eq!(listener(&ingress, "web").attached_routes, 1);
    assert_eq!(listener(&ingress, "local").attached_routes, 1);
}

#[test]
fn policies_targeting_the_gateway_or_its_class_come_along() {
    let ingress = translate_in(&[
        GATEWAY,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gw, namespace: ingress}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: public}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: class, namespace: istio-system}\nspec:\n  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: ambit}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/debug]}}]}]",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: waypoints, namespace: istio-system}\nspec:\n  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: ambit-waypoint}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]",
        "apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: per-client, namespace: ingress}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: public}]\n  rules: [{requests: 100, per: 1s, key: RemoteAddress}]",
    ]
    .join("\n---\n"));
    let limits: Vec<&str> = ingress.config.rate_limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(limits, ["ingress/per-client/0"], "a rate limit targeting the Gateway");
    let names: Vec<&str> = ingress.config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["gw", "class"],
        "the Gateway's and its class's (istio is an alias of ambit), not the waypoints'"
    );
}

#[test]
fn malformed_listeners_and_l4_routes_are_refused_naming_the_field() {
    let refuse = |yaml: &str| {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        parse_object("test", v).unwrap_err().to_string()
    };
    let e = refuse("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: ingress}\nspec: {gatewayClassName: ambit, listeners: [{name: a, port: 80, protocol: HTTP}, {name: a, port: 81, protocol: HTTP}]}");
    assert!(e.contains("spec.listeners[1].name"), "{e}");
    let e = refuse("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: ingress}\nspec: {gatewayClassName: ambit, listeners: [{name: a, port: 80, protocol: HTTP, hostname: '10.0.0.1'}]}");
    assert!(e.contains("spec.listeners[0].hostname"), "{e}");
    let e = refuse("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: shop}\nspec: {parentRefs: [{name: g}], rules: [{backendRefs: [{name: web}]}]}");
    assert!(e.contains("spec.rules[0].backendRefs[0].port"), "{e}");
    let e = refuse("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t, namespace: shop}\nspec: {parentRefs: [{name: g}], hostnames: ['Bad_Name'], rules: [{backendRefs: [{name: web, port: 443}]}]}");
    assert!(e.contains("spec.hostnames[0]"), "{e}");
}

#[test]
fn only_tls_secrets_are_read_and_never_shown() {
    let opaque = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "s", "namespace": "a"}, "data": {"password": "aHVudGVyMg=="}});
    assert!(matches!(parse_object("test", opaque), Ok(Parsed::Ignored { .. })));
    let (chain, key) = pem_pair("x.example.com");
    let v: serde_json::Value = serde_json::from_str(&secret("a", "tls", &chain, &key)).unwrap();
    let Ok(Parsed::Object(o)) = parse_object("test", v) else { panic!("a TLS secret is read") };
    let shown = format!("{o:?}");
    assert!(!shown.contains("PRIVATE KEY") && shown.contains("tls.key"), "{shown}");
}

#[test]
fn a_route_cannot_rank_its_wildcard_above_another_routes_exact_name() {
    let ingress = translate_in(&[
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners: [{name: web, port: 80, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: All}}}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: victim, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress}]\n  hostnames: [shop.example.com]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: attacker, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress}]\n  hostnames: ['*.example.com', a-very-long-name-to-rank-high.example.com]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    ]
    .join("\n---\n"));
    let routes = &ingress.config.listeners[0].routes;
    let position = |host: &str| routes.iter().position(|r| r.hostnames == [host]).unwrap();
    assert!(routes.iter().all(|r| r.hostnames.len() == 1), "one route per hostname");
    assert!(position("shop.example.com") < position("*.example.com"), "the exact name is matched first");
}

#[test]
fn a_mirror_to_a_service_not_granted_is_dropped() {
    let ingress = translate_in(&[
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners: [{name: web, port: 80, protocol: HTTP}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: copy, namespace: ingress}\nspec:\n  parentRefs: [{name: public}]\n  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web, namespace: shop, port: 80}}}]\n    backendRefs: [{name: gw-local, port: 80}]",
    ]
    .join("\n---\n"));
    let report = route_report(&ingress, "copy");
    assert_eq!(report.conditions[1].reason, "RefNotPermitted");
    let route = &ingress.config.listeners[0].routes[0];
    assert!(route.filters.is_empty(), "the mirror to shop/web is gone: {:?}", route.filters);
    assert_eq!(route.backends[0].hostname, "gw-local.ingress.svc.cluster.local", "the granted backend stays");
}

#[test]
fn a_regex_is_checked_as_the_proxy_compiles_it() {
    let v: serde_json::Value = serde_yaml::from_str("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress}]\n  rules: [{matches: [{path: {type: RegularExpression, value: '(?x)a#'}}]}]").unwrap();
    let e = parse_object("test", v).unwrap_err().to_string();
    assert!(e.contains("spec.rules[0].matches[0].path.value"), "{e}");
    let v: serde_json::Value = serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "h", "namespace": "shop"}, "spec": {"parentRefs": [{"name": "public"}], "rules": [{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "a\u{1}b"}]}}]}]}});
    let e = parse_object("test", v).unwrap_err().to_string();
    assert!(e.contains("requestHeaderModifier.set[0].value"), "{e}");
}

#[test]
fn ingress_use_waypoint_comes_from_the_service_or_its_namespace() {
    use crate::translate::service::translate_service;
    let store = objects(&[
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: marked, labels: {istio.io/ingress-use-waypoint: 'true'}}",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: marked}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: plain, labels: {istio.io/ingress-use-waypoint: 'true'}}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: plain}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}",
    ]
    .join("\n---\n"));
    let flag = |ns: &str, name: &str| {
        let key = ObjectKey { kind: Kind::Service, namespace: ns.into(), name: name.into() };
        let Some(Object::Service(s)) = store.get(&key) else { panic!("no {ns}/{name}") };
        translate_service(s, &store, &MeshSettings::default()).unwrap().ingress_use_waypoint
    };
    assert!(flag("marked", "a"), "from the namespace");
    assert!(flag("plain", "b"), "from the service");
    assert!(!flag("plain", "c"));
}
