//! The controller run in-process on a temporary manifest directory, talked to over TLS with
//! the shared xDS client, raw delta ADS streams and a real CA client.

// Test helpers outside #[test] functions unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_controller::config::Config;
use ambit_controller::run::{start, Running};
use ambit_shared::certs::{parse_pem_chain, WorkloadKey};
use ambit_shared::grpc;
use ambit_shared::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_shared::proto::ca::IstioCertificateRequest;
use ambit_shared::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_shared::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambit_shared::proto::google::rpc::Status as RpcStatus;
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION, GATEWAY};
use ambit_shared::telemetry::Readiness;
use ambit_shared::tls::control_plane_client_config;
use ambit_shared::xds::{self, Rejection, Update};
use ambit_shared::{Identity, MeshRoots};
use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const ZTUNNEL1_TOKEN: &str = "ztunnel-node-1-token-0123456789";
const ZTUNNEL2_TOKEN: &str = "ztunnel-node-2-token-0123456789";
const CART_TOKEN: &str = "cart-workload-token-0123456789";
const GATEWAY_TOKEN: &str = "public-gateway-token-0123456789";

struct Env {
    dir: PathBuf,
    running: Running,
    tls: Arc<rustls::ClientConfig>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join("manifests").join(file);
    // Write then rename, as editors and kubectl-like tools do.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn pod(name: &str, node: &str, sa: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, serviceAccountName: {sa}}}\nstatus: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80, targetPort: 8080}]}\n";

async fn env(name: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("ambit-controller-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let tokens = format!(
        "tokens:\n- token: {ZTUNNEL1_TOKEN}\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: node-1\n- token: {ZTUNNEL2_TOKEN}\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: node-2\n- token: {CART_TOKEN}\n  identity: spiffe://cluster.local/ns/shop/sa/cart\n- token: {GATEWAY_TOKEN}\n  identity: spiffe://cluster.local/ns/shop/sa/public\n"
    );
    std::fs::write(dir.join("tokens.yaml"), tokens).unwrap();
    write(
        &dir,
        "shop.yaml",
        &format!("{NAMESPACE}---\n{}---\n{SERVICE}", pod("cart-1", "node-1", "cart", "10.1.0.5", "cart")),
    );
    write(&dir, "front.yaml", &pod("front-1", "node-2", "front", "10.2.0.7", "front"));
    let (manifests, tokens, ca) = (dir.join("manifests"), dir.join("tokens.yaml"), dir.join("ca"));
    let args = [
        "controller",
        "--manifests",
        manifests.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--push-debounce-ms",
        "20",
        "--push-max-delay-ms",
        "200",
        "--cert-dns-names",
        "istiod.istio-system.svc",
    ];
    let config = Config::try_parse_from(args).unwrap();
    config.validate().unwrap();
    let running = start(&config, Readiness::default()).await.unwrap();
    let roots = MeshRoots::new(&parse_pem_chain(std::slice::from_ref(&running.root_pem)).unwrap()).unwrap();
    let tls = Arc::new(control_plane_client_config(&roots, vec![running.identity.clone()]).unwrap());
    Env { dir, running, tls }
}

/// (type, added names, removed names) of one update.
type Seen = (String, Vec<String>, Vec<String>);

/// Records everything the shared xDS client is told.
#[derive(Clone, Default)]
struct Recorder {
    held: Arc<Mutex<HashMap<String, BTreeMap<String, String>>>>,
    updates: Arc<Mutex<Vec<Seen>>>,
}

impl xds::Handler for Recorder {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        let mut held = self.held.lock().unwrap();
        let t = held.entry(update.type_url.to_owned()).or_default();
        let added: Vec<String> = update.added.iter().map(|r| r.name.clone()).collect();
        for r in update.added {
            t.insert(r.name, r.version);
        }
        for n in &update.removed {
            t.remove(n);
        }
        self.updates.lock().unwrap().push((update.type_url.to_owned(), added, update.removed));
        Vec::new()
    }
}

