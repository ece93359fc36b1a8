//! The status the controller writes back: each watched custom object's `Accepted` condition
//! (accepted, or why it was rejected; for a Gateway API route, per parent in `status.parents`), and the waypoint statuses on objects it does not define
//! — a waypoint Gateway's `Accepted` / `Programmed` conditions and address, Istio's
//! `istio.io/WaypointBound` on Services asking for a waypoint. Both written with server-side
//! apply (field manager `ambit-controller`).
//!
//! Deciding which objects are accepted is `manifest`'s; watching them is `source::kube`'s.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use tokio::sync::{mpsc, watch};

use crate::deploy::apply::resource;
use crate::deploy::waypoint_objects::waypoint_gateways;
use crate::model::{keys, Kind};
use crate::rejection::Rejection;
use crate::store::Store;
use crate::translate::MeshSettings;

/// The status the controller reports, without timestamps (the writer adds them), keyed by
/// (kind, namespace, name): each waypoint Gateway's `Accepted` and `Programmed` conditions and
/// its address; for each Service asking for a waypoint, Istio's `istio.io/WaypointBound`.
pub fn statuses(store: &Store, mesh: &MeshSettings) -> BTreeMap<(Kind, String, String), serde_json::Value> {
    let mut out = BTreeMap::new();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| serde_json::json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message});
    for gw in waypoint_gateways(store) {
        let ns = gw.metadata.namespace.clone().unwrap_or_default();
        let name = gw.metadata.name.clone();
        let service = store.services(Some(&ns)).find(|s| s.metadata.name == name);
        let ip = service.and_then(|s| s.spec.cluster_ip.clone()).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
        let address = match &ip {
            Some(ip) => serde_json::json!({"type": "IPAddress", "value": ip}),
            None => serde_json::json!({"type": "Hostname", "value": mesh.hostname(&name, &ns)}),
        };
        let programmed = service.is_some();
        out.insert(
            (Kind::Gateway, ns.clone(), name.clone()),
            serde_json::json!({
                "addresses": [address],
                "conditions": [
                    condition("Accepted", true, "Accepted", "accepted by ambit-controller as a waypoint".into()),
                    if programmed {
                        condition("Programmed", true, "Programmed", format!("waypoint Service {ns}/{name} deployed"))
                    } else {
                        condition("Programmed", false, "Pending", format!("waiting for the waypoint Service {ns}/{name}"))
                    },
                ],
            }),
        );
    }
    for (key, status) in ingress_statuses(store, mesh) {
        out.insert(key, status);
    }
    for svc in store.services(None) {
        if svc.metadata.labels.contains_key(keys::GATEWAY_NAME) {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let Some((wp_ns, wp)) = crate::translate::workload::requested_waypoint(&svc.metadata.labels, &ns, store) else {
            continue;
        };
        let bound = crate::translate::workload::waypoint_gateway(&svc.metadata.labels, &ns, false, store).is_some();
        let cond = if bound {
            condition("istio.io/WaypointBound", true, "WaypointAccepted", format!("bound to waypoint {wp_ns}/{wp}"))
        } else {
            condition(
                "istio.io/WaypointBound",
                false,
                "WaypointNotFound",
                format!("waypoint {wp_ns}/{wp} does not exist or does not serve services"),
            )
        };
        out.insert((Kind::Service, ns, svc.metadata.name.clone()), serde_json::json!({"conditions": [cond]}));
    }
    out
}

