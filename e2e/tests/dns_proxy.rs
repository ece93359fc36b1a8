//! ztunnel's DNS proxy end to end on the sandbox (root), with real clients: `dig` and the
//! sample app's resolver (glibc) inside pods, Debian's dnsmasq as the cluster's DNS server in
//! the outside world, and the world's echo server as the external host.
//!
//! One scenario: a captured pod's DNS is answered by ztunnel for the registry — a Kubernetes
//! service (also through the search path, over UDP and TCP) and a `resolution: DNS`
//! ServiceEntry without addresses, which gets an automatically allocated address that
//! connections then follow to the real host — while a pod outside the mesh asks dnsmasq
//! directly; names ztunnel does not own (an SRV lookup, a TXT record, an external A record,
//! NXDOMAIN) are forwarded and come back as the server gave them (dnsmasq's log shows them
//! arriving from the node, not from the pod); a malformed message gets FORMERR and nothing
//! else breaks; REGISTRY_ONLY lets the entry's host through and refuses another external host;
//! an entry bound to an egress waypoint is reached through it (the waypoint resolves the host
//! and denies one path by L7 policy, or a method by a policy targeting the entry), and TLS is
//! originated there by a DestinationRule (a self-signed server accepted only with
//! insecureSkipVerify); and after a ztunnel restart the pod's DNS is answered again.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use ambit_e2e::sandbox::{Options, Sandbox, NODE_NET, WORLD_IP, WORLD_IP_2};

const CLIENT: &str = "shop/client";
const OUTSIDER: &str = "outside/outsider";

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    ambit_e2e::wait_for(what, Duration::from_secs(20), f)
}

fn pod_yaml(name: &str, ns: &str, node: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  containers: [{container}]\n"
    )
}

/// `dig` in a pod: its output, trimmed, or the failure.
fn dig(sb: &Sandbox, pod: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = vec!["dig", "+time=3", "+tries=1"];
    cmd.extend_from_slice(args);
    let out = sb.exec(pod, &cmd).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("dig {args:?} failed: {text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn get(sb: &Sandbox, pod: &str, url: &str) -> Result<String, String> {
    let out = sb.exec(pod, &["ambit-sample", "get", url]).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The auto-allocated IPv4 range (Istio's default).
fn in_auto_range(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]))
}

