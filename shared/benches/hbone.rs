//! HBONE against plain TCP on loopback, measured in the same run:
//! - bulk throughput with 1 and 8 concurrent streams (HBONE streams share one pooled
//!   connection, as they do between two pods; TCP uses one connection per stream);
//! - 1 KiB request/response round trips on an established stream.
//!
//! Run with `cargo bench -p ambit-shared --bench hbone`; docs/performance.md has the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_shared::certs::{Ca, Validity, DEFAULT_ROOT_LIFETIME, DEFAULT_WORKLOAD_LIFETIME};
use ambit_shared::hbone::client::{Client, ConnectRequest, PoolSettings};
use ambit_shared::hbone::server::{Handler, InboundConnect, Responder, Server};
use ambit_shared::tls::server_config;
use ambit_shared::{Identity, MeshRoots};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes each iteration moves, split across the streams.
const BULK: usize = 32 * 1024 * 1024;
const WRITE_CHUNK: usize = 256 * 1024;
const RR_SIZE: usize = 1024;

/// Port 1 on the authority: a sink that acks every `BULK / streams` bytes with one byte.
/// Anything else: an echo of fixed-size messages.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, sink_every: Option<usize>) {
    let mut buf = vec![0u8; WRITE_CHUNK];
    match sink_every {
        Some(every) => {
            let mut seen = 0usize;
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                seen += n;
                while seen >= every {
                    seen -= every;
                    if s.write_all(&[1]).await.is_err() {
                        return;
                    }
                }
            }
        }
        None => {
            let mut msg = [0u8; RR_SIZE];
            while s.read_exact(&mut msg).await.is_ok() {
                if s.write_all(&msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct BenchHandler;

impl Handler for BenchHandler {
    async fn handle(&self, req: InboundConnect, responder: Responder) {
        let Ok(stream) = responder.accept() else { return };
        let port = req.authority.port() as usize;
        let sink = (port != 0).then(|| BULK / port);
        serve_stream(stream, sink).await;
    }
}

struct Setup {
    tcp_addr: SocketAddr,
    client: Client,
    request: ConnectRequest,
}

async fn setup() -> Setup {
    let ca = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).expect("CA");
    let roots = MeshRoots::new(std::slice::from_ref(ca.root_der())).expect("roots");
    let id = |sa: &str| Identity::new("cluster.local", "bench", sa).expect("identity");
    let validity = Validity::from_now(DEFAULT_WORKLOAD_LIFETIME);
    let server_cert = ca.issue(&id("server"), validity).expect("server cert");
    let client_cert = Arc::new(ca.issue(&id("client"), validity).expect("client cert"));

    let hbone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hbone_addr = hbone.local_addr().expect("addr");
    let config = Arc::new(server_config(&server_cert, &roots).expect("server config"));
    tokio::spawn(Server::new(Arc::new(BenchHandler), Arc::new(config)).serve(hbone));

    // Plain TCP server: the first byte says how many streams share the bulk (0 = echo).
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tcp_addr = tcp.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_ok() {
                    let sink = (mode[0] != 0).then(|| BULK / mode[0] as usize);
                    serve_stream(s, sink).await;
                }
            });
        }
    });

    let client = Client::new(roots, PoolSettings::default());
    let request = ConnectRequest {
        source: client_cert,
        destination_identities: vec![id("server")],
        hbone_addr,
        authority: hbone_addr,
        headers: Default::default(),
    };
    Setup { tcp_addr, client, request }
}

type BoxStream = Box<dyn Stream>;
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn open(setup: &Setup, hbone: bool, mode: u8) -> BoxStream {
    if hbone {
        let mut req = setup.request.clone();
        req.authority.set_port(mode as u16);
        Box::new(setup.client.connect(&req).await.expect("HBONE connect"))
    } else {
        let mut s = TcpStream::connect(setup.tcp_addr).await.expect("TCP connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&[mode]).await.expect("mode");
        Box::new(s)
    }
}

async fn push(stream: &mut BoxStream, bytes: usize, chunk: &[u8]) {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await.expect("ack");
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let setup = rt.block_on(setup());
    let chunk = vec![0x5au8; WRITE_CHUNK];
    let mut group = c.benchmark_group("throughput");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Bytes(BULK as u64));
    for streams in [1u8, 8] {
        for (name, hbone) in [("tcp", false), ("hbone", true)] {
            let mut conns = rt.block_on(join_all((0..streams).map(|_| open(&setup, hbone, streams))));
            group.bench_function(BenchmarkId::new(name, format!("{streams}-streams")), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            join_all(conns.iter_mut().map(|s| push(s, BULK / streams as usize, &chunk))).await;
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

fn request_response(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let setup = rt.block_on(setup());
    let mut group = c.benchmark_group("request_response_1KiB");
    group.sample_size(20).measurement_time(Duration::from_secs(5)).throughput(Throughput::Elements(1));
    for (name, hbone) in [("tcp", false), ("hbone", true)] {
        let mut stream = rt.block_on(open(&setup, hbone, 0));
        let msg = [0x42u8; RR_SIZE];
        let mut back = [0u8; RR_SIZE];
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        stream.write_all(&msg).await.expect("write");
                        stream.read_exact(&mut back).await.expect("read");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, throughput, request_response);
criterion_main!(benches);
