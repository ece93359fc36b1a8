//! Sending a routed request on: the body buffered when it may be sent more than once (retries,
//! mirrors; 413 past [`MAX_BUFFERED_BODY`]), mirrors sent, then attempts to the backend within
//! the route's timeouts, retried on the route's codes or connect failures while the body can
//! be replayed and time remains. The response header operations apply to whatever answers.
//! It does not choose endpoints (see [`crate::proxy::upstream`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_shared::proto::waypoint as pb;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::filters::Effects;
use crate::l7::{BackendRef, Route};
use crate::proxy::body::{body, Body, BoxError};
use crate::proxy::downstream::Downstream;
use crate::proxy::failure::{Failed, Failure};
use crate::proxy::telemetry::Answered;
use crate::proxy::upstream::Attempt;
use crate::proxy::Waypoint;

/// Requests whose bodies are buffered (retries, mirrors) may not exceed this.
const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// The request body across attempts.
enum RequestBody {
    /// Read whole: every attempt gets a copy.
    Buffered(Bytes),
    /// Streamed to the first attempt; later ones (none are made) would get nothing.
    Streamed(Option<Incoming>),
}

impl RequestBody {
    /// Reads the body whole when `buffered`; 413 when it is too large for that.
    async fn read(incoming: Incoming, buffered: bool) -> Result<Self, Failure> {
        if !buffered {
            return Ok(RequestBody::Streamed(Some(incoming)));
        }
        match http_body_util::Limited::new(incoming, MAX_BUFFERED_BODY).collect().await {
            Ok(b) => Ok(RequestBody::Buffered(b.to_bytes())),
            Err(_) => Err(Failure::BodyTooLarge),
        }
    }

    /// The body for the next attempt.
    fn next(&mut self) -> Body {
        match self {
            RequestBody::Buffered(b) => body(b.clone()),
            RequestBody::Streamed(incoming) => match incoming.take() {
                Some(incoming) => incoming.map_err(|e| Box::new(e) as BoxError).boxed(),
                None => body(Bytes::new()),
            },
        }
    }
}

/// The route's retry policy and timeouts, fixed when the request starts.
struct Attempts<'a> {
    /// The route's retry policy, if any.
    retry: Option<&'a pb::Retry>,
    /// The first attempt and the retries.
    limit: u32,
    /// The pause between attempts (25 ms unless the policy says).
    backoff: Duration,
    /// When the route's whole timeout runs out.
    deadline: Option<Instant>,
    /// The route's per-attempt timeout.
    per_try: Option<Duration>,
}

impl<'a> Attempts<'a> {
    fn of(route: &'a Route, now: Instant) -> Self {
        let retry = route.retry.as_ref();
        Attempts {
            retry,
            limit: 1 + retry.map_or(0, |r| r.attempts),
            backoff: retry
                .and_then(|r| r.backoff.and_then(|b| Duration::try_from(b).ok()))
                .unwrap_or(Duration::from_millis(25)),
            deadline: route.timeout.map(|t| now + t),
            per_try: route.backend_timeout,
        }
    }

    /// How long the attempt starting at `now` may take: the per-try timeout, cut to what is
    /// left of the whole.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        match (self.per_try, self.deadline) {
            (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(now))),
            (Some(t), None) => Some(t),
            (None, Some(d)) => Some(d.saturating_duration_since(now)),
            (None, None) => None,
        }
    }

    /// Whether the outcome of attempt number `attempt` (from 1) is tried again at `now`.
    fn again(&self, outcome: &Attempt, attempt: u32, now: Instant) -> bool {
        let retryable = match (outcome, self.retry) {
            (Ok((r, _)), Some(retry)) => retry.codes.contains(&u32::from(r.status().as_u16())),
            (Err(failed), Some(retry)) if failed.failure.is_connect_failure() => retry.connect_failure,
            _ => false,
        };
        let out_of_time = self.deadline.is_some_and(|d| now + self.backoff >= d);
        retryable && attempt < self.limit && !out_of_time
    }
}

