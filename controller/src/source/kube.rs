//! The Kubernetes source: kube-rs watchers for every kind we read, their objects parsed by the
//! same `manifest::parse_object` as files, batched into index events. On each (re)list the
//! objects that vanished meanwhile are deleted. Also the Kubernetes side of authentication
//! (`TokenReview`).
//!
//! No API server runs on our build machines; the tests drive a real kube client against
//! recorded API responses served over HTTP.

use std::collections::{BTreeSet, HashMap};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::auth::{service_account_of, AuthError, Authenticator, Caller};
use crate::deploy::status::{
    is_route, merge_route_parents, rfc3339_now, route_parents, status_parents, write_statuses, writes_status,
    RouteVerdict, StatusUpdate, ACCEPTED_MESSAGE,
};
use crate::index::Event;
use crate::manifest::{parse_object_or_substitute, Parsed};
use crate::model::{Kind, ObjectKey};
use crate::rejection::Rejection;
use crate::source::Rejections;

/// (group, version, kind, plural) of every kind we watch.
pub const WATCHED: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Node", "nodes"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Service", "services"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    ("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"),
    ("security.istio.io", "v1", "PeerAuthentication", "peerauthentications"),
    ("security.istio.io", "v1", "RequestAuthentication", "requestauthentications"),
    ("networking.istio.io", "v1", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    ("networking.istio.io", "v1", "Sidecar", "sidecars"),
    ("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    // Ingress gateways: TLS and TCP routes (experimental channel), references across
    // namespaces, and the listeners' certificates (only `kubernetes.io/tls` Secrets are
    // listed: see `watch_config`).
    ("gateway.networking.k8s.io", "v1alpha2", "TLSRoute", "tlsroutes"),
    ("gateway.networking.k8s.io", "v1alpha2", "TCPRoute", "tcproutes"),
    ("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant", "referencegrants"),
    ("", "v1", "Secret", "secrets"),
    ("policy.ambit.dev", "v1alpha1", "RateLimitPolicy", "ratelimitpolicies"),
];

/// Kinds whose CRD a cluster may lack (Gateway API's experimental channel): while it is
/// missing the kind counts as synced and empty, and it is looked for again.
const OPTIONAL: &[&str] = &["TLSRoute", "TCPRoute", "ReferenceGrant", "RateLimitPolicy"];

/// What a watch lists: TLS Secrets only (the controller never holds other Secrets).
fn watch_config(kind: &str) -> watcher::Config {
    match kind {
        "Secret" => watcher::Config::default().fields("type=kubernetes.io/tls"),
        _ => watcher::Config::default(),
    }
}

pub(crate) fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

/// Turns one watched object into an event, or records why it was rejected (a refused security
/// object becomes its fail-closed substitute; any other refused edit leaves the last accepted
/// version in place).
fn to_event(
    ar: &ApiResource,
    obj: DynamicObject,
    rejections: &Rejections,
    status: Option<&tokio::sync::mpsc::Sender<StatusUpdate>>,
) -> Option<Event> {
    let route = is_route(ar);
    // The Accepted condition already on the object: unchanged outcomes are not rewritten (our
    // own status write comes back as a watch event).
    let current =
        obj.data.get("status").and_then(|s| s.get("conditions")).and_then(|c| c.as_array()).and_then(|conds| {
            conds.iter().find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Accepted")).map(|c| {
                (
                    c.get("status").and_then(|v| v.as_str()).unwrap_or("").to_owned(),
                    c.get("message").and_then(|v| v.as_str()).unwrap_or("").to_owned(),
                    c.get("observedGeneration").and_then(|v| v.as_i64()),
                )
            })
        });
    let status_update = |rejection: Option<&Rejection>| {
        let Some(tx) = status.filter(|_| writes_status(ar)) else { return };
        let message = rejection.map(|r| r.to_string());
        let route_parents = if route {
            let refs = obj
                .data
                .get("spec")
                .and_then(|s| s.get("parentRefs"))
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            let current = status_parents(&obj.data);
            let verdict = RouteVerdict { rejection, generation: obj.metadata.generation };
            let ours = route_parents(&refs, &verdict);
            // Nothing of ours to say or to take back: other controllers' entries stay untouched.
            let Some(parents) = merge_route_parents(&current, ours, &rfc3339_now()) else { return };
            Some((parents, obj.metadata.resource_version.clone()))
        } else {
            let wanted_status = if rejection.is_some() { "False" } else { "True" };
            let wanted_message = message.clone().unwrap_or_else(|| ACCEPTED_MESSAGE.to_owned());
            let unchanged = current
                .as_ref()
                .is_some_and(|(s, m, g)| s == wanted_status && *m == wanted_message && *g == obj.metadata.generation);
            if unchanged {
                return;
            }
            None
        };
        let update = StatusUpdate {
            resource: ar.clone(),
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            generation: obj.metadata.generation,
            rejection: message,
            route_parents,
        };
        if tx.try_send(update).is_err() {
            tracing::debug!("status queue full; the next change rewrites it");
        }
    };
    let origin = format!(
        "{} {}/{}",
        ar.kind,
        obj.metadata.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().unwrap_or("")
    );
    let mut value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            rejections.set(&origin, vec![Rejection::new(origin.clone(), "", e.to_string())]);
            return None;
        }
    };
    if let Some(map) = value.as_object_mut() {
        // Watches of one type may omit these; the parser needs them.
        map.insert("apiVersion".into(), ar.api_version.clone().into());
        map.insert("kind".into(), ar.kind.clone().into());
    }
    match parse_object_or_substitute(&origin, value) {
        Ok(Parsed::Object(o)) => {
            rejections.set(&origin, Vec::new());
            status_update(None);
            Some(Event::Apply(o))
        }
        Ok(Parsed::Ignored { .. }) => None,
        Err((r, substitute)) => {
            status_update(Some(&r));
            rejections.set(&origin, vec![r]);
            substitute.map(Event::Apply)
        }
    }
}

