//! Test fixtures shared by every crate's tests (feature `testing`): a throwaway mesh CA that
//! issues workload certificates, valid, expired or for any identity.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::certs::{Ca, Validity, WorkloadCert, DEFAULT_ROOT_LIFETIME, DEFAULT_WORKLOAD_LIFETIME};
use crate::identity::Identity;
use crate::tls::MeshRoots;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A mesh CA for tests.
pub struct TestCa {
    pub ca: Ca,
    pub roots: MeshRoots,
}

impl TestCa {
    pub fn new() -> Self {
        let ca = Ca::generate(TRUST_DOMAIN, DEFAULT_ROOT_LIFETIME).expect("test CA");
        let roots = MeshRoots::new(std::slice::from_ref(ca.root_der())).expect("test roots");
        TestCa { ca, roots }
    }

    /// A valid certificate for `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn cert(&self, ns: &str, sa: &str) -> Arc<WorkloadCert> {
        let id = identity(ns, sa);
        Arc::new(self.ca.issue(&id, Validity::from_now(DEFAULT_WORKLOAD_LIFETIME)).expect("test cert"))
    }

    /// A certificate that expired an hour ago.
    pub fn expired_cert(&self, ns: &str, sa: &str) -> Arc<WorkloadCert> {
        let now = SystemTime::now();
        let validity =
            Validity { not_before: now - Duration::from_secs(7200), not_after: now - Duration::from_secs(3600) };
        Arc::new(self.ca.issue(&identity(ns, sa), validity).expect("expired test cert"))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, ns, sa).expect("test identity")
}
