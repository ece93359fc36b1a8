use std::collections::BTreeMap;
use std::time::Duration;

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

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {selector: {app: reviews}, ports: [{name: http, port: 8080}, {name: db, port: 5432, appProtocol: tcp}, {port: 9000}]}";

fn config(extra: &str) -> pb::ServiceConfig {
    let store = objects(&format!("{BASE}\n---\n{extra}"));
    let key = crate::model::ObjectKey { kind: Kind::Service, namespace: "shop".into(), name: "reviews".into() };
    let Some(Object::Service(svc)) = store.get(&key) else { panic!("no service") };
    let gw = store.gateway("shop", "waypoint").unwrap();
    service_config(svc, gw, &store, &MeshSettings::default())
}

#[test]
fn durations_in_gateway_api_form() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
    for bad in ["", "10", "s", "1.5s", "10x", "-1s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn ports_take_their_protocol_from_app_protocol_or_name() {
    let c = config("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespace: shop}");
    let protocols: Vec<_> = c.ports.iter().map(|p| (p.port, p.protocol())).collect();
    assert_eq!(protocols, [(8080, pb::Protocol::Http), (5432, pb::Protocol::Tcp), (9000, pb::Protocol::Unspecified)]);
    assert_eq!(c.hostname, "reviews.shop.svc.cluster.local");
    assert_eq!(c.waypoint, "shop/waypoint");
    assert!(c.routes.is_empty());
}

#[test]
fn routes_are_ordered_by_gateway_api_precedence() {
    let c = config(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews, port: 8080}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 8080, weight: 90}, {name: reviews-v2, port: 8080, weight: 10}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /api/v2}}, {path: {type: Exact, value: /exact}}]
    backendRefs: [{name: reviews-v2, port: 8080}]
  - matches: [{headers: [{name: x-user, value: tester}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Routed, value: 'yes'}]}}]
    timeouts: {request: 2s}
    retry: {attempts: 3, codes: [503], backoff: 10ms}
    backendRefs: [{name: reviews-v2, port: 8080}]",
    );
    let order: Vec<(&str, &str, usize)> =
        c.routes.iter().map(|r| (r.name.as_str(), r.matches[0].path.as_str(), r.matches[0].headers.len())).collect();
    assert_eq!(
        order,
        [
            ("HTTPRoute/shop/r/2", "/exact", 0),
            ("HTTPRoute/shop/r/2", "/api/v2", 0),
            ("HTTPRoute/shop/r/1", "/api", 0),
            ("HTTPRoute/shop/r/3", "", 1),
            ("HTTPRoute/shop/r/0", "", 0),
        ]
    );
    let split = &c.routes[4];
    assert_eq!(split.ports, [8080]);
    let weights: Vec<_> = split.backends.iter().map(|b| (b.hostname.as_str(), b.weight)).collect();
    assert_eq!(weights, [("reviews-v1.shop.svc.cluster.local", 90), ("reviews-v2.shop.svc.cluster.local", 10)]);
    let header = &c.routes[3];
    assert_eq!(header.timeout, Some(prost_types::Duration { seconds: 2, nanos: 0 }));
    assert_eq!(header.retry.as_ref().map(|r| (r.attempts, r.codes.clone())), Some((3, vec![503])));
    assert!(
        matches!(&header.filters[0].kind, Some(pb::filter::Kind::RequestHeaders(m)) if m.set[0].name == "x-routed")
    );
}

#[test]
fn routes_for_other_parents_do_not_apply() {
    let c = config(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: ratings}, {kind: Gateway, group: gateway.networking.k8s.io, name: reviews}]
  rules: [{backendRefs: [{name: ratings, port: 80}]}]",
    );
    assert!(c.routes.is_empty());
}

#[test]
fn grpc_methods_become_paths() {
    let c = config(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: reviews-v2, port: 8080}]
  - matches: [{method: {service: echo.Echo}}]
    backendRefs: [{name: reviews-v1, port: 8080}]",
    );
    let paths: Vec<_> = c.routes.iter().map(|r| (r.matches[0].path_kind(), r.matches[0].path.as_str())).collect();
    assert_eq!(paths, [(pb::PathKind::PathExact, "/echo.Echo/Say"), (pb::PathKind::PathPrefix, "/echo.Echo/")]);
}

