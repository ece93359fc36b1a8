//! What the mesh enforces in place of a refused security object, until it is fixed.
//!
//! A refused AuthorizationPolicy, PeerAuthentication or RequestAuthentication is never simply
//! dropped: dropping the only ALLOW policy on a workload would allow everything, dropping a
//! STRICT PeerAuthentication would accept plaintext, dropping a RequestAuthentication would stop
//! forged tokens being refused. Nor is the last accepted version kept: only the replica that
//! saw it would enforce it, and none would after a restart. Instead the object is replaced by a
//! substitute built from what can be read of it, deterministically on every replica, that
//! refuses what the object governed:
//!
//! - AuthorizationPolicy `ALLOW` (or no action) → an ALLOW that allows nothing; `DENY`,
//!   `CUSTOM` or an unreadable action → a DENY of everything; `AUDIT` and dry-run policies
//!   enforce nothing, so nothing replaces them.
//! - PeerAuthentication → `STRICT`.
//! - RequestAuthentication → its rules as far as they can be read (issuer, where tokens are
//!   looked for, which claim headers are written — so clients' copies are still stripped) with
//!   an empty key set, plus one rule no token can satisfy: requests carrying a token are
//!   refused (401), requests without one are left to authorization, as with any
//!   RequestAuthentication.
//! - Sidecar → `REGISTRY_ONLY`, unless what can be read of it says `ALLOW_ANY`.
//!
//! The scope (selector, targetRefs) is kept when it can be read, is valid, and is not itself
//! the refused field; otherwise the substitute covers the whole namespace (the mesh, in the
//! root namespace): a broader refusal, never a broader permission. Substitutes carry no
//! creation time, so within their level they win over older policies ("oldest wins").

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    keys, AuthorizationPolicy, AuthorizationPolicySpec, ClientTlsSettings, DestinationRule, DestinationRuleSpec,
    JwtRuleSpec, Kind, MutualTls, NetworkingWorkloadSelector, Object, ObjectMeta, OutboundTrafficPolicy,
    PeerAuthentication, PeerAuthenticationSpec, PolicyTargetReference, RateLimitPolicy, RateLimitPolicySpec,
    RateLimitRule, RequestAuthentication, RequestAuthenticationSpec, Rule, Sidecar, SidecarSpec, TrafficPolicy,
    WorkloadSelector,
};
use crate::rejection::{validate_labels, Rejection};

/// The issuer of the substitute RequestAuthentication's rule: `.invalid` is reserved (RFC
/// 2606), so no token names it, and its key set is empty.
pub const REFUSED_ISSUER: &str = "https://refused.ambit.invalid";

/// Whether refusals of this kind get a substitute.
pub fn is_security_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::AuthorizationPolicy
            | Kind::PeerAuthentication
            | Kind::RequestAuthentication
            | Kind::Sidecar
            | Kind::DestinationRule
            | Kind::RateLimitPolicy
    )
}