fn key_of(kind: Kind, obj: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: obj.metadata.namespace.as_deref().unwrap_or("").into(),
        name: obj.metadata.name.as_deref().unwrap_or("").into(),
    }
}

/// Watches one kind forever (with kube-rs' default backoff), sending event batches.
async fn watch_kind(
    client: Client,
    (group, version, kind_name, plural): (&'static str, &'static str, &'static str, &'static str),
    tx: tokio::sync::mpsc::Sender<Vec<Event>>,
    rejections: Rejections,
    status: tokio::sync::mpsc::Sender<StatusUpdate>,
) {
    let ar = api_resource(group, version, kind_name, plural);
    let Some(kind) = Kind::from_type(&ar.api_version, kind_name) else { return };
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut synced = false;
    let mut relisted: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut batch = Vec::new();
    if OPTIONAL.contains(&kind_name) {
        // Until its CRD exists: synced, empty, looked for every 30 s.
        let mut announced = false;
        loop {
            match api.list(&kube::api::ListParams::default().limit(1)).await {
                Ok(_) => break,
                // Not installed (404), or not readable with this installation's RBAC (403):
                // nothing of that kind is served, and the controller is not held unready.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
                    if !announced {
                        announced = true;
                        tracing::info!(kind = kind_name, "CRD not installed; watching it once it is");
                        if tx.send(vec![Event::Synced]).await.is_err() {
                            return;
                        }
                        synced = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = kind_name, error = %e, "Kubernetes list failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    }
    let mut stream = watcher(api, watch_config(kind_name)).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(obj)) => {
                let key = key_of(kind, &obj);
                relisted.insert(key);
                batch.extend(to_event(&ar, obj, &rejections, Some(&status)));
            }
            Ok(watcher::Event::InitDone) => {
                // Whatever we knew and the relist no longer has was deleted meanwhile.
                for gone in known.difference(&relisted) {
                    batch.push(Event::Delete(gone.clone()));
                }
                known = std::mem::take(&mut relisted);
                if !synced {
                    synced = true;
                    batch.push(Event::Synced);
                }
                if tx.send(std::mem::take(&mut batch)).await.is_err() {
                    return;
                }
            }
            Ok(watcher::Event::Apply(obj)) => {
                known.insert(key_of(kind, &obj));
                if let Some(e) = to_event(&ar, obj, &rejections, Some(&status)) {
                    if tx.send(vec![e]).await.is_err() {
                        return;
                    }
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                let key = key_of(kind, &obj);
                known.remove(&key);
                rejections.set(&format!("{} {}/{}", ar.kind, key.namespace, key.name), Vec::new());
                if tx.send(vec![Event::Delete(key)]).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(kind = kind_name, error = %e, "Kubernetes watch failed; retrying"),
        }
    }
}

/// Starts a watcher per kind, and the status writer (writing while `leader` says this replica
/// leads).
pub fn spawn_watchers(
    client: Client,
    tx: tokio::sync::mpsc::Sender<Vec<Event>>,
    rejections: Rejections,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let (status_tx, status_rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(write_statuses(client.clone(), status_rx, leader));
    for w in WATCHED {
        tokio::spawn(watch_kind(client.clone(), *w, tx.clone(), rejections.clone(), status_tx.clone()));
    }
}

/// Service-account token authentication through the API server's TokenReview.
pub struct TokenReviewer {
    client: Client,
    /// The mesh's trust domain: service accounts carry none themselves.
    trust_domain: String,
    /// Audiences the token must be for (Istio's CA uses `istio-ca`).
    audiences: Vec<String>,
}

impl TokenReviewer {
    pub fn new(client: Client, trust_domain: String, audiences: Vec<String>) -> Self {
        TokenReviewer { client, trust_domain, audiences }
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(self.audiences.clone()) },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let result = api.create(&PostParams::default(), &review).await.map_err(|e| AuthError::Review(e.to_string()))?;
        let status = result.status.ok_or_else(|| AuthError::Review("no status in the review".into()))?;
        if status.authenticated != Some(true) {
            return Err(AuthError::Refused(status.error.unwrap_or_else(|| "token not authenticated".into())));
        }
        // Authenticators that ignore audiences answer with none: such a token was not minted
        // for us and must not be accepted.
        let audiences = status.audiences.unwrap_or_default();
        if !self.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(AuthError::Refused(format!("token is not for audience {:?}", self.audiences)));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (ns, sa) = service_account_of(&username).ok_or_else(|| AuthError::NotServiceAccount(username.clone()))?;
        let extra: HashMap<String, Vec<String>> = user.extra.unwrap_or_default().into_iter().collect();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let identity = ambit_shared::Identity::new(&self.trust_domain, ns, sa)
            .map_err(|e| AuthError::Review(format!("service account {ns}/{sa}: {e}")))?;
        Ok(Caller {
            identity,
            node: first("authentication.kubernetes.io/node-name"),
            pod: first("authentication.kubernetes.io/pod-name"),
        })
    }
}

/// Loads the root from its Secret, or creates it there on first start. Replicas racing to
/// create it converge: a losing create re-reads the winner's root.
pub async fn load_or_create_root_secret(
    client: &Client,
    config: &crate::config::Config,
) -> anyhow::Result<ambit_shared::Ca> {
    use anyhow::Context;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use crate::ca::{ROOT_CERT_FILE, ROOT_KEY_FILE};

    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let from_secret = |s: &Secret| -> anyhow::Result<ambit_shared::Ca> {
        let data = s.data.as_ref().context("root Secret has no data")?;
        let get = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .with_context(|| format!("root Secret lacks {k}"))
        };
        Ok(ambit_shared::Ca::load(&get(ROOT_CERT_FILE)?, &get(ROOT_KEY_FILE)?)?)
    };
    if let Some(secret) = api.get_opt(&config.ca_secret).await.context("reading the root Secret")? {
        return from_secret(&secret);
    }
    let ca = ambit_shared::Ca::generate(&config.trust_domain, ambit_shared::certs::DEFAULT_ROOT_LIFETIME)?;
    let secret = Secret {
        metadata: ObjectMeta { name: Some(config.ca_secret.clone()), ..Default::default() },
        data: Some(
            [
                (ROOT_CERT_FILE.to_owned(), ByteString(ca.root_pem().as_bytes().to_vec())),
                (ROOT_KEY_FILE.to_owned(), ByteString(ca.key_pem().as_bytes().to_vec())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(ca),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(&config.ca_secret).await.context("re-reading the root Secret")?;
            from_secret(&secret)
        }
        Err(e) => Err(e).context("creating the root Secret"),
    }
}
