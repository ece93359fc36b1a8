//! HBONE over real sockets on loopback: our client against our server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::client::{Client, ConnectRequest, PoolSettings};
use super::server::{Handler, InboundConnect, Responder, Server};
use super::*;
use crate::identity::Identity;
use crate::testing::{identity, TestCa};
use crate::tls::server_config;

/// What the test server does with each CONNECT, and what it saw.
#[derive(Default)]
struct TestHandler {
    /// Peers allowed in; everyone else gets 401.
    allowed: Option<Identity>,
    seen_connections: Mutex<HashSet<SocketAddr>>,
    seen: Mutex<Vec<InboundConnect>>,
}

impl Handler for TestHandler {
    async fn handle(&self, req: InboundConnect, responder: Responder) {
        self.seen_connections.lock().unwrap().insert(req.peer_addr);
        self.seen.lock().unwrap().push(req.clone());
        if self.allowed.as_ref().is_some_and(|a| *a != req.peer_identity) {
            responder.reject(StatusCode::UNAUTHORIZED);
            return;
        }
        let Ok(mut stream) = responder.accept() else { return };
        match req.authority.port() {
            // :9 hashes what it receives and answers with the digest.
            9 => {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                stream.write_all(&hasher.finalize()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
            // Anything else echoes.
            _ => {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        let _ = stream.shutdown().await;
                        break;
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

struct Fixture {
    ca: TestCa,
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    client: Client,
    /// Connection tasks on the server, so a test can kill them.
    server_conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

async fn fixture(handler: TestHandler, settings: PoolSettings) -> Fixture {
    let ca = TestCa::new();
    let server_cert = ca.cert("shop", "cart");
    let config = Arc::new(server_config(&server_cert, &ca.roots).unwrap());
    let handler = Arc::new(handler);
    let server = Server::new(handler.clone(), Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_conns = Arc::new(Mutex::new(Vec::new()));
    let conns = server_conns.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let server = server.clone();
            let task = tokio::spawn(async move {
                let _ = server.serve_connection(tcp).await;
            });
            conns.lock().unwrap().push(task);
        }
    });
    let client = Client::new(ca.roots.clone(), settings);
    Fixture { ca, addr, handler, client, server_conns }
}

impl Fixture {
    fn request(&self, source: Arc<crate::certs::WorkloadCert>, port: u16) -> ConnectRequest {
        let mut headers = HeaderMap::new();
        headers.insert(headers::FORWARDED, forwarded_header("10.0.0.7:40000".parse().unwrap(), None).unwrap());
        ConnectRequest {
            source,
            destination_identities: vec![identity("shop", "cart")],
            hbone_addr: self.addr,
            authority: SocketAddr::from(([10, 0, 0, 9], port)),
            headers,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_256_mib_intact() {
    let f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let req = f.request(f.ca.cert("shop", "front"), 9);
    let mut stream = f.client.connect(&req).await.unwrap();
    const TOTAL: usize = 256 * 1024 * 1024;
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut expected = Sha256::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..TOTAL / chunk.len() {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        expected.update(&chunk);
        stream.write_all(&chunk).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    let mut digest = Vec::new();
    stream.read_to_end(&mut digest).await.unwrap();
    assert_eq!(digest, expected.finalize().to_vec());

    let seen = f.handler.seen.lock().unwrap();
    assert_eq!(seen[0].authority, "10.0.0.9:9".parse().unwrap());
    assert_eq!(seen[0].peer_identity, identity("shop", "front"));
    let fwd = seen[0].headers.get(headers::FORWARDED).unwrap().to_str().unwrap();
    assert_eq!(forwarded_for(fwd), Some("10.0.0.7:40000".parse().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_tunnel_copy_is_intact_both_ways_with_half_close() {
    let f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let tunnel = f.client.connect(&f.request(f.ca.cert("shop", "front"), 7)).await.unwrap();
    // app ⇄ (tcp) ⇄ copy_tcp_tunnel ⇄ HBONE ⇄ echo
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut accepted, _) = listener.accept().await.unwrap();
    let copier = tokio::spawn(async move {
        let mut tunnel = tunnel;
        copy_tcp_tunnel(&mut accepted, &mut tunnel).await
    });
    let payload: Vec<u8> =
        (0..(24 * 1024 * 1024 + 17)).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (mut read_half, mut write_half) = app.split();
    let sent = payload.clone();
    let (echoed, ()) = tokio::join!(
        async {
            let mut got = Vec::new();
            read_half.read_to_end(&mut got).await.unwrap();
            got
        },
        async {
            write_half.write_all(&sent).await.unwrap();
            write_half.shutdown().await.unwrap(); // the echo sees EOF and ends its side
        }
    );
    assert!(echoed == payload, "echo differs ({} of {} bytes)", echoed.len(), payload.len());
    let (transferred, error) = copier.await.unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!((transferred.a_to_b, transferred.b_to_a), (payload.len() as u64, payload.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_share_one_connection() {
    let settings = PoolSettings { connections_per_key: 1, ..Default::default() };
    let f = Arc::new(fixture(TestHandler::default(), settings).await);
    let cert = f.ca.cert("shop", "front");
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let (f, cert, barrier) = (f.clone(), cert.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = f.client.connect(&f.request(cert, 8080)).await.unwrap();
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
            // Hold every stream open until all 100 are up at once.
            barrier.wait().await;
            s
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    assert_eq!(f.client.connection_count(), 1);
    assert_eq!(f.handler.seen_connections.lock().unwrap().len(), 1);
    assert_eq!(f.handler.seen.lock().unwrap().len(), 100);
    // The 101st stream does not fit: a second connection is opened.
    let extra = f.client.connect(&f.request(cert, 8080)).await.unwrap();
    assert_eq!(f.client.connection_count(), 2);
    drop((streams, extra));
}

#[tokio::test]
async fn handler_401_reaches_the_client_as_a_typed_error() {
    let handler = TestHandler { allowed: Some(identity("shop", "front")), ..Default::default() };
    let f = fixture(handler, PoolSettings::default()).await;
    let err = f.client.connect(&f.request(f.ca.cert("shop", "intruder"), 8080)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    assert!(!err.is_retryable());
    // The allowed identity still gets through.
    f.client.connect(&f.request(f.ca.cert("shop", "front"), 8080)).await.unwrap();
}

#[tokio::test]
async fn client_with_a_foreign_certificate_is_refused() {
    let f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let foreign = TestCa::new().cert("shop", "front");
    let err = f.client.connect(&f.request(foreign, 8080)).await.unwrap_err();
    assert!(matches!(&err, HboneError::Tls { .. }), "{err}");
    assert!(f.handler.seen.lock().unwrap().is_empty(), "no request may reach the handler");
}

#[tokio::test]
async fn server_with_the_wrong_identity_is_refused() {
    let f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let mut req = f.request(f.ca.cert("shop", "front"), 8080);
    req.destination_identities = vec![identity("shop", "payments")];
    let err = f.client.connect(&req).await.unwrap_err();
    match err {
        HboneError::Tls { failure: crate::tls::HandshakeFailure::Identity(e), .. } => {
            assert!(e.to_string().contains("sa/payments"), "{e}")
        }
        other => panic!("expected an identity failure, got {other}"),
    }
}

/// Opens a stream on `f` and checks it echoes.
async fn echoing_stream(f: &Fixture, cert: Arc<crate::certs::WorkloadCert>) -> H2Stream {
    let mut s = f.client.connect(&f.request(cert, 8080)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_spread_over_connections_per_key_then_share() {
    let f = Arc::new(fixture(TestHandler::default(), PoolSettings::default()).await);
    let cert = f.ca.cert("shop", "front");
    // Opened at once, as iperf3 -P 8 does: they spread over the key's connections.
    let opened = (0..8).map(|_| {
        let (f, cert) = (f.clone(), cert.clone());
        tokio::spawn(async move { echoing_stream(&f, cert).await })
    });
    let streams: Vec<H2Stream> = futures::future::join_all(opened).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(f.client.connection_count(), client::CONNECTIONS_PER_KEY);
    assert_eq!(f.handler.seen_connections.lock().unwrap().len(), client::CONNECTIONS_PER_KEY);
    drop(streams);
    // One at a time, streams reuse: a lone stream never dials a second connection.
    let g = fixture(TestHandler::default(), PoolSettings::default()).await;
    let cert = g.ca.cert("shop", "front");
    for _ in 0..5 {
        drop(echoing_stream(&g, cert.clone()).await);
    }
    assert_eq!(g.client.connection_count(), 1);
}

/// Sockets for the pool; fails every socket after the first `allow`.
struct FailingDialer {
    allow: usize,
    made: std::sync::atomic::AtomicUsize,
}

impl client::Dialer for FailingDialer {
    fn socket(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        if self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.allow {
            return Err(std::io::Error::other("dialer refuses"));
        }
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    }
}

#[tokio::test]
async fn a_failed_extra_connection_falls_back_to_sharing_and_backs_off() {
    let mut f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let dialer = Arc::new(FailingDialer { allow: 1, made: Default::default() });
    f.client = Client::with_dialer(f.ca.roots.clone(), PoolSettings::default(), dialer.clone());
    let cert = f.ca.cert("shop", "front");
    let first = echoing_stream(&f, cert.clone()).await;
    // The second stream tries to grow the key, the dial fails, and it shares the first.
    let second = echoing_stream(&f, cert.clone()).await;
    assert_eq!(dialer.made.load(std::sync::atomic::Ordering::SeqCst), 2, "an extra connection was tried");
    assert_eq!(f.client.connection_count(), 1);
    // The key backs off: the next streams share without another failed dial each.
    let third = echoing_stream(&f, cert).await;
    assert_eq!(dialer.made.load(std::sync::atomic::Ordering::SeqCst), 2, "no dial during the back-off");
    drop((first, second, third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_connection_the_server_refuses_falls_back_to_the_verified_one() {
    use super::server::{Budget, Limits};
    // The server takes one connection from this address: the pool's extra one is closed at
    // accept, and streams go on over the first (its peer verified for the key), never fail.
    let ca = TestCa::new();
    let config = Arc::new(server_config(&ca.cert("shop", "cart"), &ca.roots).unwrap());
    let budget = Budget::new(Limits { max_connections_per_peer: 1, ..Limits::default() });
    let handler = Arc::new(TestHandler::default());
    let server = Server::with_budget(handler.clone(), Arc::new(config), budget);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let client = Client::new(ca.roots.clone(), PoolSettings { connections_per_key: 2, ..Default::default() });
    let request = ConnectRequest {
        source: ca.cert("shop", "front"),
        destination_identities: vec![identity("shop", "cart")],
        hbone_addr: addr,
        authority: SocketAddr::from(([10, 0, 0, 9], 8080)),
        headers: HeaderMap::new(),
    };
    let mut open = Vec::new();
    for i in 0..3u8 {
        let mut s = client.connect(&request).await.expect("a refused extra connection does not fail the stream");
        s.write_all(&[i; 3]).await.unwrap();
        let mut back = [0u8; 3];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [i; 3]);
        open.push(s);
    }
    assert_eq!(client.connection_count(), 1, "the refused connection is not pooled");
    assert_eq!(handler.seen_connections.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_replaces_a_connection_the_server_closed() {
    let f = fixture(TestHandler::default(), PoolSettings::default()).await;
    let cert = f.ca.cert("shop", "front");
    let mut s = f.client.connect(&f.request(cert.clone(), 8080)).await.unwrap();
    s.write_all(b"one").await.unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    // The server goes away (restart, crash): its connection tasks end and the TCP closes.
    for task in f.server_conns.lock().unwrap().drain(..) {
        task.abort();
    }
    for _ in 0..100 {
        if f.client.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = f.client.connect(&f.request(cert, 8080)).await.unwrap();
    s.write_all(b"two").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"two");
    assert_eq!(f.handler.seen_connections.lock().unwrap().len(), 2);
    assert_eq!(f.client.connection_count(), 1);
}

#[tokio::test]
async fn idle_connections_are_evicted() {
    let settings = PoolSettings { idle_timeout: Duration::from_millis(100), ..Default::default() };
    let f = fixture(TestHandler::default(), settings).await;
    let s = f.client.connect(&f.request(f.ca.cert("shop", "front"), 8080)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.client.connection_count(), 1, "a connection with an open stream is not idle");
    drop(s);
    for _ in 0..500 {
        if f.client.connection_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("idle connection still pooled");
}

#[test]
fn malformed_requests_are_told_apart() {
    let req = |m: http::Method, uri: &str| http::Request::builder().method(m).uri(uri).body(()).unwrap();
    assert_eq!(server::parse_connect(&req(http::Method::CONNECT, "10.1.2.3:80")), Ok("10.1.2.3:80".parse().unwrap()));
    assert_eq!(server::parse_connect(&req(http::Method::CONNECT, "[fd00::1]:80")), Ok("[fd00::1]:80".parse().unwrap()));
    assert_eq!(server::parse_connect(&req(http::Method::GET, "http://10.1.2.3:80/")), Err("method is not CONNECT"));
    assert_eq!(server::parse_connect(&req(http::Method::CONNECT, "example.com:80")), Err(":authority is not ip:port"));
}

#[test]
fn baggage_and_forwarded_round_trip() {
    let b = Baggage {
        cluster: Some("Kubernetes".into()),
        namespace: Some("shop".into()),
        workload: Some(("deployment".into(), "cart-v1".into())),
        service: Some("cart".into()),
        version: Some("v1".into()),
        ..Default::default()
    };
    let h = b.to_header().unwrap();
    assert_eq!(
        h.to_str().unwrap(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart-v1,service.name=cart,service.version=v1"
    );
    assert_eq!(Baggage::parse(h.to_str().unwrap()), b);
    let f = forwarded_header("[fd00::7]:4000".parse().unwrap(), Some("cart.shop.svc.cluster.local")).unwrap();
    assert_eq!(f.to_str().unwrap(), "for=\"[fd00::7]:4000\";host=cart.shop.svc.cluster.local");
    assert_eq!(forwarded_for(f.to_str().unwrap()), Some("[fd00::7]:4000".parse().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_a_failed_dial_instead_of_redialing() {
    // A peer that accepts TCP and then never speaks: every dial times out.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = blackhole.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = blackhole.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let ca = TestCa::new();
    let settings = PoolSettings { connect_timeout: Duration::from_millis(300), ..Default::default() };
    let client = Client::new(ca.roots.clone(), settings);
    let req = ConnectRequest {
        source: ca.cert("shop", "front"),
        destination_identities: vec![identity("shop", "cart")],
        hbone_addr: addr,
        authority: "10.0.0.9:80".parse().unwrap(),
        headers: HeaderMap::new(),
    };
    let attempts = (0..20).map(|_| {
        let (client, req) = (client.clone(), req.clone());
        tokio::spawn(async move { client.connect(&req).await })
    });
    for result in futures::future::join_all(attempts).await {
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, HboneError::ConnectTimeout(_) | HboneError::DialFailed(_)), "{err}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one dial for twenty waiters");
    assert_eq!(client.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_streams_and_connections_beyond_their_limits() {
    use super::server::{Budget, Limits};
    let ca = TestCa::new();
    let config = Arc::new(server_config(&ca.cert("shop", "cart"), &ca.roots).unwrap());
    let limits = Limits { max_connections_per_peer: 2, max_streams_per_peer: 3, ..Limits::default() };
    let budget = Budget::new(limits);
    let server = Server::with_budget(Arc::new(TestHandler::default()), Arc::new(config), budget.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let source = ca.cert("shop", "front");
    let request = |_: &Client| ConnectRequest {
        source: source.clone(),
        destination_identities: vec![identity("shop", "cart")],
        hbone_addr: addr,
        authority: SocketAddr::from(([10, 0, 0, 9], 8080)),
        headers: HeaderMap::new(),
    };
    // One connection per key: the budget counts this client's streams on one connection.
    let client = Client::new(ca.roots.clone(), PoolSettings { connections_per_key: 1, ..Default::default() });
    // Open tunnels hold their streams: the fourth from this address is refused.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client.connect(&request(&client)).await.expect("within the budget"));
    }
    let err = client.connect(&request(&client)).await.expect_err("over the per-peer stream budget");
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert_eq!(budget.streams("127.0.0.1".parse().unwrap()), (3, 3));
    // Closing one gives its stream back.
    drop(open.pop());
    tokio::time::timeout(Duration::from_secs(5), async {
        while budget.streams("127.0.0.1".parse().unwrap()).1 > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stream is returned");
    client.connect(&request(&client)).await.expect("a freed stream is reused");
    // Connections: the pool holds one; a second is admitted, a third from this address is
    // closed at accept.
    assert_eq!(client.connection_count(), 1);
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte)).await.expect("closed promptly");
    assert!(matches!(closed, Ok(0) | Err(_)), "the third connection is closed: {closed:?}");
}
