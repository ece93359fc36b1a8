//! AuthorizationPolicy and PeerAuthentication → `istio.security.Authorization`, Istio's L4
//! subset as ztunnel enforces it.
//!
//! Each rule becomes a group whose clauses are AND'd: one clause for `to` (its entries OR'd),
//! one for `from`, one per `when` condition. An ALLOW rule that needs L7 attributes is dropped
//! whole (it can only allow less, never more: fail closed); a DENY rule loses its L7
//! attributes, and an entry left with nothing becomes a match that never fires (exactly as
//! Istio does). Both cases come back as warnings. Policies with `targetRefs` are waypoint
//! policies and are not sent to ztunnel.

use std::net::IpAddr;

use ambit_shared::proto::security::{
    self as pb, string_match::MatchType, Address, Authorization, Group, Match, Rules, ServiceAccountMatch, StringMatch,
};
use ambit_shared::{Cidr, Identity};

use crate::model::{
    keys, AuthorizationPolicy, Operation, PeerAuthentication, PolicyTargetReference, Rule, Source, WhenCondition,
};
use crate::rejection::{validate_labels, Rejection};
use crate::translate::MeshSettings;

/// Name of the converted STRICT policy in the root namespace (Istio's).
pub const STATIC_STRICT: &str = "istio_converted_static_strict";
/// Prefix of per-workload converted PeerAuthentication policies (Istio's).
pub const CONVERTED_PEER_AUTHN_PREFIX: &str = "converted_peer_authentication_";

/// A translated policy and what was lost on the way.
#[derive(Debug, Default, PartialEq)]
pub struct Translated {
    /// `None` when the policy is not for ztunnel (targetRefs, dry-run, AUDIT/CUSTOM).
    pub authorization: Option<Authorization>,
    pub warnings: Vec<String>,
}

const L4_WHEN_KEYS: &[&str] =
    &["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// A policy's `targetRef` / `targetRefs` (AuthorizationPolicy, RequestAuthentication): only
/// what Ambit attaches — a Service, a ServiceEntry (at its egress waypoint) or a waypoint
/// Gateway in the policy's namespace, or (from the root namespace) a GatewayClass. Anything else would attach nowhere while looking applied.
pub(crate) fn validate_target_refs(
    label: &str,
    policy_namespace: &str,
    one: Option<&PolicyTargetReference>,
    refs: &[PolicyTargetReference],
) -> Result<(), Rejection> {
    let all = one
        .map(|r| ("spec.targetRef".to_owned(), r))
        .into_iter()
        .chain(refs.iter().enumerate().map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)));
    for (at, r) in all {
        match (r.group.as_str(), r.kind.as_str()) {
            ("" | "core", "Service")
            | ("networking.istio.io", "ServiceEntry")
            | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => {}
            (group, kind) => {
                return Err(Rejection::new(
                    label,
                    format!("{at}.kind"),
                    format!(
                        "{kind:?} in group {group:?} is not a target Ambit attaches policies to (Service in \"\", ServiceEntry in networking.istio.io, Gateway or GatewayClass in gateway.networking.k8s.io)"
                    ),
                ))
            }
        }
        if r.name.is_empty() {
            return Err(Rejection::new(label, format!("{at}.name"), "required"));
        }
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty() && n != policy_namespace) {
            return Err(Rejection::new(
                label,
                format!("{at}.namespace"),
                "must be the policy's own namespace (cross-namespace targets are not allowed, as in Istio)",
            ));
        }
    }
    Ok(())
}

