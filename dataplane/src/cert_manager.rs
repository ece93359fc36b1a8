//! Workload certificates: one per identity running on the node, requested from the mesh CA
//! with `ImpersonatedIdentity` (ztunnel asks on behalf of its pods), renewed at half life, kept
//! while renewal fails (until it expires), fetched as soon as a pod appears so the first
//! connection rarely waits.
//!
//! One refresher task per identity; callers share its result through a watch channel, so a
//! burst of connections for a new identity makes one request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambit_shared::certs::{WorkloadCert, WorkloadKey};
use ambit_shared::grpc;
use ambit_shared::proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_shared::proto::ca::IstioCertificateRequest;
use ambit_shared::Identity;
use tokio::sync::watch;

/// Metadata key for asking on behalf of another identity (Istio's).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Retry backoff after a failed request: doubles from the first to the last (Istio: 150 s).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(150);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("certificate request for {identity} failed: {reason}")]
    Request { identity: Identity, reason: String },
    #[error("the CA answered with a certificate for {got}, not {want}")]
    WrongIdentity { want: Identity, got: Identity },
    #[error("certificate manager stopped")]
    Stopped,
}

/// The TLS server configuration of one identity, from its current certificate, rebuilt only
/// when the certificate was renewed (a pod's inbound listener, a waypoint's). No current
/// certificate refuses the connection.
pub struct ServerTls {
    identity: Identity,
    certs: Arc<CertManager>,
    roots: ambit_shared::tls::MeshRoots,
    cached: Mutex<Option<(Arc<WorkloadCert>, Arc<rustls::ServerConfig>)>>,
}

impl ServerTls {
    pub fn new(identity: Identity, certs: Arc<CertManager>, roots: ambit_shared::tls::MeshRoots) -> Self {
        ServerTls { identity, certs, roots, cached: Mutex::default() }
    }

    pub fn config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let cert = self.certs.current(&self.identity)?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, config)) = cached.as_ref() {
            if Arc::ptr_eq(c, &cert) {
                return Some(config.clone());
            }
        }
        match ambit_shared::tls::server_config(&cert, &self.roots) {
            Ok(config) => {
                let config = Arc::new(config);
                *cached = Some((cert, config.clone()));
                Some(config)
            }
            Err(e) => {
                tracing::error!(identity = %self.identity, error = %e, "cannot build the TLS server configuration");
                None
            }
        }
    }
}

impl ambit_shared::hbone::server::CertResolver for ServerTls {
    fn config_for(&self, _local: SocketAddr) -> Option<Arc<rustls::ServerConfig>> {
        self.config()
    }
}

/// Talks to `IstioCertificateService`.
#[derive(Clone)]
pub struct CaClient {
    pub address: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Sent as `authorization: Bearer <token>`, read at every request.
    pub token: grpc::Token,
    pub lifetime: Duration,
}

/// Deadline of one CreateCertificate call, connection included.
pub const CA_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl CaClient {
    /// Generates a key, sends the CSR, checks the answer names `identity`.
    pub async fn request(&self, identity: &Identity) -> Result<WorkloadCert, FetchError> {
        let fail = |reason: String| FetchError::Request { identity: identity.clone(), reason };
        let key = WorkloadKey::generate(identity).map_err(|e| fail(e.to_string()))?;
        let metadata = prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_string())) },
            )]
            .into(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: key.csr_pem.clone(),
            validity_duration: i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        let bearer = self.token.header().map_err(|e| fail(e.to_string()))?;
        request.metadata_mut().insert("authorization", bearer);
        let mut client = IstioCertificateServiceClient::new(grpc::channel(self.address, self.tls.clone()));
        // A stalled CA must not hang renewal (and every caller waiting for the certificate).
        let response = tokio::time::timeout(CA_REQUEST_TIMEOUT, client.create_certificate(request))
            .await
            .map_err(|_| fail(format!("the CA did not answer within {CA_REQUEST_TIMEOUT:?}")))?
            .map_err(|s| fail(format!("{:?}: {}", s.code(), s.message())))?;
        let cert =
            WorkloadCert::from_pem_chain(key, &response.into_inner().cert_chain).map_err(|e| fail(e.to_string()))?;
        if cert.identity != *identity {
            return Err(FetchError::WrongIdentity { want: identity.clone(), got: cert.identity });
        }
        Ok(cert)
    }
}

