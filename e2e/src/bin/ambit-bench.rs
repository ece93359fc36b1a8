//! `ambit-bench`: throughput, latency and cost of the mesh against no mesh, on the sandbox.
//!
//! Three namespaces with the same pods — `bench-direct` outside the mesh, `bench-mesh` in it
//! (`l4`: ztunnel at both ends), `bench-l7` in it with a waypoint (`l7`: ztunnel → waypoint →
//! ztunnel, addressed by service VIP) — a client on node-1 and a server on node-1 (same-node)
//! and node-2 (cross-node). For each mode and placement: bulk TCP throughput (1 and 8 streams),
//! HTTP/1.1 latency with 1 KiB bodies at a fixed rate (from intended send times), the maximum
//! request rate over 16 connections, new connections per second; for `l4` the ztunnels' CPU
//! seconds per 1 000 requests at the fixed rate, their peak RSS, and RSS per idle connection
//! with N idle connections open through the mesh. Every figure is also given as a ratio to
//! `direct` from the same run; for `l7` also the waypoint's CPU per 1 000 requests and RSS.
//! Beside its own load generator (`ambit-sample`) it runs the well-known clients
//! (`ambit_e2e::bench_tools`: iperf3, sockperf, h2load) on the same pods, so each figure can be
//! checked with a tool anyone has. Then the ingress gateway: from the client outside the mesh,
//! the server on node-2 directly (`direct`) against the same server in the mesh through an
//! ingress gateway on node-1 (`ingress`: HTTP routed, TCP copied, HBONE to the server's
//! ztunnel) — latency at the fixed rate, maximum request rate, h2load, bulk TCP, and the
//! gateway's CPU per 1 000 requests. Writes `<out>/bench.json` and `<out>/bench.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_e2e::bench_tools;
use ambit_e2e::sandbox::{bin_dir, Options, Sandbox};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "ambit-bench", about = "Benchmarks the mesh against no mesh on the sandbox")]
struct Args {
    /// Where bench.json and bench.md go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Seconds per throughput, max-rate and connection-rate run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of the fixed-rate latency run.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Requests per second of the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Idle connections held open for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Skip the well-known clients (iperf3, sockperf, h2load); only ambit-sample's own.
    #[arg(long)]
    no_tools: bool,
    /// Sandbox directory.
    #[arg(long, default_value = "/run/ambit/bench")]
    dir: PathBuf,
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench-direct}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-l7, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bench-l7}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

/// An ingress gateway in front of `bench-mesh/server-remote`: HTTP on 8080, TCP on 9000 (the
/// ports the direct runs use), its pod on node-1.
const INGRESS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench-ingress}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: bench-ingress}
spec:
  gatewayClassName: ambit
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: bench-mesh}
spec:
  parentRefs: [{name: public, namespace: bench-ingress, sectionName: http}]
  rules: [{backendRefs: [{name: server-remote, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: sink, namespace: bench-mesh}
spec:
  parentRefs: [{name: public, namespace: bench-ingress, sectionName: tcp}]
  rules: [{backendRefs: [{name: server-remote, port: 9000}]}]
"#;

fn pods(ns: &str) -> String {
    let server = |name: &str, node: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: server\n  containers: [{{name: s, image: ambit/bench-server, ports: [{{containerPort: 8080}}]}}]\n"
        )
    };
    let service = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}, {{name: tcp-sink, port: 9000}}, {{name: tcp-idle, port: 9001}}, {{name: tcp-iperf, port: 5201}}, {{name: tcp-sockperf, port: 11111}}]\n"
        )
    };
    format!(
        "{}{}{}{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {ns}}}\nspec:\n  nodeName: node-1\n  serviceAccountName: client\n  containers: [{{name: c, image: ambit/sleep}}]\n",
        server("server-local", "node-1"),
        server("server-remote", "node-2"),
        service("server-local"),
        service("server-remote")
    )
}

