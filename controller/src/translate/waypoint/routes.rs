//! HTTPRoute and GRPCRoute: their validation (a rejected route names the field) and their
//! translation into the waypoint's routes for one service — the rules whose parent is the
//! service, in Gateway API precedence.

use std::time::Duration;

use ambit_shared::proto::waypoint as pb;

use super::fields::{check_regex, is_service_parent, is_service_ref, parse_duration, proto_duration};
use crate::model::{
    BackendObjectReference, GrpcRoute, GrpcRouteMatch, HeaderModifierSpec, HttpBackendRef, HttpHeader, HttpRoute,
    HttpRouteFilter, HttpRouteMatch, HttpRouteRule, HttpValueMatch, Kind, Object, ObjectMeta, ParentReference, Service,
};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::MeshSettings;

fn validate_value_match(label: &str, field: &str, m: &HttpValueMatch) -> Result<(), Rejection> {
    match m.type_.as_deref() {
        None | Some("Exact") => Ok(()),
        Some("RegularExpression") => check_regex(&format!("{field}.value"), &m.value, label),
        Some(other) => Err(Rejection::new(
            label,
            format!("{field}.type"),
            format!("unknown type {other:?} (Exact, RegularExpression)"),
        )),
    }
}

fn validate_filters(label: &str, field: &str, filters: &[HttpRouteFilter]) -> Result<(), Rejection> {
    for (i, f) in filters.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let present = match f.type_.as_str() {
            "RequestHeaderModifier" => f.request_header_modifier.is_some(),
            "ResponseHeaderModifier" => f.response_header_modifier.is_some(),
            "RequestRedirect" => f.request_redirect.is_some(),
            "URLRewrite" => f.url_rewrite.is_some(),
            "RequestMirror" => f.request_mirror.is_some(),
            other => {
                return Err(Rejection::new(
                    label,
                    format!("{at}.type"),
                    format!("unsupported filter {other:?} (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror)"),
                ))
            }
        };
        if !present {
            return Err(Rejection::new(label, at, format!("filter {} has no configuration", f.type_)));
        }
        // Header names and values as the proxies build them (a control character in a value
        // would make the proxy refuse the whole configuration).
        for (which, m) in [
            ("requestHeaderModifier", f.request_header_modifier.as_ref()),
            ("responseHeaderModifier", f.response_header_modifier.as_ref()),
        ] {
            let Some(m) = m else { continue };
            for (list, headers) in [("set", &m.set), ("add", &m.add)] {
                for (j, h) in headers.iter().enumerate() {
                    let field = format!("{at}.{which}.{list}[{j}]");
                    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                        return Err(Rejection::new(
                            label,
                            format!("{field}.name"),
                            format!("{:?} is not a header name", h.name),
                        ));
                    }
                    if http::HeaderValue::from_str(&h.value).is_err() {
                        return Err(Rejection::new(
                            label,
                            format!("{field}.value"),
                            "not a valid header value (control characters?)",
                        ));
                    }
                }
            }
            for (j, name) in m.remove.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(Rejection::new(
                        label,
                        format!("{at}.{which}.remove[{j}]"),
                        format!("{name:?} is not a header name"),
                    ));
                }
            }
        }
        let path = f
            .request_redirect
            .as_ref()
            .and_then(|r| r.path.as_ref())
            .or(f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()));
        if let Some(p) = path {
            match p.type_.as_str() {
                "ReplaceFullPath" if p.replace_full_path.is_some() => {}
                "ReplacePrefixMatch" if p.replace_prefix_match.is_some() => {}
                other => {
                    return Err(Rejection::new(
                        label,
                        format!("{at}.path"),
                        format!("{other:?} needs its value (ReplaceFullPath + replaceFullPath, ReplacePrefixMatch + replacePrefixMatch)"),
                    ))
                }
            }
        }
        if let Some(code) = f.request_redirect.as_ref().and_then(|r| r.status_code) {
            if !matches!(code, 301 | 302 | 303 | 307 | 308) {
                return Err(Rejection::new(
                    label,
                    format!("{at}.requestRedirect.statusCode"),
                    format!("{code} is not a redirect status"),
                ));
            }
        }
        if let Some(m) = &f.request_mirror {
            if m.percent.is_some_and(|p| p > 100) {
                return Err(Rejection::new(label, format!("{at}.requestMirror.percent"), "must be 0-100"));
            }
        }
    }
    Ok(())
}

