//! The ingress gateway end to end on the sandbox (root), with real clients in the outside
//! world: curl (HTTP, HTTPS checking the gateway's certificate against the CA that signed the
//! Secret's, TLS passed through to a backend's own certificate) and the sample TCP client.
//!
//! One scenario: a Gateway of class `ambit` in its own namespace, deployed by the controller
//! as the proxy in ingress mode, with HTTP, HTTPS (SNI-chosen certificates from Secrets), TLS
//! passthrough and TCP listeners; routes from the app's namespace attach (allowedRoutes All).
//! An outside client reaches the app over HTTP and HTTPS, a 50/50 split spreads requests over
//! both versions, an AuthorizationPolicy targeting the Gateway denies a path, a TLSRoute
//! passes TLS through to the backend (which presents its own certificate), a TCPRoute copies
//! bytes. Upstream traffic is HBONE with the gateway's identity: the app's ztunnel logs it and
//! an L4 policy allowing only that identity lets it in. A listener whose Secret is missing and
//! one whose key does not match its certificate are reported in the Gateway's status, and the
//! other listeners keep serving; a route naming no listener gets `NoMatchingParent`, a
//! missing backend `BackendNotFound`.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use ambit_e2e::sandbox::{Options, Sandbox};

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    ambit_e2e::wait_for(what, Duration::from_secs(30), f)
}

fn pod_yaml(name: &str, ns: &str, app: &str, node: &str, args: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {app}\n  containers: [{{name: echo, image: ambit/echo, args: [{args}], ports: [{{containerPort: 8080}}]}}]\n"
    )
}

/// A CA, and per name list a server certificate signed by it (PEM: CA, then chain and key).
fn issue(leaves: &[&[&str]]) -> (String, Vec<(String, String)>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ingress test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let issued = leaves
        .iter()
        .map(|names| {
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (leaf.pem(), key.serialize_pem())
        })
        .collect();
    (ca.pem(), issued)
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn secret(name: &str, chain: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ingress}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(chain),
        indent(key)
    )
}

/// curl in the outside world: (HTTP status, body), or the failure.
fn curl(sb: &Sandbox, args: &[&str]) -> Result<(u16, String), String> {
    let mut cmd = vec!["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"];
    cmd.extend_from_slice(args);
    let out = sb.exec_world(&cmd).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("curl {args:?}: {} {text}", String::from_utf8_lossy(&out.stderr)));
    }
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

