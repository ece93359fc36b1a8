//! Tracing: the waypoint joins the request's trace as one span. W3C `traceparent` and B3
//! (`x-b3-*` or the single `b3` header) are read; the request goes on with both formats naming
//! the waypoint's span as parent. A request without trace context starts a trace, sampled at
//! `--trace-sampling` percent; an incoming sampling decision is kept. Sampled spans are
//! exported over OTLP/HTTP (JSON encoding, `POST <endpoint>/v1/traces`) in batches when
//! `--otlp-endpoint` is set; export failures are logged and the spans dropped — tracing never
//! holds up a request.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use tokio::sync::mpsc;

/// One request's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    /// The caller's span, when the request came with one.
    pub parent_id: Option<u64>,
    /// The waypoint's own span.
    pub span_id: u64,
    pub sampled: bool,
}

fn hex_u128(s: &str) -> Option<u128> {
    // B3 allows 64-bit trace ids (16 hex digits).
    if !(s.len() == 32 || s.len() == 16) {
        return None;
    }
    u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten().filter(|v| *v != 0)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `00-<trace>-<parent>-<flags>`.
fn from_traceparent(headers: &HeaderMap) -> Option<(u128, u64, bool)> {
    let v = header(headers, "traceparent")?;
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((hex_u128(trace)?, hex_u64(parent)?, flags & 1 == 1))
}

fn from_b3(headers: &HeaderMap) -> Option<(u128, u64, bool)> {
    if let Some(single) = header(headers, "b3") {
        let mut parts = single.trim().split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
        return Some((hex_u128(trace)?, hex_u64(span)?, sampled));
    }
    let trace = hex_u128(header(headers, "x-b3-traceid")?)?;
    let span = hex_u64(header(headers, "x-b3-spanid")?)?;
    let sampled = header(headers, "x-b3-sampled").is_none_or(|s| s == "1" || s == "true")
        || header(headers, "x-b3-flags") == Some("1");
    Some((trace, span, sampled))
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Reads the incoming context (W3C first, then B3), makes the waypoint's span, and rewrites
/// the request's headers so the next hop is the waypoint span's child.
pub fn start(headers: &mut HeaderMap, sampling_percent: f64) -> SpanContext {
    let incoming = from_traceparent(headers).or_else(|| from_b3(headers));
    let ctx = match incoming {
        Some((trace_id, parent, sampled)) => {
            SpanContext { trace_id, parent_id: Some(parent), span_id: nonzero_u64(), sampled }
        }
        None => SpanContext {
            trace_id: fastrand::u128(1..),
            parent_id: None,
            span_id: nonzero_u64(),
            sampled: fastrand::f64() * 100.0 < sampling_percent,
        },
    };
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    let flag = if ctx.sampled { "1" } else { "0" };
    set(headers, "traceparent", format!("00-{:032x}-{:016x}-0{flag}", ctx.trace_id, ctx.span_id));
    headers.remove("b3");
    set(headers, "x-b3-traceid", format!("{:032x}", ctx.trace_id));
    set(headers, "x-b3-spanid", format!("{:016x}", ctx.span_id));
    match ctx.parent_id {
        Some(p) => set(headers, "x-b3-parentspanid", format!("{p:016x}")),
        None => {
            headers.remove("x-b3-parentspanid");
        }
    }
    set(headers, "x-b3-sampled", flag.to_owned());
    ctx
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub ctx: SpanContext,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

/// Sends sampled spans to the exporter task (dropped when its queue is full).
#[derive(Clone)]
pub struct Exporter {
    tx: Option<mpsc::Sender<Span>>,
}

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Exporter {
    /// No export (no endpoint configured).
    pub fn disabled() -> Self {
        Exporter { tx: None }
    }

    /// Starts the exporter task for `endpoint` (`http://host:port`).
    pub fn spawn(endpoint: &str, service_name: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(endpoint.trim_end_matches('/').to_owned(), service_name.to_owned(), rx));
        Exporter { tx: Some(tx) }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, span: Span) {
        if let (Some(tx), true) = (&self.tx, span.ctx.sampled) {
            let _ = tx.try_send(span);
        }
    }
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

/// The OTLP/HTTP JSON body for a batch.
pub fn otlp_json(service_name: &str, spans: &[Span]) -> serde_json::Value {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<serde_json::Value> =
                s.attributes.iter().map(|(k, v)| serde_json::json!({"key": k, "value": {"stringValue": v}})).collect();
            serde_json::json!({
                "traceId": format!("{:032x}", s.ctx.trace_id),
                "spanId": format!("{:016x}", s.ctx.span_id),
                "parentSpanId": s.ctx.parent_id.map(|p| format!("{p:016x}")).unwrap_or_default(),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": unix_nanos(s.start),
                "endTimeUnixNano": unix_nanos(s.end),
                "attributes": attributes,
                "status": {"code": if s.error { 2 } else { 0 }},
            })
        })
        .collect();
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]},
        "scopeSpans": [{"scope": {"name": "ambit-waypoint"}, "spans": spans}],
    }]})
}

