//! Waypoint (L7) translation: for each service bound to a waypoint, one
//! `ambit.waypoint.ServiceConfig` with its ports' protocols, its routes (HTTPRoute and
//! GRPCRoute with the service as parent, in Gateway API precedence) and the authorization
//! policies targeting the service or its waypoint.
//!
//! Also the validation of route objects (a rejected route names the field), shared by both
//! sources through `manifest::validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_shared::proto::waypoint as pb;

use crate::model::{
    AuthorizationPolicy, BackendObjectReference, DestinationRule, Gateway, GrpcRoute, HeaderModifierSpec, HttpRoute,
    HttpRouteFilter, HttpRouteRule, HttpValueMatch, Kind, Object, ParentReference, PolicyTargetReference,
    RequestAuthentication, Service, VirtualService, VsHeaderOps, VsStringMatch,
};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::MeshSettings;

/// Gateway API durations: one or more `<number><unit>` with units h, m, s, ms (`1m30s`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn is_service_ref(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core")) && matches!(kind, None | Some("Service"))
}

fn check_regex(field: &str, re: &str, label: &str) -> Result<(), Rejection> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| Rejection::new(label, field, format!("invalid regular expression: {e}")))
}

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

fn validate_backends(label: &str, field: &str, rule: &[crate::model::HttpBackendRef]) -> Result<(), Rejection> {
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

pub fn validate_destination_rule(label: &str, dr: &DestinationRule) -> Result<(), Rejection> {
    let r = |field: &str, reason: String| Rejection::new(label, field, reason);
    if dr.spec.host.is_empty() {
        return Err(r("spec.host", "required".into()));
    }
    let Some(tp) = &dr.spec.traffic_policy else { return Ok(()) };
    if let Some(od) = &tp.outlier_detection {
        for (name, v) in [("interval", &od.interval), ("baseEjectionTime", &od.base_ejection_time)] {
            if let Some(v) = v {
                if parse_duration(v).is_none_or(|d| d.is_zero()) {
                    return Err(r(
                        &format!("spec.trafficPolicy.outlierDetection.{name}"),
                        format!("{v:?} is not a positive duration"),
                    ));
                }
            }
        }
        if od.max_ejection_percent.is_some_and(|p| p > 100) {
            return Err(r("spec.trafficPolicy.outlierDetection.maxEjectionPercent", "must be 0-100".into()));
        }
    }
    if let Some(lb) = &tp.load_balancer {
        match lb.simple.as_deref() {
            None | Some("UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" | "ROUND_ROBIN" | "RANDOM") => {}
            Some(other) => {
                return Err(r(
                    "spec.trafficPolicy.loadBalancer.simple",
                    format!("{other:?} is not supported by waypoints (LEAST_REQUEST, ROUND_ROBIN, RANDOM)"),
                ))
            }
        }
        if let Some(h) = &lb.consistent_hash {
            let set = [h.http_header_name.is_some(), h.http_cookie.is_some(), h.use_source_ip == Some(true)];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(r(
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "exactly one of httpHeaderName, httpCookie, useSourceIp".into(),
                ));
            }
        }
    }
    Ok(())
}

pub fn validate_request_authentication(label: &str, ra: &RequestAuthentication) -> Result<(), Rejection> {
    for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        if rule.issuer.is_empty() {
            return Err(Rejection::new(label, at("issuer"), "required"));
        }
        match (&rule.jwks, &rule.jwks_uri) {
            (Some(jwks), _) => {
                let parsed: Result<jsonwebtoken::jwk::JwkSet, _> = serde_json::from_str(jwks);
                if let Err(e) = parsed {
                    return Err(Rejection::new(label, at("jwks"), format!("not a JSON Web Key Set: {e}")));
                }
            }
            (None, Some(uri)) if uri.starts_with("http://") || uri.starts_with("https://") => {}
            (None, Some(uri)) => {
                return Err(Rejection::new(label, at("jwksUri"), format!("{uri:?} is not an http(s) URI")))
            }
            (None, None) => return Err(Rejection::new(label, at("jwks"), "jwks or jwksUri is required")),
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(Rejection::new(
                    label,
                    at(&format!("fromHeaders[{j}].name")),
                    format!("{:?} is not a header name", h.name),
                ));
            }
        }
        for (j, o) in rule.output_claim_to_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(o.header.as_bytes()).is_err() {
                return Err(Rejection::new(
                    label,
                    at(&format!("outputClaimToHeaders[{j}].header")),
                    format!("{:?} is not a header name", o.header),
                ));
            }
        }
    }
    Ok(())
}

