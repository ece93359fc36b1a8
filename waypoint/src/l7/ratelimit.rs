//! Local rate limits (RateLimitPolicy): compiled rules, and the token buckets they draw from.
//!
//! Each rule refills `requests` tokens every `per` into buckets holding at most `burst`; a
//! request takes one token from the bucket of its key under every rule it matches — all or
//! none: a request refused by one rule takes nothing from the others. Keys are the request's
//! (shared, the peer's principal, the client address — an IPv6 client by its /64 —, or all the
//! values of a header), kept as keyed 64-bit hashes, so a long header value costs nothing to
//! hold. Buckets are kept per proxy replica, per rule and limit (a changed rule starts fresh),
//! and bounded per rule: past the bound, buckets that are full again are swept (at most once a
//! second), and if none is, new keys are spread over a fixed set of overflow buckets by their
//! hash — a client inventing keys cannot escape its limit, nor lock every new client out.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_shared::proto::waypoint as pb;
use http::HeaderName;

use super::{header_name, CompileError, OperationMatch, Subject};

/// The most buckets one rule keeps.
const MAX_BUCKETS_PER_RULE: usize = 50_000;

/// Overflow buckets per rule, shared by new keys past the bound (chosen by hash).
const OVERFLOW_BUCKETS: u64 = 64;

/// The least time between two sweeps of one rule's buckets.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
    /// The buckets' identity: the rule as configured (a changed rule starts fresh).
    id: Arc<str>,
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
        let id = format!("{}|{}|{:?}|{}|{:?}|{:?}", r.name, r.requests, per, r.burst, r.key(), r.header);
        Ok(Limit {
            name: Arc::from(r.name.as_str()),
            matches: r.matches.iter().map(OperationMatch::compile).collect(),
            requests: r.requests,
            per,
            burst: r.burst,
            key,
            id: Arc::from(id.as_str()),
        })
    }

    /// Whether the rule counts this request.
    pub fn applies(&self, s: &Subject<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(s))
    }

    /// Feeds the request's key under this rule to `h`.
    fn key_into(&self, s: &Subject<'_>, h: &mut impl Hasher) {
        match &self.key {
            Key::Shared => {}
            Key::SourcePrincipal => s.principal.unwrap_or_default().hash(h),
            Key::RemoteAddress => match s.remote_ip.to_canonical() {
                IpAddr::V4(v4) => v4.hash(h),
                // One client holds a whole /64.
                IpAddr::V6(v6) => (u128::from(v6) >> 64).hash(h),
            },
            // Every value, in order: a second copy of the header is part of the key.
            Key::Header(name) => {
                for v in s.headers.get_all(name) {
                    v.as_bytes().hash(h);
                }
            }
        }
    }

    /// Tokens added per second.
    fn rate(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64()
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
    /// When it is full again (so forgetting it changes nothing).
    full_at: Instant,
}

/// One rule's buckets.
#[derive(Debug)]
struct Rule {
    buckets: HashMap<u64, Bucket>,
    swept: Instant,
}

/// Every rule's buckets, shared by the proxy's connections.
#[derive(Debug, Default)]
pub struct Buckets {
    inner: Mutex<Inner>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug, Default)]
struct Inner {
    rules: HashMap<Arc<str>, Rule>,
    /// When rules were last looked at for forgetting.
    collected: Option<Instant>,
}

/// How often rules whose buckets are all full again (a removed or changed rule's, soon) are
/// forgotten: they hold nothing a request could notice.
const COLLECT_EVERY: Duration = Duration::from_secs(60);

