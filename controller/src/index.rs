//! The index: applies source events to the store in batches and recomputes only the outputs
//! they can affect, producing resource changes for the xDS state.
//!
//! A pod's change recomputes that pod's workload; a service's change recomputes the service
//! and the pods its old or new selector picks; a policy's change recomputes the policy and the
//! pods it selects; namespaces, gateways and PeerAuthentications widen that to the pods (and
//! services) they govern. Translation warnings are kept per object for the admin endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ambit_shared::api::gateway_resource;
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION, GATEWAY, WAYPOINT_SERVICE};
use ambit_shared::proto::workload::{address, Address};
use ambit_shared::proto::Any;
use prost::Message;

use crate::model::{Kind, Labels, Object, ObjectKey};
use crate::store::{selects, Store};
use crate::translate::allocate::{allocations, HostKey};
use crate::translate::authz::{self, peer_authn_outcome, PeerAuthnChain};
use crate::translate::ingress::is_ingress;
use crate::translate::service::{
    service_entry_endpoints, service_resource_name, translate_service, translate_service_entry, without_service_hosts,
};
use crate::translate::waypoint::{service_config, service_entry_config, waypoint_self_config};
use crate::translate::workload::{inherited_peer_authn, translate_pod, waypoint_gateway, workload_uid};
use crate::translate::MeshSettings;

/// One source event.
#[derive(Debug, Clone)]
pub enum Event {
    Apply(Box<Object>),
    Delete(ObjectKey),
    /// A source (or one kind of it) has delivered its complete initial state.
    Synced,
}

/// One resource to publish (`body: None` removes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub type_url: &'static str,
    pub name: String,
    pub body: Option<Any>,
}

/// What a batch of events forces us to recompute.
#[derive(Debug, Default)]
struct Dirty {
    pods: BTreeSet<ObjectKey>,
    /// Pods in these namespaces whose labels match one of the selectors (None = all pods).
    pods_in: BTreeMap<Arc<str>, Option<Vec<Labels>>>,
    all_pods: bool,
    objects: BTreeSet<ObjectKey>,
    services_in: BTreeSet<Arc<str>>,
    all_services: bool,
    peer_authn: bool,
    /// Every ingress gateway (their routes, certificates, backends and policies may have
    /// changed; there are few of them).
    ingress: bool,
}

impl Dirty {
    fn pods_matching(&mut self, ns: &Arc<str>, selector: Option<Labels>) {
        let entry = self.pods_in.entry(ns.clone()).or_insert_with(|| Some(Vec::new()));
        match (entry, selector) {
            (Some(list), Some(sel)) => list.push(sel),
            (e, _) => *e = None,
        }
    }
}

/// The synthetic owner of mesh-wide outputs (the static STRICT policy).
fn mesh_owner() -> ObjectKey {
    ObjectKey { kind: Kind::PeerAuthentication, namespace: "".into(), name: "".into() }
}

