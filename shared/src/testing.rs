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

/// A daemon binary run as a real process for a test; killed when dropped.
pub struct Daemon {
    child: std::process::Child,
}

impl Daemon {
    /// Starts `binary` with `args` (stderr inherited so its logs show on failure).
    pub fn spawn(binary: &str, args: &[&str]) -> Self {
        let child = std::process::Command::new(binary)
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Daemon { child }
    }

    /// Polls `GET path` on `addr` until it answers 200 (or panics after 10 s).
    pub fn wait_ok(&mut self, addr: std::net::SocketAddr, path: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited early with {status}");
            }
            if let Ok(resp) = http_get(addr, path) {
                if resp.starts_with("HTTP/1.1 200") {
                    return resp;
                }
            }
            assert!(std::time::Instant::now() < deadline, "{addr}{path} never answered 200");
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// A minimal blocking HTTP/1.1 GET, returning the whole response (status line, headers, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Runs `binary` with `args` expecting it to refuse to start; returns its stderr.
pub fn expect_startup_failure(binary: &str, args: &[&str]) -> String {
    let out =
        std::process::Command::new(binary).args(args).output().unwrap_or_else(|e| panic!("running {binary}: {e}"));
    assert!(!out.status.success(), "{binary} {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
