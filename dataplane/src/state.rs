//! The proxies' view of the mesh, from the controller over xDS: workloads, services and
//! authorization policies, indexed for the per-connection look-ups (by address, by VIP, by
//! name) so a connection costs hash look-ups, never a scan.
//!
//! `Updater` is the xDS handler that keeps it current; when the controller is away the last
//! state keeps serving. Decisions (where to send a connection, which endpoint) read it through
//! `State`'s methods. Evaluating policies is not done here: ztunnel's `rbac` reads them
//! through [`State::policies_for`]; the waypoint evaluates its own L7 policies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use ambit_shared::proto::security::Authorization;
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_shared::proto::workload::{self as pb, address};
use ambit_shared::xds::{self, Rejection, Update};
use ambit_shared::Identity;

/// Network name + address: workloads and VIPs are unique per network.
pub type NetworkAddr = (Arc<str>, IpAddr);

/// A workload as ztunnel uses it.
#[derive(Debug, Clone)]
pub struct Workload {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub addresses: Vec<IpAddr>,
    pub network: Arc<str>,
    pub hbone: bool,
    pub identity: Identity,
    pub node: Arc<str>,
    pub waypoint: Option<pb::GatewayAddress>,
    /// `ns/hostname` → ports.
    pub services: HashMap<Arc<str>, Vec<pb::Port>>,
    pub policies: Vec<Arc<str>>,
    pub healthy: bool,
    pub capacity: u32,
    /// Outbound connections only to the registry (`REGISTRY_ONLY_EXTENSION`).
    pub registry_only: bool,
    /// On its node's network (`hostNetwork`): its address is the node's, shared with
    /// everything else the node runs.
    pub host_network: bool,
    /// A name to resolve per connection (a DNS ServiceEntry's endpoint), for a workload
    /// outside the mesh without addresses.
    pub hostname: Option<Arc<str>>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub workload_name: Arc<str>,
    pub cluster_id: Arc<str>,
    /// Where it runs (from its node's topology labels): region, zone, subzone.
    pub locality: [Arc<str>; 3],
}

/// A service as ztunnel uses it.
#[derive(Debug, Clone)]
pub struct Service {
    /// `ns/hostname`: the resource name and the key in workloads' `services`.
    pub key: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub hostname: Arc<str>,
    pub vips: Vec<NetworkAddr>,
    pub ports: Vec<pb::Port>,
    pub waypoint: Option<pb::GatewayAddress>,
    pub subject_alt_names: Vec<Identity>,
    /// Send to unhealthy endpoints too (`publishNotReadyAddresses`).
    pub allow_unhealthy: bool,
    /// No endpoint selection: connections go to the address they were made to (a
    /// ServiceEntry with `resolution: NONE`, load-balancing mode `PASSTHROUGH`).
    pub passthrough: bool,
    /// Ingress gateways send its traffic through its waypoint (`istio.io/ingress-use-waypoint`).
    pub ingress_use_waypoint: bool,
    /// Endpoints close to the client first (`trafficDistribution: PreferClose`,
    /// `internalTrafficPolicy: Local`): the scopes in order, and whether only endpoints
    /// matching all of them may be chosen (`STRICT`) or the closest available (`FAILOVER`).
    pub routing: Option<Routing>,
}

/// An xDS resource the data path cannot use, named by kind and name.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {problem}")]
pub struct StateError {
    /// Which kind of resource was refused.
    pub kind: ResourceKind,
    /// Its xDS name (a workload's uid, a service's `namespace/hostname`).
    pub name: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// The kinds of resources the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Workload,
    Service,
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResourceKind::Workload => "workload",
            ResourceKind::Service => "service",
        })
    }
}

/// Why a resource was refused.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("uid is empty")]
    EmptyUid,
    #[error("address of {0} bytes")]
    AddressLength(usize),
    #[error("VIP of {0} bytes")]
    VipLength(usize),
    #[error(transparent)]
    Identity(#[from] ambit_shared::identity::IdentityError),
}

/// An IP from its raw bytes (4 or 16).
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

