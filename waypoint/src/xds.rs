//! The waypoint's xDS handler: workloads and services go to ztunnel's indexed state (one
//! implementation), `ambit.waypoint.ServiceConfig` resources are compiled into the L7 map.
//! A configuration that does not compile is NACKed by name and the previous one kept (its DENY
//! rules still hold); without a previous one the service is marked rejected and answered 503.

use std::sync::Arc;

use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION, WAYPOINT_SERVICE};
use ambit_shared::proto::waypoint::ServiceConfig;
use ambit_shared::xds::{self, Rejection, Update};
use ambit_ztunnel::state::Updater;

use crate::l7::ServiceL7;
use crate::proxy::{L7Entry, L7Map};

#[derive(Clone)]
pub struct WaypointUpdater {
    pub workloads: Updater,
    pub l7: L7Map,
}

impl xds::Handler for WaypointUpdater {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        match update.type_url {
            ADDRESS | AUTHORIZATION => self.workloads.handle(update),
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
