//! Load generators and their servers, run inside sandbox pods by `ambit-sample`:
//! - bulk TCP throughput over N streams (`sink` server);
//! - HTTP/1.1 latency at a fixed rate, measured from each request's *intended* send time (a
//!   stall delays every request scheduled behind it and shows in the tail, not hidden by a
//!   slower sender), into an HDR histogram;
//! - the maximum HTTP/1.1 request rate over N keep-alive connections;
//! - new connections per second (a fresh TCP connection per request);
//! - N idle connections held open (memory per connection of whatever is in between).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads and discards everything sent to `port`.
pub async fn sink(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

/// Writes to `addr` over `streams` connections for `seconds`; Gbit/s.
pub async fn bulk(addr: SocketAddr, streams: usize, seconds: f64) -> anyhow::Result<Value> {
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for _ in 0..streams {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        conns.push(tcp);
    }
    let mut tasks = Vec::new();
    for mut tcp in conns {
        let (total, stop) = (total.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let buf = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match tcp.write(&buf).await {
                    Ok(n) => {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    let elapsed = run_for(seconds, &stop, tasks).await;
    let bytes = total.load(Ordering::Relaxed);
    Ok(json!({"streams": streams, "seconds": elapsed, "bytes": bytes, "gbps": bytes as f64 * 8.0 / elapsed / 1e9}))
}

/// Lets `tasks` run for `seconds`, raises `stop`, waits for them; the elapsed seconds.
async fn run_for(seconds: f64, stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) -> f64 {
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    elapsed
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_conn(addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(addr: SocketAddr, body: &Bytes) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("/bytes/{}", body.len()))
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(body.clone()))
        .unwrap_or_default()
}

async fn one(sender: &mut Sender, addr: SocketAddr, body: &Bytes) -> anyhow::Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(request(addr, body)).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    resp.into_body().collect().await?;
    Ok(())
}

/// Requests at `rate` per second for `seconds` over up to `connections` keep-alive
/// connections; latency from each request's intended send time, in microseconds.
pub async fn latency(
    addr: SocketAddr,
    rate: u64,
    seconds: f64,
    connections: usize,
    body_size: usize,
) -> anyhow::Result<Value> {
    let body = Bytes::from(vec![b'x'; body_size]);
    let (tx, rx) = async_channel::<Instant>(connections * 4);
    let hist = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let mut sender = http_conn(addr).await?;
        let (rx, hist, errors, body) = (rx.clone(), hist.clone(), errors.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            while let Ok(intended) = rx.recv().await {
                let ok = one(&mut sender, addr, &body).await;
                let micros = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                match ok {
                    Ok(()) => {
                        let _ = hist.lock().unwrap_or_else(|p| p.into_inner()).record(micros);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(s) = http_conn(addr).await {
                            sender = s;
                        }
                    }
                }
            }
        }));
    }
    // The schedule runs on its own thread with the OS's sleep (tens of microseconds of slack)
    // rather than the runtime's millisecond timer, so the intended times are kept closely.
    let total = (rate as f64 * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..total {
            let intended = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
            let now = Instant::now();
            if intended > now {
                #[allow(clippy::disallowed_methods)] // a dedicated timing thread, not a runtime worker
                std::thread::sleep(intended - now);
            }
            if tx.blocking_send(intended).is_err() {
                break;
            }
        }
    });
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    for w in workers {
        let _ = w.await;
    }
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    Ok(json!({
        "rate": rate,
        "requests": h.len(),
        "errors": errors.load(Ordering::Relaxed),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    }))
}

/// Closed loop over `connections` keep-alive connections for `seconds`: requests per second.
pub async fn max_rate(addr: SocketAddr, seconds: f64, connections: usize, body_size: usize) -> anyhow::Result<Value> {
    let body = Bytes::from(vec![b'x'; body_size]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut sender = http_conn(addr).await?;
        let (done, stop, body) = (done.clone(), stop.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if one(&mut sender, addr, &body).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let elapsed = run_for(seconds, &stop, tasks).await;
    let n = done.load(Ordering::Relaxed);
    Ok(json!({"connections": connections, "requests": n, "rps": n as f64 / elapsed}))
}

/// A fresh TCP connection per request, `concurrency` at a time, for `seconds`.
pub async fn conn_rate(addr: SocketAddr, seconds: f64, concurrency: usize) -> anyhow::Result<Value> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = Bytes::from_static(b"");
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, errors, stop, body) = (done.clone(), errors.clone(), stop.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let mut s = http_conn(addr).await?;
                    one(&mut s, addr, &body).await
                }
                .await;
                match r {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let elapsed = run_for(seconds, &stop, tasks).await;
    let n = done.load(Ordering::Relaxed);
    Ok(
        json!({"concurrency": concurrency, "connections": n, "errors": errors.load(Ordering::Relaxed), "per_second": n as f64 / elapsed}),
    )
}

/// Opens `count` connections to `addr` and holds them; prints `{"open": n}` once they are
/// all established, then waits until killed.
pub async fn idle(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    const PARALLEL: usize = 32;
    let mut openers = Vec::new();
    for i in 0..PARALLEL {
        let n = count / PARALLEL + usize::from(i < count % PARALLEL);
        openers.push(tokio::spawn(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                let mut tcp = TcpStream::connect(addr).await?;
                // One round trip, so the connection exists end to end (through any proxy).
                tcp.write_all(b"x").await?;
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await?;
                held.push(tcp);
            }
            Ok::<_, std::io::Error>(held)
        }));
    }
    let mut held = Vec::with_capacity(count);
    for o in openers {
        held.extend(o.await??);
    }
    println!("{}", json!({"open": held.len()}));
    std::future::pending::<()>().await;
    Ok(())
}

/// Answers one byte per byte (the idle test's round trip).
pub async fn byte_echo(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// A small multi-consumer channel over tokio's mpsc + mutex (work queue for the workers).
fn async_channel<T: Send + 'static>(cap: usize) -> (tokio::sync::mpsc::Sender<T>, SharedRx<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct SharedRx<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedRx<T> {
    fn clone(&self) -> Self {
        SharedRx(self.0.clone())
    }
}

impl<T> SharedRx<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
