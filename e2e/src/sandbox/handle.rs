//! The sandbox handle every role builds on: its options, the error type, the [`Sandbox`]
//! struct (options, recorded state, the child processes it started), and opening and saving
//! `state.json`.
//!
//! Owns no behaviour of a role: building nodes, running pods, services and daemons live in the
//! sibling modules, bringing everything up and down in the parent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;

use super::record::SandboxState;

/// Sandbox errors carry the object and field they are about.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{origin}: {message}")]
    Manifest { origin: String, message: String },
    #[error("{0}")]
    Setup(String),
}

pub(super) fn setup(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup(e.to_string())
}

/// Options for [`Sandbox::up`].
#[derive(Debug, Clone)]
pub struct Options {
    pub prefix: String,
    pub root: PathBuf,
    pub nodes: usize,
    /// Where `controller`, `ztunnel` and `ambit-sample` are.
    pub bin_dir: PathBuf,
    /// Print progress.
    pub verbose: bool,
    /// Extra controller flags (`--path-normalization MERGE_SLASHES`…).
    pub controller_flags: Vec<String>,
    /// Extra ztunnel flags (`--dns-nameservers 10.240.0.12:5353`…).
    pub ztunnel_flags: Vec<String>,
}

impl Options {
    pub fn for_tests() -> Self {
        let prefix = crate::netns::run_prefix();
        Options {
            root: std::env::temp_dir().join(format!("{prefix}-sandbox")),
            prefix,
            nodes: 2,
            bin_dir: bin_dir(),
            verbose: false,
            controller_flags: Vec::new(),
            ztunnel_flags: Vec::new(),
        }
    }

    /// A test's own sandbox beside others (its prefix and directory suffixed with `name`), with
    /// a scratch directory for its manifests; checks root and clears leftovers first.
    pub fn for_test_named(name: &str) -> (Self, std::path::PathBuf) {
        crate::require_root();
        crate::netns::clean_leftovers();
        let mut opts = Options::for_tests();
        opts.prefix = format!("{}-{name}", opts.prefix);
        opts.root = opts.root.with_extension(name);
        let scratch = opts.root.with_extension("files");
        (opts, scratch)
    }
}

/// The directory holding the workspace's binaries (next to this executable; a test's
/// executable sits one level deeper, in `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// A running sandbox. Dropping it leaves everything running when `keep` is set (the CLI),
/// otherwise takes it all down (tests, also when they panic).
pub struct Sandbox {
    pub opts: Options,
    pub state: SandboxState,
    pub(super) children: HashMap<u32, Child>,
    pub keep: bool,
}

pub(super) fn say(opts: &Options, msg: &str) {
    if opts.verbose {
        eprintln!("  → {msg}");
    }
}

impl Sandbox {
    /// Re-opens the sandbox a previous command started.
    pub fn open(opts: Options) -> Result<Self, SandboxError> {
        let text = std::fs::read_to_string(opts.root.join("state.json"))
            .map_err(|e| SandboxError::Setup(format!("no sandbox at {} ({e}); run `up` first", opts.root.display())))?;
        let state: SandboxState = serde_json::from_str(&text).map_err(setup)?;
        Ok(Sandbox { opts, state, children: HashMap::new(), keep: true })
    }

    pub fn save(&self) -> Result<(), SandboxError> {
        let path = self.opts.root.join("state.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state).map_err(setup)?).map_err(setup)?;
        std::fs::rename(&tmp, &path).map_err(setup)
    }
}
