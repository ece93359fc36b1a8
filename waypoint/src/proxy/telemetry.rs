//! A request's telemetry: Istio's request metrics, the access-log line (target `access`) and
//! the waypoint's span. [`Telemetry`] is a guard taken when the request arrives; its one
//! [`Telemetry::record`] call takes how the request ended — a backend's answer or a typed
//! [`Failed`] — derives the status and response flag from it, and hands back the response whose
//! body records the request once when it ends, or is dropped (a client gone early). A request
//! dropped before it was answered (the client reset the stream or left) is recorded when the
//! guard drops, as Envoy does: response code 0, flag `DC`. It does not decide anything about
//! the request.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ambit_dataplane::labels::{Peer, ServiceLabels};
use ambit_dataplane::state::Workload;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use super::body::{Body, BoxError};
use super::downstream::Downstream;
use super::failure::Failed;
use crate::metrics::{Flag, Metrics, RequestLabels};

/// How a request ended: answered by a backend (its workload) or by the waypoint itself (a
/// redirect), or failed.
pub(super) type Answered<'a> = Result<(Response<Body>, Option<Arc<Workload>>), Failed<'a>>;

/// A request's telemetry from its arrival: recorded exactly once, by [`Telemetry::record`] or,
/// when the request is dropped unanswered, by `Drop`.
pub(super) struct Telemetry(Option<Arrived>);

/// What is known of a request when it arrives.
struct Arrived {
    metrics: Arc<Metrics>,
    start: Instant,
    /// The waypoint's span, and when it started if spans are exported.
    span: (crate::trace::SpanContext, Option<std::time::SystemTime>),
    tracer: crate::trace::Exporter,
    method: http::Method,
    /// The path and query as the client sent them.
    path: String,
    /// `grpc`, `http2` or `http`.
    protocol: &'static str,
    /// The request's `content-length`, 0 without one.
    request_bytes: u64,
    source: Peer,
    service: ServiceLabels,
    source_ip: IpAddr,
    principal: Arc<str>,
}

impl Telemetry {
    /// Starts the request's telemetry (and continues or starts its trace in its headers).
    pub(super) fn start<B>(
        metrics: &Arc<Metrics>,
        tracer: &crate::trace::Exporter,
        sampling: f64,
        down: &Downstream,
        req: &mut Request<B>,
    ) -> Self {
        let start = Instant::now();
        let span = crate::trace::start(req.headers_mut(), sampling);
        let span_start = tracer.enabled().then(std::time::SystemTime::now);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let protocol = if grpc {
            "grpc"
        } else if req.version() == http::Version::HTTP_2 {
            "http2"
        } else {
            "http"
        };
        Telemetry(Some(Arrived {
            metrics: metrics.clone(),
            start,
            span: (span, span_start),
            tracer: tracer.clone(),
            method: req.method().clone(),
            path: logged_path(req.uri().path_and_query().map_or("/", |p| p.as_str())),
            protocol,
            request_bytes: req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
            source: down.source.clone(),
            service: ServiceLabels::of(&down.service),
            source_ip: down.source_ip,
            principal: down.principal.clone(),
        }))
    }

    /// The one record of a request: the response (a failure's, with the route's response
    /// header operations), its flag, and the body that records the request when it ends.
    pub(super) fn record(mut self, answered: Answered<'_>) -> Response<Body> {
        let (response, flag, endpoint) = respond(answered);
        // Always there: only this call and `Drop` take it, and this call takes `self`.
        let Some(arrived) = self.0.take() else { return response };
        let grpc_status = grpc_status(response.headers());
        let completion = arrived.completion(response.status().as_u16(), grpc_status, flag, endpoint);
        // Recorded when the response body ends (gRPC's status is in its trailers).
        response.map(|inner| Observed { inner, bytes: 0, completion: Some(completion) }.boxed())
    }
}

impl Drop for Telemetry {
    /// A request dropped before it was answered: the client reset its stream or left.
    fn drop(&mut self) {
        if let Some(arrived) = self.0.take() {
            arrived.completion(0, None, Flag::DownstreamTermination, None).finish(0);
        }
    }
}