/// The state of one identity's certificate.
#[derive(Debug, Clone)]
pub enum CertState {
    /// First request in flight.
    Pending,
    Ready(Arc<WorkloadCert>),
    /// No usable certificate; the refresher keeps retrying.
    Failed(FetchError),
}

struct Slot {
    state: watch::Receiver<CertState>,
    task: tokio::task::AbortHandle,
}

/// Certificates for every identity on the node.
pub struct CertManager {
    ca: CaClient,
    slots: Mutex<HashMap<Identity, Slot>>,
}

impl CertManager {
    pub fn new(ca: CaClient) -> Arc<Self> {
        Arc::new(CertManager { ca, slots: Mutex::default() })
    }

    fn slot(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(identity) {
            return slot.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::Pending);
        let task = tokio::spawn(refresh(self.ca.clone(), identity.clone(), tx)).abort_handle();
        slots.insert(identity.clone(), Slot { state: rx.clone(), task });
        rx
    }

    /// Starts fetching a certificate for `identity` (a pod with it appeared on the node).
    pub fn prefetch(&self, identity: &Identity) {
        let _ = self.slot(identity);
    }

    /// The current certificate, waiting for the first one if needed.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, FetchError> {
        let mut rx = self.slot(identity);
        let state = rx.wait_for(|s| !matches!(s, CertState::Pending)).await.map_err(|_| FetchError::Stopped)?;
        match &*state {
            CertState::Ready(cert) => Ok(cert.clone()),
            CertState::Failed(e) => Err(e.clone()),
            CertState::Pending => Err(FetchError::Stopped),
        }
    }

    /// The current certificate, if one is ready (never waits; the TLS acceptor asks this).
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let state = slots.get(identity)?.state.borrow();
        match &*state {
            CertState::Ready(cert) => Some(cert.clone()),
            _ => None,
        }
    }

    /// Stops refreshing `identity` (its last pod left the node).
    pub fn forget(&self, identity: &Identity) {
        if let Some(slot) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(identity) {
            slot.task.abort();
        }
    }

    /// Identities and their certificates' expiry, for the admin dump.
    pub fn snapshot(&self) -> Vec<(Identity, Option<SystemTime>, Option<String>)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(id, slot)| match &*slot.state.borrow() {
                CertState::Ready(c) => (id.clone(), Some(c.validity.not_after), None),
                CertState::Failed(e) => (id.clone(), None, Some(e.to_string())),
                CertState::Pending => (id.clone(), None, None),
            })
            .collect()
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for slot in self.slots.lock().unwrap_or_else(|p| p.into_inner()).values() {
            slot.task.abort();
        }
    }
}

/// Requests, then renews at half life; on failure retries with backoff, keeping the current
/// certificate while it is still valid.
async fn refresh(ca: CaClient, identity: Identity, tx: watch::Sender<CertState>) {
    let mut backoff = RETRY_FIRST;
    loop {
        let wait = match ca.request(&identity).await {
            Ok(cert) => {
                backoff = RETRY_FIRST;
                let refresh_at = cert.refresh_at();
                tracing::info!(%identity, expires = ?cert.validity.not_after, "certificate issued");
                tx.send_replace(CertState::Ready(Arc::new(cert)));
                refresh_at.duration_since(SystemTime::now()).unwrap_or_default().max(Duration::from_millis(100))
            }
            Err(e) => {
                let still_valid =
                    matches!(&*tx.borrow(), CertState::Ready(c) if c.validity.not_after > SystemTime::now());
                if still_valid {
                    tracing::warn!(%identity, error = %e, retry_in = ?backoff, "certificate renewal failed; keeping the current one");
                } else {
                    tracing::error!(%identity, error = %e, retry_in = ?backoff, "no valid certificate");
                    tx.send_replace(CertState::Failed(e));
                }
                let wait = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
                wait
            }
        };
        if tx.is_closed() && tx.receiver_count() == 0 {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