fn validate_backends(label: &str, field: &str, rule: &[HttpBackendRef]) -> Result<(), Rejection> {
    for (i, b) in rule.iter().enumerate() {
        if !is_service_ref(b.backend.group.as_deref(), b.backend.kind.as_deref()) {
            return Err(Rejection::new(label, format!("{field}[{i}].kind"), "only Service backends are supported"));
        }
        if b.weight.is_some_and(|w| w > 1_000_000) {
            return Err(Rejection::new(label, format!("{field}[{i}].weight"), "must be 0-1000000"));
        }
        validate_filters(label, &format!("{field}[{i}].filters"), &b.filters)?;
    }
    Ok(())
}

fn validate_rule(label: &str, field: &str, rule: &HttpRouteRule) -> Result<(), Rejection> {
    for (j, m) in rule.matches.iter().enumerate() {
        let at = format!("{field}.matches[{j}]");
        if let Some(p) = &m.path {
            let value = p.value.as_deref().unwrap_or("/");
            match p.type_.as_deref() {
                None | Some("PathPrefix" | "Exact") if value.starts_with('/') => {}
                None | Some("PathPrefix" | "Exact") => {
                    return Err(Rejection::new(
                        label,
                        format!("{at}.path.value"),
                        format!("{value:?} must start with /"),
                    ))
                }
                Some("RegularExpression") => check_regex(&format!("{at}.path.value"), value, label)?,
                Some(other) => {
                    return Err(Rejection::new(
                        label,
                        format!("{at}.path.type"),
                        format!("unknown type {other:?} (Exact, PathPrefix, RegularExpression)"),
                    ))
                }
            }
        }
        for (k, h) in m.headers.iter().enumerate() {
            validate_value_match(label, &format!("{at}.headers[{k}]"), h)?;
        }
        for (k, q) in m.query_params.iter().enumerate() {
            validate_value_match(label, &format!("{at}.queryParams[{k}]"), q)?;
        }
    }
    validate_filters(label, &format!("{field}.filters"), &rule.filters)?;
    validate_backends(label, &format!("{field}.backendRefs"), &rule.backend_refs)?;
    if let Some(t) = &rule.timeouts {
        for (name, v) in [("request", &t.request), ("backendRequest", &t.backend_request)] {
            if let Some(v) = v {
                if parse_duration(v).is_none() {
                    return Err(Rejection::new(
                        label,
                        format!("{field}.timeouts.{name}"),
                        format!("{v:?} is not a duration (e.g. 10s, 500ms)"),
                    ));
                }
            }
        }
    }
    if let Some(backoff) = rule.retry.as_ref().and_then(|r| r.backoff.as_ref()) {
        if parse_duration(backoff).is_none() {
            return Err(Rejection::new(
                label,
                format!("{field}.retry.backoff"),
                format!("{backoff:?} is not a duration"),
            ));
        }
    }
    Ok(())
}

fn validate_parents(label: &str, parents: &[ParentReference]) -> Result<(), Rejection> {
    if parents.is_empty() {
        return Err(Rejection::new(label, "spec.parentRefs", "at least one parent is required"));
    }
    Ok(())
}

pub fn validate_http_route(label: &str, r: &HttpRoute) -> Result<(), Rejection> {
    validate_parents(label, &r.spec.parent_refs)?;
    for (i, rule) in r.spec.rules.iter().enumerate() {
        validate_rule(label, &format!("spec.rules[{i}]"), rule)?;
    }
    Ok(())
}

pub fn validate_grpc_route(label: &str, r: &GrpcRoute) -> Result<(), Rejection> {
    validate_parents(label, &r.spec.parent_refs)?;
    for (i, rule) in r.spec.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            if let Some(method) = &m.method {
                match method.type_.as_deref() {
                    None | Some("Exact") => {
                        for (name, v) in [("service", &method.service), ("method", &method.method)] {
                            if v.as_deref().is_some_and(|v| v.contains('/')) {
                                return Err(Rejection::new(label, format!("{at}.method.{name}"), "must not contain /"));
                            }
                        }
                    }
                    Some("RegularExpression") => {
                        for (name, v) in [("service", &method.service), ("method", &method.method)] {
                            if let Some(v) = v {
                                check_regex(&format!("{at}.method.{name}"), v, label)?;
                            }
                        }
                    }
                    Some(other) => {
                        return Err(Rejection::new(
                            label,
                            format!("{at}.method.type"),
                            format!("unknown type {other:?}"),
                        ))
                    }
                }
                if method.service.is_none() && method.method.is_none() {
                    return Err(Rejection::new(label, format!("{at}.method"), "service or method is required"));
                }
            }
            for (k, h) in m.headers.iter().enumerate() {
                validate_value_match(label, &format!("{at}.headers[{k}]"), h)?;
            }
        }
        validate_filters(label, &format!("spec.rules[{i}].filters"), &rule.filters)?;
        validate_backends(label, &format!("spec.rules[{i}].backendRefs"), &rule.backend_refs)?;
    }
    Ok(())
}

