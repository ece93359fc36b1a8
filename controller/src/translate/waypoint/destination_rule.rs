//! DestinationRule: its validation and the traffic policy (connection pool, outlier detection,
//! load balancer) the waypoint applies to a service's backends.

use ambit_shared::proto::waypoint as pb;

use super::fields::{names_service, parse_duration, proto_duration};
use crate::model::{DestinationRule, Kind, Object, Service};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::MeshSettings;

pub fn validate_destination_rule(label: &str, dr: &DestinationRule) -> Result<(), Rejection> {
    let r = |field: &str, reason: String| Rejection::new(label, field, reason);
    if dr.spec.host.is_empty() {
        return Err(r("spec.host", "required".into()));
    }
    let Some(tp) = &dr.spec.traffic_policy else { return Ok(()) };
    if let Some(tls) = &tp.tls {
        match tls.mode.as_deref() {
            None | Some("DISABLE" | "SIMPLE" | "ISTIO_MUTUAL") => {}
            Some("MUTUAL") => {
                return Err(r(
                    "spec.trafficPolicy.tls.mode",
                    "MUTUAL (a client certificate to the upstream) is not supported: DISABLE, SIMPLE or ISTIO_MUTUAL"
                        .into(),
                ))
            }
            Some(other) => {
                return Err(r(
                    "spec.trafficPolicy.tls.mode",
                    format!("{other:?} is not a TLS mode (DISABLE, SIMPLE, ISTIO_MUTUAL)"),
                ))
            }
        }
        if let Some(sni) = &tls.sni {
            let label_ok =
                |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if sni.len() > 253 || !sni.split('.').all(label_ok) {
                return Err(r("spec.trafficPolicy.tls.sni", format!("{sni:?} is not a server name")));
            }
        }
    }
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

/// The DestinationRule for a service: one in the service's namespace first, then any other
/// whose host names it (oldest first); its traffic policy as the waypoint applies it.
pub(super) fn backend_policy(svc: &Service, store: &Store, mesh: &MeshSettings) -> Option<pb::BackendPolicy> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let names = |dr: &DestinationRule| {
        names_service(&dr.spec.host, dr.metadata.namespace.as_deref().unwrap_or_default(), svc, mesh)
    };
    let dr = rule_for(store, ns, names)?;
    Some(policy_of(dr, &mesh.hostname(&svc.metadata.name, ns)))
}

/// The DestinationRule for a ServiceEntry host (its exact name), looked for — as Istio does —
/// only in the entry's namespace, then the waypoint's, then the root namespace (oldest first
/// within one): another team's rule for the same host cannot weaken the entry's TLS.
pub(super) fn entry_backend_policy(namespaces: [&str; 3], host: &str, store: &Store) -> Option<pb::BackendPolicy> {
    let names = |dr: &DestinationRule| dr.spec.host.eq_ignore_ascii_case(host);
    let dr = namespaces.iter().find_map(|ns| {
        let mut here: Vec<&DestinationRule> = store
            .list(Kind::DestinationRule, Some(ns))
            .filter_map(|o| match o {
                Object::DestinationRule(dr) if names(dr) => Some(dr),
                _ => None,
            })
            .collect();
        here.sort_by_key(|dr| dr.metadata.creation_timestamp.clone());
        here.first().copied()
    })?;
    Some(policy_of(dr, host))
}

fn rule_for<'s>(store: &'s Store, ns: &str, names: impl Fn(&DestinationRule) -> bool) -> Option<&'s DestinationRule> {
    let mut candidates: Vec<&DestinationRule> = store
        .list(Kind::DestinationRule, None)
        .filter_map(|o| match o {
            Object::DestinationRule(dr) if names(dr) => Some(dr),
            _ => None,
        })
        .collect();
    candidates.sort_by_key(|dr| (dr.metadata.namespace.as_deref() != Some(ns), dr.metadata.creation_timestamp.clone()));
    candidates.first().copied()
}

/// A rule's traffic policy as the waypoint applies it; `host` is the server name TLS
/// origination sends and verifies unless the rule names one.
fn policy_of(dr: &DestinationRule, host: &str) -> pb::BackendPolicy {
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
    let tls = tp.tls.filter(|t| t.mode.as_deref() == Some("SIMPLE")).map(|t| pb::UpstreamTls {
        sni: t.sni.unwrap_or_else(|| host.to_owned()),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    });
    pb::BackendPolicy {
        source: format!("{}/{}", dr.metadata.namespace.as_deref().unwrap_or_default(), dr.metadata.name),
        max_connections: pool.tcp.and_then(|t| t.max_connections).unwrap_or(0),
        max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
        max_requests: http.http2_max_requests.unwrap_or(0),
        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
        outlier,
        load_balancer,
        tls,
    }
}
