//! The data path. A ZDS client receives each enrolled pod's network namespace; for every pod
//! the proxy opens, inside that namespace:
//! - 15001: outbound — redirected connections, sent over HBONE (or plain TCP outside the mesh);
//! - 15008: inbound HBONE — mutual TLS with the pod's own certificate, L4 authorization, then
//!   the application is reached with the client's address as source;
//! - 15006: inbound plaintext — clients outside the mesh, authorized without an identity;
//! - 15053 (UDP and TCP, loopback): the pod's redirected DNS, when the DNS proxy is on
//!   ([`crate::dns_proxy`]).
//!
//! Every connection is one task; decisions read the shared [`State`] under a short read lock
//! and never scan it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_shared::hbone::client::{Client as HboneClient, PoolSettings};
use ambit_shared::hbone::server::{Budget, CertResolver, Server as HboneServer};
use ambit_shared::tls::MeshRoots;

use ambit_shared::Identity;
use rustls::ServerConfig;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use crate::config::Config;
use crate::dns_proxy::{Client as DnsClient, DnsProxy};
use crate::inpod::zds::Pods;
use crate::inpod::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::metrics::Metrics;
use ambit_dataplane::cert_manager::{CertManager, ServerTls};
use ambit_dataplane::state::State;
use ambit_shared::netns::Netns;
use ambit_shared::proto::zds::WorkloadInfo;

mod error;
mod inbound;
mod outbound;
pub mod sockets;

/// What the proxy shares between pods and connections.
pub struct Proxy {
    pub config: Arc<Config>,
    pub state: Arc<RwLock<State>>,
    pub certs: Arc<CertManager>,
    pub roots: MeshRoots,
    pub metrics: Metrics,
    pods: Mutex<HashMap<String, PodHandle>>,
    /// Connections and streams every pod's 15008 takes on, together.
    hbone_budget: Arc<Budget>,
    /// Hostnames of DNS endpoints, resolved per connection (cached for their TTLs).
    pub resolver: ambit_dataplane::resolve::Resolver,
    /// The DNS proxy, serving every pod's redirected DNS (none when turned off).
    dns_proxy: Option<Arc<DnsProxy>>,
    active: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
    /// Bumped at every xDS update: open inbound connections are authorized again on it.
    pub changes: tokio::sync::watch::Receiver<u64>,
}

/// One enrolled pod, as its connections see it.
pub struct Pod {
    /// The ZDS uid.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    /// `identity` as a SPIFFE URI, made once: every connection's telemetry labels share it.
    pub principal: Arc<str>,
    /// The control plane's name for its workload.
    pub workload_uid: String,
    pub netns: Arc<Netns>,
    /// Tunnels from this pod (dialed inside its namespace).
    pub hbone: HboneClient,
    tls: ServerTls,
}