impl Waypoint {
    /// Sends the routed request to `backend`, with the route's mirrors, timeouts and retries.
    pub(super) async fn forward<'a>(
        self: &Arc<Self>,
        down: &Downstream,
        route: &Route,
        backend: &BackendRef,
        effects: Effects<'a>,
        buffered: bool,
        req: Request<Incoming>,
    ) -> Answered<'a> {
        let port = down.vip.port();
        let (parts, incoming) = req.into_parts();
        let mut body = RequestBody::read(incoming, buffered).await?;
        if let RequestBody::Buffered(bytes) = &body {
            for m in &effects.mirrors {
                self.upstream.mirror(m, &parts, bytes.clone(), port, down.source_ip);
            }
        }
        let attempts = Attempts::of(route, Instant::now());
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let request = Request::from_parts(parts.clone(), body.next());
            let outcome = self.attempt(backend, request, port, down, attempts.timeout(Instant::now())).await;
            let replayable = matches!(body, RequestBody::Buffered(_));
            if replayable && attempts.again(&outcome, attempt, Instant::now()) {
                tokio::time::sleep(attempts.backoff).await;
                continue;
            }
            break outcome;
        };
        match outcome {
            Ok((mut response, w)) => {
                for ops in &effects.response_ops {
                    ops.apply(response.headers_mut());
                }
                Ok((response, Some(w)))
            }
            // The record applies them to the failure's answer.
            Err(failed) => Err(Failed { response_ops: effects.response_ops, ..failed }),
        }
    }

    /// One attempt, within its timeout (504 past it).
    async fn attempt(
        &self,
        backend: &BackendRef,
        request: Request<Body>,
        port: u16,
        down: &Downstream,
        timeout: Option<Duration>,
    ) -> Attempt {
        let sent = self.upstream.send(backend, request, port, down.source_ip);
        match timeout {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout.into()),
            },
            None => sent.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ambit_shared::proto::waypoint as pb;

    use super::Attempts;
    use crate::proxy::failure::{Failed, Failure};
    use crate::proxy::upstream::Attempt;
    use crate::testing::workload;

    fn attempts(retry: Option<&pb::Retry>, deadline: Option<Instant>, per_try: Option<Duration>) -> Attempts<'_> {
        Attempts {
            retry,
            limit: 1 + retry.map_or(0, |r| r.attempts),
            backoff: Duration::from_millis(25),
            deadline,
            per_try,
        }
    }

    #[test]
    fn an_attempt_gets_the_per_try_timeout_cut_to_what_is_left() {
        let now = Instant::now();
        let (second, tenth) = (Duration::from_secs(1), Duration::from_millis(100));
        assert_eq!(attempts(None, None, None).timeout(now), None);
        assert_eq!(attempts(None, None, Some(second)).timeout(now), Some(second));
        assert_eq!(attempts(None, Some(now + tenth), Some(second)).timeout(now), Some(tenth));
        assert_eq!(attempts(None, Some(now + tenth), None).timeout(now + second), Some(Duration::ZERO));
    }

    #[test]
    fn retries_follow_codes_connect_failures_limits_and_time() {
        let retry = pb::Retry { attempts: 2, codes: vec![503], connect_failure: true, backoff: None };
        let now = Instant::now();
        let status = |code: u16| -> Attempt {
            let mut r = http::Response::new(crate::proxy::body::body(""));
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            Ok((r, workload("a")))
        };
        let failed = |failure| -> Attempt { Err(Failed { failure, endpoint: None, response_ops: Vec::new() }) };
        let a = attempts(Some(&retry), None, None);
        assert!(a.again(&status(503), 1, now));
        assert!(!a.again(&status(500), 1, now), "a code not listed");
        assert!(a.again(&failed(Failure::Connect), 2, now));
        assert!(!a.again(&failed(Failure::Connect), 3, now), "attempts used up");
        assert!(!a.again(&failed(Failure::Timeout), 1, now), "not a connect failure");
        assert!(!attempts(None, None, None).again(&status(503), 1, now), "no retry policy");
        let late = attempts(Some(&retry), Some(now + Duration::from_millis(10)), None);
        assert!(!late.again(&status(503), 1, now), "no time for the backoff");
    }
}