impl Recorder {
    fn names(&self, type_url: &str) -> Vec<String> {
        self.held.lock().unwrap().get(type_url).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
    fn take_updates(&self) -> Vec<Seen> {
        std::mem::take(&mut self.updates.lock().unwrap())
    }
}

/// Waits for a condition (a bound against hangs, not a performance assertion).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn shared_client(env: &Env, token: &str) -> (Recorder, tokio::task::JoinHandle<()>) {
    let node = xds::istio_node("ztunnel", "10.0.0.1", "ztunnel-x", "ambit-system", "node-1");
    let mut config = xds::Config::new(env.running.grpc_addr, env.tls.clone(), node, vec![ADDRESS, AUTHORIZATION]);
    config.token = Some(token.into());
    let (client, _) = xds::Client::new(config);
    let recorder = Recorder::default();
    (recorder.clone(), tokio::spawn(client.run(recorder)))
}

const CART: &str = "Kubernetes//Pod/shop/cart-1";
const FRONT: &str = "Kubernetes//Pod/shop/front-1";
const CART_SVC: &str = "shop/cart.shop.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_produce_exactly_the_expected_adds_and_removals() {
    let env = env("edits").await;
    let (rec, _client) = shared_client(&env, ZTUNNEL1_TOKEN);
    eventually("initial workloads and services", || rec.names(ADDRESS) == vec![CART, FRONT, CART_SVC]).await;
    rec.take_updates();

    // Label the namespace: both pods (and the service, whose namespace changed) are re-sent.
    write(&env.dir, "shop.yaml", &format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{}---\n{SERVICE}",
        pod("cart-1", "node-1", "cart", "10.1.0.5", "cart")
    ));
    eventually("pods re-sent", || rec.updates.lock().unwrap().iter().any(|u| u.1.contains(&FRONT.to_owned()))).await;
    let ups = rec.take_updates();
    let added: Vec<&String> = ups.iter().flat_map(|u| u.1.iter()).collect();
    assert!(added.contains(&&CART.to_owned()) && added.contains(&&FRONT.to_owned()), "{ups:?}");
    assert!(ups.iter().all(|u| u.2.is_empty()), "nothing removed: {ups:?}");

    // Add a pod in a new file: one add.
    write(&env.dir, "more.yaml", &pod("cart-2", "node-2", "cart", "10.2.0.8", "cart"));
    eventually("new pod", || rec.names(ADDRESS).contains(&"Kubernetes//Pod/shop/cart-2".to_owned())).await;
    assert_eq!(rec.take_updates(), vec![(ADDRESS.to_owned(), vec!["Kubernetes//Pod/shop/cart-2".to_owned()], vec![])]);

    // Delete the service: its removal, and the two pods it selected lose it.
    write(&env.dir, "shop.yaml", &format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{}",
        pod("cart-1", "node-1", "cart", "10.1.0.5", "cart")
    ));
    eventually("service removed", || !rec.names(ADDRESS).contains(&CART_SVC.to_owned())).await;
    let ups = rec.take_updates();
    let mut added: Vec<String> = ups.iter().flat_map(|u| u.1.clone()).collect();
    added.sort();
    assert_eq!(added, vec![CART.to_owned(), "Kubernetes//Pod/shop/cart-2".to_owned()]);
    assert_eq!(ups.iter().flat_map(|u| u.2.clone()).collect::<Vec<_>>(), vec![CART_SVC.to_owned()]);

    // Add a policy: one Authorization, plus the pods it selects (their policy list changes).
    write(&env.dir, "policy.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-front, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/front]}}]}]\n");
    eventually("policy", || rec.names(AUTHORIZATION) == vec!["shop/deny-front"]).await;

    // A malformed file is rejected and changes nothing else.
    write(
        &env.dir,
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {ports: [{port: seventy}]}\n",
    );
    write(&env.dir, "after.yaml", &pod("late-1", "node-1", "late", "10.1.0.9", "late"));
    eventually("later files still apply", || rec.names(ADDRESS).contains(&"Kubernetes//Pod/shop/late-1".to_owned()))
        .await;
    let rejected = env.running.shared.rejections.all();
    let r = rejected.iter().find(|(k, _)| k.ends_with("broken.yaml")).expect("broken.yaml rejected").1;
    assert_eq!(r[0].object, "Service shop/bad");
    assert_eq!(r[0].field, "spec.ports[0].port");
}

