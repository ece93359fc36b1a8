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
//! - RequestAuthentication → one rule no token can satisfy: requests carrying a token are
//!   refused (401), requests without one are left to authorization, as with any
//!   RequestAuthentication.
//!
//! The scope (selector, targetRefs) is kept when it can be read and is not itself the refused
//! field; otherwise the substitute covers the whole namespace (the mesh, in the root
//! namespace): a broader refusal, never a broader permission.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    keys, AuthorizationPolicy, AuthorizationPolicySpec, JwtRuleSpec, Kind, MutualTls, Object, ObjectMeta,
    PeerAuthentication, PeerAuthenticationSpec, PolicyTargetReference, RequestAuthentication,
    RequestAuthenticationSpec, Rule, WorkloadSelector,
};
use crate::rejection::Rejection;

/// The issuer of the substitute RequestAuthentication's rule: `.invalid` is reserved (RFC
/// 2606), so no token names it, and its key set is empty.
pub const REFUSED_ISSUER: &str = "https://refused.ambit.invalid";

/// Whether refusals of this kind get a substitute.
pub fn is_security_kind(kind: Kind) -> bool {
    matches!(kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication)
}

/// The substitute for a refused object of a security kind, and what it enforces (for the
/// rejection's message); `None` for other kinds, for objects that enforce nothing, and for
/// documents too broken to name an object.
pub fn substitute(value: &Value, rejection: &Rejection) -> Option<(Object, &'static str)> {
    let key = rejection.key.as_ref()?;
    if !is_security_kind(key.kind) {
        return None;
    }
    let mut metadata: ObjectMeta = lenient(value.get("metadata")).unwrap_or_default();
    metadata.name = key.name.to_string();
    metadata.namespace = Some(key.namespace.to_string());
    if rejection.field.starts_with("metadata.") {
        metadata.labels.clear();
    }
    let spec = value.get("spec");
    // The scope, unless the scope is what was refused.
    let scoped = |field: &str| !rejection.field.starts_with(field);
    let selector: Option<WorkloadSelector> =
        if scoped("spec.selector") { lenient(spec.and_then(|s| s.get("selector"))) } else { None };
    let (target_ref, target_refs): (Option<PolicyTargetReference>, Vec<PolicyTargetReference>) =
        if scoped("spec.targetRef") {
            (
                lenient(spec.and_then(|s| s.get("targetRef"))),
                lenient(spec.and_then(|s| s.get("targetRefs"))).unwrap_or_default(),
            )
        } else {
            (None, Vec::new())
        };
    // A policy cannot have both a selector and targets: keep the targets (the narrower
    // attachment is the one the author wrote last; either way the refusal stays in scope).
    let selector = if target_ref.is_some() || !target_refs.is_empty() { None } else { selector };
    match key.kind {
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
            let rule = JwtRuleSpec {
                issuer: REFUSED_ISSUER.into(),
                jwks: Some(r#"{"keys":[]}"#.into()),
                ..Default::default()
            };
            let spec = RequestAuthenticationSpec { selector, target_ref, target_refs, jwt_rules: vec![rule] };
            Some((
                Object::RequestAuthentication(RequestAuthentication { metadata, spec }),
                "a rule no token satisfies: requests carrying a token are refused",
            ))
        }
        _ => None,
    }
}

fn lenient<T: DeserializeOwned>(value: Option<&Value>) -> Option<T> {
    serde_json::from_value(value?.clone()).ok()
}
