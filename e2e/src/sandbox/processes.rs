//! The sandbox's child processes: the controller and the ztunnels (started with their tokens
//! and flags, waited for until ready), any process started in a namespace with its log file,
//! and stopping them.
//!
//! Owns the daemons' life cycle; which pod runs which program is the kubelet's (`pods`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::handle::{say, setup, Sandbox, SandboxError};
use super::topology::node_ip;

const TOKEN_PREFIX: &str = "sandbox-node-token-0123456789-";

pub(super) fn kill_pid(pid: u32) {
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| !r.trim_start().starts_with('Z')))
            .unwrap_or(false)
    };
    if !alive(pid) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
    let deadline = Instant::now() + Duration::from_secs(8);
    while alive(pid) && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
    }
}

impl Sandbox {
    pub(super) fn spawn(
        &mut self,
        name: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<u32, SandboxError> {
        let log = self.opts.root.join("logs").join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(setup)?;
        let err = file.try_clone().map_err(setup)?;
        let mut cmd = Command::new("setsid");
        cmd.args(["ip", "netns", "exec", netns])
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child =
            cmd.spawn().map_err(|e| SandboxError::Setup(format!("starting {name} ({}): {e}", program.display())))?;
        let pid = child.id();
        self.children.insert(pid, child);
        self.state.daemons.insert(name.to_owned(), pid);
        Ok(pid)
    }

    pub(super) fn binary(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let path = self.opts.bin_dir.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(SandboxError::Setup(format!(
                "{} not found; build the workspace first (cargo build --workspace)",
                path.display()
            )))
        }
    }

    /// Starts the controller (after `stop_daemon("controller")`: same CA, same manifests).
    pub fn start_controller(&mut self) -> Result<(), SandboxError> {
        say(&self.opts, "controller (host network of node-1)");
        let mut tokens = String::from("tokens:\n");
        for node in &self.state.nodes {
            tokens.push_str(&crate::daemons::node_token_entry(&format!("{TOKEN_PREFIX}{node}"), node));
        }
        std::fs::write(self.opts.root.join("tokens.yaml"), tokens).map_err(setup)?;
        let mut args =
            crate::daemons::controller_args(&self.opts.root, &format!("{}:15012", node_ip(0)), "127.0.0.1:15014");
        args.extend(self.opts.controller_flags.iter().cloned());
        let bin = self.binary("controller")?;
        let ns = self.netns_name(&self.state.nodes[0]);
        self.spawn("controller", &ns, &bin, &args, &[("RUST_LOG".into(), "info".into())])?;
        self.wait_ready(&self.state.nodes[0].clone(), "127.0.0.1:15014", "controller")?;
        Ok(())
    }

    /// Starts the ztunnel of `node`.
    pub fn start_ztunnel(&mut self, node: &str) -> Result<u32, SandboxError> {
        self.start_ztunnel_generation(node, 0)
    }

    /// Starts a ztunnel for `node`; `generation` > 0 is a successor started beside the running
    /// one (a hand-over): its admin ports are shifted by 100 per generation (15121 readiness,
    /// 15120 metrics, 15100 admin) and it is named `ztunnel-<node>-<generation>`.
    pub fn start_ztunnel_generation(&mut self, node: &str, generation: u16) -> Result<u32, SandboxError> {
        say(&self.opts, &format!("ztunnel on {node}"));
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir).map_err(setup)?;
        std::fs::write(dir.join("token"), format!("{TOKEN_PREFIX}{node}")).map_err(setup)?;
        let cp = format!("{}:15012", node_ip(0));
        let mut args = crate::daemons::ztunnel_args(node, &cp, &self.opts.root.join("ca/root-cert.pem"), &dir, 5);
        // The cluster's DNS server is the outside world's, unless a test names its own.
        if !self.opts.ztunnel_flags.iter().any(|f| f == "--dns-nameservers") {
            args.extend(["--dns-nameservers".to_owned(), format!("{}:53", super::world::WORLD_IP)]);
        }
        args.extend(self.opts.ztunnel_flags.iter().cloned());
        let name = if generation == 0 { format!("ztunnel-{node}") } else { format!("ztunnel-{node}-{generation}") };
        if generation > 0 {
            let shift = 100 * generation;
            for (flag, host, base) in [
                ("--readiness-addr", "0.0.0.0", 15021),
                ("--metrics-addr", "0.0.0.0", 15020),
                ("--admin-addr", "127.0.0.1", 15000),
            ] {
                args.extend([flag.to_owned(), format!("{host}:{}", base + shift)]);
            }
        }
        let bin = self.binary("ztunnel")?;
        let ns = self.netns_name(node);
        self.spawn(&name, &ns, &bin, &args, &[("RUST_LOG".into(), "info,access=info".into())])
    }

    /// Waits for `addr` (in `node`'s namespace) to answer 200 on its readiness path.
    pub fn wait_ready(&self, node: &str, addr: &str, what: &str) -> Result<(), SandboxError> {
        let addr: SocketAddr = addr.parse().map_err(setup)?;
        let path = if addr.port() == 15014 { "/ready" } else { "/healthz/ready" };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.get_in_node(node, addr.port(), path).is_some_and(|r| r.starts_with("HTTP/1.1 200"));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Setup(format!(
                    "{what} not ready after 60 s; see {}",
                    self.opts.root.join("logs").display()
                )));
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }

    pub(super) fn kill(&mut self, pid: u32) {
        if let Some(mut child) = self.children.remove(&pid) {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::park_timeout(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            kill_pid(pid);
        }
    }

    /// Stops a daemon (`controller`, `ztunnel-node-1`…) with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self, name: &str) {
        if let Some(pid) = self.state.daemons.remove(name) {
            self.kill(pid);
        }
    }

    /// Restarts the controller (same CA, same manifests).
    pub fn restart_controller(&mut self) -> Result<(), SandboxError> {
        self.stop_daemon("controller");
        self.start_controller()?;
        self.save()
    }

    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.opts.root.join("logs").join(format!("{component}.log"))).unwrap_or_default()
    }
}