/// Each ingress Gateway's status as Gateway API defines it — `addresses` (its Service's load
/// balancer or cluster IPs), `Accepted` and `Programmed`, and per listener `supportedKinds`,
/// `attachedRoutes` and its conditions — and, for every route with a parentRef naming one,
/// our entries of its `status.parents` (keyed by the route, under `parents`).
pub fn ingress_statuses(store: &Store, mesh: &MeshSettings) -> Vec<((Kind, String, String), serde_json::Value)> {
    let condition = |c: &crate::translate::ingress::Condition| {
        serde_json::json!({
            "type": c.type_,
            "status": if c.status { "True" } else { "False" },
            "reason": c.reason,
            "message": c.message,
        })
    };
    let mut out = Vec::new();
    let mut route_parents: BTreeMap<(Kind, String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for o in store.list(Kind::Gateway, None) {
        let crate::model::Object::Gateway(gw) = o else { continue };
        if !crate::translate::ingress::is_ingress(gw) {
            continue;
        }
        let ns = gw.metadata.namespace.clone().unwrap_or_default();
        let name = gw.metadata.name.clone();
        let ingress = crate::translate::ingress::translate(gw, store, mesh);
        let service = store.services(Some(&ns)).find(|s| s.metadata.name == name);
        let mut addresses: Vec<serde_json::Value> = Vec::new();
        if let Some(svc) = service {
            for lb in svc.status.load_balancer_ingress() {
                match (&lb.ip, &lb.hostname) {
                    (Some(ip), _) => addresses.push(serde_json::json!({"type": "IPAddress", "value": ip})),
                    (None, Some(h)) => addresses.push(serde_json::json!({"type": "Hostname", "value": h})),
                    (None, None) => {}
                }
            }
            if addresses.is_empty() {
                for ip in svc.cluster_ips().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
                    addresses.push(serde_json::json!({"type": "IPAddress", "value": ip}));
                }
            }
        }
        let invalid =
            ingress.listeners.iter().filter(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && !c.status));
        let invalid: Vec<&str> = invalid.map(|l| l.name.as_str()).collect();
        let accepted = if invalid.is_empty() {
            serde_json::json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted by ambit-controller as an ingress gateway"})
        } else {
            serde_json::json!({"type": "Accepted", "status": "True", "reason": "ListenersNotValid", "message": format!("listeners not served: {}", invalid.join(", "))})
        };
        let programmed = match (ingress.programmed(), service.is_some()) {
            (true, true) => {
                serde_json::json!({"type": "Programmed", "status": "True", "reason": "Programmed", "message": format!("gateway Service {ns}/{name} deployed")})
            }
            (true, false) => {
                serde_json::json!({"type": "Programmed", "status": "False", "reason": "Pending", "message": format!("waiting for the gateway Service {ns}/{name}")})
            }
            (false, _) => {
                serde_json::json!({"type": "Programmed", "status": "False", "reason": "Invalid", "message": "no listener can be served"})
            }
        };
        let listeners: Vec<serde_json::Value> = ingress
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "supportedKinds": l.supported_kinds.iter().map(|k| serde_json::json!({"group": "gateway.networking.k8s.io", "kind": k})).collect::<Vec<_>>(),
                    "attachedRoutes": l.attached_routes,
                    "conditions": l.conditions.iter().map(condition).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.push((
            (Kind::Gateway, ns.clone(), name.clone()),
            serde_json::json!({"addresses": addresses, "conditions": [accepted, programmed], "listeners": listeners}),
        ));
        for r in ingress.routes {
            let entry = serde_json::json!({
                "parentRef": r.parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": r.conditions.iter().map(condition).collect::<Vec<_>>(),
            });
            route_parents
                .entry((r.route.kind, r.route.namespace.to_string(), r.route.name.to_string()))
                .or_default()
                .push(entry);
        }
    }
    for (key, parents) in route_parents {
        out.push((key, serde_json::json!({"parents": parents})));
    }
    out
}

/// Kinds whose `status` we own and write: the mesh's custom resources (Kubernetes validates
/// its core kinds itself).
pub fn writes_status(ar: &ApiResource) -> bool {
    matches!(
        ar.group.as_str(),
        "security.istio.io" | "networking.istio.io" | "gateway.networking.k8s.io" | crate::model::RATE_LIMIT_GROUP
    )
        // A Gateway's status is the store's (`statuses`); a ReferenceGrant has none.
        && ar.kind != "Gateway"
        && ar.kind != "ReferenceGrant"
}

pub(crate) const ACCEPTED_MESSAGE: &str = "accepted by ambit-controller";

/// The `controllerName` of our GatewayClass (charts/ambit/templates/gatewayclass.yaml), written
/// in each route parent entry of ours.
pub use ambit_shared::api::CONTROLLER_NAME;

/// Gateway API routes: their status is per parent (`status.parents`), not `status.conditions`.
pub fn is_route(ar: &ApiResource) -> bool {
    ar.group == "gateway.networking.k8s.io"
        && matches!(ar.kind.as_str(), "HTTPRoute" | "GRPCRoute" | "TCPRoute" | "TLSRoute")
}

/// Whether a route's `parentRef` names a Service (GAMMA), the only parents Ambit routes for.
/// A parentRef's kind defaults to `Gateway`, so it must say `kind: Service`.
pub fn is_service_parent(parent_ref: &serde_json::Value) -> bool {
    parent_ref.get("kind").and_then(|k| k.as_str()) == Some("Service")
        && matches!(parent_ref.get("group").and_then(|g| g.as_str()), None | Some("" | "core"))
}

