//! Certificates: the mesh CA (root creation or loading, CSR signing for one SPIFFE identity),
//! workload key and CSR generation, chain parsing and the renewal time of a certificate.
//!
//! Owns the X.509 side of identity. It does not build TLS configurations (`tls`) nor talk to a
//! CA over the network (the controller serves, ztunnel requests).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError};

/// Default workload certificate lifetime, as Istio's `SECRET_TTL`.
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default root lifetime: ten years, as Istio's self-signed root.
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerated clock skew: certificates are valid from a minute before they are issued.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a key pair: {0}")]
    KeyGen(#[source] rcgen::Error),
    #[error("building a certificate: {0}")]
    Build(#[source] rcgen::Error),
    #[error("the CSR is not a valid PKCS#10 request or its signature does not verify: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("the CSR asks for {requested:?} but the caller may only be issued {allowed}")]
    CsrIdentity { requested: Vec<String>, allowed: Identity },
    #[error("the CA certificate and key do not load: {0}")]
    CaLoad(String),
    #[error("certificate PEM does not parse: {0}")]
    Pem(String),
    #[error("certificate DER does not parse: {0}")]
    Der(String),
    #[error("certificate has no URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; a workload certificate has exactly one")]
    ManyUriSans(usize),
    #[error("certificate URI SAN is not a mesh identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("empty certificate chain")]
    EmptyChain,
}

/// Validity window of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less a minute of clock skew) for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Validity { not_before: now - BACKDATE, not_after: now + lifetime }
    }

    /// When to renew: half way through the lifetime, as Istio does.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + life / 2
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves the serial zeroed; the key pair generation would fail first.
    let _ = rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// The mesh certificate authority: a self-signed ECDSA P-256 root and its key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("root", &self.root_pem.len()).finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new root for `trust_domain`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertError::KeyGen)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Ambit mesh root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let validity = Validity::from_now(lifetime);
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(CertError::Build)?;
        let key_pem = key.serialize_pem();
        let root_pem = cert.pem();
        let root_der = cert.der().clone();
        Ok(Ca { issuer: Issuer::new(params, key), root_der, root_pem, key_pem })
    }

    /// Loads an operator-supplied root (PEM certificate and PKCS#8 PEM key).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::CaLoad(format!("key: {e}")))?;
        let root_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::CaLoad(format!("certificate: {e}")))?;
        let (_, parsed) =
            X509Certificate::from_der(&root_der).map_err(|e| CertError::CaLoad(format!("certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::CaLoad("the key does not belong to the certificate".into()));
        }
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|e| CertError::CaLoad(format!("certificate: {e}")))?;
        Ok(Ca { issuer, root_der, root_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned() })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root key in PKCS#8 PEM, for persisting the CA.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a PEM CSR for exactly `identity`. The CSR's own SANs must be absent or equal to that
    /// identity; everything but its public key is ignored, so a caller cannot ask for a CA
    /// certificate or extra names. Returns the chain in PEM, leaf first, root last.
    pub fn sign_csr(&self, csr_pem: &str, identity: &Identity, validity: Validity) -> Result<Vec<String>, CertError> {
        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|_| CertError::Csr(rcgen::Error::CouldNotParseCertificationRequest))?;
        let requested = CertificateSigningRequestParams::from_der(&csr_der).map_err(CertError::Csr)?;
        let requested_names: Vec<String> = requested
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        let wanted = identity.to_string();
        if requested_names.iter().any(|n| *n != wanted) {
            return Err(CertError::CsrIdentity { requested: requested_names, allowed: identity.clone() });
        }
        let params = leaf_params(identity, validity)?;
        let signable = CertificateSigningRequestParams { params, public_key: requested.public_key };
        let leaf = signable.signed_by(&self.issuer).map_err(CertError::Build)?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }

    /// Issues a key and certificate directly (for the CA's own serving identity and tests).
    pub fn issue(&self, identity: &Identity, validity: Validity) -> Result<WorkloadCert, CertError> {
        let key = WorkloadKey::generate(identity)?;
        let chain = self.sign_csr(&key.csr_pem, identity, validity)?;
        WorkloadCert::from_pem_chain(key, &chain)
    }

    /// Issues the control plane's own serving certificate: its SPIFFE identity (what the
    /// mesh's own clients pin) and the DNS names and IP addresses standard TLS clients verify a
    /// server by (Istio's ztunnel checks `CA_ADDRESS`'s host). Only for the controller itself:
    /// a CSR never gets names ([`Ca::sign_csr`]).
    pub fn issue_server(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        validity: Validity,
    ) -> Result<WorkloadCert, CertError> {
        let key = WorkloadKey::generate(identity)?;
        let csr_der = CertificateSigningRequestDer::from_pem_slice(key.csr_pem.as_bytes())
            .map_err(|_| CertError::Csr(rcgen::Error::CouldNotParseCertificationRequest))?;
        let requested = CertificateSigningRequestParams::from_der(&csr_der).map_err(CertError::Csr)?;
        let mut params = leaf_params(identity, validity)?;
        for name in dns_names {
            let name = name.clone().try_into().map_err(CertError::Build)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let signable = CertificateSigningRequestParams { params, public_key: requested.public_key };
        let leaf = signable.signed_by(&self.issuer).map_err(CertError::Build)?;
        WorkloadCert::from_pem_chain(key, &[leaf.pem(), self.root_pem.clone()])
    }
}

