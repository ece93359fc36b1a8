//! The ZDS client: the proxy's side of the node agent's socket. Each instruction enrolls a
//! pod (with its network namespace), keeps or releases one; the proxy opens or closes that
//! pod's listeners and acknowledges. It does not install redirect rules (the node agent
//! does, see `node::rules`) or decide anything about traffic.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use ambit_shared::netns::Netns;
use ambit_shared::proto::zds::WorkloadInfo;
use ambit_shared::zds::{ProxyConn, ZdsEvent};
use tokio::sync::watch;

/// What the ZDS client needs from the proxy: the pods it holds, and taking or releasing one.
pub trait Pods {
    type Error: std::fmt::Display;
    /// Opens the pod's listeners inside `netns`.
    fn enroll(&self, uid: &str, info: &WorkloadInfo, netns: Netns) -> Result<(), Self::Error>;
    /// Closes the pod's listeners and its connections.
    fn release(&self, uid: &str);
    /// Whether the pod is held.
    fn holds(&self, uid: &str) -> bool;
    /// The uids of every pod held.
    fn held(&self) -> Vec<String>;
    /// The proxy is shutting down: do not reconnect.
    fn is_draining(&self) -> bool;
}

/// Follows the node agent over ZDS: connects (retrying), applies each instruction, acks it.
/// `snapshot` turns true once the first snapshot is in (readiness).
///
/// Fails closed: nothing is enrolled — no listener opens in any pod — before the control
/// plane's first complete state (`synced`). Until then a pod's redirected connections find no
/// listener and are refused, where a proxy without state would have passed them through as
/// "unknown destination" in plaintext; and a successor that cannot reach the control plane
/// never binds beside a working predecessor, which keeps serving.
pub async fn run_zds(
    proxy: impl Pods,
    path: PathBuf,
    mut synced: watch::Receiver<bool>,
    snapshot: watch::Sender<bool>,
) {
    if !*synced.borrow() {
        tracing::info!("waiting for the control plane's state before taking pods");
    }
    if synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if proxy.is_draining() {
            return;
        }
        match ProxyConn::connect(&path).await {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                tracing::info!(path = %path.display(), "connected to the node agent (ZDS)");
                if let Err(e) = follow(&proxy, &conn, &snapshot).await {
                    tracing::warn!(error = %e, "ZDS connection ended; reconnecting");
                }
            }
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "node agent not reachable yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow(
    proxy: &impl Pods,
    conn: &ProxyConn,
    snapshot: &watch::Sender<bool>,
) -> Result<(), ambit_shared::zds::ZdsError> {
    // Pods named before the snapshot ends; the rest are dropped at its end.
    let mut seen: Option<HashSet<String>> = Some(HashSet::new());
    loop {
        let event = conn.next().await?;
        let result = match event {
            ZdsEvent::Add { uid, info, netns } => {
                if let Some(seen) = seen.as_mut() {
                    seen.insert(uid.clone());
                }
                proxy.enroll(&uid, &info, Netns::from_fd(netns)).map_err(|e| e.to_string())
            }
            ZdsEvent::Keep { uid } => {
                if let Some(seen) = seen.as_mut() {
                    seen.insert(uid.clone());
                }
                if proxy.holds(&uid) {
                    Ok(())
                } else {
                    Err(format!("keep {uid}: not held"))
                }
            }
            ZdsEvent::Del { uid } => {
                proxy.release(&uid);
                Ok(())
            }
            ZdsEvent::SnapshotSent => {
                if let Some(seen) = seen.take() {
                    let stale: Vec<String> = proxy.held().into_iter().filter(|u| !seen.contains(u)).collect();
                    for uid in stale {
                        proxy.release(&uid);
                    }
                }
                snapshot.send_replace(true);
                Ok(())
            }
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "ZDS instruction refused");
        }
        conn.ack(result.err()).await?;
    }
}
