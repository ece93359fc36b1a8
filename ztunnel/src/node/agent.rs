//! The node agent: learns pods from the CNI plugin, captures those the control plane puts in
//! the mesh (Istio's in-pod redirect rules inside the pod's namespace) and hands their
//! namespaces to the proxy over ZDS — the same protocol Istio's istio-cni speaks, so either
//! agent can drive either proxy.
//!
//! One task owns all of the agent's state and does everything in order: CNI requests, control
//! plane changes (a namespace labelled into or out of the mesh enrolls or releases its pods
//! without restarting them), proxy (re)connections. Pods of the mesh no CNI call announced
//! (running since before the plugin was installed) are found among the node's processes
//! ([`discover`]) and captured the same way. Pods it knows are written to the state
//! directory, so a restarted agent re-applies their rules and resends the snapshot.
//!
//! Capture order: the proxy first gets the namespace and opens its listeners, then the rules
//! go in — no connection is ever redirected to a port nobody listens on. Release is the
//! reverse.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_shared::proto::zds::WorkloadInfo;
use ambit_shared::zds::{AgentConn, Listener as ZdsListener};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::node::cni::{CniCommand, CniRequest, CniResponse};
use crate::node::discover;
use crate::node::rules::InPodRules;
use ambit_dataplane::state::State;
use ambit_shared::netns::Netns;

/// Longest the agent waits for the proxy to answer one ZDS instruction.
const ZDS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often pods of the mesh not found running are looked for again.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// How long a pod of the mesh may be unannounced before it is looked for: a new pod's CNI
/// call is usually on its way.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(2);

/// The inode of an open namespace.
fn inode_of_fd(netns: &Netns) -> Option<u64> {
    nix::sys::stat::fstat(netns.as_fd()).ok().map(|s| s.st_ino)
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("binding the CNI socket {path}: {source}")]
    CniSocket { path: String, source: std::io::Error },
    #[error("binding the ZDS socket: {0}")]
    Zds(#[from] ambit_shared::zds::ZdsError),
    #[error("state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
}

/// What the agent remembers about a pod (also its file in the state directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// Set while captured: the identity the proxy serves it as (resent after a restart before
    /// the control plane has answered).
    #[serde(default)]
    pub service_account: Option<String>,
    /// A pod found running (not announced by a CNI call; its `netns` is the runtime's pinned
    /// path): the namespace's inode, checked before the path is trusted again.
    #[serde(default)]
    pub netns_inode: Option<u64>,
}

impl PodRecord {
    /// Found running by [`discover`], not announced by the runtime.
    fn discovered(&self) -> bool {
        self.netns_inode.is_some()
    }
}

struct AgentPod {
    record: PodRecord,
    /// The control plane's workload name, also the ZDS uid.
    uid: String,
    netns: Netns,
    /// Rules installed and the proxy told.
    captured: bool,
    /// The rules were installed by this run (with its settings): a pod captured by a previous
    /// run gets them again, so a changed setting (the DNS proxy turned on or off) reaches it.
    rules_current: bool,
    /// CNI ADD calls waiting for the outcome, with their deadline.
    waiters: Vec<(Instant, oneshot::Sender<CniResponse>)>,
}

enum Msg {
    Cni(CniRequest, oneshot::Sender<CniResponse>),
    Proxy(AgentConn),
}

struct Agent {
    config: Arc<Config>,
    state: Arc<RwLock<State>>,
    synced: watch::Receiver<bool>,
    pods: BTreeMap<String, AgentPod>,
    proxy: Option<AgentConn>,
    /// Pods of the mesh not found running yet: when to look for them again.
    look_again: BTreeMap<String, Instant>,
    /// When the pinned namespaces were last searched.
    last_search: Option<Instant>,
}