type Raw = (mpsc::Sender<DeltaDiscoveryRequest>, tonic::Streaming<DeltaDiscoveryResponse>);

async fn raw_stream(env: &Env, first: Vec<DeltaDiscoveryRequest>) -> Raw {
    raw_stream_as(env, ZTUNNEL2_TOKEN, first).await
}

async fn raw_stream_as(env: &Env, token: &str, first: Vec<DeltaDiscoveryRequest>) -> Raw {
    let (tx, rx) = mpsc::channel(16);
    for r in first {
        tx.send(r).await.unwrap();
    }
    let mut client = AggregatedDiscoveryServiceClient::new(grpc::channel(env.running.grpc_addr, env.tls.clone()));
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = client.delta_aggregated_resources(req).await.unwrap().into_inner();
    (tx, stream)
}

async fn next(stream: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("response in time").unwrap().unwrap()
}

fn subscribe(type_url: &str, initial: HashMap<String, String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { type_url: type_url.into(), initial_resource_versions: initial, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_subscriber_gets_only_what_changed() {
    let env = env("reconnect").await;
    tokio::time::sleep(Duration::from_millis(500)).await; // initial scan published
    let (_tx, mut stream) = raw_stream(&env, vec![subscribe(ADDRESS, HashMap::new())]).await;
    let first = next(&mut stream).await;
    let held: HashMap<String, String> = first.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    assert_eq!(held.len(), 3);
    drop(stream);

    // While it is away: cart-1 moves IP, front-1 goes away.
    write(
        &env.dir,
        "shop.yaml",
        &format!("{NAMESPACE}---\n{}---\n{SERVICE}", pod("cart-1", "node-1", "cart", "10.1.0.50", "cart")),
    );
    std::fs::remove_file(env.dir.join("manifests/front.yaml")).unwrap();
    eventually("published", || !env.running.shared.xds.snapshot(ADDRESS).contains_key(FRONT)).await;

    let (_tx, mut stream) = raw_stream(&env, vec![subscribe(ADDRESS, held)]).await;
    let resumed = next(&mut stream).await;
    assert_eq!(resumed.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec![CART]);
    assert_eq!(resumed.removed_resources, vec![FRONT]);
}

/// An ingress gateway's configuration holds its listeners' private keys: only the gateway's
/// own identity gets it, whether others subscribe by wildcard or by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_configuration_goes_to_the_gateway_alone() {
    let env = env("gateway-config").await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "tls", "namespace": "shop"},
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()},
    });
    write(
        &env.dir,
        "gateway.yaml",
        &format!("{secret}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: public, namespace: shop}}\nspec:\n  gatewayClassName: ambit\n  listeners: [{{name: https, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: tls}}]}}}}]\n"),
    );
    eventually("published", || env.running.shared.xds.snapshot(GATEWAY).contains_key("shop/public")).await;
    let by_name = DeltaDiscoveryRequest {
        type_url: GATEWAY.into(),
        resource_names_subscribe: vec!["shop/public".into()],
        ..Default::default()
    };
    // Another workload of the namespace, by wildcard and by name; a ztunnel.
    for (token, request) in [
        (CART_TOKEN, subscribe(GATEWAY, HashMap::new())),
        (CART_TOKEN, by_name.clone()),
        (ZTUNNEL1_TOKEN, subscribe(GATEWAY, HashMap::new())),
    ] {
        let (_tx, mut stream) = raw_stream_as(&env, token, vec![request]).await;
        let first = next(&mut stream).await;
        assert!(
            first.resources.is_empty(),
            "{token} got {:?}",
            first.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
        );
    }
    // The gateway itself.
    let (_tx, mut stream) = raw_stream_as(&env, GATEWAY_TOKEN, vec![by_name]).await;
    let first = next(&mut stream).await;
    assert_eq!(first.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["shop/public"]);
    let body = first.resources[0].resource.as_ref().unwrap();
    let config = <ambit_shared::proto::waypoint::GatewayConfig as prost::Message>::decode(&body.value[..]).unwrap();
    assert!(config.listeners[0].certificates[0].private_key.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacking_subscriber_does_not_disturb_another() {
    let env = env("nack").await;
    let (tx, mut nacker) = raw_stream(&env, vec![subscribe(ADDRESS, HashMap::new())]).await;
    let first = next(&mut nacker).await;
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: "cannot parse workload".into(), details: vec![] }),
        ..Default::default()
    })
    .await
    .unwrap();
    let (rec, _client) = shared_client(&env, ZTUNNEL1_TOKEN);
    eventually("healthy client synced", || rec.names(ADDRESS).len() == 3).await;
    write(&env.dir, "more.yaml", &pod("cart-2", "node-2", "cart", "10.2.0.8", "cart"));
    eventually("healthy client updated", || rec.names(ADDRESS).contains(&"Kubernetes//Pod/shop/cart-2".to_owned()))
        .await;
    let subs = env.running.shared.xds.subscribers();
    let nacked = subs.iter().find(|s| s.types.get(ADDRESS).is_some_and(|t| t.nacks == 1)).expect("NACK recorded");
    assert_eq!(nacked.types[ADDRESS].last_nack.as_deref(), Some("cannot parse workload"));
    // The NACKing subscriber still gets the next change too.
    let next_push = next(&mut nacker).await;
    assert_eq!(next_push.resources[0].name, "Kubernetes//Pod/shop/cart-2");
}