/// The waypoint pod's pid.
fn waypoints(sb: &Sandbox) -> Vec<(String, u32)> {
    sb.state
        .pods
        .iter()
        .filter(|(k, _)| k.starts_with("bench-l7/waypoint-"))
        .filter_map(|(k, p)| Some((k.clone(), p.pid?)))
        .collect()
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn exec_json(sb: &Sandbox, pod: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = vec!["ambit-sample"];
    cmd.extend_from_slice(args);
    let out = sb.exec(pod, &cmd)?;
    anyhow::ensure!(out.status.success(), "{pod}: {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// utime + stime in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let f = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (f(11) + f(12)) / ticks
}

fn ztunnels(sb: &Sandbox) -> Vec<(String, u32)> {
    sb.state.daemons.iter().filter(|(n, _)| n.starts_with("ztunnel-")).map(|(n, p)| (n.clone(), *p)).collect()
}

fn run(args: Args) -> anyhow::Result<()> {
    // Room for the idle connections in every process the sandbox starts.
    let _ = Command::new("prlimit").args(["--nofile=262144:262144", "--pid", &std::process::id().to_string()]).output();
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let opts = Options {
        prefix: "ambitbench".into(),
        root: args.dir.clone(),
        nodes: 2,
        bin_dir: bin_dir(),
        verbose: true,
        controller_flags: Vec::new(),
        ztunnel_flags: Vec::new(),
    };
    if !args.no_tools {
        bench_tools::check_installed()?;
    }
    eprintln!("starting the sandbox");
    let mut sb = Sandbox::up(opts)?;
    let manifests = args.dir.join("bench-manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("ns.yaml"), MANIFESTS)?;
    std::fs::write(manifests.join("direct.yaml"), pods("bench-direct"))?;
    std::fs::write(manifests.join("mesh.yaml"), pods("bench-mesh"))?;
    std::fs::write(manifests.join("l7.yaml"), pods("bench-l7"))?;
    std::fs::write(manifests.join("ingress.yaml"), INGRESS)?;
    sb.apply(&manifests)?;

    let secs = args.seconds.to_string();
    let lat_secs = args.latency_seconds.to_string();
    let rate = args.rate.to_string();
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let cases = [
        ("direct", "bench-direct", "same-node", "server-local"),
        ("direct", "bench-direct", "cross-node", "server-remote"),
        ("l4", "bench-mesh", "same-node", "server-local"),
        ("l4", "bench-mesh", "cross-node", "server-remote"),
        ("l7", "bench-l7", "same-node", "server-local"),
        ("l7", "bench-l7", "cross-node", "server-remote"),
    ];
    // Pods by address, except through the waypoint: by service VIP (what binds to it).
    let target = |ns: &str, server: &str| {
        if ns == "bench-l7" {
            sb.state.services[&format!("{ns}/{server}")].vip
        } else {
            sb.state.pods[&format!("{ns}/{server}")].ip
        }
    };
    // Fixed-rate latency first, on fresh ztunnels: their CPU and memory at that rate are not
    // inflated by the bulk runs that follow.
    for (mode, ns, placement, server) in cases {
        let (client, http) = (format!("{ns}/client"), format!("{}:8080", target(ns, server)));
        eprintln!("{mode} {placement}: latency at {rate}/s");
        let cpu = |list: Vec<(String, u32)>| list.iter().map(|(_, p)| cpu_seconds(*p, ticks)).sum::<f64>();
        let (zt_before, wp_before) = (cpu(ztunnels(&sb)), cpu(waypoints(&sb)));
        let lat = exec_json(&sb, &client, &["latency", &http, "--rate", &rate, "--seconds", &lat_secs])?;
        let (zt_after, wp_after) = (cpu(ztunnels(&sb)), cpu(waypoints(&sb)));
        let requests = lat["requests"].as_f64().unwrap_or(0.0).max(1.0);
        let rss = |list: Vec<(String, u32)>| -> BTreeMap<String, u64> {
            list.iter().map(|(n, p)| (n.clone(), proc_field(*p, "status", "VmRSS:").unwrap_or(0))).collect()
        };
        let (mesh, l7) = (mode != "direct", mode == "l7");
        results.insert(
            format!("{mode}/{placement}"),
            json!({
                "latency": lat,
                "ztunnel_cpu_s_per_1000": if mesh { json!((zt_after - zt_before) / (requests / 1000.0)) } else { Value::Null },
                "ztunnel_rss_kib_after_latency": if mesh { json!(rss(ztunnels(&sb))) } else { Value::Null },
                "waypoint_cpu_s_per_1000": if l7 { json!((wp_after - wp_before) / (requests / 1000.0)) } else { Value::Null },
                "waypoint_rss_kib_after_latency": if l7 { json!(rss(waypoints(&sb)).values().sum::<u64>()) } else { Value::Null },
            }),
        );
    }
    for (mode, ns, placement, server) in cases {
        let ip = target(ns, server);
        let client = format!("{ns}/client");
        let (sink, http) = (format!("{ip}:9000"), format!("{ip}:8080"));
        eprintln!("{mode} {placement}: throughput, max rate, connection rate");
        let bulk1 = exec_json(&sb, &client, &["bulk", &sink, "--streams", "1", "--seconds", &secs])?;
        let bulk8 = exec_json(&sb, &client, &["bulk", &sink, "--streams", "8", "--seconds", &secs])?;
        let max = exec_json(&sb, &client, &["max-rate", &http, "--seconds", &secs])?;
        let conns = exec_json(&sb, &client, &["conn-rate", &http, "--seconds", &secs])?;
        if let Some(entry) = results.get_mut(&format!("{mode}/{placement}")).and_then(Value::as_object_mut) {
            entry.insert("bulk_1_gbps".into(), bulk1["gbps"].clone());
            entry.insert("bulk_8_gbps".into(), bulk8["gbps"].clone());
            entry.insert("max_rps_16".into(), max["rps"].clone());
            entry.insert("new_conns_per_s".into(), conns["per_second"].clone());
        }
    }
    if !args.no_tools {
        tools(&sb, &cases, &args, ticks, &mut results)?;
    }
    let ingress_results = ingress(&sb, &args, ticks)?;
    // Memory per idle connection, through the mesh (client node-1 → server node-2).
    eprintln!("l4: {} idle connections", args.idle);
    let idle = idle_memory(&sb, args.idle)?;
    let peak: BTreeMap<String, u64> =
        ztunnels(&sb).iter().map(|(n, p)| (n.clone(), proc_field(*p, "status", "VmHWM:").unwrap_or(0))).collect();
    let waypoint_peak: u64 = waypoints(&sb).iter().map(|(_, p)| proc_field(*p, "status", "VmHWM:").unwrap_or(0)).sum();
    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned())).unwrap_or_default(),
    });
    let report = json!({"machine": machine, "settings": {"seconds": args.seconds, "latency_seconds": args.latency_seconds, "rate": args.rate, "idle": args.idle}, "results": results, "ingress": ingress_results, "idle": idle, "ztunnel_peak_rss_kib": peak, "waypoint_peak_rss_kib": waypoint_peak});
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("bench.json"), serde_json::to_vec_pretty(&report)?)?;
    let md = markdown(&report);
    std::fs::write(args.out.join("bench.md"), &md)?;
    println!("{md}");
    sb.down();
    Ok(())
}