/// What a route's entries of ours say, before timestamps: the rejection (if any) and the
/// generation it is about.
#[derive(Debug, Clone, Default)]
pub struct RouteVerdict<'a> {
    pub rejection: Option<&'a Rejection>,
    pub generation: Option<i64>,
}

/// Our entries of a route's `status.parents`, as Gateway API defines them: one per parentRef
/// naming a Service (Gateway parents belong to whichever controller runs that Gateway), with
/// our `controllerName`, `Accepted` and `ResolvedRefs`. A rejected route is not accepted
/// (reason `UnsupportedValue`, the message naming the field); `ResolvedRefs` is false with
/// `InvalidKind` when a backend's kind is what was refused, and absent when the rejection is
/// elsewhere (the references were not evaluated). No `lastTransitionTime` yet: see
/// `merge_route_parents`.
pub fn route_parents(parent_refs: &[serde_json::Value], verdict: &RouteVerdict) -> Vec<serde_json::Value> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": verdict.generation,
        })
    };
    let conditions = match verdict.rejection {
        None => vec![
            condition("Accepted", "True", "Accepted", ACCEPTED_MESSAGE),
            condition("ResolvedRefs", "True", "ResolvedRefs", "all references resolved"),
        ],
        Some(r) => {
            let message = r.to_string();
            let mut conditions = vec![condition("Accepted", "False", "UnsupportedValue", &message)];
            if r.field.contains("backendRefs[") && (r.field.ends_with(".kind") || r.field.ends_with(".group")) {
                conditions.push(condition("ResolvedRefs", "False", "InvalidKind", &message));
            }
            conditions
        }
    };
    parent_refs
        .iter()
        .filter(|p| is_service_parent(p))
        .map(|p| serde_json::json!({"parentRef": p, "controllerName": CONTROLLER_NAME, "conditions": conditions}))
        .collect()
}

/// A route's `status.parents` as it holds them (empty when it has none).
pub fn status_parents(route: &serde_json::Value) -> Vec<serde_json::Value> {
    route.get("status").and_then(|s| s.get("parents")).and_then(|p| p.as_array()).cloned().unwrap_or_default()
}

/// The whole `status.parents` to write: other controllers' entries as they are, our entries for
/// Service parents (the waypoint routes, judged per route where it is watched) replaced by
/// `ours`. A condition keeps its `lastTransitionTime` while its status is unchanged. `None`
/// when our entries already say exactly this (nothing to write).
pub fn merge_route_parents(
    current: &[serde_json::Value],
    ours: Vec<serde_json::Value>,
    now: &str,
) -> Option<Vec<serde_json::Value>> {
    merge_owned_parents(current, ours, now, is_service_parent)
}

/// As [`merge_route_parents`], for our entries whose `parentRef` satisfies `owned`: the
/// Service parents are judged where routes are watched, the Gateway parents from the whole
/// store (`ingress_statuses`), and each writer leaves the other's entries alone.
pub fn merge_owned_parents(
    current: &[serde_json::Value],
    mut ours: Vec<serde_json::Value>,
    now: &str,
    owned: impl Fn(&serde_json::Value) -> bool,
) -> Option<Vec<serde_json::Value>> {
    let is_ours = |e: &serde_json::Value| {
        e.get("controllerName").and_then(|c| c.as_str()) == Some(CONTROLLER_NAME)
            && e.get("parentRef").is_some_and(&owned)
    };
    let (mine, foreign): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = current.iter().partition(|e| is_ours(e));
    for entry in &mut ours {
        let before = mine.iter().find(|m| m.get("parentRef") == entry.get("parentRef"));
        let Some(conditions) = entry.get_mut("conditions").and_then(|c| c.as_array_mut()) else { continue };
        for c in conditions.iter_mut() {
            let since = before
                .and_then(|b| b.get("conditions")?.as_array()?.iter().find(|o| o.get("type") == c.get("type")))
                .filter(|o| o.get("status") == c.get("status"))
                .and_then(|o| o.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| now.into());
            c["lastTransitionTime"] = since;
        }
    }
    if mine.len() == ours.len() && mine.iter().zip(&ours).all(|(a, b)| *a == b) {
        return None;
    }
    Some(foreign.into_iter().cloned().chain(ours).collect())
}

