//! Every Kubernetes API access the controller makes, by resource and verb, taken from the
//! tables the code itself uses (the watched kinds, the kinds whose status it writes, the
//! objects it applies, the Lease, TokenReview and the root Secret). The Helm chart's RBAC is
//! tested against this list: everything here granted, nothing granted beyond it.

use crate::deploy::apply::APPLIED;
use crate::deploy::status::{status_resource, writes_status};
use crate::model::Kind;
use crate::source::kube::{api_resource, WATCHED};

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// The controller's own namespace (a Role there).
    OwnNamespace,
}

/// One API group/resource and the verbs used on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub scope: Scope,
    pub group: String,
    /// The plural, or `<plural>/status` for the status subresource.
    pub resource: String,
    pub verbs: Vec<&'static str>,
}

/// What the controller needs in Kubernetes mode, merged per (scope, group, resource).
pub fn required() -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    let mut add = |scope: Scope, group: &str, resource: String, verbs: &[&'static str]| match out
        .iter_mut()
        .find(|a| a.scope == scope && a.group == group && a.resource == resource)
    {
        Some(a) => a.verbs.extend(verbs.iter().copied()),
        None => out.push(Access { scope, group: group.into(), resource, verbs: verbs.to_vec() }),
    };
    // Reflectors: list, then watch.
    for &(group, version, kind, plural) in WATCHED {
        add(Scope::Cluster, group, plural.into(), &["list", "watch"]);
        if writes_status(&api_resource(group, version, kind, plural)) {
            add(Scope::Cluster, group, format!("{plural}/status"), &["patch"]);
        }
    }
    // Waypoint and ingress statuses (Gateway, Service), server-side applied; a route's
    // entries for ingress Gateways are merged into what it holds (read, then applied).
    for kind in [Kind::Gateway, Kind::Service] {
        if let Some(r) = status_resource(kind) {
            add(Scope::Cluster, &r.group, format!("{}/status", r.plural), &["patch"]);
        }
    }
    for kind in [Kind::HttpRoute, Kind::GrpcRoute, Kind::TlsRoute, Kind::TcpRoute] {
        if let Some(r) = status_resource(kind) {
            add(Scope::Cluster, &r.group, r.plural.clone(), &["get"]);
            add(Scope::Cluster, &r.group, format!("{}/status", r.plural), &["patch"]);
        }
    }
    // Waypoint objects and root ConfigMaps: server-side apply creates or patches.
    for (group, _, _, plural) in APPLIED {
        add(Scope::Cluster, group, plural.into(), &["create", "patch"]);
    }
    // The CA authenticates callers by TokenReview.
    add(Scope::Cluster, "authentication.k8s.io", "tokenreviews".into(), &["create"]);
    // The root certificate and key: read, or created on first start.
    add(Scope::OwnNamespace, "", "secrets".into(), &["get", "create"]);
    // Leader election: read, create, renew / take over (update).
    add(Scope::OwnNamespace, "coordination.k8s.io", "leases".into(), &["get", "create", "update"]);
    for a in &mut out {
        a.verbs.sort_unstable();
        a.verbs.dedup();
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_every_kind_and_writes_only_what_it_owns() {
        let access = required();
        let find = |group: &str, resource: &str| {
            access.iter().find(|a| a.group == group && a.resource == resource).map(|a| a.verbs.clone())
        };
        assert_eq!(find("", "pods"), Some(vec!["list", "watch"]));
        assert_eq!(find("", "services"), Some(vec!["create", "list", "patch", "watch"]));
        assert_eq!(find("gateway.networking.k8s.io", "gateways/status"), Some(vec!["patch"]));
        assert_eq!(find("security.istio.io", "authorizationpolicies/status"), Some(vec!["patch"]));
        assert_eq!(find("", "services/status"), Some(vec!["patch"]));
        assert_eq!(find("", "pods/status"), None, "core kinds' status is Kubernetes' own");
        assert_eq!(find("", "secrets").map(|_| ()), Some(()));
        assert!(access
            .iter()
            .filter(|a| a.scope == Scope::OwnNamespace)
            .all(|a| a.resource == "secrets" || a.resource == "leases"));
        assert!(access.iter().all(|a| !a.verbs.contains(&"delete")), "garbage collection deletes, not us");
    }
}
