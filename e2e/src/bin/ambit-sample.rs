//! The sandbox's sample applications (container images `ambit/<mode>`):
//! - `echo`: HTTP/1.1 and HTTP/2 (cleartext, by preface) server answering with what it saw —
//!   peer address, method, path, protocol, headers — and who it is (pod, namespace, version, node);
//! - `tcp-echo`: greets with `peer=<addr> pod=<name>`, then echoes;
//! - `front`: an HTTP front end that calls each back end and returns their answers;
//! - `get`: one HTTP GET, the body on stdout (exit 1 on failure or a non-2xx status);
//! - `load`: many GETs, then a count of answers per responding pod;
//! - `sleep`: does nothing (a pod to `exec` into);
//! - `tls-secret`: a throwaway CA and a server certificate signed by it, written as the CA's
//!   PEM and a `kubernetes.io/tls` Secret manifest (for an ingress listener in the demo).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(name = "ambit-sample", about = "Sample applications for the Ambit sandbox")]
enum Cmd {
    /// Writes `<dir>/ca.pem` and `<dir>/secret.yaml` (a `kubernetes.io/tls` Secret with a
    /// certificate for `--hosts`, signed by that CA).
    TlsSecret {
        #[arg(long)]
        name: String,
        #[arg(long)]
        namespace: String,
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// HTTP/1.1 + HTTP/2 echo server.
    Echo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Also a TCP echo on this port.
        #[arg(long)]
        tcp_port: Option<u16>,
        /// Answer every request with this status (a broken replica).
        #[arg(long)]
        fail_status: Option<u16>,
        /// Also HTTPS on this port, with a self-signed certificate for `--tls-names`.
        #[arg(long)]
        tls_port: Option<u16>,
        /// The names the HTTPS certificate carries (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost")]
        tls_names: Vec<String>,
    },
    /// TCP echo server.
    TcpEcho {
        #[arg(long, default_value_t = 9000)]
        port: u16,
    },
    /// Front end calling every back end per request.
    Front {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Back-end URLs, comma-separated (`http://host:port/path`).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
    },
    /// One GET; prints the body.
    Get {
        url: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Request method.
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// Extra request headers, `name: value` (repeatable).
        #[arg(long, short = 'H')]
        header: Vec<String>,
        /// Print the status line's code before the body, and succeed whatever it is.
        #[arg(long)]
        status: bool,
    },
    /// Many GETs; prints answers per pod.
    Load {
        url: String,
        #[arg(long, default_value_t = 100)]
        requests: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Idles until stopped.
    Sleep,
    /// An OTLP/HTTP collector: prints `{"traceId", "spanId", "parentSpanId", "name"}` per span
    /// received on `POST /v1/traces` (JSON encoding).
    OtlpSink {
        #[arg(long, default_value_t = 4318)]
        port: u16,
    },
    /// One unary gRPC call (HTTP/2 cleartext) to `http://host:port/pkg.Service/Method`.
    Grpc {
        url: String,
        #[arg(long, default_value = "hello")]
        message: String,
    },
    /// Connects, sends `--send` (with `\r` and `\n` escapes), half-closes and prints what
    /// comes back until the peer closes.
    TcpClient {
        addr: String,
        #[arg(long, default_value = "")]
        send: String,
        /// Stay silent this long after connecting before sending (a slow client).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Benchmark server: HTTP echo (`/bytes/N` answers N bytes), a sink, a byte echo.
    BenchServer {
        #[arg(long, default_value_t = 8080)]
        http: u16,
        #[arg(long, default_value_t = 9000)]
        sink: u16,
        #[arg(long, default_value_t = 9001)]
        echo: u16,
    },
    /// Bulk TCP throughput to a sink.
    Bulk {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// HTTP/1.1 latency at a fixed rate (from intended send times).
    Latency {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 1024)]
        body: usize,
    },
    /// Maximum HTTP/1.1 request rate over keep-alive connections.
    MaxRate {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 1024)]
        body: usize,
    },
    /// New connections per second (one request each).
    ConnRate {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Holds `count` connections open.
    Idle {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
}

struct Who {
    pod: String,
    namespace: String,
    version: String,
    node: String,
    /// Requests answered (`/__count` reports it).
    served: std::sync::atomic::AtomicU64,
    /// Requests to `/flaky` (odd ones fail).
    flaky: std::sync::atomic::AtomicU64,
    fail_status: Option<u16>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var_os(name).and_then(|v| v.into_string().ok()).unwrap_or_else(|| default.to_owned())
}

fn who() -> Arc<Who> {
    Arc::new(who_is())
}

fn who_is() -> Who {
    Who {
        pod: env_or("POD_NAME", "unknown"),
        namespace: env_or("POD_NAMESPACE", "unknown"),
        version: env_or("POD_VERSION", "v1"),
        node: env_or("NODE_NAME", "unknown"),
        served: Default::default(),
        flaky: Default::default(),
        fail_status: None,
    }
}

fn main() -> std::process::ExitCode {
    match run(Cmd::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-sample: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// See `Cmd::TlsSecret`.
fn tls_secret(name: &str, namespace: &str, hosts: Vec<String>, dir: &std::path::Path) -> anyhow::Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ambit demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(hosts)?.signed_by(&key, &issuer)?;
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"tls.crt": leaf.pem(), "tls.key": key.serialize_pem()},
    });
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("secret.yaml"), serde_yaml::to_string(&secret)?)?;
    Ok(())
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::Echo { port, tcp_port, fail_status, tls_port, tls_names } => {
                if let Some(tcp) = tcp_port {
                    tokio::spawn(tcp_echo(tcp));
                }
                if let Some(tls) = tls_port {
                    let server = tls_server(tls_names)?;
                    tokio::spawn(async move {
                        if let Err(e) = serve_https(tls, server).await {
                            eprintln!("ambit-sample: HTTPS: {e:#}");
                        }
                    });
                }
                serve_http(port, None, fail_status).await
            }
            Cmd::TcpClient { addr, send, wait_ms } => tcp_client(&addr, &send, wait_ms).await,
            Cmd::Grpc { url, message } => grpc_call(&url, &message).await,
            Cmd::OtlpSink { port } => otlp_sink(port).await,
            Cmd::Front { port, backends } => serve_http(port, Some(Arc::new(backends)), None).await,
            Cmd::TcpEcho { port } => tcp_echo(port).await,
            Cmd::Get { url, timeout_ms, method, header, status: show } => {
                let request = request(&url, &method, &header);
                let (status, body) = tokio::time::timeout(Duration::from_millis(timeout_ms), request)
                    .await
                    .map_err(|_| anyhow::anyhow!("{method} {url}: timed out"))??;
                if show {
                    println!("{status}");
                    println!("{body}");
                    return Ok(());
                }
                println!("{body}");
                anyhow::ensure!((200..300).contains(&status), "{method} {url}: status {status}");
                Ok(())
            }
            Cmd::Load { url, requests, concurrency } => load(&url, requests, concurrency).await,
            Cmd::BenchServer { http, sink, echo } => {
                tokio::spawn(ambit_e2e::load::sink(sink));
                tokio::spawn(ambit_e2e::load::byte_echo(echo));
                serve_http(http, None, None).await
            }
            Cmd::Bulk { addr, streams, seconds } => print(ambit_e2e::load::bulk(addr, streams, seconds).await?),
            Cmd::Latency { addr, rate, seconds, connections, body } => {
                print(ambit_e2e::load::latency(addr, rate, seconds, connections, body).await?)
            }
            Cmd::MaxRate { addr, seconds, connections, body } => {
                print(ambit_e2e::load::max_rate(addr, seconds, connections, body).await?)
            }
            Cmd::ConnRate { addr, seconds, concurrency } => {
                print(ambit_e2e::load::conn_rate(addr, seconds, concurrency).await?)
            }
            Cmd::Idle { addr, count } => ambit_e2e::load::idle(addr, count).await,
            Cmd::TlsSecret { name, namespace, hosts, dir } => tls_secret(&name, &namespace, hosts, &dir),
            Cmd::Sleep => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    })
}