fn jwt_rules(ra: &RequestAuthentication) -> impl Iterator<Item = pb::JwtRule> + '_ {
    let source = format!("{}/{}", ra.metadata.namespace.as_deref().unwrap_or_default(), ra.metadata.name);
    ra.spec.jwt_rules.iter().map(move |r| {
        let mut locations: Vec<pb::JwtLocation> = r
            .from_headers
            .iter()
            .map(|h| pb::JwtLocation {
                header: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
                param: String::new(),
            })
            .collect();
        locations.extend(r.from_params.iter().map(|p| pb::JwtLocation { param: p.clone(), ..Default::default() }));
        pb::JwtRule {
            source: source.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks: r.jwks.clone().unwrap_or_default(),
            jwks_uri: r.jwks_uri.clone().unwrap_or_default(),
            locations,
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|o| pb::ClaimToHeader { header: o.header.to_ascii_lowercase(), claim: o.claim.clone() })
                .collect(),
            forward_original_token: r.forward_original_token,
        }
    })
}

/// Whether `host` (written in namespace `host_ns`: a short name, `name.ns`, `name.ns.svc` or
/// the FQDN) names the service.
fn names_service(host: &str, host_ns: &str, svc: &Service, mesh: &MeshSettings) -> bool {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_str();
    host == mesh.hostname(name, ns)
        || (host_ns == ns && host == name)
        || host == format!("{name}.{ns}")
        || host == format!("{name}.{ns}.svc")
}

/// A destination host of a VirtualService written in `vs_ns` → (FQDN, namespace).
fn resolve_host(host: &str, vs_ns: &str, mesh: &MeshSettings) -> (String, String) {
    let suffix = format!(".svc.{}", mesh.domain_suffix);
    let trimmed = host.strip_suffix(&suffix).or_else(|| host.strip_suffix(".svc")).unwrap_or(host);
    match trimmed.split_once('.') {
        Some((name, ns)) if !ns.contains('.') => (mesh.hostname(name, ns), ns.to_owned()),
        Some(_) => (host.to_owned(), vs_ns.to_owned()),
        None => (mesh.hostname(trimmed, vs_ns), vs_ns.to_owned()),
    }
}

fn vs_string_match(m: &VsStringMatch) -> Option<pb::StringMatch> {
    use pb::string_match::Kind as K;
    let kind = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => K::Exact(e.clone()),
        (_, Some(p), _) => K::Prefix(p.clone()),
        (_, _, Some(r)) => K::Regex(r.clone()),
        _ => K::Present(true),
    };
    Some(pb::StringMatch { kind: Some(kind) })
}

fn vs_header_ops(ops: &VsHeaderOps) -> pb::HeaderModifier {
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter().map(|(k, v)| pb::Header { name: k.to_ascii_lowercase(), value: v.clone() }).collect()
    };
    pb::HeaderModifier {
        set: pairs(&ops.set),
        add: pairs(&ops.add),
        remove: ops.remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
    }
}

/// `retryOn` → (status codes, retry connection failures).
fn retry_on(spec: &str) -> (Vec<u32>, bool) {
    let mut codes = Vec::new();
    let mut connect = false;
    for token in spec.split(',').map(str::trim) {
        match token {
            "5xx" => codes.extend(500..=599),
            "gateway-error" => codes.extend([502, 503, 504]),
            "connect-failure" | "reset" | "refused-stream" => connect = true,
            other => codes.extend(other.parse::<u32>().ok()),
        }
    }
    codes.sort_unstable();
    codes.dedup();
    (codes, connect)
}

