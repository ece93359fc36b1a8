//! A policy change reaches connections already open (root, sandbox): ztunnel closes an open
//! TCP connection once a new DENY covers it (Istio's ztunnel keeps it, ztunnel#311), counted
//! with `response_flags="DENY"`; the waypoint closes an open TCP stream the same way, and judges
//! each request on a kept-alive connection by the policies in force when it arrives.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_e2e::sandbox::{bin_dir, Options, Sandbox};

const APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: shop, labels: {app: client}}\nspec: {nodeName: node-1, serviceAccountName: client, containers: [{name: c, image: ambit/sleep}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: shop, labels: {app: server}}\nspec: {nodeName: node-2, serviceAccountName: server, containers: [{name: s, image: ambit/echo, args: [--tcp-port, '9000'], ports: [{containerPort: 8080}]}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: tcp, namespace: shop}\nspec: {selector: {app: server}, ports: [{name: tcp, port: 9000}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}\nspec: {selector: {app: server}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: stream, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}\nspec: {selector: {app: server}, ports: [{name: tcp, port: 9000, appProtocol: tcp}]}
";

const DENY_STREAM: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-stream, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: '', name: stream}]\n  action: DENY\n  rules: [{to: [{operation: {ports: ['9000']}}]}]\n";

const DENY_TCP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-client-tcp, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}], to: [{operation: {ports: ['9000']}}]}]\n";

const DENY_PATH: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-path, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: '', name: web}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/later]}}]}]\n";

fn wait(d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::park_timeout(left);
    }
}

/// A command in the client pod's namespace, started now and collected later.
fn start_in_client(sb: &Sandbox, program: &str, args: &[&str]) -> std::process::Child {
    let netns = &sb.state.pods["shop/client"].netns;
    Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_policy_change_reaches_open_connections() {
    let (opts, scratch) = Options::for_test_named("pol");
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&ambit_e2e::write_file(&scratch.join("app"), "app.yaml", APP)).unwrap();
    let tcp = format!("{}:9000", sb.state.services["shop/tcp"].vip);

    // ztunnel: an open connection, then a DENY for its source on its port.
    let sample = bin_dir().join("ambit-sample");
    let client = start_in_client(
        &sb,
        sample.to_str().unwrap(),
        &["tcp-client", &tcp, "--send", "after-deny", "--wait-ms", "4000"],
    );
    wait(Duration::from_millis(800));
    sb.apply(&ambit_e2e::write_file(&scratch.join("deny-tcp"), "deny.yaml", DENY_TCP)).unwrap();
    let out = client.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(seen.contains("pod=server"), "the connection was open before the DENY: {seen:?}");
    assert!(!seen.contains("after-deny"), "closed when the DENY came, before it could send: {seen:?}");
    let metrics = sb.get_in_node("node-2", 15020, "/metrics").unwrap();
    let closed_denied = metrics.lines().any(|l| {
        l.starts_with("istio_tcp_connections_closed_total")
            && l.contains("response_flags=\"DENY\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
    });
    assert!(closed_denied, "counted as closed by DENY on the server's ztunnel");
    let log = sb.log("ztunnel-node-2");
    assert!(log.contains("the policies changed while it was open"), "the access log says why");

    // The waypoint, TCP: an open stream through it, then a DENY targeting its service.
    let stream = format!("{}:9000", sb.state.services["shop/stream"].vip);
    let client = start_in_client(
        &sb,
        sample.to_str().unwrap(),
        &["tcp-client", &stream, "--send", "after-deny", "--wait-ms", "4000"],
    );
    wait(Duration::from_millis(800));
    sb.apply(&ambit_e2e::write_file(&scratch.join("deny-stream"), "deny.yaml", DENY_STREAM)).unwrap();
    let out = client.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(seen.contains("pod=server"), "the stream was open through the waypoint: {seen:?}");
    assert!(!seen.contains("after-deny"), "the waypoint closed it when the DENY came: {seen:?}");

    // The waypoint: two requests on one kept-alive connection, 3 s apart; a DENY for the second
    // one's path arrives in between.
    let url = |path: &str| format!("http://web.shop:8080{path}");
    let (first, second) = (url("/now"), url("/later"));
    let curl = start_in_client(
        &sb,
        "curl",
        &[
            "-sS",
            "--rate",
            "20/m",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &first,
            &second,
        ],
    );
    wait(Duration::from_millis(800));
    sb.apply(&ambit_e2e::write_file(&scratch.join("deny-path"), "deny.yaml", DENY_PATH)).unwrap();
    let out = curl.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines, ["200 1", "403 0"], "the second request, on the same connection, meets the new policy");

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
