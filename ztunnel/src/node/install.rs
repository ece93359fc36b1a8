//! `ztunnel install-cni`: puts the CNI plugin on a node, as the ztunnel DaemonSet's install
//! step runs it with the host's CNI directories mounted.
//!
//! - the plugin is this binary (it acts as the plugin when a runtime sets `CNI_COMMAND`),
//!   copied to `<bin-dir>/ambit-cni` (written aside and renamed, so a runtime never runs half a
//!   file);
//! - it is chained into the node's primary network configuration — the first `.conflist`,
//!   `.conf` or `.json` in `<conf-dir>` by name, the one runtimes use — as the last plugin
//!   (`{"type": "ambit-cni", "agent_socket": …}`), after the pod network plugin; a single-plugin
//!   `.conf` becomes a `.conflist`; installing twice leaves one entry;
//! - `--uninstall` takes the entry out and removes the binary;
//! - `--watch` keeps the entry in place when the network plugin rewrites its configuration,
//!   and waits for one to appear on a node still starting.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PLUGIN_TYPE: &str = "ambit-cni";

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ztunnel install-cni", about = "Install (or remove) Ambit's CNI plugin on this node")]
pub struct InstallArgs {
    /// Where the runtime looks for plugin binaries.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where the runtime reads network configurations.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The node agent's socket, as the plugin will reach it.
    #[arg(long, env = "CNI_AGENT_SOCKET", default_value = "/var/run/ambit/cni.sock")]
    pub agent_socket: String,
    /// Namespaces whose pods the plugin lets through without asking the agent (comma list):
    /// the mesh's own (ztunnel must start when no agent runs) and the system's.
    #[arg(long, env = "CNI_EXCLUDE_NAMESPACES", value_delimiter = ',', default_value = "kube-system")]
    pub exclude_namespaces: Vec<String>,
    /// Remove the plugin instead.
    #[arg(long)]
    pub uninstall: bool,
    /// Keep it installed: wait for a configuration, re-chain after rewrites (until stopped).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {0}")]
    NoConfig(PathBuf),
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_owned(), source }
}

/// The configuration runtimes use: the first by name (libcni's order).
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| InstallError::NoConfig(conf_dir.to_owned()))
}

fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), InstallError> {
    let tmp = path.with_extension("ambit-tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn our_entry(agent_socket: &str, exclude_namespaces: &[String]) -> serde_json::Value {
    let mut entry = serde_json::json!({"type": PLUGIN_TYPE, "agent_socket": agent_socket});
    if !exclude_namespaces.is_empty() {
        entry["exclude_namespaces"] = serde_json::json!(exclude_namespaces);
    }
    entry
}

/// Chains our plugin into the primary configuration; returns the file written (a `.conf` is
/// replaced by a `.conflist`). Idempotent.
pub fn chain(conf_dir: &Path, agent_socket: &str, exclude_namespaces: &[String]) -> Result<PathBuf, InstallError> {
    let path = primary_config(conf_dir)?;
    let bad = |reason: String| InstallError::Config { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let mut doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let (mut list, target) = if doc.get("plugins").is_some() {
        (doc, path.clone())
    } else if doc.get("type").is_some() {
        // A single plugin: the list form, under the same name as a .conflist.
        let list = serde_json::json!({
            "cniVersion": doc.get("cniVersion").cloned().unwrap_or_else(|| "1.0.0".into()),
            "name": doc.get("name").cloned().unwrap_or_else(|| "k8s-pod-network".into()),
            "plugins": [doc.take()],
        });
        (list, path.with_extension("conflist"))
    } else {
        return Err(bad("neither a plugin list nor a plugin configuration".into()));
    };
    let plugins = list["plugins"].as_array_mut().ok_or_else(|| bad("plugins is not a list".into()))?;
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    plugins.push(our_entry(agent_socket, exclude_namespaces));
    let mut bytes = serde_json::to_vec_pretty(&list).map_err(|e| bad(e.to_string()))?;
    bytes.push(b'\n');
    write_atomically(&target, &bytes, None)?;
    if target != path {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(target)
}

/// Takes our plugin out of the primary configuration (if it is there).
pub fn unchain(conf_dir: &Path) -> Result<(), InstallError> {
    let path = match primary_config(conf_dir) {
        Ok(p) => p,
        Err(InstallError::NoConfig(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&text) else { return Ok(()) };
    let Some(plugins) = doc.get_mut("plugins").and_then(|p| p.as_array_mut()) else { return Ok(()) };
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    if plugins.len() != before {
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| InstallError::Config { path: path.clone(), reason: e.to_string() })?;
        bytes.push(b'\n');
        write_atomically(&path, &bytes, None)?;
    }
    Ok(())
}

/// Whether the primary configuration carries our plugin.
pub fn is_chained(conf_dir: &Path) -> bool {
    primary_config(conf_dir)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|d| d["plugins"].as_array().map(|ps| ps.iter().any(|p| p["type"] == PLUGIN_TYPE)))
        .unwrap_or(false)
}

/// Copies `binary` (this executable) to `<bin_dir>/ambit-cni`.
pub fn place_binary(binary: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let bytes = std::fs::read(binary).map_err(io(binary))?;
    write_atomically(&target, &bytes, Some(0o755))?;
    Ok(target)
}

pub fn run(args: &InstallArgs) -> Result<(), InstallError> {
    if args.uninstall {
        unchain(&args.conf_dir)?;
        let binary = args.bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&binary) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstallError::Io { path: binary, source: e }),
        }
        eprintln!("ztunnel install-cni: removed from {}", args.conf_dir.display());
        return Ok(());
    }
    let me = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let placed = place_binary(&me, &args.bin_dir)?;
    eprintln!("ztunnel install-cni: plugin at {}", placed.display());
    loop {
        match chain_if_needed(args) {
            Ok(Some(path)) => eprintln!("ztunnel install-cni: chained into {}", path.display()),
            Ok(None) => {}
            Err(InstallError::NoConfig(dir)) if args.watch => {
                eprintln!("ztunnel install-cni: waiting for a network configuration in {}", dir.display());
            }
            Err(e) => return Err(e),
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::park_timeout(Duration::from_secs(2));
    }
}

/// The plugin installed by a running ztunnel for its own node agent (the DaemonSet's way):
/// placed and chained once the agent listens, kept chained, and taken out when that ztunnel
/// stops unless a successor has taken the agent socket over (a rolling update), so a node
/// without an agent is left with its network plugin alone.
pub struct AgentInstall {
    args: InstallArgs,
    socket: PathBuf,
    inode: u64,
}

fn inode(path: &Path) -> Result<u64, InstallError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| m.ino()).map_err(io(path))
}

