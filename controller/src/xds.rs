//! The delta ADS server: the published resources with per-resource versions, a change log,
//! debounced push notifications, and one task per subscriber stream that sends each
//! subscriber only what it does not hold.
//!
//! On connect a subscriber gets everything whose version differs from its
//! `initial_resource_versions` and removals for what it holds that no longer exists; after
//! that, on each (debounced) publish, only the resources that changed. ACKs and NACKs are
//! tracked per subscriber and type; a NACK is logged and counted and never blocks others.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ambit_shared::grpc::PeerInfo;
use ambit_shared::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use ambit_shared::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION, WAYPOINT_SERVICE};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Authenticator;
use crate::index::Change;
use crate::metrics::Metrics;

/// Types this server serves.
pub const TYPES: &[&str] = &[ADDRESS, AUTHORIZATION, WAYPOINT_SERVICE];
/// Full-state responses in flight at once. A large response holds its slot until the
/// subscriber ACKs or NACKs it (or `IN_FLIGHT_TIMEOUT` passes), so a connect storm of many
/// subscribers cannot make the controller hold every snapshot in memory at the same time.
const FULL_DIFFS_IN_FLIGHT: usize = 8;
/// Responses with at least this many resources count as large.
const LARGE_RESPONSE: usize = 256;
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response may wait for room in a subscriber's stream.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How many recent changes are kept for incremental pushes; a subscriber further behind gets
/// a full comparison instead.
const LOG_CAPACITY: usize = 200_000;

#[derive(Debug, Clone)]
struct Entry {
    /// The map key again, shared so subscribers remember names without copying them.
    name: Arc<str>,
    version: u64,
    body: prost_types::Any,
}

fn version_string(v: u64) -> String {
    format!("{v:016x}")
}

/// A version a subscriber reports; one we did not issue never equals a current one.
fn parse_version(v: &str) -> u64 {
    if v.len() == 16 {
        u64::from_str_radix(v, 16).unwrap_or(0)
    } else {
        0
    }
}

