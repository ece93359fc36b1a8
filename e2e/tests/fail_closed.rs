//! Attacks on the mesh's promise, end to end on the sandbox (root): each tries to get a byte
//! past a policy or out in plaintext, and each has a control that shows the same path works
//! when the policy allows it, so a refusal is the policy's doing and not a broken path.
//!
//! - Path spellings (`/public/../admin`, `/./admin`, `/%61dmin`, `//admin`) against a DENY on
//!   `/admin` and against a prefix route.
//! - A slow client and a client that starts with CRLF on a port whose protocol is not declared
//!   (sniffed as TCP at the waypoint), and raw bytes on a declared TCP port.
//! - A workload with a mesh certificate speaking HBONE to the waypoint itself: a forged
//!   `forwarded` header, a CONNECT for a pod address, a CONNECT for a service the waypoint does
//!   not serve.
//! - A DENY policy with a field the controller cannot read: enforced as a DENY of everything it
//!   targets until fixed, never dropped.
//! - A node's ztunnel restarted while the controller is down: no plaintext leaves the node.
//! - Floods of reset and idle connections against a pod's 15008 while traffic goes on.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_e2e::capture::{contains, Tcpdump};
use ambit_e2e::sandbox::{Options, Sandbox};
use ambit_e2e::{wait_for, write_file};
use ambit_shared::hbone::client::{Client, ConnectRequest, PoolSettings};
use ambit_shared::{Ca, Identity, MeshRoots, Validity};
use hyper::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bank}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: bank}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: bank}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      nodeName: node-1
      containers: [{name: client, image: ambit/sleep}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: vault, namespace: bank}
spec:
  replicas: 1
  selector: {matchLabels: {app: vault}}
  template:
    metadata: {labels: {app: vault}}
    spec:
      nodeName: node-2
      containers:
      - {name: echo, image: ambit/echo, args: ['--port', '8080', '--tcp-port', '9000'], ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: internal, namespace: bank}