impl AgentInstall {
    /// Places `binary` and chains the plugin, reaching the agent at `host_socket` (its path on
    /// the host); `socket` is where this process sees the socket its agent just bound. A node
    /// without a network configuration yet is not an error: [`AgentInstall::keep`] chains it
    /// when one appears.
    pub fn new(
        binary: &Path,
        bin_dir: PathBuf,
        conf_dir: PathBuf,
        host_socket: String,
        exclude_namespaces: Vec<String>,
        socket: PathBuf,
    ) -> Result<(Self, Option<PathBuf>), InstallError> {
        let inode = inode(&socket)?;
        place_binary(binary, &bin_dir)?;
        let args = InstallArgs {
            bin_dir,
            conf_dir,
            agent_socket: host_socket,
            exclude_namespaces,
            uninstall: false,
            watch: true,
        };
        let this = AgentInstall { args, socket, inode };
        let chained = this.keep()?;
        Ok((this, chained))
    }

    /// Chains the plugin again if the network plugin rewrote its configuration; returns the
    /// file written, if any.
    pub fn keep(&self) -> Result<Option<PathBuf>, InstallError> {
        match chain_if_needed(&self.args) {
            Err(InstallError::NoConfig(_)) => Ok(None),
            other => other,
        }
    }

    /// On stop: removes the plugin when the agent socket is still this ztunnel's; returns
    /// whether it did (false: a successor bound the socket and keeps the plugin).
    pub fn release(&self) -> Result<bool, InstallError> {
        match inode(&self.socket) {
            Ok(now) if now != self.inode => return Ok(false),
            _ => {}
        }
        run(&InstallArgs { uninstall: true, watch: false, ..self.args.clone() })?;
        Ok(true)
    }
}