#[derive(Default)]
struct Resources {
    generation: u64,
    by_type: HashMap<&'static str, BTreeMap<Arc<str>, Entry>>,
    /// (generation, type, name) of every change, oldest first.
    log: VecDeque<(u64, &'static str, String)>,
    /// The newest generation some of whose log entries were trimmed: a subscriber older than
    /// that must compare everything.
    trimmed_through: u64,
    /// When each recent generation was published (for push latency).
    published_at: VecDeque<(u64, Instant)>,
}

/// FNV-1a over the encoded resource: the version is a function of the content, so it survives
/// controller restarts and a reconnecting subscriber holding the same content gets nothing.
fn content_version(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a subscriber is told about one type.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TypeStatus {
    pub resources_sent: usize,
    pub last_nonce_sent: String,
    pub last_acked_nonce: String,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// One connected subscriber, for the admin endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriberStatus {
    pub id: u64,
    pub node: String,
    pub peer: String,
    pub types: BTreeMap<String, TypeStatus>,
    /// name → version held, per type (what the subscriber was sent or said it holds); filled
    /// in only when the admin page asks.
    pub versions: BTreeMap<String, BTreeMap<String, String>>,
}

/// The shared state: resources plus the push signal.
pub struct XdsState {
    resources: RwLock<Resources>,
    dirty: Notify,
    pushed: watch::Sender<u64>,
    /// False until the sources have delivered their initial state; subscribers wait for it.
    synced: watch::Sender<bool>,
    subscribers: Mutex<BTreeMap<u64, Registered>>,
    /// Bounds how many subscribers build a full-state response at once (connect storms after
    /// a controller restart), which bounds the memory those responses take.
    full_diffs: Arc<tokio::sync::Semaphore>,
    next_id: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

impl XdsState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let mut resources = Resources::default();
        for t in TYPES {
            resources.by_type.insert(t, BTreeMap::new());
        }
        let (pushed, _) = watch::channel(0);
        let (synced, _) = watch::channel(false);
        Arc::new(XdsState {
            resources: RwLock::new(resources),
            dirty: Notify::new(),
            pushed,
            synced,
            subscribers: Mutex::default(),
            full_diffs: Arc::new(tokio::sync::Semaphore::new(FULL_DIFFS_IN_FLIGHT)),
            next_id: Default::default(),
            metrics,
        })
    }

    /// Applies changes; unchanged content is not a change. Returns how many changed.
    pub fn publish(&self, changes: Vec<Change>) -> usize {
        let mut r = self.resources.write().unwrap_or_else(|p| p.into_inner());
        let generation = r.generation + 1;
        let mut changed = 0;
        for c in changes {
            let Some(map) = r.by_type.get_mut(c.type_url) else { continue };
            let did = match c.body {
                Some(body) => {
                    let version = content_version(&body.value);
                    match map.get(c.name.as_str()) {
                        Some(e) if e.version == version => false,
                        _ => {
                            let name: Arc<str> = c.name.as_str().into();
                            map.insert(name.clone(), Entry { name, version, body });
                            true
                        }
                    }
                }
                None => map.remove(c.name.as_str()).is_some(),
            };
            if did {
                changed += 1;
                r.log.push_back((generation, c.type_url, c.name));
            }
        }
        if changed > 0 {
            r.generation = generation;
            r.published_at.push_back((generation, Instant::now()));
            while r.log.len() > LOG_CAPACITY {
                if let Some((g, _, _)) = r.log.pop_front() {
                    r.trimmed_through = r.trimmed_through.max(g);
                }
            }
            while r.published_at.len() > 1024 {
                r.published_at.pop_front();
            }
            drop(r);
            self.dirty.notify_one();
        }
        changed
    }

    /// Turns bursts of publishes into one push: waits for `quiet` without changes (at most
    /// `max_delay` after the first), then wakes the subscribers.
    pub async fn debounce(self: Arc<Self>, quiet: Duration, max_delay: Duration) {
        loop {
            self.dirty.notified().await;
            let first = Instant::now();
            loop {
                let left = max_delay.saturating_sub(first.elapsed());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(quiet.min(left), self.dirty.notified()).await {
                    Ok(()) => continue,
                    Err(_) => break,
                }
            }
            let generation = self.resources.read().unwrap_or_else(|p| p.into_inner()).generation;
            self.pushed.send_replace(generation);
        }
    }

    /// The sources have delivered their initial state: start answering subscribers.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Current resources of a type: name → (version, body), for the admin dump and tests.
    pub fn snapshot(&self, type_url: &str) -> BTreeMap<String, (String, prost_types::Any)> {
        let r = self.resources.read().unwrap_or_else(|p| p.into_inner());
        r.by_type
            .get(type_url)
            .map(|m| m.iter().map(|(k, e)| (k.to_string(), (version_string(e.version), e.body.clone()))).collect())
            .unwrap_or_default()
    }

    /// Connected subscribers with the versions each holds (computed now, for the admin page).
    pub fn subscribers(&self) -> Vec<SubscriberStatus> {
        let subs: Vec<_> = self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        subs.into_iter()
            .map(|(mut status, held)| {
                let held = held.lock().unwrap_or_else(|p| p.into_inner());
                status.versions = held
                    .iter()
                    .map(|(t, sub)| {
                        let v = sub.held.iter().map(|(n, v)| (n.to_string(), version_string(*v))).collect();
                        ((*t).to_owned(), v)
                    })
                    .collect();
                status
            })
            .collect()
    }

    fn update_status(&self, id: u64, f: impl FnOnce(&mut SubscriberStatus)) {
        if let Some((s, _)) = self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            f(s);
        }
    }
}

/// Per-type state of one subscriber.
#[derive(Default)]
struct Subscription {
    /// `None`: wildcard. `Some`: only these names.
    names: Option<HashSet<String>>,
    /// What the subscriber holds (or was sent): name → version. Names share the published
    /// `Arc<str>`s, so a subscriber costs a pointer and a version per resource.
    held: HashMap<Arc<str>, u64>,
}

