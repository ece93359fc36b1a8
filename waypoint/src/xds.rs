//! The waypoint's xDS handler: workloads and services go to ztunnel's indexed state (one
//! implementation), `ambit.waypoint.ServiceConfig` resources are compiled into the L7 map.
//! A configuration that does not compile is NACKed by name and the previous one kept (its DENY
//! rules still hold); without a previous one the service is marked rejected and answered 503.

use std::sync::Arc;

use ambit_dataplane::state::Updater;
use ambit_shared::proto::type_url::{ADDRESS, GATEWAY, WAYPOINT_SERVICE};
use ambit_shared::proto::waypoint::{GatewayConfig, ServiceConfig};
use ambit_shared::xds::{self, Rejection, Update};

use crate::gateway::GatewayL7;
use crate::l7::ServiceL7;
use crate::l7::{L7Entry, L7Map};
use crate::proxy::ingress::GatewaySlot;

#[derive(Clone)]
pub struct WaypointUpdater {
    pub workloads: Updater,
    pub l7: L7Map,
    /// An ingress gateway's own configuration (`None` at a waypoint, which does not ask for
    /// it and refuses it).
    pub gateway: Option<Arc<GatewaySlot>>,
}

impl xds::Handler for WaypointUpdater {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        match update.type_url {
            ADDRESS => self.workloads.handle(update),
            WAYPOINT_SERVICE => {
                let mut rejected = Vec::new();
                let mut compiled = Vec::new();
                for r in &update.added {
                    let result = r
                        .decode::<ServiceConfig>(WAYPOINT_SERVICE)
                        .map_err(|e| e.to_string())
                        .and_then(|c| ServiceL7::compile(&c).map_err(|e| e.to_string()));
                    match result {
                        Ok(c) => compiled.push((r.name.clone(), Arc::new(c))),
                        Err(reason) => {
                            tracing::warn!(resource = %r.name, %reason, "L7 configuration refused");
                            rejected.push(Rejection { name: r.name.clone(), reason });
                        }
                    }
                }
                let mut map = self.l7.write().unwrap_or_else(|p| p.into_inner());
                for name in &update.removed {
                    map.remove(name);
                }
                for (name, c) in compiled {
                    map.insert(name, L7Entry::Ready(c));
                }
                for r in &rejected {
                    match map.get(&r.name) {
                        Some(L7Entry::Ready(_)) => {
                            tracing::warn!(resource = %r.name, "keeping the previous L7 configuration");
                        }
                        _ => {
                            map.insert(r.name.clone(), L7Entry::Rejected(r.reason.as_str().into()));
                        }
                    }
                }
                drop(map);
                // Open TCP streams are authorized again against what changed.
                self.workloads.changes.send_modify(|generation| *generation += 1);
                rejected
            }
            GATEWAY if self.gateway.is_some() => {
                let Some(slot) = &self.gateway else { return Vec::new() };
                let mut rejected = Vec::new();
                for r in &update.added {
                    let config = match r.decode::<GatewayConfig>(GATEWAY) {
                        Ok(c) => c,
                        Err(e) => {
                            // The previous configuration (or none: no listener) stays.
                            tracing::warn!(resource = %r.name, error = %e, "gateway configuration refused");
                            rejected.push(Rejection { name: r.name.clone(), reason: e.to_string() });
                            continue;
                        }
                    };
                    let (compiled, dropped) = GatewayL7::compile(&config);
                    tracing::info!(resource = %r.name, ports = ?compiled.ports.keys().collect::<Vec<_>>(), "gateway configuration in force");
                    if !dropped.is_empty() {
                        let reason = dropped.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                        tracing::error!(resource = %r.name, %reason, "listeners left out");
                        rejected
                            .push(Rejection { name: r.name.clone(), reason: format!("listeners left out: {reason}") });
                    }
                    slot.send_replace(Some(Arc::new(compiled)));
                }
                if !update.removed.is_empty() {
                    tracing::warn!("gateway configuration withdrawn: closing the listeners");
                    slot.send_replace(None);
                }
                rejected
            }
            other => update
                .added
                .iter()
                .map(|r| Rejection { name: r.name.clone(), reason: format!("unexpected type {other}") })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_shared::proto::waypoint as pb;
    use prost::Message;

    use super::*;

    fn resource(name: &str, config: &pb::ServiceConfig) -> xds::Resource {
        xds::Resource {
            name: name.into(),
            version: "v".into(),
            body: ambit_shared::proto::Any { type_url: WAYPOINT_SERVICE.into(), value: config.encode_to_vec().into() },
        }
    }

    /// A service whose policy denies DELETE, or (broken) one whose condition key cannot be
    /// evaluated.
    fn config(broken: bool) -> pb::ServiceConfig {
        let key = if broken { "connection.sni" } else { "source.namespace" };
        pb::ServiceConfig {
            hostname: "reviews.shop.svc.cluster.local".into(),
            policies: vec![pb::Policy {
                name: "deny".into(),
                namespace: "shop".into(),
                action: pb::Action::Deny as i32,
                rules: vec![pb::Rule {
                    when: vec![pb::Condition { key: key.into(), values: vec!["x".into()], not_values: vec![] }],
                    ..Default::default()
                }],
                dry_run: false,
            }],
            ..Default::default()
        }
    }

    fn apply(updater: &mut WaypointUpdater, name: &str, broken: bool) -> Vec<Rejection> {
        let update =
            Update { type_url: WAYPOINT_SERVICE, added: vec![resource(name, &config(broken))], removed: vec![] };
        xds::Handler::handle(updater, update)
    }

    #[test]
    fn a_rejected_configuration_never_leaves_a_service_unprotected() {
        let mut updater = WaypointUpdater { workloads: Updater::default(), l7: L7Map::default(), gateway: None };
        // Never accepted: the service is marked rejected (answered 503), not left unconfigured.
        let nacked = apply(&mut updater, "shop/reviews", true);
        assert_eq!(nacked.len(), 1, "NACKed by name");
        assert!(nacked[0].reason.contains("when.key"), "{}", nacked[0].reason);
        assert!(matches!(updater.l7.read().unwrap().get("shop/reviews"), Some(L7Entry::Rejected(_))));
        // A good version replaces the mark; a later bad one keeps it, DENY rule and all.
        assert!(apply(&mut updater, "shop/reviews", false).is_empty());
        assert_eq!(apply(&mut updater, "shop/reviews", true).len(), 1);
        match updater.l7.read().unwrap().get("shop/reviews") {
            Some(L7Entry::Ready(kept)) => assert_eq!(kept.policies.len(), 1, "the previous policies hold"),
            other => panic!("the last good configuration must stay in force, got {other:?}"),
        }
        // Removal is the only way out.
        let removed = Update { type_url: WAYPOINT_SERVICE, added: vec![], removed: vec!["shop/reviews".into()] };
        assert!(xds::Handler::handle(&mut updater, removed).is_empty());
        assert!(updater.l7.read().unwrap().get("shop/reviews").is_none());
    }
}