spec:
  replicas: 1
  selector: {matchLabels: {app: internal}}
  template:
    metadata: {labels: {app: internal}}
    spec:
      nodeName: node-2
      containers: [{name: echo, image: ambit/echo, args: ['--port', '8080'], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: bank}
spec:
  selector: {app: vault}
  ports: [{name: http, port: 8080}, {name: web, port: 8081, targetPort: 8080}, {name: tcp-echo, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: open, namespace: bank}
spec:
  selector: {app: vault}
  ports: [{name: web, port: 8081, targetPort: 8080}, {name: tcp-echo, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: bank}
spec:
  selector: {app: internal}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: plain}
spec:
  selector: {app: vault}
  ports: [{name: http, port: 8080}]
";

const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: bank}
spec:
  targetRefs: [{kind: Service, group: '', name: vault}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin, /admin/*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-only-from-the-office, namespace: bank}
spec:
  targetRefs: [{kind: Service, group: '', name: vault}]
  rules:
  - to: [{operation: {notPaths: [/ip-only]}}]
  - from: [{source: {ipBlocks: [10.99.0.0/16]}}]
    to: [{operation: {paths: [/ip-only]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: vault, namespace: bank}
spec:
  parentRefs: [{group: '', kind: Service, name: vault, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /internal}}]
    backendRefs: [{name: internal, port: 8080}]
  - backendRefs: [{name: vault, port: 8080}]
";

/// `ambit-sample get` in the client pod: (status, JSON body), or `None` when no response came.
fn call(sb: &Sandbox, url: &str) -> Option<(u16, serde_json::Value)> {
    let out = sb.exec("client-0", &["ambit-sample", "get", "--status", "--timeout-ms", "4000", url]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n')?;
    let status = status.trim().parse().ok()?;
    Some((status, serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::String(body.trim().to_owned()))))
}

fn status(sb: &Sandbox, url: &str) -> u16 {
    call(sb, url).unwrap_or_else(|| panic!("no response for {url}")).0
}

/// `ambit-sample tcp-client` in the client pod: what came back (empty when refused).
fn raw(sb: &Sandbox, addr: &str, send: &str, wait_ms: u64) -> String {
    let wait = wait_ms.to_string();
    let out = sb.exec("client-0", &["ambit-sample", "tcp-client", addr, "--send", send, "--wait-ms", &wait]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workload with a mesh certificate (`bank/client`, issued once by the sandbox's CA) that
/// speaks HBONE to the waypoint itself, from node-1's address.
struct MeshClient {
    cert: Arc<ambit_shared::WorkloadCert>,
    roots: MeshRoots,
}

fn mesh_client(root: &std::path::Path) -> MeshClient {
    let ca = Ca::load(
        &std::fs::read_to_string(root.join("ca/root-cert.pem")).unwrap(),
        &std::fs::read_to_string(root.join("ca/root-key.pem")).unwrap(),
    )
    .unwrap();
    let me = Identity::new("cluster.local", "bank", "client").unwrap();
    let cert = Arc::new(ca.issue(&me, Validity::from_now(Duration::from_secs(3600))).unwrap());
    MeshClient { cert, roots: MeshRoots::new(std::slice::from_ref(ca.root_der())).unwrap() }
}

/// What the waypoint answers `client`: `Err(reason)` when the CONNECT is refused, else the raw
/// HTTP reply to `request` sent through the tunnel.
fn hbone_to_waypoint(
    sb: &Sandbox,
    client: &MeshClient,
    waypoint: SocketAddr,
    authority: SocketAddr,
    headers: &[(&'static str, &str)],
    request: &str,
) -> Result<String, String> {
    let (cert, roots) = (client.cert.clone(), client.roots.clone());
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let req = ConnectRequest {
        source: cert,
        destination_identities: vec![Identity::new("cluster.local", "bank", "waypoint").unwrap()],
        hbone_addr: waypoint,
        authority,
        headers: map,
    };
    let request = request.to_owned();
    sb.in_node("node-1", move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let client = Client::new(roots, PoolSettings::default());
            let mut stream = client.connect(&req).await.map_err(|e| e.to_string())?;
            stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut back))
                .await
                .map_err(|_| "no reply within 5 s".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&back).into_owned())
        })
    })
    .unwrap()
}

#[test]
fn nothing_gets_around_the_mesh() {
    let mut opts = Options::for_tests();
    opts.prefix = format!("{}-fc", opts.prefix);
    // Istio's security best practice for backends that read `//admin` as `/admin`.
    opts.controller_flags = vec!["--path-normalization".into(), "merge_slashes".into()];
    let root = opts.root.clone();
    let scratch = opts.root.with_extension("files");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut sb = Sandbox::up(opts).unwrap();
    sb.apply(&write_file(&scratch, "app.yaml", APP)).unwrap();
    sb.apply(&write_file(&scratch, "policy.yaml", POLICY)).unwrap();
    sb.wait_converged().unwrap();
    let wp = sb.state.pods.keys().find(|k| k.starts_with("bank/waypoint-")).cloned().expect("waypoint pod");
    let wp_ip = sb.state.pods[&wp].ip;
    let vault_pod = sb.state.pods.keys().find(|k| k.starts_with("bank/vault-")).cloned().expect("vault pod");
    let vault_ip = sb.state.pods[&vault_pod].ip;
    let vip = |key: &str| sb.state.services[key].vip;

    // Control: the policy lets ordinary paths through, and the backend sees the path the
    // policy saw (normalized), not the client's spelling.
    wait_for("the policy to be enforced", Duration::from_secs(30), || {
        (call(&sb, "http://vault:8080/admin").map(|r| r.0) == Some(403)).then_some(())
    });
    let (code, body) = call(&sb, "http://vault:8080/public/./x//y").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["path"], "/public/x/y", "the backend gets the normalized path");

    // 1. Path spellings of /admin are denied; a NUL is refused outright.
    for path in ["/admin", "/admin/keys", "/public/../admin", "/./admin", "/%61dmin", "//admin", "/%2e%2e/admin/x"] {
        assert_eq!(status(&sb, &format!("http://vault:8080{path}")), 403, "{path} must be denied");
    }
    // A backslash is a separator after normalization (or the request is malformed): never 200.
    let backslash = status(&sb, "http://vault:8080/public\\..\\admin");
    assert!(backslash == 403 || backslash == 400, "backslashes walked around the DENY: {backslash}");
    assert_eq!(status(&sb, "http://vault:8080/a%00b"), 400, "an encoded NUL is refused");
    // ... and route matching sees the same path: a prefix route cannot be walked around.
    for path in ["/internal/x", "/public/../internal/x", "/%69nternal/x", "//internal/x"] {
        let (code, body) = call(&sb, &format!("http://vault:8080{path}")).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body["pod"].as_str().unwrap_or_default().starts_with("internal-"), "{path} routed by prefix: {body}");
    }

    // 2. An undeclared port: a client that waits before speaking, or starts with CRLF, is
    // sniffed as TCP; it is still authorized (the DENY on paths denies raw TCP outright).
    let admin = "GET /admin HTTP/1.1\\r\\nhost: vault\\r\\nconnection: close\\r\\n\\r\\n";
    // (A control, so retried: one run in several saw an empty answer right after start-up.)
    wait_for("control: an unprotected service to answer a slow client", Duration::from_secs(20), || {
        raw(&sb, "open:8081", &admin.replace("vault", "open"), 1500).contains("HTTP/1.1 200").then_some(())
    });
    for (what, send, wait) in [("slow", admin.to_owned(), 1500), ("CRLF-first", format!("\\r\\n{admin}"), 0)] {
        let back = raw(&sb, "vault:8081", &send, wait);
        assert!(!back.contains("200 OK") && !back.contains("\"path\""), "{what} client reached the backend: {back}");
    }
    // A port the service does not declare carries nothing (port-scoped rules were written for
    // the declared ones).
    let undeclared = raw(&sb, "vault:1234", &admin.replace("/admin", "/public"), 0);
    assert!(!undeclared.contains("200 OK"), "an undeclared service port reached the backend: {undeclared}");
    // Two Host headers: rules and the upstream must not each pick one.
    let out = sb
        .exec("client-0", &["ambit-sample", "get", "--status", "-H", "host: internal", "http://vault:8080/public"])
        .unwrap();
    let two_hosts = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(two_hosts.starts_with("400"), "a second Host header must be refused: {two_hosts}");
    // A declared TCP port of a service with path rules: raw bytes never reach the backend.
    assert!(raw(&sb, "open:9000", "hello", 0).contains("peer="), "control: TCP through the waypoint works");
    assert!(!raw(&sb, "vault:9000", "hello", 0).contains("peer="), "TCP to a path-protected service is denied");

    // 3. HBONE to the waypoint itself, with a mesh certificate.
    let client = mesh_client(&root);
    let waypoint = SocketAddr::from((wp_ip, 15008));
    let to_vault = SocketAddr::from((vip("bank/vault"), 8080));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: vault\r\nconnection: close\r\n\r\n");
    let public = hbone_to_waypoint(&sb, &client, waypoint, to_vault, &[], &get("/public")).unwrap();
    assert!(public.starts_with("HTTP/1.1 200"), "control: a direct CONNECT for a bound service works: {public}");
    // The source address is the connection's, whatever `forwarded` claims.
    let forged =
        hbone_to_waypoint(&sb, &client, waypoint, to_vault, &[("forwarded", "for=10.99.0.1")], &get("/ip-only"))
            .unwrap();
    assert!(forged.starts_with("HTTP/1.1 403"), "a forged forwarded header granted ipBlocks: {forged}");
    // Only services bound to this waypoint: not a pod address, not another namespace's service.
    for (what, target) in [
        ("a pod address", SocketAddr::from((vault_ip, 8080))),
        ("an unbound service", SocketAddr::from((vip("plain/elsewhere"), 8080))),
    ] {
        let answer = hbone_to_waypoint(&sb, &client, waypoint, target, &[], &get("/admin"));
        assert!(answer.is_err(), "CONNECT for {what} was forwarded: {answer:?}");
    }

    // 4. A policy the controller cannot read is not dropped (a DENY would deny nothing) but
    // enforced as a DENY of everything it targets until it is fixed; fixing it applies it.
    assert_eq!(status(&sb, "http://open:8081/public"), 200, "control: open is reachable");
    let typo = write_file(
        &scratch,
        "typo.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-secrets, namespace: bank}\nspec:\n  targetRefs: [{kind: Service, group: '', name: open}]\n  action: DENY\n  rules: [{to: [{operation: {pathz: [/secret]}}]}]\n",
    );
    sb.apply(&typo).unwrap();
    wait_for("the unreadable DENY to deny everything on open", Duration::from_secs(30), || {
        (status(&sb, "http://open:8081/public") == 403).then_some(())
    });
    assert_eq!(status(&sb, "http://open:8081/secret"), 403);
    let fixed = write_file(
        &scratch,
        "typo.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-secrets, namespace: bank}\nspec:\n  targetRefs: [{kind: Service, group: '', name: open}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/secret]}}]}]\n",
    );
    sb.apply(&fixed).unwrap();
    wait_for("the fixed DENY to apply as written", Duration::from_secs(30), || {
        (status(&sb, "http://open:8081/public") == 200).then_some(())
    });
    assert_eq!(status(&sb, "http://open:8081/secret"), 403);

    // 5. A node that restarts while the control plane is away forwards nothing in plaintext.
    sb.stop_daemon("controller");
    sb.stop_daemon("ztunnel-node-1");
    sb.start_ztunnel("node-1").unwrap();
    let node1 = sb.netns_name("node-1");
    let capture = Tcpdump::start(&node1, "eth0", scratch.join("restart.pcap"));
    for _ in 0..3 {
        let out = sb
            .exec(
                "client-0",
                &[
                    "ambit-sample",
                    "get",
                    "--timeout-ms",
                    "2000",
                    "-H",
                    "x-canary: plaintext-canary-5150",
                    "http://vault:8080/public",
                ],
            )
            .unwrap();
        assert!(
            !out.status.success(),
            "a request succeeded with no configuration: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let pcap = capture.stop();
    assert!(!contains(&pcap, b"plaintext-canary-5150"), "plaintext left the node while it had no configuration");
    sb.start_controller().unwrap();
    sb.save().unwrap();
    wait_for("the restarted node to carry traffic again", Duration::from_secs(60), || {
        (call(&sb, "http://vault:8080/public").map(|r| r.0) == Some(200)).then_some(())
    });

    // 6. Floods against a pod's HBONE port: reset-after-connect and idle connections; the
    // node's ztunnel keeps serving.
    let target = SocketAddr::from((vault_ip, 15008));
    let idle = sb
        .in_node("node-1", move || {
            for _ in 0..2000 {
                if let Ok(s) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            }
            (0..300)
                .filter_map(|_| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(!idle.is_empty(), "the flood connected");
    let (code, body) = call(&sb, "http://vault:8080/public").unwrap();
    assert_eq!(code, 200, "served during the flood: {body}");
    drop(idle);

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
