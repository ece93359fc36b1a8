//! The L4 mesh end to end in real network namespaces (root): two nodes linked by a veth pair,
//! pods plugged into them, the controller (in this process, serving from node 1's namespace
//! as a host-network control plane would), one real ztunnel process per node, and the CNI
//! plugin run exactly as a container runtime runs it.
//!
//! One scenario, in order, because each step builds on the mesh the previous one left:
//! capture and tunnel (the server sees the client's address; the node link carries TLS, not
//! the payload), a service VIP, a non-mesh client through 15006, a DENY policy counted with
//! `response_flags="DENY"`, STRICT refusing the non-mesh client, a pod leaving the mesh by
//! label without a restart, and CNI DEL taking the rules out.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_e2e::netns::{attach_pod, link, Netns as TestNetns};
use ambit_e2e::process::Process;
use ambit_shared::telemetry::Readiness;
use ambit_ztunnel::inpod::netns::Netns;
use clap::Parser;

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");
const TOKEN1: &str = "node-one-token-0123456789abcdef01";
const TOKEN2: &str = "node-two-token-0123456789abcdef02";
const NODE1_IP: &str = "10.210.0.11";
const NODE2_IP: &str = "10.210.0.12";
const CLIENT_IP: &str = "10.211.1.2";
const OUTSIDER_IP: &str = "10.211.1.3";
const SERVER_IP: &str = "10.211.2.2";
const SERVER_VIP: &str = "10.96.0.10";
const MARKER: &str = "PLAINTEXT-MARKER-a7c3e9";

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn write_manifest(dir: &Path, name: &str, body: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn pod_yaml(name: &str, ns: &str, sa: &str, node: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: {node}, serviceAccountName: {sa}}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )
}

/// An HTTP GET from inside a namespace (admin endpoints listen on the node's loopback).
fn get_in(ns: &Netns, addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run_in(|| ambit_shared::testing::http_get(addr, path).ok()).unwrap()
}

/// Connects from inside a pod (the socket lives in the pod's namespace).
fn connect_from(pod: &Netns, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().unwrap();
    let s = pod.run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(5))).unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// One exchange with the echo server: its greeting (the peer it saw), then `line` echoed.
fn exchange(pod: &Netns, to: &str, line: &str) -> Result<String, String> {
    let mut s = connect_from(pod, to).map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut greeting = String::new();
    let n = reader.read_line(&mut greeting).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed without a greeting".into());
    }
    let mut echoed = String::new();
    reader.read_line(&mut echoed).map_err(|e| format!("read: {e}"))?;
    if echoed.trim_end() != line {
        return Err(format!("echo mismatch: {echoed:?}"));
    }
    Ok(greeting.trim_end().trim_start_matches("peer=").to_owned())
}

/// The peer IP the server saw.
fn seen_ip(greeting: &str) -> &str {
    greeting.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(greeting)
}

/// Echo server inside `pod` on `port`: greets with `peer=<addr>`, then echoes lines.
fn echo_server(pod: &Netns, port: u16) {
    let listener = pod.run_in(|| TcpListener::bind(("0.0.0.0", port))).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = conn.write_all(format!("peer={peer}\n").as_bytes());
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

struct Cni<'a> {
    node: &'a TestNetns,
    socket: PathBuf,
}

