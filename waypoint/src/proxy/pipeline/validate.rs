//! The first stage: the request as Istio would see it. A lower-case method, a CONNECT, more
//! than one Host or one that reads two ways, an authority-form target or a path that cannot be
//! normalized is answered 400; otherwise the normalized path replaces the client's, so
//! authorization, route matching and the upstream all see the same one. It does not
//! authenticate or authorize.

use http::{Method, Request, Uri};
use hyper::body::Incoming;

use crate::l7::normalize::{normalize, Normalization};
use crate::proxy::failure::Failure;

/// Validates the request and normalizes its path in place (see the module's paragraph).
pub(super) fn request(req: &mut Request<Incoming>, normalization: Normalization) -> Result<(), Failure> {
    let bad = |text| Err(Failure::BadRequest(text));
    if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return bad("method must be upper case");
    }
    // A tunnel inside the tunnel would carry bytes no rule looked at.
    if req.method() == Method::CONNECT {
        return bad("CONNECT is not served here");
    }
    // One readable Host: rules and the upstream must not each pick their own.
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    if let (Some(first), second) = (hosts.next(), hosts.next()) {
        if second.is_some() || !first.to_str().is_ok_and(valid_host) {
            return bad("one valid Host header is required");
        }
    }
    if !req.uri().authority().is_none_or(|a| valid_host(a.as_str())) {
        return bad("invalid request authority");
    }
    // Origin or absolute form only: an authority-form target has no path to authorize.
    let Some(path) = req.uri().path_and_query() else { return bad("request target has no path") };
    let normalized = match normalize(path.as_str(), normalization) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => {
            tracing::debug!(path = %path, error = %e, "request path refused");
            return bad("invalid request path");
        }
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = match normalized.parse() {
        Ok(p) => Some(p),
        Err(_) => return bad("invalid request path"),
    };
    match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            Ok(())
        }
        Err(_) => bad("invalid request path"),
    }
}

/// A Host (or `:authority`) a rule can read one way only: `name[:port]` or `[ipv6][:port]`,
/// the port empty or 1–65535, no userinfo, a name of RFC 3986 reg-name characters only.
fn valid_host(host: &str) -> bool {
    let port_ok = |rest: &str| match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some("") => true,
        Some(p) => p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0),
    };
    if host.contains('@') {
        return false;
    }
    match host.strip_prefix('[') {
        Some(rest) => {
            rest.split_once(']').is_some_and(|(ip, rest)| ip.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(rest))
        }
        None => {
            let (name, rest) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            // RFC 3986 reg-name characters only: no whitespace a backend might trim away.
            let reg_name = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
            !name.is_empty() && name.bytes().all(reg_name) && port_ok(rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts_are_read_one_way_only() {
        for ok in
            ["reviews", "reviews:8080", "reviews.shop.svc.cluster.local:", "[fd00::1]", "[fd00::1]:8080", "10.0.0.1:80"]
        {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "api.example:@internal.example",
            "a@b",
            "x:99999",
            "x:0",
            "x:8o",
            "x:80:90",
            "[fd00::1]junk",
            "[nope]:80",
            ":80",
            "",
            "admin.example\t",
            "admin example",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