/// Starts the agent: binds the CNI and ZDS sockets, loads what an earlier run captured.
pub fn start(
    config: Arc<Config>,
    state: Arc<RwLock<State>>,
    changes: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let dir = &config.agent_state_dir;
    std::fs::create_dir_all(dir).map_err(|source| AgentError::StateDir { path: dir.display().to_string(), source })?;
    for path in [&config.cni_socket, &config.zds_socket] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| AgentError::CniSocket { path: parent.display().to_string(), source })?;
        }
    }
    let zds = ZdsListener::bind(&config.zds_socket)?;
    let cni_path = &config.cni_socket;
    let _ = std::fs::remove_file(cni_path);
    let cni = UnixListener::bind(cni_path)
        .map_err(|source| AgentError::CniSocket { path: cni_path.display().to_string(), source })?;
    restrict(cni_path);
    restrict(&config.zds_socket);
    let (tx, rx) = mpsc::channel(64);
    let mut agent = Agent {
        config: config.clone(),
        state,
        synced,
        pods: BTreeMap::new(),
        proxy: None,
        look_again: BTreeMap::new(),
        last_search: None,
    };
    agent.load();
    tokio::spawn(accept_cni(cni, tx.clone()));
    tokio::spawn(accept_zds(zds, tx));
    tokio::spawn(agent.run(rx, changes));
    tracing::info!(cni = %config.cni_socket.display(), zds = %config.zds_socket.display(), "node agent started");
    Ok(())
}

/// Only root (the runtime's CNI plugin, the proxy) may talk to the agent.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the socket's permissions");
    }
}

