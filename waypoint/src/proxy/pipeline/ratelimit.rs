//! RateLimitPolicy for one request, after authorization (a denied request takes no token):
//! every rule the request matches takes a token from its key's bucket, all or none; a rule out
//! of tokens answers 429 with `x-ratelimit-*` headers (flag `RL`). It neither authorizes nor
//! routes.

use std::time::Instant;

use crate::l7::ratelimit::{Buckets, Limit};
use crate::l7::{ServiceL7, Subject};
use crate::proxy::failure::Failure;

pub(super) fn check(buckets: &Buckets, l7: &ServiceL7, subject: &Subject<'_>) -> Result<(), Failure> {
    if l7.rate_limits.is_empty() {
        return Ok(());
    }
    let matched: Vec<&Limit> = l7.rate_limits.iter().filter(|l| l.applies(subject)).collect();
    if matched.is_empty() {
        return Ok(());
    }
    buckets.take(&matched, subject, Instant::now()).map_err(|limited| {
        tracing::debug!(rules = ?matched.iter().map(|l| &*l.name).collect::<Vec<_>>(), "request rate limited");
        Failure::RateLimited(limited)
    })
}