impl TryFrom<pb::Workload> for Workload {
    type Error = StateError;

    /// Converts the xDS message, validating what the data path relies on.
    fn try_from(w: pb::Workload) -> Result<Self, StateError> {
        let err = |problem: Problem| StateError { kind: ResourceKind::Workload, name: w.uid.clone(), problem };
        if w.uid.is_empty() {
            return Err(err(Problem::EmptyUid));
        }
        let addresses = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes(a).ok_or_else(|| err(Problem::AddressLength(a.len()))))
            .collect::<Result<Vec<_>, _>>()?;
        let td = if w.trust_domain.is_empty() { "cluster.local" } else { &w.trust_domain };
        let sa = if w.service_account.is_empty() { "default" } else { &w.service_account };
        let identity = Identity::new(td, &w.namespace, sa).map_err(|e| err(e.into()))?;
        Ok(Workload {
            uid: w.uid.as_str().into(),
            name: w.name.as_str().into(),
            namespace: w.namespace.as_str().into(),
            addresses,
            network: w.network.as_str().into(),
            hbone: w.tunnel_protocol == pb::TunnelProtocol::Hbone as i32,
            identity,
            node: w.node.as_str().into(),
            waypoint: w.waypoint,
            services: w.services.into_iter().map(|(k, v)| (Arc::from(k.as_str()), v.ports)).collect(),
            policies: w.authorization_policies.iter().map(|p| Arc::from(p.as_str())).collect(),
            healthy: w.status == pb::WorkloadStatus::Healthy as i32,
            capacity: w.capacity.unwrap_or(1).max(1),
            registry_only: w.extensions.iter().any(|e| e.name == ambit_shared::proto::REGISTRY_ONLY_EXTENSION),
            host_network: w.network_mode == pb::NetworkMode::HostNetwork as i32,
            hostname: (!w.hostname.is_empty()).then(|| Arc::from(w.hostname.as_str())),
            canonical_name: w.canonical_name.as_str().into(),
            canonical_revision: w.canonical_revision.as_str().into(),
            locality: {
                let l = w.locality.clone().unwrap_or_default();
                [l.region.as_str().into(), l.zone.as_str().into(), l.subzone.as_str().into()]
            },
            workload_name: w.workload_name.as_str().into(),
            cluster_id: w.cluster_id.as_str().into(),
        })
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = StateError;

