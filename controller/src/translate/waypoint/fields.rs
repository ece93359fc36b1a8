//! Field values the waypoint kinds share: Gateway API durations, Service references, hosts
//! naming a service, regular expressions. Leaf helpers of the per-kind modules beside it; no
//! kind of its own.

use std::time::Duration;

use crate::model::Service;
use crate::rejection::Rejection;
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

pub(super) fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A route's parentRef naming a Service (GAMMA). Unlike a backendRef, a parentRef's kind
/// defaults to `Gateway`, so it must say `kind: Service`.
pub(super) fn is_service_parent(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core")) && kind == Some("Service")
}

pub(super) fn is_service_ref(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core")) && matches!(kind, None | Some("Service"))
}

/// A regular expression as the proxies compile it (anchored, `^(?:re)$`): one that compiles
/// alone but not anchored (`(?x)a#` comments the anchor out) is refused here, never sent.
pub(super) fn check_regex(field: &str, re: &str, label: &str) -> Result<(), Rejection> {
    regex::Regex::new(re)
        .and_then(|_| regex::Regex::new(&format!("^(?:{re})$")))
        .map(|_| ())
        .map_err(|e| Rejection::new(label, field, format!("invalid regular expression: {e}")))
}

/// Whether `host` (written in namespace `host_ns`: a short name, `name.ns`, `name.ns.svc` or
/// the FQDN) names the service.
pub(super) fn names_service(host: &str, host_ns: &str, svc: &Service, mesh: &MeshSettings) -> bool {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_str();
    host == mesh.hostname(name, ns)
        || (host_ns == ns && host == name)
        || host == format!("{name}.{ns}")
        || host == format!("{name}.{ns}.svc")
}
