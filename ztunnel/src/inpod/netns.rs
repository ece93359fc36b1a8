//! A pod's network namespace, held by an open file (the netns path from the CNI call, or the
//! fd received over ZDS). `run_in` executes a closure on a thread that has joined the
//! namespace: sockets it creates stay bound to the pod's network after the thread is gone,
//! which is how ztunnel opens listeners "inside" every pod.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("entering the pod's network namespace: {0}")]
    Enter(nix::Error),
    #[error("the namespace thread panicked")]
    Panicked,
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
