//! RateLimitPolicy for one request, after authorization (a refused request takes no token):
//! every rule the request matches takes a token from its key's bucket; the first rule out of
//! tokens answers 429 with `x-ratelimit-*` headers (flag `RL`). It neither authorizes nor
//! routes.

use std::time::Instant;

use crate::l7::ratelimit::Buckets;
use crate::l7::{ServiceL7, Subject};
use crate::proxy::failure::Failure;

pub(super) fn check(buckets: &Buckets, l7: &ServiceL7, subject: &Subject<'_>) -> Result<(), Failure> {
    let now = Instant::now();
    for limit in l7.rate_limits.iter().filter(|l| l.applies(subject)) {
        if let Err(limited) = buckets.take(limit, limit.key_of(subject), now) {
            tracing::debug!(rule = %limit.name, "request rate limited");
            return Err(Failure::RateLimited(limited));
        }
    }
    Ok(())
}
