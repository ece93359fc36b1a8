//! Why a request was answered by the waypoint rather than a backend: one typed failure per
//! cause, classified by side (downstream, upstream, internal), from which the status, the
//! response text and Istio's response flag are derived in one place. It does not record (see
//! [`super::telemetry`]).

use std::sync::Arc;

use ambit_dataplane::state::Workload;
use http::{Response, StatusCode};

use super::body::{respond, Body};
use crate::l7::{Denial, HeaderOps};
use crate::metrics::Flag;

/// Where a failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The client's request: malformed, unauthenticated, denied, unroutable.
    Downstream,
    /// The backend: unreachable, overloaded, too slow.
    Upstream,
    /// The waypoint's configuration answers by design (no backend, an injected fault).
    Internal,
}

/// A request the waypoint answered itself.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Failure {
    /// A request the waypoint will not read one way (400); the text says what.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A token present but invalid (401); the text is Envoy's.
    #[error("JWT refused: {0}")]
    Jwt(&'static str),
    /// Denied by authorization (403).
    #[error("denied: {0}")]
    Denied(Denial),
    /// Over a RateLimitPolicy rule's limit (429, with `x-ratelimit-*` headers).
    #[error("rate limited by {0:?}")]
    RateLimited(crate::l7::ratelimit::Limited),
    /// Routes for the port, none matching (404).
    #[error("no route matched")]
    NoRoute,
    /// At an ingress gateway: a request on a TLS connection whose Host another listener
    /// claims than the one its SNI chose (421).
    #[error("misdirected request")]
    Misdirected,
    /// A body to buffer (retries, mirrors) past the limit (413).
    #[error("request body too large to retry or mirror")]
    BodyTooLarge,
    /// The request's path does not make an upstream URI (400).
    #[error("bad request path")]
    BadUpstreamPath,
    /// Every backend of the route weighs 0 (500, as Gateway API says).
    #[error("no backend")]
    NoBackend,
    /// The route's fault filter aborted with this status.
    #[error("fault filter abort ({0})")]
    FaultAbort(StatusCode),
    /// No service or no endpoint to send to (503).
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The backend names a subset its service's DestinationRule does not define (503, Envoy's
    /// missing cluster).
    #[error("no cluster")]
    NoCluster,
    /// The chosen endpoint has no address (503).
    #[error("endpoint without address")]
    NoEndpointAddress,
    /// The chosen endpoint's name did not resolve, or resolved where an entry may not lead
    /// (503, Envoy's DNS resolution failure).
    #[error("DNS resolution failed")]
    Resolve,
    /// The backend's connection pool limits are reached (503).
    #[error("upstream overflow")]
    Overflow,
    /// The endpoint could not be reached, or reset before answering (503).
    #[error("upstream connect error or disconnect/reset before headers")]
    Connect,
    /// The attempt took longer than the route allows (504).
    #[error("upstream request timeout")]
    Timeout,
}

impl Failure {
    pub(super) fn side(&self) -> Side {
        match self {
            Failure::BadRequest(_)
            | Failure::Jwt(_)
            | Failure::Denied(_)
            | Failure::RateLimited(_)
            | Failure::NoRoute
            | Failure::Misdirected
            | Failure::BodyTooLarge
            | Failure::BadUpstreamPath => Side::Downstream,
            Failure::NoBackend | Failure::FaultAbort(_) => Side::Internal,
            Failure::NoHealthyUpstream
            | Failure::NoCluster
            | Failure::NoEndpointAddress
            | Failure::Resolve
            | Failure::Overflow
            | Failure::Connect
            | Failure::Timeout => Side::Upstream,
        }
    }

    /// Whether a route's `connect_failure` retry applies.
    pub(super) fn is_connect_failure(&self) -> bool {
        matches!(self, Failure::Connect)
    }

