//! The waypoint end to end on the sandbox (root): a Gateway deployed by the controller and run
//! as a pod, a namespace bound to it beside a namespace without one; traffic from a meshed
//! client through ztunnel → waypoint → ztunnel: weighted split, header and path routes with a
//! header filter, retries, a request timeout, a mirror, gRPC, DestinationRules (with Istio's
//! canary by subsets), JWTs, L7
//! authorization by method, path, principal and claim, TCP through the waypoint, malformed
//! requests, tracing, and the request metrics.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_e2e::sandbox::{Options, Sandbox};
use std::time::Duration;

use ambit_e2e::{wait_for, write_file};

const APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  annotations: {ambit.dev/otlp-endpoint: 'http://collector.observability.svc.cluster.local:4318'}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      nodeName: node-1
      containers: [{name: client, image: ambit/sleep}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 8080}, {name: tcp-echo, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: reviews, version: v1}}
  template:
    metadata: {labels: {app: reviews, version: v1, pool: a}}
    spec:
      nodeName: node-2
      containers:
      - {name: echo, image: ambit/echo, args: ['--port', '8080', '--tcp-port', '9000'], ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v2, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: reviews, version: v2}}
  template:
    metadata: {labels: {app: reviews, version: v2}}
    spec:
      nodeName: node-1
      containers:
      - {name: echo, image: ambit/echo, args: ['--port', '8080', '--tcp-port', '9000'], ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken, pool: a}}
    spec:
      containers: [{name: echo, image: ambit/echo, args: ['--port', '8080', '--fail-status', '500'], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: pool, namespace: shop}
spec:
  selector: {pool: a}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: canary, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: limited, namespace: shop}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: observability}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: collector, namespace: observability}
spec:
  replicas: 1
  selector: {matchLabels: {app: collector}}
  template:
    metadata: {labels: {app: collector}}
    spec:
      containers: [{name: c, image: ambit/otlp-sink, ports: [{containerPort: 4318}]}]
---
apiVersion: v1
kind: Service
metadata: {name: collector, namespace: observability}
spec:
  selector: {app: collector}
  ports: [{name: http, port: 4318}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: plain}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: plain}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers: [{name: echo, image: ambit/echo, args: ['--port', '8080'], ports: [{containerPort: 8080}]}]
";

const ROUTES: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews, port: 8080}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 8080, weight: 90}, {name: reviews-v2, port: 8080, weight: 10}]
  - matches: [{headers: [{name: x-user, value: tester}]}]
    backendRefs: [{name: reviews-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed-by, value: waypoint}]}}]
    backendRefs: [{name: reviews-v2, port: 8080}]
  - matches: [{path: {type: Exact, value: /flaky}}]
    retry: {attempts: 2, codes: [503], backoff: 10ms}
    backendRefs: [{name: reviews-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: reviews-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 8080}}}]
    backendRefs: [{name: reviews-v1, port: 8080}]
";

const FAULTS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v2, namespace: shop}
spec:
  hosts: [reviews-v2]
  http:
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews-v2}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews-v2}}]
  - route: [{destination: {host: reviews-v2}}]
    headers: {response: {set: {x-via: virtual-service}}}
";

/// Istio's canary, unchanged: DestinationRule subsets by the `version` label (v2 with a
/// traffic policy of its own) and a VirtualService splitting 90/10 by subset.
const CANARY: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: canary, namespace: shop}
spec:
  host: canary.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {maxRequestsPerConnection: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: canary, namespace: shop}
spec:
  hosts: [canary]
  http:
  - match: [{uri: {prefix: /missing}}]
    route: [{destination: {host: canary, subset: v3}}]
  - match: [{headers: {x-canary: {exact: v2}}}]
    route: [{destination: {host: canary, subset: v2}}]
  - route:
    - {destination: {host: canary, subset: v1}, weight: 90}
    - {destination: {host: canary, subset: v2}, weight: 10}
";

/// Ambit's RateLimitPolicy: three requests a minute per `x-user` on the canary service.
const RATE_LIMIT: &str = "
apiVersion: policy.ambit.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-user, namespace: shop}
spec:
  targetRefs: [{group: '', kind: Service, name: canary}]
  rules:
  - name: users
    match: [{methods: [GET]}]
    requests: 3
    per: 1m
    key: Header
    header: x-user
