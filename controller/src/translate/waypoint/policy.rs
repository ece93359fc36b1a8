//! AuthorizationPolicy as the waypoint evaluates it (L7 attributes included). Validation is
//! shared with ztunnel's translation in `translate::authz`; which policies attach to a service
//! is `service_config`'s decision.

use ambit_shared::proto::waypoint as pb;

use crate::model::{keys, AuthorizationPolicy};

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
            to: r.to.iter().map(|t| operation(&t.operation)).collect(),
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
        dry_run: p.metadata.annotations.get(keys::DRY_RUN).is_some_and(|v| v == "true"),
    }
}

/// An operation (AuthorizationPolicy `to`, RateLimitPolicy `match`) as the waypoint reads it.
pub(super) fn operation(o: &crate::model::Operation) -> pb::Operation {
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
}
