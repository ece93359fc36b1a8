//! The store: the current, validated objects from the source, with the secondary look-ups
//! translation needs (objects of a kind in a namespace, identities running on a node).
//!
//! Plain data, no I/O; `index` owns one and updates it event by event.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::model::*;

#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Object>,
    identities: NodeIdentities,
}

/// Which identities run where: what the CA checks impersonation against.
#[derive(Debug, Default, Clone)]
pub struct NodeIdentities {
    /// node → (namespace, service account) → number of running pods with that identity.
    on_node: HashMap<String, HashMap<(String, String), usize>>,
    /// (namespace, pod) → node, for callers identified by pod name.
    pod_node: HashMap<(String, String), String>,
}

impl NodeIdentities {
    /// Whether a pod running as `namespace/service_account` is on `node`.
    pub fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.on_node.get(node).is_some_and(|ids| ids.contains_key(&(namespace.to_owned(), service_account.to_owned())))
    }

    /// The node a pod runs on.
    pub fn node_of(&self, namespace: &str, pod: &str) -> Option<&str> {
        self.pod_node.get(&(namespace.to_owned(), pod.to_owned())).map(String::as_str)
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey { kind, namespace: namespace.into(), name: name.into() }
}

/// Pods that count as running an identity on a node (for the CA's impersonation check).
fn pod_identity(pod: &Pod) -> Option<(String, (String, String))> {
    let node = pod.spec.node_name.clone()?;
    if matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod.spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    Some((node, (ns, sa)))
}

impl Store {
    /// Inserts or replaces an object; returns the previous version.
    pub fn upsert(&mut self, object: Object) -> Option<Object> {
        if let Object::Pod(p) = &object {
            self.count_identity(p, 1);
        }
        let previous = self.objects.insert(object.key(), object);
        if let Some(Object::Pod(p)) = &previous {
            self.count_identity(p, -1);
        }
        previous
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<Object> {
        let previous = self.objects.remove(key);
        if let Some(Object::Pod(p)) = &previous {
            self.count_identity(p, -1);
        }
        previous
    }

    fn count_identity(&mut self, pod: &Pod, delta: isize) {
        let Some((node, id)) = pod_identity(pod) else { return };
        let pod_key = (id.0.clone(), pod.metadata.name.clone());
        if delta > 0 {
            self.identities.pod_node.insert(pod_key, node.clone());
        } else {
            self.identities.pod_node.remove(&pod_key);
        }
        let per_node = self.identities.on_node.entry(node.clone()).or_default();
        let count = per_node.entry(id.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            per_node.remove(&id);
            if per_node.is_empty() {
                self.identities.on_node.remove(&node);
            }
        }
    }

    /// Whether a pod running as `namespace/service_account` is on `node`.
    pub fn identity_runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.identities.runs_on(node, namespace, service_account)
    }

    /// A copy of the node → identities table, for the CA.
    pub fn node_identities(&self) -> NodeIdentities {
        self.identities.clone()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Objects of `kind` in `namespace` (all namespaces when `None`), in name order.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> impl Iterator<Item = &Object> {
        let start = key(kind, namespace.unwrap_or(""), "");
        let ns: Option<Arc<str>> = namespace.map(Into::into);
        self.objects
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(k, _)| k.kind == kind && ns.as_ref().is_none_or(|ns| *ns == k.namespace))
            .map(|(_, o)| o)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.objects.get(&key(Kind::Namespace, "", name)) {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        match self.objects.get(&key(Kind::Gateway, namespace, name)) {
            Some(Object::Gateway(g)) => Some(g),
            _ => None,
        }
    }

    pub fn pods(&self, namespace: Option<&str>) -> impl Iterator<Item = &Pod> {
        self.list(Kind::Pod, namespace).filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    pub fn services(&self, namespace: Option<&str>) -> impl Iterator<Item = &Service> {
        self.list(Kind::Service, namespace).filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }

    pub fn authorization_policies(&self, namespace: Option<&str>) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.list(Kind::AuthorizationPolicy, namespace).filter_map(|o| match o {
            Object::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
    }

    pub fn peer_authentications(&self, namespace: Option<&str>) -> impl Iterator<Item = &PeerAuthentication> {
        self.list(Kind::PeerAuthentication, namespace).filter_map(|o| match o {
            Object::PeerAuthentication(p) => Some(p),
            _ => None,
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }
}

/// Whether every label of `selector` is on `labels` (an empty selector selects everything).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse_object, Parsed};

    fn obj(yaml: &str) -> Object {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        match parse_object("test", v).unwrap() {
            Parsed::Object(o) => *o,
            Parsed::Ignored { .. } => panic!("ignored"),
        }
    }

    fn pod(ns: &str, name: &str, node: &str, sa: &str) -> Object {
        obj(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{nodeName: {node}, serviceAccountName: {sa}}}\nstatus: {{phase: Running, podIP: 10.0.0.1}}"
        ))
    }

    #[test]
    fn lists_by_kind_and_namespace() {
        let mut s = Store::default();
        s.upsert(pod("a", "p1", "n1", "x"));
        s.upsert(pod("b", "p2", "n1", "x"));
        s.upsert(pod("b", "p3", "n2", "y"));
        s.upsert(obj("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}"));
        assert_eq!(s.pods(Some("b")).map(|p| p.metadata.name.as_str()).collect::<Vec<_>>(), ["p2", "p3"]);
        assert_eq!(s.pods(None).count(), 3);
        assert_eq!(s.pods(Some("c")).count(), 0);
        assert!(s.namespace("b").is_some());
    }

    #[test]
    fn tracks_identities_per_node() {
        let mut s = Store::default();
        s.upsert(pod("a", "p1", "n1", "x"));
        s.upsert(pod("a", "p2", "n1", "x"));
        assert!(s.identity_runs_on("n1", "a", "x"));
        assert!(!s.identity_runs_on("n2", "a", "x"));
        s.remove(&pod("a", "p1", "n1", "x").key());
        assert!(s.identity_runs_on("n1", "a", "x"), "p2 still runs it");
        // Moving p2 to another node (replace) updates the count.
        s.upsert(pod("a", "p2", "n2", "x"));
        assert!(!s.identity_runs_on("n1", "a", "x"));
        assert!(s.identity_runs_on("n2", "a", "x"));
    }
}