/// The response for how a request ended, its flag and the endpoint that answered.
fn respond(answered: Answered<'_>) -> (Response<Body>, Flag, Option<Arc<Workload>>) {
    match answered {
        Ok((response, endpoint)) => (response, Flag::None, endpoint),
        Err(failed) => {
            tracing::debug!(side = ?failed.failure.side(), failure = %failed.failure, "answered by the waypoint");
            let mut response = failed.failure.response();
            for ops in &failed.response_ops {
                ops.apply(response.headers_mut());
            }
            (response, failed.failure.flag(), failed.endpoint)
        }
    }
}

impl Arrived {
    /// What will be recorded, once the response's status and flag are known.
    fn completion(self, code: u16, grpc_status: Option<u8>, flag: Flag, endpoint: Option<Arc<Workload>>) -> Completion {
        let destination = match &endpoint {
            Some(w) => Peer::from_workload(w, Some(Arc::from(w.identity.to_string()))),
            None => Peer::unknown(),
        };
        let (span, span_start) = self.span;
        Completion {
            metrics: self.metrics,
            labels: RequestLabels {
                source: self.source,
                destination,
                service: Some(self.service),
                protocol: self.protocol,
                code,
                grpc_status,
                flag,
            },
            start: self.start,
            request_bytes: self.request_bytes,
            method: self.method,
            path: self.path,
            source_ip: self.source_ip,
            principal: self.principal,
            endpoint: endpoint.map(|w| w.name.clone()),
            span: span_start.map(|t| (span, t, self.tracer)),
        }
    }
}

/// A response's `grpc-status`, as gRPC defines it: 0–16, anything else read as UNKNOWN (2) —
/// the backend writes this header, and every distinct value would be a new metric series.
fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    let code: u32 = headers.get("grpc-status")?.to_str().ok()?.trim().parse().unwrap_or(2);
    Some(if code <= 16 { code as u8 } else { 2 })
}

/// The longest path (with query) an access-log line or span carries; longer ones are cut.
const MAX_LOGGED_PATH: usize = 1024;

/// The request's path and query as logged: at most [`MAX_LOGGED_PATH`] bytes (cut on a character
/// boundary, marked with `…`), so a client cannot make every log line as long as its URI.
fn logged_path(path: &str) -> String {
    if path.len() <= MAX_LOGGED_PATH {
        return path.to_owned();
    }
    let mut end = MAX_LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// What is recorded for a request once its response has been sent.
struct Completion {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    request_bytes: u64,
    method: http::Method,
    path: String,
    source_ip: IpAddr,
    principal: Arc<str>,
    endpoint: Option<Arc<str>>,
    /// The waypoint's span, when spans are exported.
    span: Option<(crate::trace::SpanContext, std::time::SystemTime, crate::trace::Exporter)>,
}

impl Completion {
    fn finish(self, response_bytes: u64) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        if let Some((ctx, started, exporter)) = &self.span {
            let l = &self.labels;
            exporter.record(crate::trace::Span {
                ctx: *ctx,
                name: format!("{} {}", self.method, l.service.as_ref().map_or("unknown", |s| &*s.hostname)),
                start: *started,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("http.method", self.method.to_string()),
                    ("http.url", self.path.clone()),
                    ("http.status_code", l.code.to_string()),
                    ("upstream_cluster", self.endpoint.as_deref().unwrap_or("-").to_owned()),
                    ("response_flags", l.flag.as_str().to_owned()),
                    ("peer.principal", self.principal.to_string()),
                ],
                error: l.code >= 500,
            });
        }
        self.metrics.record(&self.labels, ms, self.request_bytes, response_bytes);
        let l = &self.labels;
        tracing::info!(
            target: "access",
            protocol = l.protocol,
            src.addr = %self.source_ip,
            src.identity = %self.principal,
            dst.service = l.service.as_ref().map(|s| &*s.hostname),
            dst.workload = self.endpoint.as_deref(),
            method = %self.method,
            path = %self.path,
            status = l.code,
            grpc_status = l.grpc_status,
            response_flags = l.flag.as_str(),
            bytes_sent = self.request_bytes,
            bytes_recv = response_bytes,
            duration = format!("{ms:.1}ms"),
            "request complete"
        );
    }
}

