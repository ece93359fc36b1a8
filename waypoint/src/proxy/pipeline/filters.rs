//! A route's filters, applied in their order: request header operations, a redirect (which
//! answers), a rewrite, mirrors (chosen by their percentage), response header operations
//! (collected for the answer); then the route's fault (a delay, an abort). It does not choose
//! the backend nor send anything.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};

use crate::l7::{BackendRef, Filter, HeaderOps, Route};
use crate::proxy::body::{body, Body};
use crate::proxy::failure::Failure;

/// What the filters leave for later stages.
pub(super) struct Effects<'a> {
    /// Header operations on the response, in order.
    pub(super) response_ops: Vec<&'a HeaderOps>,
    /// Backends that get a copy of the request.
    pub(super) mirrors: Vec<BackendRef>,
}

/// Applies the route's filters to the request; `Err` is a redirect's answer.
#[allow(clippy::result_large_err)]
pub(super) fn apply<'a, B>(route: &'a Route, req: &mut Request<B>, host: &str) -> Result<Effects<'a>, Response<Body>> {
    let mut effects = Effects { response_ops: Vec::new(), mirrors: Vec::new() };
    for f in &route.filters {
        match f {
            Filter::Redirect(r) => return Err(redirect(r, req, host)),
            Filter::RequestHeaders(ops) => ops.apply(req.headers_mut()),
            Filter::ResponseHeaders(ops) => effects.response_ops.push(ops),
            Filter::Rewrite(r) => rewrite(r, req, route),
            Filter::Mirror { backend, percent } => {
                if *percent >= 100.0 || fastrand::f64() * 100.0 < *percent {
                    effects.mirrors.push(backend.clone());
                }
            }
        }
    }
    Ok(effects)
}

/// What the route's fault does to this request, drawn by its percentages.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fault {
    /// A delay before anything else.
    pub(super) delay: Option<Duration>,
    /// After the delay, an abort answered with this failure.
    pub(super) abort: Option<Failure>,
}

/// Draws the route's fault: a delay by its percentage, then an abort by its percentage.
pub(super) fn fault(route: &Route) -> Fault {
    let Some(fault) = &route.fault else { return Fault::default() };
    let mut drawn = Fault::default();
    if fault.delay.is_some() && fastrand::f64() * 100.0 < fault.delay_percent {
        drawn.delay = fault.delay.and_then(|d| Duration::try_from(d).ok());
    }
    if fault.abort_status != 0 && fastrand::f64() * 100.0 < fault.abort_percent {
        let status = u16::try_from(fault.abort_status).ok().and_then(|s| StatusCode::from_u16(s).ok());
        drawn.abort = Some(Failure::FaultAbort(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE)));
    }
    drawn
}

fn redirect<B>(r: &ambit_shared::proto::waypoint::Redirect, req: &Request<B>, host: &str) -> Response<Body> {
    let scheme = if r.scheme.is_empty() { "http" } else { r.scheme.as_str() };
    let hostname = if r.hostname.is_empty() { host.split(':').next().unwrap_or(host) } else { r.hostname.as_str() };
    let path = if !r.path_full.is_empty() { r.path_full.clone() } else { req.uri().path().to_owned() };
    let port = match r.port {
        0 => String::new(),
        p => format!(":{p}"),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = format!("{scheme}://{hostname}{port}{path}{query}");
    let mut resp = Response::new(body(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(u16::try_from(r.status_code).unwrap_or(302)).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn rewrite<B>(r: &ambit_shared::proto::waypoint::Rewrite, req: &mut Request<B>, route: &Route) {
    if !r.hostname.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&r.hostname) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let path = req.uri().path();
    let new_path = if !r.path_full.is_empty() {
        Some(r.path_full.clone())
    } else if !r.path_prefix.is_empty() {
        // Replace the matched prefix (the route's first prefix match that holds).
        route.matches.iter().find_map(|m| match &m.path {
            crate::l7::PathMatch::Prefix(p) | crate::l7::PathMatch::StringPrefix(p) if m.path.matches(path) => {
                let matched =
                    if matches!(m.path, crate::l7::PathMatch::Prefix(_)) { p.trim_end_matches('/') } else { p };
                let rest = &path[matched.len()..];
                let base = r.path_prefix.trim_end_matches('/');
                Some(if rest.is_empty() {
                    if base.is_empty() {
                        "/".to_owned()
                    } else {
                        base.to_owned()
                    }
                } else {
                    format!("{base}{rest}")
                })
            }
            _ => None,
        })
    } else {
        None
    };
    if let Some(p) = new_path {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(uri) = format!("{p}{query}").parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}