/// The well-known clients, for every mode and placement: sockperf under load at a fixed message
/// rate (the proxies' CPU per 1 000 messages) and ping-pong (latency), iperf3 with 1 and 8
/// streams, h2load over HTTP/1.1 and HTTP/2.
fn tools(
    sb: &Sandbox,
    cases: &[(&str, &str, &str, &str)],
    args: &Args,
    ticks: f64,
    results: &mut BTreeMap<String, Value>,
) -> anyhow::Result<()> {
    let servers: Vec<bench_tools::Servers> = cases
        .iter()
        .map(|(_, ns, _, server)| bench_tools::Servers::start(&sb.state.pods[&format!("{ns}/{server}")].netns))
        .collect::<anyhow::Result<_>>()?;
    let cpu = |list: Vec<(String, u32)>| list.iter().map(|(_, p)| cpu_seconds(*p, ticks)).sum::<f64>();
    for (mode, ns, placement, server) in cases {
        let ip = if *ns == "bench-l7" {
            sb.state.services[&format!("{ns}/{server}")].vip
        } else {
            sb.state.pods[&format!("{ns}/{server}")].ip
        }
        .to_string();
        let netns = &sb.state.pods[&format!("{ns}/client")].netns;
        eprintln!("{mode} {placement}: sockperf, iperf3, h2load");
        let (zt_before, wp_before) = (cpu(ztunnels(sb)), cpu(waypoints(sb)));
        let fixed = bench_tools::sockperf(netns, &ip, args.latency_seconds, Some(args.rate as u32))?;
        let (zt_after, wp_after) = (cpu(ztunnels(sb)), cpu(waypoints(sb)));
        let per_1000 = (fixed["sent"].as_f64().unwrap_or(0.0) / 1000.0).max(0.001);
        let pingpong = bench_tools::sockperf(netns, &ip, args.seconds, None)?;
        let iperf1 = bench_tools::iperf3(netns, &ip, 1, args.seconds)?;
        let iperf8 = bench_tools::iperf3(netns, &ip, 8, args.seconds)?;
        let url = format!("http://{ip}:8080/");
        let h1 = bench_tools::h2load(netns, &url, args.seconds, true)?;
        let h2 = bench_tools::h2load(netns, &url, args.seconds, false)?;
        let (mesh, l7) = (*mode != "direct", *mode == "l7");
        if let Some(entry) = results.get_mut(&format!("{mode}/{placement}")).and_then(Value::as_object_mut) {
            entry.insert(
                "sockperf_fixed".into(),
                json!({
                    "p50_us": fixed["p50_us"], "p99_us": fixed["p99_us"],
                    "ztunnel_cpu_s_per_1000": if mesh { json!((zt_after - zt_before) / per_1000) } else { Value::Null },
                    "waypoint_cpu_s_per_1000": if l7 { json!((wp_after - wp_before) / per_1000) } else { Value::Null },
                }),
            );
            entry.insert("sockperf_pingpong".into(), pingpong);
            entry.insert("iperf3_1_gbps".into(), json!(iperf1));
            entry.insert("iperf3_8_gbps".into(), json!(iperf8));
            entry.insert("h2load_h1_rps".into(), json!(h1));
            entry.insert("h2load_h2_rps".into(), json!(h2));
        }
    }
    drop(servers);
    Ok(())
}

