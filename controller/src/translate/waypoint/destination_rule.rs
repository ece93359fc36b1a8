//! DestinationRule: its validation and the traffic policy (connection pool, outlier detection,
//! load balancer, TLS; per port and per subset) the waypoint applies to a service's backends,
//! with the subsets' endpoints.

use ambit_shared::proto::waypoint as pb;

use super::fields::{names_service, parse_duration, proto_duration};
use crate::model::{
    ClientTlsSettings, ConnectionPool, DestinationRule, DrSubset, Kind, LoadBalancerSpec, Object, OutlierDetectionSpec,
    PortTrafficPolicy, Service, TrafficPolicy,
};
use crate::rejection::Rejection;
use crate::store::{selects, Store};
use crate::translate::workload::workload_uid;
use crate::translate::MeshSettings;

pub fn validate_destination_rule(label: &str, dr: &DestinationRule) -> Result<(), Rejection> {
    if dr.spec.host.is_empty() {
        return Err(Rejection::new(label, "spec.host", "required"));
    }
    if let Some(tp) = &dr.spec.traffic_policy {
        validate_traffic_policy(label, "spec.trafficPolicy", tp)?;
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        // A DNS label, as Istio requires (it names an Envoy cluster).
        let n = subset.name.as_bytes();
        let label_ok = !n.is_empty()
            && n.len() <= 63
            && n.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && n[0] != b'-'
            && n[n.len() - 1] != b'-';
        if !label_ok {
            return Err(Rejection::new(
                label,
                format!("{at}.name"),
                format!("{:?} is not a subset name (a DNS label: a-z, 0-9, '-')", subset.name),
            ));
        }
        if names.contains(&subset.name.as_str()) {
            return Err(Rejection::new(label, format!("{at}.name"), format!("{:?} is named twice", subset.name)));
        }
        names.push(&subset.name);
        crate::rejection::validate_labels(label, &format!("{at}.labels"), &subset.labels)?;
        if let Some(tp) = &subset.traffic_policy {
            validate_traffic_policy(label, &format!("{at}.trafficPolicy"), tp)?;
        }
    }
    Ok(())
}

/// A traffic policy (the rule's, a subset's) at `at`, with its port-level settings.
fn validate_traffic_policy(label: &str, at: &str, tp: &TrafficPolicy) -> Result<(), Rejection> {
    validate_parts(label, at, &Parts::of(tp))?;
    let mut ports = Vec::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        let Some(port) = p.port.as_ref().map(|p| p.number).filter(|n| *n != 0) else {
            return Err(Rejection::new(label, format!("{at}.port.number"), "a port number is required"));
        };
        if ports.contains(&port) {
            return Err(Rejection::new(label, format!("{at}.port.number"), format!("port {port} has settings twice")));
        }
        ports.push(port);
        validate_parts(label, &at, &Parts::port_entry(p))?;
    }
    Ok(())
}

/// The four settings a traffic policy, a subset's or a port's, may hold.
#[derive(Clone, Copy, Default)]
struct Parts<'a> {
    connection_pool: Option<&'a ConnectionPool>,
    outlier_detection: Option<&'a OutlierDetectionSpec>,
    load_balancer: Option<&'a LoadBalancerSpec>,
    tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Parts<'a> {
    fn of(tp: &'a TrafficPolicy) -> Self {
        Parts {
            connection_pool: tp.connection_pool.as_ref(),
            outlier_detection: tp.outlier_detection.as_ref(),
            load_balancer: tp.load_balancer.as_ref(),
            tls: tp.tls.as_ref(),
        }
    }

    /// `over`'s settings where it has them, these elsewhere (a subset over its rule).
    fn under(self, over: Parts<'a>) -> Self {
        Parts {
            connection_pool: over.connection_pool.or(self.connection_pool),
            outlier_detection: over.outlier_detection.or(self.outlier_detection),
            load_balancer: over.load_balancer.or(self.load_balancer),
            tls: over.tls.or(self.tls),
        }
    }

    /// The port's settings of `tp`, whole (as Istio: they replace, never inherit).
    fn port(tp: &'a TrafficPolicy, port: u16) -> Option<Self> {
        let p = tp.port_level_settings.iter().find(|p| p.port.as_ref().map(|p| p.number) == Some(port))?;
        Some(Parts::port_entry(p))
    }

    fn port_entry(p: &'a PortTrafficPolicy) -> Self {
        Parts {
            connection_pool: p.connection_pool.as_ref(),
            outlier_detection: p.outlier_detection.as_ref(),
            load_balancer: p.load_balancer.as_ref(),
            tls: p.tls.as_ref(),
        }
    }
}

