//! The peer and service labels Istio puts on every L4 and L7 series (`source_*`,
//! `destination_*`, `destination_service*`), built from the mesh state's workloads and
//! services. ztunnel's `istio_tcp_*` and the waypoint's `istio_requests_*` both encode them
//! with [`encode_peers`]; the metric families themselves live with each proxy.

use std::sync::Arc;

use crate::state::{Service, Workload};

/// One side of a connection as labels see it: shared strings from the workload state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub workload: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub namespace: Arc<str>,
    pub cluster: Arc<str>,
    /// SPIFFE URI, when known.
    pub principal: Arc<str>,
}

fn unknown() -> Arc<str> {
    static UNKNOWN_ARC: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN_ARC.get_or_init(|| Arc::from(UNKNOWN)).clone()
}

fn or_unknown(s: &Arc<str>) -> Arc<str> {
    if s.is_empty() {
        unknown()
    } else {
        s.clone()
    }
}

impl Peer {
    pub fn unknown() -> Self {
        Peer {
            workload: unknown(),
            canonical_service: unknown(),
            canonical_revision: unknown(),
            namespace: unknown(),
            cluster: unknown(),
            principal: unknown(),
        }
    }

    /// A peer known only by its identity (plaintext clients have none).
    pub fn from_principal(principal: Option<Arc<str>>) -> Self {
        Peer { principal: principal.unwrap_or_else(unknown), ..Peer::unknown() }
    }

    pub fn from_workload(w: &Workload, principal: Option<Arc<str>>) -> Self {
        Peer {
            workload: or_unknown(&w.workload_name),
            canonical_service: or_unknown(&w.canonical_name),
            canonical_revision: or_unknown(&w.canonical_revision),
            namespace: or_unknown(&w.namespace),
            cluster: or_unknown(&w.cluster_id),
            principal: principal.unwrap_or_else(unknown),
        }
    }
}

/// The destination service, when the connection was addressed to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    pub hostname: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceLabels {
    /// Istio's `BlackHoleCluster`: where traffic refused by a `REGISTRY_ONLY` outbound policy
    /// is counted (`destination_service` and `destination_service_name`).
    pub fn black_hole() -> Self {
        let name: Arc<str> = Arc::from("BlackHoleCluster");
        ServiceLabels { hostname: name.clone(), namespace: unknown(), name }
    }

    pub fn of(s: &Service) -> Self {
        ServiceLabels {
            hostname: or_unknown(&s.hostname),
            namespace: or_unknown(&s.namespace),
            name: or_unknown(&s.name),
        }
    }
}

/// The value Istio writes for a label it cannot know.
pub const UNKNOWN: &str = "unknown";

/// The peer and service labels Istio puts on every L4 and L7 series (`source_*`,
/// `destination_service*`, `destination_*`), shared with the waypoint's request metrics.
pub fn encode_peers(
    put: &mut impl FnMut(&str, &str) -> Result<(), std::fmt::Error>,
    source: &Peer,
    destination: &Peer,
    service: Option<&ServiceLabels>,
) -> Result<(), std::fmt::Error> {
    for (prefix, p) in [("source", source), ("destination", destination)] {
        if prefix == "destination" {
            let (host, ns, name) = match service {
                Some(s) => (&*s.hostname, &*s.namespace, &*s.name),
                None => (UNKNOWN, UNKNOWN, UNKNOWN),
            };
            put("destination_service", host)?;
            put("destination_service_namespace", ns)?;
            put("destination_service_name", name)?;
        }
        let values = [
            ("workload", &p.workload),
            ("canonical_service", &p.canonical_service),
            ("canonical_revision", &p.canonical_revision),
            ("workload_namespace", &p.namespace),
            ("principal", &p.principal),
            ("app", &p.canonical_service),
            ("version", &p.canonical_revision),
            ("cluster", &p.cluster),
        ];
        for (key, value) in values {
            put(&[prefix, "_", key].concat(), value)?;
        }
    }
    Ok(())
}
