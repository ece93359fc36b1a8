//! The Kubernetes source and TokenReview authentication with a real kube-rs client, against a
//! fake API server that replays recorded responses (no API server runs on these machines).

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_controller::auth::Authenticator;
use ambit_controller::index::{Event, Index};
use ambit_controller::source::kube::{spawn_watchers, TokenReviewer};
use ambit_controller::source::Rejections;
use ambit_controller::translate::MeshSettings;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kube");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

/// A watch response: the recorded events, then the connection stays open like a real watch.
fn watch(events: String) -> Response<Body> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        events.lines().map(|l| Ok(Frame::data(Bytes::from(format!("{l}\n"))))).collect();
    let stream = futures::stream::iter(frames).chain(futures::stream::pending());
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn empty_list(kind: &str) -> String {
    format!(
        "{{\"kind\":\"{kind}List\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"51234\"}},\"items\":[]}}"
    )
}

#[derive(Default)]
struct ApiServer {
    /// (method, path, body) of every request.
    requests: Mutex<Vec<(String, String, String)>>,
    secret: Mutex<Option<String>>,
    lease: Mutex<Option<serde_json::Value>>,
    /// PATCHes still to refuse with 500 (an API server having a bad moment).
    failing_patches: Mutex<u32>,
}

impl ApiServer {
    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let is_watch = req.uri().query().unwrap_or("").contains("watch=true");
        let body = String::from_utf8_lossy(&req.into_body().collect().await.unwrap().to_bytes()).into_owned();
        self.requests.lock().unwrap().push((method.clone(), path.clone(), body.clone()));
        let resource = path.rsplit('/').next().unwrap_or("").to_owned();
        match (method.as_str(), path.as_str()) {
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => json(201, fixture("tokenreview.response.json")),
            ("GET", "/api/v1/namespaces/ambit-system/secrets/ambit-ca-root") => {
                match self.secret.lock().unwrap().clone() {
                    Some(s) => json(200, s),
                    None => json(404, fixture("secret.notfound.json")),
                }
            }
            ("POST", "/api/v1/namespaces/ambit-system/secrets") => {
                *self.secret.lock().unwrap() = Some(body.clone());
                json(201, body)
            }
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/ambit-system/leases/ambit-controller") => {
                match self.lease.lock().unwrap().clone() {
                    Some(l) => json(200, l.to_string()),
                    None => json(404, fixture("secret.notfound.json")),
                }
            }
            ("POST", "/apis/coordination.k8s.io/v1/namespaces/ambit-system/leases") => {
                let mut lease: serde_json::Value = serde_json::from_str(&body).unwrap();
                lease["metadata"]["resourceVersion"] = "1".into();
                *self.lease.lock().unwrap() = Some(lease.clone());
                json(201, lease.to_string())
            }
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ambit-system/leases/ambit-controller") => {
                // Optimistic concurrency, as the API server does it.
                let mut lease: serde_json::Value = serde_json::from_str(&body).unwrap();
                let mut stored = self.lease.lock().unwrap();
                let current = stored.as_ref().map(|l| l["metadata"]["resourceVersion"].clone());
                if current.as_ref() != Some(&lease["metadata"]["resourceVersion"]) {
                    return json(409, fixture("secret.notfound.json").replace("404", "409"));
                }
                let next = current.and_then(|v| v.as_str()?.parse::<u64>().ok()).unwrap_or(0) + 1;
                lease["metadata"]["resourceVersion"] = next.to_string().into();
                *stored = Some(lease.clone());
                json(200, lease.to_string())
            }
            ("PATCH", _) => {
                let mut failing = self.failing_patches.lock().unwrap();
                if *failing > 0 {
                    *failing -= 1;
                    return json(500, fixture("secret.notfound.json").replace("404", "500"));
                }
                json(200, body)
            }
            ("GET", "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web") => {
                json(200, fixture("httproute.get.json"))
            }
            ("GET", _) if is_watch => match resource.as_str() {
                "pods" => watch(fixture("pods.watch.jsonl")),
                "httproutes" => watch(fixture("httproutes.watch.jsonl")),
                _ => watch(String::new()),
            },
            ("GET", _) => match resource.as_str() {
                "namespaces" => json(200, fixture("namespaces.list.json")),
                "pods" => json(200, fixture("pods.list.json")),
                "services" => json(200, fixture("services.list.json")),
                "authorizationpolicies" => json(200, fixture("authorizationpolicies.list.json")),
                "httproutes" => json(200, fixture("httproutes.list.json")),
                other => json(200, empty_list(other)),
            },
            _ => json(404, fixture("secret.notfound.json")),
        }
    }
}

