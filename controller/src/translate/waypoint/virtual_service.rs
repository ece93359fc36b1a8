//! VirtualService: its validation and its routes for a service (used when no Gateway API route
//! names the service), mapped onto the same route model in their written order.

use std::collections::BTreeMap;

use ambit_shared::proto::waypoint as pb;

use super::fields::{check_regex, names_service, parse_duration, proto_duration};
use crate::model::{
    Kind, Object, Service, VirtualService, VsDestinationWeight, VsHeaderOps, VsHttpRoute, VsMatch, VsStringMatch,
};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::MeshSettings;

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
            if d.destination.subset.as_deref().is_some_and(str::is_empty) {
                return Err(r(at(&format!("route[{j}].destination.subset")), "a subset name is empty".into()));
            }
            if d.destination.host.is_empty() {
                return Err(r(at(&format!("route[{j}].destination.host")), "required".into()));
            }
        }
        if route.mirror.as_ref().and_then(|m| m.subset.as_deref()).is_some_and(str::is_empty) {
            return Err(r(at("mirror.subset"), "a subset name is empty".into()));
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
pub(super) fn virtual_service_routes(svc: &Service, store: &Store, mesh: &MeshSettings) -> Vec<pb::Route> {
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
            out.push(route(vs, vs_ns, i, r, mesh));
        }
    }
    out
}

/// The `i`th HTTP route of `vs` (written in `vs_ns`) as a waypoint route.
fn route(vs: &VirtualService, vs_ns: &str, i: usize, r: &VsHttpRoute, mesh: &MeshSettings) -> pb::Route {
    let matches = r.matches.iter().map(route_match).collect();
    let single = r.route.len() == 1;
    let backends = r.route.iter().map(|d| destination(d, single, vs_ns, mesh)).collect();
    let filters = route_filters(r, vs_ns, mesh);
    let retry = r.retries.as_ref().filter(|x| x.attempts.unwrap_or(0) > 0).map(|x| {
        let (codes, connect_failure) = retry_on(x.retry_on.as_deref().unwrap_or("connect-failure,refused-stream"));
        pb::Retry { attempts: x.attempts.unwrap_or(0), codes, connect_failure, backoff: None }
    });
    let fault = r.fault.as_ref().map(|f| pb::Fault {
        delay: f.delay.as_ref().and_then(|d| d.fixed_delay.as_deref()).and_then(parse_duration).map(proto_duration),
        delay_percent: f.delay.as_ref().map_or(0.0, |d| d.percentage.as_ref().map_or(100.0, |p| p.value)),
        abort_status: u32::from(f.abort.as_ref().and_then(|a| a.http_status).unwrap_or(0)),
        abort_percent: f.abort.as_ref().map_or(0.0, |a| a.percentage.as_ref().map_or(100.0, |p| p.value)),
    });
    pb::Route {
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
        hostnames: Vec::new(),
    }
}

fn route_match(m: &VsMatch) -> pb::Match {
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
        m.iter().map(|(k, v)| pb::HeaderMatch { name: k.clone(), value: vs_string_match(v), invert: false }).collect()
    };
    pb::Match {
        path_kind: kind as i32,
        path,
        has_path,
        headers: pairs(&m.headers),
        query: pairs(&m.query_params),
        method: m.method.as_ref().and_then(|x| x.exact.clone()).unwrap_or_default(),
    }
}

/// One weighted destination; a lone destination without a weight takes all traffic.
fn destination(d: &VsDestinationWeight, single: bool, vs_ns: &str, mesh: &MeshSettings) -> pb::Backend {
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
        subset: d.destination.subset.clone().unwrap_or_default(),
    }
}

/// The route's header operations, redirect, rewrite and mirror, in that order.
fn route_filters(r: &VsHttpRoute, vs_ns: &str, mesh: &MeshSettings) -> Vec<pb::Filter> {
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
                    subset: m.subset.clone().unwrap_or_default(),
                }),
                percent,
                all: percent >= 100.0,
            })),
        });
    }
    filters
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
