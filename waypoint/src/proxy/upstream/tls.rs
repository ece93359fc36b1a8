//! TLS the waypoint originates to endpoints outside the mesh (a DestinationRule's
//! `trafficPolicy.tls.mode: SIMPLE`): the server's certificate must chain to the system's roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) and name the server name sent, unless the rule
//! says `insecureSkipVerify: true`. ALPN offers the request's own protocol only, so the server
//! cannot pick one the pooled client does not speak. Mesh endpoints never use this: they are
//! reached over HBONE.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The four client configurations: verified or not, HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub struct UpstreamTls {
    verified: [Arc<ClientConfig>; 2],
    unverified: [Arc<ClientConfig>; 2],
}

impl UpstreamTls {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = crate::fetch::system_roots();
        let build = |verify: bool, h2: bool| -> Arc<ClientConfig> {
            let builder =
                match ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
                    Ok(b) => b,
                    // aws-lc-rs supports the default versions; never taken.
                    Err(_) => ClientConfig::builder(),
                };
            let mut config = if verify {
                builder.with_root_certificates(roots.clone()).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                    .with_no_client_auth()
            };
            config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
            Arc::new(config)
        };
        UpstreamTls {
            verified: [build(true, false), build(true, true)],
            unverified: [build(false, false), build(false, true)],
        }
    }

    /// The configuration for a connection: `verify` the server, speaking HTTP/2 (`h2`) or 1.1.
    pub fn config(&self, verify: bool, h2: bool) -> Arc<ClientConfig> {
        let set = if verify { &self.verified } else { &self.unverified };
        set[usize::from(h2)].clone()
    }
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self::new()
    }
}

/// `insecureSkipVerify: true`: any certificate is accepted (the handshake's signatures are
/// still checked, so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
