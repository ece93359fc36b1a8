//! Fixtures the waypoint's unit tests share: plain values, no sockets.

use std::collections::HashMap;
use std::sync::Arc;

use ambit_dataplane::state::Workload;

/// A healthy meshed workload `uid` in `shop` at 10.0.0.1.
pub(crate) fn workload(uid: &str) -> Arc<Workload> {
    let s = |v: &str| Arc::<str>::from(v);
    Arc::new(Workload {
        uid: s(uid),
        name: s(uid),
        namespace: s("shop"),
        addresses: vec!["10.0.0.1".parse().unwrap()],
        network: s(""),
        hbone: true,
        identity: "spiffe://cluster.local/ns/shop/sa/x".parse().unwrap(),
        node: s("node-1"),
        waypoint: None,
        services: HashMap::new(),
        policies: Vec::new(),
        healthy: true,
        capacity: 1,
        canonical_name: s(uid),
        canonical_revision: s("v1"),
        workload_name: s(uid),
        cluster_id: s("Kubernetes"),
    })
}