pub fn validate_virtual_service(label: &str, vs: &VirtualService) -> Result<(), Rejection> {
    let r = |field: String, reason: String| Rejection::new(label, field, reason);
    if vs.spec.hosts.is_empty() {
        return Err(r("spec.hosts".into(), "at least one host is required".into()));
    }
    for (i, route) in vs.spec.http.iter().enumerate() {
        let at = |f: &str| format!("spec.http[{i}].{f}");
        for (j, m) in route.matches.iter().enumerate() {
            let uri_regex = m.uri.as_ref().and_then(|u| u.regex.as_deref());
            let header_regexes = m.headers.values().chain(m.query_params.values()).filter_map(|h| h.regex.as_deref());
            for re in uri_regex.into_iter().chain(header_regexes) {
                check_regex(&at(&format!("match[{j}]")), re, label)?;
            }
            if let Some(method) = &m.method {
                if method.exact.is_none() || method.prefix.is_some() || method.regex.is_some() {
                    return Err(r(at(&format!("match[{j}].method")), "only exact method matches are supported".into()));
                }
            }
        }
        if route.route.len() > 1 && route.route.iter().all(|d| d.weight.unwrap_or(0) == 0) {
            return Err(r(at("route"), "several destinations need weights (their sum must not be 0)".into()));
        }
        if route.route.is_empty() && route.redirect.is_none() {
            return Err(r(at("route"), "a route needs destinations or a redirect".into()));
        }
        for (j, d) in route.route.iter().enumerate() {
            if d.destination.subset.is_some() {
                return Err(r(
                    at(&format!("route[{j}].destination.subset")),
                    "subsets are not supported by waypoints; route to a Service per version".into(),
                ));
            }
            if d.destination.host.is_empty() {
                return Err(r(at(&format!("route[{j}].destination.host")), "required".into()));
            }
        }
        for (name, v) in [
            ("timeout", &route.timeout),
            ("retries.perTryTimeout", &route.retries.as_ref().and_then(|r| r.per_try_timeout.clone())),
        ] {
            if let Some(v) = v {
                if parse_duration(v).is_none() {
                    return Err(r(at(name), format!("{v:?} is not a duration")));
                }
            }
        }
        if let Some(f) = &route.fault {
            if let Some(d) = &f.delay {
                if d.fixed_delay.as_deref().and_then(parse_duration).is_none() {
                    return Err(r(at("fault.delay.fixedDelay"), "a duration is required".into()));
                }
            }
            if let Some(a) = &f.abort {
                if !a.http_status.is_some_and(|s| (200..=599).contains(&s)) {
                    return Err(r(at("fault.abort.httpStatus"), "an HTTP status (200-599) is required".into()));
                }
            }
            for p in [
                f.delay.as_ref().and_then(|d| d.percentage.as_ref()),
                f.abort.as_ref().and_then(|a| a.percentage.as_ref()),
            ]
            .into_iter()
            .flatten()
            {
                if !(0.0..=100.0).contains(&p.value) {
                    return Err(r(at("fault"), format!("percentage {} is not 0-100", p.value)));
                }
            }
        }
    }
    Ok(())
}

