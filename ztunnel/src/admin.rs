//! `/config_dump` on the admin port: what this ztunnel holds — workloads, services, policies,
//! the pods it serves and their certificates with expiry.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::proxy::Proxy;
use ambit_dataplane::state::State;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn config_dump(state: &State, proxy: &Proxy) -> Value {
    let mut workloads: Vec<Value> = state
        .workloads()
        .map(|w| {
            json!({
                "uid": &*w.uid,
                "name": &*w.name,
                "namespace": &*w.namespace,
                "addresses": w.addresses,
                "node": &*w.node,
                "network": &*w.network,
                "protocol": if w.hbone { "HBONE" } else { "TCP" },
                "identity": w.identity.to_string(),
                "healthy": w.healthy,
                "capacity": w.capacity,
                "services": w.services.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                "authorization_policies": w.policies.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "waypoint": w.waypoint.as_ref().map(|g| format!("{g:?}")),
            })
        })
        .collect();
    workloads.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    let mut services: Vec<Value> = state
        .services()
        .map(|s| {
            json!({
                "key": &*s.key,
                "hostname": &*s.hostname,
                "vips": s.vips.iter().map(|(n, ip)| format!("{n}/{ip}")).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({"service_port": p.service_port, "target_port": p.target_port})).collect::<Vec<_>>(),
                "endpoints": state.endpoint_count(&s.key),
                "waypoint": s.waypoint.as_ref().map(|g| format!("{g:?}")),
            })
        })
        .collect();
    services.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    let mut policies: Vec<Value> = state
        .policies()
        .map(|p| {
            json!({
                "name": format!("{}/{}", p.namespace, p.name),
                "action": ambit_shared::proto::security::Action::try_from(p.action).map(|a| a.as_str_name()).unwrap_or("UNKNOWN"),
                "scope": ambit_shared::proto::security::Scope::try_from(p.scope).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                "groups": p.groups.len(),
                "dry_run": p.dry_run,
            })
        })
        .collect();
    policies.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut certificates: Vec<Value> = proxy
        .certs
        .snapshot()
        .into_iter()
        .map(|(identity, expiry, error)| {
            json!({
                "identity": identity.to_string(),
                "state": if expiry.is_some() { "ready" } else if error.is_some() { "failed" } else { "pending" },
                "expires_unix": expiry.map(unix),
                "error": error,
            })
        })
        .collect();
    certificates.sort_by(|a, b| a["identity"].as_str().cmp(&b["identity"].as_str()));
    let pods: Vec<Value> = proxy
        .pod_list()
        .into_iter()
        .map(|(uid, name, identity)| json!({"uid": uid, "pod": name, "identity": identity.to_string()}))
        .collect();
    json!({
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "certificates": certificates,
        "pods": pods,
        "active_connections": proxy.active_connections(),
    })
}
