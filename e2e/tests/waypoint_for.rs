//! `istio.io/waypoint-for` on the sandbox (root): a waypoint that serves workloads takes the
//! traffic clients address to a pod's own address (not only to its service), and the
//! policies targeting its Gateway apply to it; a waypoint for services only leaves pod-addressed
//! traffic to ztunnel.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambit_e2e::sandbox::{Options, Sandbox};

fn app(waypoint_for: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: shop, labels: {{istio.io/waypoint-for: {waypoint_for}}}}}\nspec: {{gatewayClassName: ambit-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}
---
apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: shop, labels: {{app: client}}}}\nspec: {{nodeName: node-1, containers: [{{name: c, image: ambit/sleep}}]}}
---
apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: shop, labels: {{app: server}}}}\nspec: {{nodeName: node-2, containers: [{{name: s, image: ambit/echo, ports: [{{containerPort: 8080}}]}}]}}
---
apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: shop}}\nspec: {{selector: {{app: server}}, ports: [{{name: http, port: 8080}}]}}
---
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-secret, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/secret]}}}}]}}]
"
    )
}

/// `ambit-sample get` in the client: (status, body).
fn call(sb: &Sandbox, url: &str) -> (u16, String) {
    let out = sb.exec("shop/client", &["ambit-sample", "get", "--status", url]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_waypoint_for_workloads_takes_pod_addressed_traffic_under_its_gateways_policies() {
    let (opts, scratch) = Options::for_test_named("wpf");
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&ambit_e2e::write_file(&scratch.join("all"), "app.yaml", &app("all"))).unwrap();
    let server_ip = sb.state.pods["shop/server"].ip.to_string();
    let wp_ip =
        sb.state.pods.iter().find(|(k, _)| k.starts_with("shop/waypoint-")).map(|(_, p)| p.ip.to_string()).unwrap();
    let by_pod = |path: &str| format!("http://{server_ip}:8080{path}");

    // Addressed to the pod: through the waypoint (the server's peer is the waypoint), and the
    // Gateway's policy applies.
    let (status, body) =
        ambit_e2e::wait_for("a pod-addressed request through the waypoint", Duration::from_secs(20), || {
            Some(call(&sb, &by_pod("/ok"))).filter(|(s, _)| *s == 200)
        });
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert!(echoed["peer"].as_str().unwrap().starts_with(&format!("{wp_ip}:")), "via the waypoint: {echoed}");
    assert_eq!(call(&sb, &by_pod("/secret")).0, 403, "the Gateway's policy on a pod-addressed request");
    // By service: the same waypoint and policy.
    assert_eq!(call(&sb, "http://server.shop:8080/secret").0, 403);
    assert_eq!(call(&sb, "http://server.shop:8080/ok").0, 200);

    // A waypoint for services only: pod-addressed traffic goes straight to the pod (ztunnel),
    // the service's still through the waypoint.
    sb.apply(&ambit_e2e::write_file(&scratch.join("service"), "app.yaml", &app("service"))).unwrap();
    ambit_e2e::wait_for("pod-addressed traffic straight to the pod", Duration::from_secs(20), || {
        let (status, body) = call(&sb, &by_pod("/secret"));
        (status == 200 && !body.contains(&format!("\"peer\":\"{wp_ip}:"))).then_some(())
    });
    assert_eq!(call(&sb, "http://server.shop:8080/secret").0, 403);

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
