//! RequestAuthentication: a JWT, when the service has rules, validated before any policy sees
//! the request. Present but invalid is 401; none passes on without a request principal; a
//! valid one gives the request principal and claims (claim headers the client wrote are
//! stripped by [`crate::jwt::authenticate`]). It does not authorize.

use http::Request;
use hyper::body::Incoming;

use crate::jwt::{KeySets, Verdict};
use crate::l7::ServiceL7;
use crate::proxy::failure::Failure;

/// Who the request's token says is calling; empty for no token (or no rules).
#[derive(Debug, Default)]
pub(super) struct Caller {
    /// `iss/sub` of the validated token.
    pub(super) request_principal: Option<String>,
    /// The validated token's claims.
    pub(super) claims: Option<serde_json::Value>,
}

/// Validates the request's token against the service's rules.
pub(super) async fn authenticate(
    l7: &ServiceL7,
    keysets: &KeySets,
    req: Request<Incoming>,
) -> Result<(Request<Incoming>, Caller), Failure> {
    if l7.jwt.is_empty() {
        return Ok((req, Caller::default()));
    }
    let (mut parts, body) = req.into_parts();
    let verdict = crate::jwt::authenticate(&l7.jwt, keysets, &mut parts).await;
    let req = Request::from_parts(parts, body);
    match verdict {
        Verdict::Anonymous => Ok((req, Caller::default())),
        Verdict::Valid { principal, claims } => {
            Ok((req, Caller { request_principal: Some(principal), claims: Some(claims) }))
        }
        Verdict::Invalid(reason) => {
            tracing::debug!(%reason, "JWT refused");
            Err(Failure::Jwt(refusal_text(&reason)))
        }
    }
}

/// Envoy's answer to a refused token.
fn refusal_text(reason: &str) -> &'static str {
    if reason.contains("issuer is not configured") {
        "Jwt issuer is not configured"
    } else {
        "Jwt verification fails"
    }
}

#[cfg(test)]
mod tests {
    use super::refusal_text;

    #[test]
    fn refusals_answer_as_envoy_does() {
        assert_eq!(refusal_text("issuer is not configured: https://x"), "Jwt issuer is not configured");
        assert_eq!(refusal_text("expired"), "Jwt verification fails");
    }
}
