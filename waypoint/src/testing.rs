//! Fixtures the waypoint's unit tests share: plain values, no sockets.

use std::sync::Arc;

use ambit_dataplane::state::testing::wl;
use ambit_dataplane::state::Workload;

/// A healthy meshed workload `uid` in `shop` at 10.0.0.1 (service account `x`).
pub(crate) fn workload(uid: &str) -> Arc<Workload> {
    Arc::new(wl(uid, "shop", "x", "10.0.0.1", None, true))
}