#[test]
fn policies_targeting_the_service_or_its_waypoint_are_included() {
    let c = config(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: by-service, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: by-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}], to: [{operation: {paths: [/api/*]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: ratings}]",
    );
    let names: Vec<_> = c.policies.iter().map(|p| (p.name.as_str(), p.action())).collect();
    assert_eq!(names, [("by-service", pb::Action::Deny), ("by-waypoint", pb::Action::Allow)]);
    assert_eq!(c.policies[1].rules[0].to[0].paths, ["/api/*"]);
}

#[test]
fn root_namespace_policies_targeting_the_gateway_class_reach_every_waypoint_of_it() {
    let c = config(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all-waypoints, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: ambit-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/debug/*]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: istio-class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other-class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint-other}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: not-root, namespace: shop}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: ambit-waypoint}]
  action: DENY
  rules: [{}]",
    );
    let names: Vec<_> = c.policies.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect();
    assert_eq!(
        names,
        [("istio-system", "all-waypoints"), ("istio-system", "istio-class")],
        "only the root namespace's, for this class or its alias"
    );
}

#[test]
fn policy_targets_ambit_does_not_attach_to_are_refused_by_field() {
    let refused = |target: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  targetRefs: [{target}]\n  action: DENY\n  rules: [{{}}]"
        ))
        .unwrap();
        match parse_object("p.yaml", v) {
            Err(r) => r.field,
            Ok(_) => panic!("accepted: {target}"),
        }
    };
    assert_eq!(refused("{kind: ServiceEntry, group: '', name: ext}"), "spec.targetRefs[0].kind", "the wrong group");
    assert_eq!(refused("{kind: Servce, group: '', name: reviews}"), "spec.targetRefs[0].kind");
    assert_eq!(refused("{kind: Gateway, group: '', name: waypoint}"), "spec.targetRefs[0].kind");
    assert_eq!(refused("{kind: Service, group: '', name: reviews, namespace: prod}"), "spec.targetRefs[0].namespace");
}

#[test]
fn malformed_routes_are_rejected_with_the_field() {
    let reject = |spec: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n{spec}"
        ))
        .unwrap();
        match parse_object("r.yaml", v) {
            Err(r) => r.to_string(),
            Ok(_) => panic!("accepted: {spec}"),
        }
    };
    let p = "  parentRefs: [{name: s}]\n";
    let cases = [
        ("  rules: []".to_owned(), "spec.parentRefs"),
        (
            format!("{p}  rules: [{{matches: [{{path: {{type: RegularExpression, value: '(('}}}}]}}]"),
            "spec.rules[0].matches[0].path.value",
        ),
        (format!("{p}  rules: [{{matches: [{{path: {{value: api}}}}]}}]"), "spec.rules[0].matches[0].path.value"),
        (format!("{p}  rules: [{{timeouts: {{request: ten}}}}]"), "spec.rules[0].timeouts.request"),
        (format!("{p}  rules: [{{filters: [{{type: ExtensionRef}}]}}]"), "spec.rules[0].filters[0].type"),
        (format!("{p}  rules: [{{backendRefs: [{{kind: Bucket, name: b}}]}}]"), "spec.rules[0].backendRefs[0].kind"),
        (
            format!("{p}  rules: [{{filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: 200}}}}]}}]"),
            "statusCode",
        ),
    ];
    for (spec, field) in cases {
        let message = reject(&spec);
        assert!(message.contains(field) && message.contains("HTTPRoute shop/r"), "{spec}: {message}");
    }
}

#[test]
fn destination_rules_become_the_backend_policy() {
    let c = config(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 2, http2MaxRequests: 10}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
    loadBalancer: {consistentHash: {httpHeaderName: X-User}}
---
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: other, namespace: shop}
spec: {host: ratings.shop.svc.cluster.local}",
    );
    let b = c.backend.expect("backend policy");
    assert_eq!(b.source, "shop/reviews");
    assert_eq!((b.max_connections, b.max_pending_requests, b.max_requests), (1, 2, 10));
    let od = b.outlier.unwrap();
    assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (1, 100));
    assert_eq!(od.base_ejection_time, Some(prost_types::Duration { seconds: 30, nanos: 0 }));
    assert_eq!(b.load_balancer.unwrap().hash_header, "x-user");
    assert!(config("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespace: shop}").backend.is_none());
}

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v1-0, namespace: shop, labels: {app: reviews, version: v1}}\nspec: {nodeName: n}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v2-0, namespace: shop, labels: {app: reviews, version: v2}}\nspec: {nodeName: n}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: other-v2, namespace: shop, labels: {app: other, version: v2}}\nspec: {nodeName: n}";

#[test]
fn subsets_hold_their_pods_and_merge_their_policy_over_the_rule() {
    let c = config(&format!(
        "{PODS}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 5}}}}
    loadBalancer: {{simple: ROUND_ROBIN}}
    portLevelSettings:
    - port: {{number: 9000}}
      loadBalancer: {{simple: RANDOM}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}
      portLevelSettings:
      - port: {{number: 8080}}
        connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}
  - name: none
    labels: {{version: v9}}"
    ));
    let lb = |p: &pb::BackendPolicy| p.load_balancer.as_ref().map(|l| (l.simple(), l.hash_header.clone()));
    let base = c.backend.as_ref().unwrap();
    assert_eq!(lb(base), Some((pb::load_balancer::Simple::RoundRobin, String::new())));
    // A port's settings stand alone: RANDOM and no pool limit on 9000.
    let port: Vec<_> = base.port_level.iter().map(|p| (p.port, p.policy.as_ref().unwrap())).collect();
    assert_eq!(port.len(), 1);
    assert_eq!(port[0].0, 9000);
    assert_eq!(lb(port[0].1), Some((pb::load_balancer::Simple::Random, String::new())));
    assert_eq!(port[0].1.max_connections, 0, "not inherited");
    let subsets: Vec<_> = c.subsets.iter().map(|s| (s.name.as_str(), s.workload_uids.clone())).collect();
    assert_eq!(
        subsets,
        [
            ("v1", vec!["Kubernetes//Pod/shop/reviews-v1-0".to_owned()]),
            ("v2", vec!["Kubernetes//Pod/shop/reviews-v2-0".to_owned()]),
            ("none", vec![]),
        ],
        "each subset: the service's pods its labels select"
    );
    // v1 has the rule's policy; v2 its hash over the rule's pool, and on 8080 its port's alone.
    let v1 = c.subsets[0].backend.as_ref().unwrap();
    assert_eq!((v1.max_connections, lb(v1)), (5, lb(base)));
    let v2 = c.subsets[1].backend.as_ref().unwrap();
    assert_eq!((v2.max_connections, lb(v2)), (5, Some((pb::load_balancer::Simple::LeastRequest, "x-user".into()))));
    let v2_ports: Vec<_> = v2.port_level.iter().map(|p| (p.port, p.policy.clone().unwrap())).collect();
    assert_eq!(v2_ports.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [8080, 9000]);
    assert_eq!((v2_ports[0].1.max_requests_per_connection, v2_ports[0].1.max_connections), (1, 0));
    assert_eq!(lb(&v2_ports[0].1), None, "the port's settings replace the subset's");
    // Another namespace's rule for the service (neither its own, its waypoint's nor the root
    // namespace's) cannot redefine its subsets.
    let foreign = config(&format!(
        "{PODS}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: grab, namespace: team-b}}
spec: {{host: reviews.shop.svc.cluster.local, subsets: [{{name: v1, labels: {{version: v2}}}}]}}"
    ));
    assert!(foreign.backend.is_none() && foreign.subsets.is_empty(), "{foreign:?}");
    let root = config(&format!(
        "{PODS}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: mesh, namespace: istio-system}}
spec: {{host: reviews.shop.svc.cluster.local, subsets: [{{name: v1, labels: {{version: v1}}}}]}}"
    ));
    assert_eq!(root.subsets.len(), 1, "the root namespace's rule applies");
    // A VirtualService destination names its subset.
    let routed = config(&format!(
        "{PODS}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}
spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews, subset: v1}}, weight: 90}}, {{destination: {{host: reviews, subset: v2}}, weight: 10}}], mirror: {{host: reviews, subset: v2}}}}]}}"
    ));
    let named: Vec<_> = routed.routes[0].backends.iter().map(|b| (b.subset.as_str(), b.weight)).collect();
    assert_eq!(named, [("v1", 90), ("v2", 10)]);
    assert!(
        matches!(&routed.routes[0].filters[0].kind, Some(pb::filter::Kind::Mirror(m)) if m.backend.as_ref().unwrap().subset == "v2")
    );
}

#[test]
fn malformed_destination_rules_are_rejected_with_the_field() {
    let reject = |spec: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: shop}}\nspec:\n{spec}"
        ))
        .unwrap();
        parse_object("d.yaml", v).err().map(|r| r.to_string()).unwrap_or_default()
    };
    assert!(reject("  trafficPolicy: {}").contains("spec.host"));
    let bad_time = reject("  host: r\n  trafficPolicy: {outlierDetection: {baseEjectionTime: soon}}");
    assert!(bad_time.contains("spec.trafficPolicy.outlierDetection.baseEjectionTime"), "{bad_time}");
    let bad_lb = reject("  host: r\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}");
    assert!(bad_lb.contains("spec.trafficPolicy.loadBalancer.simple"), "{bad_lb}");
    let two =
        reject("  host: r\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x}}}");
    assert!(two.contains("consistentHash"), "{two}");
    let subset_lb = reject("  host: r\n  subsets: [{name: a, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}]");
    assert!(subset_lb.contains("spec.subsets[0].trafficPolicy.loadBalancer.simple"), "{subset_lb}");
    let twice = reject("  host: r\n  subsets: [{name: a}, {name: a}]");
    assert!(twice.contains("spec.subsets[1].name"), "{twice}");
    let upper = reject("  host: r\n  subsets: [{name: V1_a}]");
    assert!(upper.contains("spec.subsets[0].name"), "{upper}");
    let unnamed = reject("  host: r\n  subsets: [{labels: {v: a}}]");
    assert!(unnamed.contains("spec.subsets[0].name"), "{unnamed}");
    let label = reject("  host: r\n  subsets: [{name: a, labels: {v: 'not ok'}}]");
    assert!(label.contains("spec.subsets[0].labels.v"), "{label}");
    let port = reject("  host: r\n  trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}");
    assert!(port.contains("spec.trafficPolicy.portLevelSettings[0].port.number"), "{port}");
    let port_tls =
        reject("  host: r\n  trafficPolicy: {portLevelSettings: [{port: {number: 1}, tls: {mode: MUTUAL}}]}");
    assert!(port_tls.contains("spec.trafficPolicy.portLevelSettings[0].tls.mode"), "{port_tls}");
}

#[test]
fn virtual_services_map_onto_the_route_model_in_order() {
    let c = config(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /fault}, headers: {x-test: {exact: 'yes'}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}, delay: {fixedDelay: 100ms, percentage: {value: 50}}}
    route: [{destination: {host: reviews-v1}}]
  - match: [{uri: {exact: /retry}}]
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 'gateway-error,connect-failure'}
    timeout: 5s
    route: [{destination: {host: reviews-v1.shop.svc.cluster.local, port: {number: 8080}}, weight: 70}, {destination: {host: reviews-v2.shop}, weight: 30}]
  - route: [{destination: {host: reviews-v2}}]
    mirror: {host: reviews-v1}
    mirrorPercentage: {value: 25}",
    );
    let names: Vec<_> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["VirtualService/shop/reviews/0", "VirtualService/shop/reviews/1", "VirtualService/shop/reviews/2"]
    );
    let fault = c.routes[0].fault.unwrap();
    assert_eq!((fault.abort_status, fault.abort_percent, fault.delay_percent), (418, 100.0, 50.0));
    assert_eq!(c.routes[0].matches[0].path_kind(), pb::PathKind::PathStringPrefix);
    assert_eq!(c.routes[0].backends[0].weight, 100, "a single destination weighs 100");
    let retry = c.routes[1].retry.as_ref().unwrap();
    assert_eq!((retry.attempts, retry.codes.clone(), retry.connect_failure), (3, vec![502, 503, 504], true));
    let hosts: Vec<_> =
        c.routes[1].backends.iter().map(|b| (b.hostname.as_str(), b.namespace.as_str(), b.port, b.weight)).collect();
    assert_eq!(
        hosts,
        [("reviews-v1.shop.svc.cluster.local", "shop", 8080, 70), ("reviews-v2.shop.svc.cluster.local", "shop", 0, 30)]
    );
    assert!(matches!(&c.routes[2].filters[0].kind, Some(pb::filter::Kind::Mirror(m)) if m.percent == 25.0));
    // An HTTPRoute for the service takes over from VirtualServices.
    let both = config(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews-v2}}]}]}
---
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}
spec: {parentRefs: [{kind: Service, name: reviews}], rules: [{backendRefs: [{name: reviews-v1, port: 8080}]}]}",
    );
    assert_eq!(both.routes.len(), 1);
    assert!(both.routes[0].name.starts_with("HTTPRoute/"));
}

#[test]
fn malformed_virtual_services_are_rejected_with_the_field() {
    let reject = |spec: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: shop}}\nspec:\n{spec}"
        ))
        .unwrap();
        parse_object("v.yaml", v).err().map(|r| r.to_string()).unwrap_or_default()
    };
    assert!(reject("  http: []").contains("spec.hosts"));
    let subset = reject("  hosts: [r]\n  http: [{route: [{destination: {host: r, subset: ''}}]}]");
    assert!(subset.contains("spec.http[0].route[0].destination.subset"), "{subset}");
    let abort = reject(
        "  hosts: [r]\n  http: [{fault: {abort: {percentage: {value: 10}}}, route: [{destination: {host: r}}]}]",
    );
    assert!(abort.contains("spec.http[0].fault.abort.httpStatus"), "{abort}");
    let timeout = reject("  hosts: [r]\n  http: [{timeout: soon, route: [{destination: {host: r}}]}]");
    assert!(timeout.contains("spec.http[0].timeout"), "{timeout}");
    let method = reject("  hosts: [r]\n  http: [{match: [{method: {prefix: G}}], route: [{destination: {host: r}}]}]");
    assert!(method.contains("spec.http[0].match[0].method"), "{method}");
    let weights = reject("  hosts: [r]\n  http: [{route: [{destination: {host: r}}, {destination: {host: s}}]}]");
    assert!(weights.contains("spec.http[0].route") && weights.contains("weights"), "{weights}");
}

#[test]
fn custom_policies_deny_and_service_accounts_are_qualified_at_the_waypoint() {
    let c = config(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: reviews}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: by-account, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: reviews}]
  rules: [{from: [{source: {serviceAccounts: [frontend, other/batch]}}]}]",
    );
    let by_name: BTreeMap<_, _> = c.policies.iter().map(|p| (p.name.as_str(), p)).collect();
    assert_eq!(by_name["ext"].action(), pb::Action::Deny, "an external authorizer we cannot ask denies (fail closed)");
    assert_eq!(by_name["by-account"].rules[0].from[0].service_accounts, ["shop/frontend", "other/batch"]);
}

#[test]
fn destination_rule_tls_modes_are_checked_by_field() {
    let parse = |tls: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: shop}}\nspec: {{host: api.example.com, trafficPolicy: {{tls: {tls}}}}}"
        ))
        .unwrap();
        parse_object("d.yaml", v).map(|_| ()).map_err(|r| (r.field, r.reason))
    };
    assert!(parse("{mode: SIMPLE, sni: api.example.com, insecureSkipVerify: false}").is_ok());
    assert!(parse("{mode: DISABLE}").is_ok());
    assert!(parse("{mode: ISTIO_MUTUAL}").is_ok());
    let (field, reason) = parse("{mode: MUTUAL}").unwrap_err();
    assert_eq!(field, "spec.trafficPolicy.tls.mode");
    assert!(reason.contains("MUTUAL"), "{reason}");
    assert_eq!(parse("{mode: SIMPLE, sni: 'not a name'}").unwrap_err().0, "spec.trafficPolicy.tls.sni");
    assert_eq!(
        parse("{mode: SIMPLE, caCertificates: /etc/ca.pem}").unwrap_err().0,
        "spec.trafficPolicy.tls.caCertificates",
        "fields Ambit does not read are refused by name"
    );
}

#[test]
fn rate_limit_policies_reach_their_targets() {
    let c = config(
        "apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api, namespace: shop}
spec:
  targetRefs: [{group: '', kind: Service, name: reviews}]
  rules:
  - name: per-user
    match: [{paths: ['/api/*'], methods: [GET]}]
    requests: 10
    per: 1m
    key: Header
    header: X-User
  - {requests: 100, per: 1s, burst: 200}
---
apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: all, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules: [{requests: 5, per: 1s, key: SourcePrincipal}]
---
apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: other, namespace: shop}
spec:
  targetRefs: [{group: '', kind: Service, name: ratings}]
  rules: [{requests: 1, per: 1s}]",
    );
    let names: Vec<_> = c.rate_limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["shop/all/0", "shop/api/per-user", "shop/api/1"], "the service's and its waypoint's, no other");
    let user = &c.rate_limits[1];
    assert_eq!(
        (user.requests, user.burst, user.key(), user.header.as_str()),
        (10, 10, pb::RateLimitKey::RateLimitHeader, "x-user")
    );
    assert_eq!(user.per, Some(prost_types::Duration { seconds: 60, nanos: 0 }));
    assert_eq!(user.matches[0].paths, ["/api/*"]);
    assert_eq!(c.rate_limits[2].burst, 200);
    assert_eq!(c.rate_limits[0].key(), pb::RateLimitKey::RateLimitSourcePrincipal);
}

#[test]
fn malformed_rate_limit_policies_are_rejected_with_the_field() {
    let reject = |spec: &str| {
        let v: serde_json::Value = serde_yaml::from_str(&format!(
            "apiVersion: policy.ambit.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: r, namespace: shop}}\nspec:\n{spec}"
        ))
        .unwrap();
        parse_object("r.yaml", v).err().map(|r| r.to_string()).unwrap_or_default()
    };
    let target = "  targetRefs: [{kind: Service, name: reviews}]\n";
    for (spec, field) in [
        ("  rules: [{requests: 1, per: 1s}]".to_owned(), "spec.targetRefs"),
        (format!("{target}  rules: []"), "spec.rules"),
        (format!("{target}  rules: [{{requests: 0, per: 1s}}]"), "spec.rules[0].requests"),
        (format!("{target}  rules: [{{requests: 1, per: soon}}]"), "spec.rules[0].per"),
        (format!("{target}  rules: [{{requests: 1, per: 48h}}]"), "spec.rules[0].per"),
        (format!("{target}  rules: [{{requests: 1, per: 1s, burst: 0}}]"), "spec.rules[0].burst"),
        (format!("{target}  rules: [{{requests: 1, per: 1s, key: Cookie}}]"), "spec.rules[0].key"),
        (format!("{target}  rules: [{{requests: 1, per: 1s, key: Header}}]"), "spec.rules[0].header"),
        (format!("{target}  rules: [{{requests: 1, per: 1s, header: x}}]"), "spec.rules[0].header"),
        (
            format!("{target}  rules: [{{name: a, requests: 1, per: 1s}}, {{name: a, requests: 1, per: 1s}}]"),
            "spec.rules[1].name",
        ),
        (
            format!("{target}  rules: [{{requests: 1, per: 1s, match: [{{ports: [http]}}]}}]"),
            "spec.rules[0].match[0].ports[0]",
        ),
        (format!("{target}  rules: [{{requests: 1, per: 1s, window: 1}}]"), "spec.rules[0].window"),
        ("  targetRefs: [{kind: Pod, name: x}]\n  rules: [{requests: 1, per: 1s}]".to_owned(), "spec.targetRefs[0]"),
    ] {
        let r = reject(&spec);
        assert!(r.contains(field), "{spec}: {r}");
    }
    assert!(reject(&format!("{target}  rules: [{{requests: 1, per: 1s}}]")).is_empty());
}