    /// Converts the xDS message; the key is `namespace/hostname`.
    fn try_from(s: pb::Service) -> Result<Self, StateError> {
        let key = format!("{}/{}", s.namespace, s.hostname);
        let err = |problem: Problem| StateError { kind: ResourceKind::Service, name: key.clone(), problem };
        let vips = s
            .addresses
            .iter()
            .map(|a| {
                ip_from_bytes(&a.address)
                    .map(|ip| (Arc::from(a.network.as_str()), ip))
                    .ok_or_else(|| err(Problem::VipLength(a.address.len())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // SPIFFE identities only: a ServiceEntry may also list DNS names (for TLS origination
        // elsewhere), which say nothing about mesh peers; they are skipped, not fatal.
        let subject_alt_names = s.subject_alt_names.iter().filter_map(|n| n.parse::<Identity>().ok()).collect();
        let allow_unhealthy = s
            .load_balancing
            .as_ref()
            .is_some_and(|lb| lb.health_policy == pb::load_balancing::HealthPolicy::AllowAll as i32);
        let passthrough =
            s.load_balancing.as_ref().is_some_and(|lb| lb.mode == pb::load_balancing::Mode::Passthrough as i32);
        Ok(Service {
            key: key.as_str().into(),
            name: s.name.as_str().into(),
            namespace: s.namespace.as_str().into(),
            hostname: s.hostname.as_str().into(),
            vips,
            ports: s.ports,
            waypoint: s.waypoint,
            subject_alt_names,
            allow_unhealthy,
            passthrough,
            ingress_use_waypoint: s.ingress_use_waypoint,
            routing: s.load_balancing.as_ref().and_then(Routing::of),
        })
    }
}

/// A service's locality preference, as its `LoadBalancing` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub scopes: Vec<pb::load_balancing::Scope>,
    pub strict: bool,
}

impl Routing {
    fn of(lb: &pb::LoadBalancing) -> Option<Self> {
        use pb::load_balancing::{Mode, Scope};
        let strict = match lb.mode() {
            Mode::Strict => true,
            Mode::Failover => false,
            Mode::UnspecifiedMode | Mode::Passthrough => return None,
        };
        let scopes: Vec<Scope> = lb
            .routing_preference
            .iter()
            .filter_map(|s| Scope::try_from(*s).ok())
            .filter(|s| *s != Scope::UnspecifiedScope)
            .collect();
        (!scopes.is_empty()).then_some(Routing { scopes, strict })
    }

    /// How many of the scopes, in order, `endpoint` shares with `client` before the first it
    /// does not.
    fn rank(&self, client: &Workload, endpoint: &Workload) -> usize {
        use pb::load_balancing::Scope;
        self.scopes
            .iter()
            .take_while(|scope| match scope {
                Scope::Region => client.locality[0] == endpoint.locality[0],
                Scope::Zone => client.locality[..2] == endpoint.locality[..2],
                Scope::Subzone => client.locality == endpoint.locality,
                Scope::Node => !client.node.is_empty() && client.node == endpoint.node,
                Scope::Cluster => client.cluster_id == endpoint.cluster_id,
                Scope::Network => client.network == endpoint.network,
                Scope::UnspecifiedScope => true,
            })
            .count()
    }

    /// The endpoints a client may be sent to: those matching every scope (`STRICT`), or those
    /// sharing the most leading scopes with it (`FAILOVER`: the closest that are there). An
    /// unknown client gets none under `STRICT`, any under `FAILOVER`.
    pub fn prefer(&self, client: Option<&Workload>, endpoints: Vec<(Arc<Workload>, u16)>) -> Vec<(Arc<Workload>, u16)> {
        let Some(client) = client else {
            return if self.strict { Vec::new() } else { endpoints };
        };
        let ranked: Vec<(usize, (Arc<Workload>, u16))> =
            endpoints.into_iter().map(|e| (self.rank(client, &e.0), e)).collect();
        let best = if self.strict { self.scopes.len() } else { ranked.iter().map(|(r, _)| *r).max().unwrap_or(0) };
        ranked.into_iter().filter(|(r, _)| *r == best).map(|(_, e)| e).collect()
    }
}

impl Workload {
    /// Reached by resolving its hostname: outside the mesh, no address, a name.
    pub fn resolvable(&self) -> bool {
        !self.hbone && self.addresses.is_empty() && self.hostname.is_some()
    }
}

impl Service {
    /// The target port for `port` on `workload` (the workload's own mapping wins; 0 means
    /// "same as the service port").
    pub fn target_port(&self, port: u16, workload: &Workload) -> Option<u16> {
        let from = |ports: &[pb::Port]| {
            ports.iter().find(|p| p.service_port == u32::from(port)).map(|p| {
                if p.target_port == 0 {
                    port
                } else {
                    u16::try_from(p.target_port).unwrap_or(port)
                }
            })
        };
        match workload.services.get(&self.key) {
            Some(ports) => from(ports),
            None => from(&self.ports),
        }
    }
}

/// Where an outbound connection's original destination points.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A service VIP and port.
    Service { service: Arc<Service>, port: u16 },
    /// A known workload's own address.
    Workload(Arc<Workload>),
    /// Nothing we know: outside the mesh.
    Passthrough,
}

/// The indexed state.
#[derive(Debug, Default)]
pub struct State {
    workloads: HashMap<Arc<str>, Arc<Workload>>,
    /// network → address → workload: looked up with a borrowed network name, no allocation.
    workload_by_addr: HashMap<Arc<str>, HashMap<IpAddr, Arc<Workload>>>,
    services: HashMap<Arc<str>, Arc<Service>>,
    service_by_vip: HashMap<Arc<str>, HashMap<IpAddr, Arc<Service>>>,
    /// lowercase hostname (a wildcard as written, `*.example.com`) → keys of the services
    /// with it (a host can be declared in several namespaces), for the DNS proxy.
    service_by_host: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// service key → uids of workloads that serve it.
    endpoints: HashMap<Arc<str>, HashSet<Arc<str>>>,
    policies: HashMap<Arc<str>, Arc<Authorization>>,
    namespace_policies: HashMap<Arc<str>, HashSet<Arc<str>>>,
    global_policies: HashSet<Arc<str>>,
}

impl State {
    pub fn insert_workload(&mut self, w: Workload) {
        // The new version takes its addresses back right away: no successor is looked for.
        self.remove_workload_keeping(&w.uid.clone(), &w.network, &w.addresses);
        let w = Arc::new(w);
        let by_ip = self.workload_by_addr.entry(w.network.clone()).or_default();
        for ip in &w.addresses {
            // Two workloads claiming one address (a ServiceEntry endpoint naming a pod's IP, a
            // pod replaced mid-churn): a mesh (HBONE) workload keeps it, so no other object can
            // turn traffic to a meshed pod into plaintext.
            if by_ip.get(ip).is_some_and(|current| current.hbone && !w.hbone) {
                continue;
            }
            by_ip.insert(*ip, w.clone());
        }
        for svc in w.services.keys() {
            self.endpoints.entry(svc.clone()).or_default().insert(w.uid.clone());
        }
        self.workloads.insert(w.uid.clone(), w);
    }

    pub fn remove_workload(&mut self, uid: &str) -> bool {
        self.remove_workload_keeping(uid, "", &[])
    }

    /// Removes `uid`; an address it held passes to another workload claiming it, unless it is
    /// among `kept` on `kept_network` (about to be claimed again by the workload's new version).
    fn remove_workload_keeping(&mut self, uid: &str, kept_network: &str, kept: &[IpAddr]) -> bool {
        let Some(w) = self.workloads.remove(uid) else { return false };
        if let Some(by_ip) = self.workload_by_addr.get_mut(&w.network) {
            for ip in &w.addresses {
                if by_ip.get(ip).is_some_and(|other| *other.uid == *uid) {
                    by_ip.remove(ip);
                    if *w.network == *kept_network && kept.contains(ip) {
                        continue;
                    }
                    // Another workload with the address takes it over (a mesh one first).
                    let next = self
                        .workloads
                        .values()
                        .filter(|o| o.network == w.network && o.addresses.contains(ip))
                        .max_by_key(|o| o.hbone);
                    if let Some(next) = next {
                        by_ip.insert(*ip, next.clone());
                    }
                }
            }
        }
        for svc in w.services.keys() {
            if let Some(set) = self.endpoints.get_mut(svc) {
                set.remove(uid);
                if set.is_empty() {
                    self.endpoints.remove(svc);
                }
            }
        }
        true
    }

    pub fn insert_service(&mut self, s: Service) {
        // The new version takes its addresses back right away: no successor is looked for.
        let kept = s.vips.clone();
        self.remove_service_keeping(&s.key.clone(), &kept);
        let s = Arc::new(s);
        for (network, ip) in &s.vips {
            self.service_by_vip.entry(network.clone()).or_default().insert(*ip, s.clone());
        }
        self.service_by_host.entry(Arc::from(s.hostname.to_ascii_lowercase())).or_default().insert(s.key.clone());
        self.services.insert(s.key.clone(), s);
    }

    pub fn remove_service(&mut self, key: &str) -> bool {
        self.remove_service_keeping(key, &[])
    }

    fn remove_service_keeping(&mut self, key: &str, kept: &[NetworkAddr]) -> bool {
        let Some(s) = self.services.remove(key) else { return false };
        let host = s.hostname.to_ascii_lowercase();
        if let Some(keys) = self.service_by_host.get_mut(host.as_str()) {
            keys.remove(key);
            if keys.is_empty() {
                self.service_by_host.remove(host.as_str());
            }
        }
        for (network, ip) in &s.vips {
            if let Some(by_ip) = self.service_by_vip.get_mut(network) {
                if by_ip.get(ip).is_some_and(|other| *other.key == *key) {
                    by_ip.remove(ip);
                    if kept.iter().any(|(n, v)| n == network && v == ip) {
                        continue;
                    }
                    // Another service claiming the address (two ServiceEntries naming one VIP)
                    // keeps it reachable instead of it falling out of the registry.
                    let next = self
                        .services
                        .values()
                        .filter(|o| o.vips.iter().any(|(n, v)| n == network && v == ip))
                        .min_by(|a, b| a.key.cmp(&b.key));
                    if let Some(next) = next {
                        by_ip.insert(*ip, next.clone());
                    }
                }
            }
        }
        true
    }

    pub fn insert_policy(&mut self, p: Authorization) {
        let name: Arc<str> = format!("{}/{}", p.namespace, p.name).into();
        self.remove_policy(&name.clone());
        use ambit_shared::proto::security::Scope;
        match Scope::try_from(p.scope).unwrap_or(Scope::WorkloadSelector) {
            Scope::Global => {
                self.global_policies.insert(name.clone());
            }
            Scope::Namespace => {
                self.namespace_policies.entry(p.namespace.as_str().into()).or_default().insert(name.clone());
            }
            Scope::WorkloadSelector => {}
        }
        self.policies.insert(name, Arc::new(p));
    }

    pub fn remove_policy(&mut self, name: &str) -> bool {
        let Some(p) = self.policies.remove(name) else { return false };
        self.global_policies.remove(name);
        if let Some(set) = self.namespace_policies.get_mut(p.namespace.as_str()) {
            set.remove(name);
        }
        true
    }

    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_addr.get(network).and_then(|m| m.get(&ip))
    }

    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The services with exactly the hostname `host` (lowercase; a wildcard host as written,
    /// `*.example.com`), in key order: the DNS proxy's index.
    pub fn services_with_host(&self, host: &str) -> Vec<&Arc<Service>> {
        self.service_by_host
            .get(host)
            .map(|keys| keys.iter().filter_map(|k| self.services.get(k)).collect())
            .unwrap_or_default()
    }

    /// The workloads serving `service` (any health), for names without a virtual address.
    pub fn endpoint_workloads(&self, service: &Service) -> impl Iterator<Item = &Arc<Workload>> {
        self.endpoints.get(&service.key).into_iter().flatten().filter_map(|uid| self.workloads.get(uid))
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    /// Workloads serving the service `key`, healthy or not.
    pub fn endpoint_count(&self, key: &str) -> usize {
        self.endpoints.get(key).map_or(0, HashSet::len)
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.workloads.len(), self.services.len(), self.policies.len())
    }

    /// What an original destination address means (from a pod on `network`).
    pub fn destination(&self, network: &str, dst: SocketAddr) -> Destination {
        if let Some(svc) = self.service_by_vip.get(network).and_then(|m| m.get(&dst.ip())) {
            return Destination::Service { service: svc.clone(), port: dst.port() };
        }
        match self.workload_by_addr(network, dst.ip()) {
            Some(w) => Destination::Workload(w.clone()),
            None => Destination::Passthrough,
        }
    }

    /// Endpoints of a service that can take a connection on `port`: healthy (unless the
    /// service allows otherwise) and mapping the port.
    pub fn endpoints(&self, service: &Service, port: u16) -> Vec<(Arc<Workload>, u16)> {
        self.endpoints_where(service, port, |_| true)
    }

    /// [`State::endpoints_on`], closest to `client` first when the service prefers close
    /// endpoints ([`Routing::prefer`]).
    pub fn endpoints_for(
        &self,
        service: &Service,
        port: u16,
        network: &str,
        client: Option<&Workload>,
    ) -> Vec<(Arc<Workload>, u16)> {
        let endpoints = self.endpoints_on(service, port, network);
        match &service.routing {
            Some(routing) => routing.prefer(client, endpoints),
            None => endpoints,
        }
    }

    /// [`State::endpoints`] on one network only: a proxy dials endpoints directly, so one on
    /// another network (reachable only through its gateway) is never a candidate.
    pub fn endpoints_on(&self, service: &Service, port: u16, network: &str) -> Vec<(Arc<Workload>, u16)> {
        self.endpoints_where(service, port, |w| *w.network == *network)
    }

    fn endpoints_where(
        &self,
        service: &Service,
        port: u16,
        keep: impl Fn(&Workload) -> bool,
    ) -> Vec<(Arc<Workload>, u16)> {
        let Some(uids) = self.endpoints.get(&service.key) else { return Vec::new() };
        uids.iter()
            .filter_map(|uid| self.workloads.get(uid))
            .filter(|w| keep(w))
            // A pod scheduled but without an address yet cannot take a connection; an endpoint
            // outside the mesh known by name is resolved when connected to.
            .filter(|w| (w.healthy || service.allow_unhealthy) && (!w.addresses.is_empty() || w.resolvable()))
            .filter_map(|w| service.target_port(port, w).map(|p| (w.clone(), p)))
            .collect()
    }

    /// The policies that apply to connections to `destination`: global ones, its namespace's,
    /// and the ones it names. A named policy that has not arrived is `Err(name)`, so the
    /// evaluator can fail closed on it.
    pub fn policies_for<'s>(
        &'s self,
        destination: &'s Workload,
    ) -> impl Iterator<Item = Result<&'s Authorization, &'s str>> + 's {
        let named = destination.policies.iter().map(|n| self.policies.get(n).map(|p| &**p).ok_or(&**n));
        let scoped = self
            .global_policies
            .iter()
            .chain(self.namespace_policies.get(&destination.namespace).into_iter().flatten())
            .filter_map(|n| self.policies.get(n).map(|p| Ok(&**p)));
        scoped.chain(named)
    }
}

