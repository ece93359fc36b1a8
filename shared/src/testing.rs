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

/// A JWT issuer for tests: an ECDSA P-256 key, its JSON Web Key Set, and signed tokens.
pub struct TestIssuer {
    pub issuer: String,
    key: jsonwebtoken::EncodingKey,
    /// `{"keys": [...]}` with the public key (kid `test-key`, ES256).
    pub jwks: String,
}

impl TestIssuer {
    pub fn new(issuer: &str) -> Self {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("test JWT key");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("test JWT key PEM");
        // Uncompressed point: 0x04 || X || Y.
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "test-key", "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string();
        TestIssuer { issuer: issuer.to_owned(), key, jwks }
    }

    /// A token with `iss`, `sub`, `aud`, an expiry `valid_for` from now (negative: expired) and
    /// any extra claims.
    pub fn token(&self, sub: &str, aud: &str, valid_for: i64, extra: serde_json::Value) -> String {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let mut claims =
            serde_json::json!({"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + valid_for});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test-key".into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("signing a test JWT")
    }
}
