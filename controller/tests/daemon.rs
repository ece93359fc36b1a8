//! The controller as a real process: readiness, metrics and the debug pages on its admin
//! port, and a clear refusal of a bad configuration.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_shared::testing::{expect_startup_failure, free_addr, http_get, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_controller");

#[test]
fn serves_readiness_metrics_and_debug_pages() {
    let dir = std::env::temp_dir().join(format!("ambit-controller-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {ports: [{port: -1}]}\n").unwrap();
    std::fs::write(
        dir.join("manifests/routes.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]\n  rules: [{backendRefs: [{name: reviews-v1, port: 9080}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: glob, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]\n  rules: [{matches: [{path: {type: Glob, value: /x}}]}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tokens.yaml"),
        "tokens:\n- token: 0123456789abcdef0123\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: n1\n",
    )
    .unwrap();
    let (admin, grpc) = (free_addr(), free_addr());
    let (a, g) = (admin.to_string(), grpc.to_string());
    let m = dir.join("manifests").display().to_string();
    let t = dir.join("tokens.yaml").display().to_string();
    let c = dir.join("ca").display().to_string();
    let mut d = Daemon::spawn(
        BIN,
        &["--admin-addr", &a, "--grpc-addr", &g, "--manifests", &m, "--token-file", &t, "--ca-dir", &c],
    );
    d.wait_ok(admin, "/ready");
    let body = http_get(admin, "/metrics").unwrap();
    assert!(body.contains("istio_build{component=\"controller\""), "{body}");
    assert!(body.contains("ambit_rejected_objects 2"), "{body}");
    // Directory mode shows each route's status as Kubernetes would get it.
    let response = http_get(admin, "/debug/routes").unwrap();
    let routes = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let routes: serde_json::Value = serde_json::from_str(routes).unwrap_or_else(|e| panic!("{e}: {routes}"));
    let routes = routes.as_array().unwrap();
    let accepted = routes.iter().find(|r| r["name"] == "reviews").expect("the accepted route");
    assert_eq!(accepted["kind"], "HTTPRoute");
    let parent = &accepted["status"]["parents"][0];
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "reviews", "port": 9080})
    );
    assert_eq!(parent["controllerName"], "ambit.dev/waypoint-controller");
    assert_eq!(parent["conditions"][0]["type"], "Accepted");
    assert_eq!(parent["conditions"][0]["status"], "True");
    // A refused route has the same shape: per parent, not accepted, the field named.
    let rejected =
        routes.iter().find(|r| r["name"] == "glob").unwrap_or_else(|| panic!("the rejected route: {routes:?}"));
    assert_eq!(rejected["kind"], "HTTPRoute");
    let parent = &rejected["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "ambit.dev/waypoint-controller");
    assert_eq!(parent["conditions"][0]["status"], "False");
    assert_eq!(parent["conditions"][0]["reason"], "UnsupportedValue");
    let message = parent["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("spec.rules[0].matches[0].path.type"), "{rejected}");
    let rejected = http_get(admin, "/debug/rejected").unwrap();
    assert!(rejected.contains("Service shop/bad") && rejected.contains("spec.ports[0].port"), "{rejected}");
    let dump = http_get(admin, "/debug/config_dump").unwrap();
    assert!(dump.contains("type.googleapis.com/istio.workload.Address"), "{dump}");
    assert!(dir.join("ca/root-cert.pem").exists(), "root persisted");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_bad_configuration_naming_the_setting() {
    let err = expect_startup_failure(BIN, &["--cert-lifetime-seconds", "5"]);
    assert!(err.contains("CERT_LIFETIME_SECONDS"), "{err}");
    let err = expect_startup_failure(BIN, &["--manifests", "/nonexistent/ambit"]);
    assert!(err.contains("MANIFEST_DIR") && err.contains("/nonexistent/ambit"), "{err}");
    let err = expect_startup_failure(BIN, &["--manifests", "/tmp"]);
    assert!(err.contains("TOKEN_FILE"), "{err}");
    let err = expect_startup_failure(BIN, &["--outbound-traffic-policy", "DENY_ALL"]);
    assert!(err.contains("OUTBOUND_TRAFFIC_POLICY") || err.contains("outbound-traffic-policy"), "{err}");
    let err = expect_startup_failure(BIN, &["--node-proxy-accounts", "ztunnel"]);
    assert!(err.contains("NODE_PROXY_ACCOUNTS") && err.contains("ztunnel"), "{err}");
}