async fn export_loop(endpoint: String, service_name: String, mut rx: mpsc::Receiver<Span>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= BATCH {
                            break;
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            post(&endpoint, &otlp_json(&service_name, &batch)).await;
                        }
                        return;
                    }
                },
                () = &mut deadline => break,
            }
        }
        if !batch.is_empty() {
            let body = otlp_json(&service_name, &batch);
            batch.clear();
            post(&endpoint, &body).await;
        }
    }
}

async fn post(endpoint: &str, body: &serde_json::Value) {
    if let Err(e) = try_post(endpoint, body).await {
        tracing::warn!(%endpoint, error = %e, "exporting spans failed; dropped");
    }
}

async fn try_post(endpoint: &str, body: &serde_json::Value) -> Result<(), String> {
    let uri: http::Uri = format!("{endpoint}/v1/traces").parse().map_err(|e| format!("{e}"))?;
    let body = bytes::Bytes::from(body.to_string());
    let tls = crate::fetch::system_tls();
    let (status, _) = crate::fetch::request(http::Method::POST, &uri, Some("application/json"), body, &tls).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_context_is_continued_with_the_waypoints_span() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let ctx = start(&mut h, 0.0);
        assert_eq!(ctx.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(ctx.parent_id, Some(0xb7ad6b7169203331));
        assert!(ctx.sampled, "the caller's decision is kept");
        let out = h["traceparent"].to_str().unwrap();
        assert!(out.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && out.ends_with("-01"), "{out}");
        assert_ne!(&out[36..52], "b7ad6b7169203331", "the next hop's parent is the waypoint's span");
        assert_eq!(h["x-b3-parentspanid"], "b7ad6b7169203331");
    }

    #[test]
    fn b3_single_and_multi_headers_and_new_traces() {
        let mut h = HeaderMap::new();
        h.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"));
        let ctx = start(&mut h, 100.0);
        assert_eq!((ctx.trace_id, ctx.sampled), (0x80f198ee56343ba864fe8b2a57d3eff7, false));
        assert!(h.get("b3").is_none() && h["x-b3-sampled"] == "0");

        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let ctx = start(&mut h, 0.0);
        assert_eq!(ctx.trace_id, 0x463ac35c9f6413ad, "64-bit B3 trace id");
        assert!(ctx.sampled, "B3 without a decision: sampled");

        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-00000000000000000000000000000000-b7ad6b7169203331-01"));
        let ctx = start(&mut h, 0.0);
        assert!(ctx.parent_id.is_none() && !ctx.sampled, "an invalid context starts a new, unsampled trace");
    }

    #[test]
    fn otlp_json_names_ids_in_hex() {
        let ctx = SpanContext { trace_id: 1, parent_id: Some(2), span_id: 3, sampled: true };
        let now = SystemTime::now();
        let body = otlp_json(
            "waypoint.shop",
            &[Span {
                ctx,
                name: "GET /".into(),
                start: now,
                end: now,
                attributes: vec![("http.method", "GET".into())],
                error: false,
            }],
        );
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "00000000000000000000000000000001");
        assert_eq!(span["parentSpanId"], "0000000000000002");
        assert_eq!(span["attributes"][0]["key"], "http.method");
    }
}
