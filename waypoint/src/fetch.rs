//! The waypoint's own outbound HTTP calls — JWT key sets, span export — over plain TCP or
//! HTTPS (roots from the system's store, as the `ca-certificates` package lays it out, or given
//! by the caller). Not the data path: one request per connection, bodies up to 1 MiB, 5 s to
//! connect.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1024 * 1024;

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), read once.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system roots");
            Arc::new(roots)
        })
        .clone()
}

/// TLS for public endpoints: the system's roots.
pub fn system_tls() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| tls_with_roots(Arc::unwrap_or_clone(system_roots()))).clone()
}

/// TLS 1.2/1.3 (aws-lc-rs) trusting `roots`, ALPN `http/1.1`.
pub fn tls_with_roots(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The provider supports the default versions; this cannot fail with aws-lc-rs.
        Err(_) => {
            rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 request to `http://` or `https://` `uri`; (status, body).
pub async fn request(
    method: http::Method,
    uri: &http::Uri,
    content_type: Option<&str>,
    body: Bytes,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(http::StatusCode, Bytes), String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let authority = uri.authority().ok_or("no host")?.clone();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((authority.host(), port)))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str());
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req.body(http_body_util::Full::new(body)).map_err(|e| e.to_string())?;
    if https {
        let name = ServerName::try_from(authority.host().to_owned()).map_err(|e| e.to_string())?;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<IO>(io: IO, req: http::Request<http_body_util::Full<Bytes>>) -> Result<(http::StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}
