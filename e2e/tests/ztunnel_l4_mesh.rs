//! The L4 mesh end to end on the sandbox (root): two nodes, the controller and one real
//! ztunnel process per node, pods whose CNI ADD/CHECK/DEL the sandbox runs exactly as a
//! container runtime does (and this test repeats and checks).
//!
//! One scenario, in order, because each step builds on the mesh the previous one left:
//! capture and tunnel (the server sees the client's address; the node link carries TLS, not
//! the payload), a service VIP, a non-mesh client through 15006, a DENY policy counted with
//! `response_flags="DENY"`, REGISTRY_ONLY refusing an address outside the registry (nothing on
//! the link, counted as `BlackHoleCluster`) and allowing it once a ServiceEntry names it
//! (resolution NONE, a STATIC endpoint behind its own address, and a DNS entry whose host
//! ztunnel resolves with a real lookup), STRICT refusing the non-mesh client, a pod leaving the mesh by
//! label without a restart (plain traffic on the link) and rejoining, a successor ztunnel
//! taking the node over beside the running one, and CNI DEL taking the rules out.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_e2e::capture::{contains, Tcpdump};
use ambit_e2e::sandbox::{Options, Sandbox, NODE_NET};

const MARKER: &str = "PLAINTEXT-MARKER-a7c3e9";
const CLIENT: &str = "shop/client";
const OUTSIDER: &str = "outside/outsider";
const SERVER: &str = "shop/server";

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    ambit_e2e::wait_for(what, Duration::from_secs(20), f)
}

fn pod_yaml(name: &str, ns: &str, sa: &str, node: &str, labels: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  containers: [{container}]\n"
    )
}

const SERVER_CONTAINER: &str =
    "{name: server, image: ambit/tcp-echo, args: [--port, '8080'], ports: [{containerPort: 8080}]}";
const SLEEPER: &str = "{name: sleep, image: ambit/sleep}";

/// An HTTP GET inside a node's namespace (admin endpoints listen on the node's loopback).
fn get_in(sb: &Sandbox, node: &str, port: u16, path: &str) -> Option<String> {
    sb.get_in_node(node, port, path)
}

/// One exchange with the TCP echo from inside a pod: the peer it saw, then `line` echoed.
fn exchange(sb: &Sandbox, pod: &str, to: &str, line: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    let s = sb
        .pod_netns(pod)
        .unwrap()
        .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .unwrap()
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut greeting = String::new();
    if reader.read_line(&mut greeting).map_err(|e| format!("read: {e}"))? == 0 {
        return Err("closed without a greeting".into());
    }
    let mut echoed = String::new();
    reader.read_line(&mut echoed).map_err(|e| format!("read: {e}"))?;
    if echoed.trim_end() != line {
        return Err(format!("echo mismatch: {echoed:?}"));
    }
    // "peer=<ip>:<port> pod=<name>"
    let peer = greeting.split_whitespace().next().unwrap_or("").trim_start_matches("peer=");
    Ok(peer.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(peer).to_owned())
}

/// A TCP echo in the same shape as `ambit/tcp-echo` (a greeting naming the peer, then each line
/// back), listening at `addr` inside network namespace `netns`; counts the connections it took.
fn serve_echo_in(netns: &str, addr: &str) -> Arc<AtomicUsize> {
    let addr: SocketAddr = addr.parse().unwrap();
    let ns = ambit_shared::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{netns}"))).unwrap();
    let listener = ns.run_in(|| TcpListener::bind(addr)).unwrap().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let _ = (&stream).write_all(format!("peer={peer} pod=outside\n").as_bytes());
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = (&stream).write_all(line.as_bytes());
                    line.clear();
                }
            });
        }
    });
    accepted
}

const NODE_NET_12: [u8; 4] = [10, 240, 0, 12];