/// The ingress gateway against the server reached directly, from the same client outside the
/// mesh (node-1) to the same kind of server on node-2.
fn ingress(sb: &Sandbox, args: &Args, ticks: f64) -> anyhow::Result<Value> {
    let gateway = sb
        .state
        .pods
        .iter()
        .find(|(k, _)| k.starts_with("bench-ingress/public-"))
        .map(|(_, p)| (p.ip, p.pid))
        .ok_or_else(|| anyhow::anyhow!("the ingress gateway was not deployed"))?;
    let direct = sb.state.pods["bench-direct/server-remote"].ip;
    let client = "bench-direct/client";
    let netns = &sb.state.pods[client].netns;
    let (secs, lat_secs, rate) = (args.seconds.to_string(), args.latency_seconds.to_string(), args.rate.to_string());
    let gateway_cpu = || gateway.1.map_or(0.0, |p| cpu_seconds(p, ticks));
    let mut out = serde_json::Map::new();
    for (mode, ip) in [("direct", direct), ("ingress", gateway.0)] {
        let http = format!("{ip}:8080");
        eprintln!("{mode}: latency at {rate}/s, max rate, bulk TCP, h2load (outside client → node-2 server)");
        let before = gateway_cpu();
        let lat = exec_json(sb, client, &["latency", &http, "--rate", &rate, "--seconds", &lat_secs])?;
        let cpu = gateway_cpu() - before;
        let requests = lat["requests"].as_f64().unwrap_or(0.0).max(1.0);
        let max = exec_json(sb, client, &["max-rate", &http, "--seconds", &secs])?;
        let bulk = exec_json(sb, client, &["bulk", &format!("{ip}:9000"), "--streams", "1", "--seconds", &secs])?;
        let mut entry = json!({
            "latency": lat,
            "max_rps_16": max["rps"],
            "bulk_1_gbps": bulk["gbps"],
            "gateway_cpu_s_per_1000": if mode == "ingress" { json!(cpu / (requests / 1000.0)) } else { Value::Null },
        });
        if !args.no_tools {
            let url = format!("http://{http}/");
            entry["h2load_h1_rps"] = json!(bench_tools::h2load(netns, &url, args.seconds, true)?);
            entry["h2load_h2_rps"] = json!(bench_tools::h2load(netns, &url, args.seconds, false)?);
        }
        out.insert(mode.into(), entry);
    }
    out.insert("gateway_rss_kib".into(), json!(gateway.1.and_then(|p| proc_field(p, "status", "VmRSS:")).unwrap_or(0)));
    Ok(Value::Object(out))
}