/// The Gateway API routes of `svc`: every rule of an HTTPRoute or GRPCRoute whose parent is the
/// service, one route per match, in precedence order.
pub(super) fn routes(svc: &Service, store: &Store, mesh: &MeshSettings) -> Vec<pb::Route> {
    let mut candidates = Vec::new();
    http_routes(svc, store, mesh, &mut candidates);
    grpc_routes(svc, store, mesh, &mut candidates);
    in_precedence_order(candidates)
}

/// Gateway API precedence (see [`Precedence`]); at an ingress gateway the more specific
/// hostname comes before all of that.
pub(crate) fn in_precedence_order(mut candidates: Vec<Candidate>) -> Vec<pb::Route> {
    candidates.sort_by(|a, b| {
        (std::cmp::Reverse(host_rank(&a.route)), a.precedence, &a.created, &a.name, a.route.rule_index).cmp(&(
            std::cmp::Reverse(host_rank(&b.route)),
            b.precedence,
            &b.created,
            &b.name,
            b.route.rule_index,
        ))
    });
    candidates.into_iter().map(|c| c.route).collect()
}

/// How specific a route's hostnames are: none (any host) least, then wildcards by length,
/// then exact names by length.
fn host_rank(r: &pb::Route) -> (bool, bool, usize) {
    r.hostnames
        .iter()
        .map(|h| match h.strip_prefix('*') {
            Some(suffix) => (true, false, suffix.len()),
            None => (true, true, h.len()),
        })
        .max()
        .unwrap_or((false, false, 0))
}

fn parent_matches(p: &ParentReference, route_ns: &str, svc: &Service) -> bool {
    is_service_parent(p.group.as_deref(), p.kind.as_deref())
        && p.name == svc.metadata.name
        && p.namespace.as_deref().unwrap_or(route_ns) == svc.metadata.namespace.as_deref().unwrap_or_default()
}

fn header_modifier(m: &HeaderModifierSpec) -> pb::HeaderModifier {
    let h = |v: &Vec<HttpHeader>| {
        v.iter().map(|h| pb::Header { name: h.name.to_ascii_lowercase(), value: h.value.clone() }).collect()
    };
    pb::HeaderModifier {
        set: h(&m.set),
        add: h(&m.add),
        remove: m.remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
    }
}

fn backend(b: &BackendObjectReference, route_ns: &str, weight: u32, mesh: &MeshSettings) -> pb::Backend {
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    pb::Backend {
        hostname: mesh.hostname(&b.name, ns),
        namespace: ns.to_owned(),
        port: u32::from(b.port.unwrap_or(0)),
        weight,
        filters: Vec::new(),
        subset: String::new(),
    }
}

fn filters(fs: &[HttpRouteFilter], route_ns: &str, mesh: &MeshSettings) -> Vec<pb::Filter> {
    use pb::filter::Kind as F;
    fs.iter()
        .filter_map(|f| {
            let kind = match f.type_.as_str() {
                "RequestHeaderModifier" => F::RequestHeaders(header_modifier(f.request_header_modifier.as_ref()?)),
                "ResponseHeaderModifier" => F::ResponseHeaders(header_modifier(f.response_header_modifier.as_ref()?)),
                "RequestRedirect" => {
                    let r = f.request_redirect.as_ref()?;
                    let path = r.path.as_ref();
                    F::Redirect(pb::Redirect {
                        scheme: r.scheme.clone().unwrap_or_default(),
                        hostname: r.hostname.clone().unwrap_or_default(),
                        path_full: path.and_then(|p| p.replace_full_path.clone()).unwrap_or_default(),
                        path_prefix: path.and_then(|p| p.replace_prefix_match.clone()).unwrap_or_default(),
                        port: u32::from(r.port.unwrap_or(0)),
                        status_code: u32::from(r.status_code.unwrap_or(302)),
                    })
                }
                "URLRewrite" => {
                    let r = f.url_rewrite.as_ref()?;
                    let path = r.path.as_ref();
                    F::Rewrite(pb::Rewrite {
                        hostname: r.hostname.clone().unwrap_or_default(),
                        path_full: path.and_then(|p| p.replace_full_path.clone()).unwrap_or_default(),
                        path_prefix: path.and_then(|p| p.replace_prefix_match.clone()).unwrap_or_default(),
                    })
                }
                "RequestMirror" => {
                    let m = f.request_mirror.as_ref()?;
                    F::Mirror(pb::Mirror {
                        backend: Some(backend(&m.backend_ref, route_ns, 1, mesh)),
                        percent: f64::from(m.percent.unwrap_or(100)),
                        all: m.percent.is_none(),
                    })
                }
                _ => return None,
            };
            Some(pb::Filter { kind: Some(kind) })
        })
        .collect()
}