async fn accept_cni(listener: UnixListener, tx: mpsc::Sender<Msg>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "CNI socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(64 * 1024));
            let response = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<CniRequest>(&line) {
                    Ok(req) => {
                        let (reply, wait) = oneshot::channel();
                        if tx.send(Msg::Cni(req, reply)).await.is_err() {
                            CniResponse::error("the node agent is stopping")
                        } else {
                            wait.await.unwrap_or_else(|_| CniResponse::error("the node agent dropped the request"))
                        }
                    }
                    Err(e) => CniResponse::error(format!("malformed request: {e}")),
                },
                Err(e) => CniResponse::error(format!("reading the request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

async fn accept_zds(listener: ZdsListener, tx: mpsc::Sender<Msg>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                if tx.send(Msg::Proxy(conn)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "ZDS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn record_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("{namespace}_{name}.json"))
}

impl Agent {
    /// Pods an earlier run knew, whose namespaces still exist.
    fn load(&mut self) {
        let dir = self.config.agent_state_dir.clone();
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let record = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok());
            let Some(record) = record else {
                tracing::warn!(path = %path.display(), "unreadable pod record; removing it");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let opened = Netns::open(&record.netns).and_then(|netns| match record.netns_inode {
                // The pinned path may now be another pod's namespace.
                Some(inode) if inode_of_fd(&netns) != Some(inode) => Err(ambit_shared::netns::NetnsError::Open {
                    path: record.netns.display().to_string(),
                    source: std::io::Error::other("the pinned namespace is another one now"),
                }),
                _ => Ok(netns),
            });
            match opened {
                Ok(netns) => {
                    tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), "pod from the previous run");
                    let uid = self.config.pod_uid(&record.namespace, &record.name);
                    let key = format!("{}/{}", record.namespace, record.name);
                    // Captured by the previous run: its rules are in place; the snapshot gives it
                    // to the proxy again and reconciliation re-applies or removes the rules.
                    let captured = record.service_account.is_some();
                    let pod = AgentPod { record, uid, netns, captured, rules_current: false, waiters: Vec::new() };
                    self.pods.insert(key, pod);
                }
                Err(e) => {
                    tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), error = %e, "pod of the previous run is gone");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut changes: watch::Receiver<u64>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut look = tokio::time::interval(Duration::from_secs(1));
        let mut synced = self.synced.clone();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Cni(req, reply)) => self.cni(req, reply).await,
                    Some(Msg::Proxy(conn)) => self.proxy_connected(conn).await,
                    None => return,
                },
                Ok(()) = changes.changed() => self.reconcile().await,
                Ok(()) = synced.changed() => self.reconcile().await,
                _ = tick.tick() => self.expire_waiters(),
                _ = look.tick() => self.discover().await,
            }
        }
    }

    fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Whether the control plane puts the pod in the mesh: `Some(service account)` if so,
    /// `None` if it knows the pod outside the mesh, and `Err` if it does not know it (yet).
    fn wanted(&self, pod: &AgentPod) -> Result<Option<String>, ()> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        match state.workload(&pod.uid) {
            Some(w) if w.hbone && (w.node.is_empty() || *w.node == *self.config.node_name) => {
                Ok(Some(w.identity.service_account().to_owned()))
            }
            Some(_) => Ok(None),
            None => Err(()),
        }
    }

    async fn cni(&mut self, req: CniRequest, reply: oneshot::Sender<CniResponse>) {
        let key = format!("{}/{}", req.pod_namespace, req.pod_name);
        match req.command {
            CniCommand::Add => {
                let netns = match Netns::open(Path::new(&req.netns)) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = reply.send(CniResponse::error(e.to_string()));
                        return;
                    }
                };
                let record = PodRecord {
                    namespace: req.pod_namespace.clone(),
                    name: req.pod_name.clone(),
                    container_id: req.container_id.clone(),
                    netns: PathBuf::from(&req.netns),
                    ips: req.ips.clone(),
                    service_account: None,
                    netns_inode: None,
                };
                let uid = self.config.pod_uid(&record.namespace, &record.name);
                // Known already: the same namespace (found running, or announced again) stays
                // captured as it is; another one's pod is released first.
                let mut kept = None;
                if let Some(old) = self.pods.remove(&key) {
                    let same = inode_of_fd(&old.netns).is_some() && inode_of_fd(&old.netns) == inode_of_fd(&netns);
                    if same {
                        kept = Some((old.captured, old.rules_current, old.record.service_account.clone()));
                    } else if old.captured {
                        self.release(&old).await;
                    }
                }
                let (captured, rules_current, service_account) = kept.unwrap_or((false, false, None));
                let record = PodRecord { service_account, ..record };
                self.persist(&record);
                let deadline = Instant::now() + Duration::from_millis(self.config.enroll_wait_ms);
                let pod = AgentPod { record, uid, netns, captured, rules_current, waiters: vec![(deadline, reply)] };
                self.pods.insert(key.clone(), pod);
                self.reconcile_one(&key).await;
            }
            CniCommand::Del => {
                if let Some(pod) = self.pods.remove(&key) {
                    if pod.captured {
                        self.release(&pod).await;
                    }
                    let _ = std::fs::remove_file(record_file(
                        &self.config.agent_state_dir,
                        &pod.record.namespace,
                        &pod.record.name,
                    ));
                }
                let _ = reply.send(CniResponse::ok(false));
            }
            CniCommand::Check => {
                let response = match self.pods.get(&key) {
                    None => CniResponse::error(format!("pod {key} is unknown to the node agent")),
                    Some(pod) => match self.wanted(pod) {
                        Ok(Some(_)) if !pod.captured => {
                            CniResponse::error(format!("pod {key} is in the mesh but not captured"))
                        }
                        Ok(Some(_)) => CniResponse::ok(true),
                        _ => CniResponse::ok(false),
                    },
                };
                let _ = reply.send(response);
            }
        }
    }

    fn persist(&self, record: &PodRecord) {
        let path = record_file(&self.config.agent_state_dir, &record.namespace, &record.name);
        let written = serde_json::to_vec(record).map_err(std::io::Error::other).and_then(|b| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, b)?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the pod; a restarted agent will not know it");
        }
    }

    async fn reconcile(&mut self) {
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            self.reconcile_one(&key).await;
        }
        self.discover().await;
    }

    /// Pods the control plane puts in the mesh on this node that no CNI call announced
    /// (running since before the plugin was installed, or their records lost): their
    /// namespaces are looked for among the node's processes and they are captured as if the
    /// runtime had called — no restart. One not found is looked for again later.
    async fn discover(&mut self) {
        if !self.config.discover_running_pods || !self.is_synced() {
            return;
        }
        let now = Instant::now();
        let mut wanted: BTreeMap<String, (String, String, Vec<IpAddr>)> = {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            state
                .workloads()
                .filter(|w| w.hbone && *w.node == *self.config.node_name && !w.addresses.is_empty())
                .map(|w| (format!("{}/{}", w.namespace, w.name), w))
                .filter(|(key, _)| !self.pods.contains_key(key))
                .map(|(key, w)| (key, (w.namespace.to_string(), w.name.to_string(), w.addresses.clone())))
                .collect()
        };
        // Only pods unannounced for a while, and not looked for just now.
        self.look_again.retain(|key, _| wanted.contains_key(key));
        wanted.retain(|key, _| match self.look_again.get(key) {
            Some(at) => *at <= now,
            None => {
                self.look_again.insert(key.clone(), now + ANNOUNCE_GRACE);
                false
            }
        });
        if wanted.is_empty() {
            return;
        }
        // At most one search per LOOK_AGAIN / 5, whatever asks for it.
        if self.last_search.is_some_and(|at| now.duration_since(at) < LOOK_AGAIN / 5) {
            return;
        }
        self.last_search = Some(now);
        let addresses = wanted.iter().map(|(k, (_, _, ips))| (k.clone(), ips.clone())).collect();
        let exclude = discover::Exclude {
            inodes: self.pods.values().filter_map(|p| inode_of_fd(&p.netns)).collect(),
            addresses: {
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                state.workloads().flat_map(|w| w.addresses.iter().map(|ip| ip.to_canonical())).collect()
            },
        };
        let dir = self.config.netns_dir.clone();
        let found = match tokio::task::spawn_blocking(move || discover::find(&dir, &addresses, &exclude)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "looking for running pods failed");
                return;
            }
        };
        for (key, outcome) in found {
            let Some((namespace, name, ips)) = wanted.get(&key).cloned() else { continue };
            let found = match outcome {
                discover::Outcome::Found(found) => found,
                discover::Outcome::Missing => {
                    tracing::debug!(pod = %key, "pod of the mesh not found running on this node yet");
                    self.look_again.insert(key, now + LOOK_AGAIN);
                    continue;
                }
                discover::Outcome::Ambiguous(paths) => {
                    tracing::warn!(pod = %key, namespaces = ?paths, "the pod's addresses are in several network namespaces; not capturing it");
                    self.look_again.insert(key, now + LOOK_AGAIN * 6);
                    continue;
                }
            };
            // The path must still lead to the namespace that was searched.
            let netns = match Netns::open(&found.path) {
                Ok(n) if inode_of_fd(&n) == Some(found.inode) => n,
                _ => {
                    self.look_again.insert(key, now + LOOK_AGAIN);
                    continue;
                }
            };
            tracing::info!(pod = %key, netns = %found.path.display(), "running pod found; capturing it without a restart");
            self.look_again.remove(&key);
            let record = PodRecord {
                namespace: namespace.clone(),
                name: name.clone(),
                container_id: String::new(),
                netns: found.path,
                ips,
                service_account: None,
                netns_inode: Some(found.inode),
            };
            self.persist(&record);
            let uid = self.config.pod_uid(&namespace, &name);
            let pod = AgentPod { record, uid, netns, captured: false, rules_current: false, waiters: Vec::new() };
            self.pods.insert(key.clone(), pod);
            self.reconcile_one(&key).await;
        }
    }

    /// Forgets a pod found running once the control plane no longer knows it (it is gone: no
    /// runtime will say so), releasing it first if captured.
    async fn forget_discovered(&mut self, key: &str) {
        let Some(pod) = self.pods.remove(key) else { return };
        if pod.captured {
            self.release(&pod).await;
        }
        tracing::info!(pod = %key, "pod found running is gone");
        let _ =
            std::fs::remove_file(record_file(&self.config.agent_state_dir, &pod.record.namespace, &pod.record.name));
    }

    /// Brings one pod to what the control plane wants, and answers its waiters when settled.
    async fn reconcile_one(&mut self, key: &str) {
        let Some(pod) = self.pods.get(key) else { return };
        if !self.is_synced() {
            return;
        }
        let outcome = match self.wanted(pod) {
            Ok(Some(sa)) if !pod.captured => Some(self.capture(key, sa).await.map(|()| true)),
            Ok(Some(_)) if !pod.rules_current => {
                // Captured by a previous run: its rules again, with this run's settings.
                let rules = InPodRules::new(&pod.record.netns, self.config.dns_proxy);
                let applied = tokio::task::spawn_blocking(move || rules.apply()).await;
                match applied {
                    Ok(Ok(())) => {
                        if let Some(p) = self.pods.get_mut(key) {
                            p.rules_current = true;
                        }
                        Some(Ok(true))
                    }
                    Ok(Err(e)) => Some(Err(format!("refreshing the redirect rules: {e}"))),
                    Err(e) => Some(Err(format!("refreshing the redirect rules: {e}"))),
                }
            }
            Ok(Some(_)) => Some(Ok(true)),
            Ok(None) if pod.captured => {
                let pod = self.pods.get(key).map(|p| (p.uid.clone(), p.record.clone()));
                if let Some((uid, record)) = pod {
                    self.release_parts(&uid, &record).await;
                }
                if let Some(p) = self.pods.get_mut(key) {
                    p.captured = false;
                    p.record.service_account = None;
                }
                if let Some(p) = self.pods.get(key) {
                    self.persist(&p.record);
                }
                Some(Ok(false))
            }
            Ok(None) => Some(Ok(false)),
            // Found running, and its pinned namespace is gone (the runtime removes it with the
            // pod): no DEL will come, so it is forgotten here. While the namespace is there, a
            // workload briefly unknown (a control plane's restart) changes nothing.
            Err(()) if pod.record.discovered() && !pod.record.netns.exists() => {
                self.forget_discovered(key).await;
                None
            }
            // Not described yet: waiters keep waiting until their deadline.
            Err(()) => None,
        };
        let Some(outcome) = outcome else { return };
        if let Some(pod) = self.pods.get_mut(key) {
            let response = match outcome {
                Ok(captured) => CniResponse::ok(captured),
                Err(e) => {
                    // Keep waiting while the deadline allows (the proxy may connect meanwhile).
                    if pod.waiters.iter().all(|(deadline, _)| *deadline > Instant::now()) {
                        tracing::warn!(pod = %key, error = %e, "capture failed; retrying");
                        return;
                    }
                    CniResponse::error(e)
                }
            };
            for (_, waiter) in pod.waiters.drain(..) {
                let _ = waiter.send(response.clone());
            }
        }
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        for (key, pod) in &mut self.pods {
            let (due, keep): (Vec<_>, Vec<_>) = pod.waiters.drain(..).partition(|(d, _)| *d <= now);
            pod.waiters = keep;
            for (_, waiter) in due {
                let response = if pod.captured {
                    CniResponse::ok(true)
                } else if self.proxy.is_none() {
                    CniResponse::error(format!("pod {key}: ztunnel is not connected to the node agent"))
                } else {
                    // Fail closed: a pod of an ambient namespace must not start uncaptured. The
                    // runtime retries the ADD; by then the control plane describes the pod.
                    tracing::warn!(pod = %key, "the control plane does not describe the pod yet; refusing the ADD (the runtime retries)");
                    CniResponse::error(format!(
                        "pod {key}: the control plane does not describe the pod yet; not starting it uncaptured"
                    ))
                };
                let _ = waiter.send(response);
            }
        }
    }

    /// Proxy first (listeners open), then the rules.
    async fn capture(&mut self, key: &str, service_account: String) -> Result<(), String> {
        let Some(pod) = self.pods.get(key) else { return Ok(()) };
        let Some(proxy) = self.proxy.as_ref() else {
            return Err("ztunnel is not connected to the node agent".into());
        };
        let info = WorkloadInfo {
            name: pod.record.name.clone(),
            namespace: pod.record.namespace.clone(),
            service_account: service_account.clone(),
            windows_namespace: None,
        };
        match tokio::time::timeout(ZDS_TIMEOUT, proxy.add(&pod.uid, info, pod.netns.as_fd())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if matches!(e, ambit_shared::zds::ZdsError::Refused { .. }) {
                    return Err(format!("ztunnel refused the pod: {e}"));
                }
                self.proxy = None;
                return Err(format!("ztunnel connection failed: {e}"));
            }
            Err(_) => {
                self.proxy = None;
                return Err("ztunnel did not answer".into());
            }
        }
        let rules = InPodRules::new(&pod.record.netns, self.config.dns_proxy);
        let applied = tokio::task::spawn_blocking(move || rules.apply()).await;
        match applied {
            Ok(Ok(())) => {
                tracing::info!(pod = %key, "captured");
                if let Some(pod) = self.pods.get_mut(key) {
                    pod.captured = true;
                    pod.rules_current = true;
                    pod.record.service_account = Some(service_account);
                }
                if let Some(pod) = self.pods.get(key) {
                    self.persist(&pod.record);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(format!("installing the redirect rules: {e}")),
            Err(e) => Err(format!("installing the redirect rules: {e}")),
        }
    }

    async fn release(&mut self, pod: &AgentPod) {
        let (uid, record) = (pod.uid.clone(), pod.record.clone());
        self.release_parts(&uid, &record).await;
    }

    /// Rules out first, then the proxy lets go.
    async fn release_parts(&mut self, uid: &str, record: &PodRecord) {
        let rules = InPodRules::new(&record.netns, self.config.dns_proxy);
        let netns_exists = record.netns.exists();
        if netns_exists {
            match tokio::task::spawn_blocking(move || rules.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(pod = %uid, error = %e, "removing the redirect rules failed"),
                Err(e) => tracing::warn!(pod = %uid, error = %e, "removing the redirect rules failed"),
            }
        }
        if let Some(proxy) = self.proxy.as_ref() {
            match tokio::time::timeout(ZDS_TIMEOUT, proxy.del(uid)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %uid, error = %e, "ZDS del failed");
                    self.proxy = None;
                }
                Err(_) => self.proxy = None,
            }
        }
        tracing::info!(pod = %uid, "released from the mesh");
    }

    /// A (new) proxy: it gets every captured pod, then the end of the snapshot. Pods still
    /// waiting for capture are retried.
    async fn proxy_connected(&mut self, conn: AgentConn) {
        tracing::info!("ztunnel connected over ZDS; sending the snapshot");
        let mut failed = None;
        for pod in self.pods.values().filter(|p| p.captured) {
            let Some(sa) = pod.record.service_account.clone() else { continue };
            let info = WorkloadInfo {
                name: pod.record.name.clone(),
                namespace: pod.record.namespace.clone(),
                service_account: sa,
                windows_namespace: None,
            };
            match tokio::time::timeout(ZDS_TIMEOUT, conn.add(&pod.uid, info, pod.netns.as_fd())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %pod.uid, error = %e, "snapshot: ztunnel refused the pod");
                    if !matches!(e, ambit_shared::zds::ZdsError::Refused { .. }) {
                        failed = Some(e.to_string());
                        break;
                    }
                }
                Err(_) => {
                    failed = Some("timed out".into());
                    break;
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = conn.snapshot_sent().await {
                failed = Some(e.to_string());
            }
        }
        match failed {
            Some(e) => tracing::warn!(error = %e, "snapshot to ztunnel failed; waiting for it to reconnect"),
            None => {
                self.proxy = Some(conn);
                self.reconcile().await;
            }
        }
    }
}