";

const BACKENDS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: shop}
spec:
  host: pool
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: shop}
spec:
  host: sticky.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: one-request-per-connection, namespace: shop}
spec:
  host: reviews-v2
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: limited, namespace: shop}
spec:
  host: limited
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
";

const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  # Scoped to the HTTP port: on a TCP connection a DENY's HTTP fields are ignored (Istio's
  # rule), so without the port it would deny every TCP connection through the waypoint.
  rules: [{to: [{operation: {methods: [DELETE], ports: ['8080']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: client-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: '', name: reviews}]
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {paths: ['/v2*', '/']}}]
  # TCP connections are authorized too, on their L4 attributes only (a rule with paths
  # cannot match one).
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ['9000']}}]
";

/// RequestAuthentication on the waypoint, and policies on its request principal and claims.
fn jwt_policies(jwks: &str) -> String {
    format!(
        "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules:
  - issuer: https://issuer.example
    audiences: [shop]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-group, claim: group}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: private-needs-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: '', name: reviews}}]
  action: DENY
  rules: [{{from: [{{source: {{notRequestPrincipals: ['*']}}}}], to: [{{operation: {{paths: ['/v2/private*'], ports: ['8080']}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin-needs-claim, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: '', name: reviews}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ['/v2/admin*'], ports: ['8080']}}}}]
    when: [{{key: 'request.auth.claims[group]', notValues: [admins]}}]
"
    )
}