    /// Istio's response flag.
    pub(super) fn flag(&self) -> Flag {
        match self {
            Failure::BadRequest(_) | Failure::BodyTooLarge | Failure::BadUpstreamPath => Flag::DownstreamProtocolError,
            Failure::Jwt(_) => Flag::JwtDenied,
            Failure::Denied(_) => Flag::RbacDenied,
            Failure::RateLimited(_) => Flag::RateLimited,
            Failure::NoRoute | Failure::NoBackend | Failure::Misdirected => Flag::NoRoute,
            Failure::FaultAbort(_) => Flag::FaultAbort,
            Failure::NoHealthyUpstream | Failure::NoEndpointAddress => Flag::NoHealthyUpstream,
            Failure::Resolve => Flag::DnsResolutionFailed,
            Failure::NoCluster => Flag::NoClusterFound,
            Failure::Overflow => Flag::Overflow,
            Failure::Connect => Flag::UpstreamFailure,
            Failure::Timeout => Flag::UpstreamTimeout,
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) | Failure::BadUpstreamPath => StatusCode::BAD_REQUEST,
            Failure::Jwt(_) => StatusCode::UNAUTHORIZED,
            Failure::Denied(_) => StatusCode::FORBIDDEN,
            Failure::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Failure::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::FaultAbort(status) => *status,
            Failure::NoHealthyUpstream
            | Failure::NoCluster
            | Failure::NoEndpointAddress
            | Failure::Resolve
            | Failure::Overflow
            | Failure::Connect => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response body, as Envoy words it where Envoy has an answer.
    fn text(&self) -> &'static str {
        match self {
            Failure::BadRequest(text) | Failure::Jwt(text) => text,
            Failure::Denied(_) => "RBAC: access denied",
            Failure::RateLimited(_) => "local_rate_limited",
            Failure::NoRoute => "no route matched",
            Failure::Misdirected => "misdirected request",
            Failure::BodyTooLarge => "request body too large to retry or mirror",
            Failure::BadUpstreamPath => "bad request path",
            Failure::NoBackend => "no backend",
            Failure::FaultAbort(_) => "fault filter abort",
            Failure::NoHealthyUpstream => "no healthy upstream",
            Failure::NoCluster => "no healthy upstream",
            Failure::NoEndpointAddress => "endpoint without address",
            Failure::Resolve => "upstream name resolution failed",
            Failure::Overflow => "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            Failure::Connect => "upstream connect error or disconnect/reset before headers",
            Failure::Timeout => "upstream request timeout",
        }
    }

    pub(super) fn response(&self) -> Response<Body> {
        let mut response = respond(self.status(), self.text());
        if let Failure::RateLimited(limited) = self {
            // Whole seconds until the next token, at least 1 (the draft RateLimit headers'
            // form, as Envoy's local rate limit writes them).
            let reset = limited.reset.as_secs() + u64::from(limited.reset.subsec_nanos() > 0);
            let headers = response.headers_mut();
            for (name, value) in [
                ("x-ratelimit-limit", u64::from(limited.limit)),
                ("x-ratelimit-remaining", 0),
                ("x-ratelimit-reset", reset.max(1)),
                ("retry-after", reset.max(1)),
            ] {
                headers.insert(name, http::HeaderValue::from(value));
            }
        }
        response
    }
}

/// A failure as the pipeline hands it to the record: the workload that was meant to answer and
/// the route's response header operations (which apply to upstream failures and faults too).
#[derive(Debug)]
pub(super) struct Failed<'a> {
    pub(super) failure: Failure,
    pub(super) endpoint: Option<Arc<Workload>>,
    pub(super) response_ops: Vec<&'a HeaderOps>,
}

impl From<Failure> for Failed<'_> {
    fn from(failure: Failure) -> Self {
        Failed { failure, endpoint: None, response_ops: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::{Failure, Side};

    #[test]
    fn statuses_flags_and_sides_are_istios() {
        let table = [
            (Failure::BadRequest("x"), 400, "DPE", Side::Downstream),
            (Failure::Jwt("Jwt verification fails"), 401, "JWT", Side::Downstream),
            (Failure::NoRoute, 404, "NR", Side::Downstream),
            (
                Failure::RateLimited(crate::l7::ratelimit::Limited {
                    limit: 5,
                    reset: std::time::Duration::from_millis(1500),
                }),
                429,
                "RL",
                Side::Downstream,
            ),
            (Failure::BodyTooLarge, 413, "DPE", Side::Downstream),
            (Failure::NoBackend, 500, "NR", Side::Internal),
            (Failure::FaultAbort(http::StatusCode::IM_A_TEAPOT), 418, "FI", Side::Internal),
            (Failure::NoHealthyUpstream, 503, "UH", Side::Upstream),
            (Failure::Overflow, 503, "UO", Side::Upstream),
            (Failure::Connect, 503, "UF", Side::Upstream),
            (Failure::Timeout, 504, "UT", Side::Upstream),
        ];
        for (failure, status, flag, side) in table {
            assert_eq!(failure.response().status().as_u16(), status, "{failure}");
            assert_eq!(failure.flag().as_str(), flag, "{failure}");
            assert_eq!(failure.side(), side, "{failure}");
        }
        let limited = Failure::RateLimited(crate::l7::ratelimit::Limited {
            limit: 5,
            reset: std::time::Duration::from_millis(1500),
        })
        .response();
        let header = |n: &str| limited.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(header("x-ratelimit-reset").as_deref(), Some("2"), "whole seconds, rounded up");
        assert_eq!(header("retry-after").as_deref(), Some("2"));
    }
}
