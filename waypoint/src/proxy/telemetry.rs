//! A request's telemetry: Istio's request metrics, the access-log line (target `access`) and
//! the waypoint's span, recorded once when the response body ends — or is dropped, for a
//! client gone early. It does not decide flags or statuses; it records what it is given.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use super::{Body, BoxError};
use crate::metrics::{Metrics, RequestLabels};

/// What is recorded for a request once its response has been sent.
pub(super) struct Completion {
    pub(super) metrics: Arc<Metrics>,
    pub(super) labels: RequestLabels,
    pub(super) start: Instant,
    pub(super) request_bytes: u64,
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) source_ip: IpAddr,
    pub(super) principal: Arc<str>,
    pub(super) endpoint: Option<Arc<str>>,
    /// The waypoint's span, when spans are exported.
    pub(super) span: Option<(crate::trace::SpanContext, std::time::SystemTime, crate::trace::Exporter)>,
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
pub(super) struct Observed {
    pub(super) inner: Body,
    pub(super) bytes: u64,
    pub(super) completion: Option<Completion>,
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
                    let status = trailers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
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