fn validate_parts(label: &str, at: &str, tp: &Parts<'_>) -> Result<(), Rejection> {
    let r = |field: &str, reason: String| Rejection::new(label, format!("{at}.{field}"), reason);
    if let Some(tls) = tp.tls {
        match tls.mode.as_deref() {
            None | Some("DISABLE" | "SIMPLE" | "ISTIO_MUTUAL") => {}
            Some("MUTUAL") => {
                return Err(r(
                    "tls.mode",
                    "MUTUAL (a client certificate to the upstream) is not supported: DISABLE, SIMPLE or ISTIO_MUTUAL"
                        .into(),
                ))
            }
            Some(other) => {
                return Err(r("tls.mode", format!("{other:?} is not a TLS mode (DISABLE, SIMPLE, ISTIO_MUTUAL)")))
            }
        }
        if let Some(sni) = &tls.sni {
            let label_ok =
                |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if sni.len() > 253 || !sni.split('.').all(label_ok) {
                return Err(r("tls.sni", format!("{sni:?} is not a server name")));
            }
        }
    }
    if let Some(od) = tp.outlier_detection {
        for (name, v) in [("interval", &od.interval), ("baseEjectionTime", &od.base_ejection_time)] {
            if let Some(v) = v {
                if parse_duration(v).is_none_or(|d| d.is_zero()) {
                    return Err(r(&format!("outlierDetection.{name}"), format!("{v:?} is not a positive duration")));
                }
            }
        }
        if od.max_ejection_percent.is_some_and(|p| p > 100) {
            return Err(r("outlierDetection.maxEjectionPercent", "must be 0-100".into()));
        }
    }
    if let Some(lb) = tp.load_balancer {
        match lb.simple.as_deref() {
            None | Some("UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" | "ROUND_ROBIN" | "RANDOM") => {}
            Some(other) => {
                return Err(r(
                    "loadBalancer.simple",
                    format!("{other:?} is not supported by waypoints (LEAST_REQUEST, ROUND_ROBIN, RANDOM)"),
                ))
            }
        }
        if let Some(h) = &lb.consistent_hash {
            let set = [h.http_header_name.is_some(), h.http_cookie.is_some(), h.use_source_ip == Some(true)];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(r(
                    "loadBalancer.consistentHash",
                    "exactly one of httpHeaderName, httpCookie, useSourceIp".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The DestinationRule for a service, looked for in its namespace, then its waypoint's, then
/// the root namespace (oldest first within one) — another team's rule cannot redefine its
/// subsets or weaken its TLS; its traffic policy as the waypoint applies it, and its subsets —
/// each with the service's endpoints its labels select, by workload uid.
pub(super) fn backend_policy(
    svc: &Service,
    waypoint_ns: &str,
    store: &Store,
    mesh: &MeshSettings,
) -> (Option<pb::BackendPolicy>, Vec<pb::Subset>) {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let names = |dr: &DestinationRule| {
        names_service(&dr.spec.host, dr.metadata.namespace.as_deref().unwrap_or_default(), svc, mesh)
    };
    let Some(dr) = rule_in([ns, waypoint_ns, &mesh.root_namespace], names, store) else {
        return (None, Vec::new());
    };
    let host = mesh.hostname(&svc.metadata.name, ns);
    let ports: Vec<u16> = svc.spec.ports.iter().map(|p| p.port).collect();
    let selector = svc.spec.selector.as_ref().filter(|s| !s.is_empty());
    let subsets = dr
        .spec
        .subsets
        .iter()
        .map(|subset| pb::Subset {
            name: subset.name.clone(),
            // A Service without a selector has no pods of its own to pick from.
            workload_uids: selector
                .map(|sel| {
                    store
                        .pods(Some(ns))
                        .filter(|p| selects(sel, &p.metadata.labels) && selects(&subset.labels, &p.metadata.labels))
                        .map(|p| workload_uid(mesh, ns, &p.metadata.name))
                        .collect()
                })
                .unwrap_or_default(),
            backend: Some(policy_of(dr, &host, Some(subset), &ports)),
        })
        .collect();
    (Some(policy_of(dr, &host, None, &ports)), subsets)
}

/// The DestinationRule for a ServiceEntry host (its exact name), looked for — as Istio does —
/// only in the entry's namespace, then the waypoint's, then the root namespace (oldest first
/// within one): another team's rule for the same host cannot weaken the entry's TLS.
pub(super) fn entry_backend_policy(
    namespaces: [&str; 3],
    host: &str,
    ports: &[u16],
    store: &Store,
) -> Option<pb::BackendPolicy> {
    let dr = rule_in(namespaces, |dr| dr.spec.host.eq_ignore_ascii_case(host), store)?;
    Some(policy_of(dr, host, None, ports))
}

/// The first namespace's oldest rule that `names` accepts.
fn rule_in<'s>(
    namespaces: [&str; 3],
    names: impl Fn(&DestinationRule) -> bool,
    store: &'s Store,
) -> Option<&'s DestinationRule> {
    namespaces.iter().find_map(|ns| {
        let mut here: Vec<&DestinationRule> = store
            .list(Kind::DestinationRule, Some(ns))
            .filter_map(|o| match o {
                Object::DestinationRule(dr) if names(dr) => Some(dr),
                _ => None,
            })
            .collect();
        here.sort_by_key(|dr| dr.metadata.creation_timestamp.clone());
        here.first().copied()
    })
}

/// A rule's traffic policy as the waypoint applies it — a subset's settings over the rule's,
/// each port's settings in `port_level` — as Istio merges them; `host` is the server name TLS
/// origination sends and verifies unless the rule names one.
fn policy_of(dr: &DestinationRule, host: &str, subset: Option<&DrSubset>, ports: &[u16]) -> pb::BackendPolicy {
    let source = format!("{}/{}", dr.metadata.namespace.as_deref().unwrap_or_default(), dr.metadata.name);
    let rule = dr.spec.traffic_policy.as_ref();
    let own = subset.and_then(|s| s.traffic_policy.as_ref());
    let at = |port: Option<u16>| {
        let mut parts = rule.map(Parts::of).unwrap_or_default();
        if let Some(p) = port.zip(rule).and_then(|(port, tp)| Parts::port(tp, port)) {
            parts = p;
        }
        if let Some(tp) = own {
            parts = parts.under(Parts::of(tp));
            if let Some(p) = port.and_then(|port| Parts::port(tp, port)) {
                parts = p;
            }
        }
        parts
    };
    let mut base = pb_policy(at(None), &source, host);
    for port in ports {
        let named = |tp: Option<&TrafficPolicy>| tp.is_some_and(|tp| Parts::port(tp, *port).is_some());
        if named(rule) || named(own) {
            let policy = pb_policy(at(Some(*port)), &source, host);
            if policy != base {
                base.port_level.push(pb::PortBackendPolicy { port: u32::from(*port), policy: Some(policy) });
            }
        }
    }
    base
}

fn pb_policy(tp: Parts<'_>, source: &str, host: &str) -> pb::BackendPolicy {
    let pool = tp.connection_pool.cloned().unwrap_or_default();
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
        let hash = lb.consistent_hash.clone().unwrap_or_default();
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
    let tls = tp.tls.filter(|t| t.mode.as_deref() == Some("SIMPLE")).map(|t| pb::UpstreamTls {
        sni: t.sni.clone().unwrap_or_else(|| host.to_owned()),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    });
    pb::BackendPolicy {
        source: source.to_owned(),
        max_connections: pool.tcp.and_then(|t| t.max_connections).unwrap_or(0),
        max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
        max_requests: http.http2_max_requests.unwrap_or(0),
        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
        outlier,
        load_balancer,
        tls,
        port_level: Vec::new(),
    }
}