/// VirtualService routes for a service, in their written order (first match wins), the
/// VirtualServices themselves oldest first. Used when no HTTPRoute/GRPCRoute names the service.
fn virtual_service_routes(svc: &Service, store: &Store, mesh: &MeshSettings) -> Vec<pb::Route> {
    let mut services: Vec<&VirtualService> = store
        .list(Kind::VirtualService, None)
        .filter_map(|o| match o {
            Object::VirtualService(vs) => Some(vs),
            _ => None,
        })
        .filter(|vs| {
            let vs_ns = vs.metadata.namespace.as_deref().unwrap_or_default();
            vs.spec.hosts.iter().any(|h| names_service(h, vs_ns, svc, mesh))
        })
        .collect();
    services.sort_by_key(|vs| {
        (vs.metadata.creation_timestamp.clone(), vs.metadata.namespace.clone(), vs.metadata.name.clone())
    });
    let mut out = Vec::new();
    for vs in services {
        let vs_ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let matches = r
                .matches
                .iter()
                .map(|m| {
                    let (has_path, kind, path) = match &m.uri {
                        None => (false, pb::PathKind::PathPrefix, String::new()),
                        Some(u) => match (&u.exact, &u.prefix, &u.regex) {
                            (Some(e), _, _) => (true, pb::PathKind::PathExact, e.clone()),
                            (_, Some(p), _) => (true, pb::PathKind::PathStringPrefix, p.clone()),
                            (_, _, Some(re)) => (true, pb::PathKind::PathRegex, re.clone()),
                            _ => (false, pb::PathKind::PathPrefix, String::new()),
                        },
                    };
                    let pairs = |m: &BTreeMap<String, VsStringMatch>| {
                        m.iter()
                            .map(|(k, v)| pb::HeaderMatch { name: k.clone(), value: vs_string_match(v), invert: false })
                            .collect()
                    };
                    pb::Match {
                        path_kind: kind as i32,
                        path,
                        has_path,
                        headers: pairs(&m.headers),
                        query: pairs(&m.query_params),
                        method: m.method.as_ref().and_then(|x| x.exact.clone()).unwrap_or_default(),
                    }
                })
                .collect();
            let single = r.route.len() == 1;
            let backends = r
                .route
                .iter()
                .map(|d| {
                    let (hostname, namespace) = resolve_host(&d.destination.host, vs_ns, mesh);
                    let headers = d.headers.as_ref();
                    let request = headers
                        .and_then(|h| h.request.as_ref())
                        .map(|ops| pb::Filter { kind: Some(pb::filter::Kind::RequestHeaders(vs_header_ops(ops))) });
                    let response = headers
                        .and_then(|h| h.response.as_ref())
                        .map(|ops| pb::Filter { kind: Some(pb::filter::Kind::ResponseHeaders(vs_header_ops(ops))) });
                    let filters = request.into_iter().chain(response).collect();
                    pb::Backend {
                        hostname,
                        namespace,
                        port: u32::from(d.destination.port.as_ref().map_or(0, |p| p.number)),
                        weight: d.weight.unwrap_or(if single { 100 } else { 0 }),
                        filters,
                    }
                })
                .collect();
            let mut filters = Vec::new();
            if let Some(h) = &r.headers {
                if let Some(ops) = &h.request {
                    filters.push(pb::Filter { kind: Some(pb::filter::Kind::RequestHeaders(vs_header_ops(ops))) });
                }
                if let Some(ops) = &h.response {
                    filters.push(pb::Filter { kind: Some(pb::filter::Kind::ResponseHeaders(vs_header_ops(ops))) });
                }
            }
            if let Some(rd) = &r.redirect {
                filters.push(pb::Filter {
                    kind: Some(pb::filter::Kind::Redirect(pb::Redirect {
                        scheme: rd.scheme.clone().unwrap_or_default(),
                        hostname: rd.authority.clone().unwrap_or_default(),
                        path_full: rd.uri.clone().unwrap_or_default(),
                        path_prefix: String::new(),
                        port: 0,
                        status_code: u32::from(rd.redirect_code.unwrap_or(301)),
                    })),
                });
            }
            if let Some(rw) = &r.rewrite {
                filters.push(pb::Filter {
                    kind: Some(pb::filter::Kind::Rewrite(pb::Rewrite {
                        hostname: rw.authority.clone().unwrap_or_default(),
                        path_full: String::new(),
                        path_prefix: rw.uri.clone().unwrap_or_default(),
                    })),
                });
            }
            if let Some(m) = &r.mirror {
                let (hostname, namespace) = resolve_host(&m.host, vs_ns, mesh);
                let percent = r.mirror_percentage.as_ref().map_or(100.0, |p| p.value);
                filters.push(pb::Filter {
                    kind: Some(pb::filter::Kind::Mirror(pb::Mirror {
                        backend: Some(pb::Backend {
                            hostname,
                            namespace,
                            port: u32::from(m.port.as_ref().map_or(0, |p| p.number)),
                            weight: 1,
                            filters: Vec::new(),
                        }),
                        percent,
                        all: percent >= 100.0,
                    })),
                });
            }
            let retry = r.retries.as_ref().filter(|x| x.attempts.unwrap_or(0) > 0).map(|x| {
                let (codes, connect_failure) =
                    retry_on(x.retry_on.as_deref().unwrap_or("connect-failure,refused-stream"));
                pb::Retry { attempts: x.attempts.unwrap_or(0), codes, connect_failure, backoff: None }
            });
            let fault = r.fault.as_ref().map(|f| pb::Fault {
                delay: f
                    .delay
                    .as_ref()
                    .and_then(|d| d.fixed_delay.as_deref())
                    .and_then(parse_duration)
                    .map(proto_duration),
                delay_percent: f.delay.as_ref().map_or(0.0, |d| d.percentage.as_ref().map_or(100.0, |p| p.value)),
                abort_status: u32::from(f.abort.as_ref().and_then(|a| a.http_status).unwrap_or(0)),
                abort_percent: f.abort.as_ref().map_or(0.0, |a| a.percentage.as_ref().map_or(100.0, |p| p.value)),
            });
            let matches: Vec<pb::Match> = matches;
            out.push(pb::Route {
                name: format!("VirtualService/{vs_ns}/{}/{i}", vs.metadata.name),
                ports: Vec::new(),
                matches,
                backends,
                filters,
                timeout: r.timeout.as_deref().and_then(parse_duration).filter(|d| !d.is_zero()).map(proto_duration),
                backend_timeout: r
                    .retries
                    .as_ref()
                    .and_then(|x| x.per_try_timeout.as_deref())
                    .and_then(parse_duration)
                    .map(proto_duration),
                retry,
                fault,
                rule_index: u32::try_from(i).unwrap_or(u32::MAX),
            });
        }
    }
    out
}