fn leaf_params(identity: &Identity, validity: Validity) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let uri = identity.to_string().try_into().map_err(CertError::Build)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A freshly generated workload key (ECDSA P-256) and the CSR for its identity.
pub struct WorkloadKey {
    key: KeyPair,
    pub csr_pem: String,
}

impl WorkloadKey {
    pub fn generate(identity: &Identity) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertError::KeyGen)?;
        let mut params = CertificateParams::default();
        let uri = identity.to_string().try_into().map_err(CertError::Build)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(CertError::Build)?;
        let csr_pem = csr.pem().map_err(CertError::Build)?;
        Ok(WorkloadKey { key, csr_pem })
    }
}

/// A workload's certificate chain with its key: what a TLS endpoint presents.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first; the root of the mesh is not included.
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots this certificate chains to (the last element the CA returned).
    pub roots: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub validity: Validity,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        WorkloadCert {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            roots: self.roots.clone(),
            key: self.key.clone_key(),
            validity: self.validity,
        }
    }
}

impl WorkloadCert {
    /// Assembles a certificate from a CA response (PEM chain, leaf first, root last).
    pub fn from_pem_chain(key: WorkloadKey, pems: &[String]) -> Result<Self, CertError> {
        let mut certs = parse_pem_chain(pems)?;
        if certs.is_empty() {
            return Err(CertError::EmptyChain);
        }
        let roots = if certs.len() > 1 { vec![certs.pop().ok_or(CertError::EmptyChain)?] } else { Vec::new() };
        let info = CertInfo::parse(&certs[0])?;
        Ok(WorkloadCert {
            identity: info.identity,
            chain: certs,
            roots,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.serialize_der())),
            validity: info.validity,
        })
    }

    /// When this certificate should be renewed (half its life).
    pub fn refresh_at(&self) -> SystemTime {
        self.validity.refresh_at()
    }
}

/// Parses a list of PEM strings, each holding one or more certificates, in order.
pub fn parse_pem_chain(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut out = Vec::with_capacity(pems.len());
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            out.push(cert.map_err(|e| CertError::Pem(e.to_string()))?);
        }
    }
    Ok(out)
}

/// What the mesh reads out of a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub identity: Identity,
    pub validity: Validity,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
        let validity = Validity {
            not_before: SystemTime::UNIX_EPOCH
                + Duration::from_secs(cert.validity().not_before.timestamp().max(0) as u64),
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64),
        };
        Ok(CertInfo { identity: identity_of(&cert)?, validity })
    }
}

/// The single SPIFFE URI SAN of a certificate.
pub fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, CertError> {
    let san = cert.subject_alternative_name().map_err(|e| CertError::Der(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::NoUriSan),
        [one] => Ok(one.parse()?),
        many => Err(CertError::ManyUriSans(many.len())),
    }
}

/// Reads the identity from a DER certificate.
pub fn identity_of_der(der: &[u8]) -> Result<Identity, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
    identity_of(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn csr_round_trip_yields_a_leaf_for_the_identity() {
        let ca = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).unwrap();
        let who = id("spiffe://cluster.local/ns/shop/sa/cart");
        let key = WorkloadKey::generate(&who).unwrap();
        assert!(key.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let chain = ca.sign_csr(&key.csr_pem, &who, Validity::from_now(DEFAULT_WORKLOAD_LIFETIME)).unwrap();
        assert_eq!(chain.len(), 2, "leaf then root");
        assert_eq!(chain[1], ca.root_pem());
        let cert = WorkloadCert::from_pem_chain(key, &chain).unwrap();
        assert_eq!(cert.identity, who);
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots, vec![ca.root_der().clone()]);
        let life = cert.validity.not_after.duration_since(cert.validity.not_before).unwrap();
        assert_eq!(life, DEFAULT_WORKLOAD_LIFETIME + BACKDATE);
        assert_eq!(cert.refresh_at(), cert.validity.not_before + life / 2);
    }

    #[test]
    fn csr_for_another_identity_is_refused() {
        let ca = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).unwrap();
        let key = WorkloadKey::generate(&id("spiffe://cluster.local/ns/shop/sa/admin")).unwrap();
        let err = ca
            .sign_csr(
                &key.csr_pem,
                &id("spiffe://cluster.local/ns/shop/sa/cart"),
                Validity::from_now(DEFAULT_WORKLOAD_LIFETIME),
            )
            .unwrap_err();
        assert!(matches!(err, CertError::CsrIdentity { .. }), "{err}");
        assert!(err.to_string().contains("sa/admin"), "{err}");
    }

    #[test]
    fn malformed_csr_is_refused() {
        let ca = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).unwrap();
        let who = id("spiffe://cluster.local/ns/shop/sa/cart");
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        let err = ca.sign_csr(garbage, &who, Validity::from_now(DEFAULT_WORKLOAD_LIFETIME)).unwrap_err();
        assert!(matches!(err, CertError::Csr(_)), "{err}");
        let err = ca.sign_csr("not pem at all", &who, Validity::from_now(DEFAULT_WORKLOAD_LIFETIME)).unwrap_err();
        assert!(matches!(err, CertError::Csr(_)), "{err}");
    }

    #[test]
    fn ca_persists_and_reloads() {
        let ca = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).unwrap();
        let again = Ca::load(ca.root_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.root_der(), ca.root_der());
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let cert = again.issue(&who, Validity::from_now(DEFAULT_WORKLOAD_LIFETIME)).unwrap();
        assert_eq!(cert.roots, vec![ca.root_der().clone()]);
        let other = Ca::generate("cluster.local", DEFAULT_ROOT_LIFETIME).unwrap();
        let err = Ca::load(ca.root_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
