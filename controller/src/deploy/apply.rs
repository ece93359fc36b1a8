//! Kubernetes mode: the objects the controller owns, kept applied with server-side apply (field
//! manager `ambit-controller`): each waypoint Gateway's ServiceAccount, Deployment and Service
//! (owned by the Gateway, so Kubernetes garbage-collects them with it), and the mesh root
//! certificate as the ConfigMap `istio-ca-root-cert` in every namespace (what workloads and
//! waypoints mount, as istiod publishes it).
//!
//! Only what changed since the last batch is written; a write that fails is tried again every
//! few seconds until it succeeds or the object changes.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use tokio::sync::mpsc;

use crate::deploy::root_configmap::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY};
use crate::deploy::waypoint_objects::{deployed_gateways, objects, with_type_meta, WaypointSettings};
use crate::deploy::Deploy;
use crate::model::{Kind, Object};
use crate::store::Store;

/// (group, version, kind, plural) of what the controller applies.
pub const SERVICE_ACCOUNTS: (&str, &str, &str, &str) = ("", "v1", "ServiceAccount", "serviceaccounts");
pub const DEPLOYMENTS: (&str, &str, &str, &str) = ("apps", "v1", "Deployment", "deployments");
pub const SERVICES: (&str, &str, &str, &str) = ("", "v1", "Service", "services");
pub const CONFIGMAPS: (&str, &str, &str, &str) = ("", "v1", "ConfigMap", "configmaps");
pub const APPLIED: [(&str, &str, &str, &str); 4] = [SERVICE_ACCOUNTS, DEPLOYMENTS, SERVICES, CONFIGMAPS];

/// One object to apply.
#[derive(Debug, Clone)]
pub struct Owned {
    pub resource: ApiResource,
    pub namespace: String,
    pub name: String,
    /// The whole object we own (apiVersion, kind, metadata, spec / data).
    pub body: serde_json::Value,
}

pub(crate) fn resource((group, version, kind, plural): (&str, &str, &str, &str)) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn typed<T: serde::Serialize>(resource: &ApiResource, o: &T) -> Option<serde_json::Value> {
    with_type_meta(&resource.api_version, &resource.kind, o).ok()
}

/// Everything the controller should own for `store`, by (kind, namespace, name).
pub fn desired(
    store: &Store,
    settings: &WaypointSettings,
    root_pem: &str,
) -> BTreeMap<(String, String, String), Owned> {
    let mut out = BTreeMap::new();
    let mut put = |resource: ApiResource, namespace: &str, name: &str, body: Option<serde_json::Value>| {
        if let Some(body) = body {
            let key = (resource.kind.clone(), namespace.to_owned(), name.to_owned());
            out.insert(key, Owned { resource, namespace: namespace.to_owned(), name: name.to_owned(), body });
        }
    };
    for gw in deployed_gateways(store) {
        // Without a uid there is no owner reference, so nothing would collect the objects.
        if gw.metadata.uid.is_none() {
            continue;
        }
        let ns = gw.metadata.namespace.clone().unwrap_or_default();
        let name = gw.metadata.name.clone();
        let (sa, deployment, service) = objects(gw, settings);
        let r = resource(SERVICE_ACCOUNTS);
        put(r.clone(), &ns, &name, typed(&r, &sa));
        let r = resource(DEPLOYMENTS);
        put(r.clone(), &ns, &name, typed(&r, &deployment));
        let r = resource(SERVICES);
        put(r.clone(), &ns, &name, typed(&r, &service));
    }
    for o in store.list(Kind::Namespace, None) {
        let Object::Namespace(n) = o else { continue };
        let r = resource(CONFIGMAPS);
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROOT_CONFIGMAP, "namespace": n.metadata.name, "labels": {"istio.io/config": "true"}},
            "data": {ROOT_CONFIGMAP_KEY: root_pem},
        });
        put(r, &n.metadata.name, ROOT_CONFIGMAP, Some(body));
    }
    out
}

/// Keeps the owned objects applied: sends what changed to the writer.
pub struct KubeDeployer {
    settings: WaypointSettings,
    root_pem: String,
    written: BTreeMap<(String, String, String), serde_json::Value>,
    tx: mpsc::Sender<Owned>,
}

impl KubeDeployer {
    pub fn new(settings: WaypointSettings, root_pem: String, tx: mpsc::Sender<Owned>) -> Self {
        KubeDeployer { settings, root_pem, written: BTreeMap::new(), tx }
    }
}

impl Deploy for KubeDeployer {
    fn sync(&mut self, store: &Store) {
        let want = desired(store, &self.settings, &self.root_pem);
        for (key, owned) in &want {
            if self.written.get(key) == Some(&owned.body) {
                continue;
            }
            if self.tx.try_send(owned.clone()).is_err() {
                tracing::warn!(kind = %key.0, namespace = %key.1, name = %key.2, "apply queue full; retried on the next change");
                continue;
            }
            self.written.insert(key.clone(), owned.body.clone());
        }
        // Gone from the desired set (Gateway deleted: Kubernetes collects its objects through
        // the owner reference; namespace deleted: its ConfigMap goes with it).
        self.written.retain(|k, _| want.contains_key(k));
    }

    fn reset(&mut self) {
        self.written.clear();
    }
}

/// How often objects whose apply failed are tried again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies owned objects as they come. A failed apply is tried again every `RETRY_EVERY`
/// until it succeeds or a newer version of the object replaces it; errors that no retry can
/// mend (404: the namespace is gone, 422: the object is invalid) are logged and dropped.
pub async fn apply_owned(client: Client, mut rx: mpsc::Receiver<Owned>) {
    let params = PatchParams::apply("ambit-controller").force();
    let mut failed: BTreeMap<(String, String, String), Owned> = BTreeMap::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch: Vec<Owned> = tokio::select! {
            o = rx.recv() => match o {
                Some(o) => vec![o],
                None => return,
            },
            _ = retry.tick(), if !failed.is_empty() => std::mem::take(&mut failed).into_values().collect(),
        };
        for o in batch {
            let key = (o.resource.kind.clone(), o.namespace.clone(), o.name.clone());
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &o.namespace, &o.resource);
            match api.patch(&o.name, &params, &Patch::Apply(&o.body)).await {
                Ok(_) => {
                    failed.remove(&key);
                    tracing::info!(kind = %o.resource.kind, namespace = %o.namespace, name = %o.name, "applied");
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => {
                    failed.remove(&key);
                    tracing::warn!(kind = %o.resource.kind, namespace = %o.namespace, name = %o.name, error = %e, "applying failed; not retried");
                }
                Err(e) => {
                    tracing::warn!(kind = %o.resource.kind, namespace = %o.namespace, name = %o.name, error = %e, "applying failed; retrying");
                    failed.insert(key, o);
                }
            }
        }
    }
}