#[test]
fn dns_proxy_answers_the_mesh_and_forwards_the_rest() {
    ambit_e2e::require_root();
    ambit_e2e::netns::clean_leftovers();
    let mut opts = Options::for_tests();
    opts.prefix = format!("{}-dns", opts.prefix);
    opts.root = opts.root.with_extension("dns");
    let scratch = opts.root.with_extension("files");
    let mut sb = Sandbox::up(opts).unwrap();

    let dir = scratch.join("app");
    ambit_e2e::write_file(
        &dir,
        "app.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n".to_owned(),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n".to_owned(),
            pod_yaml("client", "shop", "node-1", "{name: sleep, image: ambit/sleep}"),
            pod_yaml("outsider", "outside", "node-1", "{name: sleep, image: ambit/sleep}"),
            pod_yaml("server", "shop", "node-2", "{name: echo, image: ambit/echo, ports: [{containerPort: 8080}]}"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: shop}\nspec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n".to_owned(),
            // An external host by name only: no addresses, resolved by DNS.
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: shop}\nspec: {hosts: [api.world.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, location: MESH_EXTERNAL}\n".to_owned(),
        ]
        .join("---\n"),
    );
    sb.apply(&dir).unwrap();
    assert!(sb.captured(CLIENT) && !sb.captured(OUTSIDER));
    let server_vip = sb.state.services.values().find(|s| s.name == "server").unwrap().vip.to_string();

    // The registry, answered by ztunnel: a Kubernetes service by its full name, through the
    // search path, and over TCP (dnsmasq answers NXDOMAIN for cluster.local: only ztunnel
    // knows these names).
    assert_eq!(dig(&sb, CLIENT, &["+short", "server.shop.svc.cluster.local"]).unwrap(), server_vip);
    assert_eq!(dig(&sb, CLIENT, &["+short", "+search", "server"]).unwrap(), server_vip);
    assert_eq!(dig(&sb, CLIENT, &["+short", "+tcp", "server.shop.svc.cluster.local"]).unwrap(), server_vip);
    let outsider = dig(&sb, OUTSIDER, &["server.shop.svc.cluster.local"]).unwrap();
    assert!(outsider.contains("status: NXDOMAIN"), "a pod outside the mesh asks dnsmasq directly:\n{outsider}");

    // The ServiceEntry's host: an allocated address for the meshed pod, the real one outside.
    let vip = wait_for("the entry's allocated address", || {
        dig(&sb, CLIENT, &["+short", "api.world.example"]).ok().filter(|a| in_auto_range(a))
    });
    let full = dig(&sb, CLIENT, &["api.world.example"]).unwrap();
    assert!(full.contains("flags: qr aa rd ra") && full.contains("\t30\tIN\tA\t"), "authoritative, TTL 30:\n{full}");
    assert_eq!(dig(&sb, CLIENT, &["+short", "AAAA", "api.world.example"]).unwrap(), "", "an IPv4-only pod: no AAAA");
    assert_eq!(dig(&sb, OUTSIDER, &["+short", "api.world.example"]).unwrap(), WORLD_IP);
    // The same address on every ztunnel, in the controller's registry.
    let dump = sb.get_in_node("node-2", 15000, "/config_dump").unwrap();
    assert!(dump.contains(&vip), "{vip} in node-2's state:\n{dump}");
    // A connection by name: glibc resolves through ztunnel, ztunnel routes the allocated
    // address to the entry's endpoint, resolved for real by dnsmasq.
    let body =
        wait_for("a request to the external host by name", || get(&sb, CLIENT, "http://api.world.example/").ok());
    assert!(body.contains("world"), "the world's echo server answered: {body}");
    let log = sb.log("ztunnel-node-1");
    assert!(log.contains("api.world.example"), "the access log names the entry's host");

    // Names ztunnel does not own are forwarded, from the node (dnsmasq sees the node's
    // address, not the pod's), and come back as dnsmasq gave them.
    assert_eq!(dig(&sb, CLIENT, &["+short", "SRV", "_http._tcp.world.example"]).unwrap(), "0 0 80 api.world.example.");
    assert_eq!(dig(&sb, CLIENT, &["+short", "TXT", "world.example"]).unwrap(), "\"outside the mesh\"");
    assert_eq!(dig(&sb, CLIENT, &["+short", "other.world.example"]).unwrap(), WORLD_IP_2);
    assert_eq!(dig(&sb, CLIENT, &["+short", "+tcp", "www.world.example"]).unwrap(), WORLD_IP);
    let nx = dig(&sb, CLIENT, &["nope.world.example"]).unwrap();
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let queries = std::fs::read_to_string(sb.opts.root.join("logs/world-dns-queries.log")).unwrap_or_default();
    let node1 = format!("{NODE_NET}.11");
    assert!(
        queries.lines().any(|l| l.contains("query[SRV] _http._tcp.world.example from") && l.contains(&node1)),
        "the SRV lookup reached dnsmasq from node-1's ztunnel:\n{queries}"
    );

    // A malformed message: FORMERR with its id; the proxy keeps answering.
    let reply = sb
        .pod_netns(CLIENT)
        .unwrap()
        .run_in(|| {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            socket.connect(SocketAddr::new(WORLD_IP.parse().unwrap(), 53)).unwrap();
            // A header announcing one question, then half a name.
            socket.send(&[0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x']).unwrap();
            let mut buf = [0u8; 512];
            socket.recv(&mut buf).map(|n| buf[..n].to_vec())
        })
        .unwrap()
        .expect("a reply to a malformed message");
    assert_eq!(&reply[..2], &[0xbe, 0xef], "the message's id");
    assert_eq!(reply[2] & 0x80, 0x80, "a response");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    assert_eq!(dig(&sb, CLIENT, &["+short", "server.shop.svc.cluster.local"]).unwrap(), server_vip);
    let metrics = sb.get_in_node("node-1", 15020, "/metrics").unwrap();
    for outcome in ["answered", "forwarded", "formerr"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("istio_dns_requests_total{{outcome=\"{outcome}\"}}"))),
            "istio_dns_requests_total counts {outcome}:\n{metrics}"
        );
    }

    // REGISTRY_ONLY: the entry's host is in the registry, another external host is not.
    ambit_e2e::write_file(
        &dir,
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n",
    );
    sb.apply(&dir.join("sidecar.yaml")).unwrap();
    wait_for("REGISTRY_ONLY to refuse the other external host", || {
        get(&sb, CLIENT, "http://other.world.example/").err()
    });
    assert!(get(&sb, CLIENT, "http://api.world.example/").unwrap().contains("world"), "the entry's host still works");

    // Egress through a waypoint: an entry bound to the egress namespace's waypoint, which
    // resolves the host itself and applies its L7 policy (a DENY on one path).
    ambit_e2e::write_file(
        &dir,
        "egress.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: egress}\n",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: egress-waypoint, namespace: egress}\nspec:\n  gatewayClassName: ambit-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: www, namespace: egress, labels: {istio.io/use-waypoint: egress-waypoint}}\nspec: {hosts: [www.world.example], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, location: MESH_EXTERNAL}\n",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-private, namespace: egress}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: egress-waypoint}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/private]}}]}]\n",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete, namespace: egress}\nspec:\n  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: www}]\n  action: DENY\n  rules: [{to: [{operation: {methods: [DELETE]}}]}]\n",
        ]
        .join("---\n"),
    );
    sb.apply(&dir.join("egress.yaml")).unwrap();
    let waypoint_ip = sb.state.pods.values().find(|p| p.namespace == "egress").map(|p| p.ip.to_string()).unwrap();
    let body = wait_for("a request to the entry through the waypoint", || {
        get(&sb, CLIENT, "http://www.world.example/").ok().filter(|b| b.contains(&format!("\"peer\":\"{waypoint_ip}:")))
    });
    assert!(
        body.contains("\"host\":\"www.world.example\""),
        "the waypoint resolved the host and kept the Host header: {body}"
    );
    let denied = sb.exec(CLIENT, &["ambit-sample", "get", "--status", "http://www.world.example/private"]).unwrap();
    let denied = String::from_utf8_lossy(&denied.stdout).into_owned();
    assert!(denied.starts_with("403"), "the waypoint's L7 DENY: {denied}");
    let allowed = sb.exec(CLIENT, &["ambit-sample", "get", "--status", "http://www.world.example/public"]).unwrap();
    assert!(String::from_utf8_lossy(&allowed.stdout).starts_with("200"), "other paths pass");
    let delete = sb
        .exec(CLIENT, &["ambit-sample", "get", "--status", "-X", "DELETE", "http://www.world.example/public"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&delete.stdout).starts_with("403"),
        "the policy targeting the ServiceEntry applies"
    );

    // TLS originated at the waypoint (DestinationRule SIMPLE): the pod speaks plain HTTP to
    // port 80; the world serves that host only over HTTPS, on 443, with a self-signed
    // certificate — accepted only when the rule says insecureSkipVerify.
    let secure = |verify: bool| {
        [
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: secure, namespace: egress, labels: {istio.io/use-waypoint: egress-waypoint}}\nspec: {hosts: [secure.world.example], ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}], resolution: DNS}\n".to_owned(),
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure, namespace: egress}}\nspec: {{host: secure.world.example, trafficPolicy: {{tls: {{mode: SIMPLE, insecureSkipVerify: {}}}}}}}\n", !verify),
        ]
        .join("---\n")
    };
    ambit_e2e::write_file(&dir, "secure.yaml", &secure(false));
    sb.apply(&dir.join("secure.yaml")).unwrap();
    let body = wait_for("a plain request made HTTPS by the waypoint", || {
        get(&sb, CLIENT, "http://secure.world.example/tls").ok()
    });
    assert!(body.contains("\"pod\":\"world\"") && body.contains("\"path\":\"/tls\""), "{body}");
    ambit_e2e::write_file(&dir, "secure.yaml", &secure(true));
    sb.apply(&dir.join("secure.yaml")).unwrap();
    let refused = wait_for("the self-signed certificate refused once verification is on", || {
        let out = sb.exec(CLIENT, &["ambit-sample", "get", "--status", "http://secure.world.example/tls"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.starts_with("503").then_some(text)
    });
    assert!(refused.starts_with("503"), "{refused}");

    // A ztunnel restart: the pod is taken again and its DNS answered again.
    sb.stop_daemon("ztunnel-node-1");
    sb.start_ztunnel("node-1").unwrap();
    sb.wait_ready("node-1", "127.0.0.1:15021", "ztunnel on node-1").unwrap();
    let again = wait_for("DNS answered after the ztunnel restart", || {
        dig(&sb, CLIENT, &["+short", "api.world.example"]).ok().filter(|a| *a == vip)
    });
    assert_eq!(again, vip, "the allocated address is stable");
    assert_eq!(dig(&sb, CLIENT, &["+short", "SRV", "_http._tcp.world.example"]).unwrap(), "0 0 80 api.world.example.");

    // Restarted with the DNS proxy off: the pod, captured by the previous run, gets its rules
    // again with the new setting — no redirect to a listener that is no longer there.
    sb.stop_daemon("ztunnel-node-1");
    sb.opts.ztunnel_flags.extend(["--dns-proxy".to_owned(), "false".to_owned()]);
    sb.start_ztunnel("node-1").unwrap();
    sb.wait_ready("node-1", "127.0.0.1:15021", "ztunnel on node-1").unwrap();
    wait_for("the pod's DNS to go straight to the cluster's DNS server", || {
        dig(&sb, CLIENT, &["+short", "api.world.example"]).ok().filter(|a| a == WORLD_IP)
    });
    let saved = String::from_utf8_lossy(&sb.exec(CLIENT, &["iptables-save"]).unwrap().stdout).into_owned();
    assert!(!saved.contains("15053") && saved.contains("15001"), "captured, without the DNS redirect:\n{saved}");
    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
