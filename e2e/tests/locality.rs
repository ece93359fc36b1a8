//! Locality (root, sandbox): nodes in two zones (their topology labels); a Service with
//! `trafficDistribution: PreferClose` keeps a client's connections in its zone and fails over
//! to the other zone once the close endpoint is gone; `internalTrafficPolicy: Local` never
//! leaves the client's node; a waypoint chooses by its own place; a Service without a
//! preference spreads over both.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_e2e::sandbox::{Options, Sandbox};
use ambit_e2e::{wait_for, write_file};

const APP: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: zone-a}}
---
apiVersion: v1\nkind: Node\nmetadata: {name: node-2, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: zone-b}}
---
apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: shop, labels: {app: client}}\nspec: {nodeName: node-1, serviceAccountName: client, containers: [{name: c, image: ambit/sleep}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: web-a, namespace: shop, labels: {app: web}}\nspec: {nodeName: node-1, containers: [{name: s, image: ambit/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: filler, namespace: shop, labels: {app: filler}}\nspec: {nodeName: node-1, containers: [{name: c, image: ambit/sleep}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: web-b, namespace: shop, labels: {app: web}}\nspec: {nodeName: node-2, containers: [{name: s, image: ambit/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: near, namespace: shop}\nspec: {selector: {app: web}, trafficDistribution: PreferClose, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: shop}\nspec: {selector: {app: web}, internalTrafficPolicy: Local, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: spread, namespace: shop}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: near-wp, namespace: shop, labels: {istio.io/use-waypoint: waypoint}, annotations: {networking.istio.io/traffic-distribution: PreferClose}}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: local-wp, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}\nspec: {selector: {app: web}, internalTrafficPolicy: Local, ports: [{name: http, port: 8080}]}
";

/// 20 requests from the client to `service`: how many each pod answered (`failed` for the
/// ones that got no answer).
fn answers(sb: &Sandbox, service: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let url = format!("http://{service}:8080/");
        let out = sb.exec("shop/client", &["ambit-sample", "get", "--status", &url]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pod = match text.split_once('\n') {
            Some((status, body)) if status.trim() == "200" => serde_json::from_str::<serde_json::Value>(body.trim())
                .ok()
                .and_then(|v| v["pod"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unreadable".into()),
            _ => "failed".into(),
        };
        *seen.entry(pod).or_insert(0) += 1;
    }
    seen
}

fn only(pod: &str) -> BTreeMap<String, usize> {
    BTreeMap::from([(pod.to_owned(), 20)])
}

#[test]
fn close_endpoints_first_and_failover() {
    let (opts, scratch) = Options::for_test_named("loc");
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&write_file(&scratch, "app.yaml", APP)).unwrap();

    // PreferClose from zone-a: only zone-a's endpoint; Local: only the client's node.
    wait_for("the close endpoint only", Duration::from_secs(20), || {
        (answers(&sb, "near") == only("web-a")).then_some(())
    });
    assert_eq!(answers(&sb, "local"), only("web-a"));
    // No preference: both zones.
    let spread = answers(&sb, "spread");
    assert!(spread.contains_key("web-a") && spread.contains_key("web-b"), "{spread:?}");
    // Through the waypoint (placed on node-2, the emptier node): close to the waypoint, which
    // chooses — zone-b's endpoint, though the client is in zone-a; Local is the waypoint's node.
    let wp = sb.state.pods.keys().find(|k| k.starts_with("shop/waypoint-")).cloned().expect("the waypoint pod");
    assert_eq!(sb.state.pods[&wp].node, "node-2", "the sandbox spreads pods to the emptier node");
    assert_eq!(answers(&sb, "near-wp"), only("web-b"));
    assert_eq!(answers(&sb, "local-wp"), only("web-b"));

    // The close endpoint gone: PreferClose fails over to zone-b; Local has nowhere to go.
    sb.delete(&write_file(&scratch, "a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web-a, namespace: shop}\n"))
        .unwrap();
    wait_for("failover to the other zone", Duration::from_secs(20), || {
        (answers(&sb, "near") == only("web-b")).then_some(())
    });
    assert_eq!(answers(&sb, "near-wp"), only("web-b"));
    assert_eq!(answers(&sb, "local"), only("failed"), "Local never leaves the node");
    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