/// Validation of what we cannot enforce faithfully.
pub fn validate(label: &str, p: &AuthorizationPolicy) -> Result<(), Rejection> {
    let r = |field: String, reason: String| Rejection::new(label, field, reason);
    match p.spec.action.as_deref() {
        None | Some("ALLOW" | "DENY" | "AUDIT") => {}
        Some("CUSTOM") if p.spec.provider.is_some() => {}
        Some("CUSTOM") => return Err(r("spec.provider".into(), "action CUSTOM needs a provider".into())),
        Some(other) => {
            return Err(r("spec.action".into(), format!("unknown action {other:?} (ALLOW, DENY, AUDIT, CUSTOM)")))
        }
    }
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    validate_target_refs(label, ns, p.spec.target_ref.as_ref(), &p.spec.target_refs)?;
    if let Some(sel) = &p.spec.selector {
        validate_labels(label, "spec.selector.matchLabels", &sel.match_labels)?;
        if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
            return Err(r("spec.selector".into(), "selector and targetRefs are mutually exclusive".into()));
        }
    }
    for (ri, rule) in p.spec.rules.iter().flatten().enumerate() {
        for (fi, from) in rule.from.iter().enumerate() {
            let base = format!("spec.rules[{ri}].from[{fi}].source");
            let s = &from.source;
            for (field, list) in [("principals", &s.principals), ("notPrincipals", &s.not_principals)] {
                for (i, v) in list.iter().enumerate() {
                    check_principal(v).map_err(|e| r(format!("{base}.{field}[{i}]"), e))?;
                }
            }
            for (field, list) in [("namespaces", &s.namespaces), ("notNamespaces", &s.not_namespaces)] {
                for (i, v) in list.iter().enumerate() {
                    check_wildcard(v).map_err(|e| r(format!("{base}.{field}[{i}]"), e))?;
                }
            }
            let by_account = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
            let by_identity =
                [&s.principals, &s.not_principals, &s.namespaces, &s.not_namespaces].iter().any(|l| !l.is_empty());
            if by_account && by_identity {
                // Istio's CRD rule: the two ways of naming the source do not mix.
                return Err(r(
                    format!("{base}.serviceAccounts"),
                    "serviceAccounts cannot be set together with principals or namespaces (as in Istio)".into(),
                ));
            }
            for (field, list) in
                [("serviceAccounts", &s.service_accounts), ("notServiceAccounts", &s.not_service_accounts)]
            {
                if list.len() > MAX_SERVICE_ACCOUNTS {
                    return Err(r(
                        format!("{base}.{field}"),
                        format!("{} items; at most {MAX_SERVICE_ACCOUNTS} are allowed", list.len()),
                    ));
                }
                for (i, v) in list.iter().enumerate() {
                    check_service_account(v).map_err(|e| r(format!("{base}.{field}[{i}]"), e))?;
                }
            }
            for (field, list) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (i, v) in list.iter().enumerate() {
                    if v.parse::<Cidr>().is_err() {
                        return Err(r(format!("{base}.{field}[{i}]"), format!("{v:?} is not an IP address or CIDR")));
                    }
                }
            }
        }
        for (ti, to) in rule.to.iter().enumerate() {
            let base = format!("spec.rules[{ri}].to[{ti}].operation");
            for (field, list) in [("ports", &to.operation.ports), ("notPorts", &to.operation.not_ports)] {
                for (i, v) in list.iter().enumerate() {
                    if parse_port(v).is_none() {
                        return Err(r(format!("{base}.{field}[{i}]"), format!("{v:?} is not a port number")));
                    }
                }
            }
        }
        for (wi, when) in rule.when.iter().enumerate() {
            let base = format!("spec.rules[{ri}].when[{wi}]");
            if when.key.is_empty() {
                return Err(r(format!("{base}.key"), "required".into()));
            }
            if !when_key_supported(&when.key) {
                return Err(r(
                    format!("{base}.key"),
                    format!("{:?} is not a condition key Ambit evaluates (a rule on it would never fire)", when.key),
                ));
            }
            if when.values.is_empty() && when.not_values.is_empty() {
                return Err(r(format!("{base}.values"), "values or notValues is required".into()));
            }
            for (field, list) in [("values", &when.values), ("notValues", &when.not_values)] {
                for (i, v) in list.iter().enumerate() {
                    let ok = match when.key.as_str() {
                        "destination.port" => parse_port(v).is_some(),
                        "source.ip" | "remote.ip" | "destination.ip" => v.parse::<Cidr>().is_ok(),
                        "source.principal" => check_principal(v).is_ok(),
                        _ => true,
                    };
                    if !ok {
                        return Err(r(
                            format!("{base}.{field}[{i}]"),
                            format!("{v:?} is not valid for key {}", when.key),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `when` keys the waypoint (and, for the L4 ones, ztunnel) evaluates. Istio's others
/// (`connection.sni`, `experimental.*`, label keys) are refused rather than left inert.
fn when_key_supported(key: &str) -> bool {
    const REQUEST_KEYS: &[&str] =
        &["remote.ip", "request.auth.principal", "request.auth.audiences", "request.auth.presenter"];
    let bracketed = |rest: &str, max: usize| {
        rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')).is_some_and(|inner| {
            let parts: Vec<&str> = inner.split("][").collect();
            parts.len() <= max && parts.iter().all(|p| !p.is_empty() && !p.contains(['[', ']']))
        })
    };
    let header_name = |rest: &str| {
        let name = rest.trim_start_matches('[').trim_end_matches(']');
        matches!(name, ":authority" | ":path" | ":method") || http::HeaderName::from_bytes(name.as_bytes()).is_ok()
    };
    L4_WHEN_KEYS.contains(&key)
        || REQUEST_KEYS.contains(&key)
        || key.strip_prefix("request.headers").is_some_and(|rest| bracketed(rest, 1) && header_name(rest))
        || key.strip_prefix("request.auth.claims").is_some_and(|rest| bracketed(rest, usize::MAX))
}

fn parse_port(v: &str) -> Option<u32> {
    v.parse::<u16>().ok().filter(|p| *p != 0).map(u32::from)
}

/// A single `*` at the start or end at most.
fn check_wildcard(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty value".into());
    }
    let inner = v.strip_prefix('*').or_else(|| v.strip_suffix('*')).unwrap_or(v);
    if inner.contains('*') {
        return Err(format!("{v:?}: only one leading or trailing '*' is supported"));
    }
    Ok(())
}

/// Principals are `<trust-domain>/ns/<ns>/sa/<sa>`, or a wildcard pattern.
fn check_principal(v: &str) -> Result<(), String> {
    check_wildcard(v)?;
    if v.starts_with("spiffe://") {
        return Err(format!("{v:?}: write principals without the spiffe:// prefix"));
    }
    if v.contains('*') {
        return Ok(());
    }
    format!("spiffe://{v}").parse::<Identity>().map(|_| ()).map_err(|e| format!("malformed principal: {e}"))
}

fn string_match(v: &str) -> StringMatch {
    let match_type = if v == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = v.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else if let Some(prefix) = v.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else {
        MatchType::Exact(v.to_owned())
    };
    StringMatch { match_type: Some(match_type) }
}

fn address(v: &str) -> Option<Address> {
    let cidr: Cidr = v.parse().ok()?;
    let bytes = match cidr.addr() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    Some(Address { address: bytes, length: u32::from(cidr.prefix()) })
}

/// What Istio's CRD admits for `serviceAccounts` items: no wildcard, at most
/// one `/`, at most 320 characters. Case and dots are left alone as Istio leaves
/// them (a value that names no real account simply matches nothing); an empty
/// value or an empty side of the `/` names nothing and is refused loudly.
fn check_service_account(v: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{v:?} is not <service account> or <namespace>/<service account>: {why}"));
    if v.is_empty() || v.split('/').any(str::is_empty) {
        return bad("empty name");
    }
    if v.contains('*') {
        return bad("wildcards are not allowed");
    }
    if v.matches('/').count() > 1 {
        return bad("more than one '/'");
    }
    if v.len() > MAX_SERVICE_ACCOUNT_LEN {
        return bad("longer than 320 characters");
    }
    Ok(())
}

/// Istio's CRD limits on `serviceAccounts` / `notServiceAccounts`.
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;
const MAX_SERVICE_ACCOUNTS: usize = 16;

fn service_account(v: &str, policy_ns: &str) -> ServiceAccountMatch {
    let (namespace, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    ServiceAccountMatch { namespace: namespace.to_owned(), service_account: sa.to_owned() }
}

fn source_has_l7(s: &Source) -> bool {
    [&s.request_principals, &s.not_request_principals, &s.remote_ip_blocks, &s.not_remote_ip_blocks]
        .iter()
        .any(|l| !l.is_empty())
}

fn operation_has_l7(o: &Operation) -> bool {
    [&o.hosts, &o.not_hosts, &o.methods, &o.not_methods, &o.paths, &o.not_paths].iter().any(|l| !l.is_empty())
}

fn when_is_l7(w: &WhenCondition) -> bool {
    !L4_WHEN_KEYS.contains(&w.key.as_str())
}

fn rule_has_l7(rule: &Rule) -> bool {
    rule.from.iter().any(|f| source_has_l7(&f.source))
        || rule.to.iter().any(|t| operation_has_l7(&t.operation))
        || rule.when.iter().any(when_is_l7)
}

fn source_match(s: &Source, policy_ns: &str) -> Match {
    let sm = |l: &Vec<String>| l.iter().map(|v| string_match(v)).collect();
    let ips = |l: &Vec<String>| l.iter().filter_map(|v| address(v)).collect();
    let sas = |l: &Vec<String>| l.iter().map(|v| service_account(v, policy_ns)).collect();
    Match {
        principals: sm(&s.principals),
        not_principals: sm(&s.not_principals),
        namespaces: sm(&s.namespaces),
        not_namespaces: sm(&s.not_namespaces),
        service_accounts: sas(&s.service_accounts),
        not_service_accounts: sas(&s.not_service_accounts),
        source_ips: ips(&s.ip_blocks),
        not_source_ips: ips(&s.not_ip_blocks),
        ..Default::default()
    }
}

fn operation_match(o: &Operation) -> Match {
    let ports = |l: &Vec<String>| l.iter().filter_map(|v| parse_port(v)).collect();
    Match { destination_ports: ports(&o.ports), not_destination_ports: ports(&o.not_ports), ..Default::default() }
}

/// A `when` condition as a single match; an L7 key gives the empty match (never fires).
fn when_match(w: &WhenCondition) -> Match {
    let sm = |l: &Vec<String>| l.iter().map(|v| string_match(v)).collect();
    let ips = |l: &Vec<String>| l.iter().filter_map(|v| address(v)).collect();
    let ports = |l: &Vec<String>| l.iter().filter_map(|v| parse_port(v)).collect();
    let mut m = Match::default();
    match w.key.as_str() {
        "source.ip" => (m.source_ips, m.not_source_ips) = (ips(&w.values), ips(&w.not_values)),
        "source.namespace" => (m.namespaces, m.not_namespaces) = (sm(&w.values), sm(&w.not_values)),
        "source.principal" => (m.principals, m.not_principals) = (sm(&w.values), sm(&w.not_values)),
        "destination.ip" => (m.destination_ips, m.not_destination_ips) = (ips(&w.values), ips(&w.not_values)),
        "destination.port" => (m.destination_ports, m.not_destination_ports) = (ports(&w.values), ports(&w.not_values)),
        _ => {}
    }
    m
}

fn group(rule: &Rule, policy_ns: &str) -> Group {
    let mut rules = Vec::new();
    if !rule.to.is_empty() {
        rules.push(Rules { matches: rule.to.iter().map(|t| operation_match(&t.operation)).collect() });
    }
    if !rule.from.is_empty() {
        rules.push(Rules { matches: rule.from.iter().map(|f| source_match(&f.source, policy_ns)).collect() });
    }
    for w in &rule.when {
        rules.push(Rules { matches: vec![when_match(w)] });
    }
    Group { rules }
}

/// Translates one AuthorizationPolicy (already validated) for ztunnel.
pub fn translate_policy(p: &AuthorizationPolicy, mesh: &MeshSettings) -> Translated {
    let mut out = Translated::default();
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    if p.metadata.annotations.get(keys::DRY_RUN).is_some_and(|v| v == "true") {
        out.warnings.push("dry-run policy: not enforced by ztunnel".into());
        return out;
    }
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        // Waypoint policy: enforced at L7, never at ztunnel.
        return out;
    }
    let action = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => pb::Action::Allow,
        "DENY" => pb::Action::Deny,
        other => {
            out.warnings.push(format!("action {other} is not enforced by ztunnel; attach the policy to a waypoint"));
            return out;
        }
    };
    let scope = if p.spec.selector.is_some() {
        pb::Scope::WorkloadSelector
    } else if ns == mesh.root_namespace {
        pb::Scope::Global
    } else {
        pb::Scope::Namespace
    };
    let mut groups = Vec::new();
    for (i, rule) in p.spec.rules.iter().flatten().enumerate() {
        let l7 = rule_has_l7(rule);
        match (action, l7) {
            (pb::Action::Allow, true) => out.warnings.push(format!(
                "rules[{i}] uses L7 attributes ztunnel cannot see; the rule is dropped (allows nothing) — attach the policy to a waypoint"
            )),
            (pb::Action::Deny, true) => {
                let g = group(rule, ns);
                // A clause left with only empty matches never fires, and with it the rule.
                let empty = |m: &Match| *m == Match::default();
                let never = g.rules.iter().any(|r| r.matches.iter().all(empty));
                // An alternative (one `from`/`to` entry) that had only L7
                // attributes is left empty and never matches: requests that
                // only it described are not denied at ztunnel.
                let lost_alternative = g.rules.iter().any(|r| r.matches.iter().any(empty));
                out.warnings.push(if never {
                    format!(
                        "rules[{i}] has no L4 part once its L7 attributes are removed: ztunnel denies nothing for it (as Istio) — attach the policy to a waypoint to enforce it"
                    )
                } else if lost_alternative {
                    format!(
                        "rules[{i}]: L7 attributes removed; a from/to entry with only L7 attributes denies nothing at ztunnel, the others only their L4 part — attach the policy to a waypoint to enforce it"
                    )
                } else {
                    format!("rules[{i}]: L7 attributes removed; ztunnel enforces only the L4 part (a broader deny)")
                });
                groups.push(g);
            }
            _ => groups.push(group(rule, ns)),
        }
    }
    out.authorization = Some(Authorization {
        name: p.metadata.name.clone(),
        namespace: ns.to_owned(),
        scope: scope as i32,
        action: action as i32,
        groups,
        dry_run: false,
    });
    out
}

/// The mesh-wide DENY of plaintext that STRICT PeerAuthentication refers workloads to.
pub fn static_strict(mesh: &MeshSettings) -> Authorization {
    Authorization {
        name: STATIC_STRICT.into(),
        namespace: mesh.root_namespace.clone(),
        scope: pb::Scope::WorkloadSelector as i32,
        action: pb::Action::Deny as i32,
        groups: vec![Group {
            rules: vec![Rules {
                matches: vec![Match { not_principals: vec![string_match("*")], ..Default::default() }],
            }],
        }],
        dry_run: false,
    }
}

/// mTLS mode after inheritance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl Mtls {
    pub fn parse(mode: Option<&str>) -> Mtls {
        match mode {
            Some("STRICT") => Mtls::Strict,
            Some("PERMISSIVE") => Mtls::Permissive,
            Some("DISABLE") => Mtls::Disable,
            _ => Mtls::Unset,
        }
    }
}

/// The PeerAuthentications that decide one workload, by Istio's precedence.
#[derive(Debug, Default)]
pub struct PeerAuthnChain<'a> {
    pub mesh: Option<&'a PeerAuthentication>,
    pub namespace: Option<&'a PeerAuthentication>,
    pub workload: Option<&'a PeerAuthentication>,
}