/// The DestinationRule for a service: one in the service's namespace first, then any other
/// whose host names it (oldest first); its traffic policy as the waypoint applies it.
fn backend_policy(svc: &Service, store: &Store, mesh: &MeshSettings) -> Option<pb::BackendPolicy> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let names = |dr: &DestinationRule| {
        names_service(&dr.spec.host, dr.metadata.namespace.as_deref().unwrap_or_default(), svc, mesh)
    };
    let mut candidates: Vec<&DestinationRule> = store
        .list(Kind::DestinationRule, None)
        .filter_map(|o| match o {
            Object::DestinationRule(dr) if names(dr) => Some(dr),
            _ => None,
        })
        .collect();
    candidates.sort_by_key(|dr| (dr.metadata.namespace.as_deref() != Some(ns), dr.metadata.creation_timestamp.clone()));
    let dr = candidates.first()?;
    let tp = dr.spec.traffic_policy.clone().unwrap_or_default();
    let pool = tp.connection_pool.unwrap_or_default();
    let http = pool.http.unwrap_or_default();
    let duration = |v: &Option<String>| v.as_deref().and_then(parse_duration).map(proto_duration);
    let outlier = tp.outlier_detection.map(|od| pb::OutlierDetection {
        consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway_errors: od.consecutive_gateway_errors.unwrap_or(0),
        interval: duration(&od.interval),
        base_ejection_time: duration(&od.base_ejection_time),
        max_ejection_percent: od.max_ejection_percent.unwrap_or(10),
    });
    let load_balancer = tp.load_balancer.map(|lb| {
        let hash = lb.consistent_hash.unwrap_or_default();
        pb::LoadBalancer {
            simple: match lb.simple.as_deref() {
                Some("ROUND_ROBIN") => pb::load_balancer::Simple::RoundRobin,
                Some("RANDOM") => pb::load_balancer::Simple::Random,
                _ => pb::load_balancer::Simple::LeastRequest,
            } as i32,
            hash_header: hash.http_header_name.unwrap_or_default().to_ascii_lowercase(),
            hash_cookie: hash.http_cookie.map(|c| c.name).unwrap_or_default(),
            hash_source_ip: hash.use_source_ip.unwrap_or(false),
        }
    });
    Some(pb::BackendPolicy {
        source: format!("{}/{}", dr.metadata.namespace.as_deref().unwrap_or_default(), dr.metadata.name),
        max_connections: pool.tcp.and_then(|t| t.max_connections).unwrap_or(0),
        max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
        max_requests: http.http2_max_requests.unwrap_or(0),
        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
        outlier,
        load_balancer,
    })
}

/// The port's protocol: `appProtocol`, else Istio's port-name convention, else sniffed.
fn port_protocol(app_protocol: Option<&str>, name: Option<&str>) -> pb::Protocol {
    let of = |p: &str| match p.to_ascii_lowercase().as_str() {
        "http" => Some(pb::Protocol::Http),
        "http2" | "kubernetes.io/h2c" | "h2c" => Some(pb::Protocol::Http2),
        "grpc" | "grpc-web" => Some(pb::Protocol::Grpc),
        "tcp" | "mongo" | "mysql" | "redis" | "tls" | "https" | "kubernetes.io/ws" | "kubernetes.io/wss" => {
            Some(pb::Protocol::Tcp)
        }
        _ => None,
    };
    app_protocol
        .and_then(of)
        .or_else(|| name.and_then(|n| of(n.split('-').next().unwrap_or(n))))
        .unwrap_or(pb::Protocol::Unspecified)
}