async fn request_cert(
    env: &Env,
    token: &str,
    impersonate: Option<&str>,
    csr: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = IstioCertificateServiceClient::new(grpc::channel(env.running.grpc_addr, env.tls.clone()));
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_owned())) },
        )]
        .into(),
    });
    let mut req =
        tonic::Request::new(IstioCertificateRequest { csr: csr.to_owned(), validity_duration: 3600, metadata });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.create_certificate(req).await.map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_allowed_impersonation_and_refuses_the_rest() {
    let env = env("ca").await;
    let cart: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let key = WorkloadKey::generate(&cart).unwrap();
    eventually("pods indexed", || env.running.shared.index.read().unwrap().store().len() >= 3).await;

    // ztunnel on node-1, where cart-1 runs: allowed.
    let chain = request_cert(&env, ZTUNNEL1_TOKEN, Some(&cart.to_string()), &key.csr_pem).await.unwrap();
    let certs = parse_pem_chain(&chain).unwrap();
    assert_eq!(ambit_shared::certs::identity_of_der(&certs[0]).unwrap(), cart);
    assert_eq!(chain.last().unwrap(), &env.running.root_pem, "root last");

    // ztunnel on node-2: no cart pod there.
    let err = request_cert(&env, ZTUNNEL2_TOKEN, Some(&cart.to_string()), &key.csr_pem).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("node-2"), "{}", err.message());

    // A workload may have its own identity, but not impersonate.
    request_cert(&env, CART_TOKEN, None, &key.csr_pem).await.unwrap();
    let front_key = WorkloadKey::generate(&"spiffe://cluster.local/ns/shop/sa/front".parse().unwrap()).unwrap();
    let err = request_cert(&env, CART_TOKEN, Some("spiffe://cluster.local/ns/shop/sa/front"), &front_key.csr_pem)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A bad token.
    let err = request_cert(&env, "not-a-real-token-at-all", None, &key.csr_pem).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A malformed CSR.
    let err = request_cert(
        &env,
        ZTUNNEL1_TOKEN,
        Some(&cart.to_string()),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A CSR asking for another name than the one authorized.
    let err = request_cert(&env, CART_TOKEN, None, &front_key.csr_pem).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("sa/front"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_requires_a_valid_token() {
    let env = env("authn").await;
    let mut client = AggregatedDiscoveryServiceClient::new(grpc::channel(env.running.grpc_addr, env.tls.clone()));
    let (tx, rx) = mpsc::channel(1);
    tx.send(subscribe(ADDRESS, HashMap::new())).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", "Bearer wrong-token-wrong-token".parse().unwrap());
    let err = client.delta_aggregated_resources(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// A standard TLS client verifies the controller by name, as Istio's ztunnel does (its
/// `CA_ADDRESS` host): openssl with the mesh root checks the Service's DNS name, an extra name
/// and the listen address; our own clients keep pinning the SPIFFE identity (every other test
/// here connects that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_verify_the_controller_by_dns_name_and_address() {
    assert!(std::path::Path::new("/usr/bin/openssl").exists(), "openssl is required (scripts/packages.sh installs it)");
    let env = env("by-name").await;
    let root = env.dir.join("root.pem");
    std::fs::write(&root, &env.running.root_pem).unwrap();
    let addr = env.running.grpc_addr;
    let check = |name: Option<&str>| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-CAfile",
            root.to_str().unwrap(),
            "-verify_return_error",
        ]);
        cmd.args(["-alpn", "h2", "-brief"]);
        match name {
            Some(n) => cmd.args(["-servername", n, "-verify_hostname", n]),
            None => cmd.args(["-verify_ip", &addr.ip().to_string()]),
        };
        let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for name in [
        Some("ambit-controller.ambit-system.svc"),
        Some("ambit-controller.ambit-system.svc.cluster.local"),
        Some("istiod.istio-system.svc"),
        None,
    ] {
        let (ok, text) = check(name);
        assert!(ok && text.contains("Verification: OK"), "{name:?}: {text}");
    }
    let (ok, text) = check(Some("elsewhere.example.com"));
    assert!(!ok, "a name the certificate does not carry is refused: {text}");
}

/// An Istio ztunnel's CSR for `identity` (istio/ztunnel `src/tls/csr.rs`): ECDSA P-256, an
/// empty subject, and a single extension — the subject alternative name, marked critical,
/// holding the identity's URI.
fn istio_ztunnel_csr(identity: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // GeneralNames ::= SEQUENCE { [6] IA5String (uniformResourceIdentifier) }
    let uri = identity.as_bytes();
    assert!(uri.len() < 126, "short form lengths only");
    let mut names = vec![0x30, (uri.len() + 2) as u8, 0x86, uri.len() as u8];
    names.extend_from_slice(uri);
    let mut san = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], names);
    san.set_criticality(true);
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![san];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

