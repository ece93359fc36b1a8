//! One subscriber stream: on connect, everything whose version differs from what the
//! subscriber says it holds and removals for what no longer exists; after that, on each
//! (debounced) publish, only what changed. ACKs and NACKs are tracked per type; a NACK is
//! logged and counted and never blocks others. Large responses hold a full-state slot until
//! answered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_shared::proto::discovery::DeltaDiscoveryRequest;
use ambit_shared::proto::type_url::GATEWAY;
use ambit_shared::xds::server::EncodedResponse;
use ambit_shared::Identity;
use tokio::sync::mpsc;
use tonic::Streaming;

use super::state::{parse_version, SubscriberStatus, Subscription, Subscriptions, XdsState, TYPES};
use crate::auth::Caller;

/// Responses with at least this many resources count as large.
const LARGE_RESPONSE: usize = 256;
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response may wait for room in a subscriber's stream.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Serves one subscriber stream until it ends: waits for the initial state, registers the
/// subscriber on its first request, then answers requests and pushes.
pub(super) async fn run(
    state: Arc<XdsState>,
    id: u64,
    caller: Caller,
    peer: Option<SocketAddr>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<EncodedResponse>,
) {
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
        reader: caller.identity.clone(),
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
}

/// One subscriber stream.
struct Session {
    id: u64,
    state: Arc<XdsState>,
    /// Shared with the admin page, which reads it on demand.
    subs: Arc<Mutex<Subscriptions>>,
    seen_generation: u64,
    nonce: u64,
    /// Responses go to the stream's body, which writes them out as HTTP/2 asks for data.
    tx: mpsc::Sender<EncodedResponse>,
    /// Large responses awaiting their ACK: dropping the sender frees the slot.
    in_flight: HashMap<String, tokio::sync::oneshot::Sender<()>>,
    /// The subscriber's node id (from its first request), for logs.
    node: String,
    /// The authenticated caller: what it may read (see [`may_read`]).
    reader: Identity,
}

/// Whether `reader` may receive the resource `name` of `type_url`. An ingress gateway's
/// configuration holds its listeners' private keys: only the gateway itself (its service
/// account is its name) gets it, whatever it subscribes to. Everything else is mesh-wide.
pub(super) fn may_read(type_url: &str, name: &str, reader: &Identity) -> bool {
    if type_url != GATEWAY {
        return true;
    }
    name.split_once('/').is_some_and(|(ns, gw)| reader.namespace() == ns && reader.service_account() == gw)
}

impl Session {
    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}-{}", self.id, self.nonce)
    }

    /// Builds the response bringing `type_url` up to date for `names` (all when `None`). It
    /// shares the published resources' encoded bytes and names; nothing is copied per
    /// subscriber.
    fn diff(&mut self, type_url: &'static str, names: Option<&HashSet<Arc<str>>>) -> Option<EncodedResponse> {
        let r = self.state.resources.read().unwrap_or_else(|p| p.into_inner());
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let sub = subs.get_mut(type_url)?;
        let current = r.by_type.get(type_url)?;
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let reader = &self.reader;
        let mut consider = |name: &Arc<str>, sub: &mut Subscription| {
            if !sub.wants(name) || !may_read(type_url, name, reader) {
                return;
            }
            match current.get(name) {
                Some(e) if sub.held.get(name) != Some(&e.version) => {
                    sub.held.insert(e.name.clone(), e.version);
                    resources.push(e.encoded.clone());
                }
                Some(_) => {}
                None => {
                    if sub.held.remove(name).is_some() {
                        removed.push(name.clone());
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
        Some(EncodedResponse { type_url, resources, removed_resources: removed, nonce: String::new() })
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
        response: EncodedResponse,
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
    async fn send(&mut self, mut response: EncodedResponse, generation_published: Option<Instant>) -> Option<String> {
        response.nonce = self.next_nonce();
        let type_url = response.type_url;
        let count = response.resources.len();
        let nonce = response.nonce.clone();
        // A subscriber that takes no data for this long is gone; free its resources.
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(response)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                tracing::warn!(subscriber = self.id, node = %self.node, "subscriber stopped reading; closing its stream");
                return None;
            }
        }
        self.state.metrics.xds_pushes.get_or_create(&vec![("type".to_owned(), short_type(type_url))]).inc();
        if let Some(at) = generation_published {
            self.state.metrics.xds_push_time.observe(at.elapsed().as_secs_f64());
        }
        self.state.update_status(self.id, |s| {
            let t = s.types.entry(type_url.to_owned()).or_default();
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
            let mut changed: HashMap<&'static str, HashSet<Arc<str>>> = HashMap::new();
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
                Some(changed) => changed.get(t).and_then(|names| self.diff(t, Some(names))),
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
