//! Sources of objects: a directory of manifests (`dir`) or Kubernetes (`kube`). Both parse
//! through `manifest::parse_object` and hand the index batches of events; rejections go to
//! the shared `Rejections` registry. Nothing downstream knows which source ran. Also the
//! Kubernetes leader election (`lease`) and the table of every API access (`access`).
//!
//! What the controller writes (waypoint objects, the root ConfigMap, statuses) is `deploy`'s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::rejection::Rejection;

pub mod access;
pub mod dir;
pub mod kube;
pub mod lease;

/// Current rejections, by origin (a file path, or a Kubernetes object), for the admin endpoint.
#[derive(Debug, Default, Clone)]
pub struct Rejections(Arc<Mutex<BTreeMap<String, Vec<Rejection>>>>);

impl Rejections {
    /// Replaces what `origin` is rejected for (an empty list clears it).
    pub fn set(&self, origin: &str, rejections: Vec<Rejection>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for r in &rejections {
            if map.get(origin).is_none_or(|old| !old.contains(r)) {
                tracing::warn!(%origin, object = %r.object, field = %r.field, reason = %r.reason, "rejected");
            }
        }
        if rejections.is_empty() {
            map.remove(origin);
        } else {
            map.insert(origin.to_owned(), rejections);
        }
    }

    pub fn all(&self) -> BTreeMap<String, Vec<Rejection>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().map(Vec::len).sum()
    }
}