/// The response body on its way to the client: counts bytes, reads `grpc-status` from the
/// trailers, and records the request when it ends (or is dropped, for a client gone early).
struct Observed {
    inner: Body,
    bytes: u64,
    completion: Option<Completion>,
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let status = grpc_status(trailers);
                    if let (Some(c), Some(status)) = (this.completion.as_mut(), status) {
                        c.labels.grpc_status = Some(status);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(c) = this.completion.take() {
                    c.finish(this.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_dataplane::state::testing::svc;
    use ambit_shared::proto::waypoint as pb;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::l7::ServiceL7;
    use crate::proxy::body::body;

    fn downstream() -> Downstream {
        let identity: ambit_shared::Identity = "spiffe://cluster.local/ns/shop/sa/front".parse().expect("identity");
        Downstream {
            principal: Arc::from(identity.to_string()),
            identity: Some(identity),
            source: Peer::unknown(),
            source_ip: "10.0.0.9".parse().expect("ip"),
            vip: "10.96.0.10:80".parse().expect("vip"),
            service: Arc::new(svc("shop", "cart.shop.svc.cluster.local", [10, 96, 0, 10])),
            l7: Arc::new(ServiceL7::compile(&pb::ServiceConfig::default()).expect("an empty configuration")),
            ingress: None,
            workload: None,
        }
    }

    /// Every `istio_requests_total` series as text.
    fn requests(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encoding");
        text.lines().filter(|l| l.starts_with("requests_total{")).map(str::to_owned).collect()
    }

    #[test]
    fn a_request_dropped_before_its_answer_is_recorded_once_as_dc() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut req = Request::builder().uri("/cart").body(()).expect("request");
        let telemetry = Telemetry::start(&metrics, &crate::trace::Exporter::disabled(), 0.0, &downstream(), &mut req);
        drop(telemetry);
        let series = requests(&registry);
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].contains(r#"response_code="0""#) && series[0].contains(r#"response_flags="DC""#));
        assert!(series[0].ends_with(" 1"), "{series:?}");
    }

    #[test]
    fn an_answered_request_is_recorded_once_when_its_body_ends() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut req = Request::builder().uri("/cart").body(()).expect("request");
        let telemetry = Telemetry::start(&metrics, &crate::trace::Exporter::disabled(), 0.0, &downstream(), &mut req);
        let response = telemetry.record(Ok((Response::new(body("ok")), None)));
        assert!(requests(&registry).is_empty(), "not before the body ends");
        drop(response);
        let series = requests(&registry);
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].contains(r#"response_code="200""#) && series[0].contains(r#"response_flags="-""#));
        assert!(series[0].ends_with(" 1"), "{series:?}");
    }

    #[test]
    fn logged_paths_are_bounded() {
        assert_eq!(super::logged_path("/a?b=c"), "/a?b=c");
        let long = format!("/{}", "é".repeat(2000));
        let logged = super::logged_path(&long);
        assert!(logged.len() <= super::MAX_LOGGED_PATH + '…'.len_utf8(), "{}", logged.len());
        assert!(logged.ends_with('…') && long.starts_with(logged.trim_end_matches('…')));
    }

    #[test]
    fn grpc_status_is_read_as_grpc_defines_it() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", http::HeaderValue::from_str(v).expect("value"));
            grpc_status(&h)
        };
        assert_eq!(grpc_status(&http::HeaderMap::new()), None);
        assert_eq!(with("0"), Some(0));
        assert_eq!(with("16"), Some(16));
        // A backend cannot mint new series: anything else is UNKNOWN.
        for odd in ["17", "255", "99999", "-1", "ok"] {
            assert_eq!(with(odd), Some(2), "{odd}");
        }
    }
}