pub struct Index {
    store: Store,
    mesh: MeshSettings,
    /// Which outputs each object produced, so a recompute can remove what it no longer makes.
    emitted: HashMap<ObjectKey, Vec<(&'static str, String)>>,
    /// Every object producing each output (two ServiceEntries may share a host): an output
    /// is removed only when its last producer stops producing it.
    producers: HashMap<(&'static str, String), BTreeSet<ObjectKey>>,
    warnings: BTreeMap<ObjectKey, Vec<String>>,
    /// ServiceEntry hosts' allocated addresses, computed once per pass that touches an entry.
    allocated: BTreeMap<HostKey, Vec<IpAddr>>,
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec().into() }
}

fn selector_of(object: &Object) -> Option<Labels> {
    match object {
        Object::Service(s) => s.spec.selector.clone(),
        Object::AuthorizationPolicy(p) => p.spec.selector.as_ref().map(|s| s.match_labels.clone()),
        Object::ServiceEntry(se) => se.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        _ => None,
    }
}

impl Index {
    pub fn new(mesh: MeshSettings) -> Self {
        Index {
            store: Store::default(),
            mesh,
            emitted: HashMap::new(),
            producers: HashMap::new(),
            warnings: BTreeMap::new(),
            allocated: BTreeMap::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    /// Translation warnings per object.
    pub fn warnings(&self) -> &BTreeMap<ObjectKey, Vec<String>> {
        &self.warnings
    }

    /// Applies a batch of events and returns the resource changes they cause.
    pub fn apply(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut dirty = Dirty::default();
        for event in events {
            let (key, previous) = match event {
                Event::Apply(object) => {
                    let key = object.key();
                    (key, self.store.upsert(*object))
                }
                Event::Delete(key) => {
                    let previous = self.store.remove(&key);
                    (key, previous)
                }
                Event::Synced => continue,
            };
            let current = self.store.get(&key);
            // Unchanged objects (a re-read file, a resync) cost nothing downstream.
            if previous.as_ref() == current {
                continue;
            }
            self.mark(&mut dirty, &key, previous.as_ref(), current);
        }
        let mut changes = self.recompute(dirty);
        // One change per resource: when an output is touched twice in a batch (an owner gone,
        // another owner recomputed), the last word is the one that stands.
        let mut seen = std::collections::HashSet::new();
        let mut last_first: Vec<Change> = Vec::with_capacity(changes.len());
        while let Some(c) = changes.pop() {
            if seen.insert((c.type_url, c.name.clone())) {
                last_first.push(c);
            }
        }
        last_first.reverse();
        last_first
    }

    fn mark(&self, dirty: &mut Dirty, key: &ObjectKey, previous: Option<&Object>, current: Option<&Object>) {
        let ns = &key.namespace;
        // What an ingress gateway's configuration or status reads.
        if crate::translate::ingress::config_reads(key.kind) {
            dirty.ingress = true;
        }
        match key.kind {
            Kind::Pod => {
                dirty.pods.insert(key.clone());
                // DestinationRule subsets list the pods their labels select: a pod's arrival,
                // departure or relabelling changes them (its status alone does not).
                fn labels(o: Option<&Object>) -> Option<&Labels> {
                    match o {
                        Some(Object::Pod(p)) => Some(&p.metadata.labels),
                        _ => None,
                    }
                }
                let subsets = || {
                    self.store.list(Kind::DestinationRule, None).any(|o| match o {
                        Object::DestinationRule(dr) => !dr.spec.subsets.is_empty(),
                        _ => false,
                    })
                };
                if (previous.is_none() || current.is_none() || labels(previous) != labels(current)) && subsets() {
                    // The Services selecting it before or after: their subsets may change.
                    for o in self.store.list(Kind::Service, Some(ns)) {
                        let Object::Service(svc) = o else { continue };
                        let Some(sel) = svc.spec.selector.as_ref().filter(|s| !s.is_empty()) else { continue };
                        if [labels(previous), labels(current)].into_iter().flatten().any(|l| selects(sel, l)) {
                            dirty.objects.insert(o.key());
                        }
                    }
                }
            }
            Kind::Namespace => {
                dirty.pods_matching(&key.name, None);
                dirty.services_in.insert(key.name.clone());
            }
            Kind::Service => {
                dirty.objects.insert(key.clone());
                // ServiceEntries leave out addresses that are Services' cluster IPs.
                dirty.objects.extend(self.store.list(Kind::ServiceEntry, None).map(Object::key));
                for sel in [previous, current].into_iter().flatten().filter_map(selector_of) {
                    if !sel.is_empty() {
                        dirty.pods_matching(ns, Some(sel));
                    }
                }
            }
            Kind::ServiceEntry => {
                dirty.objects.insert(key.clone());
                // Entries sharing an address: the oldest keeps it, so every entry is looked at.
                dirty.objects.extend(self.store.list(Kind::ServiceEntry, None).map(Object::key));
                // Pods it selects serve its hosts.
                for sel in [previous, current].into_iter().flatten().filter_map(selector_of) {
                    if !sel.is_empty() {
                        dirty.pods_matching(ns, Some(sel));
                    }
                }
            }
            Kind::AuthorizationPolicy => {
                dirty.objects.insert(key.clone());
                // Policies targeting a service or a waypoint are part of services' L7 config.
                let targeted = [previous, current].into_iter().flatten().any(|o| match o {
                    Object::AuthorizationPolicy(p) => p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty(),
                    _ => false,
                });
                if targeted {
                    dirty.services_in.insert(ns.clone());
                    // A Gateway (or, from the root namespace, GatewayClass) target reaches the
                    // services bound to that waypoint, in whichever namespace they are.
                    let gateway_targeted = [previous, current].into_iter().flatten().any(|o| match o {
                        Object::AuthorizationPolicy(p) => {
                            p.spec.target_refs.iter().chain(p.spec.target_ref.iter()).any(|t| t.kind != "Service")
                        }
                        _ => false,
                    });
                    if gateway_targeted {
                        dirty.all_services = true;
                    }
                }
                for sel in [previous, current].into_iter().flatten().filter_map(selector_of) {
                    if **ns == *self.mesh.root_namespace {
                        dirty.all_pods = true;
                    } else {
                        dirty.pods_matching(ns, Some(sel));
                    }
                }
            }
            Kind::Sidecar => {
                // Its outbound traffic policy is on the workloads it applies to.
                if **ns == *self.mesh.root_namespace {
                    dirty.all_pods = true;
                } else {
                    dirty.pods_matching(ns, None);
                }
            }
            Kind::PeerAuthentication => {
                dirty.peer_authn = true;
                if **ns == *self.mesh.root_namespace {
                    dirty.all_pods = true;
                } else {
                    dirty.pods_matching(ns, None);
                }
            }
            Kind::Gateway => {
                dirty.all_pods = true;
                dirty.all_services = true;
                // Gone: its configuration goes with it.
                dirty.objects.insert(key.clone());
            }
            Kind::RateLimitPolicy => {
                dirty.services_in.insert(ns.clone());
                // A Gateway target reaches the services bound to that waypoint.
                if [previous, current].into_iter().flatten().any(|o| match o {
                    Object::RateLimitPolicy(p) => p.spec.target_refs.iter().any(|t| t.kind != "Service"),
                    _ => false,
                }) {
                    dirty.all_services = true;
                }
            }
            Kind::RequestAuthentication => {
                dirty.services_in.insert(ns.clone());
                // As for AuthorizationPolicy: a waypoint target reaches other namespaces' services.
                if [previous, current].into_iter().flatten().any(|o| match o {
                    Object::RequestAuthentication(ra) => {
                        ra.spec.target_refs.iter().chain(ra.spec.target_ref.iter()).any(|t| t.kind != "Service")
                    }
                    _ => false,
                }) {
                    dirty.all_services = true;
                }
            }
            Kind::DestinationRule | Kind::VirtualService => {
                // Its hosts are services; short names and FQDNs of this namespace (or any).
                dirty.services_in.insert(ns.clone());
                for o in [previous, current].into_iter().flatten() {
                    let hosts: Vec<&String> = match o {
                        Object::DestinationRule(dr) => vec![&dr.spec.host],
                        Object::VirtualService(vs) => vs.spec.hosts.iter().collect(),
                        _ => continue,
                    };
                    for other in hosts.iter().filter_map(|h| h.split('.').nth(1)) {
                        dirty.services_in.insert(other.into());
                    }
                    // A ServiceEntry's host is any name: its entry may be in any namespace.
                    for se in self.store.list(Kind::ServiceEntry, None) {
                        if let Object::ServiceEntry(e) = se {
                            if e.spec.hosts.iter().any(|h| hosts.iter().any(|d| d.eq_ignore_ascii_case(h))) {
                                dirty.objects.insert(se.key());
                            }
                        }
                    }
                }
            }
            Kind::HttpRoute | Kind::GrpcRoute => {
                // The services it names as parents (old and new), in whichever namespaces.
                dirty.services_in.insert(ns.clone());
                for o in [previous, current].into_iter().flatten() {
                    let parents = match o {
                        Object::HttpRoute(r) => &r.spec.parent_refs,
                        Object::GrpcRoute(r) => &r.spec.parent_refs,
                        _ => continue,
                    };
                    for p in parents {
                        if let Some(parent_ns) = &p.namespace {
                            dirty.services_in.insert(parent_ns.as_str().into());
                        }
                    }
                }
            }
            Kind::Node => {
                // Its topology labels are its pods' locality (its other changes are not).
                let topology = |o: Option<&Object>| -> Vec<Option<String>> {
                    let labels = o.map(|o| &o.meta().labels);
                    [
                        crate::model::keys::TOPOLOGY_REGION,
                        crate::model::keys::TOPOLOGY_ZONE,
                        crate::model::keys::TOPOLOGY_SUBZONE,
                    ]
                    .iter()
                    .map(|k| labels.and_then(|l| l.get(*k)).cloned())
                    .collect()
                };
                if topology(previous) == topology(current) {
                    return;
                }
                for pod in self.store.pods(None) {
                    if pod.spec.node_name.as_deref() == Some(&*key.name) {
                        dirty.pods.insert(ObjectKey {
                            kind: Kind::Pod,
                            namespace: pod.metadata.namespace.as_deref().unwrap_or_default().into(),
                            name: pod.metadata.name.as_str().into(),
                        });
                    }
                }
            }
            Kind::ServiceAccount | Kind::Secret | Kind::ReferenceGrant | Kind::TlsRoute | Kind::TcpRoute => {}
        }
    }

    fn recompute(&mut self, dirty: Dirty) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut pods: BTreeSet<ObjectKey> = dirty.pods;
        if dirty.all_pods {
            pods.extend(self.store.list(Kind::Pod, None).map(Object::key));
        } else {
            for (ns, selectors) in &dirty.pods_in {
                for object in self.store.list(Kind::Pod, Some(ns)) {
                    let Object::Pod(p) = object else { continue };
                    let hit = selectors.as_ref().is_none_or(|sels| sels.iter().any(|s| selects(s, &p.metadata.labels)));
                    if hit {
                        pods.insert(object.key());
                    }
                }
            }
        }
        let mut objects = dirty.objects;
        let service_kinds = [Kind::Service, Kind::ServiceEntry];
        if dirty.all_services {
            for kind in service_kinds {
                objects.extend(self.store.list(kind, None).map(Object::key));
            }
        } else {
            for ns in &dirty.services_in {
                for kind in service_kinds {
                    objects.extend(self.store.list(kind, Some(ns)).map(Object::key));
                }
            }
        }
        if dirty.ingress {
            objects.extend(
                self.store
                    .list(Kind::Gateway, None)
                    .filter(|o| matches!(o, Object::Gateway(g) if is_ingress(g)))
                    .map(Object::key),
            );
        }
        if objects.iter().any(|k| k.kind == Kind::ServiceEntry) {
            self.allocated = allocations(&self.store, &self.mesh.auto_allocate);
        }
        for key in pods.iter().chain(objects.iter()) {
            let outputs = self.translate(key);
            self.replace_outputs(key.clone(), outputs, &mut changes);
        }
        if dirty.peer_authn {
            let outputs = self.peer_authn_outputs();
            self.replace_outputs(mesh_owner(), outputs, &mut changes);
        }
        changes
    }

    /// Everything one object produces now (empty when it is gone or produces nothing).
    fn translate(&mut self, key: &ObjectKey) -> Vec<Change> {
        let Some(object) = self.store.get(key) else {
            self.warnings.remove(key);
            return Vec::new();
        };
        let mesh = &self.mesh;
        match object {
            Object::Pod(p) => translate_pod(p, &self.store, mesh)
                .map(|w| {
                    let addr = Address { r#type: Some(address::Type::Workload(w)) };
                    let name = workload_uid(mesh, &key.namespace, &key.name);
                    vec![Change { type_url: ADDRESS, name, body: Some(any(ADDRESS, &addr)) }]
                })
                .unwrap_or_default(),
            Object::Service(s) => translate_service(s, &self.store, mesh)
                .map(|svc| {
                    let name = service_resource_name(&svc.namespace, &svc.hostname);
                    let bound = svc.waypoint.is_some();
                    let addr = Address { r#type: Some(address::Type::Service(svc)) };
                    let mut out =
                        vec![Change { type_url: ADDRESS, name: name.clone(), body: Some(any(ADDRESS, &addr)) }];
                    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                    let gw = waypoint_gateway(&s.metadata.labels, ns, false, &self.store).filter(|_| bound);
                    if let Some(gw) = gw {
                        let config = service_config(s, gw, &self.store, mesh);
                        out.push(Change {
                            type_url: WAYPOINT_SERVICE,
                            name,
                            body: Some(any(WAYPOINT_SERVICE, &config)),
                        });
                    } else if let Some(own) = own_waypoint(s, &self.store) {
                        // A waypoint's own Service: its configuration for the workloads it
                        // serves (policies targeting its Gateway).
                        let config = waypoint_self_config(s, own, &self.store, mesh);
                        out.push(Change {
                            type_url: WAYPOINT_SERVICE,
                            name,
                            body: Some(any(WAYPOINT_SERVICE, &config)),
                        });
                    }
                    out
                })
                .unwrap_or_default(),
            Object::ServiceEntry(se) => {
                let se = &*without_service_hosts(se, &self.store, mesh);
                translate_service_entry(se, &self.store, mesh, &self.allocated)
                    .into_iter()
                    .flat_map(|svc| {
                        let name = service_resource_name(&svc.namespace, &svc.hostname);
                        let bound = svc.waypoint.is_some();
                        let host = svc.hostname.clone();
                        let addr = Address { r#type: Some(address::Type::Service(svc)) };
                        let mut out =
                            vec![Change { type_url: ADDRESS, name: name.clone(), body: Some(any(ADDRESS, &addr)) }];
                        // Egress through a waypoint: the waypoint needs the host's configuration.
                        let ns = se.metadata.namespace.as_deref().unwrap_or_default();
                        let gw = waypoint_gateway(&se.metadata.labels, ns, false, &self.store).filter(|_| bound);
                        if let Some(gw) = gw {
                            let config = service_entry_config(se, &host, gw, &self.store, mesh);
                            out.push(Change {
                                type_url: WAYPOINT_SERVICE,
                                name,
                                body: Some(any(WAYPOINT_SERVICE, &config)),
                            });
                        }
                        out
                    })
                    .chain(service_entry_endpoints(se, mesh).into_iter().map(|w| {
                        let name = w.uid.clone();
                        let addr = Address { r#type: Some(address::Type::Workload(w)) };
                        Change { type_url: ADDRESS, name, body: Some(any(ADDRESS, &addr)) }
                    }))
                    .collect()
            }
            Object::AuthorizationPolicy(p) => {
                let translated = authz::translate_policy(p, mesh);
                if translated.warnings.is_empty() {
                    self.warnings.remove(key);
                } else {
                    for w in &translated.warnings {
                        tracing::warn!(object = %key, warning = %w, "authorization policy translated with loss");
                    }
                    self.warnings.insert(key.clone(), translated.warnings);
                }
                translated
                    .authorization
                    .map(|a| {
                        let name = format!("{}/{}", a.namespace, a.name);
                        vec![Change { type_url: AUTHORIZATION, name, body: Some(any(AUTHORIZATION, &a)) }]
                    })
                    .unwrap_or_default()
            }
            Object::Gateway(g) if is_ingress(g) => {
                let ingress = crate::translate::ingress::translate(g, &self.store, mesh);
                vec![Change {
                    type_url: GATEWAY,
                    name: gateway_resource(&key.namespace, &key.name),
                    body: Some(any(GATEWAY, &ingress.config)),
                }]
            }
            _ => Vec::new(),
        }
    }

    /// The static STRICT policy (when any PeerAuthentication exists) and the converted
    /// port-level policies.
    fn peer_authn_outputs(&self) -> Vec<Change> {
        let mut out = Vec::new();
        let all: Vec<_> = self.store.peer_authentications(None).collect();
        if all.is_empty() {
            return out;
        }
        let strict = authz::static_strict(&self.mesh);
        out.push(Change {
            type_url: AUTHORIZATION,
            name: format!("{}/{}", strict.namespace, strict.name),
            body: Some(any(AUTHORIZATION, &strict)),
        });
        // Workload-level policies with port-level settings, judged against the same inherited
        // chain a pod of that namespace gets (so the published policy is the one pods name).
        let workload_level = |p: &&&crate::model::PeerAuthentication| {
            p.spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty()) && !p.spec.port_level_mtls.is_empty()
        };
        for pa in all.iter().filter(workload_level) {
            let ns = pa.metadata.namespace.as_deref().unwrap_or_default();
            if ns == self.mesh.root_namespace {
                continue;
            }
            let (mesh_pa, namespace_pa) = inherited_peer_authn(ns, &self.store, &self.mesh);
            let chain = PeerAuthnChain { mesh: mesh_pa, namespace: namespace_pa, workload: Some(pa) };
            if let Some(converted) = peer_authn_outcome(&chain).converted {
                out.push(Change {
                    type_url: AUTHORIZATION,
                    name: format!("{}/{}", converted.namespace, converted.name),
                    body: Some(any(AUTHORIZATION, &converted)),
                });
            }
        }
        out
    }

    fn replace_outputs(&mut self, owner: ObjectKey, outputs: Vec<Change>, changes: &mut Vec<Change>) {
        let names: Vec<(&'static str, String)> = outputs.iter().map(|c| (c.type_url, c.name.clone())).collect();
        let previous = if names.is_empty() {
            self.emitted.remove(&owner)
        } else {
            self.emitted.insert(owner.clone(), names.clone())
        };
        for output in &names {
            self.producers.entry(output.clone()).or_default().insert(owner.clone());
        }
        for (type_url, name) in previous.unwrap_or_default() {
            if names.iter().any(|(t, n)| *t == type_url && *n == name) {
                continue;
            }
            let key = (type_url, name);
            let others = match self.producers.get_mut(&key) {
                Some(set) => {
                    set.remove(&owner);
                    set.iter().next().cloned()
                }
                None => None,
            };
            match others {
                // Another object still produces it: publish that one's version.
                Some(other) => changes
                    .extend(self.translate(&other).into_iter().filter(|c| c.type_url == key.0 && c.name == key.1)),
                None => {
                    self.producers.remove(&key);
                    changes.push(Change { type_url: key.0, name: key.1, body: None });
                }
            }
        }
        changes.extend(outputs);
    }
}

#[cfg(test)]
mod tests;

/// The waypoint Gateway whose own Service `s` is (deployed for it, in its namespace).
fn own_waypoint<'s>(s: &crate::model::Service, store: &'s Store) -> Option<&'s crate::model::Gateway> {
    let name = s.metadata.labels.get(crate::model::keys::GATEWAY_NAME)?;
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    store.gateway(ns, name).filter(|gw| {
        crate::model::WAYPOINT_CLASSES.contains(&gw.spec.gateway_class_name.as_str()) && *name == s.metadata.name
    })
}
