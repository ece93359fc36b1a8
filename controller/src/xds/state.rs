//! The published xDS resources: per-resource versions that follow content, a change log for
//! incremental pushes, the push signal, and the registry of connected subscribers with what
//! each holds (for the admin page). What a subscriber is sent is `session`'s business.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ambit_shared::proto::type_url::{ADDRESS, AUTHORIZATION, GATEWAY, WAYPOINT_SERVICE};
use ambit_shared::proto::Any;
use ambit_shared::xds::server::EncodedResource;
use tokio::sync::{watch, Notify};

use crate::index::Change;
use crate::metrics::Metrics;

/// Types this server serves.
pub const TYPES: &[&str] = &[ADDRESS, AUTHORIZATION, WAYPOINT_SERVICE, GATEWAY];
/// Full-state responses in flight at once. A large response holds its slot until the
/// subscriber ACKs or NACKs it (or `IN_FLIGHT_TIMEOUT` passes), so a connect storm of many
/// subscribers cannot make the controller hold every snapshot in memory at the same time.
const FULL_DIFFS_IN_FLIGHT: usize = 8;
/// How many recent changes are kept for incremental pushes; a subscriber further behind gets
/// a full comparison instead.
const LOG_CAPACITY: usize = 200_000;

#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The map key again, shared so subscribers remember names without copying them.
    pub(super) name: Arc<str>,
    pub(super) version: u64,
    /// The `Resource` as sent (name, version, body), encoded once when published; every
    /// response that carries it shares these bytes.
    pub(super) encoded: EncodedResource,
}

pub(super) fn version_string(v: u64) -> String {
    format!("{v:016x}")
}

/// A version a subscriber reports; one we did not issue never equals a current one.
pub(super) fn parse_version(v: &str) -> u64 {
    if v.len() == 16 {
        u64::from_str_radix(v, 16).unwrap_or(0)
    } else {
        0
    }
}

#[derive(Default)]
pub(super) struct Resources {
    pub(super) generation: u64,
    pub(super) by_type: HashMap<&'static str, BTreeMap<Arc<str>, Entry>>,
    /// (generation, type, name) of every change, oldest first. Names are shared with the map
    /// and with the subscribers that collect them on a push.
    pub(super) log: VecDeque<(u64, &'static str, Arc<str>)>,
    /// The newest generation some of whose log entries were trimmed: a subscriber older than
    /// that must compare everything.
    pub(super) trimmed_through: u64,
    /// When each recent generation was published (for push latency).
    pub(super) published_at: VecDeque<(u64, Instant)>,
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
    pub(super) resources: RwLock<Resources>,
    dirty: Notify,
    pub(super) pushed: watch::Sender<u64>,
    /// False until the sources have delivered their initial state; subscribers wait for it.
    pub(super) synced: watch::Sender<bool>,
    pub(super) subscribers: Mutex<BTreeMap<u64, Registered>>,
    /// Bounds how many subscribers build a full-state response at once (connect storms after
    /// a controller restart), which bounds the memory those responses take.
    pub(super) full_diffs: Arc<tokio::sync::Semaphore>,
    pub(super) next_id: std::sync::atomic::AtomicU64,
    pub(super) metrics: Arc<Metrics>,
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
                        Some(e) if e.version == version => None,
                        _ => {
                            let name: Arc<str> = c.name.as_str().into();
                            let encoded = EncodedResource::new(&name, &version_string(version), body);
                            map.insert(name.clone(), Entry { name: name.clone(), version, encoded });
                            Some(name)
                        }
                    }
                }
                None => map.remove_entry(c.name.as_str()).map(|(name, _)| name),
            };
            if let Some(name) = did {
                changed += 1;
                r.log.push_back((generation, c.type_url, name));
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
    /// Bodies are read back from the encoded resources (they share the published bytes).
    pub fn snapshot(&self, type_url: &str) -> BTreeMap<String, (String, Any)> {
        let r = self.resources.read().unwrap_or_else(|p| p.into_inner());
        r.by_type
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(k, e)| {
                        let body = e.encoded.decode().ok().and_then(|r| r.resource).unwrap_or_default();
                        (k.to_string(), (version_string(e.version), body))
                    })
                    .collect()
            })
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

    pub(super) fn update_status(&self, id: u64, f: impl FnOnce(&mut SubscriberStatus)) {
        if let Some((s, _)) = self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            f(s);
        }
    }
}

/// Per-type state of one subscriber.
#[derive(Default)]
pub(super) struct Subscription {
    /// `None`: wildcard. `Some`: only these names.
    pub(super) names: Option<HashSet<String>>,
    /// What the subscriber holds (or was sent): name → version. Names share the published
    /// `Arc<str>`s, so a subscriber costs a pointer and a version per resource.
    pub(super) held: HashMap<Arc<str>, u64>,
}

pub(super) type Subscriptions = HashMap<&'static str, Subscription>;

/// A connected subscriber: its status and its live subscriptions (read by the admin page).
pub(super) type Registered = (SubscriberStatus, Arc<Mutex<Subscriptions>>);

impl Subscription {
    pub(super) fn wants(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, body: &[u8]) -> Change {
        Change {
            type_url: ADDRESS,
            name: name.into(),
            body: Some(Any { type_url: ADDRESS.into(), value: body.to_vec().into() }),
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
        assert_eq!(state.snapshot(ADDRESS)["a"].1, Any { type_url: ADDRESS.into(), value: b"3".to_vec().into() });
        assert_eq!(state.publish(vec![Change { type_url: ADDRESS, name: "b".into(), body: None }]), 1);
        assert_eq!(state.publish(vec![Change { type_url: ADDRESS, name: "b".into(), body: None }]), 0);
        assert_eq!(content_version(b"1"), content_version(b"1"));
    }
}