async fn api_server() -> (SocketAddr, Arc<ApiServer>, kube::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(ApiServer::default());
    let s = server.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(s.respond(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (addr, server, kube::Client::try_from(config).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_feed_the_index_from_lists_and_watch_events() {
    let (_, _server, client) = api_server().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(64);
    let rejections = Rejections::default();
    spawn_watchers(client, tx, rejections.clone(), tokio::sync::watch::channel(true).1);
    let mut index = Index::new(MeshSettings::default());
    let uid = |name: &str| format!("Kubernetes//Pod/shop/{name}");
    let mut published = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Lists bring cart (enrolled: the namespace is ambient) and its service; the pod watch then
    // adds front-1 and deletes cart. Kinds arrive in any order: wait for all of it.
    while !(published.get(&uid("front-1")) == Some(&true)
        && published.get(&uid("cart-6d9f7c8b5-x2k4q")) == Some(&false)
        && published.get("shop/cart.shop.svc.cluster.local") == Some(&true)
        && rejections.all().contains_key("AuthorizationPolicy shop/typo"))
    {
        let batch = tokio::time::timeout_at(deadline, rx.recv()).await.expect("events in time").unwrap();
        for change in index.apply(batch) {
            published.insert(change.name.clone(), change.body.is_some());
        }
    }
    assert_eq!(published.get("shop/cart.shop.svc.cluster.local"), Some(&true));
    let cart_workload_name = index.store().pods(Some("shop")).map(|p| p.metadata.name.clone()).collect::<Vec<_>>();
    assert_eq!(cart_workload_name, vec!["front-1"]);
    // The recorded policy with a typo'd action is rejected by name and field.
    let rejected = rejections.all();
    let r = &rejected["AuthorizationPolicy shop/typo"][0];
    assert_eq!(r.field, "spec.action");
    assert!(r.reason.contains("DENNY"), "{}", r.reason);
}

#[tokio::test]
async fn token_review_yields_the_service_account_and_node() {
    let (_, server, client) = api_server().await;
    let reviewer = TokenReviewer::new(client, "cluster.local".into(), vec!["istio-ca".into()]);
    let caller = reviewer.authenticate("eyJhbGciOiJSUzI1NiJ9.recorded.token").await.unwrap();
    assert_eq!(caller.identity.to_string(), "spiffe://cluster.local/ns/ambit-system/sa/ztunnel");
    assert_eq!(caller.node.as_deref(), Some("node-1"));
    assert_eq!(caller.pod.as_deref(), Some("ztunnel-8xk2q"));
    let requests = server.requests.lock().unwrap();
    let (_, _, body) = requests.iter().find(|(_, p, _)| p.ends_with("tokenreviews")).unwrap();
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent["spec"]["token"], "eyJhbGciOiJSUzI1NiJ9.recorded.token");
    assert_eq!(sent["spec"]["audiences"][0], "istio-ca");
}

#[tokio::test]
async fn the_root_is_created_in_a_secret_once_and_reloaded() {
    use clap::Parser;
    let (_, server, client) = api_server().await;
    let config = ambit_controller::config::Config::try_parse_from(["controller"]).unwrap();
    let first = ambit_controller::source::kube::load_or_create_root_secret(&client, &config).await.unwrap();
    assert!(server.secret.lock().unwrap().as_ref().unwrap().contains("root-key.pem"));
    let again = ambit_controller::source::kube::load_or_create_root_secret(&client, &config).await.unwrap();
    assert_eq!(first.root_der(), again.root_der(), "a restart keeps the root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_written_as_status_conditions() {
    let (_, server, client) = api_server().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(64);
    spawn_watchers(client, tx, Rejections::default(), tokio::sync::watch::channel(true).1);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let path = "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/typo/status";
    for _ in 0..200 {
        let requests = server.requests.lock().unwrap().clone();
        if let Some((method, _, body)) = requests.iter().find(|(_, p, _)| p == path) {
            assert_eq!(method, "PATCH");
            let patch: serde_json::Value = serde_json::from_str(body).unwrap();
            let cond = &patch["status"]["conditions"][0];
            assert_eq!(cond["type"], "Accepted");
            assert_eq!(cond["status"], "False");
            assert!(cond["message"].as_str().unwrap().contains("spec.action"), "{cond}");
            assert_eq!(patch["kind"], "AuthorizationPolicy");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no status written for the rejected policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_its_statuses_and_writes_them_when_it_leads() {
    let (_, server, client) = api_server().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(64);
    let (lead, leader) = tokio::sync::watch::channel(false);
    spawn_watchers(client, tx, Rejections::default(), leader);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let path = "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/typo/status";
    let written = || server.requests.lock().unwrap().iter().any(|(m, p, _)| m == "PATCH" && p == path);
    // The index is fed (the event is there) but a follower writes nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!written(), "a follower wrote a status");
    lead.send_replace(true);
    for _ in 0..200 {
        if written() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the held status was not written on taking the lead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_status_is_written_per_parent_as_gateway_api_defines_it() {
    let (_, server, client) = api_server().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(64);
    spawn_watchers(client, tx, Rejections::default(), tokio::sync::watch::channel(true).1);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let path = |name: &str| format!("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/{name}/status");
    let patches_of = |name: &str| {
        let requests = server.requests.lock().unwrap().clone();
        requests
            .iter()
            .filter(|(m, p, _)| m == "PATCH" && *p == path(name))
            .map(|(_, _, body)| serde_json::from_str::<serde_json::Value>(body).unwrap())
            .collect::<Vec<_>>()
    };
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        (good, bad) = (patches_of("reviews-v1"), patches_of("bad-path"));
        if good.len() >= 2 && !bad.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(good.len() >= 2 && !bad.is_empty(), "route statuses written: {good:?} {bad:?}");
    let condition = |entry: &serde_json::Value, type_: &str| {
        let conds = entry["conditions"].as_array().unwrap().clone();
        conds.into_iter().find(|c| c["type"] == type_)
    };
    // The accepted route: one entry per Service parent, the parentRef as written, our
    // controller, applied only if the object is still the version it was computed from.
    let first = &good[0];
    assert_eq!(first["kind"], "HTTPRoute");
    assert_eq!(first["metadata"]["resourceVersion"], "50410");
    assert!(first["status"].get("conditions").is_none(), "routes have no top-level conditions: {first}");
    let parent = &first["status"]["parents"][0];
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "reviews", "port": 9080})
    );
    assert_eq!(parent["controllerName"], "ambit.dev/waypoint-controller");
    let accepted = condition(parent, "Accepted").unwrap();
    assert_eq!((&accepted["status"], &accepted["observedGeneration"]), (&"True".into(), &3.into()));
    assert_eq!(condition(parent, "ResolvedRefs").unwrap()["status"], "True");
    // Then an edit is rejected: generation 4 is refused naming the field.
    let edited = &good[good.len() - 1]["status"]["parents"][0];
    let refused = condition(edited, "Accepted").unwrap();
    assert_eq!((&refused["status"], &refused["reason"]), (&"False".into(), &"UnsupportedValue".into()));
    assert_eq!(refused["observedGeneration"], 4);
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("spec.rules[0].matches[0].path.type"), "{message}");
    assert!(condition(edited, "ResolvedRefs").is_none(), "references not evaluated: {edited}");
    // A route with a Service and a Gateway parent: Istio's entry for its Gateway is kept as it
    // was, ours is added for the Service only.
    let parents = bad[0]["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "istio.io/gateway-controller");
    assert_eq!(parents[0]["conditions"][0]["lastTransitionTime"], "2026-11-20T09:21:05Z");
    assert_eq!(parents[1]["parentRef"]["kind"], "Service");
    let accepted = condition(&parents[1], "Accepted").unwrap();
    assert_eq!(accepted["status"], "False");
    assert!(accepted["message"].as_str().unwrap().contains("spec.rules[0].matches[0].path.type"), "{accepted}");
    assert!(accepted["lastTransitionTime"].is_string());
    // A route whose only parent is a Gateway is not ours to write.
    assert!(patches_of("ingress-only").is_empty(), "no status for a Gateway-only route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_statuses_are_applied_to_gateways_and_services() {
    use ambit_controller::deploy::status::{status_resource, write_status_patches, StatusPatch};
    use ambit_controller::model::Kind;
    let (_, server, client) = api_server().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(write_status_patches(client, rx));
    let conditions =
        serde_json::json!([{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "m"}]);
    for (kind, name) in [(Kind::Gateway, "waypoint"), (Kind::Service, "reviews")] {
        let status = serde_json::json!({"conditions": conditions});
        let patch = StatusPatch {
            resource: status_resource(kind).unwrap(),
            namespace: "shop".into(),
            name: name.into(),
            status,
        };
        tx.send(patch).await.unwrap();
    }
    let want = [
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status",
        "/api/v1/namespaces/shop/services/reviews/status",
    ];
    for path in want {
        let mut found = None;
        for _ in 0..200 {
            found = server.requests.lock().unwrap().iter().find(|(_, p, _)| p == path).cloned();
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (method, _, body) = found.unwrap_or_else(|| panic!("no PATCH of {path}"));
        assert_eq!(method, "PATCH");
        let patch: serde_json::Value = serde_json::from_str(&body).unwrap();
        let cond = &patch["status"]["conditions"][0];
        assert_eq!(cond["type"], "Programmed");
        assert!(cond["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{cond}");
    }
}

/// An ingress Gateway's status (listeners with their conditions, addresses) is applied to the
/// Gateway; a route naming it gets our entry for that parent merged into what the route holds
/// (read first): another controller's entry and our own Service-parent entry stay as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_statuses_are_written_to_the_gateway_and_merged_into_routes() {
    use ambit_controller::deploy::status::{write_status_patches, StatusSync};
    use ambit_controller::manifest::{parse_object, Parsed};
    use ambit_controller::store::Store;
    use ambit_controller::translate::MeshSettings;
    let (_, server, client) = api_server().await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(write_status_patches(client, rx));
    let mut store = Store::default();
    let route: serde_json::Value = serde_json::from_str(&fixture("httproute.get.json")).unwrap();
    for v in [
        serde_yaml::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}").unwrap(),
        serde_yaml::from_str("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}").unwrap(),
        serde_yaml::from_str("apiVersion: v1\nkind: Service\nmetadata: {name: public, namespace: ingress, labels: {gateway.networking.k8s.io/gateway-name: public}}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.30, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}").unwrap(),
        serde_yaml::from_str("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: public, namespace: ingress}\nspec:\n  gatewayClassName: ambit\n  listeners:\n  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}").unwrap(),
        route,
    ] {
        let Parsed::Object(o) = parse_object("recorded", v).unwrap() else { panic!() };
        store.upsert(*o);
    }
    let mut sync = StatusSync::new(tx);
    sync.sync(&store, &MeshSettings::default());
    let patch_of = |path: &str| -> Option<serde_json::Value> {
        let requests = server.requests.lock().unwrap();
        let (_, _, body) = requests.iter().find(|(m, p, _)| m == "PATCH" && p == path)?;
        serde_json::from_str(body).ok()
    };
    let mut gateway = None;
    let mut route = None;
    for _ in 0..200 {
        gateway = patch_of("/apis/gateway.networking.k8s.io/v1/namespaces/ingress/gateways/public/status");
        route = patch_of("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web/status");
        if gateway.is_some() && route.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gateway = gateway.expect("the Gateway's status applied");
    let status = &gateway["status"];
    assert_eq!(status["addresses"], serde_json::json!([{"type": "IPAddress", "value": "203.0.113.7"}]));
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(listeners[0]["name"], "http");
    assert_eq!(listeners[0]["attachedRoutes"], 1);
    assert_eq!(listeners[0]["supportedKinds"][0]["kind"], "HTTPRoute");
    let https = &listeners[1];
    let resolved = https["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs").unwrap();
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("InvalidCertificateRef"))
    );
    assert!(https["conditions"].as_array().unwrap().iter().all(|c| c["lastTransitionTime"].is_string()));
    assert_eq!(status["conditions"][0]["reason"], "ListenersNotValid");

    let route = route.expect("the route's parents applied");
    assert_eq!(route["metadata"]["resourceVersion"], "50510", "guarded by the version read");
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 3, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "example.com/edge-controller", "another controller's entry kept");
    assert_eq!(parents[1]["parentRef"]["kind"], "Service", "our Service-parent entry left to its writer");
    assert_eq!(parents[2]["parentRef"]["name"], "public");
    assert_eq!(parents[2]["controllerName"], "ambit.dev/waypoint-controller");
    assert_eq!(parents[2]["conditions"][0]["type"], "Accepted");
    assert_eq!(parents[2]["conditions"][0]["status"], "True");
    assert_eq!(parents[2]["conditions"][1]["reason"], "ResolvedRefs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_objects_and_the_root_configmap_are_applied_once() {
    use ambit_controller::deploy::apply::{apply_owned, KubeDeployer};
    use ambit_controller::deploy::waypoint_objects::WaypointSettings;
    use ambit_controller::deploy::Deploy;
    use ambit_controller::manifest::{parse_object, Parsed};
    use ambit_controller::store::Store;
    let (_, server, client) = api_server().await;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(apply_owned(client, rx));
    let settings = WaypointSettings {
        image: "ambit/waypoint:test".into(),
        xds_address: "ambit-controller.ambit-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
        otlp_endpoint: None,
        control_plane_account: "ambit-system/ambit-controller".into(),
        token_audience: "istio-ca".into(),
        image_pull_secrets: vec![],
        path_normalization: ambit_controller::config::PathNormalization::Base,
    };
    let mut deployer = KubeDeployer::new(settings, "-----BEGIN CERTIFICATE-----\nroot\n".into(), tx);
    let mut store = Store::default();
    for yaml in [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: 7f6c}\nspec: {gatewayClassName: istio-waypoint}",
    ] {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let Parsed::Object(o) = parse_object("t", v).unwrap() else { panic!() };
        store.upsert(*o);
    }
    deployer.sync(&store);
    deployer.sync(&store);
    let want = [
        "/api/v1/namespaces/shop/serviceaccounts/waypoint",
        "/apis/apps/v1/namespaces/shop/deployments/waypoint",
        "/api/v1/namespaces/shop/services/waypoint",
        "/api/v1/namespaces/shop/configmaps/istio-ca-root-cert",
    ];
    let patches = || server.requests.lock().unwrap().iter().filter(|(m, _, _)| m == "PATCH").count();
    for _ in 0..200 {
        if patches() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer: a second round of writes (there must be none) would land by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen: Vec<_> = server.requests.lock().unwrap().iter().filter(|(m, _, _)| m == "PATCH").cloned().collect();
    assert_eq!(seen.len(), want.len(), "each object applied once: {:?}", seen.iter().map(|s| &s.1).collect::<Vec<_>>());
    for path in want {
        let (_, _, body) = seen.iter().find(|(_, p, _)| p == path).unwrap_or_else(|| panic!("no apply of {path}"));
        let object: serde_json::Value = serde_json::from_str(body).unwrap();
        if path.ends_with("istio-ca-root-cert") {
            assert!(object["data"]["root-cert.pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
        } else {
            let owner = &object["metadata"]["ownerReferences"][0];
            assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("Gateway"), Some("7f6c")), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_until_its_lease_expires() {
    use ambit_controller::source::lease::try_acquire;
    use k8s_openapi::api::coordination::v1::Lease;
    let (_, server, client) = api_server().await;
    let api: kube::Api<Lease> = kube::Api::namespaced(client, "ambit-system");
    assert!(try_acquire(&api, "replica-a").await.unwrap(), "no lease yet: a creates it and leads");
    assert!(!try_acquire(&api, "replica-b").await.unwrap(), "b waits while a renews");
    assert!(try_acquire(&api, "replica-a").await.unwrap(), "a renews");
    // a stops renewing: its last renewal long ago.
    {
        let mut lease = server.lease.lock().unwrap();
        let l = lease.as_mut().unwrap();
        l["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z".into();
    }
    assert!(try_acquire(&api, "replica-b").await.unwrap(), "b takes over an expired lease");
    let lease = server.lease.lock().unwrap().clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!try_acquire(&api, "replica-a").await.unwrap(), "a, back, does not take it back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_is_retried_until_it_lands() {
    use ambit_controller::deploy::apply::{apply_owned, Owned};
    let (_, server, client) = api_server().await;
    *server.failing_patches.lock().unwrap() = 2;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(apply_owned(client, rx));
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("", "v1", "ConfigMap"),
        "configmaps",
    );
    let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-ca-root-cert", "namespace": "ambit-system"}, "data": {"root-cert.pem": "x"}});
    tx.send(Owned { resource, namespace: "ambit-system".into(), name: "istio-ca-root-cert".into(), body })
        .await
        .unwrap();
    let patches = || server.requests.lock().unwrap().iter().filter(|(m, _, _)| m == "PATCH").count();
    for _ in 0..600 {
        if patches() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(patches(), 3, "refused twice, then applied");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(patches(), 3, "nothing more once it landed");
}
