//! The xDS client against a small delta ADS server written here with tonic, over mesh TLS.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::proto::discovery::Resource as WireResource;
use crate::proto::type_url::{ADDRESS, AUTHORIZATION};
use crate::proto::workload::{address, Address, Workload};
use crate::testing::{identity, TestCa};
use crate::tls::{control_plane_client_config, control_plane_server_config};

/// One client stream as the test sees it: what the client sent, and a way to answer.
struct Conn {
    token: Option<String>,
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

struct ScriptedAds {
    conns: mpsc::Sender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ScriptedAds {
    type DeltaAggregatedResourcesStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let token = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (tx, rx) = mpsc::channel(16);
        self.conns.send(Conn { token, requests: request.into_inner(), responses: tx }).await.unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Default, Clone)]
struct Recorder {
    applied: Arc<Mutex<Vec<String>>>,
    removed: Arc<Mutex<Vec<String>>>,
}

impl Handler for Recorder {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        for r in update.added {
            if update.type_url == ADDRESS {
                if let Err(e) = r.decode::<Address>(ADDRESS) {
                    rejected.push(Rejection { name: r.name, reason: e.to_string() });
                    continue;
                }
            }
            self.applied.lock().unwrap().push(r.name);
        }
        self.removed.lock().unwrap().extend(update.removed);
        rejected
    }
}

fn workload(name: &str, version: &str) -> WireResource {
    let addr = Address { r#type: Some(address::Type::Workload(Workload { uid: name.into(), ..Default::default() })) };
    WireResource {
        name: name.into(),
        version: version.into(),
        resource: Some(crate::proto::Any { type_url: ADDRESS.into(), value: addr.encode_to_vec().into() }),
        ..Default::default()
    }
}

async fn next(conn: &mut Conn) -> DeltaDiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(10), conn.requests.next())
        .await
        .expect("request in time")
        .unwrap()
        .unwrap()
}

async fn respond(conn: &Conn, type_url: &str, nonce: &str, resources: Vec<WireResource>, removed: Vec<&str>) {
    let r = DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.into_iter().map(String::from).collect(),
        ..Default::default()
    };
    conn.responses.send(Ok(r)).await.unwrap();
}

/// Starts the scripted delta ADS server over TLS with `server_cert`; yields each client stream.
async fn scripted_server(
    ca: &TestCa,
    server_cert: &crate::certs::WorkloadCert,
) -> (std::net::SocketAddr, mpsc::Receiver<Conn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = crate::admission::ConnectionLimits { total: 64, per_peer: 64 };
    let incoming =
        grpc::tls_incoming(listener, Arc::new(control_plane_server_config(server_cert, &ca.roots).unwrap()), limits);
    let (conns_tx, conns) = mpsc::channel(4);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(ScriptedAds { conns: conns_tx }))
            .serve_with_incoming(incoming),
    );
    (addr, conns)
}

