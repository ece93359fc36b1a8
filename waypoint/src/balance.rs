//! Backend policy at run time (a DestinationRule's traffic policy): endpoint choice (least
//! request as power of two choices — Istio's default —, round robin, random, or consistent
//! hash on a header, a cookie or the source IP), outlier ejection (consecutive 5xx or gateway
//! errors eject an endpoint for `baseEjectionTime × times ejected`, never more than
//! `maxEjectionPercent` of them) and the request limits of the connection pool.
//!
//! The state lives per backend service and outlasts configuration updates; it is created the
//! first time the service is called.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ambit_dataplane::state::Workload;
use ambit_shared::proto::waypoint::{load_balancer::Simple, BackendPolicy};

#[derive(Debug, Default)]
struct EndpointStat {
    in_flight: u32,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// One backend service's run-time state.
#[derive(Debug, Default)]
pub struct Backend {
    in_flight: AtomicU32,
    next: AtomicUsize,
    endpoints: Mutex<HashMap<Arc<str>, EndpointStat>>,
}

/// A request admitted to a backend: counted in flight until dropped.
pub struct Admission {
    backend: Arc<Backend>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The outcome of one attempt, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// Could not connect, reset, or timed out.
    Failure,
}

/// What a consistent hash is computed from.
pub struct HashInput<'a> {
    pub headers: &'a http::HeaderMap,
    pub source_ip: IpAddr,
}

fn hash_of(policy: &BackendPolicy, input: &HashInput<'_>) -> Option<u64> {
    let lb = policy.load_balancer.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if !lb.hash_header.is_empty() {
        input.headers.get(lb.hash_header.as_str())?.as_bytes().hash(&mut h);
    } else if !lb.hash_cookie.is_empty() {
        let cookie = input.headers.get_all(http::header::COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == lb.hash_cookie).then_some(v.to_owned())
            })
        })?;
        cookie.hash(&mut h);
    } else if lb.hash_source_ip {
        input.source_ip.hash(&mut h);
    } else {
        return None;
    }
    Some(h.finish())
}

/// Rendezvous hashing: the endpoint with the highest hash of (key, endpoint) — stable when
/// other endpoints come and go.
fn rendezvous(key: u64, candidates: &[(Arc<Workload>, u16)]) -> Option<(Arc<Workload>, u16)> {
    candidates
        .iter()
        .max_by_key(|(w, _)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            w.uid.hash(&mut h);
            h.finish()
        })
        .cloned()
}

impl Backend {
    /// Admits a request unless the pool's limits are reached (then the caller answers 503 `UO`).
    pub fn admit(self: &Arc<Self>, policy: Option<&BackendPolicy>) -> Option<Admission> {
        let limit = policy.map_or(0, |p| {
            let pending_limit = if p.max_pending_requests > 0 {
                let conns = if p.max_connections > 0 { p.max_connections } else { u32::MAX / 2 };
                conns.saturating_add(p.max_pending_requests)
            } else {
                0
            };
            match (p.max_requests, pending_limit) {
                (0, l) | (l, 0) => l,
                (a, b) => a.min(b),
            }
        });
        let admitted = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission { backend: self.clone() };
        if limit > 0 && admitted >= limit {
            return None;
        }
        Some(admission)
    }

    /// The endpoints outlier detection has not ejected; all of them when every one is (Envoy's
    /// panic mode).
    pub fn not_ejected(&self, endpoints: Vec<(Arc<Workload>, u16)>) -> Vec<(Arc<Workload>, u16)> {
        let now = Instant::now();
        let stats = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ejected = |w: &Workload| stats.get(&w.uid).and_then(|s| s.ejected_until).is_some_and(|t| t > now);
        if endpoints.iter().all(|(w, _)| ejected(w)) {
            return endpoints;
        }
        endpoints.into_iter().filter(|(w, _)| !ejected(w)).collect()
    }

