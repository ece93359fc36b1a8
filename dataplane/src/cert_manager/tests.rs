//! The certificate manager against a CA written here on the shared protobufs, over TLS.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ambit_shared::certs::{Ca, Validity};
use ambit_shared::proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_shared::proto::ca::IstioCertificateResponse;
use ambit_shared::testing::{identity, TestCa};
use ambit_shared::tls::{control_plane_client_config, control_plane_server_config};

use super::*;

struct TestCaServer {
    ca: Arc<Ca>,
    requests: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for TestCaServer {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let token = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let req = request.into_inner();
        let wanted = match req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| v.kind.clone())
        {
            Some(prost_types::value::Kind::StringValue(s)) => s,
            _ => return Err(tonic::Status::invalid_argument("no ImpersonatedIdentity")),
        };
        self.seen.lock().unwrap().push((token, wanted.clone()));
        if self.fail.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("CA down for the test"));
        }
        let now = SystemTime::now();
        let validity = Validity { not_before: now, not_after: now + Duration::from_secs(req.validity_duration as u64) };
        let chain = self
            .ca
            .sign_csr(&req.csr, &wanted.parse().unwrap(), validity)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse { cert_chain: chain, ..Default::default() }))
    }
}

struct Fixture {
    manager: Arc<CertManager>,
    requests: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn fixture(lifetime: Duration) -> Fixture {
    let test_ca = TestCa::new();
    let server_cert = test_ca.cert("ambit-system", "ambit-controller");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = grpc::tls_incoming(
        listener,
        Arc::new(control_plane_server_config(&server_cert, &test_ca.roots).unwrap()),
        ambit_shared::admission::ConnectionLimits { total: 64, per_peer: 64 },
    );
    let (requests, fail, seen) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let server =
        TestCaServer { ca: Arc::new(test_ca.ca), requests: requests.clone(), fail: fail.clone(), seen: seen.clone() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(server))
            .serve_with_incoming(incoming),
    );
    let tls = Arc::new(
        control_plane_client_config(&test_ca.roots, vec![identity("ambit-system", "ambit-controller")]).unwrap(),
    );
    let manager = CertManager::new(CaClient { address, tls, token: "node-token-0123456789".into(), lifetime });
    Fixture { manager, requests, fail, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_request_with_impersonation() {
    let f = fixture(Duration::from_secs(3600)).await;
    let cart = identity("shop", "cart");
    let fetches = (0..20).map(|_| f.manager.fetch(&cart));
    for cert in futures::future::join_all(fetches).await {
        assert_eq!(cert.unwrap().identity, cart);
    }
    assert_eq!(f.requests.load(Ordering::SeqCst), 1);
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![("Bearer node-token-0123456789".to_owned(), cart.to_string())]);
    let snapshot = f.manager.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot[0].1.is_some(), "expiry shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_at_half_life_and_keeps_the_certificate_while_renewal_fails() {
    let f = fixture(Duration::from_secs(8)).await;
    let cart = identity("shop", "cart");
    let first = f.manager.fetch(&cart).await.unwrap();
    // The CA goes down before the renewal (at ~4 s, half of 8 s).
    f.fail.store(true, Ordering::SeqCst);
    for _ in 0..70 {
        if f.requests.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f.requests.load(Ordering::SeqCst) >= 2, "renewal attempted at half life");
    let kept = f.manager.fetch(&cart).await.unwrap();
    assert!(Arc::ptr_eq(&first, &kept), "the valid certificate is kept while renewal fails");
    // The CA comes back: the retry renews it.
    f.fail.store(false, Ordering::SeqCst);
    for _ in 0..60 {
        let now = f.manager.fetch(&cart).await.unwrap();
        if !Arc::ptr_eq(&first, &now) {
            assert_eq!(now.identity, cart);
            assert!(now.validity.not_after > first.validity.not_after);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("certificate was never renewed after the CA came back");
}

#[tokio::test]
async fn a_first_request_that_fails_is_an_error_not_a_hang() {
    let f = fixture(Duration::from_secs(3600)).await;
    f.fail.store(true, Ordering::SeqCst);
    let err = f.manager.fetch(&identity("shop", "cart")).await.unwrap_err();
    assert!(err.to_string().contains("CA down for the test"), "{err}");
    f.manager.forget(&identity("shop", "cart"));
    assert!(f.manager.snapshot().is_empty());
}
