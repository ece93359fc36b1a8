//! Certificates served to clients outside the mesh — an ingress listener's, from a
//! `kubernetes.io/tls` Secret — parsed and checked the same way by the controller (which
//! reports a bad one in the Gateway's status) and the gateway (which serves it).

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenerKeyError {
    #[error("no certificate in tls.crt")]
    NoCertificate,
    #[error("tls.crt: {0}")]
    Chain(String),
    #[error("tls.key: {0}")]
    Key(String),
    #[error("tls.key does not match the certificate in tls.crt: {0}")]
    Mismatch(String),
}

/// A PEM chain (leaf first) and its PEM private key as rustls serves them: the key parses, is
/// a kind rustls signs with, and matches the leaf.
pub fn listener_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, ListenerKeyError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ListenerKeyError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(ListenerKeyError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ListenerKeyError::Key(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| ListenerKeyError::Key(e.to_string()))?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().map_err(|e| ListenerKeyError::Mismatch(e.to_string()))?;
    // The leaf must parse as X.509 (keys_match reads only its public key).
    x509_parser::parse_x509_certificate(&key.cert[0]).map_err(|e| ListenerKeyError::Chain(e.to_string()))?;
    Ok(key)
}