/// Picks one endpoint, weighted by capacity, spreading evenly over calls.
pub fn pick_endpoint(endpoints: &[(Arc<Workload>, u16)]) -> Option<(Arc<Workload>, u16)> {
    let total: u64 = endpoints.iter().map(|(w, _)| u64::from(w.capacity)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random_u64() % total;
    for (w, port) in endpoints {
        let c = u64::from(w.capacity);
        if point < c {
            return Some((w.clone(), *port));
        }
        point -= c;
    }
    None
}

/// A fast per-thread xorshift seeded from the standard library's per-thread random hasher
/// keys; load spreading needs evenness, not secrecy.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// The xDS handler keeping `State` current. Every applied update bumps `changes`, which the
/// node agent watches to enroll and release pods.
#[derive(Clone)]
pub struct Updater {
    pub state: Arc<RwLock<State>>,
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Updater {
    fn default() -> Self {
        Updater { state: Arc::default(), changes: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl xds::Handler for Updater {
    fn handle(&mut self, update: Update<'_>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        for name in &update.removed {
            let _ = state.remove_workload(name) || state.remove_service(name) || state.remove_policy(name);
        }
        for r in update.added {
            let result = match update.type_url {
                ADDRESS => r.decode::<pb::Address>(ADDRESS).map_err(|e| e.to_string()).and_then(|a| match a.r#type {
                    Some(address::Type::Workload(w)) => {
                        Workload::try_from(w).map(|w| state.insert_workload(w)).map_err(|e| e.to_string())
                    }
                    Some(address::Type::Service(s)) => {
                        Service::try_from(s).map(|s| state.insert_service(s)).map_err(|e| e.to_string())
                    }
                    None => Err("address has neither workload nor service".into()),
                }),
                AUTHORIZATION => {
                    r.decode::<Authorization>(AUTHORIZATION).map(|p| state.insert_policy(p)).map_err(|e| e.to_string())
                }
                other => Err(format!("unexpected type {other}")),
            };
            if let Err(reason) = result {
                rejected.push(Rejection { name: r.name, reason });
            }
        }
        drop(state);
        self.changes.send_modify(|generation| *generation += 1);
        rejected
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
