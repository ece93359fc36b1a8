//! A network namespace held by an open file (a pod's netns path from the CNI call, or the fd
//! received over ZDS). Sockets created while a thread is inside it stay bound to that network
//! for good, which is how ztunnel opens listeners and dials "inside" every pod: `run_here`
//! switches the calling thread in and back around a closure, `run_in` runs one on a
//! short-lived thread that joined the namespace.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("entering the pod's network namespace: {0}")]
    Enter(nix::Error),
    #[error("the namespace thread panicked")]
    Panicked,
    #[error("the host network namespace was not recorded at start-up: {0}")]
    NoHost(String),
}

static HOST: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// Records the process's own (host) network namespace; call once at start-up, before any
/// thread switches namespaces. Later calls return the recorded one.
pub fn record_host() -> Result<BorrowedFd<'static>, NetnsError> {
    let host = HOST.get_or_init(|| {
        File::open("/proc/self/ns/net").map(OwnedFd::from).map_err(|e| format!("/proc/self/ns/net: {e}"))
    });
    match host {
        Ok(fd) => Ok(fd.as_fd()),
        Err(e) => Err(NetnsError::NoHost(e.clone())),
    }
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open { path: path.display().to_string(), source })?;
        Ok(Netns { fd: file.into() })
    }

    /// Adopts a namespace fd (as received over ZDS).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Netns { fd }
    }

    /// Runs `f` on the calling thread switched into the namespace, then switches it back:
    /// two `setns` calls, cheap enough for every socket the proxy creates in a pod. `f` must
    /// not block or yield (a runtime worker is borrowed for its duration). Sockets created in
    /// `f` belong to the namespace for good.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let host = record_host()?;
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        let out = f();
        if let Err(e) = setns(host, CloneFlags::CLONE_NEWNET) {
            // A worker thread left in a pod's namespace would open every later socket there:
            // there is no safe way to go on.
            tracing::error!(error = %e, "cannot return to the host network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` inside the namespace, on a short-lived thread (setns changes only the calling
    /// thread, and a runtime worker must never move).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetnsError::Panicked)?
        })
    }
}
