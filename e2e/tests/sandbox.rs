//! End to end on the sandbox (root): the example application of `examples/shop` on two nodes,
//! with the real controller and ztunnels. One scenario, in order, on one sandbox:
//! cross-node and same-node traffic captured and tunnelled; clients outside the mesh; L4 DENY
//! and STRICT; scaling a Deployment and the spread over its replicas; a namespace leaving and
//! rejoining the mesh by label without pod restarts; a controller restart under traffic; a
//! ztunnel restart (the gap is measured and printed); and `down` leaving nothing behind.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambit_e2e::sandbox::{leftovers, Options, Sandbox};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One GET from inside `pod`; the echo's JSON answer, or why not.
fn get(sb: &Sandbox, pod: &str, url: &str) -> Result<Value, String> {
    let out = sb.exec(pod, &["ambit-sample", "get", "--timeout-ms", "3000", url]).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn load(sb: &Sandbox, pod: &str, url: &str, n: usize) -> serde_json::Map<String, Value> {
    let out = sb.exec(pod, &["ambit-sample", "load", url, "--requests", &n.to_string()]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["by_pod"].as_object().cloned().unwrap()
}

fn pod_ip(sb: &Sandbox, key: &str) -> String {
    sb.state.pods[key].ip.to_string()
}

fn metrics(sb: &Sandbox, node: &str) -> String {
    sb.get_in_node(node, 15020, "/metrics").unwrap_or_default()
}

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    ambit_e2e::wait_for(what, Duration::from_secs(30), f)
}

#[test]
fn the_example_mesh_end_to_end() {
    ambit_e2e::require_root();
    ambit_e2e::netns::clean_leftovers();
    let mut opts = Options::for_tests();
    opts.prefix = format!("{}-sb", opts.prefix);
    let prefix = opts.prefix.clone();
    let scratch = opts.root.with_extension("files");
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&examples().join("shop")).unwrap();

    // Cross-node and same-node: frontend-0 is on node-1; catalog-0 on node-2, catalog-1 on node-1.
    let (front, cat0, cat1) = ("shop/frontend-0", "shop/catalog-0", "shop/catalog-1");
    assert_ne!(sb.state.pods[cat0].node, sb.state.pods[cat1].node, "one catalog replica per node");
    for key in [front, cat0, cat1] {
        assert!(sb.captured(key), "{key} captured");
    }
    assert!(!sb.captured("outside/visitor-0"), "outside the mesh: left alone");
    let front_ip = pod_ip(&sb, front);
    for target in [cat0, cat1] {
        let answer = get(&sb, "frontend-0", &format!("http://{}:8080/", pod_ip(&sb, target))).unwrap();
        assert_eq!(answer["pod"], target.trim_start_matches("shop/"));
        assert!(answer["peer"].as_str().unwrap().starts_with(&format!("{front_ip}:")), "{answer}");
    }
    let m1 = metrics(&sb, "node-1");
    assert!(
        m1.lines().any(|l| l.starts_with("istio_tcp_connections_opened_total")
            && l.contains("reporter=\"source\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/shop/sa/catalog\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{m1}"
    );
    // The front end through its VIP, calling both back ends by name.
    let page = get(&sb, "visitor-0", "http://frontend.shop/").unwrap();
    assert_eq!(page["backends"].as_array().unwrap().len(), 2, "{page}");
    assert!(page["backends"].as_array().unwrap().iter().all(|b| b["status"] == 200), "{page}");
    // A client outside the mesh, by VIP (DNAT on its node) and the meshed server sees it.
    let visitor_ip = pod_ip(&sb, "outside/visitor-0");
    let answer = get(&sb, "visitor-0", "http://catalog.shop:8080/").unwrap();
    assert!(answer["peer"].as_str().unwrap().starts_with(&format!("{visitor_ip}:")), "{answer}");

    // L4 policies: plaintext refused at catalog, frontend refused at reviews.
    sb.apply(&examples().join("policies/deny-visitors.yaml")).unwrap();
    wait_for("the DENY policies", || get(&sb, "visitor-0", "http://catalog.shop:8080/").is_err().then_some(()));
    wait_for("reviews refusing frontend", || get(&sb, "frontend-0", "http://reviews:8080/").is_err().then_some(()));
    assert!(get(&sb, "frontend-0", "http://catalog:8080/").is_ok(), "mesh identity still allowed at catalog");
    let m = format!("{}{}", metrics(&sb, "node-1"), metrics(&sb, "node-2"));
    assert!(m.lines().any(|l| l.contains("response_flags=\"DENY\"")), "{m}");
    sb.delete(&examples().join("policies/deny-visitors.yaml")).unwrap();
    wait_for("policies gone", || get(&sb, "visitor-0", "http://catalog.shop:8080/").ok());
    // ALLOW: only the front end's identity may reach catalog; everyone else is refused.
    let allow = ambit_e2e::write_file(
        &scratch,
        "allow.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: catalog-frontend-only, namespace: shop}\nspec:\n  selector: {matchLabels: {app: catalog}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]\n",
    );
    sb.apply(&allow).unwrap();
    wait_for("the ALLOW policy", || get(&sb, "visitor-0", "http://catalog.shop:8080/").is_err().then_some(()));
    assert!(get(&sb, "frontend-0", "http://catalog:8080/").is_ok(), "the allowed identity passes");
    assert!(get(&sb, "visitor-0", "http://frontend.shop/").is_ok(), "services without the policy are open");
    sb.delete(&allow).unwrap();
    wait_for("ALLOW gone", || get(&sb, "visitor-0", "http://catalog.shop:8080/").ok());
    // STRICT for the namespace: the plaintext client is refused, the mesh is not.
    let strict = ambit_e2e::write_file(
        &scratch,
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    sb.apply(&strict).unwrap();
    wait_for("STRICT", || get(&sb, "visitor-0", "http://catalog.shop:8080/").is_err().then_some(()));
    assert!(get(&sb, "frontend-0", "http://catalog:8080/").is_ok());
    sb.delete(&strict).unwrap();
    wait_for("STRICT gone", || get(&sb, "visitor-0", "http://catalog.shop:8080/").ok());

    // Scaling: three catalog replicas share the VIP's traffic, then one takes it all.
    let scale = |n: usize| {
        let text = std::fs::read_to_string(examples().join("shop/20-catalog.yaml")).unwrap();
        ambit_e2e::write_file(&scratch, "catalog.yaml", &text.replace("replicas: 2", &format!("replicas: {n}")))
    };
    sb.apply(&scale(3)).unwrap();
    let spread = load(&sb, "frontend-0", "http://catalog:8080/", 90);
    assert_eq!(spread.len(), 3, "three replicas answer: {spread:?}");
    assert!(spread.values().all(|c| c.as_u64().unwrap() >= 10), "spread evenly enough: {spread:?}");
    sb.apply(&scale(1)).unwrap();
    let spread = load(&sb, "frontend-0", "http://catalog:8080/", 20);
    assert_eq!(spread.keys().collect::<Vec<_>>(), vec!["catalog-0"], "{spread:?}");

    // The namespace leaves the mesh by label, and rejoins, without pod restarts.
    let pid_before = sb.state.pods[cat0].pid;
    let ns_plain =
        ambit_e2e::write_file(&scratch, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    sb.apply(&ns_plain).unwrap();
    wait_for("shop to leave the mesh", || (!sb.captured(cat0) && !sb.captured(front)).then_some(()));
    let answer = get(&sb, "frontend-0", "http://catalog:8080/").unwrap();
    assert!(answer["peer"].as_str().unwrap().starts_with(&format!("{front_ip}:")));
    sb.apply(&examples().join("shop/00-namespaces.yaml")).unwrap();
    wait_for("shop to rejoin", || (sb.captured(cat0) && sb.captured(front)).then_some(()));
    assert_eq!(sb.state.pods[cat0].pid, pid_before, "no restart");
    wait_for("mesh traffic again", || get(&sb, "frontend-0", "http://catalog:8080/").ok());

    // The controller restarts under traffic: a connection open across the restart keeps
    // working, and new connections work throughout.
    let cat0_ip = pod_ip(&sb, cat0);
    let long = sb
        .pod_netns(front)
        .unwrap()
        .run_in(|| TcpStream::connect_timeout(&format!("{cat0_ip}:8080").parse().unwrap(), Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    sb.restart_controller().unwrap();
    assert!(get(&sb, "frontend-0", "http://catalog:8080/").is_ok(), "new connections during/after the restart");
    let mut long_w = long.try_clone().unwrap();
    long_w.write_all(b"GET /still-here HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut status = String::new();
    BufReader::new(long).read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "the open connection survived: {status:?}");
    drop(long_w);

    // A ztunnel restarts: new connections fail while it is gone and work once its successor
    // has the pods again. The gap is measured from the stop to the first success.
    let started = Instant::now();
    sb.stop_daemon("ztunnel-node-2");
    let stopped = started.elapsed();
    sb.start_ztunnel("node-2").unwrap();
    let mut attempts = 0;
    let gap = loop {
        attempts += 1;
        let t = Instant::now();
        let r = get(&sb, "frontend-0", &format!("http://{cat0_ip}:8080/"));
        eprintln!("  attempt {attempts} at {:?} ({:?}): {:?}", started.elapsed(), t.elapsed(), r.as_ref().err());
        if r.is_ok() {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no traffic 30 s after the ztunnel restart");
    };
    println!("ztunnel restart: old one stopped after {stopped:?}; new connections work again {gap:?} after the stop ({attempts} attempts)");
    eprintln!("ztunnel restart gap: {} ms", gap.as_millis());
    assert!(sb.captured(cat0), "the successor keeps the pod captured");

    // `down` leaves nothing.
    sb.down();
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
    let procs = std::process::Command::new("pgrep").args(["-f", &prefix]).output().unwrap();
    assert!(procs.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&procs.stdout));
    let _ = std::fs::remove_dir_all(&scratch);
}