/// `ambit-sample get` in the client pod: (status, JSON body).
fn call(sb: &Sandbox, url: &str, extra: &[&str]) -> (u16, serde_json::Value) {
    let mut args = vec!["ambit-sample", "get", "--status", url];
    args.extend_from_slice(extra);
    let out = sb.exec("client-0", &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    let status =
        status.trim().parse().unwrap_or_else(|_| panic!("no status: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (status, serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::String(body.trim().to_owned())))
}

/// 2 000 requests to `url` from the client: the share reviews-v1 answered (every one answered
/// by reviews-v1 or reviews-v2).
fn v1_share(sb: &Sandbox, url: &str) -> f64 {
    let out = sb.exec("client-0", &["ambit-sample", "load", url, "--requests", "2000", "--concurrency", "8"]).unwrap();
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v1 = load["by_pod"]["reviews-v1-0"].as_u64().unwrap_or(0);
    let v2 = load["by_pod"]["reviews-v2-0"].as_u64().unwrap_or(0);
    assert_eq!(v1 + v2, 2000, "every request answered by v1 or v2: {load}");
    v1 as f64 / 2000.0
}

#[test]
fn waypoint_routes_authorizes_and_observes() {
    let mut opts = Options::for_tests();
    opts.prefix = format!("{}-wp", opts.prefix);
    let scratch = opts.root.with_extension("files");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&write_file(&scratch, "app.yaml", APP)).unwrap();

    // The controller deployed the waypoint; the sandbox runs it as a pod, not captured.
    let wp = sb.state.pods.keys().find(|k| k.starts_with("shop/waypoint-")).cloned().expect("waypoint pod");
    assert!(!sb.captured(&wp), "waypoint pods are outside the capture");
    assert!(sb.state.services.contains_key("shop/waypoint"));
    let wp_ip = sb.state.pods[&wp].ip.to_string();

    // Through the waypoint without routes: the service's own endpoints; the server sees the
    // waypoint as its peer (ztunnel delivered the waypoint's HBONE).
    let (status, answer) = call(&sb, "http://reviews:8080/", &[]);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["peer"].as_str().unwrap().starts_with(&format!("{wp_ip}:")), "via the waypoint: {answer}");
    // The destination's ztunnel saw the waypoint's identity.
    let dst_metrics = ["node-1", "node-2"].map(|n| sb.get_in_node(n, 15020, "/metrics").unwrap_or_default()).join("\n");
    let from_waypoint = ambit_e2e::metric_sum(
        &dst_metrics,
        "istio_tcp_connections_opened_total",
        &["reporter=\"destination\"", "source_principal=\"spiffe://cluster.local/ns/shop/sa/waypoint\""],
    );
    assert!(from_waypoint >= 1.0, "destination ztunnel saw the waypoint:\n{dst_metrics}");
    // The namespace without a waypoint: direct, the client is the peer.
    let client_ip = sb.state.pods["shop/client-0"].ip.to_string();
    let (status, answer) = call(&sb, "http://echo.plain:8080/", &[]);
    assert_eq!(status, 200);
    assert!(answer["peer"].as_str().unwrap().starts_with(&format!("{client_ip}:")), "no waypoint: {answer}");

    sb.apply(&write_file(&scratch, "routes.yaml", ROUTES)).unwrap();
    // The routes arrive together; the header filter shows they have (no chance involved).
    wait_for("the routes", Duration::from_secs(20), || {
        (call(&sb, "http://reviews:8080/v2/items", &[]).1["headers"]["x-routed-by"] == "waypoint").then_some(())
    });
    for _ in 0..5 {
        assert_eq!(call(&sb, "http://reviews:8080/", &["-H", "x-user: tester"]).1["pod"], "reviews-v2-0");
        let (_, answer) = call(&sb, "http://reviews:8080/v2/items", &[]);
        assert_eq!(answer["pod"], "reviews-v2-0");
        assert_eq!(answer["headers"]["x-routed-by"], "waypoint", "{answer}");
    }
    // A retry turns the back end's every-other-request 503 into a 200, every time.
    for _ in 0..6 {
        let (status, answer) = call(&sb, "http://reviews:8080/flaky", &[]);
        assert_eq!(status, 200, "retried: {answer}");
    }
    // The request timeout answers 504; a quick answer passes.
    let (status, body) = call(&sb, "http://reviews:8080/delay/2000", &[]);
    assert_eq!(status, 504, "{body}");
    assert_eq!(call(&sb, "http://reviews:8080/delay/10", &[]).0, 200);
    // A mirror receives copies; the client sees only the primary.
    let count = |sb: &Sandbox| call(sb, "http://reviews-v2:8080/__count", &[]).1["served"].as_u64().unwrap();
    let before = count(&sb);
    for _ in 0..10 {
        let (status, answer) = call(&sb, "http://reviews:8080/mirrored", &[]);
        assert_eq!((status, answer["pod"].as_str()), (200, Some("reviews-v1-0")));
    }
    wait_for("the mirror's copies", Duration::from_secs(10), || (count(&sb) >= before + 11).then_some(()));

    // gRPC (HTTP/2) through the waypoint: the reply, and a failure status in the trailers.
    let grpc = |path: &str| {
        let out = sb.exec("client-0", &["ambit-sample", "grpc", &format!("http://reviews.shop:8080{path}")]).unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
    };
    let ok = grpc("/echo.Echo/Say");
    assert_eq!(ok["grpc_status"], "0", "{ok}");
    assert!(
        ok["message"].as_str().unwrap().starts_with("pod=reviews-v")
            && ok["message"].as_str().unwrap().ends_with("hello")
    );
    assert_eq!(grpc("/echo.Echo/Fail")["grpc_status"], "13");

    // 90/10 over 2 000 requests, within ±3 %.
    let share = v1_share(&sb, "http://reviews:8080/");
    assert!((0.87..=0.93).contains(&share), "v1 share {share}");

    // Istio's canary by subsets: 90/10 over 2 000 requests, each subset its pods only.
    sb.apply(&write_file(&scratch, "canary.yaml", CANARY)).unwrap();
    wait_for("the canary subsets", Duration::from_secs(20), || {
        (call(&sb, "http://canary:8080/", &["-H", "x-canary: v2"]).1["pod"] == "reviews-v2-0").then_some(())
    });
    let share = v1_share(&sb, "http://canary:8080/");
    assert!((0.87..=0.93).contains(&share), "subset v1 share {share}");
    for _ in 0..5 {
        assert_eq!(call(&sb, "http://canary:8080/", &["-H", "x-canary: v2"]).1["pod"], "reviews-v2-0");
    }
    // Subset v2's own policy (a connection per request): a new peer port each time.
    let peers = |url: &str, extra: &[&str]| -> std::collections::BTreeSet<String> {
        (0..4).map(|_| call(&sb, url, extra).1["peer"].as_str().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(peers("http://canary:8080/", &["-H", "x-canary: v2"]).len(), 4, "v2's policy: fresh connections");
    // A subset the rule does not define: 503 (NC), never the whole service.
    let (status, body) = call(&sb, "http://canary:8080/missing", &[]);
    assert_eq!(status, 503, "{body}");

    // A local rate limit per user: three requests, then 429 with the limit's headers; another
    // user has a bucket of their own, and a method the rule does not match is not counted.
    sb.apply(&write_file(&scratch, "ratelimit.yaml", RATE_LIMIT)).unwrap();
    wait_for("the rate limit", Duration::from_secs(20), || {
        (call(&sb, "http://canary:8080/", &["-H", "x-user: probe"]).0 == 429).then_some(())
    });
    for _ in 0..3 {
        assert_eq!(call(&sb, "http://canary:8080/", &["-H", "x-user: alice"]).0, 200);
    }
    let limited = sb.exec("client-0", &["curl", "-s", "-i", "-H", "x-user: alice", "http://canary:8080/"]).unwrap();
    let limited = String::from_utf8_lossy(&limited.stdout).to_ascii_lowercase();
    assert!(limited.starts_with("http/1.1 429"), "{limited}");
    for header in ["x-ratelimit-limit: 3", "x-ratelimit-remaining: 0", "x-ratelimit-reset: ", "retry-after: "] {
        assert!(limited.contains(header), "{header}: {limited}");
    }
    assert!(limited.contains("local_rate_limited"), "{limited}");
    assert_eq!(call(&sb, "http://canary:8080/", &["-H", "x-user: bob"]).0, 200, "another user's bucket");
    assert_eq!(call(&sb, "http://canary:8080/", &["-X", "POST", "-H", "x-user: alice"]).0, 200, "not matched");

    // VirtualService routes on the same route model: fault abort and delay.
    sb.apply(&write_file(&scratch, "faults.yaml", FAULTS)).unwrap();
    wait_for("the fault abort", Duration::from_secs(20), || {
        (call(&sb, "http://reviews-v2:8080/fault", &[]).0 == 418).then_some(())
    });
    let started = std::time::Instant::now();
    let (status, answer) = call(&sb, "http://reviews-v2:8080/slow", &[]);
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(400), "delayed: {:?}", started.elapsed());
    let page = sb.exec("client-0", &["ambit-sample", "get", "--status", "http://reviews-v2:8080/"]).unwrap();
    assert!(String::from_utf8_lossy(&page.stdout).starts_with("200"));

    // Backend policy (DestinationRule): outlier ejection, consistent hash, pool overflow.
    sb.apply(&write_file(&scratch, "backends.yaml", BACKENDS)).unwrap();
    wait_for("the sticky backend", Duration::from_secs(20), || {
        let pods: std::collections::BTreeSet<String> =
            (0..8).map(|_| call(&sb, "http://sticky:8080/", &["-H", "x-user: alice"]).1["pod"].to_string()).collect();
        (pods.len() == 1).then_some(())
    });
    for user in ["bob", "carol", "dave"] {
        let first = call(&sb, "http://sticky:8080/", &["-H", &format!("x-user: {user}")]).1["pod"].clone();
        for _ in 0..5 {
            assert_eq!(call(&sb, "http://sticky:8080/", &["-H", &format!("x-user: {user}")]).1["pod"], first, "{user}");
        }
    }
    // The broken replica answers 500 until it is ejected; then only the healthy one answers.
    let statuses: Vec<u16> = (0..20).map(|_| call(&sb, "http://pool:8080/", &[]).0).collect();
    let failures = statuses.iter().filter(|s| **s == 500).count();
    assert!(failures <= 1, "ejected after its first 500: {statuses:?}");
    assert!(statuses[statuses.len() - 10..].iter().all(|s| *s == 200), "{statuses:?}");
    // One connection and one pending request: the rest of 8 concurrent slow requests overflow.
    let out = sb
        .exec(
            "client-0",
            &["ambit-sample", "load", "http://limited:8080/delay/500", "--requests", "8", "--concurrency", "8"],
        )
        .unwrap();
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let overflowed = load["by_pod"]["status 503"].as_u64().unwrap_or(0);
    let served = load["by_pod"]["reviews-v1-0"].as_u64().unwrap_or(0);
    assert!(overflowed >= 4 && served >= 1 && overflowed + served == 8, "{load}");

    // maxRequestsPerConnection: 1 — every request to reviews-v2 reaches it on a new connection
    // (a new peer port); reviews-v1 keeps its pooled connection.
    let peers = |url: &str| -> std::collections::BTreeSet<String> {
        (0..4).map(|_| call(&sb, url, &[]).1["peer"].as_str().unwrap_or_default().to_owned()).collect()
    };
    wait_for("one request per connection", Duration::from_secs(20), || {
        (peers("http://reviews-v2:8080/").len() == 4).then_some(())
    });
    assert_eq!(peers("http://reviews-v1:8080/").len(), 1, "pooled: one connection");

    // L7 authorization: DELETE denied by the waypoint policy, other paths by the service's
    // ALLOW; the rest allowed.
    sb.apply(&write_file(&scratch, "policy.yaml", POLICY)).unwrap();
    wait_for("DELETE denied", Duration::from_secs(20), || {
        (call(&sb, "http://reviews:8080/", &["-X", "DELETE"]).0 == 403).then_some(())
    });
    let (status, body) = call(&sb, "http://reviews:8080/", &["-X", "DELETE"]);
    assert_eq!((status, body.as_str()), (403, Some("RBAC: access denied")));
    assert_eq!(call(&sb, "http://reviews:8080/other", &[]).0, 403, "path not allowed");
    assert_eq!(call(&sb, "http://reviews:8080/v2/x", &[]).0, 200, "allowed path and principal");
    assert_eq!(call(&sb, "http://reviews:8080/", &["-X", "POST"]).0, 200);

    // RequestAuthentication: a valid token (principal, claims, claim header), an invalid one
    // (401), none (passes, without a principal).
    let issuer = ambit_shared::testing::TestIssuer::new("https://issuer.example");
    sb.apply(&write_file(&scratch, "jwt.yaml", &jwt_policies(&issuer.jwks))).unwrap();
    let admin = issuer.token("alice", "shop", 600, serde_json::json!({"group": "admins"}));
    let user = issuer.token("bob", "shop", 600, serde_json::json!({"group": "users"}));
    let expired = issuer.token("carol", "shop", -600, serde_json::json!({"group": "admins"}));
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    wait_for("the JWT rules", Duration::from_secs(20), || {
        (call(&sb, "http://reviews:8080/v2/x", &["-H", &bearer(&expired)]).0 == 401).then_some(())
    });
    let (status, body) = call(&sb, "http://reviews:8080/v2/x", &["-H", &bearer(&expired)]);
    assert_eq!((status, body.as_str()), (401, Some("Jwt verification fails")));
    let (status, answer) = call(&sb, "http://reviews:8080/v2/x", &["-H", &bearer(&admin)]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["headers"]["x-group"], "admins", "claim to header: {answer}");
    assert!(answer["headers"].get("authorization").is_none(), "the token is not forwarded: {answer}");
    assert_eq!(call(&sb, "http://reviews:8080/v2/x", &[]).0, 200, "no token: passes");
    assert_eq!(call(&sb, "http://reviews:8080/v2/private", &[]).0, 403, "requestPrincipals needs a token");
    assert_eq!(call(&sb, "http://reviews:8080/v2/private", &["-H", &bearer(&user)]).0, 200);
    assert_eq!(call(&sb, "http://reviews:8080/v2/admin", &["-H", &bearer(&user)]).0, 403, "claim check");
    assert_eq!(call(&sb, "http://reviews:8080/v2/admin", &["-H", &bearer(&admin)]).0, 200);

    // Tracing: the caller's W3C context continues through the waypoint's span (same trace,
    // the waypoint as the next hop's parent, B3 alongside), and the span reaches the collector.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    let (_, answer) = call(&sb, "http://reviews:8080/v2/traced", &["-H", &incoming]);
    let forwarded = answer["headers"]["traceparent"].as_str().unwrap_or_default().to_owned();
    assert!(forwarded.starts_with(&format!("00-{trace}-")) && !forwarded.contains("00f067aa0ba902b7"), "{answer}");
    assert_eq!(answer["headers"]["x-b3-traceid"], trace);
    assert_eq!(answer["headers"]["x-b3-parentspanid"], "00f067aa0ba902b7");
    let waypoint_span = &forwarded[36..52];
    wait_for("the span at the collector", Duration::from_secs(10), || {
        let log = sb.log("pod-observability-collector-0");
        log.lines()
            .any(|l| {
                l.contains(trace) && l.contains(waypoint_span) && l.contains("\"parentSpanId\":\"00f067aa0ba902b7\"")
            })
            .then_some(())
    });

    // A port that is not HTTP: TCP through the waypoint (the echo pods' TCP echo on 9000).
    let echoed =
        sb.exec("client-0", &["ambit-sample", "tcp-client", "reviews.shop:9000", "--send", "hello-tcp"]).unwrap();
    let echoed = String::from_utf8_lossy(&echoed.stdout).into_owned();
    assert!(echoed.ends_with("hello-tcp") && echoed.contains("pod=reviews-v"), "{echoed}");

    // Malformed HTTP closes that connection only; the waypoint keeps serving.
    let send = "GET / HTTP/1.1\\r\\nbad header line\\r\\n\\r\\n";
    let garbage = sb.exec("client-0", &["ambit-sample", "tcp-client", "reviews.shop:8080", "--send", send]).unwrap();
    let garbage = String::from_utf8_lossy(&garbage.stdout).into_owned();
    assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // Oversized request headers (100 KiB) are refused (431, or the connection closed).
    let big = "GET /v2/x HTTP/1.1\\r\\nhost: reviews\\r\\nx-big: {fill:102400}\\r\\n\\r\\n";
    let answer = sb.exec("client-0", &["ambit-sample", "tcp-client", "reviews.shop:8080", "--send", big]).unwrap();
    let answer = String::from_utf8_lossy(&answer.stdout).into_owned();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    // An HTTP/2 preface followed by a frame that is not valid (a DATA frame on stream 0).
    let bad_h2 = "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00abcd";
    let answer = sb.exec("client-0", &["ambit-sample", "tcp-client", "reviews.shop:8080", "--send", bad_h2]).unwrap();
    assert!(answer.status.success(), "the connection is closed, not hung: {}", String::from_utf8_lossy(&answer.stderr));
    // The server's SETTINGS then GOAWAY (type 7) with PROTOCOL_ERROR (1).
    assert!(answer.stdout.windows(2).any(|w| w == [0x07, 0x00]), "a GOAWAY: {:?}", answer.stdout);
    assert_eq!(call(&sb, "http://reviews:8080/v2/x", &[]).0, 200, "still serving");

    // Istio's request metrics, reported by the waypoint.
    let metrics =
        sb.exec(&wp.replace("shop/", ""), &["ambit-sample", "get", "http://127.0.0.1:15020/metrics"]).unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("response_code=\"403\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
                && l.contains("destination_service=\"reviews.shop.svc.cluster.local\"")
        })
        .unwrap_or_else(|| panic!("403s counted:\n{metrics}"));
    assert!(line.contains("response_flags=\"RBAC\""), "{line}");
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket{"), "duration histogram");
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("request_protocol=\"grpc\"")
            && l.contains("grpc_response_status=\"13\"")),
        "gRPC status counted:\n{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"504\"")
            && l.contains("response_flags=\"UT\"")),
        "timeout counted"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"UO\"")),
        "overflow counted"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"NC\"")),
        "a missing subset counted"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"429\"")
            && l.contains("response_flags=\"RL\"")),
        "rate-limited requests counted"
    );
    assert!(sb.log(&format!("pod-{}", wp.replace('/', "-"))).contains("request complete"), "access log");

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
