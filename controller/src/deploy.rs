//! What the controller deploys and writes back, and where it writes it: each waypoint
//! Gateway's objects (`waypoint_objects`), the root certificate ConfigMap (`root_configmap`),
//! written to a directory (`dir`) or server-side applied to Kubernetes (`apply`), and the
//! statuses it reports (`status`).
//!
//! A sink, not a source: it reads the store, never feeds the index. It does not translate
//! (that is `translate`'s), and knows nothing of flags (`config` builds its settings).

use crate::store::Store;

pub mod apply;
pub mod dir;
pub mod root_configmap;
pub mod status;
pub mod waypoint_objects;

/// Keeps what the controller deploys in step with the store, after every index batch.
pub trait Deploy: Send {
    fn sync(&mut self, store: &Store);
    /// Forget what was written (a new leader writes everything again).
    fn reset(&mut self) {}
}
