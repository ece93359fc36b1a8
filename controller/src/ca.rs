//! The certificate authority service (`istio.v1.auth.IstioCertificateService`) and the root's
//! persistence.
//!
//! A caller may get a certificate for its own identity. A node proxy (a configured identity,
//! ztunnel's) may ask for another identity through the `ImpersonatedIdentity` metadata field,
//! but only for an identity that a pod on the proxy's own node runs as. Every refusal says why
//! and is counted by reason.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_shared::certs::{Ca, CertError, Validity};
use ambit_shared::proto::ca::istio_certificate_service_server::IstioCertificateService;
use ambit_shared::proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use ambit_shared::Identity;
use tonic::{Request, Response, Status};

use crate::auth::{authenticate, Authenticator};
use crate::metrics::Metrics;
use crate::store::NodeIdentities;

/// Metadata field naming the identity a node proxy asks for (Istio's).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Load { path: PathBuf, source: CertError },
    #[error("only one of {0} and {1} exists; supply both or neither")]
    Half(PathBuf, PathBuf),
    #[error("creating the root: {0}")]
    Generate(CertError),
}

fn read(path: &Path) -> Result<String, RootError> {
    std::fs::read_to_string(path).map_err(|source| RootError::Read { path: path.to_owned(), source })
}

/// Loads the root from `dir`, or creates it there on first start (the key readable by the
/// owner only), so a restart keeps the same root.
pub fn load_or_create_root(dir: &Path, trust_domain: &str, lifetime: Duration) -> Result<Ca, RootError> {
    let cert = dir.join(ROOT_CERT_FILE);
    let key = dir.join(ROOT_KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => load_root(&cert, &key),
        (false, false) => {
            let ca = Ca::generate(trust_domain, lifetime).map_err(RootError::Generate)?;
            std::fs::create_dir_all(dir).map_err(|source| RootError::Write { path: dir.to_owned(), source })?;
            write_private(&key, ca.key_pem())?;
            std::fs::write(&cert, ca.root_pem()).map_err(|source| RootError::Write { path: cert.clone(), source })?;
            tracing::info!(dir = %dir.display(), "created a new mesh root certificate");
            Ok(ca)
        }
        _ => Err(RootError::Half(cert, key)),
    }
}

/// Loads an operator-supplied root.
pub fn load_root(cert: &Path, key: &Path) -> Result<Ca, RootError> {
    Ca::load(&read(cert)?, &read(key)?).map_err(|source| RootError::Load { path: cert.to_owned(), source })
}

fn write_private(path: &Path, contents: &str) -> Result<(), RootError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| RootError::Write { path: path.to_owned(), source })?;
    f.write_all(contents.as_bytes()).map_err(|source| RootError::Write { path: path.to_owned(), source })
}

/// Settings of the CA service.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// Identities allowed to impersonate workloads on their node (ztunnel's).
    pub node_proxies: Vec<Identity>,
}

pub struct CaService {
    pub ca: Arc<Ca>,
    pub trust_domain: String,
    pub auth: Arc<dyn Authenticator>,
    /// Which identities run on which node (a copy kept current by the index loop).
    pub identities: Arc<RwLock<NodeIdentities>>,
    pub settings: CaSettings,
    pub metrics: Arc<Metrics>,
}

impl CaService {
    fn deny(&self, reason: &str, status: Status) -> Status {
        self.metrics.denied(reason);
        tracing::warn!(reason, message = %status.message(), "certificate request refused");
        status
    }

    /// The identity the certificate is for, if the caller may have it.
    fn authorize(&self, caller: &crate::auth::Caller, requested: Option<&str>) -> Result<Identity, Status> {
        let Some(requested) = requested else {
            return Ok(caller.identity.clone());
        };
        let wanted: Identity = requested.parse().map_err(|e| {
            self.deny("bad-identity", Status::invalid_argument(format!("{IMPERSONATED_IDENTITY}: {e}")))
        })?;
        if wanted == caller.identity {
            return Ok(wanted);
        }
        if !self.settings.node_proxies.contains(&caller.identity) {
            return Err(self.deny(
                "impersonation",
                Status::permission_denied(format!("{} may not request certificates for {wanted}", caller.identity)),
            ));
        }
        if wanted.trust_domain() != self.trust_domain {
            return Err(self.deny(
                "trust-domain",
                Status::permission_denied(format!("{wanted} is outside trust domain {}", self.trust_domain)),
            ));
        }
        let identities = self.identities.read().unwrap_or_else(|p| p.into_inner());
        let node = caller.node.clone().or_else(|| {
            let pod = caller.pod.as_ref()?;
            identities.node_of(caller.identity.namespace(), pod).map(str::to_owned)
        });
        let Some(node) = node else {
            return Err(self.deny(
                "unknown-node",
                Status::permission_denied(format!("the node of caller {} is unknown", caller.identity)),
            ));
        };
        if !identities.runs_on(&node, wanted.namespace(), wanted.service_account()) {
            return Err(self.deny(
                "not-on-node",
                Status::permission_denied(format!("no pod running as {wanted} is on node {node}")),
            ));
        }
        Ok(wanted)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.csr_count.inc();
        let caller =
            authenticate(&*self.auth, request.metadata()).await.map_err(|s| self.deny("unauthenticated", s))?;
        let req = request.into_inner();
        let requested =
            req.metadata.as_ref().and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)).and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        let identity = self.authorize(&caller, requested)?;
        let lifetime = match u64::try_from(req.validity_duration) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.settings.max_lifetime),
            _ => self.settings.default_lifetime,
        };
        let chain = self.ca.sign_csr(&req.csr, &identity, Validity::from_now(lifetime)).map_err(|e| match e {
            CertError::Csr(_) | CertError::CsrIdentity { .. } => {
                self.deny("bad-csr", Status::invalid_argument(e.to_string()))
            }
            other => Status::internal(other.to_string()),
        })?;
        self.metrics.certs_issued.inc();
        tracing::info!(caller = %caller.identity, %identity, lifetime = ?lifetime, "certificate issued");
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain, ..Default::default() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("ambit-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_root(&dir, "cluster.local", Duration::from_secs(3600)).unwrap();
        let again = load_or_create_root(&dir, "cluster.local", Duration::from_secs(3600)).unwrap();
        assert_eq!(first.root_der(), again.root_der());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(ROOT_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(dir.join(ROOT_KEY_FILE)).unwrap();
        let err = load_or_create_root(&dir, "cluster.local", Duration::from_secs(3600)).unwrap_err();
        assert!(matches!(err, RootError::Half(..)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
