//! ztunnel as a real process against a real control plane (started in-process): readiness
//! once the control plane's state and the node agent's snapshot are in, metrics,
//! configuration and `/config_dump` on the admin endpoints. (The refusal of a bad
//! configuration, which needs no control plane, is in ztunnel/tests/daemon.rs.)

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use ambit_shared::telemetry::Readiness;
use ambit_shared::testing::{free_addr, http_get, Daemon};
use clap::Parser;

const TOKEN: &str = "daemon-test-token-0123456789abcdef";

/// The workspace's ztunnel binary, beside this test's (`cargo build --workspace` builds it).
fn ztunnel_bin() -> String {
    let path = ambit_e2e::sandbox::bin_dir().join("ztunnel");
    assert!(path.exists(), "{} not found; build the workspace first (cargo build --workspace)", path.display());
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_readiness_metrics_and_config() {
    let dir = std::env::temp_dir().join(format!("ambit-ztunnel-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("tokens.yaml"),
        format!("tokens:\n- token: {TOKEN}\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: node-7\n"),
    )
    .unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let config = ambit_controller::config::Config::try_parse_from([
        "controller",
        "--manifests",
        &p("manifests"),
        "--token-file",
        &p("tokens.yaml"),
        "--ca-dir",
        &p("ca"),
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let running = ambit_controller::run::start(&config, Readiness::default()).await.unwrap();
    std::fs::write(dir.join("root.pem"), &running.root_pem).unwrap();
    let grpc = running.grpc_addr.to_string();

    let (ready, metrics, admin) = (free_addr(), free_addr(), free_addr());
    let (r, m, a) = (ready.to_string(), metrics.to_string(), admin.to_string());
    let mut args = ambit_e2e::daemons::ztunnel_args("node-7", &grpc, &dir.join("root.pem"), &dir, 30);
    for (flag, value) in [("--readiness-addr", r), ("--metrics-addr", m), ("--admin-addr", a)] {
        args.extend([flag.to_owned(), value]);
    }
    let body = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::spawn(&ztunnel_bin(), &args);
        d.wait_ok(ready, "/healthz/ready");
        let body = http_get(metrics, "/metrics").unwrap();
        let config = http_get(admin, "/debug/config").unwrap();
        let dump = http_get(admin, "/config_dump").unwrap();
        let public = http_get(metrics, "/config_dump").unwrap();
        assert!(public.starts_with("HTTP/1.1 404"), "config_dump only on the admin port: {public}");
        (body, config, dump)
    })
    .await
    .unwrap();
    assert!(body.0.contains("istio_build{component=\"ztunnel\""), "{}", body.0);
    assert!(body.1.contains("\"node_name\": \"node-7\""), "{}", body.1);
    let (head, json) = body.2.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let dump: serde_json::Value = serde_json::from_str(json).unwrap();
    for key in ["workloads", "services", "policies", "certificates", "pods"] {
        assert!(dump[key].is_array(), "{key} in {dump}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
