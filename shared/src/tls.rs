//! rustls configurations for mesh traffic: TLS 1.3 only, AES-GCM, ALPN `h2`, client certificates
//! required, and verifiers that check the chain against the mesh roots *and* the peer's SPIFFE
//! URI SAN against the identities expected for that connection.
//!
//! Owns certificate verification policy. It does not own the certificates (`certs`) nor the
//! connections (`hbone`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::{identity_of_der, CertError, WorkloadCert};
use crate::identity::Identity;

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no mesh root certificates to trust")]
    NoRoots,
    #[error("mesh root certificate rejected: {0}")]
    BadRoot(rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Why a mesh root file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsFileError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: String, source: crate::certs::CertError },
    #[error("{path} holds no certificate")]
    Empty { path: String },
    #[error("{path}: {source}")]
    Roots { path: String, source: TlsError },
}

/// The mesh roots from a PEM file (`ROOT_CERT`, the mounted `istio-ca-root-cert`).
pub fn read_roots_file(path: &std::path::Path) -> Result<MeshRoots, RootsFileError> {
    let p = path.display().to_string();
    let pem = std::fs::read_to_string(path).map_err(|source| RootsFileError::Read { path: p.clone(), source })?;
    let certs = crate::certs::parse_pem_chain(std::slice::from_ref(&pem))
        .map_err(|source| RootsFileError::Parse { path: p.clone(), source })?;
    if certs.is_empty() {
        return Err(RootsFileError::Empty { path: p });
    }
    MeshRoots::new(&certs).map_err(|source| RootsFileError::Roots { path: p, source })
}

/// Why a peer certificate was refused; carried inside rustls errors as `CertificateError::Other`
/// for the cases webpki has no variant for, so both ends of a failed handshake can say which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer identity {got} is not the expected {}", fmt_list(.expected))]
    Mismatch { expected: Vec<Identity>, got: Identity },
    #[error("peer certificate carries no usable SPIFFE identity: {0}")]
    NoIdentity(String),
    #[error("peer identity {got} is outside trust domain {trust_domain}")]
    ForeignTrustDomain { trust_domain: String, got: Identity },
}

fn fmt_list(ids: &[Identity]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
}

/// A handshake failure, classified so callers and metrics can tell the reasons apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate (or one in its chain) has expired or is not valid yet.
    Expired,
    /// The chain does not lead to a mesh root.
    UntrustedIssuer,
    /// The chain is fine but names someone else.
    Identity(PeerIdentityError),
    /// The peer reported that it refused our certificate (alert received).
    RefusedByPeer(String),
    /// Anything else (protocol errors, no shared cipher, no ALPN…).
    Other(String),
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::Expired => f.write_str("peer certificate expired or not yet valid"),
            HandshakeFailure::UntrustedIssuer => f.write_str("peer certificate is not signed by a mesh root"),
            HandshakeFailure::Identity(e) => fmt::Display::fmt(e, f),
            HandshakeFailure::RefusedByPeer(a) => write!(f, "peer refused our certificate ({a})"),
            HandshakeFailure::Other(e) => f.write_str(e),
        }
    }
}

impl HandshakeFailure {
    /// Classifies a rustls error.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => HandshakeFailure::Expired,
            E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                HandshakeFailure::UntrustedIssuer
            }
            E::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<PeerIdentityError>() {
                    Some(e) => HandshakeFailure::Identity(e.clone()),
                    None => HandshakeFailure::Other(err.to_string()),
                }
            }
            E::AlertReceived(alert) => HandshakeFailure::RefusedByPeer(format!("{alert:?}")),
            other => HandshakeFailure::Other(other.to_string()),
        }
    }

    /// Classifies an I/O error from a tokio-rustls handshake.
    pub fn from_io(err: &std::io::Error) -> Self {
        match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(e) => Self::from_rustls(e),
            None => HandshakeFailure::Other(err.to_string()),
        }
    }
}

/// The crypto provider for mesh traffic: aws-lc-rs with the TLS 1.3 AES-GCM suites only.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = rustls::crypto::aws_lc_rs::default_provider();
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                ],
                ..base
            })
        })
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The mesh trust anchors.
#[derive(Clone)]
pub struct MeshRoots(Arc<RootCertStore>);