#[tokio::test]
async fn subscribe_ack_nack_and_resume_with_versions() {
    let ca = TestCa::new();
    let controller_id = identity("ambit-system", "ambit-controller");
    let server_cert = ca.cert("ambit-system", "ambit-controller");
    let (addr, mut conns) = scripted_server(&ca, &server_cert).await;

    let tls = Arc::new(control_plane_client_config(&ca.roots, vec![controller_id]).unwrap());
    let node = istio_node("ztunnel", "10.0.0.2", "ztunnel-abc", "ambit-system", "node-1");
    let mut config = Config::new(addr, tls, node, vec![ADDRESS, AUTHORIZATION]);
    // A token file, as Kubernetes projects it: read again at each connection.
    let token_file = std::env::temp_dir().join(format!("ambit-xds-token-{}", std::process::id()));
    std::fs::write(&token_file, "s3cret\n").unwrap();
    config.token = Some(grpc::Token::File(token_file.clone()));
    config.initial_backoff = Duration::from_millis(20);
    let (client, mut synced) = Client::new(config);
    let recorder = Recorder::default();
    tokio::spawn(client.run(recorder.clone()));

    // Subscribe: one request per type, node on the first, nothing held yet.
    let mut c1 = conns.recv().await.unwrap();
    assert_eq!(c1.token.as_deref(), Some("Bearer s3cret"));
    let first = next(&mut c1).await;
    assert_eq!(first.type_url, ADDRESS);
    assert!(first.node.as_ref().unwrap().id.starts_with("ztunnel~10.0.0.2~ztunnel-abc.ambit-system~"));
    assert!(first.initial_resource_versions.is_empty());
    let second = next(&mut c1).await;
    assert_eq!(second.type_url, AUTHORIZATION);
    assert!(second.node.is_none());

    // Receive and ACK.
    respond(&c1, ADDRESS, "n1", vec![workload("a", "1"), workload("b", "1")], vec![]).await;
    let ack = next(&mut c1).await;
    assert_eq!((ack.type_url.as_str(), ack.response_nonce.as_str(), ack.error_detail), (ADDRESS, "n1", None));
    assert!(!*synced.borrow(), "not synced until every type has been received");
    respond(&c1, AUTHORIZATION, "n2", vec![], vec![]).await;
    assert_eq!(next(&mut c1).await.response_nonce, "n2");
    tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s)).await.unwrap().unwrap();

    // A bad resource is NACKed by name; its good neighbour is kept.
    let mut bad = workload("c", "1");
    bad.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff].into();
    respond(&c1, ADDRESS, "n3", vec![bad, workload("d", "1")], vec![]).await;
    let nack = next(&mut c1).await;
    assert_eq!(nack.response_nonce, "n3");
    let detail = nack.error_detail.expect("NACK carries the reason");
    assert_eq!(detail.code, INVALID_ARGUMENT);
    assert!(detail.message.contains("\"c\""), "{}", detail.message);

    // A removal.
    respond(&c1, ADDRESS, "n4", vec![], vec!["b"]).await;
    assert!(next(&mut c1).await.error_detail.is_none());
    assert_eq!(*recorder.applied.lock().unwrap(), vec!["a", "b", "d"]);
    assert_eq!(*recorder.removed.lock().unwrap(), vec!["b"]);

    // The token rotates; the server drops the stream: the client reconnects with the new
    // token and says what it holds.
    std::fs::write(&token_file, "rotated").unwrap();
    c1.responses.send(Err(Status::unavailable("restarting"))).await.unwrap();
    drop(c1);
    let mut c2 = tokio::time::timeout(Duration::from_secs(10), conns.recv()).await.unwrap().unwrap();
    assert_eq!(c2.token.as_deref(), Some("Bearer rotated"));
    let _ = std::fs::remove_file(&token_file);
    let resume = next(&mut c2).await;
    assert_eq!(resume.type_url, ADDRESS);
    let mut held: Vec<_> = resume.initial_resource_versions.into_iter().collect();
    held.sort();
    assert_eq!(held, vec![("a".to_owned(), "1".to_owned()), ("d".to_owned(), "1".to_owned())]);
    assert!(next(&mut c2).await.initial_resource_versions.is_empty(), "no authorizations were held");
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_not_trusted() {
    let ca = TestCa::new();
    let server_cert = ca.cert("shop", "impostor");
    let (addr, mut conns) = scripted_server(&ca, &server_cert).await;
    let tls =
        Arc::new(control_plane_client_config(&ca.roots, vec![identity("ambit-system", "ambit-controller")]).unwrap());
    let (client, _) = Client::new(Config::new(addr, tls, Node::default(), vec![ADDRESS]));
    let mut client = client;
    let err = client.stream_once(&mut Recorder::default()).await.unwrap_err();
    assert!(!err.1);
    assert!(conns.try_recv().is_err(), "no stream may reach the impostor");
}