/// One status to write back.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub resource: ApiResource,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// `None`: accepted; `Some(message)`: rejected.
    pub rejection: Option<String>,
    /// For a Gateway API route, the whole `status.parents` to write (see
    /// `merge_route_parents`), and the object's `resourceVersion` it was computed from: the
    /// write is refused if another writer changed the list meanwhile, and the watch event of
    /// that change brings a fresh merge.
    pub route_parents: Option<(Vec<serde_json::Value>, Option<String>)>,
}

/// Writes `Accepted` conditions with server-side apply (field manager `ambit-controller`), so a
/// `kubectl get -o yaml` shows why an object was refused. Only while this replica leads
/// (`leader`): replicas never write over each other. What arrives meanwhile is kept, the latest
/// per object, and written when this replica takes the lead.
pub async fn write_statuses(client: Client, mut rx: mpsc::Receiver<StatusUpdate>, mut leader: watch::Receiver<bool>) {
    let params = PatchParams::apply("ambit-controller").force();
    let mut held: BTreeMap<(String, String, String), StatusUpdate> = BTreeMap::new();
    // Whether leadership can still change (its sender alive); once not, the last word stands.
    let mut news = true;
    loop {
        let update = tokio::select! {
            u = rx.recv() => match u {
                Some(u) => u,
                None => return,
            },
            changed = leader.changed(), if news => {
                if changed.is_err() {
                    news = false;
                }
                if *leader.borrow_and_update() {
                    for (_, u) in std::mem::take(&mut held) {
                        write_status(&client, &params, &u).await;
                    }
                }
                continue;
            }
        };
        if *leader.borrow() {
            write_status(&client, &params, &update).await;
        } else {
            held.insert((update.resource.kind.clone(), update.namespace.clone(), update.name.clone()), update);
        }
    }
}

async fn write_status(client: &Client, params: &PatchParams, u: &StatusUpdate) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &u.namespace, &u.resource);
    let (status, reason, message) = match &u.rejection {
        None => ("True", "Accepted", ACCEPTED_MESSAGE.to_owned()),
        Some(why) => ("False", "Invalid", why.clone()),
    };
    let mut patch = serde_json::json!({"apiVersion": u.resource.api_version, "kind": u.resource.kind});
    match &u.route_parents {
        Some((parents, resource_version)) => {
            patch["status"] = serde_json::json!({ "parents": parents });
            if let Some(rv) = resource_version {
                // An apply carrying resourceVersion is refused (409) if the object moved on.
                patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
            }
        }
        None => {
            patch["status"] = serde_json::json!({"conditions": [{
                "type": "Accepted",
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": u.generation,
                "lastTransitionTime": rfc3339_now(),
            }]});
        }
    }
    match api.patch_status(&u.name, params, &Patch::Apply(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(kind = %u.resource.kind, namespace = %u.namespace, name = %u.name, "status changed meanwhile; the watch brings it back")
        }
        Err(e) => {
            tracing::warn!(kind = %u.resource.kind, namespace = %u.namespace, name = %u.name, error = %e, "writing status failed")
        }
    }
}

/// A status the controller owns on an object it does not define (a Gateway, a Service).
#[derive(Debug, Clone)]
pub struct StatusPatch {
    pub resource: ApiResource,
    pub namespace: String,
    pub name: String,
    /// The `status` fields we own, conditions without `lastTransitionTime` (added here).
    pub status: serde_json::Value,
}

/// The API resource of a kind whose status the controller writes from the store: waypoint and
/// ingress Gateways, Services asking for a waypoint, and routes naming an ingress Gateway.
pub fn status_resource(kind: Kind) -> Option<ApiResource> {
    match kind {
        Kind::Gateway => Some(resource(("gateway.networking.k8s.io", "v1", "Gateway", "gateways"))),
        Kind::Service => Some(resource(("", "v1", "Service", "services"))),
        Kind::HttpRoute => Some(resource(("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"))),
        Kind::GrpcRoute => Some(resource(("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"))),
        Kind::TlsRoute => Some(resource(("gateway.networking.k8s.io", "v1alpha2", "TLSRoute", "tlsroutes"))),
        Kind::TcpRoute => Some(resource(("gateway.networking.k8s.io", "v1alpha2", "TCPRoute", "tcproutes"))),
        _ => None,
    }
}

