//! Logging set-up (tracing, JSON or plain), the Prometheus registry helpers and the small
//! admin HTTP server every daemon runs (readiness and `/metrics`).
//!
//! Owns process-wide telemetry plumbing. Which metrics exist is each daemon's business.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::admission::{Admission, ConnectionLimits};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error("admin server on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Installs the global logger. `filter` uses `RUST_LOG` syntax (e.g. `info,access=debug`).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter { filter: filter.to_owned(), reason: e.to_string() })?;
    // Colours only on a terminal: log files and collectors get plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// A registry with every metric under the `istio_` prefix, as Istio's names are.
pub fn istio_registry() -> Registry {
    Registry::with_prefix("istio")
}

/// Logging settings every daemon takes (flags or environment, as Istio's ztunnel names them).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LogArgs {
    /// Log line format: `plain` or `json`.
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "plain")]
    pub format: LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,access=debug`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
}

impl LogArgs {
    pub fn init(&self) -> Result<(), TelemetryError> {
        init_logging(self.format, &self.filter)
    }
}

/// Starts the admin endpoints on their own single-threaded runtime and thread, so a busy data
/// path never delays a readiness probe or a metrics scrape. Each address serves every admin
/// path; `config` is shown at `/debug/config`. A daemon's own pages (`routes`) are served only
/// on the address paired with them (a loopback admin port, not the public metrics or probe
/// ports). Returns once all addresses are bound.
pub fn spawn_admin(
    addrs: Vec<SocketAddr>,
    readiness: Readiness,
    registry: Arc<Mutex<Registry>>,
    config: serde_json::Value,
    routes: Option<(AdminRoutes, SocketAddr)>,
) -> Result<Vec<SocketAddr>, TelemetryError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let config: Arc<str> = serde_json::to_string_pretty(&config).unwrap_or_default().into();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(TelemetryError::Bind { addr: addrs[0], source: e }));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut bound = Vec::new();
                for addr in addrs {
                    match AdminServer::bind(addr, readiness.clone(), registry.clone()).await {
                        Ok(mut server) => {
                            server.config = config.clone();
                            server.routes =
                                routes.as_ref().filter(|(_, on)| *on == addr).map(|(routes, _)| routes.clone());
                            bound.push(server.local_addr().unwrap_or(addr));
                            tokio::spawn(server.serve());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(bound));
                std::future::pending::<()>().await;
            });
        })
        .map_err(|source| TelemetryError::Bind { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
    rx.recv().unwrap_or(Err(TelemetryError::AlreadyInstalled))
}

/// Registers `istio_build{component, tag} 1`, as Istio's components export it.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let family = Family::<Vec<(String, String)>, Gauge>::default();
    family
        .get_or_create(&vec![
            ("component".to_owned(), component.to_owned()),
            ("tag".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ])
        .set(1);
    registry.register("build", "Ambit build information", family);
}

/// Readiness flag shared between a daemon's subsystems and its admin server.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How long an admin client has to send a request head (probes and scrapes send at once).
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Open admin connections. Bounded per address, so the kubelet's probes (from their own
/// address) cannot be crowded out by pods holding connections; the total is only a backstop.
const ADMIN_CONNECTIONS: ConnectionLimits = ConnectionLimits { total: 16_384, per_peer: 64 };

/// The admin server: `/healthz/ready` (200 once ready, 503 before) and `/metrics`
/// (Prometheus text format). Runs on whatever runtime the caller spawns it on.
pub struct AdminServer {
    pub listener: TcpListener,
    pub readiness: Readiness,
    pub registry: Arc<Mutex<Registry>>,
    /// The daemon's effective configuration, served at `/debug/config`.
    pub config: Arc<str>,
    /// The daemon's own debug pages.
    pub routes: Option<AdminRoutes>,
}

/// A daemon's extra admin pages: path → JSON body, `None` for paths it does not serve.
pub type AdminRoutes = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl AdminServer {
    pub async fn bind(
        addr: SocketAddr,
        readiness: Readiness,
        registry: Arc<Mutex<Registry>>,
    ) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
        Ok(AdminServer { listener, readiness, registry, config: Arc::from("{}"), routes: None })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves forever. `/debug/*` pages (configuration, state dumps) answer loopback peers
    /// only — `kubectl port-forward` arrives on loopback — while probes and metrics answer
    /// anyone. A client gets [`ADMIN_HEADER_TIMEOUT`] to send its request head, and the
    /// open connections are bounded in all and per address.
    pub async fn serve(self) {
        let state = Arc::new((self.readiness, self.registry, self.config, self.routes));
        let admission = Admission::new(ADMIN_CONNECTIONS);
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // EMFILE and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = admission.admit(peer.ip()) else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        if !admin_page_allowed(peer.ip(), req.uri().path()) {
                            return Ok::<_, Infallible>(text(
                                StatusCode::FORBIDDEN,
                                "debug pages are served to loopback clients only (use kubectl port-forward)\n",
                            ));
                        }
                        Ok(admin_response(&req, &state.0, &state.1, &state.2, state.3.as_ref()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }
}

/// Probes and metrics answer anyone; `/debug/*` answers loopback peers only.
fn admin_page_allowed(peer: IpAddr, path: &str) -> bool {
    peer.to_canonical().is_loopback() || !path.starts_with("/debug/")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn admin_response(
    req: &Request<Incoming>,
    readiness: &Readiness,
    registry: &Mutex<Registry>,
    config: &Arc<str>,
    routes: Option<&AdminRoutes>,
) -> Response<Full<Bytes>> {
    if let Some(body) = routes.and_then(|r| r(req.uri().path())) {
        let mut resp = text(StatusCode::OK, body);
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return resp;
    }
    match req.uri().path() {
        "/debug/config" => text(StatusCode::OK, config.to_string()),
        // Liveness: the admin runtime answers, whatever the readiness.
        "/healthz/live" => text(StatusCode::OK, "live\n"),
        "/healthz/ready" | "/ready" => {
            if readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" | "/stats/prometheus" => {
            let mut body = String::new();
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    resp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_and_metrics_are_served() {
        let mut registry = istio_registry();
        let c: Counter = Counter::default();
        registry.register("tcp_connections_opened", "Connections opened", c.clone());
        c.inc_by(3);
        let readiness = Readiness::default();
        let admin =
            AdminServer::bind("127.0.0.1:0".parse().unwrap(), readiness.clone(), Arc::new(Mutex::new(registry)))
                .await
                .unwrap();
        let addr = admin.local_addr().unwrap();
        tokio::spawn(admin.serve());
        assert!(get(addr, "/healthz/ready").await.starts_with("HTTP/1.1 503"));
        readiness.set_ready();
        assert!(get(addr, "/healthz/ready").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("istio_tcp_connections_opened_total 3"), "{metrics}");
        assert!(get(addr, "/healthz/live").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/debug/config").await.starts_with("HTTP/1.1 200"), "loopback reads debug pages");
    }

    #[test]
    fn debug_pages_answer_loopback_only() {
        let pod: IpAddr = "10.244.1.7".parse().unwrap();
        for path in ["/debug/config", "/debug/config_dump", "/debug/rejected"] {
            assert!(!admin_page_allowed(pod, path), "{path}");
            assert!(admin_page_allowed("127.0.0.1".parse().unwrap(), path));
            assert!(admin_page_allowed("::1".parse().unwrap(), path));
            assert!(admin_page_allowed("::ffff:127.0.0.1".parse().unwrap(), path));
        }
        for path in ["/metrics", "/stats/prometheus", "/healthz/ready", "/ready"] {
            assert!(admin_page_allowed(pod, path), "{path}");
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_is_disconnected() {
        let admin = AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
            Arc::new(Mutex::new(istio_registry())),
        )
        .await
        .unwrap();
        let addr = admin.local_addr().unwrap();
        tokio::spawn(admin.serve());
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let mut out = Vec::new();
        // The server closes the connection once the header deadline passes.
        let _ = s.read_to_end(&mut out).await;
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"), "no response to an unfinished request");
    }
}