fn print(v: serde_json::Value) -> anyhow::Result<()> {
    println!("{v}");
    Ok(())
}

async fn serve_http(port: u16, backends: Option<Arc<Vec<String>>>, fail_status: Option<u16>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let me = Arc::new(Who { fail_status, ..who_is() });
    eprintln!("ambit-sample: {} listening on :{port}", if backends.is_some() { "front" } else { "echo" });
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (me, backends) = (me.clone(), backends.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (me, backends) = (me.clone(), backends.clone());
                async move { Ok::<_, Infallible>(answer(req, peer, &me, backends.as_deref()).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

/// A TLS server configuration with a fresh self-signed certificate for `names` (HTTP/2 and
/// HTTP/1.1 by ALPN).
fn tls_server(names: Vec<String>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The echo over HTTPS (a server outside the mesh that only speaks TLS).
async fn serve_https(port: u16, config: Arc<rustls::ServerConfig>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let me = who();
    eprintln!("ambit-sample: echo (HTTPS) listening on :{port}");
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, me) = (acceptor.clone(), me.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req| {
                let me = me.clone();
                async move { Ok::<_, Infallible>(answer(req, peer, &me, None).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    me: &Who,
    backends: Option<&Vec<String>>,
) -> Response<EchoBody> {
    use std::sync::atomic::Ordering::Relaxed;
    let served = me.served.fetch_add(1, Relaxed) + 1;
    if req.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")) {
        return grpc_echo(req, me).await;
    }
    // Test behaviours: /status/<code>, /delay/<ms>, /flaky (every other request 503), /__count.
    let path = req.uri().path().to_owned();
    let mut forced = me.fail_status;
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        forced = Some(code);
    } else if let Some(ms) = path.strip_prefix("/delay/").and_then(|c| c.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if path == "/flaky" && me.flaky.fetch_add(1, Relaxed).is_multiple_of(2) {
        forced = Some(503);
    } else if path == "/__count" {
        return json_response(200, serde_json::json!({"pod": me.pod, "served": served}).to_string());
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = serde_json::json!({
        "pod": me.pod,
        "namespace": me.namespace,
        "version": me.version,
        "node": me.node,
        "peer": peer.to_string(),
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "protocol": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut status = 200;
    if let Some(backends) = backends {
        let mut answers = Vec::new();
        for url in backends {
            match get(url).await {
                Ok((s, b)) => {
                    if !(200..300).contains(&s) {
                        status = 502;
                    }
                    answers.push(serde_json::json!({"url": url, "status": s, "body": serde_json::from_str::<serde_json::Value>(&b).unwrap_or(serde_json::Value::String(b))}))
                }
                Err(e) => {
                    status = 502;
                    answers.push(serde_json::json!({"url": url, "error": e.to_string()}));
                }
            }
        }
        body["backends"] = serde_json::Value::Array(answers);
    }
    let _ = req.into_body().collect().await;
    json_response(forced.unwrap_or(status), body.to_string())
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json_response(status: u16, body: String) -> Response<EchoBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

/// gRPC on the wire: the request's length-prefixed messages echoed back with `pod=<name> `
/// in front, `grpc-status` in the trailers (`.../Fail` answers 13, INTERNAL).
async fn grpc_echo(req: Request<Incoming>, me: &Who) -> Response<EchoBody> {
    let fail = req.uri().path().ends_with("/Fail");
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let message = body.get(5..).unwrap_or_default();
    let mut trailers = hyper::HeaderMap::new();
    let mut reply = Vec::new();
    if fail {
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("13"));
        trailers.insert("grpc-message", hyper::header::HeaderValue::from_static("asked to fail"));
    } else {
        let text = [format!("pod={} ", me.pod).as_bytes(), message].concat();
        reply.push(0u8);
        reply.extend_from_slice(&u32::try_from(text.len()).unwrap_or(0).to_be_bytes());
        reply.extend_from_slice(&text);
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    }
    let body = Full::new(Bytes::from(reply)).with_trailers(async move { Some(Ok(trailers)) });
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
    resp
}

async fn otlp_sink(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    eprintln!("ambit-sample: OTLP sink listening on :{port}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let scopes = doc["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default());
                for span in scopes.flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default()) {
                    println!(
                        "{}",
                        serde_json::json!({"traceId": span["traceId"], "spanId": span["spanId"], "parentSpanId": span["parentSpanId"], "name": span["name"]})
                    );
                }
                Ok::<_, Infallible>(json_response(200, "{}".into()))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

/// One unary gRPC call over HTTP/2 cleartext: prints `{"grpc_status", "message"}`.
async fn grpc_call(url: &str, message: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?.to_string();
    let tcp = TcpStream::connect(&authority).await.map_err(|e| anyhow::anyhow!("connecting to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(message.as_bytes());
    let req = Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let bytes = collected.to_bytes();
    let grpc_status = trailers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let reply = String::from_utf8_lossy(bytes.get(5..).unwrap_or_default()).into_owned();
    println!("{}", serde_json::json!({"http_status": status, "grpc_status": grpc_status, "message": reply}));
    Ok(())
}

/// `\r`, `\n`, `\xNN` escapes, and `{fill:N}` for N bytes of `a` (oversized requests).
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("\\r") {
            out.push(b'\r');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("\\n") {
            out.push(b'\n');
            rest = r;
        } else if let Some(byte) =
            rest.strip_prefix("\\x").and_then(|r| r.get(..2)).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            rest = &rest[4..];
        } else if let Some((n, r)) = rest.strip_prefix("{fill:").and_then(|r| r.split_once('}')) {
            out.resize(out.len() + n.parse::<usize>().unwrap_or(0), b'a');
            rest = r;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

async fn tcp_client(addr: &str, send: &str, wait_ms: u64) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    tcp.write_all(&unescape(send)).await?;
    tcp.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back))
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no close within 5 s"))??;
    print!("{}", String::from_utf8_lossy(&back));
    Ok(())
}

async fn tcp_echo(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let me = who();
    loop {
        let (mut tcp, peer) = listener.accept().await?;
        let pod = me.pod.clone();
        tokio::spawn(async move {
            if tcp.write_all(format!("peer={peer} pod={pod}\n").as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// A minimal HTTP/1.1 GET (`Connection: close`): status and body.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    request(url, "GET", &[]).await
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
async fn request(url: &str, method: &str, headers: &[String]) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let mut tcp = TcpStream::connect(&target).await.map_err(|e| anyhow::anyhow!("connecting to {target}: {e}"))?;
    tcp.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: ambit-sample\r\nconnection: close\r\n{}\r\n",
            headers.iter().map(|h| format!("{h}\r\n")).collect::<String>()
        )
        .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.map_err(|e| anyhow::anyhow!("reading from {target}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{url}: no HTTP response ({} bytes)", raw.len()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("{url}: bad status line"))?;
    Ok((status, body.to_owned()))
}

async fn load(url: &str, requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counts = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, counts, url) = (next.clone(), counts.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let key = match get(&url).await {
                    Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["pod"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "200".into()),
                    Ok((status, _)) => format!("status {status}"),
                    Err(e) => format!("error: {e}"),
                };
                *counts.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let counts = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "{}",
        serde_json::json!({"requests": requests, "seconds": start.elapsed().as_secs_f64(), "by_pod": counts})
    );
    Ok(())
}