fn chain_if_needed(args: &InstallArgs) -> Result<Option<PathBuf>, InstallError> {
    if is_chained(&args.conf_dir) {
        return Ok(None);
    }
    chain(&args.conf_dir, &args.agent_socket, &args.exclude_namespaces).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ambit-cni-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const CALICO: &str = r#"{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    #[test]
    fn chains_last_once_and_unchains() {
        let d = dir("list");
        std::fs::write(d.join("10-calico.conflist"), CALICO).unwrap();
        std::fs::write(d.join("99-other.conflist"), CALICO).unwrap();
        for _ in 0..2 {
            let path = chain(&d, "/var/run/ambit/cni.sock", &[]).unwrap();
            assert_eq!(path, d.join("10-calico.conflist"), "the primary (first) configuration");
        }
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("10-calico.conflist")).unwrap()).unwrap();
        let types: Vec<_> = doc["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["calico", "portmap", "ambit-cni"], "ours last, once");
        assert_eq!(doc["plugins"][2]["agent_socket"], "/var/run/ambit/cni.sock");
        assert!(doc["plugins"][2].get("exclude_namespaces").is_none(), "none given, none written");
        chain(&d, "/var/run/ambit/cni.sock", &["kube-system".into(), "ambit-system".into()]).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("10-calico.conflist")).unwrap()).unwrap();
        assert_eq!(doc["plugins"][2]["exclude_namespaces"], serde_json::json!(["kube-system", "ambit-system"]));
        assert_eq!(doc["cniVersion"], "0.3.1", "the rest untouched");
        assert!(!std::fs::read_to_string(d.join("99-other.conflist")).unwrap().contains("ambit"), "others untouched");
        assert!(is_chained(&d));
        unchain(&d).unwrap();
        assert!(!is_chained(&d));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("10-calico.conflist")).unwrap()).unwrap();
        assert_eq!(doc["plugins"].as_array().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let d = dir("conf");
        std::fs::write(
            d.join("10-bridge.conf"),
            r#"{"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0"}"#,
        )
        .unwrap();
        let path = chain(&d, "/s.sock", &[]).unwrap();
        assert_eq!(path, d.join("10-bridge.conflist"));
        assert!(!d.join("10-bridge.conf").exists());
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["name"], "bridge-net");
        assert_eq!(doc["plugins"][0]["bridge"], "cni0");
        assert_eq!(doc["plugins"][1]["type"], "ambit-cni");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_or_broken_configurations_are_named() {
        let d = dir("none");
        assert!(matches!(chain(&d, "/s", &[]), Err(InstallError::NoConfig(_))));
        std::fs::write(d.join("10-x.conflist"), "{not json").unwrap();
        let err = chain(&d, "/s", &[]).unwrap_err().to_string();
        assert!(err.contains("10-x.conflist") && err.contains("not JSON"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_binary_is_placed_executable_and_removed_on_uninstall() {
        use std::os::unix::fs::PermissionsExt;
        let (bin, conf) = (dir("bin"), dir("conf2"));
        std::fs::write(conf.join("10-calico.conflist"), CALICO).unwrap();
        let me = std::env::current_exe().unwrap();
        let placed = place_binary(&me, &bin).unwrap();
        assert_eq!(std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777, 0o755);
        let args = InstallArgs {
            bin_dir: bin.clone(),
            conf_dir: conf.clone(),
            agent_socket: "/s".into(),
            exclude_namespaces: vec!["kube-system".into()],
            uninstall: false,
            watch: false,
        };
        chain_if_needed(&args).unwrap();
        assert!(is_chained(&conf));
        run(&InstallArgs { uninstall: true, ..args }).unwrap();
        assert!(!placed.exists() && !is_chained(&conf));
        let _ = std::fs::remove_dir_all(&bin);
        let _ = std::fs::remove_dir_all(&conf);
    }

    #[test]
    fn a_stopping_agent_removes_the_plugin_unless_a_successor_took_its_socket() {
        let (bin, conf, run) = (dir("agent-bin"), dir("agent-conf"), dir("agent-run"));
        let me = std::env::current_exe().unwrap();
        let socket = run.join("cni.sock");
        let bind = || {
            let _ = std::fs::remove_file(&socket);
            std::os::unix::net::UnixListener::bind(&socket).unwrap()
        };

        // A node still without a network configuration: placed, chained once one appears.
        let _first = bind();
        let (old, chained) =
            AgentInstall::new(&me, bin.clone(), conf.clone(), "/var/run/ambit/cni.sock".into(), vec![], socket.clone())
                .unwrap();
        assert_eq!(chained, None);
        assert!(bin.join(PLUGIN_TYPE).exists());
        std::fs::write(conf.join("10-calico.conflist"), CALICO).unwrap();
        assert_eq!(old.keep().unwrap(), Some(conf.join("10-calico.conflist")));
        assert_eq!(old.keep().unwrap(), None, "already chained");

        // Rolling update: the successor binds the socket anew; the old one leaves it all.
        let _second = bind();
        let (new, _) =
            AgentInstall::new(&me, bin.clone(), conf.clone(), "/var/run/ambit/cni.sock".into(), vec![], socket.clone())
                .unwrap();
        assert!(!old.release().unwrap(), "a successor owns the socket");
        assert!(is_chained(&conf) && bin.join(PLUGIN_TYPE).exists());

        // Uninstall: the last ztunnel stops with its socket still in place and removes the plugin.
        assert!(new.release().unwrap());
        assert!(!is_chained(&conf) && !bin.join(PLUGIN_TYPE).exists());
        for d in [bin, conf, run] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