impl Cni<'_> {
    /// Runs the plugin the way a runtime does: in the node's namespace, CNI_* in the
    /// environment, the network configuration (with the previous plugin's result) on stdin.
    fn call(&self, command: &str, pod: &TestNetns, name: &str, ns: &str, ip: &str) -> (i32, String) {
        let config = format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni","agent_socket":"{}","prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{ip}/24","interface":0}}]}}}}"#,
            self.socket.display(),
            pod.path()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.node.name(), BIN])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{name}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=sandbox-{name}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(config.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn has_rules(pod: &TestNetns) -> bool {
    pod.output("iptables-save", &[]).contains("ISTIO_OUTPUT")
}

/// Counts the series of `name` whose labels contain every `labels` entry.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until `node`'s metrics have a series of `name` with `labels` at least `min`.
fn wait_metric(node: &Netns, name: &str, labels: &[&str], min: f64) -> String {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        last = get_in(node, "127.0.0.1:15020", "/metrics").unwrap_or_default();
        if metric(&last, name, labels) >= min {
            return last;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    panic!("no {name} {labels:?} >= {min} in:\n{last}");
}

struct Tcpdump {
    child: std::process::Child,
    file: PathBuf,
    rest: std::thread::JoinHandle<String>,
}

impl Tcpdump {
    fn start(node: &TestNetns, iface: &str, file: PathBuf) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", node.name(), "tcpdump", "--immediate-mode", "-i", iface, "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is needed (the README's test command installs it)");
        // tcpdump prints "listening on" once capturing.
        let mut child = child;
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "tcpdump did not start: {line}");
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Tcpdump { child, file, rest }
    }

    fn stop(mut self) -> Vec<u8> {
        std::thread::park_timeout(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
        let _ = self.child.wait();
        eprintln!("tcpdump: {}", self.rest.join().unwrap_or_default());
        std::fs::read(&self.file).unwrap()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn l4_mesh_across_two_nodes() {
    ambit_e2e::require_root();
    ambit_e2e::netns::clean_leftovers();
    let dir = std::env::temp_dir().join(format!("ambit-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();

    // Two nodes on one link; three pods.
    let n1 = TestNetns::create("n1");
    let n2 = TestNetns::create("n2");
    link(&n1, &format!("{NODE1_IP}/24"), &n2, &format!("{NODE2_IP}/24"), "eth0");
    n1.exec("ip", &["route", "add", "10.211.2.0/24", "via", NODE2_IP]);
    n2.exec("ip", &["route", "add", "10.211.1.0/24", "via", NODE1_IP]);
    let client = TestNetns::create("client");
    let outsider = TestNetns::create("outsider");
    let server = TestNetns::create("server");
    attach_pod(&n1, &client, CLIENT_IP, "10.211.1.1");
    attach_pod(&n1, &outsider, OUTSIDER_IP, "10.211.1.1");
    attach_pod(&n2, &server, SERVER_IP, "10.211.2.1");
    let open = |t: &TestNetns| Netns::open(Path::new(&t.path())).unwrap();
    let (n1_ns, n2_ns, client_ns, outsider_ns, server_ns) =
        (open(&n1), open(&n2), open(&client), open(&outsider), open(&server));
    echo_server(&server_ns, 8080);

    // The cluster as manifests: a meshed namespace and one outside.
    write_manifest(
        &manifests,
        "namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n",
    );
    write_manifest(&manifests, "client.yaml", &pod_yaml("client", "shop", "client", "n1", CLIENT_IP, "app: client"));
    write_manifest(
        &manifests,
        "outsider.yaml",
        &pod_yaml("outsider", "outside", "default", "n1", OUTSIDER_IP, "app: outsider"),
    );
    write_manifest(&manifests, "server.yaml", &pod_yaml("server", "shop", "server", "n2", SERVER_IP, "app: server"));
    write_manifest(
        &manifests,
        "service.yaml",
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: shop}}\nspec: {{clusterIP: {SERVER_VIP}, selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"),
    );
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n{}{}",
            ambit_e2e::daemons::node_token_entry(TOKEN1, "n1"),
            ambit_e2e::daemons::node_token_entry(TOKEN2, "n2")
        ),
    )
    .unwrap();

    // The controller, serving from node 1's namespace: its runtime's threads are created
    // by a thread that joined that namespace, so every socket it opens lives there.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut ctl_args = vec!["controller".to_owned()];
    ctl_args.extend(ambit_e2e::daemons::controller_args(&dir, &format!("{NODE1_IP}:15012"), "127.0.0.1:15014"));
    let n1_path = n1.path();
    std::thread::spawn(move || {
        let ns = Netns::open(Path::new(&n1_path)).unwrap();
        ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let config = ambit_controller::config::Config::try_parse_from(ctl_args).unwrap();
                config.validate().unwrap();
                let running = ambit_controller::run::start(&config, Readiness::default()).await.unwrap();
                ready_tx.send(running.root_pem.clone()).unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    });
    let root_pem = ready_rx.recv_timeout(Duration::from_secs(30)).expect("controller started");
    std::fs::write(dir.join("root-cert.pem"), root_pem).unwrap();

    // One ztunnel per node.
    // `generation` > 0: a successor on the same node (its admin ports shifted by 100 each).
    let start_ztunnel = |node: &TestNetns, name: &str, token: &str, generation: u16| {
        let nd = dir.join(name);
        let port =
            |base: u16| format!("{}:{}", if base == 15000 { "127.0.0.1" } else { "0.0.0.0" }, base + 100 * generation);
        std::fs::create_dir_all(&nd).unwrap();
        std::fs::write(nd.join("token"), token).unwrap();
        let mut args =
            ambit_e2e::daemons::ztunnel_args(name, &format!("{NODE1_IP}:15012"), &dir.join("root-cert.pem"), &nd, 2);
        for (flag, base) in [("--readiness-addr", 15021), ("--metrics-addr", 15020), ("--admin-addr", 15000)] {
            args.extend([flag.to_owned(), port(base)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::spawn(
            &format!("ztunnel-{name}"),
            Some(node.name()),
            BIN,
            &args,
            &[("RUST_LOG", "info,access=info")],
            &nd.join(format!("ztunnel-{generation}.log")),
        )
    };
    let mut z1 = start_ztunnel(&n1, "n1", TOKEN1, 0);
    let mut z2 = start_ztunnel(&n2, "n2", TOKEN2, 0);
    for (z, ns) in [(&mut z1, &n1_ns), (&mut z2, &n2_ns)] {
        wait_for(&format!("{} ready", z.name), Duration::from_secs(30), || {
            assert!(z.exited().is_none(), "{} exited:\n{}", z.name, z.output());
            get_in(ns, "127.0.0.1:15021", "/healthz/ready").filter(|r| r.starts_with("HTTP/1.1 200"))
        });
    }
    let cni1 = Cni { node: &n1, socket: dir.join("n1/cni.sock") };
    let cni2 = Cni { node: &n2, socket: dir.join("n2/cni.sock") };

    // CNI ADD: meshed pods are captured before it returns; the outsider is not.
    let (code, out) = cni2.call("ADD", &server, "server", "shop", SERVER_IP);
    assert_eq!(code, 0, "server ADD: {out}\n{}", z2.output());
    assert!(out.contains(&format!("{SERVER_IP}/24")), "prevResult passed through: {out}");
    assert!(has_rules(&server), "server captured when ADD returned");
    let (code, out) = cni1.call("ADD", &client, "client", "shop", CLIENT_IP);
    assert_eq!(code, 0, "client ADD: {out}\n{}", z1.output());
    assert!(has_rules(&client));
    let (code, out) = cni1.call("ADD", &outsider, "outsider", "outside", OUTSIDER_IP);
    assert_eq!(code, 0, "outsider ADD: {out}");
    assert!(!has_rules(&outsider), "a pod outside the mesh is left alone");
    let (code, out) = cni1.call("CHECK", &client, "client", "shop", CLIENT_IP);
    assert_eq!((code, out.as_str()), (0, ""), "CHECK of a captured pod");

    // Captured and tunnelled: the server sees the client's own address, and the node link
    // carries TLS records, never the payload.
    let capture = Tcpdump::start(&n2, "eth0", dir.join("link.pcap"));
    let seen = wait_for("client → server through the mesh", Duration::from_secs(20), || {
        exchange(&client_ns, &format!("{SERVER_IP}:8080"), MARKER).ok()
    });
    let pcap = capture.stop();
    assert_eq!(seen_ip(&seen), CLIENT_IP, "the server sees the client pod's address");
    assert!(!contains(&pcap, MARKER.as_bytes()), "the payload crossed the node link in plaintext");
    assert!(
        contains(&pcap, &[0x17, 0x03, 0x03]),
        "TLS application-data records on the node link ({} bytes captured)\n{}\n{}",
        pcap.len(),
        z1.output(),
        z2.output()
    );
    wait_metric(
        &n1_ns,
        "istio_tcp_connections_closed_total",
        &[
            "reporter=\"source\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\"",
            "connection_security_policy=\"mutual_tls\"",
            "response_flags=\"-\"",
        ],
        1.0,
    );
    let dump = get_in(&n2_ns, "127.0.0.1:15000", "/config_dump").unwrap();
    assert!(dump.contains("spiffe://cluster.local/ns/shop/sa/server") && dump.contains("\"ready\""), "{dump}");
    assert!(dump.contains("Kubernetes//Pod/shop/server"), "{dump}");

    // A service VIP picks an endpoint.
    let seen = exchange(&client_ns, &format!("{SERVER_VIP}:80"), "via-vip").unwrap();
    assert_eq!(seen_ip(&seen), CLIENT_IP);
    wait_metric(&n2_ns, "istio_tcp_received_bytes_total", &["reporter=\"destination\""], 1.0);

    // A client outside the mesh reaches the meshed server through its 15006.
    let seen = exchange(&outsider_ns, &format!("{SERVER_IP}:8080"), "plain").unwrap();
    assert_eq!(seen_ip(&seen), OUTSIDER_IP);
    wait_metric(
        &n2_ns,
        "istio_tcp_connections_closed_total",
        &["reporter=\"destination\"", "connection_security_policy=\"unknown\"", "source_workload=\"outsider\""],
        1.0,
    );

    // DENY: the client's identity is refused, counted with response_flags="DENY".
    write_manifest(
        &manifests,
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-client, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]\n",
    );
    wait_for("the DENY policy to refuse the client", Duration::from_secs(20), || {
        exchange(&client_ns, &format!("{SERVER_IP}:8080"), "denied?").is_err().then_some(())
    });
    wait_metric(
        &n2_ns,
        "istio_tcp_connections_closed_total",
        &[
            "reporter=\"destination\"",
            "response_flags=\"DENY\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        ],
        1.0,
    );
    assert!(z2.output().contains("connection failed"), "denial in the access log");
    assert_eq!(seen_ip(&exchange(&outsider_ns, &format!("{SERVER_IP}:8080"), "still").unwrap()), OUTSIDER_IP);

    // STRICT: plaintext clients are refused; mesh clients pass (the DENY is gone).
    std::fs::remove_file(manifests.join("deny.yaml")).unwrap();
    write_manifest(
        &manifests,
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    wait_for("STRICT to refuse the outsider", Duration::from_secs(20), || {
        exchange(&outsider_ns, &format!("{SERVER_IP}:8080"), "strict?").is_err().then_some(())
    });
    wait_for("the client to pass again", Duration::from_secs(20), || {
        exchange(&client_ns, &format!("{SERVER_IP}:8080"), "again").ok()
    });

    // The server leaves the mesh by label, without a restart: its rules go, its listeners
    // close, and the client's ztunnel sends it plain TCP.
    write_manifest(
        &manifests,
        "server.yaml",
        &pod_yaml("server", "shop", "server", "n2", SERVER_IP, "app: server, istio.io/dataplane-mode: none"),
    );
    wait_for("the server's rules to go", Duration::from_secs(20), || (!has_rules(&server)).then_some(()));
    let capture = Tcpdump::start(&n2, "eth0", dir.join("plain.pcap"));
    let seen = wait_for("plain traffic to the server", Duration::from_secs(20), || {
        exchange(&client_ns, &format!("{SERVER_IP}:8080"), MARKER).ok()
    });
    let pcap = capture.stop();
    assert_eq!(seen_ip(&seen), CLIENT_IP);
    assert!(contains(&pcap, MARKER.as_bytes()), "out of the mesh, the payload travels as is");
    let dump = get_in(&n2_ns, "127.0.0.1:15000", "/config_dump").unwrap();
    assert!(!dump.contains("\"pod\": \"shop/server\""), "the proxy let the pod go: {dump}");

    // Back into the mesh, again without a restart.
    write_manifest(&manifests, "server.yaml", &pod_yaml("server", "shop", "server", "n2", SERVER_IP, "app: server"));
    wait_for("the server to be captured again", Duration::from_secs(20), || has_rules(&server).then_some(()));
    wait_for("mesh traffic to the server", Duration::from_secs(20), || {
        exchange(&client_ns, &format!("{SERVER_IP}:8080"), "rejoined").ok()
    });
    wait_metric(
        &n2_ns,
        "istio_tcp_connections_closed_total",
        &["reporter=\"destination\"", "connection_security_policy=\"mutual_tls\""],
        3.0,
    );

    // Hand-over on node 2: a successor starts beside the running ztunnel, picks the pods up
    // from the agent's records (binding their ports with SO_REUSEPORT), and once it is ready
    // the first one stops; new connections keep working.
    let mut z2b = start_ztunnel(&n2, "n2", TOKEN2, 1);
    wait_for("the successor ready", Duration::from_secs(30), || {
        assert!(z2b.exited().is_none(), "successor exited:\n{}", z2b.output());
        get_in(&n2_ns, "127.0.0.1:15121", "/healthz/ready").filter(|r| r.starts_with("HTTP/1.1 200"))
    });
    let dump = get_in(&n2_ns, "127.0.0.1:15100", "/config_dump").unwrap();
    assert!(dump.contains("\"pod\": \"shop/server\""), "the successor serves the pod: {dump}");
    assert!(z2.stop(Duration::from_secs(10)).is_some_and(|s| s.success()), "{}", z2.output());
    let seen = exchange(&client_ns, &format!("{SERVER_IP}:8080"), "after-handover").unwrap();
    assert_eq!(seen_ip(&seen), CLIENT_IP);
    let mut last = String::new();
    wait_for("the successor to carry the connection", Duration::from_secs(20), || {
        last = get_in(&n2_ns, "127.0.0.1:15120", "/metrics").unwrap_or_default();
        (metric(&last, "istio_tcp_connections_closed_total", &["reporter=\"destination\""]) >= 1.0).then_some(())
    });

    // CNI DEL takes the rules out of the pod's namespace.
    let (code, out) = cni1.call("DEL", &client, "client", "shop", CLIENT_IP);
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(!has_rules(&client), "rules gone after DEL");
    let (code, _) = cni1.call("DEL", &client, "client", "shop", CLIENT_IP);
    assert_eq!(code, 0, "DEL is idempotent");

    // Graceful stop.
    assert!(z1.stop(Duration::from_secs(10)).is_some_and(|s| s.success()), "{}", z1.output());
    assert!(z1.output().contains("draining"), "{}", z1.output());
    drop(z2b);
    let _ = std::fs::remove_dir_all(&dir);
}