fn string_match(m: &HttpValueMatch) -> pb::HeaderMatch {
    let value = match m.type_.as_deref() {
        Some("RegularExpression") => pb::string_match::Kind::Regex(m.value.clone()),
        _ => pb::string_match::Kind::Exact(m.value.clone()),
    };
    pb::HeaderMatch { name: m.name.clone(), value: Some(pb::StringMatch { kind: Some(value) }), invert: false }
}

/// Gateway API precedence: exact path, then longer prefix (regex after prefixes), then a
/// method match, then more header matches, then more query matches; ties go to the older
/// route, then the name, then rule order.
type Precedence = (u8, std::cmp::Reverse<usize>, bool, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>);

fn precedence(m: &pb::Match) -> Precedence {
    use std::cmp::Reverse;
    let (kind, len) = if !m.has_path {
        (1, 1)
    } else {
        match m.path_kind() {
            pb::PathKind::PathExact => (0, m.path.len()),
            pb::PathKind::PathPrefix | pb::PathKind::PathStringPrefix => (1, m.path.len()),
            pb::PathKind::PathRegex => (2, 0),
        }
    };
    (kind, Reverse(len), m.method.is_empty(), Reverse(m.headers.len()), Reverse(m.query.len()))
}

/// A route rule's match, with what orders it.
#[derive(Clone)]
pub(crate) struct Candidate {
    precedence: Precedence,
    created: String,
    name: String,
    pub(crate) route: pb::Route,
}