fn pod_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn ingress_gateway_serves_http_https_tls_and_tcp_from_outside() {
    let (opts, scratch) = Options::for_test_named("ing");
    assert!(Path::new("/usr/bin/curl").exists(), "curl is required (scripts/packages.sh installs it)");
    let mut sb = Sandbox::up(opts).unwrap();

    let (ca, issued) = issue(&[&["shop.example.com"], &["*.example.com"]]);
    let ((chain, key), (wild_chain, wild_key)) = (issued[0].clone(), issued[1].clone());
    let (_, other) = issue(&[&["broken.example.com"]]);
    let other_chain = other[0].0.clone();
    let ca_file = scratch.join("ca.pem");
    ambit_e2e::write_file(&scratch, "ca.pem", &ca);
    let l4_allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gateway-only, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/ingress/sa/public]}}]}]\n";
    let dir = scratch.join("app");
    ambit_e2e::write_file(
        &dir,
        "app.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n".to_owned(),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ingress}\n".to_owned(),
            pod_yaml("web-v1", "shop", "web", "node-1", "--tcp-port, '9000'"),
            pod_yaml("web-v2", "shop", "web-v2", "node-2", ""),
            pod_yaml("secure", "shop", "secure", "node-2", "--tls-port, '8443', --tls-names, secure.example.com"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp, port: 9000, targetPort: 9000}]}\n".to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web-v2, namespace: shop}\nspec: {selector: {app: web-v2}, ports: [{name: http, port: 80, targetPort: 8080}]}\n".to_owned(),
            // A service behind a waypoint that ingress traffic must go through too.
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n".to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: guarded, namespace: shop, labels: {istio.io/use-waypoint: waypoint, istio.io/ingress-use-waypoint: 'true'}}\nspec: {selector: {app: web-v2}, ports: [{name: http, port: 80, targetPort: 8080}]}\n".to_owned(),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: guarded, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: '', name: guarded}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/blocked]}}]}]\n".to_owned(),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: guarded, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: http}]\n  hostnames: [guarded.example.com]\n  rules: [{backendRefs: [{name: guarded, port: 80}]}]\n".to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: secure, namespace: shop}\nspec: {selector: {app: secure}, ports: [{name: tls, port: 443, targetPort: 8443}]}\n".to_owned(),
            secret("shop-tls", &chain, &key),
            secret("wild-tls", &wild_chain, &wild_key),
            // A key that is not its certificate's.
            secret("broken-tls", &other_chain, &key),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: https, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-tls}]}, allowedRoutes: {namespaces: {from: All}}}\n  - {name: wild, port: 443, protocol: HTTPS, hostname: '*.example.com', tls: {certificateRefs: [{name: wild-tls}]}, allowedRoutes: {namespaces: {from: All}}}\n  - {name: broken, port: 443, protocol: HTTPS, hostname: broken.example.com, tls: {certificateRefs: [{name: broken-tls}]}, allowedRoutes: {namespaces: {from: All}}}\n  - {name: missing, port: 443, protocol: HTTPS, hostname: missing.example.com, tls: {certificateRefs: [{name: nope}]}, allowedRoutes: {namespaces: {from: All}}}\n  - {name: passthrough, port: 8443, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}\n  - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {namespaces: {from: All}}}\n".to_owned(),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress}]\n  hostnames: [shop.example.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /split}}]\n    backendRefs: [{name: web, port: 80, weight: 50}, {name: web-v2, port: 80, weight: 50}]\n  - backendRefs: [{name: web, port: 80}]\n".to_owned(),
            // Everything else under example.com: web-v2, on the wildcard listener only.
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: wild, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: wild}]\n  rules: [{backendRefs: [{name: web-v2, port: 80}]}]\n".to_owned(),
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: secure, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: passthrough}]\n  hostnames: [secure.example.com]\n  rules: [{backendRefs: [{name: secure, port: 443}]}]\n".to_owned(),
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: tcp, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: tcp}]\n  rules: [{backendRefs: [{name: web, port: 9000}]}]\n".to_owned(),
            // Naming a listener that does not exist, with a backend that does not either.
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ghost, namespace: shop}\nspec:\n  parentRefs: [{name: public, namespace: ingress, sectionName: nope}]\n  rules: [{backendRefs: [{name: nowhere, port: 80}]}]\n".to_owned(),
            // Its ports keep it to the HTTP listeners: on TLS and TCP listeners a DENY rule's
            // HTTP part cannot be checked, so Istio's L4 semantics apply what remains (ports)
            // and a paths-only DENY would refuse every connection there.
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: ingress}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: public}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*], ports: [\"80\", \"443\"]}}]}]\n".to_owned(),
            l4_allow.to_owned(),
        ]
        .join("---\n"),
    );
    sb.apply(&dir).unwrap();
    let gw_ip = sb.state.pods.get("ingress/public-0").expect("the controller deployed the gateway").ip.to_string();
    assert!(!sb.captured("ingress/public-0"), "the gateway's own pod is not captured");
    let resolve = |host: &str, port: u16| format!("{host}:{port}:{gw_ip}");

    // HTTP from outside, by Host.
    let (code, body) = wait_for("HTTP through the gateway", || {
        curl(&sb, &["-H", "host: shop.example.com", &format!("http://{gw_ip}/")]).ok().filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    assert_eq!(pod_of(&body), "web-v1", "{body}");
    let (code, _) = curl(&sb, &["-H", "host: other.example.com", &format!("http://{gw_ip}/")]).unwrap();
    assert_eq!(code, 404, "a host no route serves");

    // istio.io/ingress-use-waypoint: the gateway goes through the service's waypoint, whose
    // policy (targeting the service) applies to ingress traffic too.
    let guarded = |path: &str| curl(&sb, &["-H", "host: guarded.example.com", &format!("http://{gw_ip}{path}")]);
    let (code, body) =
        wait_for("the guarded service through its waypoint", || guarded("/").ok().filter(|(c, _)| *c == 200));
    assert_eq!(pod_of(&body), "web-v2", "{body}");
    assert_eq!(guarded("/blocked").unwrap().0, 403, "the waypoint's policy applies to the gateway's request");
    assert_eq!(code, 200);

    // HTTPS: the certificate from the Secret, verified by curl against the CA that signed it.
    let https = |path: &str| {
        curl(
            &sb,
            &[
                "--cacert",
                ca_file.to_str().unwrap(),
                "--resolve",
                &resolve("shop.example.com", 443),
                &format!("https://shop.example.com{path}"),
            ],
        )
    };
    let (code, body) = https("/").unwrap();
    assert_eq!((code, pod_of(&body)), (200, "web-v1".to_owned()), "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
    // curl spoke HTTP/2 (ALPN); the backend declares nothing, so it gets HTTP/1.1 with the
    // name the client asked for.
    assert_eq!(echoed["protocol"], "HTTP/1.1", "{body}");
    assert_eq!(echoed["headers"]["host"], "shop.example.com", "{body}");

    // The wildcard listener: its own certificate and routes. A request on its connection for
    // a host the exact listener claims is misdirected (421), never served by the wildcard's
    // routes (listeners sharing a port do not share routes).
    let wild = |host: &str| {
        let resolve = resolve("x.example.com", 443);
        let header = format!("host: {host}");
        curl(
            &sb,
            &["--cacert", ca_file.to_str().unwrap(), "--resolve", &resolve, "-H", &header, "https://x.example.com/"],
        )
    };
    let (code, body) = wild("x.example.com").unwrap();
    assert_eq!((code, pod_of(&body)), (200, "web-v2".to_owned()), "{body}");
    assert_eq!(wild("shop.example.com").unwrap().0, 421);

    // The split, both ways.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (code, body) = https("/split").unwrap();
        assert_eq!(code, 200);
        seen.insert(pod_of(&body));
    }
    assert_eq!(seen, ["web-v1".to_owned(), "web-v2".to_owned()].into(), "both versions answer the split");

    // An AuthorizationPolicy targeting the Gateway, on both listeners.
    assert_eq!(https("/admin/x").unwrap().0, 403);
    assert_eq!(curl(&sb, &["-H", "host: shop.example.com", &format!("http://{gw_ip}/admin")]).unwrap().0, 403);

    // The broken listeners are not served, yet their hostnames stay claimed: no certificate
    // is served for them (not even the wildcard's, which would route them elsewhere).
    for host in ["broken.example.com", "missing.example.com"] {
        let refused = curl(&sb, &["-k", "--resolve", &resolve(host, 443), &format!("https://{host}/")]);
        assert!(refused.is_err(), "{host}: {refused:?}");
    }

    // TLS passthrough: the backend's own certificate (self-signed for secure.example.com),
    // the request answered by the backend.
    let (code, body) = wait_for("TLS passthrough", || {
        curl(&sb, &["-k", "-v", "--resolve", &resolve("secure.example.com", 8443), "https://secure.example.com:8443/"])
            .ok()
    });
    assert_eq!((code, pod_of(&body)), (200, "secure".to_owned()), "{body}");
    let unknown =
        curl(&sb, &["-k", "--resolve", &resolve("other.example.com", 8443), "https://other.example.com:8443/"]);
    assert!(unknown.is_err(), "an SNI no TLSRoute names is refused: {unknown:?}");

    // TCP.
    let out = wait_for("TCP through the gateway", || {
        let out = sb.exec_world(&["ambit-sample", "tcp-client", &format!("{gw_ip}:9000"), "--send", "hello"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("pod=web-v1").then_some(text)
    });
    assert!(out.contains("pod=web-v1"), "{out}");

    // An open TCP connection lasts only while the configuration allows it: a DENY on the TCP
    // port, applied while the client waits to send, closes it (the greeting came through, the
    // echo of what it sends afterwards does not); new connections are refused; removing the
    // policy lets them through again.
    let client = std::process::Command::new("ip")
        .args(["netns", "exec", &sb.netns_name("world")])
        .arg(ambit_e2e::sandbox::bin_dir().join("ambit-sample"))
        .args(["tcp-client", &format!("{gw_ip}:9000"), "--send", "still-allowed?", "--wait-ms", "4000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client is connected (and greeted) well before it sends.
    let until = std::time::Instant::now() + Duration::from_millis(800);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        std::thread::park_timeout(left);
    }
    let deny_tcp = ambit_e2e::write_file(
        &scratch.join("deny-tcp"),
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-tcp, namespace: ingress}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: public}]\n  action: DENY\n  rules: [{to: [{operation: {ports: [\"9000\"]}}]}]\n",
    );
    sb.apply(&deny_tcp).unwrap();
    let out = client.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(seen.contains("pod=web-v1") && !seen.contains("still-allowed?"), "closed when the DENY came: {seen:?}");
    let refused = sb.exec_world(&["ambit-sample", "tcp-client", &format!("{gw_ip}:9000"), "--send", "x"]).unwrap();
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("pod="), "a new connection is denied");
    sb.delete(&deny_tcp).unwrap();
    wait_for("TCP allowed again", || {
        let out = sb.exec_world(&["ambit-sample", "tcp-client", &format!("{gw_ip}:9000"), "--send", "again"]).ok()?;
        String::from_utf8_lossy(&out.stdout).contains("again").then_some(())
    });

    // Upstream is HBONE with the gateway's identity: web-v1's ztunnel logs the TCP connection
    // (closed) as the gateway's, and an L4 policy allowing only that identity let every
    // request above in.
    wait_for("web-v1's ztunnel naming the gateway", || {
        let log = sb.log("ztunnel-node-1");
        log.lines().any(|l| l.contains("direction=\"inbound\"") && l.contains("ns/ingress/sa/public")).then_some(())
    });

    // Status, as the controller shows it in directory mode.
    let admin = |path: &str| -> serde_json::Value {
        let response = sb.get_in_node("node-1", 15014, path).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    };
    let statuses = admin("/debug/waypoints");
    let gw = statuses.as_array().unwrap().iter().find(|s| s["kind"] == "Gateway" && s["name"] == "public").unwrap();
    let listener =
        |name: &str| gw["status"]["listeners"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap().clone();
    let condition = |l: &serde_json::Value, t: &str| {
        l["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone()
    };
    assert_eq!(condition(&listener("https"), "Programmed")["status"], "True");
    assert_eq!(listener("https")["attachedRoutes"], 1);
    assert_eq!(condition(&listener("broken"), "ResolvedRefs")["reason"], "InvalidCertificateRef");
    assert_eq!(condition(&listener("missing"), "ResolvedRefs")["reason"], "InvalidCertificateRef");
    assert!(condition(&listener("missing"), "ResolvedRefs")["message"].as_str().unwrap().contains("not found"));
    assert_eq!(gw["status"]["conditions"][0]["reason"], "ListenersNotValid");
    let routes = admin("/debug/routes");
    let route = |name: &str| routes.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone();
    let ghost = route("ghost");
    let parent = &ghost["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "ambit.dev/waypoint-controller");
    assert_eq!(parent["conditions"][0]["reason"], "NoMatchingParent", "{ghost}");
    assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound", "{ghost}");
    assert_eq!(route("secure")["status"]["parents"][0]["conditions"][0]["status"], "True");

    sb.down();
    let _ = std::fs::remove_dir_all(&scratch);
}