    /// Chooses an endpoint among the healthy, non-ejected ones.
    pub fn choose(
        &self,
        endpoints: Vec<(Arc<Workload>, u16)>,
        policy: Option<&BackendPolicy>,
        input: &HashInput<'_>,
    ) -> Option<(Arc<Workload>, u16)> {
        let now = Instant::now();
        let stats = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let ejected = |w: &Workload| stats.get(&w.uid).and_then(|s| s.ejected_until).is_some_and(|t| t > now);
        let healthy: Vec<(Arc<Workload>, u16)> = endpoints.into_iter().filter(|(w, _)| w.healthy).collect();
        let mut candidates: Vec<(Arc<Workload>, u16)> = healthy.iter().filter(|(w, _)| !ejected(w)).cloned().collect();
        if candidates.is_empty() {
            // Everything ejected: Envoy's panic mode sends to all healthy endpoints.
            candidates = healthy;
        }
        if candidates.len() <= 1 {
            return candidates.pop();
        }
        if let Some(key) = policy.and_then(|p| hash_of(p, input)) {
            return rendezvous(key, &candidates);
        }
        let simple = policy.and_then(|p| p.load_balancer.as_ref()).map_or(Simple::LeastRequest, |lb| lb.simple());
        let pick = match simple {
            Simple::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            Simple::Random => fastrand::usize(..candidates.len()),
            Simple::LeastRequest => {
                let a = fastrand::usize(..candidates.len());
                let mut b = fastrand::usize(..candidates.len() - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| stats.get(&candidates[i].0.uid).map_or(0, |s| s.in_flight);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        Some(candidates.swap_remove(pick))
    }

    /// Counts a request in flight to an endpoint (for least request).
    pub fn started(&self, w: &Workload) {
        let mut stats = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry(w.uid.clone()).or_default().in_flight += 1;
    }

    /// Records an attempt's outcome; ejects the endpoint when it crosses a threshold.
    pub fn finished(&self, w: &Workload, outcome: Outcome, policy: Option<&BackendPolicy>, endpoints: usize) {
        let mut stats = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let currently_ejected = stats.values().filter(|s| s.ejected_until.is_some_and(|t| t > now)).count();
        let Some(s) = stats.get_mut(&w.uid) else { return };
        s.in_flight = s.in_flight.saturating_sub(1);
        let (server_error, gateway_error) = match outcome {
            Outcome::Status(code) => (code >= 500, matches!(code, 502..=504)),
            Outcome::Failure => (true, true),
        };
        s.consecutive_5xx = if server_error { s.consecutive_5xx + 1 } else { 0 };
        s.consecutive_gateway = if gateway_error { s.consecutive_gateway + 1 } else { 0 };
        let Some(od) = policy.and_then(|p| p.outlier.as_ref()) else { return };
        let tripped = (od.consecutive_5xx > 0 && s.consecutive_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway_errors > 0 && s.consecutive_gateway >= od.consecutive_gateway_errors);
        if !tripped || s.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        let allowed = (endpoints.max(1) * od.max_ejection_percent as usize) / 100;
        if currently_ejected >= allowed.max(usize::from(od.max_ejection_percent > 0 && endpoints > 0)) {
            return;
        }
        let base = od.base_ejection_time.and_then(|d| Duration::try_from(d).ok()).unwrap_or(Duration::from_secs(30));
        s.times_ejected += 1;
        s.ejected_until = Some(now + base * s.times_ejected);
        s.consecutive_5xx = 0;
        s.consecutive_gateway = 0;
        tracing::info!(endpoint = %w.uid, until_ms = (base * s.times_ejected).as_millis() as u64, "outlier ejected");
    }
}

/// Every backend service's state.
#[derive(Debug, Default)]
pub struct Backends(RwLock<HashMap<String, Arc<Backend>>>);

impl Backends {
    pub fn get(&self, service_key: &str) -> Arc<Backend> {
        if let Some(b) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(service_key) {
            return b.clone();
        }
        self.0.write().unwrap_or_else(|p| p.into_inner()).entry(service_key.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_shared::proto::waypoint::{LoadBalancer, OutlierDetection};

    use crate::testing::workload;

    #[test]
    fn consecutive_errors_eject_and_traffic_moves() {
        let b = Backend::default();
        let (bad, good) = (workload("bad"), workload("good"));
        let eps = vec![(bad.clone(), 80), (good.clone(), 80)];
        let policy = BackendPolicy {
            outlier: Some(OutlierDetection {
                consecutive_5xx: 2,
                max_ejection_percent: 50,
                base_ejection_time: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let headers = http::HeaderMap::new();
        let input = HashInput { headers: &headers, source_ip: "10.0.0.1".parse().unwrap() };
        for _ in 0..2 {
            b.started(&bad);
            b.finished(&bad, Outcome::Status(500), Some(&policy), 2);
        }
        for _ in 0..50 {
            assert_eq!(b.choose(eps.clone(), Some(&policy), &input).unwrap().0.uid, good.uid, "bad is ejected");
        }
        // At most 50 %: the good one is not ejected too.
        for _ in 0..3 {
            b.started(&good);
            b.finished(&good, Outcome::Failure, Some(&policy), 2);
        }
        assert_eq!(b.choose(eps, Some(&policy), &input).unwrap().0.uid, good.uid);
    }

    #[test]
    fn consistent_hash_sticks_and_pool_limits_overflow() {
        let b = Arc::new(Backend::default());
        let eps: Vec<_> = (0..5).map(|i| (workload(&format!("w{i}")), 80)).collect();
        let policy = BackendPolicy {
            load_balancer: Some(LoadBalancer { hash_header: "x-user".into(), ..Default::default() }),
            max_connections: 1,
            max_pending_requests: 1,
            ..Default::default()
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", http::HeaderValue::from_static("alice"));
        let input = HashInput { headers: &headers, source_ip: "10.0.0.1".parse().unwrap() };
        let first = b.choose(eps.clone(), Some(&policy), &input).unwrap().0.uid.clone();
        for _ in 0..20 {
            assert_eq!(b.choose(eps.clone(), Some(&policy), &input).unwrap().0.uid, first);
        }
        let a1 = b.admit(Some(&policy)).expect("first");
        let a2 = b.admit(Some(&policy)).expect("pending");
        assert!(b.admit(Some(&policy)).is_none(), "overflow");
        drop((a1, a2));
        assert!(b.admit(Some(&policy)).is_some(), "room again");
    }
}
