//! AuthorizationPolicy for one request: the subject built from the connection's peer (never a
//! header the client wrote), the validated token and the normalized request, checked in Istio's
//! order by [`crate::l7::authorize`]. Denied is 403 `RBAC: access denied`. It does not
//! authenticate nor route.

use http::Request;
use hyper::body::Incoming;

use super::authn::Caller;
use crate::l7::{authorize, Layer, ServiceL7, Subject};
use crate::proxy::downstream::Downstream;
use crate::proxy::failure::Failure;

/// The request's host as rules see it: `Host`, else the URI's authority, else empty.
pub(super) fn host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned()
}

/// Checks the service's policies against the request.
pub(super) fn check(
    down: &Downstream,
    l7: &ServiceL7,
    caller: &Caller,
    host: &str,
    req: &Request<Incoming>,
) -> Result<(), Failure> {
    let subject = subject(down, caller, host, req);
    if let Err(policy) = authorize(&l7.policies, &subject, Layer::Http) {
        tracing::debug!(%policy, "request denied");
        return Err(Failure::Denied(policy));
    }
    Ok(())
}

/// What rules see of a request: the connection's peer (never a header the client wrote), the
/// validated token and the normalized request.
pub(super) fn subject<'a>(
    down: &'a Downstream,
    caller: &'a Caller,
    host: &'a str,
    req: &'a Request<Incoming>,
) -> Subject<'a> {
    Subject {
        principal: down.authenticated(),
        identity: down.identity.as_ref(),
        namespace: down.identity.as_ref().map(|i| i.namespace()),
        request_principal: caller.request_principal.as_deref(),
        source_ip: down.source_ip,
        remote_ip: down.source_ip,
        destination_ip: down.vip.ip(),
        host,
        port: down.vip.port(),
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        claims: caller.claims.as_ref(),
    }
}

#[cfg(test)]
mod tests {
    use super::host;

    #[test]
    fn the_host_header_wins_over_the_authority() {
        let req = http::Request::get("http://authority.example/x").header("host", "header.example").body(()).unwrap();
        assert_eq!(host(&req), "header.example");
        let req = http::Request::get("http://authority.example:8080/x").body(()).unwrap();
        assert_eq!(host(&req), "authority.example:8080");
        let req = http::Request::get("/x").body(()).unwrap();
        assert_eq!(host(&req), "");
    }
}