fn parent_matches(p: &ParentReference, route_ns: &str, svc: &Service) -> bool {
    is_service_ref(p.group.as_deref(), p.kind.as_deref())
        && p.name == svc.metadata.name
        && p.namespace.as_deref().unwrap_or(route_ns) == svc.metadata.namespace.as_deref().unwrap_or_default()
}

fn header_modifier(m: &HeaderModifierSpec) -> pb::HeaderModifier {
    let h = |v: &Vec<crate::model::HttpHeader>| {
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

struct Candidate {
    precedence: Precedence,
    created: String,
    name: String,
    route: pb::Route,
}

#[allow(clippy::too_many_arguments)]
fn push_rule(
    out: &mut Vec<Candidate>,
    kind: &str,
    meta: &crate::model::ObjectMeta,
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
            },
        });
    }
}

fn rule_backends(refs: &[crate::model::HttpBackendRef], ns: &str, mesh: &MeshSettings) -> Vec<pb::Backend> {
    refs.iter()
        .map(|b| {
            let mut out = backend(&b.backend, ns, b.weight.unwrap_or(1), mesh);
            out.filters = filters(&b.filters, ns, mesh);
            out
        })
        .collect()
}

fn http_match(m: &crate::model::HttpRouteMatch) -> pb::Match {
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
fn grpc_match(m: &crate::model::GrpcRouteMatch) -> pb::Match {
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
                    parent.port,
                    i,
                    matches,
                    filters(&rule.filters, ns, mesh),
                    rule_backends(&rule.backend_refs, ns, mesh),
                    timeouts,
                    retry,
                );
            }
        }
    }
}

fn grpc_routes(svc: &Service, store: &Store, mesh: &MeshSettings, out: &mut Vec<Candidate>) {
    for object in store.list(Kind::GrpcRoute, None) {
        let Object::GrpcRoute(r) = object else { continue };
        let ns = r.metadata.namespace.as_deref().unwrap_or_default();
        for parent in r.spec.parent_refs.iter().filter(|p| parent_matches(p, ns, svc)) {
            for (i, rule) in r.spec.rules.iter().enumerate() {
                let matches = rule.matches.iter().map(grpc_match).collect();
                push_rule(
                    out,
                    "GRPCRoute",
                    &r.metadata,
                    parent.port,
                    i,
                    matches,
                    filters(&rule.filters, ns, mesh),
                    rule_backends(&rule.backend_refs, ns, mesh),
                    (None, None),
                    None,
                );
            }
        }
    }
}

fn targets(refs: &[&PolicyTargetReference], kind: &str, group: &[&str], name: &str) -> bool {
    refs.iter().any(|r| r.kind == kind && group.contains(&r.group.as_str()) && r.name == name)
}

/// An AuthorizationPolicy as the waypoint evaluates it.
pub fn policy(p: &AuthorizationPolicy) -> pb::Policy {
    let action = match p.spec.action.as_deref() {
        // CUSTOM (external authorization) is not implemented: what it would send to its
        // provider is denied rather than let through (fail closed).
        Some("DENY" | "CUSTOM") => pb::Action::Deny,
        Some("AUDIT") => pb::Action::Audit,
        _ => pb::Action::Allow,
    };
    let policy_ns = p.metadata.namespace.as_deref().unwrap_or_default();
    let sas = |l: &Vec<String>| -> Vec<String> {
        l.iter().map(|v| if v.contains('/') { v.clone() } else { format!("{policy_ns}/{v}") }).collect()
    };
    let rules = p
        .spec
        .rules
        .iter()
        .flatten()
        .map(|r| pb::Rule {
            from: r
                .from
                .iter()
                .map(|f| {
                    let s = &f.source;
                    pb::Source {
                        principals: s.principals.clone(),
                        not_principals: s.not_principals.clone(),
                        request_principals: s.request_principals.clone(),
                        not_request_principals: s.not_request_principals.clone(),
                        namespaces: s.namespaces.clone(),
                        not_namespaces: s.not_namespaces.clone(),
                        ip_blocks: s.ip_blocks.clone(),
                        not_ip_blocks: s.not_ip_blocks.clone(),
                        remote_ip_blocks: s.remote_ip_blocks.clone(),
                        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                        service_accounts: sas(&s.service_accounts),
                        not_service_accounts: sas(&s.not_service_accounts),
                    }
                })
                .collect(),
            to: r
                .to
                .iter()
                .map(|t| {
                    let o = &t.operation;
                    pb::Operation {
                        hosts: o.hosts.clone(),
                        not_hosts: o.not_hosts.clone(),
                        ports: o.ports.clone(),
                        not_ports: o.not_ports.clone(),
                        methods: o.methods.clone(),
                        not_methods: o.not_methods.clone(),
                        paths: o.paths.clone(),
                        not_paths: o.not_paths.clone(),
                    }
                })
                .collect(),
            when: r
                .when
                .iter()
                .map(|w| pb::Condition {
                    key: w.key.clone(),
                    values: w.values.clone(),
                    not_values: w.not_values.clone(),
                })
                .collect(),
        })
        .collect();
    pb::Policy {
        name: p.metadata.name.clone(),
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        action: action as i32,
        rules,
        dry_run: p.metadata.annotations.get(crate::model::keys::DRY_RUN).is_some_and(|v| v == "true"),
    }
}