type Subscriptions = HashMap<&'static str, Subscription>;

/// A connected subscriber: its status and its live subscriptions (read by the admin page).
type Registered = (SubscriberStatus, Arc<Mutex<Subscriptions>>);

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(name))
    }
}

/// One subscriber stream.
struct Session {
    id: u64,
    state: Arc<XdsState>,
    /// Shared with the admin page, which reads it on demand.
    subs: Arc<Mutex<Subscriptions>>,
    seen_generation: u64,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// Large responses awaiting their ACK: dropping the sender frees the slot.
    in_flight: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    /// The subscriber's node id (from its first request), for logs.
    node: String,
}

impl Session {
    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}-{}", self.id, self.nonce)
    }

    /// Builds the response bringing `type_url` up to date for `names` (all when `None`).
    fn diff(&mut self, type_url: &'static str, names: Option<&HashSet<&str>>) -> Option<DeltaDiscoveryResponse> {
        let r = self.state.resources.read().unwrap_or_else(|p| p.into_inner());
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let sub = subs.get_mut(type_url)?;
        let current = r.by_type.get(type_url)?;
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut consider = |name: &str, sub: &mut Subscription| {
            if !sub.wants(name) {
                return;
            }
            match current.get(name) {
                Some(e) if sub.held.get(name) != Some(&e.version) => {
                    sub.held.insert(e.name.clone(), e.version);
                    resources.push(Resource {
                        name: name.to_owned(),
                        version: version_string(e.version),
                        resource: Some(e.body.clone()),
                        ..Default::default()
                    });
                }
                Some(_) => {}
                None => {
                    if sub.held.remove(name).is_some() {
                        removed.push(name.to_owned());
                    }
                }
            }
        };
        match names {
            Some(names) => names.iter().for_each(|n| consider(n, sub)),
            None => {
                let gone: Vec<Arc<str>> = sub.held.keys().filter(|n| !current.contains_key(*n)).cloned().collect();
                for name in current.keys().chain(gone.iter()) {
                    consider(name, sub);
                }
            }
        }
        drop(subs);
        drop(r);
        Some(DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            resources,
            removed_resources: removed,
            nonce: String::new(),
            ..Default::default()
        })
    }

    /// Takes a full-state slot (see `FULL_DIFFS_IN_FLIGHT`).
    ///
    /// A session already holding a slot proceeds without another: it must stay free to read
    /// the ACK that releases the one it holds (otherwise sessions waiting for a second slot
    /// while holding a first would wait for each other).
    async fn full_diff_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !self.in_flight.is_empty() {
            return None;
        }
        self.state.full_diffs.clone().acquire_owned().await.ok()
    }

    /// Sends; a large response keeps `slot` until acknowledged.
    async fn send_holding(
        &mut self,
        response: DeltaDiscoveryResponse,
        published: Option<Instant>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        let large = response.resources.len() >= LARGE_RESPONSE;
        let Some(nonce) = self.send(response, published).await else { return false };
        if let (true, Some(slot)) = (large, slot) {
            let (done, wait) = tokio::sync::oneshot::channel();
            self.in_flight.insert(nonce, done);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(IN_FLIGHT_TIMEOUT, wait).await;
                drop(slot);
            });
        }
        true
    }

    /// Sends a response; returns its nonce, or `None` when the stream is gone.
    async fn send(
        &mut self,
        mut response: DeltaDiscoveryResponse,
        generation_published: Option<Instant>,
    ) -> Option<String> {
        response.nonce = self.next_nonce();
        let type_url = response.type_url.clone();
        let count = response.resources.len();
        let nonce = response.nonce.clone();
        // A subscriber that takes no data for this long is gone; free its resources.
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(response))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                tracing::warn!(subscriber = self.id, node = %self.node, "subscriber stopped reading; closing its stream");
                return None;
            }
        }
        self.state.metrics.xds_pushes.get_or_create(&vec![("type".to_owned(), short_type(&type_url))]).inc();
        if let Some(at) = generation_published {
            self.state.metrics.xds_push_time.observe(at.elapsed().as_secs_f64());
        }
        self.state.update_status(self.id, |s| {
            let t = s.types.entry(type_url).or_default();
            t.resources_sent += count;
            t.last_nonce_sent = nonce.clone();
        });
        Some(nonce)
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> bool {
        let Some(&type_url) = TYPES.iter().find(|t| **t == req.type_url) else {
            tracing::debug!(subscriber = self.id, type_url = %req.type_url, "request for a type we do not serve");
            return true;
        };
        if !req.response_nonce.is_empty() {
            self.in_flight.remove(&req.response_nonce);
            let (nonce, nack) = (req.response_nonce.clone(), req.error_detail.clone());
            match &nack {
                Some(status) => {
                    let node = self
                        .state
                        .subscribers()
                        .into_iter()
                        .find(|s| s.id == self.id)
                        .map(|s| s.node)
                        .unwrap_or_default();
                    tracing::warn!(subscriber = self.id, %node, type_url, nonce = %nonce, reason = %status.message, "NACK");
                    self.state
                        .metrics
                        .xds_rejects
                        .get_or_create(&vec![("type".to_owned(), short_type(type_url))])
                        .inc();
                }
                None => tracing::trace!(subscriber = self.id, type_url, %nonce, "ACK"),
            }
            self.state.update_status(self.id, |s| {
                let t = s.types.entry(type_url.to_owned()).or_default();
                match nack {
                    Some(status) => {
                        t.nacks += 1;
                        t.last_nack = Some(status.message);
                    }
                    None => t.last_acked_nonce = nonce,
                }
            });
        }
        let first = !self.subs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(type_url);
        let subscribe_changed = !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if !first && !subscribe_changed {
            return true;
        }
        {
            let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            let sub = subs.entry(type_url).or_default();
            if first {
                sub.held = req
                    .initial_resource_versions
                    .iter()
                    .map(|(k, v)| (Arc::from(k.as_str()), parse_version(v)))
                    .collect();
                let explicit: HashSet<String> =
                    req.resource_names_subscribe.iter().filter(|n| *n != "*").cloned().collect();
                let wildcard =
                    req.resource_names_subscribe.is_empty() || req.resource_names_subscribe.iter().any(|n| n == "*");
                sub.names = (!wildcard).then_some(explicit);
            } else {
                if req.resource_names_subscribe.iter().any(|n| n == "*") {
                    sub.names = None;
                } else if let Some(names) = sub.names.as_mut() {
                    names.extend(req.resource_names_subscribe.iter().cloned());
                }
                if let Some(names) = sub.names.as_mut() {
                    for n in &req.resource_names_unsubscribe {
                        names.remove(n);
                        sub.held.remove(n.as_str());
                    }
                }
            }
        }
        // The first response is sent even when empty: it tells the subscriber it is in sync.
        let slot = self.full_diff_slot().await;
        match self.diff(type_url, None) {
            Some(resp) if first || !resp.resources.is_empty() || !resp.removed_resources.is_empty() => {
                self.send_holding(resp, None, slot).await
            }
            _ => true,
        }
    }

    async fn on_push(&mut self) -> bool {
        let (generation, changed, published) = {
            let r = self.state.resources.read().unwrap_or_else(|p| p.into_inner());
            let complete = self.seen_generation >= r.trimmed_through;
            let mut changed: HashMap<&'static str, HashSet<String>> = HashMap::new();
            let changed = if complete {
                for (_, t, name) in r.log.iter().filter(|(g, _, _)| *g > self.seen_generation) {
                    changed.entry(*t).or_default().insert(name.clone());
                }
                Some(changed)
            } else {
                None // fell behind the log: compare everything
            };
            let published = r.published_at.iter().find(|(g, _)| *g == r.generation).map(|(_, t)| *t);
            (r.generation, changed, published)
        };
        self.seen_generation = generation;
        let types: Vec<&'static str> = self.subs.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for t in types {
            let slot = if changed.is_none() { self.full_diff_slot().await } else { None };
            let response = match &changed {
                Some(changed) => match changed.get(t) {
                    Some(names) => {
                        let names: HashSet<&str> = names.iter().map(String::as_str).collect();
                        self.diff(t, Some(&names))
                    }
                    None => None,
                },
                None => self.diff(t, None),
            };
            if let Some(resp) = response.filter(|r| !r.resources.is_empty() || !r.removed_resources.is_empty()) {
                if !self.send_holding(resp, published, slot).await {
                    return false;
                }
            }
        }
        true
    }
}

