//! RateLimitPolicy (Ambit's own kind, `policy.ambit.dev/v1alpha1`): its validation and the
//! local rate limits a waypoint or ingress gateway enforces for its targets.

use ambit_shared::proto::waypoint as pb;

use super::fields::{parse_duration, proto_duration};
use crate::model::RateLimitPolicy;
use crate::rejection::Rejection;

/// The most rules one policy may hold, and the longest refill period.
const MAX_RULES: usize = 64;
const MAX_PER_SECONDS: u64 = 24 * 3600;

pub fn validate_rate_limit_policy(label: &str, p: &RateLimitPolicy) -> Result<(), Rejection> {
    let r = |field: String, reason: String| Rejection::new(label, field, reason);
    if p.spec.target_refs.is_empty() {
        return Err(r("spec.targetRefs".into(), "at least one target (a Service or a Gateway) is required".into()));
    }
    for (i, t) in p.spec.target_refs.iter().enumerate() {
        let ok = matches!((t.group.as_str(), t.kind.as_str()), ("" | "core", "Service"))
            || (t.group == "gateway.networking.k8s.io" && t.kind == "Gateway");
        if !ok {
            return Err(r(
                format!("spec.targetRefs[{i}]"),
                format!("{}/{} cannot be targeted: a Service (group \"\") or a Gateway", t.group, t.kind),
            ));
        }
        if t.name.is_empty() {
            return Err(r(format!("spec.targetRefs[{i}].name"), "required".into()));
        }
        if t.namespace.as_deref().is_some_and(|ns| Some(ns) != p.metadata.namespace.as_deref()) {
            return Err(r(format!("spec.targetRefs[{i}].namespace"), "targets are in the policy's namespace".into()));
        }
    }
    if p.spec.rules.is_empty() {
        return Err(r("spec.rules".into(), "at least one rule is required".into()));
    }
    if p.spec.rules.len() > MAX_RULES {
        return Err(r("spec.rules".into(), format!("{} rules; at most {MAX_RULES}", p.spec.rules.len())));
    }
    let mut names = Vec::new();
    for (i, rule) in p.spec.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.rules[{i}].{f}");
        let name = rule_name(i, rule.name.as_deref());
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(r(at("name"), format!("{name:?} is not a rule name (a-z, 0-9, '-')")));
        }
        if names.contains(&name) {
            return Err(r(at("name"), format!("{name:?} is used twice")));
        }
        names.push(name);
        if rule.requests == 0 {
            return Err(r(at("requests"), "must be at least 1".into()));
        }
        match parse_duration(&rule.per) {
            Some(d) if !d.is_zero() && d.as_secs() <= MAX_PER_SECONDS => {}
            _ => return Err(r(at("per"), format!("{:?} is not a duration from 1ms to 24h", rule.per))),
        }
        if rule.burst == Some(0) {
            return Err(r(at("burst"), "must be at least 1".into()));
        }
        match (rule.key.as_deref(), rule.header.as_deref()) {
            (None | Some("Shared" | "SourcePrincipal" | "RemoteAddress"), None) => {}
            (Some("Header"), Some(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() && !h.is_empty() => {}
            (Some("Header"), _) => {
                return Err(r(at("header"), "a valid header name is required with key Header".into()))
            }
            (None | Some("Shared" | "SourcePrincipal" | "RemoteAddress"), Some(_)) => {
                return Err(r(at("header"), "only with key Header".into()))
            }
            (Some(other), _) => {
                return Err(r(
                    at("key"),
                    format!("{other:?} is not a key (Shared, SourcePrincipal, RemoteAddress, Header)"),
                ))
            }
        }
        for (j, m) in rule.matches.iter().enumerate() {
            for (field, list) in [("ports", &m.ports), ("notPorts", &m.not_ports)] {
                for (k, v) in list.iter().enumerate() {
                    if v.parse::<u16>().map_or(true, |p| p == 0) {
                        return Err(r(at(&format!("match[{j}].{field}[{k}]")), format!("{v:?} is not a port number")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn rule_name(i: usize, name: Option<&str>) -> String {
    name.map_or_else(|| i.to_string(), str::to_owned)
}

/// A policy's rules as the proxy enforces them.
pub(super) fn rate_limits(p: &RateLimitPolicy) -> impl Iterator<Item = pb::RateLimit> + '_ {
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    p.spec.rules.iter().enumerate().map(move |(i, rule)| pb::RateLimit {
        name: format!("{ns}/{}/{}", p.metadata.name, rule_name(i, rule.name.as_deref())),
        matches: rule.matches.iter().map(super::policy::operation).collect(),
        requests: rule.requests,
        per: parse_duration(&rule.per).map(proto_duration),
        burst: rule.burst.unwrap_or(rule.requests),
        key: match rule.key.as_deref() {
            Some("SourcePrincipal") => pb::RateLimitKey::RateLimitSourcePrincipal,
            Some("RemoteAddress") => pb::RateLimitKey::RateLimitRemoteAddress,
            Some("Header") => pb::RateLimitKey::RateLimitHeader,
            _ => pb::RateLimitKey::RateLimitShared,
        } as i32,
        header: rule.header.clone().unwrap_or_default().to_ascii_lowercase(),
    })
}