fn idle_memory(sb: &Sandbox, count: usize) -> anyhow::Result<Value> {
    let ip = sb.state.pods["bench-mesh/server-remote"].ip;
    let netns = sb.state.pods["bench-mesh/client"].netns.clone();
    let rss = |sb: &Sandbox| -> BTreeMap<String, u64> {
        ztunnels(sb).iter().map(|(n, p)| (n.clone(), proc_field(*p, "status", "VmRSS:").unwrap_or(0))).collect()
    };
    let before = rss(sb);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(bin_dir().join("ambit-sample"))
        .args(["idle", &format!("{ip}:9001"), "--count", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let started = Instant::now();
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
    }
    anyhow::ensure!(line.contains("open"), "idle client failed: {line}");
    std::thread::park_timeout(Duration::from_millis(500));
    let during = rss(sb);
    let _ = child.kill();
    let _ = child.wait();
    let per_conn: BTreeMap<String, f64> = during
        .iter()
        .map(|(n, kib)| (n.clone(), (*kib as f64 - *before.get(n).unwrap_or(&0) as f64) * 1024.0 / count as f64))
        .collect();
    Ok(
        json!({"connections": count, "seconds_to_open": started.elapsed().as_secs_f64(), "rss_kib_before": before, "rss_kib_open": during, "bytes_per_connection": per_conn}),
    )
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn markdown(report: &Value) -> String {
    let r = &report["results"];
    let m = &report["machine"];
    let mut out = format!(
        "Machine: {} cores, {}, kernel {}. Settings: {}\n\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        report["settings"]
    );
    out.push_str(
        "| Figure | direct same-node | l4 | ratio | l7 | ratio | direct cross-node | l4 | ratio | l7 | ratio |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    // (row, JSON pointer into each result)
    let rows = [
        ("Bulk TCP, 1 stream (Gbit/s)", "/bulk_1_gbps"),
        ("Bulk TCP, 8 streams (Gbit/s)", "/bulk_8_gbps"),
        ("HTTP 1 KiB at fixed rate, p50 (µs)", "/latency/p50_us"),
        ("… p90 (µs)", "/latency/p90_us"),
        ("… p99 (µs)", "/latency/p99_us"),
        ("… max (µs)", "/latency/max_us"),
        ("Max requests/s, 16 connections", "/max_rps_16"),
        ("New connections/s", "/new_conns_per_s"),
        ("ztunnels' CPU s per 1 000 requests", "/ztunnel_cpu_s_per_1000"),
        ("waypoint CPU s per 1 000 requests", "/waypoint_cpu_s_per_1000"),
        ("waypoint RSS after the fixed-rate run (KiB)", "/waypoint_rss_kib_after_latency"),
        ("iperf3, 1 stream (Gbit/s)", "/iperf3_1_gbps"),
        ("iperf3, 8 streams (Gbit/s)", "/iperf3_8_gbps"),
        ("sockperf TCP 1 KiB ping-pong, p50 (µs)", "/sockperf_pingpong/p50_us"),
        ("… p99 (µs)", "/sockperf_pingpong/p99_us"),
        (
            "sockperf under-load at the fixed rate: ztunnels' CPU s per 1 000 messages",
            "/sockperf_fixed/ztunnel_cpu_s_per_1000",
        ),
        ("… waypoint CPU s per 1 000", "/sockperf_fixed/waypoint_cpu_s_per_1000"),
        ("h2load HTTP/1.1, 16 connections (req/s)", "/h2load_h1_rps"),
        ("h2load HTTP/2, 16 connections × 10 streams (req/s)", "/h2load_h2_rps"),
    ];
    for (name, pointer) in rows {
        let cell = |key: &str| r[key].pointer(pointer).and_then(num);
        let fmt = |v: Option<f64>| match v {
            Some(x) if x >= 100.0 => format!("{x:.0}"),
            Some(x) => format!("{x:.3}"),
            None => "—".into(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "—".into(),
        };
        let mut line = format!("| {name} |");
        for placement in ["same-node", "cross-node"] {
            let direct = cell(&format!("direct/{placement}"));
            let (l4, l7) = (cell(&format!("l4/{placement}")), cell(&format!("l7/{placement}")));
            line.push_str(&format!(
                " {} | {} | {} | {} | {} |",
                fmt(direct),
                fmt(l4),
                ratio(direct, l4),
                fmt(l7),
                ratio(direct, l7)
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let i = &report["ingress"];
    out.push_str("\nIngress gateway (outside client on node-1 → server on node-2; `ingress` through the gateway on node-1, HBONE to the server's ztunnel):\n\n| Figure | direct | ingress | ratio |\n|---|---|---|---|\n");
    for (name, pointer) in [
        ("HTTP 1 KiB at fixed rate, p50 (µs)", "/latency/p50_us"),
        ("… p99 (µs)", "/latency/p99_us"),
        ("Max requests/s, 16 connections", "/max_rps_16"),
        ("h2load HTTP/1.1, 16 connections (req/s)", "/h2load_h1_rps"),
        ("h2load HTTP/2, 16 connections × 10 streams (req/s)", "/h2load_h2_rps"),
        ("Bulk TCP, 1 stream (Gbit/s)", "/bulk_1_gbps"),
        ("gateway CPU s per 1 000 requests", "/gateway_cpu_s_per_1000"),
    ] {
        let (d, g) = (i["direct"].pointer(pointer).and_then(num), i["ingress"].pointer(pointer).and_then(num));
        let fmt =
            |v: Option<f64>| v.map_or("—".into(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.3}") });
        let ratio = match (d, g) {
            (Some(d), Some(g)) if d > 0.0 => format!("{:.2}", g / d),
            _ => "—".into(),
        };
        out.push_str(&format!("| {name} | {} | {} | {ratio} |\n", fmt(d), fmt(g)));
    }
    out.push_str(&format!("\ngateway RSS after the runs (KiB): {}\n", i["gateway_rss_kib"]));
    out.push_str(&format!(
        "\nztunnel peak RSS (KiB): {}; waypoint peak RSS (KiB): {}; RSS per idle connection with {} open (bytes): {}\n",
        report["ztunnel_peak_rss_kib"],
        report["waypoint_peak_rss_kib"],
        report["idle"]["connections"],
        report["idle"]["bytes_per_connection"]
    ));
    out
}