fn short_type(type_url: &str) -> String {
    type_url.rsplit('.').next().unwrap_or(type_url).to_owned()
}

/// The gRPC service.
pub struct AdsService {
    pub state: Arc<XdsState>,
    pub auth: Arc<dyn Authenticator>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type DeltaAggregatedResourcesStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().map(|p| p.addr).or_else(|| request.remote_addr());
        let caller = crate::auth::authenticate(&*self.auth, request.metadata()).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        let id = state.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let subs: Arc<Mutex<Subscriptions>> = Arc::default();
            let mut session = Session {
                id,
                state: state.clone(),
                subs: subs.clone(),
                seen_generation: 0,
                nonce: 0,
                tx,
                in_flight: HashMap::new(),
                node: String::new(),
            };
            // Answer nothing until the controller holds its complete initial state.
            let mut synced = state.synced.subscribe();
            if synced.wait_for(|s| *s).await.is_err() {
                return;
            }
            let mut pushed = state.pushed.subscribe();
            session.seen_generation = state.resources.read().unwrap_or_else(|p| p.into_inner()).generation;
            pushed.mark_unchanged();
            state.metrics.xds_connected.inc();
            let mut registered = false;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if !registered {
                                registered = true;
                                let node = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                                session.node = node.clone();
                                tracing::info!(subscriber = id, %node, caller = %caller.identity, peer = ?peer, "xDS subscriber connected");
                                let status = SubscriberStatus {
                                    id,
                                    node,
                                    peer: peer.map(|p: SocketAddr| p.to_string()).unwrap_or_default(),
                                    types: BTreeMap::new(),
                                    versions: BTreeMap::new(),
                                };
                                state.subscribers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (status, subs.clone()));
                            }
                            if !session.on_request(req).await { break; }
                        }
                        Ok(None) => break,
                        Err(e) => { tracing::debug!(subscriber = id, error = %e, "xDS stream error"); break; }
                    },
                    changed = pushed.changed() => {
                        if changed.is_err() || !session.on_push().await { break; }
                    }
                }
            }
            state.subscribers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            state.metrics.xds_connected.dec();
            tracing::info!(subscriber = id, "xDS subscriber disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, body: &[u8]) -> Change {
        Change {
            type_url: ADDRESS,
            name: name.into(),
            body: Some(prost_types::Any { type_url: ADDRESS.into(), value: body.to_vec() }),
        }
    }

    #[test]
    fn unchanged_content_is_not_a_change_and_versions_follow_content() {
        let state = XdsState::new(Arc::new(Metrics::new()));
        assert_eq!(state.publish(vec![change("a", b"1"), change("b", b"2")]), 2);
        assert_eq!(state.publish(vec![change("a", b"1")]), 0);
        let v1 = state.snapshot(ADDRESS)["a"].0.clone();
        assert_eq!(state.publish(vec![change("a", b"3")]), 1);
        assert_ne!(state.snapshot(ADDRESS)["a"].0, v1);
        assert_eq!(state.publish(vec![Change { type_url: ADDRESS, name: "b".into(), body: None }]), 1);
        assert_eq!(state.publish(vec![Change { type_url: ADDRESS, name: "b".into(), body: None }]), 0);
        assert_eq!(content_version(b"1"), content_version(b"1"));
    }
}