/// The L7 configuration of `svc`, served by waypoint `gw`.
pub fn service_config(svc: &Service, gw: &Gateway, store: &Store, mesh: &MeshSettings) -> pb::ServiceConfig {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    let mut candidates = Vec::new();
    http_routes(svc, store, mesh, &mut candidates);
    grpc_routes(svc, store, mesh, &mut candidates);
    candidates.sort_by(|a, b| {
        (a.precedence, &a.created, &a.name, a.route.rule_index).cmp(&(
            b.precedence,
            &b.created,
            &b.name,
            b.route.rule_index,
        ))
    });
    // A policy in `namespace` attaches when it targets the service (in its namespace) or the
    // waypoint's Gateway (in the Gateway's namespace).
    let attached = |namespace: &str, refs: &[PolicyTargetReference], one: &Option<PolicyTargetReference>| {
        let refs: Vec<&PolicyTargetReference> = refs.iter().chain(one.iter()).collect();
        (namespace == ns && targets(&refs, "Service", &["", "core"], &svc.metadata.name))
            || (namespace == gw_ns && targets(&refs, "Gateway", &["gateway.networking.k8s.io"], &gw.metadata.name))
    };
    let mut policies = Vec::new();
    let mut jwt = Vec::new();
    let mut seen_ra = Vec::new();
    for namespace in [ns, gw_ns] {
        for o in store.list(Kind::RequestAuthentication, Some(namespace)) {
            let Object::RequestAuthentication(ra) = o else { continue };
            let hit = attached(namespace, &ra.spec.target_refs, &ra.spec.target_ref);
            if hit && !seen_ra.contains(&(namespace, ra.metadata.name.as_str())) {
                seen_ra.push((namespace, ra.metadata.name.as_str()));
                jwt.extend(jwt_rules(ra));
            }
        }
        for p in store.authorization_policies(Some(namespace)) {
            let hit = attached(namespace, &p.spec.target_refs, &p.spec.target_ref);
            if hit && !policies.iter().any(|q: &pb::Policy| q.name == p.metadata.name && q.namespace == namespace) {
                policies.push(policy(p));
            }
        }
        if ns == gw_ns {
            break;
        }
    }
    pb::ServiceConfig {
        namespace: ns.to_owned(),
        hostname: mesh.hostname(&svc.metadata.name, ns),
        waypoint: format!("{gw_ns}/{}", gw.metadata.name),
        ports: svc
            .spec
            .ports
            .iter()
            .map(|p| pb::Port {
                port: u32::from(p.port),
                protocol: port_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
                name: p.name.clone().unwrap_or_default(),
            })
            .collect(),
        // Gateway API routes when any names the service, else its VirtualServices.
        routes: if candidates.is_empty() {
            virtual_service_routes(svc, store, mesh)
        } else {
            candidates.into_iter().map(|c| c.route).collect()
        },
        policies,
        backend: backend_policy(svc, store, mesh),
        jwt_rules: jwt,
    }
}

#[cfg(test)]
mod tests;