impl fmt::Debug for MeshRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshRoots({} roots)", self.0.len())
    }
}

impl MeshRoots {
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(TlsError::BadRoot)?;
        }
        Ok(MeshRoots(Arc::new(store)))
    }

    fn store(&self) -> &Arc<RootCertStore> {
        &self.0
    }
}

fn peer_identity(end_entity: &CertificateDer<'_>) -> Result<Identity, rustls::Error> {
    identity_of_der(end_entity).map_err(|e: CertError| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerIdentityError::NoIdentity(
            e.to_string(),
        )))))
    })
}

fn identity_error(e: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Client-side verifier: chain to a mesh root, then the URI SAN must be one of `expected`.
#[derive(Debug)]
struct ExpectedIdentityVerifier {
    roots: MeshRoots,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            self.roots.store(),
            intermediates,
            now,
            algorithms().all,
        )?;
        let got = peer_identity(end_entity)?;
        if !self.expected.contains(&got) {
            return Err(identity_error(PeerIdentityError::Mismatch { expected: self.expected.clone(), got }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server-side verifier: a client certificate is required, must chain to a mesh root and carry
/// an identity of our trust domain. Which identities may do what is authorization's business.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: Arc<str>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let got = peer_identity(end_entity)?;
        if got.trust_domain() != &*self.trust_domain {
            return Err(identity_error(PeerIdentityError::ForeignTrustDomain {
                trust_domain: self.trust_domain.to_string(),
                got,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server configuration presenting `cert` and requiring a mesh client certificate.
pub fn server_config(cert: &WorkloadCert, roots: &MeshRoots) -> Result<ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots.store().clone(), provider()).build()?;
    let verifier = MeshClientVerifier { inner, trust_domain: cert.identity.trust_domain().into() };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // HBONE connections are long-lived and pooled; resumption buys little and costs state.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Client configuration presenting `cert` and accepting only a peer whose identity is in
/// `expected` (the destination workload, or any of a service's SANs).
pub fn client_config(
    cert: &WorkloadCert,
    roots: &MeshRoots,
    expected: Vec<Identity>,
) -> Result<ClientConfig, TlsError> {
    let verifier = ExpectedIdentityVerifier { roots: roots.clone(), expected };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Server configuration for the control plane (xDS and CA on one port): presents `cert`;
/// callers authenticate with a token, so a client certificate is verified when offered but not
/// required.
pub fn control_plane_server_config(cert: &WorkloadCert, roots: &MeshRoots) -> Result<ServerConfig, TlsError> {
    control_plane_server_config_reloadable(Arc::new(ReloadableCert::new(cert)?), roots)
}

/// A server certificate that can be replaced while serving (renewal): every new handshake
/// gets the latest.
#[derive(Debug)]
pub struct ReloadableCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ReloadableCert {
    pub fn new(cert: &WorkloadCert) -> Result<Self, TlsError> {
        Ok(ReloadableCert(std::sync::RwLock::new(Arc::new(certified_key(cert)?))))
    }

    pub fn replace(&self, cert: &WorkloadCert) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(cert)?);
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

fn certified_key(cert: &WorkloadCert) -> Result<rustls::sign::CertifiedKey, TlsError> {
    Ok(rustls::sign::CertifiedKey::from_der(cert.chain.clone(), cert.key.clone_key(), &provider())?)
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// As [`control_plane_server_config`], with a certificate that can be renewed in place.
pub fn control_plane_server_config_reloadable(
    cert: Arc<ReloadableCert>,
    roots: &MeshRoots,
) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.store().clone(), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client configuration towards the control plane: the server must chain to a mesh root and
/// be one of `expected`; no client certificate (the caller sends a token).
pub fn control_plane_client_config(roots: &MeshRoots, expected: Vec<Identity>) -> Result<ClientConfig, TlsError> {
    let verifier = ExpectedIdentityVerifier { roots: roots.clone(), expected };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// The verified identity of the peer of an established connection.
pub fn peer_identity_of(conn: &rustls::CommonState) -> Option<Identity> {
    conn.peer_certificates().and_then(|c| c.first()).and_then(|c| identity_of_der(c).ok())
}

mod listener_key;
pub use listener_key::{listener_key, ListenerKeyError};

#[cfg(test)]
mod tests;
