//! Controller at scale: 10 000 pods, 1 000 services and 1 000 policies pushed to 100 xDS
//! subscribers, then one pod change. The controller runs as its own process (the release
//! binary) so its memory is measured alone; the subscribers are the shared xDS client.
//!
//! `cargo bench -p ambit-controller --bench scale`; figures go to docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_shared::certs::parse_pem_chain;
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_shared::tls::control_plane_client_config;
use ambit_shared::xds::{self, Rejection, Update};
use ambit_shared::{Identity, MeshRoots};

const NAMESPACES: usize = 10;
const PODS_PER_NS: usize = 1000;
const SERVICES_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 100;
const SUBSCRIBERS: usize = 100;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn pod(ns: usize, i: usize, ip_last: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: svc-{}}}}}\nspec: {{nodeName: node-{}, serviceAccountName: sa-{}}}\nstatus: {{phase: Running, podIP: 10.{ns}.{}.{}, conditions: [{{type: Ready, status: 'True'}}]}}\n---\n",
        i % SERVICES_PER_NS,
        i % 20,
        i % 50,
        i / 250,
        ip_last
    )
}

fn generate(dir: &Path) {
    for ns in 0..NAMESPACES {
        let mut text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n");
        for i in 1..PODS_PER_NS {
            text.push_str(&pod(ns, i, i % 250));
        }
        for s in 0..SERVICES_PER_NS {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec: {{clusterIP: 10.96.{ns}.{s}, selector: {{app: svc-{s}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n"
            ));
        }
        for p in 0..POLICIES_PER_NS {
            text.push_str(&format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: pol-{p}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: svc-{p}}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns-{ns}/sa/sa-{}]}}}}], to: [{{operation: {{ports: ['8080']}}}}]}}]\n---\n",
                (p + 1) % 50
            ));
        }
        std::fs::write(dir.join(format!("ns-{ns}.yaml")), text).unwrap();
        std::fs::write(dir.join(format!("ns-{ns}-pod-0.yaml")), pod(ns, 0, 0)).unwrap();
    }
}

#[derive(Clone, Default)]
struct Counter {
    held: Arc<Mutex<HashMap<String, usize>>>,
    updates: Arc<AtomicUsize>,
}

impl xds::Handler for Counter {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        let mut held = self.held.lock().unwrap();
        let n = held.entry(update.type_url.to_owned()).or_default();
        *n += update.added.len();
        *n -= update.removed.len().min(*n);
        self.updates.fetch_add(1, Ordering::Relaxed);
        Vec::new()
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    // `cargo test --benches` runs this with --test-ish args; only run the measurement under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench -p ambit-controller --bench scale`");
        return;
    }
    let (dir, manifests, staging) = prepare();
    let grpc = "127.0.0.1:35012";
    let admin = "127.0.0.1:35014";
    let mut child = spawn_controller(&dir, &manifests, grpc, admin);
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(measure(&dir, &manifests, &staging, pid, grpc));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory: the token file, an empty manifest directory and the generated mesh
/// staged beside it.
fn prepare() -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ambit-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        dir.join("tokens.yaml"),
        format!("tokens:\n- token: {TOKEN}\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: node-1\n"),
    )
    .unwrap();
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    generate(&staging);
    (dir, manifests, staging)
}

/// The controller in directory mode on fixed local ports.
fn spawn_controller(dir: &Path, manifests: &Path, grpc: &str, admin: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["--manifests", manifests.to_str().unwrap(), "--token-file", dir.join("tokens.yaml").to_str().unwrap()])
        .args(["--ca-dir", dir.join("ca").to_str().unwrap(), "--grpc-addr", grpc, "--admin-addr", admin])
        .args([
            "--manifest-poll-ms",
            "20",
            "--push-debounce-ms",
            "20",
            "--push-max-delay-ms",
            "500",
            "--log-level",
            "warn",
        ])
        .spawn()
        .unwrap()
}