/// What Istio's ztunnel sends and expects, point by point (read from istio/ztunnel:
/// `src/identity/caclient.rs`, `src/xds/client.rs`, `src/state.rs`): its CSR and
/// `ImpersonatedIdentity` with `authorization` and `clusterid` headers get a chain of at least
/// two elements, the leaf (for the CSR's key, naming the identity) first and the root last; its
/// delta ADS stream — its node id and metadata, wildcard subscriptions (empty names) to Address
/// then Authorization, ACKs carrying only the type and nonce — gets workloads named by uid,
/// services by `namespace/hostname`, policies by `namespace/name` that the workloads name, and
/// the next change after its ACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_ztunnel_gets_its_certificates_workloads_and_policies() {
    use ambit_shared::proto::envoy::config::core::v3::Node;
    use ambit_shared::proto::security::Authorization;
    use ambit_shared::proto::workload::{address, Address};
    use prost::Message;
    let env = env("istio-ztunnel").await;
    // With no policy at all, a wildcard Authorization subscription is still answered (an
    // empty response): Istio's ztunnel is not ready before its first ACK of each type.
    let (_tx, mut empty) = raw_stream_as(&env, ZTUNNEL1_TOKEN, vec![subscribe(AUTHORIZATION, HashMap::new())]).await;
    let response = next(&mut empty).await;
    assert_eq!((response.type_url.as_str(), response.resources.len()), (AUTHORIZATION, 0));
    assert!(!response.nonce.is_empty(), "a nonce to ACK");
    write(
        &env.dir,
        "policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: cart-from-front, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/front]}}]}]\n",
    );
    eventually("policy indexed", || env.running.shared.index.read().unwrap().store().len() >= 5).await;
    fn with_headers<T>(mut req: tonic::Request<T>) -> tonic::Request<T> {
        req.metadata_mut().insert("authorization", format!("Bearer {ZTUNNEL1_TOKEN}").parse().unwrap());
        req.metadata_mut().insert("clusterid", "Kubernetes".parse().unwrap());
        req
    }

    // CA.
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let (key, csr) = istio_ztunnel_csr(cart);
    let metadata = prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(cart.to_owned())) },
        )]
        .into(),
    };
    let mut ca = IstioCertificateServiceClient::new(grpc::channel(env.running.grpc_addr, env.tls.clone()));
    let request = IstioCertificateRequest { csr, validity_duration: 86_400, metadata: Some(metadata) };
    let chain =
        ca.create_certificate(with_headers(tonic::Request::new(request))).await.unwrap().into_inner().cert_chain;
    assert!(chain.len() >= 2, "Istio's ztunnel needs the root as a separate, last element: {}", chain.len());
    assert_eq!(chain.last().unwrap(), &env.running.root_pem, "the root last");
    let leaf_der = parse_pem_chain(&chain[..1]).unwrap().remove(0);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    assert_eq!(ambit_shared::certs::identity_of(&leaf).unwrap().to_string(), cart, "the first URI SAN");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key),
        "the CSR's key"
    );
    let root_der = parse_pem_chain(std::slice::from_ref(chain.last().unwrap())).unwrap().remove(0);
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert_eq!(leaf.issuer(), root.subject(), "issued by the root it sends");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(lifetime <= 86_400 + 600, "at most what was asked (seconds): {lifetime}");

    // xDS.
    let s = |v: &str| prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(v.to_owned())) };
    let node = Node {
        id: "ztunnel~10.0.0.1~ztunnel-abcde.istio-system~istio-system.svc.cluster.local".into(),
        metadata: Some(prost_types::Struct {
            fields: [
                ("NAME", s("ztunnel-abcde")),
                ("NAMESPACE", s("istio-system")),
                ("INSTANCE_IPS", s("10.0.0.1")),
                ("NODE_NAME", s("node-1")),
                ("CLUSTER_ID", s("Kubernetes")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }),
        ..Default::default()
    };
    let first = |type_url: &str| DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.into(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(first(ADDRESS)).await.unwrap();
    tx.send(first(AUTHORIZATION)).await.unwrap();
    let mut xds = AggregatedDiscoveryServiceClient::new(grpc::channel(env.running.grpc_addr, env.tls.clone()));
    let mut stream = xds
        .delta_aggregated_resources(with_headers(tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx))))
        .await
        .unwrap()
        .into_inner();
    let (mut workloads, mut services, mut policies) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
    // Until the cart workload names policies, all of them received (a policy may follow the
    // first push).
    let complete = |workloads: &BTreeMap<String, ambit_shared::proto::workload::Workload>,
                    policies: &BTreeMap<String, Authorization>| {
        workloads.get(CART).is_some_and(|w| {
            !w.authorization_policies.is_empty() && w.authorization_policies.iter().all(|p| policies.contains_key(p))
        })
    };
    while !complete(&workloads, &policies) {
        let response = next(&mut stream).await;
        for r in &response.resources {
            let body = r.resource.as_ref().expect("a body");
            if response.type_url == ADDRESS {
                match Address::decode(body.value.as_ref()).unwrap().r#type {
                    Some(address::Type::Workload(w)) => {
                        assert_eq!(r.name, w.uid, "workloads are named by uid");
                        workloads.insert(w.uid.clone(), w);
                    }
                    Some(address::Type::Service(svc)) => {
                        assert_eq!(r.name, format!("{}/{}", svc.namespace, svc.hostname), "services by ns/hostname");
                        services.push(svc);
                    }
                    None => panic!("an empty Address {}", r.name),
                }
            } else {
                assert_eq!(response.type_url, AUTHORIZATION);
                let a = Authorization::decode(body.value.as_ref()).unwrap();
                assert_eq!(r.name, format!("{}/{}", a.namespace, a.name), "policies by ns/name");
                policies.insert(r.name.clone(), a);
            }
        }
        // Istio's ACK: the type and the nonce, nothing else.
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        tx.send(ack).await.unwrap();
    }
    assert!(services.iter().any(|s| s.hostname.starts_with("cart.")), "the services, by ns/hostname");
    assert_eq!(workloads[CART].authorization_policies, ["shop/cart-from-front"], "named as sent");
    // The next change arrives after those ACKs.
    write(&env.dir, "late.yaml", &pod("late-1", "node-1", "cart", "10.1.0.9", "cart"));
    let pushed = loop {
        let response = next(&mut stream).await;
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        if let Some(r) = response.resources.iter().find(|r| r.name == "Kubernetes//Pod/shop/late-1") {
            break r.name.clone();
        }
    };
    assert_eq!(pushed, "Kubernetes//Pod/shop/late-1");
}