/// Writes a route's entries for its Gateway parents: read the route, merge (other entries
/// untouched, transition times kept), apply guarded by the `resourceVersion` read; a route
/// that moved on meanwhile is read and merged again.
async fn write_route_parents(client: &Client, params: &PatchParams, p: &StatusPatch) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &p.namespace, &p.resource);
    let ours = p.status.get("parents").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    for _ in 0..3 {
        let current = match api.get(&p.name).await {
            Ok(o) => o,
            // Gone: nothing to write.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let parents = status_parents(&current.data);
        let Some(merged) = merge_owned_parents(&parents, ours.clone(), &rfc3339_now(), |r| !is_service_parent(r))
        else {
            return Ok(());
        };
        let patch = serde_json::json!({
            "apiVersion": p.resource.api_version, "kind": p.resource.kind,
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"parents": merged},
        });
        match api.patch_status(&p.name, params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes waypoint statuses with server-side apply (field manager `ambit-controller`): our
/// conditions and addresses only, beside whatever else owns the rest of `status`.
pub async fn write_status_patches(client: Client, mut rx: mpsc::Receiver<StatusPatch>) {
    let params = PatchParams::apply("ambit-controller").force();
    while let Some(mut p) = rx.recv().await {
        if p.status.get("parents").is_some() {
            if let Err(e) = write_route_parents(&client, &params, &p).await {
                tracing::warn!(kind = %p.resource.kind, namespace = %p.namespace, name = %p.name, error = %e, "writing route status failed");
            }
            continue;
        }
        let now = rfc3339_now();
        let stamp = |conds: Option<&mut serde_json::Value>| {
            for c in conds.and_then(|c| c.as_array_mut()).into_iter().flatten().filter_map(|c| c.as_object_mut()) {
                c.insert("lastTransitionTime".into(), now.clone().into());
            }
        };
        stamp(p.status.get_mut("conditions"));
        // A Gateway's listeners carry conditions of their own (required fields alike).
        if let Some(listeners) = p.status.get_mut("listeners").and_then(|l| l.as_array_mut()) {
            for l in listeners {
                stamp(l.get_mut("conditions"));
            }
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &p.namespace, &p.resource);
        let patch =
            serde_json::json!({"apiVersion": p.resource.api_version, "kind": p.resource.kind, "status": p.status});
        if let Err(e) = api.patch_status(&p.name, &params, &Patch::Apply(&patch)).await {
            tracing::warn!(kind = %p.resource.kind, namespace = %p.namespace, name = %p.name, error = %e, "writing waypoint status failed");
        }
    }
}

/// RFC 3339 UTC timestamp with second precision, as Kubernetes writes them.
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Sends the waypoint statuses that changed since the last call to the status writer
/// (`write_status_patches`).
pub struct StatusSync {
    tx: mpsc::Sender<StatusPatch>,
    /// What was last sent, by (kind, namespace, name).
    written: BTreeMap<(Kind, String, String), serde_json::Value>,
}

impl StatusSync {
    pub fn new(tx: mpsc::Sender<StatusPatch>) -> Self {
        StatusSync { tx, written: BTreeMap::new() }
    }

    /// Waypoint statuses that changed; a Service no longer asking for a waypoint gets our
    /// condition removed (an empty list under our field manager).
    pub fn sync(&mut self, store: &Store, mesh: &MeshSettings) {
        let now = statuses(store, mesh);
        let mut now = now;
        for (key, status) in now.iter_mut() {
            // What could not be queued is not recorded as written: the next sync sends it.
            if self.written.get(key) != Some(status) && !send_status(&self.tx, key, status.clone()) {
                *status = serde_json::Value::Null;
            }
        }
        for key in self.written.keys().filter(|k| !now.contains_key(*k)) {
            let gone = match key.0 {
                Kind::Gateway | Kind::Service => serde_json::json!({"conditions": []}),
                // A route no longer naming an ingress Gateway: our entries for it go.
                _ => serde_json::json!({"parents": []}),
            };
            send_status(&self.tx, key, gone);
        }
        self.written = now;
    }

    /// Forget what was sent (a new leader writes everything again).
    pub fn reset(&mut self) {
        self.written.clear();
    }
}

/// Queues one status; `false` when the queue is full (it is sent at a later sync).
fn send_status(
    tx: &mpsc::Sender<StatusPatch>,
    (kind, namespace, name): &(Kind, String, String),
    status: serde_json::Value,
) -> bool {
    let Some(resource) = status_resource(*kind) else { return true };
    let patch = StatusPatch { resource, namespace: namespace.clone(), name: name.clone(), status };
    if tx.try_send(patch).is_err() {
        tracing::warn!(%namespace, %name, "status queue full; the next sync sends it again");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse_object, Parsed};

    #[test]
    fn route_entries_keep_their_transition_times_and_are_not_rewritten_unchanged() {
        let refs = vec![
            serde_json::json!({"group": "", "kind": "Service", "name": "reviews"}),
            serde_json::json!({"name": "ingress"}),
        ];
        let verdict = RouteVerdict { generation: Some(2), ..Default::default() };
        let ours = route_parents(&refs, &verdict);
        assert_eq!(ours.len(), 1, "a parentRef without kind is a Gateway, not ours: {ours:?}");
        let written = merge_route_parents(&[], ours.clone(), "2026-12-01T00:00:00Z").unwrap();
        // Read back unchanged later: nothing to write.
        assert_eq!(merge_route_parents(&written, ours.clone(), "2026-12-02T00:00:00Z"), None);
        // Rejected later: Accepted moves (new time); the field names a backend's kind.
        let r = Rejection::new("HTTPRoute shop/r", "spec.rules[0].backendRefs[0].kind", "only Service backends");
        let verdict = RouteVerdict { rejection: Some(&r), generation: Some(3) };
        let next = merge_route_parents(&written, route_parents(&refs, &verdict), "2026-12-03T00:00:00Z").unwrap();
        let conds = next[0]["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["lastTransitionTime"], "2026-12-03T00:00:00Z");
        assert_eq!(conds[1]["reason"], "InvalidKind");
        assert!(conds[0]["message"].as_str().unwrap().contains("backendRefs[0].kind"), "{conds:?}");
        // Accepted again at a new generation: status True again, so a new transition time;
        // a condition whose status did not change keeps its time.
        let accepted = route_parents(&refs, &RouteVerdict { generation: Some(4), ..Default::default() });
        let again = merge_route_parents(&written, accepted, "2026-12-04T00:00:00Z").unwrap();
        assert_eq!(again[0]["conditions"][0]["lastTransitionTime"], "2026-12-01T00:00:00Z");
        assert_eq!(again[0]["conditions"][0]["observedGeneration"], 4);
        // A route no longer naming a Service: our entry is taken back, others' stay.
        let foreign =
            serde_json::json!({"parentRef": {"name": "ingress"}, "controllerName": "istio.io/gateway-controller"});
        let mixed = vec![foreign.clone(), written[0].clone()];
        assert_eq!(merge_route_parents(&mixed, Vec::new(), "t"), Some(vec![foreign.clone()]));
        assert_eq!(merge_route_parents(&[foreign], Vec::new(), "t"), None);
    }

    #[test]
    fn status_of_gateways_and_bound_services() {
        let mut store = Store::default();
        let add = |store: &mut Store, yaml: &str| {
            let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
            if let Parsed::Object(o) = parse_object("t", v).unwrap() {
                store.upsert(*o);
            }
        };
        add(
            &mut store,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}",
        );
        add(&mut store, "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint}");
        add(
            &mut store,
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {ports: [{port: 80}]}",
        );
        add(&mut store, "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop, labels: {istio.io/use-waypoint: missing}}\nspec: {ports: [{port: 80}]}");
        let mesh = crate::translate::MeshSettings::default();
        let s = statuses(&store, &mesh);
        let gw = &s[&(Kind::Gateway, "shop".into(), "waypoint".into())];
        assert_eq!(gw["conditions"][1]["status"], "False", "no Service yet: not programmed");
        assert_eq!(gw["addresses"][0]["value"], "waypoint.shop.svc.cluster.local");
        assert_eq!(s[&(Kind::Service, "shop".into(), "reviews".into())]["conditions"][0]["status"], "True");
        assert_eq!(s[&(Kind::Service, "shop".into(), "other".into())]["conditions"][0]["reason"], "WaypointNotFound");
        add(&mut store, "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 15008}]}");
        let s = statuses(&store, &mesh);
        let gw = &s[&(Kind::Gateway, "shop".into(), "waypoint".into())];
        assert_eq!(gw["conditions"][1]["status"], "True");
        assert_eq!(gw["addresses"][0], serde_json::json!({"type": "IPAddress", "value": "10.96.0.9"}));
        assert!(
            !s.contains_key(&(Kind::Service, "shop".into(), "waypoint".into())),
            "the waypoint's own Service is not bound"
        );
    }
}