impl Candidate {
    /// A route that matches every request (a TLSRoute's or TCPRoute's rule).
    pub(crate) fn new(meta: &ObjectMeta, route: pb::Route) -> Self {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        Candidate {
            precedence: precedence(&pb::Match::default()),
            created: meta.creation_timestamp.clone().unwrap_or_default(),
            name: format!("{ns}/{}", meta.name),
            route,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn push_rule(
    out: &mut Vec<Candidate>,
    kind: &str,
    meta: &ObjectMeta,
    port: Option<u16>,
    index: usize,
    matches: Vec<pb::Match>,
    rule_filters: Vec<pb::Filter>,
    backends: Vec<pb::Backend>,
    timeouts: (Option<Duration>, Option<Duration>),
    retry: Option<pb::Retry>,
) {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let name = format!("{kind}/{ns}/{}/{index}", meta.name);
    let matches = if matches.is_empty() { vec![pb::Match::default()] } else { matches };
    for m in matches {
        out.push(Candidate {
            precedence: precedence(&m),
            created: meta.creation_timestamp.clone().unwrap_or_default(),
            name: format!("{ns}/{}", meta.name),
            route: pb::Route {
                name: name.clone(),
                ports: port.map(u32::from).into_iter().collect(),
                matches: vec![m],
                backends: backends.clone(),
                filters: rule_filters.clone(),
                timeout: timeouts.0.map(proto_duration),
                backend_timeout: timeouts.1.map(proto_duration),
                retry: retry.clone(),
                fault: None,
                rule_index: u32::try_from(index).unwrap_or(u32::MAX),
                hostnames: Vec::new(),
            },
        });
    }
}

fn rule_backends(refs: &[HttpBackendRef], ns: &str, mesh: &MeshSettings) -> Vec<pb::Backend> {
    refs.iter()
        .map(|b| {
            let mut out = backend(&b.backend, ns, b.weight.unwrap_or(1), mesh);
            out.filters = filters(&b.filters, ns, mesh);
            out
        })
        .collect()
}

fn http_match(m: &HttpRouteMatch) -> pb::Match {
    let (has_path, kind, path) = match &m.path {
        None => (false, pb::PathKind::PathPrefix, String::new()),
        Some(p) => {
            let kind = match p.type_.as_deref() {
                Some("Exact") => pb::PathKind::PathExact,
                Some("RegularExpression") => pb::PathKind::PathRegex,
                _ => pb::PathKind::PathPrefix,
            };
            (true, kind, p.value.clone().unwrap_or_else(|| "/".into()))
        }
    };
    pb::Match {
        path_kind: kind as i32,
        path,
        has_path,
        headers: m.headers.iter().map(string_match).collect(),
        query: m.query_params.iter().map(string_match).collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}

/// A gRPC method match as a path match on `/<service>/<method>`.
fn grpc_match(m: &GrpcRouteMatch) -> pb::Match {
    let (has_path, kind, path) = match &m.method {
        None => (false, pb::PathKind::PathPrefix, String::new()),
        Some(method) => match (method.type_.as_deref(), &method.service, &method.method) {
            (Some("RegularExpression"), s, meth) => (
                true,
                pb::PathKind::PathRegex,
                format!("/{}/{}", s.as_deref().unwrap_or("[^/]+"), meth.as_deref().unwrap_or("[^/]+")),
            ),
            (_, Some(s), Some(meth)) => (true, pb::PathKind::PathExact, format!("/{s}/{meth}")),
            (_, Some(s), None) => (true, pb::PathKind::PathPrefix, format!("/{s}/")),
            (_, None, Some(meth)) => (true, pb::PathKind::PathRegex, format!("/[^/]+/{}", regex::escape(meth))),
            (_, None, None) => (false, pb::PathKind::PathPrefix, String::new()),
        },
    };
    pb::Match {
        path_kind: kind as i32,
        path,
        has_path,
        headers: m.headers.iter().map(string_match).collect(),
        query: Vec::new(),
        method: String::new(),
    }
}

fn http_routes(svc: &Service, store: &Store, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    for object in store.list(Kind::HttpRoute, None) {
        let Object::HttpRoute(r) = object else { continue };
        let ns = r.metadata.namespace.as_deref().unwrap_or_default();
        for parent in r.spec.parent_refs.iter().filter(|p| parent_matches(p, ns, svc)) {
            http_route_rules(r, parent.port, mesh, out);
        }
    }
}

/// Every rule of `r` as candidates (one per match), for `port` (every port when `None`).
pub(crate) fn http_route_rules(r: &HttpRoute, port: Option<u16>, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    let ns = r.metadata.namespace.as_deref().unwrap_or_default();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let matches = rule.matches.iter().map(http_match).collect();
        let timeouts = rule.timeouts.as_ref().map_or((None, None), |t| {
            (
                t.request.as_deref().and_then(parse_duration).filter(|d| !d.is_zero()),
                t.backend_request.as_deref().and_then(parse_duration).filter(|d| !d.is_zero()),
            )
        });
        let retry = rule.retry.as_ref().map(|r| pb::Retry {
            attempts: r.attempts.unwrap_or(1),
            codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
            connect_failure: true,
            backoff: r.backoff.as_deref().and_then(parse_duration).map(proto_duration),
        });
        push_rule(
            out,
            "HTTPRoute",
            &r.metadata,
            port,
            i,
            matches,
            filters(&rule.filters, ns, mesh),
            rule_backends(&rule.backend_refs, ns, mesh),
            timeouts,
            retry,
        );
    }
}

fn grpc_routes(svc: &Service, store: &Store, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    for object in store.list(Kind::GrpcRoute, None) {
        let Object::GrpcRoute(r) = object else { continue };
        let ns = r.metadata.namespace.as_deref().unwrap_or_default();
        for parent in r.spec.parent_refs.iter().filter(|p| parent_matches(p, ns, svc)) {
            grpc_route_rules(r, parent.port, mesh, out);
        }
    }
}

/// Every rule of `r` as candidates (one per match), for `port` (every port when `None`).
pub(crate) fn grpc_route_rules(r: &GrpcRoute, port: Option<u16>, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    let ns = r.metadata.namespace.as_deref().unwrap_or_default();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let matches = rule.matches.iter().map(grpc_match).collect();
        push_rule(
            out,
            "GRPCRoute",
            &r.metadata,
            port,
            i,
            matches,
            filters(&rule.filters, ns, mesh),
            rule_backends(&rule.backend_refs, ns, mesh),
            (None, None),
            None,
        );
    }
}