/// The three measurements (the whole mesh appears, a connect storm, one pod change), printed
/// as table rows.
async fn measure(dir: &Path, manifests: &Path, staging: &Path, pid: u32, grpc: &str) {
    let root_path = dir.join("ca/root-cert.pem");
    while !root_path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let root = std::fs::read_to_string(&root_path).unwrap();
    let roots = MeshRoots::new(&parse_pem_chain(&[root]).unwrap()).unwrap();
    let me: Identity = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller".parse().unwrap();
    let tls = Arc::new(control_plane_client_config(&roots, vec![me]).unwrap());
    let (idle_rss, _) = rss_kib(pid);
    let connect = |i: usize| {
        let node = xds::istio_node("ztunnel", "10.0.0.1", &format!("ztunnel-{i}"), "ambit-system", "node-1");
        let mut config = xds::Config::new(grpc.parse().unwrap(), tls.clone(), node, vec![ADDRESS, AUTHORIZATION]);
        config.token = Some(TOKEN.into());
        let (client, _) = xds::Client::new(config);
        let c = Counter::default();
        tokio::spawn(client.run(c.clone()));
        c
    };
    let want_addresses = NAMESPACES * (PODS_PER_NS + SERVICES_PER_NS);
    let want_policies = NAMESPACES * POLICIES_PER_NS;
    let synced = |c: &Counter| {
        let h = c.held.lock().unwrap();
        h.get(ADDRESS).copied().unwrap_or(0) == want_addresses
            && h.get(AUTHORIZATION).copied().unwrap_or(0) == want_policies
    };

    // Phase 1: one subscriber connected, the whole mesh appears at once.
    let mut counters = vec![connect(0)];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    for entry in std::fs::read_dir(staging).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), manifests.join(entry.file_name())).unwrap();
    }
    while !counters.iter().all(synced) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let initial = start.elapsed();
    let cpu_initial = cpu_seconds(pid) - cpu_before;
    let (rss_one, _) = rss_kib(pid);

    // Phase 2: 99 more subscribers connect at once (a node-pool restart).
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    counters.extend((1..SUBSCRIBERS).map(connect));
    while !counters.iter().all(synced) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let storm = start.elapsed();
    let cpu_storm = cpu_seconds(pid) - cpu_before;
    let (rss, peak) = rss_kib(pid);

    let before: Vec<usize> = counters.iter().map(|c| c.updates.load(Ordering::Relaxed)).collect();
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    std::fs::write(manifests.join("ns-3-pod-0.yaml"), pod(3, 0, 251)).unwrap();
    while counters.iter().zip(&before).any(|(c, b)| c.updates.load(Ordering::Relaxed) == *b) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let one = start.elapsed();
    let cpu_one = cpu_seconds(pid) - cpu_before;

    println!(
        "| scale | {NAMESPACES} namespaces, {} pods, {} services, {} policies, {SUBSCRIBERS} subscribers |",
        NAMESPACES * PODS_PER_NS,
        NAMESPACES * SERVICES_PER_NS,
        want_policies
    );
    println!(
        "| whole mesh appears → 1 subscriber holds everything | {:.2} s wall, {cpu_initial:.2} CPU-s |",
        initial.as_secs_f64()
    );
    println!(
        "| 99 more subscribers connect at once → all hold everything | {:.2} s wall, {cpu_storm:.2} CPU-s |",
        storm.as_secs_f64()
    );
    println!("| one pod change → all subscribers updated | {:.1} ms wall (incl. ≤20 ms poll + 20 ms debounce), {:.3} CPU-s |", one.as_secs_f64() * 1000.0, cpu_one);
    println!(
        "| controller RSS idle / loaded with 1 subscriber / with 100 / peak | {} / {} / {} / {} MiB |",
        idle_rss / 1024,
        rss_one / 1024,
        rss / 1024,
        peak / 1024
    );
}