/// A DNS server (UDP) inside `netns` at `addr` answering A queries for `name` with `ip` (TTL 5 s)
/// and NXDOMAIN for anything else; counts the queries for `name`.
fn serve_dns_in(netns: &str, addr: &str, name: &str, ip: [u8; 4]) -> Arc<AtomicUsize> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
    let addr: SocketAddr = addr.parse().unwrap();
    let ns = ambit_shared::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{netns}"))).unwrap();
    let socket = ns.run_in(|| std::net::UdpSocket::bind(addr)).unwrap().unwrap();
    let wanted = Name::from_ascii(format!("{name}.")).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::new();
            answer.set_id(query.id()).set_message_type(MessageType::Response).set_op_code(query.op_code());
            answer.set_recursion_desired(query.recursion_desired()).set_recursion_available(true);
            answer.add_queries(query.queries().to_vec());
            match query.queries().first() {
                Some(q) if q.name() == &wanted => {
                    count.fetch_add(1, Ordering::SeqCst);
                    if q.query_type() == RecordType::A {
                        answer.add_answer(Record::from_rdata(
                            wanted.clone(),
                            5,
                            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
                        ));
                    }
                }
                _ => {
                    answer.set_response_code(ResponseCode::NXDomain);
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    asked
}

fn has_rules(sb: &Sandbox, pod: &str) -> bool {
    sb.captured(pod)
}

/// Waits until `node`'s metrics (on `port`) have a series of `name` with `labels` ≥ `min`.
fn wait_metric(sb: &Sandbox, node: &str, port: u16, name: &str, labels: &[&str], min: f64) {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        last = get_in(sb, node, port, "/metrics").unwrap_or_default();
        if ambit_e2e::metric_sum(&last, name, labels) >= min {
            return;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
    panic!("no {name} {labels:?} >= {min} in:\n{last}");
}

#[test]
fn l4_mesh_across_two_nodes() {
    ambit_e2e::require_root();
    ambit_e2e::netns::clean_leftovers();
    let mut opts = Options::for_tests();
    opts.prefix = format!("{}-zt", opts.prefix);
    opts.root = opts.root.with_extension("zt");
    let scratch = opts.root.with_extension("files");
    // ztunnels resolve DNS ServiceEntry hostnames with the name server on node-2 (below).
    opts.ztunnel_flags = vec!["--dns-nameservers".into(), format!("{NODE_NET}.12:5353")];
    let mut sb = Sandbox::up(opts).unwrap();
    let node2 = sb.netns_name("node-2");

    // A meshed namespace and one outside; the server on node-2, the clients on node-1.
    let dir = scratch.join("app");
    ambit_e2e::write_file(
        &dir,
        "namespaces.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n",
    );
    ambit_e2e::write_file(&dir, "client.yaml", &pod_yaml("client", "shop", "client", "node-1", "app: client", SLEEPER));
    ambit_e2e::write_file(
        &dir,
        "outsider.yaml",
        &pod_yaml("outsider", "outside", "default", "node-1", "app: outsider", SLEEPER),
    );
    ambit_e2e::write_file(
        &dir,
        "server.yaml",
        &pod_yaml("server", "shop", "server", "node-2", "app: server", SERVER_CONTAINER),
    );
    ambit_e2e::write_file(
        &dir,
        "service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: shop}\nspec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n",
    );
    sb.apply(&dir).unwrap();
    let ip = |key: &str| sb.state.pods[key].ip.to_string();
    let (client_ip, outsider_ip, server) = (ip(CLIENT), ip(OUTSIDER), format!("{}:8080", ip(SERVER)));

    // The runtime's calls, repeated: ADD is idempotent and passes prevResult through; CHECK
    // passes for a captured pod; meshed pods were captured before ADD returned, the outsider
    // left alone.
    let (code, out) = sb.cni_call("ADD", SERVER).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{}/24", ip(SERVER))), "prevResult passed through: {out}");
    assert_eq!(sb.cni_call("CHECK", CLIENT).unwrap(), (0, String::new()));
    assert!(has_rules(&sb, SERVER) && has_rules(&sb, CLIENT));
    assert!(!has_rules(&sb, OUTSIDER), "a pod outside the mesh is left alone");

    // Captured and tunnelled: the server sees the client's own address, and the node link
    // carries TLS records, never the payload.
    let capture = Tcpdump::start(&node2, "eth0", scratch.join("link.pcap"));
    let seen = wait_for("client → server through the mesh", || exchange(&sb, CLIENT, &server, MARKER).ok());
    let pcap = capture.stop();
    assert_eq!(seen, client_ip, "the server sees the client pod's address");
    assert!(!contains(&pcap, MARKER.as_bytes()), "the payload crossed the node link in plaintext");
    assert!(
        contains(&pcap, &[0x17, 0x03, 0x03]),
        "TLS application-data records on the node link ({} bytes)",
        pcap.len()
    );
    wait_metric(
        &sb,
        "node-1",
        15020,
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
    let dump = get_in(&sb, "node-2", 15000, "/config_dump").unwrap();
    assert!(dump.contains("spiffe://cluster.local/ns/shop/sa/server") && dump.contains("\"ready\""), "{dump}");
    assert!(dump.contains("Kubernetes//Pod/shop/server"), "{dump}");

    // A service VIP picks an endpoint.
    let vip = format!("{}:80", sb.state.services["shop/server"].vip);
    assert_eq!(exchange(&sb, CLIENT, &vip, "via-vip").unwrap(), client_ip);
    wait_metric(&sb, "node-2", 15020, "istio_tcp_received_bytes_total", &["reporter=\"destination\""], 1.0);

    // A client outside the mesh reaches the meshed server through its 15006.
    assert_eq!(exchange(&sb, OUTSIDER, &server, "plain").unwrap(), outsider_ip);
    wait_metric(
        &sb,
        "node-2",
        15020,
        "istio_tcp_connections_closed_total",
        &["reporter=\"destination\"", "connection_security_policy=\"unknown\"", "source_workload=\"outsider\""],
        1.0,
    );

    // REGISTRY_ONLY. A listener on node-2's own address is outside the registry (no
    // workload, no service): reached directly while the policy is ALLOW_ANY, refused by the
    // client's ztunnel once a Sidecar makes the namespace REGISTRY_ONLY — nothing reaches
    // the link, the registry stays reachable — and reachable again when it goes.
    let outside = format!("{NODE_NET}.12:7070");
    let accepted = serve_echo_in(&node2, &outside);
    let capture = Tcpdump::start(&node2, "eth0", scratch.join("passthrough.pcap"));
    assert_eq!(exchange(&sb, CLIENT, &outside, MARKER).unwrap(), client_ip, "ALLOW_ANY: direct, as is");
    assert!(contains(&capture.stop(), MARKER.as_bytes()), "the capture sees passthrough traffic");
    let registry_only = ambit_e2e::write_file(
        &scratch,
        "registry-only.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n",
    );
    sb.apply(&registry_only).unwrap();
    wait_for("REGISTRY_ONLY to refuse the outside address", || exchange(&sb, CLIENT, &outside, "refused?").err());
    let before = accepted.load(Ordering::SeqCst);
    let capture = Tcpdump::start(&node2, "eth0", scratch.join("registry-only.pcap"));
    let why = exchange(&sb, CLIENT, &outside, MARKER).expect_err("refused under REGISTRY_ONLY");
    let pcap = capture.stop();
    assert!(!contains(&pcap, MARKER.as_bytes()), "refused traffic left the pod in plaintext ({why})");
    assert_eq!(accepted.load(Ordering::SeqCst), before, "nothing reached the outside listener");
    assert_eq!(exchange(&sb, CLIENT, &server, "registry").unwrap(), client_ip, "the registry stays reachable");
    wait_metric(
        &sb,
        "node-1",
        15020,
        "istio_tcp_connections_closed_total",
        &[
            "reporter=\"source\"",
            "response_flags=\"BLACKHOLE\"",
            "destination_service=\"BlackHoleCluster\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        ],
        1.0,
    );
    assert!(sb.log("ztunnel-node-1").contains("REGISTRY_ONLY"), "the refusal is in the access log");
    // ServiceEntries put destinations in the registry: one naming the address as is
    // (resolution NONE: to the address the pod used), one with a STATIC endpoint behind its
    // own address (resolution STATIC: to the endpoint's port).
    let entries = ambit_e2e::write_file(
        &scratch,
        "entries.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: node2, namespace: shop}}\nspec: {{hosts: [node2.outside.example], addresses: ['{NODE_NET}.12'], ports: [{{number: 7070, name: tcp}}]}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo, namespace: shop}}\nspec: {{hosts: [echo.outside.example], addresses: [10.96.200.1], ports: [{{number: 80, name: tcp}}], resolution: STATIC, endpoints: [{{address: '{NODE_NET}.12', ports: {{tcp: 7070}}}}]}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db, namespace: shop}}\nspec: {{hosts: [db.outside.example], addresses: [10.96.200.2], ports: [{{number: 80, name: tcp, targetPort: 7070}}], resolution: DNS}}\n"
        ),
    );
    let asked = serve_dns_in(&node2, &format!("{NODE_NET}.12:5353"), "db.outside.example", NODE_NET_12);
    sb.apply(&entries).unwrap();
    let before = accepted.load(Ordering::SeqCst);
    wait_for("the NONE ServiceEntry to let the address through", || exchange(&sb, CLIENT, &outside, "registered").ok());
    assert_eq!(exchange(&sb, CLIENT, "10.96.200.1:80", "static").unwrap(), client_ip, "STATIC endpoint reached");
    // resolution DNS: ztunnel resolves the host (a real lookup, answered with a TTL) per
    // connection and dials the answer.
    assert_eq!(exchange(&sb, CLIENT, "10.96.200.2:80", "dns").unwrap(), client_ip, "DNS endpoint reached");
    assert!(asked.load(Ordering::SeqCst) >= 1, "the name was looked up");
    assert!(accepted.load(Ordering::SeqCst) >= before + 3, "all three reached the outside listener");
    wait_metric(
        &sb,
        "node-1",
        15020,
        "istio_tcp_connections_closed_total",
        &["reporter=\"source\"", "destination_service=\"echo.outside.example\"", "response_flags=\"-\""],
        1.0,
    );
    sb.delete(&entries).unwrap();
    sb.delete(&registry_only).unwrap();
    wait_for("ALLOW_ANY again", || exchange(&sb, CLIENT, &outside, "allowed-again").ok());

    // DENY: the client's identity is refused, counted with response_flags="DENY".
    let deny = ambit_e2e::write_file(
        &scratch,
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-client, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]\n",
    );
    sb.apply(&deny).unwrap();
    wait_for("the DENY policy to refuse the client", || {
        exchange(&sb, CLIENT, &server, "denied?").is_err().then_some(())
    });
    wait_metric(
        &sb,
        "node-2",
        15020,
        "istio_tcp_connections_closed_total",
        &[
            "reporter=\"destination\"",
            "response_flags=\"DENY\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        ],
        1.0,
    );
    assert!(sb.log("ztunnel-node-2").contains("connection failed"), "denial in the access log");
    assert_eq!(exchange(&sb, OUTSIDER, &server, "still").unwrap(), outsider_ip);

    // STRICT: plaintext clients are refused; mesh clients pass (the DENY is gone).
    sb.delete(&deny).unwrap();
    let strict = ambit_e2e::write_file(
        &scratch,
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    sb.apply(&strict).unwrap();
    wait_for("STRICT to refuse the outsider", || exchange(&sb, OUTSIDER, &server, "strict?").is_err().then_some(()));
    wait_for("the client to pass again", || exchange(&sb, CLIENT, &server, "again").ok());

    // The server leaves the mesh by label, without a restart: its rules go, its listeners
    // close, and the client's ztunnel sends it plain TCP.
    let pid = sb.state.pods[SERVER].pid;
    let label_none = "app: server, istio.io/dataplane-mode: none";
    sb.apply(&ambit_e2e::write_file(
        &scratch,
        "server-out.yaml",
        &pod_yaml("server", "shop", "server", "node-2", label_none, SERVER_CONTAINER),
    ))
    .unwrap();
    wait_for("the server's rules to go", || (!has_rules(&sb, SERVER)).then_some(()));
    wait_for("node-2's proxy to let the server go", || {
        (!get_in(&sb, "node-2", 15000, "/config_dump")?.contains("\"pod\": \"shop/server\"")).then_some(())
    });
    wait_for("node-1 to know the server is out of the mesh", || {
        let dump = get_in(&sb, "node-1", 15000, "/config_dump")?;
        let (_, body) = dump.split_once("\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["workloads"]
            .as_array()?
            .iter()
            .any(|w| w["uid"] == "Kubernetes//Pod/shop/server" && w["protocol"] == "TCP")
            .then_some(())
    });
    let capture = Tcpdump::start(&node2, "eth0", scratch.join("plain.pcap"));
    let seen = wait_for("plain traffic to the server", || exchange(&sb, CLIENT, &server, MARKER).ok());
    let pcap = capture.stop();
    assert_eq!(seen, client_ip);
    assert!(contains(&pcap, MARKER.as_bytes()), "out of the mesh, the payload travels as is");
    assert_eq!(sb.state.pods[SERVER].pid, pid, "no restart");

    // Back into the mesh, again without a restart.
    sb.apply(&dir.join("server.yaml")).unwrap();
    wait_for("the server to be captured again", || has_rules(&sb, SERVER).then_some(()));
    wait_for("mesh traffic to the server", || exchange(&sb, CLIENT, &server, "rejoined").ok());

    // Hand-over on node 2: a successor starts beside the running ztunnel, picks the pods up
    // from the agent's records (binding their ports with SO_REUSEPORT), and once it is ready
    // the first one stops; new connections keep working.
    sb.start_ztunnel_generation("node-2", 1).unwrap();
    sb.wait_ready("node-2", "127.0.0.1:15121", "the successor").unwrap();
    let dump = get_in(&sb, "node-2", 15100, "/config_dump").unwrap();
    assert!(dump.contains("\"pod\": \"shop/server\""), "the successor serves the pod: {dump}");
    sb.stop_daemon("ztunnel-node-2");
    assert!(sb.log("ztunnel-node-2").contains("draining"), "the predecessor drained");
    assert_eq!(exchange(&sb, CLIENT, &server, "after-handover").unwrap(), client_ip);
    wait_metric(&sb, "node-2", 15120, "istio_tcp_connections_closed_total", &["reporter=\"destination\""], 1.0);

    // CNI DEL takes the rules out of the pod's namespace, and is idempotent.
    assert_eq!(sb.cni_call("DEL", CLIENT).unwrap(), (0, String::new()));
    assert!(!has_rules(&sb, CLIENT), "rules gone after DEL");
    assert_eq!(sb.cni_call("DEL", CLIENT).unwrap().0, 0, "DEL is idempotent");

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