/// The substitute for a refused object of a security kind, and what it enforces (for the
/// rejection's message); `None` for other kinds, for objects that enforce nothing, and for
/// documents too broken to name an object.
pub fn substitute(value: &Value, rejection: &Rejection) -> Option<(Object, &'static str)> {
    let key = rejection.key.as_deref()?;
    if !is_security_kind(key.kind) {
        return None;
    }
    let mut metadata: ObjectMeta = lenient(value.get("metadata")).unwrap_or_default();
    metadata.name = key.name.to_string();
    metadata.namespace = Some(key.namespace.to_string());
    // No creation time: "oldest wins" within a level must not let an older, weaker policy
    // mask the substitute.
    metadata.creation_timestamp = None;
    if rejection.field.starts_with("metadata.") {
        metadata.labels.clear();
    }
    let spec = value.get("spec");
    let label = rejection.object.as_str();
    // The scope, unless the scope is what was refused or is itself invalid.
    let scoped = |field: &str| !rejection.field.starts_with(field);
    let selector: Option<WorkloadSelector> = if scoped("spec.selector") {
        lenient::<WorkloadSelector>(spec.and_then(|s| s.get("selector")))
            .filter(|s| validate_labels(label, "spec.selector.matchLabels", &s.match_labels).is_ok())
    } else {
        None
    };
    // Each target on its own. Valid ones attach; one Ambit does not support (a ServiceEntry)
    // attaches nowhere, exactly as the written policy would — the substitute is not widened to
    // the namespace's L4 traffic for a policy meant for a waypoint. Only when no target can be
    // read at all does the namespace become the scope.
    let (target_ref, target_refs): (Option<PolicyTargetReference>, Vec<PolicyTargetReference>) =
        if scoped("spec.targetRef") {
            let listed = spec.and_then(|s| s.get("targetRefs")).and_then(Value::as_array);
            (
                lenient::<PolicyTargetReference>(spec.and_then(|s| s.get("targetRef"))),
                listed.into_iter().flatten().filter_map(|t| lenient(Some(t))).collect(),
            )
        } else {
            (None, Vec::new())
        };
    // Targets in another namespace are not allowed: they would attach to this namespace's
    // objects of the same name.
    let elsewhere =
        |t: &PolicyTargetReference| t.namespace.as_deref().is_some_and(|n| !n.is_empty() && *n != *key.namespace);
    let target_ref = target_ref.filter(|t| !elsewhere(t));
    let target_refs: Vec<PolicyTargetReference> = target_refs.into_iter().filter(|t| !elsewhere(t)).collect();
    // A policy cannot have both a selector and targets: keep the targets (the narrower
    // attachment is the one the author wrote last; either way the refusal stays in scope).
    let selector = if target_ref.is_some() || !target_refs.is_empty() { None } else { selector };
    match key.kind {
        // A limit that does not apply as written must not leave its targets unlimited: what
        // it targets gets one request a day, until it is fixed.
        Kind::RateLimitPolicy => {
            let target_refs: Vec<PolicyTargetReference> = target_refs
                .into_iter()
                .filter(|t| {
                    matches!((t.group.as_str(), t.kind.as_str()), ("" | "core", "Service"))
                        || (t.group == "gateway.networking.k8s.io" && t.kind == "Gateway")
                })
                .collect();
            if target_refs.is_empty() {
                return None;
            }
            let rule = RateLimitRule {
                name: Some("refused".into()),
                requests: 1,
                per: "24h".into(),
                burst: Some(1),
                ..Default::default()
            };
            let spec = RateLimitPolicySpec { target_refs, rules: vec![rule] };
            Some((
                Object::RateLimitPolicy(RateLimitPolicy { metadata, spec }),
                "one request a day to its targets, until it is fixed",
            ))
        }
        Kind::AuthorizationPolicy => {
            if metadata.annotations.get(keys::DRY_RUN).is_some_and(|v| v == "true") {
                return None;
            }
            let action = spec.and_then(|s| s.get("action")).and_then(Value::as_str);
            let (action, rules, says) = match action {
                None | Some("ALLOW") => ("ALLOW", Vec::new(), "an ALLOW policy that allows nothing"),
                Some("AUDIT") => return None,
                _ => ("DENY", vec![Rule::default()], "a DENY of every request in its scope"),
            };
            let spec = AuthorizationPolicySpec {
                selector,
                target_ref,
                target_refs,
                rules: Some(rules),
                action: Some(action.into()),
                provider: None,
            };
            Some((Object::AuthorizationPolicy(AuthorizationPolicy { metadata, spec }), says))
        }
        Kind::PeerAuthentication => {
            let spec = PeerAuthenticationSpec {
                selector,
                mtls: Some(MutualTls { mode: Some("STRICT".into()) }),
                port_level_mtls: Default::default(),
            };
            Some((Object::PeerAuthentication(PeerAuthentication { metadata, spec }), "STRICT mutual TLS in its scope"))
        }
        Kind::RequestAuthentication => {
            let no_keys = || Some(r#"{"keys":[]}"#.to_owned());
            // The written rules, as far as they read, with nothing to verify tokens with.
            let written = spec.and_then(|s| s.get("jwtRules")).and_then(Value::as_array);
            let mut jwt_rules: Vec<JwtRuleSpec> = written
                .into_iter()
                .flatten()
                .map(|r| JwtRuleSpec {
                    issuer: r.get("issuer").and_then(Value::as_str).unwrap_or(REFUSED_ISSUER).to_owned(),
                    jwks: no_keys(),
                    from_headers: lenient(r.get("fromHeaders")).unwrap_or_default(),
                    from_params: lenient(r.get("fromParams")).unwrap_or_default(),
                    output_claim_to_headers: lenient(r.get("outputClaimToHeaders")).unwrap_or_default(),
                    ..Default::default()
                })
                .collect();
            jwt_rules.push(JwtRuleSpec { issuer: REFUSED_ISSUER.into(), jwks: no_keys(), ..Default::default() });
            let spec = RequestAuthenticationSpec { selector, target_ref, target_refs, jwt_rules };
            Some((
                Object::RequestAuthentication(RequestAuthentication { metadata, spec }),
                "rules that verify no token: requests carrying a token are refused",
            ))
        }
        Kind::Sidecar => {
            let mode =
                spec.and_then(|s| s.get("outboundTrafficPolicy")).and_then(|o| o.get("mode")).and_then(Value::as_str);
            let (mode, says) = match mode {
                Some("ALLOW_ANY") => ("ALLOW_ANY", "its outbound traffic policy ALLOW_ANY, as written"),
                _ => ("REGISTRY_ONLY", "outbound traffic policy REGISTRY_ONLY for what it applies to"),
            };
            let workload_selector: Option<NetworkingWorkloadSelector> = if scoped("spec.workloadSelector") {
                lenient::<NetworkingWorkloadSelector>(spec.and_then(|s| s.get("workloadSelector")))
                    .filter(|s| validate_labels(label, "spec.workloadSelector.labels", &s.labels).is_ok())
            } else {
                None
            };
            let spec = SidecarSpec {
                workload_selector,
                outbound_traffic_policy: Some(OutboundTrafficPolicy { mode: Some(mode.into()) }),
            };
            Some((Object::Sidecar(Sidecar { metadata, spec }), says))
        }
        // A rule asking for TLS to its host must not leave it in plaintext (nor to another
        // namespace's rule) when refused: verified TLS (`SIMPLE`, the host as server name).
        // Other refused rules only tuned pools and balancing: nothing stands in for them.
        Kind::DestinationRule => {
            // The rule's TLS, its ports' and its subsets' (and theirs): any asking for TLS
            // to the host makes the stand-in ask for it on every path.
            fn policies(tp: Option<&Value>) -> Vec<&Value> {
                let ports = tp.and_then(|t| t.get("portLevelSettings")).and_then(Value::as_array);
                tp.into_iter().chain(ports.into_iter().flatten()).collect()
            }
            let mut all = policies(spec.and_then(|s| s.get("trafficPolicy")));
            for subset in spec.and_then(|s| s.get("subsets")).and_then(Value::as_array).into_iter().flatten() {
                all.extend(policies(subset.get("trafficPolicy")));
            }
            let asks_tls = all
                .iter()
                .filter_map(|p| p.get("tls"))
                .any(|tls| !matches!(tls.get("mode").and_then(Value::as_str), Some("DISABLE" | "ISTIO_MUTUAL")));
            if !asks_tls {
                return None;
            }
            let host = spec.and_then(|s| s.get("host")).and_then(Value::as_str).filter(|h| !h.is_empty())?;
            let spec = DestinationRuleSpec {
                host: host.to_owned(),
                traffic_policy: Some(TrafficPolicy {
                    tls: Some(ClientTlsSettings { mode: Some("SIMPLE".into()), ..Default::default() }),
                    ..Default::default()
                }),
                subsets: Vec::new(),
            };
            Some((
                Object::DestinationRule(DestinationRule { metadata, spec }),
                "verified TLS (SIMPLE) to its host, nothing else",
            ))
        }
        _ => None,
    }
}

fn lenient<T: DeserializeOwned>(value: Option<&Value>) -> Option<T> {
    serde_json::from_value(value?.clone()).ok()
}