/// What a workload's PeerAuthentication chain means at ztunnel: the policy names it must list
/// and, for port-level settings, the converted policy to publish.
#[derive(Debug, Default, PartialEq)]
pub struct PeerAuthnOutcome {
    pub static_strict: bool,
    pub converted: Option<Authorization>,
}

fn mode_of(p: Option<&PeerAuthentication>) -> Mtls {
    Mtls::parse(p.and_then(|p| p.spec.mtls.as_ref()).and_then(|m| m.mode.as_deref()))
}

/// Resolves workload > namespace > mesh; STRICT means plaintext is denied, with port-level
/// exceptions (or additions) turned into a converted per-workload policy.
pub fn peer_authn_outcome(chain: &PeerAuthnChain<'_>) -> PeerAuthnOutcome {
    let mut effective = match mode_of(chain.mesh) {
        Mtls::Strict => Mtls::Strict,
        _ => Mtls::Permissive,
    };
    match mode_of(chain.namespace) {
        Mtls::Unset => {}
        m => effective = m,
    }
    match mode_of(chain.workload) {
        Mtls::Unset => {}
        m => effective = m,
    }
    let strict = effective == Mtls::Strict;
    let Some(wl) = chain.workload.filter(|w| !w.spec.port_level_mtls.is_empty()) else {
        return PeerAuthnOutcome { static_strict: strict, converted: None };
    };
    let mut exempt = Vec::new();
    let mut strict_ports = Vec::new();
    for (port, m) in &wl.spec.port_level_mtls {
        let Some(port) = parse_port(port) else { continue };
        match (strict, Mtls::parse(m.mode.as_deref())) {
            (true, Mtls::Permissive | Mtls::Disable) => exempt.push(port),
            (false, Mtls::Strict) => strict_ports.push(port),
            _ => {}
        }
    }
    let plaintext = || string_match("*");
    let groups: Vec<Group> = if strict && !exempt.is_empty() {
        let mut rules =
            vec![Rules { matches: vec![Match { not_principals: vec![plaintext()], ..Default::default() }] }];
        rules.push(Rules { matches: vec![Match { not_destination_ports: exempt, ..Default::default() }] });
        vec![Group { rules }]
    } else if !strict && !strict_ports.is_empty() {
        strict_ports
            .into_iter()
            .map(|p| Group {
                rules: vec![Rules {
                    matches: vec![Match {
                        not_principals: vec![plaintext()],
                        destination_ports: vec![p],
                        ..Default::default()
                    }],
                }],
            })
            .collect()
    } else {
        return PeerAuthnOutcome { static_strict: strict, converted: None };
    };
    PeerAuthnOutcome {
        static_strict: false,
        converted: Some(Authorization {
            name: format!("{CONVERTED_PEER_AUTHN_PREFIX}{}", wl.metadata.name),
            namespace: wl.metadata.namespace.clone().unwrap_or_default(),
            scope: pb::Scope::WorkloadSelector as i32,
            action: pb::Action::Deny as i32,
            groups,
            dry_run: false,
        }),
    }
}

#[cfg(test)]
mod tests;
