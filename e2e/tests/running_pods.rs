//! Pods running before Ambit (root, sandbox): pods whose network namespaces no CNI call ever
//! announced to the node agent — as when Ambit is installed into a running cluster — are found
//! among the namespaces the runtime pinned and captured without a restart once their namespace
//! is labelled into the mesh: reached over HBONE, under the mesh's policy, and kept across a
//! ztunnel restart. Another pod that copies the victim's address onto its own interface is not
//! taken for it. (Its own test binary: discovery refuses an address two namespaces qualify
//! for, and sandboxes running side by side reuse pod addresses.)

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambit_e2e::sandbox::{Options, Sandbox};
use ambit_e2e::{metric_sum, wait_for, write_file};

const APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}
---
apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: legacy, labels: {app: server}}\nspec: {nodeName: node-1, serviceAccountName: server, containers: [{name: s, image: ambit/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: legacy}\nspec: {selector: {app: server}, ports: [{name: http, port: 8080}]}
---
apiVersion: v1\nkind: Namespace\nmetadata: {name: other}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: impostor, namespace: other, labels: {app: impostor}}\nspec: {nodeName: node-1, containers: [{name: c, image: ambit/sleep}]}
---
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: shop, labels: {app: client}}\nspec: {nodeName: node-2, serviceAccountName: client, containers: [{name: c, image: ambit/sleep}]}
";

const ENROLL: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy, labels: {istio.io/dataplane-mode: ambient}}\n";

const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-client, namespace: legacy}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]\n";

/// The client's request to the legacy service: its status (0 when the connection failed).
fn status(sb: &Sandbox) -> u16 {
    let out = sb.exec("shop/client", &["ambit-sample", "get", "--status", "http://web.legacy:8080/"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// Connections node-1's ztunnel delivered to the server from the client's identity (HBONE in).
fn delivered(sb: &Sandbox) -> f64 {
    let metrics = sb.get_in_node("node-1", 15020, "/metrics").unwrap_or_default();
    metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            "destination_workload=\"server\"",
        ],
    )
}

#[test]
fn running_pods_are_captured_without_a_restart() {
    let (opts, scratch) = Options::for_test_named("run");
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&write_file(&scratch, "app.yaml", APP)).unwrap();
    let key = "legacy/server";
    assert!(!sb.captured(key), "outside the mesh at first");
    let pid = sb.state.pods[key].pid.expect("the server runs");

    // Ambit arrives after the pod: node-1's agent starts knowing nothing of it (no CNI call
    // ever told it about the pod).
    sb.stop_daemon("ztunnel-node-1");
    let records = sb.node_dir("node-1").join("pods");
    let _ = std::fs::remove_dir_all(&records);
    sb.start_ztunnel("node-1").unwrap();
    sb.wait_ready("node-1", "127.0.0.1:15021", "ztunnel on node-1").unwrap();
    assert_eq!(status(&sb), 200, "plain traffic while outside the mesh");
    // A tenant on the node copies the server's address onto its own pod's interface: its
    // namespace also holds its own pod's address, so it is never taken for the server's.
    let server_ip = sb.state.pods[key].ip.to_string();
    let copied = sb.exec("other/impostor", &["ip", "addr", "add", &format!("{server_ip}/32"), "dev", "eth0"]).unwrap();
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));

    // Labelled into the mesh: found running and captured, the same process still serving.
    sb.apply(&write_file(&scratch, "enroll.yaml", ENROLL)).unwrap();
    wait_for("the running pod captured", Duration::from_secs(30), || sb.captured(key).then_some(()));
    assert!(sb.log("ztunnel-node-1").contains("running pod found"), "found by discovery, not by a CNI call");
    assert_eq!(sb.state.pods[key].pid, Some(pid));
    assert!(!sb.captured("other/impostor"), "the impostor's namespace is left alone");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "not restarted");
    let record = std::fs::read_to_string(records.join("legacy_server.json")).unwrap();
    assert!(record.contains("\"netns_inode\""), "{record}");

    // Reached over HBONE: node-1's ztunnel delivers it with the client's identity.
    let before = delivered(&sb);
    wait_for("a request over HBONE", Duration::from_secs(20), || (status(&sb) == 200).then_some(()));
    wait_for("delivered by node-1's ztunnel", Duration::from_secs(10), || (delivered(&sb) > before).then_some(()));

    // Under the mesh's policy: a DENY for the client's identity refuses it.
    sb.apply(&write_file(&scratch, "deny.yaml", DENY)).unwrap();
    wait_for("the DENY enforced", Duration::from_secs(20), || (status(&sb) != 200).then_some(()));
    sb.delete(&scratch.join("deny.yaml")).unwrap();
    wait_for("allowed again", Duration::from_secs(20), || (status(&sb) == 200).then_some(()));

    // A ztunnel restart: the recorded namespace (its inode checked) is taken again.
    sb.stop_daemon("ztunnel-node-1");
    sb.start_ztunnel("node-1").unwrap();
    sb.wait_ready("node-1", "127.0.0.1:15021", "ztunnel on node-1").unwrap();
    assert!(sb.captured(key), "still captured");
    let before = delivered(&sb);
    wait_for("served after the restart", Duration::from_secs(20), || (status(&sb) == 200).then_some(()));
    wait_for("over HBONE after the restart", Duration::from_secs(10), || (delivered(&sb) > before).then_some(()));
    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