impl Buckets {
    /// Takes a token from each of `limits` (the rules a request matches) for that request, or
    /// none if any is out of tokens: then that rule's limit and when its next token arrives.
    pub fn take(&self, limits: &[&Limit], subject: &Subject<'_>, now: Instant) -> Result<(), Limited> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.collected.is_none_or(|at| now.saturating_duration_since(at) >= COLLECT_EVERY) {
            inner.collected = Some(now);
            inner.rules.retain(|_, r| r.buckets.values().any(|b| b.full_at > now));
        }
        let rules = &mut inner.rules;
        let mut slots = Vec::with_capacity(limits.len());
        for limit in limits {
            let mut h = self.hasher.build_hasher();
            limit.key_into(subject, &mut h);
            let key = h.finish();
            let rule = rules.entry(limit.id.clone()).or_insert_with(|| Rule { buckets: HashMap::new(), swept: now });
            let slot = rule.slot(key, now);
            let (rate, burst) = (limit.rate(), f64::from(limit.burst));
            let bucket = rule.buckets.entry(slot).or_insert(Bucket { tokens: burst, at: now, full_at: now });
            let at = bucket.at.max(now);
            bucket.tokens = (bucket.tokens + at.saturating_duration_since(bucket.at).as_secs_f64() * rate).min(burst);
            bucket.at = at;
            if bucket.tokens < 1.0 {
                let wait = (1.0 - bucket.tokens) / rate;
                return Err(Limited { limit: limit.burst, reset: Duration::from_secs_f64(wait) });
            }
            slots.push((limit.id.clone(), slot, rate, burst));
        }
        for (id, slot, rate, burst) in slots {
            if let Some(b) = rules.get_mut(&id).and_then(|r| r.buckets.get_mut(&slot)) {
                b.tokens -= 1.0;
                b.full_at = b.at + Duration::from_secs_f64((burst - b.tokens) / rate);
            }
        }
        Ok(())
    }

    /// Buckets held, over every rule.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).rules.values().map(|r| r.buckets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Rule {
    /// The bucket a key uses: its own, or past the bound (after a sweep, at most once a
    /// second) one of the overflow buckets.
    fn slot(&mut self, key: u64, now: Instant) -> u64 {
        // Overflow slots are marked by the top bit; own keys never carry it.
        let own = key >> 1;
        if self.buckets.contains_key(&own) || self.buckets.len() < MAX_BUCKETS_PER_RULE {
            return own;
        }
        if now.saturating_duration_since(self.swept) >= SWEEP_EVERY {
            self.swept = now;
            self.buckets.retain(|_, b| b.full_at > now);
            if self.buckets.len() < MAX_BUCKETS_PER_RULE {
                return own;
            }
        }
        (1 << 63) | (own % OVERFLOW_BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, requests: u32, per_ms: u64, burst: u32, key: pb::RateLimitKey) -> Limit {
        Limit::compile(&pb::RateLimit {
            name: name.into(),
            requests,
            per: Some(prost_types::Duration {
                seconds: (per_ms / 1000) as i64,
                nanos: ((per_ms % 1000) * 1_000_000) as i32,
            }),
            burst,
            key: key as i32,
            header: "x-user".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn subject<'a>(headers: &'a http::HeaderMap, ip: &str) -> Subject<'a> {
        Subject {
            principal: None,
            identity: None,
            namespace: None,
            request_principal: None,
            source_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            remote_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            destination_ip: IpAddr::from([10, 0, 0, 1]),
            host: "svc",
            port: 80,
            method: "GET",
            path: "/",
            query: None,
            headers,
            claims: None,
        }
    }

    fn user(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_str(v).unwrap_or(http::HeaderValue::from_static("x")));
        h
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let l = limit("shop/p/api", 2, 100, 3, pb::RateLimitKey::RateLimitHeader);
        let (buckets, t0, a, b) = (Buckets::default(), Instant::now(), user("a"), user("b"));
        for _ in 0..3 {
            assert!(buckets.take(&[&l], &subject(&a, "10.0.0.1"), t0).is_ok());
        }
        let refused = buckets.take(&[&l], &subject(&a, "10.0.0.1"), t0).unwrap_err();
        assert_eq!(refused.limit, 3);
        assert!(refused.reset <= Duration::from_millis(50) && refused.reset > Duration::ZERO, "{refused:?}");
        assert!(buckets.take(&[&l], &subject(&b, "10.0.0.1"), t0).is_ok(), "another key, its own bucket");
        let t1 = t0 + Duration::from_millis(50);
        assert!(buckets.take(&[&l], &subject(&a, "10.0.0.1"), t1).is_ok(), "one token in 50 ms");
        assert!(buckets.take(&[&l], &subject(&a, "10.0.0.1"), t1).is_err());
        // A second copy of the header is another key, not a way around the first.
        let mut twice = user("a");
        twice.append("x-user", http::HeaderValue::from_static("z"));
        assert!(buckets.take(&[&l], &subject(&twice, "10.0.0.1"), t1).is_ok());
    }

    #[test]
    fn a_refused_request_takes_nothing_from_the_other_rules() {
        let shared = limit("shop/p/all", 10, 60_000, 10, pb::RateLimitKey::RateLimitShared);
        let strict = limit("shop/p/one", 1, 60_000, 1, pb::RateLimitKey::RateLimitShared);
        let (buckets, now, h) = (Buckets::default(), Instant::now(), http::HeaderMap::new());
        let s = subject(&h, "10.0.0.1");
        assert!(buckets.take(&[&shared, &strict], &s, now).is_ok());
        for _ in 0..5 {
            assert!(buckets.take(&[&shared, &strict], &s, now).is_err());
        }
        // 9 left in the shared rule: the refused requests took none.
        for _ in 0..9 {
            assert!(buckets.take(&[&shared], &s, now).is_ok());
        }
        assert!(buckets.take(&[&shared], &s, now).is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let l = limit("shop/p/addr", 1, 60_000, 1, pb::RateLimitKey::RateLimitRemoteAddress);
        let (buckets, now, h) = (Buckets::default(), Instant::now(), http::HeaderMap::new());
        assert!(buckets.take(&[&l], &subject(&h, "2001:db8::1"), now).is_ok());
        assert!(buckets.take(&[&l], &subject(&h, "2001:db8::2"), now).is_err(), "same /64");
        assert!(buckets.take(&[&l], &subject(&h, "2001:db8:0:1::1"), now).is_ok(), "another /64");
        assert!(buckets.take(&[&l], &subject(&h, "10.0.0.2"), now).is_ok());
    }

    #[test]
    fn a_changed_limit_starts_fresh_and_bad_limits_do_not_compile() {
        let (buckets, now, h) = (Buckets::default(), Instant::now(), http::HeaderMap::new());
        let one = limit("shop/p/r", 1, 1000, 1, pb::RateLimitKey::RateLimitShared);
        assert!(buckets.take(&[&one], &subject(&h, "10.0.0.1"), now).is_ok());
        assert!(buckets.take(&[&one], &subject(&h, "10.0.0.1"), now).is_err());
        let five = limit("shop/p/r", 5, 1000, 5, pb::RateLimitKey::RateLimitShared);
        assert!(buckets.take(&[&five], &subject(&h, "10.0.0.1"), now).is_ok(), "a new limit, new buckets");
        assert_eq!(buckets.len(), 2);
        // Minutes later both rules' buckets are full again: the old rule is forgotten.
        let later = now + Duration::from_secs(120);
        assert!(buckets.take(&[&five], &subject(&h, "10.0.0.1"), later).is_ok());
        assert_eq!(buckets.len(), 1, "the old rule's buckets forgotten");
        for bad in [pb::RateLimit { requests: 0, burst: 1, ..Default::default() }, pb::RateLimit::default()] {
            assert!(Limit::compile(&bad).is_err());
        }
    }

    #[test]
    fn invented_keys_past_the_bound_share_overflow_buckets_and_idle_ones_are_swept() {
        let l = limit("shop/p/u", 1, 60_000, 1, pb::RateLimitKey::RateLimitHeader);
        let (buckets, now) = (Buckets::default(), Instant::now());
        for i in 0..MAX_BUCKETS_PER_RULE {
            assert!(buckets.take(&[&l], &subject(&user(&format!("k{i}")), "10.0.0.1"), now).is_ok());
        }
        // Past the bound: new keys land in overflow buckets; there are few of them, so a
        // flood of new keys is refused rather than let through.
        let refused = (0..1000)
            .filter(|i| buckets.take(&[&l], &subject(&user(&format!("new{i}")), "10.0.0.1"), now).is_err())
            .count();
        assert!(refused >= 1000 - OVERFLOW_BUCKETS as usize, "{refused}");
        assert!(buckets.len() <= MAX_BUCKETS_PER_RULE + OVERFLOW_BUCKETS as usize);
        // A minute on, every bucket is full again: the next new key sweeps them and has its own.
        let later = now + Duration::from_secs(61);
        assert!(buckets.take(&[&l], &subject(&user("fresh"), "10.0.0.1"), later).is_ok());
        assert!(buckets.len() < 100, "swept: {}", buckets.len());
    }
}