/// A pod's listener tasks. Dropping it aborts them and with them every connection they
/// accepted (ZDS `del`: the pod is gone, no drain); `stop` only closes the listeners and lets
/// the connections finish (SIGTERM drain).
struct PodHandle {
    pod: Arc<Pod>,
    tasks: Vec<AbortHandle>,
    stop: watch::Sender<bool>,
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The pod's server certificate, rebuilt only when the certificate was renewed.
impl CertResolver for Pod {
    fn config_for(&self, _local: SocketAddr) -> Option<Arc<ServerConfig>> {
        self.tls.config()
    }
}

/// Counts a connection as active until dropped (drain waits for zero).
pub struct ConnGuard(Arc<Proxy>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A pod the proxy could not take.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("binding {port} in the pod's network namespace: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("pod {0}: workload info has no namespace or name")]
    NoInfo(String),
    #[error("pod {uid}: identity: {reason}")]
    Identity { uid: String, reason: String },
}

impl Proxy {
    pub fn new(
        config: Arc<Config>,
        state: Arc<RwLock<State>>,
        certs: Arc<CertManager>,
        roots: MeshRoots,
        metrics: Metrics,
        dns_proxy: Option<Arc<DnsProxy>>,
        changes: tokio::sync::watch::Receiver<u64>,
    ) -> Arc<Self> {
        Arc::new(Proxy {
            changes,
            dns_proxy,
            hbone_budget: Budget::new(config.hbone_limits),
            resolver: ambit_dataplane::resolve::Resolver::new(&config.dns_nameservers),
            config,
            state,
            certs,
            roots,
            metrics,
            pods: Mutex::default(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    fn guard(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Connections in flight.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodHandle>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enrolled pods: uid, namespace/name, identity.
    pub fn pod_list(&self) -> Vec<(String, String, Identity)> {
        let mut list: Vec<_> = self
            .pods()
            .values()
            .map(|h| (h.pod.uid.clone(), format!("{}/{}", h.pod.namespace, h.pod.name), h.pod.identity.clone()))
            .collect();
        list.sort();
        list
    }

    /// Takes a pod: opens its listeners inside its namespace and starts its certificate.
    pub fn add_pod(
        self: &Arc<Self>,
        uid: &str,
        info: &ambit_shared::proto::zds::WorkloadInfo,
        netns: Netns,
    ) -> Result<(), PodError> {
        if self.pods().contains_key(uid) {
            return Ok(());
        }
        if info.namespace.is_empty() || info.name.is_empty() {
            return Err(PodError::NoInfo(uid.to_owned()));
        }
        let sa = if info.service_account.is_empty() { "default" } else { &info.service_account };
        let identity = Identity::new(&self.config.trust_domain, &info.namespace, sa)
            .map_err(|e| PodError::Identity { uid: uid.to_owned(), reason: e.to_string() })?;
        let netns = Arc::new(netns);
        let listen = |port| {
            sockets::listen(&netns, SocketAddr::from(([0, 0, 0, 0], port)))
                .map_err(|source| PodError::Listen { port, source })
        };
        let mut listeners =
            vec![(listen(OUTBOUND_PORT)?, listen(INBOUND_PLAINTEXT_PORT)?, listen(INBOUND_HBONE_PORT)?)];
        // IPv6 too when the pod has it (its rules capture IPv6 as well; see node::rules).
        let listen6 = |port| sockets::listen(&netns, SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        match (listen6(OUTBOUND_PORT), listen6(INBOUND_PLAINTEXT_PORT), listen6(INBOUND_HBONE_PORT)) {
            (Ok(o), Ok(p), Ok(h)) => listeners.push((o, p, h)),
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
                tracing::debug!(%uid, error = %e, "no IPv6 listeners in the pod (no IPv6 there)");
            }
        }
        self.certs.prefetch(&identity);
        let hbone = HboneClient::with_dialer(
            self.roots.clone(),
            // As many connections per peer as threads to encrypt on: more buy no parallelism
            // and cost each a TLS session and HTTP/2 buffers.
            PoolSettings {
                connections_per_key: self.config.worker_threads,
                read_ahead: self.config.hbone_limits.read_ahead as usize,
                ..PoolSettings::default()
            },
            Arc::new(sockets::PodDialer(netns.clone())),
        );
        let pod = Arc::new(Pod {
            uid: uid.to_owned(),
            name: info.name.clone(),
            namespace: info.namespace.clone(),
            identity: identity.clone(),
            principal: Arc::from(identity.to_string()),
            workload_uid: self.config.pod_uid(&info.namespace, &info.name),
            netns,
            hbone,
            tls: ServerTls::new(identity.clone(), self.certs.clone(), self.roots.clone()),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(dns) = &self.dns_proxy {
            // Without its DNS listener the pod's redirected DNS would go unanswered: the pod is
            // refused instead (the node agent retries), never half taken.
            let client = DnsClient {
                namespace: Arc::from(info.namespace.as_str()),
                network: Arc::from(self.config.network.as_str()),
                workload_uid: Arc::from(pod.workload_uid.as_str()),
                cluster_domain: Arc::from(self.config.cluster_domain.as_str()),
            };
            let dns_tasks = dns
                .serve_pod(&pod.netns, listeners.len() > 1, client, stopped.clone())
                .map_err(|source| PodError::Listen { port: crate::dns_proxy::DNS_PORT, source })?;
            tasks.extend(dns_tasks);
        }
        for (out_l, in_plain_l, in_hbone_l) in listeners {
            let (proxy, p) = (self.clone(), pod.clone());
            tasks.push(
                tokio::spawn(accept_loop(proxy, p, out_l, "outbound", stopped.clone(), outbound::handle))
                    .abort_handle(),
            );
            let (proxy, p) = (self.clone(), pod.clone());
            tasks.push(
                tokio::spawn(accept_loop(proxy, p, in_plain_l, "inbound", stopped.clone(), inbound::plaintext))
                    .abort_handle(),
            );
            let handler = Arc::new(inbound::HboneHandler { proxy: self.clone(), pod: pod.clone() });
            let server = HboneServer::with_budget(handler, pod.clone(), self.hbone_budget.clone());
            let mut stop_hbone = stopped.clone();
            let until = async move {
                let _ = stop_hbone.wait_for(|s| *s).await;
            };
            tasks.push(tokio::spawn(server.serve_until(in_hbone_l, until)).abort_handle());
        }
        tracing::info!(%uid, pod = %format!("{}/{}", info.namespace, info.name), %identity, "pod enrolled; listening in its namespace");
        self.pods().insert(uid.to_owned(), PodHandle { pod, tasks, stop });
        Ok(())
    }

    /// Lets a pod go: closes its listeners and its connections at once (Istio's `del`: the pod
    /// is gone or left the mesh); stops its certificate when no other pod uses it.
    pub fn remove_pod(&self, uid: &str) -> bool {
        let removed = self.pods().remove(uid);
        let Some(handle) = removed else { return false };
        let identity = handle.pod.identity.clone();
        drop(handle);
        if !self.pods().values().any(|h| h.pod.identity == identity) {
            self.certs.forget(&identity);
        }
        tracing::info!(%uid, "pod removed from the proxy");
        true
    }

    /// Stops accepting everywhere, then waits (up to `grace`) for open connections to end.
    pub async fn drain(self: &Arc<Self>, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        for handle in self.pods().values() {
            handle.stop.send_replace(true);
        }
        let open = self.active_connections();
        tracing::info!(open, ?grace, "listeners closed; draining");
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active_connections() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(open = self.active_connections(), "drain period over; closing what is left");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Accepts on one of a pod's listeners, a task per connection, until `stop` turns true; then
/// closes the listener and waits for its connections. Aborting it aborts them too.
async fn accept_loop<F, Fut>(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    listener: tokio::net::TcpListener,
    what: &str,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Arc<Proxy>, Arc<Pod>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(handle(proxy.clone(), pod.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE and the like: transient; keep serving.
                tracing::warn!(pod = %pod.uid, error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The ZDS client enrolls and releases pods through this.
impl Pods for Arc<Proxy> {
    type Error = PodError;

    fn enroll(&self, uid: &str, info: &WorkloadInfo, netns: Netns) -> Result<(), PodError> {
        self.add_pod(uid, info, netns)
    }

    fn release(&self, uid: &str) {
        self.remove_pod(uid);
    }

    fn holds(&self, uid: &str) -> bool {
        self.pods().contains_key(uid)
    }

    fn held(&self) -> Vec<String> {
        self.pods().keys().cloned().collect()
    }

    fn is_draining(&self) -> bool {
        Proxy::is_draining(self)
    }
}

#[cfg(test)]
mod sizes;
