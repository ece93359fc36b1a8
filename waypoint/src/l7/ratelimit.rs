//! Local rate limits (RateLimitPolicy): compiled rules, and the token buckets they draw from.
//!
//! Each rule refills `requests` tokens every `per` into buckets holding at most `burst`; a
//! request the rule matches takes one token from the bucket of its key (shared, the peer's
//! principal, the client address, or a header's value), or is refused. Buckets are kept per
//! proxy replica, by rule name and limit (a changed limit starts fresh), and their number is
//! bounded: past the bound, idle (full) buckets are dropped, and if none is idle, new keys
//! share one overflow bucket per rule — a client cannot escape its limit by inventing keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_shared::proto::waypoint as pb;
use http::HeaderName;

use super::{header_name, CompileError, OperationMatch, Subject};

/// The most buckets kept at once, over every rule.
const MAX_BUCKETS: usize = 100_000;

/// The key of the bucket shared by requests whose keys arrive past the bound.
const OVERFLOW: &str = "\u{0}overflow";

#[derive(Debug)]
pub enum Key {
    Shared,
    SourcePrincipal,
    RemoteAddress,
    Header(HeaderName),
}

/// One compiled rule.
#[derive(Debug)]
pub struct Limit {
    /// `<namespace>/<policy>/<rule>`.
    pub name: Arc<str>,
    matches: Vec<OperationMatch>,
    /// The limit as configured: tokens per `per`, and the bucket's size.
    pub requests: u32,
    per: Duration,
    pub burst: u32,
    key: Key,
}

impl Limit {
    pub fn compile(r: &pb::RateLimit) -> Result<Self, CompileError> {
        let field = format!("rate limit {}", r.name);
        let invalid = |what: &'static str, value: String| CompileError::Invalid { field: field.clone(), value, what };
        let per = r
            .per
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid("refill period", format!("{:?}", r.per)))?;
        if r.requests == 0 || r.burst == 0 {
            return Err(invalid(
                "limit (requests and burst must be at least 1)",
                format!("{}/{}", r.requests, r.burst),
            ));
        }
        let key = match r.key() {
            pb::RateLimitKey::RateLimitShared => Key::Shared,
            pb::RateLimitKey::RateLimitSourcePrincipal => Key::SourcePrincipal,
            pb::RateLimitKey::RateLimitRemoteAddress => Key::RemoteAddress,
            pb::RateLimitKey::RateLimitHeader => Key::Header(header_name(&field, &r.header)?),
        };
        Ok(Limit {
            name: Arc::from(r.name.as_str()),
            matches: r.matches.iter().map(OperationMatch::compile).collect(),
            requests: r.requests,
            per,
            burst: r.burst,
            key,
        })
    }

    /// Whether the rule counts this request.
    pub fn applies(&self, s: &Subject<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(s))
    }

    /// The request's bucket key under this rule.
    pub fn key_of(&self, s: &Subject<'_>) -> String {
        match &self.key {
            Key::Shared => String::new(),
            Key::SourcePrincipal => s.principal.unwrap_or_default().to_owned(),
            Key::RemoteAddress => s.remote_ip.to_canonical().to_string(),
            Key::Header(h) => {
                s.headers.get(h).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
            }
        }
    }

    /// Tokens added per second.
    fn rate(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64()
    }

    /// The buckets' identity: the rule and its limit.
    fn id(&self) -> String {
        format!("{}|{}|{:?}|{}", self.name, self.requests, self.per, self.burst)
    }
}

/// A refused request: the limit and when the next token arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: u32,
    pub reset: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every rule's buckets, shared by the proxy's connections.
#[derive(Debug, Default)]
pub struct Buckets {
    map: Mutex<HashMap<(String, String), Bucket>>,
}

impl Buckets {
    /// Takes a token for a request `limit` counts under `key`, or says when one will be there.
    pub fn take(&self, limit: &Limit, key: String, now: Instant) -> Result<u32, Limited> {
        let (rate, burst) = (limit.rate(), f64::from(limit.burst));
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let id = limit.id();
        let mut slot = (id, key);
        if !map.contains_key(&slot) && map.len() >= MAX_BUCKETS {
            // Full buckets are idle: forgetting one changes nothing for its key.
            map.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_BUCKETS {
                slot.1 = OVERFLOW.to_owned();
            }
        }
        let bucket = map.entry(slot).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            // Whole tokens left (truncated: never more than there are).
            Ok(bucket.tokens as u32)
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err(Limited { limit: limit.burst, reset: Duration::from_secs_f64(wait) })
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per_ms: u64, burst: u32) -> Limit {
        Limit::compile(&pb::RateLimit {
            name: "shop/limits/api".into(),
            requests,
            per: Some(prost_types::Duration { seconds: 0, nanos: (per_ms * 1_000_000) as i32 }),
            burst,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let (buckets, l, t0) = (Buckets::default(), limit(2, 100, 3), Instant::now());
        for left in [2, 1, 0] {
            assert_eq!(buckets.take(&l, "a".into(), t0), Ok(left));
        }
        let refused = buckets.take(&l, "a".into(), t0).unwrap_err();
        assert_eq!(refused.limit, 3);
        assert!(refused.reset <= Duration::from_millis(50) && refused.reset > Duration::ZERO, "{refused:?}");
        // Another key has its own bucket.
        assert_eq!(buckets.take(&l, "b".into(), t0), Ok(2));
        // 50 ms later: one token (2 per 100 ms).
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(buckets.take(&l, "a".into(), t1), Ok(0));
        assert!(buckets.take(&l, "a".into(), t1).is_err());
        // Long idle: full again, never more than the burst.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(buckets.take(&l, "a".into(), t2), Ok(2));
    }

    #[test]
    fn a_changed_limit_starts_fresh_and_bad_limits_do_not_compile() {
        let buckets = Buckets::default();
        let now = Instant::now();
        let one = limit(1, 1000, 1);
        assert!(buckets.take(&one, String::new(), now).is_ok());
        assert!(buckets.take(&one, String::new(), now).is_err());
        assert!(buckets.take(&limit(5, 1000, 5), String::new(), now).is_ok(), "a new limit, new buckets");
        for bad in [pb::RateLimit { requests: 0, burst: 1, ..Default::default() }, pb::RateLimit::default()] {
            assert!(Limit::compile(&bad).is_err());
        }
    }

    #[test]
    fn invented_keys_past_the_bound_share_one_bucket() {
        let buckets = Buckets::default();
        let now = Instant::now();
        // A slow limit: every bucket that took a token stays below full (not idle).
        let l = limit(1, 1000, 1);
        for i in 0..MAX_BUCKETS {
            assert!(buckets.take(&l, format!("k{i}"), now).is_ok());
        }
        assert_eq!(buckets.len(), MAX_BUCKETS);
        assert!(buckets.take(&l, "new-1".into(), now).is_ok(), "the overflow bucket's token");
        assert!(buckets.take(&l, "new-2".into(), now).is_err(), "new keys share it: no escape by key");
        assert_eq!(buckets.len(), MAX_BUCKETS + 1);
    }
}
