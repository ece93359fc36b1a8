//! The local sandbox: a Kubernetes-shaped ambient mesh on one Linux host.
//!
//! - The node network is a bridge inside its own namespace (`<prefix>-net`); each node is a
//!   namespace on it (`10.240.0.1x`), with a pod CIDR (`10.244.<n>.0/24`) and routes to the
//!   others' pod CIDRs.
//! - Each pod is a namespace plugged into its node ([`crate::netns::attach_pod`]), runs its
//!   container's process (`ip netns exec`), and resolves service names through
//!   `/etc/netns/<pod-netns>/hosts`.
//! - Service VIPs (`10.96.0.x`) are DNAT rules in every node (the kube-proxy role), so clients
//!   outside the mesh reach them too.
//! - The real daemons: the controller (host network of node 1, manifest-directory source),
//!   one ztunnel per node (node agent + proxy); the sandbox calls the CNI plugin for each pod
//!   exactly as a container runtime would.
//! - Pods, with their status (IP, node, phase, Ready), are written where the controller reads
//!   its manifests, so pod churn reaches it the way it does in Kubernetes.
//!
//! Everything carries the run prefix and is removed by [`Sandbox::down`] — also what a crashed
//! run left behind ([`down_prefix`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambit_shared::netns::Netns as NsHandle;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::netns::{attach_pod, run};

/// Sandbox errors carry the object and field they are about.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{origin}: {message}")]
    Manifest { origin: String, message: String },
    #[error("{0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup(e.to_string())
}

/// A pod as the sandbox runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The Deployment that owns it.
    pub owner: Option<String>,
    pub pid: Option<u32>,
    /// TCP ports the container declares (readiness waits for the first).
    pub ports: Vec<u16>,
    pub ready: bool,
}

/// A service's VIP and where it sends traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub selector: BTreeMap<String, String>,
    /// (port, target port)
    pub ports: Vec<(u16, u16)>,
}

/// Everything `down` needs, persisted as `state.json` so every CLI command sees it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    pub prefix: String,
    pub nodes: Vec<String>,
    pub pods: BTreeMap<String, PodState>,
    pub services: BTreeMap<String, ServiceState>,
    pub deployments: BTreeMap<String, Value>,
    /// Daemons: name → pid.
    pub daemons: BTreeMap<String, u32>,
    pub next_vip: u32,
    /// Per node, the next pod address.
    pub next_pod_ip: BTreeMap<String, u8>,
    /// Waypoint objects the controller asked for and the sandbox runs: file → (kind, ns, name).
    #[serde(default)]
    pub waypoints: BTreeMap<String, Vec<(String, String, String)>>,
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
        }
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

pub const NODE_NET: &str = "10.240.0";
const TOKEN_PREFIX: &str = "sandbox-node-token-0123456789-";

fn node_ip(i: usize) -> String {
    format!("{NODE_NET}.{}", 11 + i)
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// A running sandbox. Dropping it leaves everything running when `keep` is set (the CLI),
/// otherwise takes it all down (tests, also when they panic).
pub struct Sandbox {
    pub opts: Options,
    pub state: State,
    children: HashMap<u32, Child>,
    pub keep: bool,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.keep {
            self.down();
        }
    }
}

fn say(opts: &Options, msg: &str) {
    if opts.verbose {
        eprintln!("  → {msg}");
    }
}

impl Sandbox {
    fn manifests(&self) -> PathBuf {
        self.opts.root.join("manifests")
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.opts.root.join("nodes").join(node)
    }

    pub fn netns_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.opts.prefix)
    }

    fn ns_handle(&self, netns: &str) -> Result<NsHandle, SandboxError> {
        NsHandle::open(Path::new(&format!("/run/netns/{netns}"))).map_err(setup)
    }

    fn exec_ns(&self, netns: &str, cmd: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", netns, cmd];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Builds the nodes, the controller and the ztunnels; returns once they are ready.
    pub fn up(opts: Options) -> Result<Self, SandboxError> {
        crate::require_root();
        down_prefix(&opts.prefix, &opts.root);
        std::fs::create_dir_all(opts.root.join("manifests")).map_err(setup)?;
        std::fs::create_dir_all(opts.root.join("logs")).map_err(setup)?;
        let mut sb = Sandbox {
            state: State { prefix: opts.prefix.clone(), next_vip: 10, ..State::default() },
            opts,
            children: HashMap::new(),
            keep: false,
        };
        say(&sb.opts, &format!("node network and {} nodes", sb.opts.nodes));
        let net = sb.netns_name("net");
        run("ip", &["netns", "add", &net]);
        sb.exec_ns(&net, "ip", &["link", "set", "lo", "up"]);
        sb.exec_ns(&net, "ip", &["link", "add", "br0", "type", "bridge"]);
        sb.exec_ns(&net, "ip", &["link", "set", "br0", "up"]);
        for i in 0..sb.opts.nodes {
            let node = node_name(i);
            let ns = sb.netns_name(&node);
            run("ip", &["netns", "add", &ns]);
            sb.exec_ns(&ns, "ip", &["link", "set", "lo", "up"]);
            let port = format!("n{}", i + 1);
            run("ip", &["link", "add", "amsbtmp0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &net]);
            sb.exec_ns(&ns, "ip", &["link", "set", "amsbtmp0", "name", "eth0"]);
            sb.exec_ns(&ns, "ip", &["addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"]);
            sb.exec_ns(&ns, "ip", &["link", "set", "eth0", "up"]);
            sb.exec_ns(&net, "ip", &["link", "set", &port, "master", "br0", "up"]);
            sb.exec_ns(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            sb.state.nodes.push(node.clone());
            sb.state.next_pod_ip.insert(node, 2);
        }
        for i in 0..sb.opts.nodes {
            let ns = sb.netns_name(&node_name(i));
            for j in (0..sb.opts.nodes).filter(|j| *j != i) {
                sb.exec_ns(&ns, "ip", &["route", "add", &format!("10.244.{}.0/24", j + 1), "via", &node_ip(j)]);
            }
            sb.exec_ns(&ns, "iptables", &["-t", "nat", "-N", "AMBIT-SERVICES"]);
            sb.exec_ns(&ns, "iptables", &["-t", "nat", "-A", "PREROUTING", "-j", "AMBIT-SERVICES"]);
            sb.exec_ns(&ns, "iptables", &["-t", "nat", "-A", "OUTPUT", "-j", "AMBIT-SERVICES"]);
        }
        sb.save()?;
        sb.start_controller()?;
        for node in sb.state.nodes.clone() {
            sb.start_ztunnel(&node)?;
        }
        for node in sb.state.nodes.clone() {
            sb.wait_ready(&node, "127.0.0.1:15021", &format!("ztunnel on {node}"))?;
        }
        sb.save()?;
        Ok(sb)
    }

    /// Re-opens the sandbox a previous command started.
    pub fn open(opts: Options) -> Result<Self, SandboxError> {
        let text = std::fs::read_to_string(opts.root.join("state.json"))
            .map_err(|e| SandboxError::Setup(format!("no sandbox at {} ({e}); run `up` first", opts.root.display())))?;
        let state: State = serde_json::from_str(&text).map_err(setup)?;
        Ok(Sandbox { opts, state, children: HashMap::new(), keep: true })
    }

    pub fn save(&self) -> Result<(), SandboxError> {
        let path = self.opts.root.join("state.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state).map_err(setup)?).map_err(setup)?;
        std::fs::rename(&tmp, &path).map_err(setup)
    }

    fn spawn(
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

    fn binary(&self, name: &str) -> Result<PathBuf, SandboxError> {
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

    /// Applies a file (or every YAML file of a directory): namespaces, service accounts,
    /// services, deployments, pods, and any mesh resource (handed to the controller as is).
    pub fn apply(&mut self, path: &Path) -> Result<(), SandboxError> {
        for (origin, obj) in read_objects(path)? {
            self.apply_object(&origin, obj)?;
        }
        self.sync_waypoints()?;
        self.sync_services()?;
        self.wait_pods_ready()?;
        self.save()?;
        self.wait_converged()
    }

    /// Waits until every ztunnel's state holds exactly the sandbox's pods, all healthy (the
    /// controller has read the pods' status, and deleted pods are gone).
    pub fn wait_converged(&self) -> Result<(), SandboxError> {
        let want: Vec<String> =
            self.state.pods.values().map(|p| format!("Kubernetes//Pod/{}/{}", p.namespace, p.name)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.state.nodes {
            loop {
                let dump = self.get_in_node(node, 15000, "/config_dump");
                let workloads = dump
                    .as_deref()
                    .and_then(|d| d.split_once("\r\n\r\n"))
                    .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
                    .and_then(|v| v["workloads"].as_array().cloned())
                    .unwrap_or_default();
                let healthy = workloads.iter().filter(|w| w["healthy"] == Value::Bool(true)).count();
                let known: Vec<&str> = workloads.iter().filter_map(|w| w["uid"].as_str()).collect();
                if healthy == want.len()
                    && known.len() == want.len()
                    && want.iter().all(|w| known.contains(&w.as_str()))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SandboxError::Setup(format!("ztunnel on {node} did not learn every pod within 30 s")));
                }
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Deletes what a file describes.
    pub fn delete(&mut self, path: &Path) -> Result<(), SandboxError> {
        for (origin, obj) in read_objects(path)? {
            let (kind, ns, name) = identity_of(&origin, &obj)?;
            self.delete_object(&kind, &ns, &name)?;
        }
        self.sync_waypoints()?;
        self.sync_services()?;
        self.save()
    }

    /// Runs what the controller deploys for waypoint Gateways (the role of the Kubernetes API
    /// server and its controllers): waits until the controller's `waypoints/` directory has one
    /// file per waypoint Gateway in the manifests, applies new files' objects and deletes the
    /// objects of files that are gone.
    fn sync_waypoints(&mut self) -> Result<(), SandboxError> {
        let mut expected = BTreeSet::new();
        for entry in std::fs::read_dir(self.manifests()).map_err(setup)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("gateway_") {
                continue;
            }
            for (_, obj) in read_objects(&entry.path())? {
                let class = obj["spec"]["gatewayClassName"].as_str().unwrap_or_default();
                if matches!(class, "ambit-waypoint" | "istio-waypoint") {
                    let (_, ns, gw) = identity_of(&name, &obj)?;
                    expected.insert(format!("{ns}.{gw}.yaml"));
                }
            }
        }
        let dir = self.opts.root.join("waypoints");
        let deadline = Instant::now() + Duration::from_secs(30);
        let present = loop {
            let present: BTreeSet<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".yaml"))
                        .collect()
                })
                .unwrap_or_default();
            if present == expected {
                break present;
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Setup(format!(
                    "the controller did not deploy the waypoints {expected:?} within 30 s (has {present:?})"
                )));
            }
            std::thread::park_timeout(Duration::from_millis(50));
        };
        for gone in self.state.waypoints.keys().filter(|f| !present.contains(*f)).cloned().collect::<Vec<_>>() {
            say(&self.opts, &format!("waypoint {gone} removed"));
            for (kind, ns, name) in self.state.waypoints.remove(&gone).unwrap_or_default() {
                self.delete_object(&kind, &ns, &name)?;
            }
        }
        for file in present {
            if self.state.waypoints.contains_key(&file) {
                continue;
            }
            say(&self.opts, &format!("waypoint {file} deployed"));
            let mut made = Vec::new();
            for (origin, obj) in read_objects(&dir.join(&file))? {
                made.push(identity_of(&origin, &obj)?);
                self.apply_object(&origin, obj)?;
            }
            self.state.waypoints.insert(file, made);
        }
        Ok(())
    }

    fn delete_object(&mut self, kind: &str, ns: &str, name: &str) -> Result<(), SandboxError> {
        match kind {
            "Deployment" => {
                self.state.deployments.remove(&format!("{ns}/{name}"));
                let owner = format!("{ns}/{name}");
                let pods: Vec<String> = self
                    .state
                    .pods
                    .iter()
                    .filter(|(_, p)| p.owner.as_deref() == Some(owner.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in pods {
                    self.delete_pod(&key)?;
                }
            }
            "Pod" => self.delete_pod(&format!("{ns}/{name}"))?,
            "Service" => {
                self.state.services.remove(&format!("{ns}/{name}"));
                let _ = std::fs::remove_file(self.object_file(kind, ns, name));
            }
            _ => {
                let _ = std::fs::remove_file(self.object_file(kind, ns, name));
            }
        }
        Ok(())
    }

    fn object_file(&self, kind: &str, ns: &str, name: &str) -> PathBuf {
        self.manifests().join(format!("{}_{}_{}.yaml", kind.to_lowercase(), if ns.is_empty() { "-" } else { ns }, name))
    }

    fn write_object(&self, kind: &str, ns: &str, name: &str, obj: &Value) -> Result<(), SandboxError> {
        let path = self.object_file(kind, ns, name);
        let tmp = self.manifests().join(format!(".{}.tmp", path.file_name().and_then(|f| f.to_str()).unwrap_or("x")));
        std::fs::write(&tmp, serde_yaml::to_string(obj).map_err(setup)?).map_err(setup)?;
        std::fs::rename(&tmp, &path).map_err(setup)
    }

    fn apply_object(&mut self, origin: &str, obj: Value) -> Result<(), SandboxError> {
        let (kind, ns, name) = identity_of(origin, &obj)?;
        let at = |field: &str, msg: String| SandboxError::Manifest {
            origin: format!("{origin}: {kind} {ns}/{name}"),
            message: format!("{field}: {msg}"),
        };
        match kind.as_str() {
            "Deployment" => {
                let d: Deployment = typed(origin, &kind, &obj)?;
                let spec = d.spec.ok_or_else(|| at("spec", "missing".into()))?;
                let replicas =
                    usize::try_from(spec.replicas.unwrap_or(1)).map_err(|_| at("spec.replicas", "negative".into()))?;
                let template_spec = spec.template.spec.ok_or_else(|| at("spec.template.spec", "missing".into()))?;
                let labels: BTreeMap<String, String> =
                    spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
                let key = format!("{ns}/{name}");
                self.state.deployments.insert(key.clone(), obj.clone());
                let mut mine: Vec<String> = self
                    .state
                    .pods
                    .iter()
                    .filter(|(_, p)| p.owner.as_deref() == Some(&key))
                    .map(|(k, _)| k.clone())
                    .collect();
                mine.sort();
                // Template changes (labels) reach existing pods' objects; replicas scale.
                while mine.len() > replicas {
                    if let Some(k) = mine.pop() {
                        self.delete_pod(&k)?;
                    }
                }
                for k in &mine {
                    if let Some(p) = self.state.pods.get_mut(k) {
                        p.labels = labels.clone();
                    }
                    self.write_pod(k)?;
                }
                let mut index = 0;
                while mine.len() < replicas {
                    let pod_name = format!("{name}-{index}");
                    index += 1;
                    if self.state.pods.contains_key(&format!("{ns}/{pod_name}")) {
                        continue;
                    }
                    self.create_pod(&ns, &pod_name, labels.clone(), &template_spec, Some(key.clone()))?;
                    mine.push(format!("{ns}/{pod_name}"));
                }
            }
            "Pod" => {
                let p: Pod = typed(origin, &kind, &obj)?;
                let spec = p.spec.ok_or_else(|| at("spec", "missing".into()))?;
                let labels = p.metadata.labels.unwrap_or_default();
                let key = format!("{ns}/{name}");
                if let Some(existing) = self.state.pods.get_mut(&key) {
                    existing.labels = labels;
                    self.write_pod(&key)?;
                } else {
                    self.create_pod(&ns, &name, labels, &spec, None)?;
                }
            }
            "Service" => {
                let s: Service = typed(origin, &kind, &obj)?;
                let spec = s.spec.unwrap_or_default();
                let key = format!("{ns}/{name}");
                let vip = match (self.state.services.get(&key), spec.cluster_ip.as_deref()) {
                    (_, Some(ip)) if ip != "None" && !ip.is_empty() => {
                        ip.parse::<Ipv4Addr>().map_err(|e| at("spec.clusterIP", e.to_string()))?
                    }
                    (Some(existing), _) => existing.vip,
                    _ => {
                        let n = self.state.next_vip;
                        self.state.next_vip += 1;
                        Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8)
                    }
                };
                let mut ports = Vec::new();
                for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
                    let port = u16::try_from(p.port)
                        .map_err(|_| at(&format!("spec.ports[{i}].port"), "out of range".into()))?;
                    let target = match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => u16::try_from(*t)
                            .map_err(|_| at(&format!("spec.ports[{i}].targetPort"), "out of range".into()))?,
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                            return Err(at(
                                &format!("spec.ports[{i}].targetPort"),
                                format!("named port {s:?} is not supported by the sandbox"),
                            ))
                        }
                        None => port,
                    };
                    ports.push((port, target));
                }
                self.state.services.insert(
                    key,
                    ServiceState {
                        namespace: ns.clone(),
                        name: name.clone(),
                        vip,
                        selector: spec.selector.unwrap_or_default(),
                        ports,
                    },
                );
                let mut obj = obj;
                obj["spec"]["clusterIP"] = Value::String(vip.to_string());
                self.write_object(&kind, &ns, &name, &obj)?;
            }
            _ => self.write_object(&kind, &ns, &name, &obj)?,
        }
        Ok(())
    }

    /// Creates a pod: namespace, link, its object (with IP) for the controller, the CNI call,
    /// then its process.
    fn create_pod(
        &mut self,
        ns: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        spec: &PodSpec,
        owner: Option<String>,
    ) -> Result<(), SandboxError> {
        let node = match &spec.node_name {
            Some(n) if self.state.nodes.contains(n) => n.clone(),
            Some(n) => {
                return Err(SandboxError::Manifest {
                    origin: format!("Pod {ns}/{name}"),
                    message: format!("spec.nodeName: no node {n:?}"),
                })
            }
            None => {
                // Spread: the node with the fewest pods.
                let mut counts: BTreeMap<&String, usize> = self.state.nodes.iter().map(|n| (n, 0)).collect();
                for p in self.state.pods.values() {
                    if let Some(c) = counts.get_mut(&p.node) {
                        *c += 1;
                    }
                }
                counts.into_iter().min_by_key(|(_, c)| *c).map(|(n, _)| n.clone()).unwrap_or_default()
            }
        };
        let node_index = self.state.nodes.iter().position(|n| *n == node).unwrap_or(0);
        let host = self.state.next_pod_ip.entry(node.clone()).or_insert(2);
        let ip = Ipv4Addr::new(10, 244, (node_index + 1) as u8, *host);
        *host = host.wrapping_add(1);
        say(&self.opts, &format!("pod {ns}/{name} on {node} ({ip})"));
        let netns = self.netns_name(&format!("{ns}-{name}"));
        run("ip", &["netns", "add", &netns]);
        self.exec_ns(&netns, "ip", &["link", "set", "lo", "up"]);
        let node_ns = crate::netns::Netns::adopt(&self.netns_name(&node));
        let pod_ns = crate::netns::Netns::adopt(&netns);
        attach_pod(&node_ns, &pod_ns, &ip.to_string(), &format!("10.244.{}.1", node_index + 1));
        let container = spec.containers.first().cloned().unwrap_or_default();
        let ports = container.ports.iter().flatten().filter_map(|p| u16::try_from(p.container_port).ok()).collect();
        let key = format!("{ns}/{name}");
        self.state.pods.insert(
            key.clone(),
            PodState {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                node: node.clone(),
                ip,
                netns: netns.clone(),
                labels,
                service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
                owner,
                pid: None,
                ports,
                ready: false,
            },
        );
        self.write_hosts(&key)?;
        self.write_pod(&key)?;
        self.save()?;
        self.cni("ADD", &key)?;
        let (program, args) = self.command_of(&container)?;
        let mut env: Vec<(String, String)> = vec![
            ("POD_NAME".into(), name.to_owned()),
            ("POD_NAMESPACE".into(), ns.to_owned()),
            ("POD_IP".into(), ip.to_string()),
            ("NODE_NAME".into(), node.clone()),
            ("POD_VERSION".into(), self.state.pods[&key].labels.get("version").cloned().unwrap_or_else(|| "v1".into())),
        ];
        // `valueFrom` (downward API) entries are the variables set above.
        for e in container.env.iter().flatten() {
            if let Some(v) = &e.value {
                env.push((e.name.clone(), v.clone()));
            }
        }
        if program.file_name().is_some_and(|f| f == "waypoint") {
            // What a kubelet would mount: the mesh root and a service-account token the
            // control plane accepts.
            let sa = self.state.pods[&key].service_account.clone();
            let token = self.workload_token(ns, name, &sa)?;
            env.push(("TOKEN_FILE".into(), token.display().to_string()));
            env.push(("ROOT_CERT".into(), self.opts.root.join("ca/root-cert.pem").display().to_string()));
            env.push(("RUST_LOG".into(), "info,access=info".into()));
        }
        let pid = self.spawn(&format!("pod-{ns}-{name}"), &netns, &program, &args, &env)?;
        self.state.daemons.remove(&format!("pod-{ns}-{name}"));
        if let Some(p) = self.state.pods.get_mut(&key) {
            p.pid = Some(pid);
        }
        Ok(())
    }

    /// A token for a pod's service account, added to the controller's token file (which it
    /// re-reads), as a projected service-account token would be in Kubernetes.
    fn workload_token(&self, ns: &str, pod: &str, sa: &str) -> Result<PathBuf, SandboxError> {
        let token = format!("sandbox-pod-token-{}-{ns}-{pod}", self.state.prefix);
        let path = self.opts.root.join("tokens.yaml");
        let mut text = std::fs::read_to_string(&path).map_err(setup)?;
        if !text.contains(&token) {
            text.push_str(&format!("- token: {token}\n  identity: spiffe://cluster.local/ns/{ns}/sa/{sa}\n"));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).map_err(setup)?;
            std::fs::rename(&tmp, &path).map_err(setup)?;
        }
        let file = self.opts.root.join(format!("token-{ns}-{pod}"));
        std::fs::write(&file, &token).map_err(setup)?;
        Ok(file)
    }

    /// The program and arguments of a container: `ambit/<mode>` images are the sample apps.
    fn command_of(&self, c: &Container) -> Result<(PathBuf, Vec<String>), SandboxError> {
        let args = c.args.clone().unwrap_or_default();
        if let Some(cmd) = c.command.as_ref().filter(|c| !c.is_empty()) {
            let program = if cmd[0] == "ambit-sample" { self.binary("ambit-sample")? } else { PathBuf::from(&cmd[0]) };
            return Ok((program, cmd[1..].iter().cloned().chain(args).collect()));
        }
        let image = c.image.clone().unwrap_or_default();
        let mode = image.strip_prefix("ambit/").map(|m| m.split(':').next().unwrap_or(m).to_owned()).ok_or_else(|| {
            SandboxError::Manifest {
                origin: format!("container {}", c.name),
                message: format!("image {image:?}: the sandbox runs ambit/echo, ambit/tcp-echo, ambit/front, ambit/load, ambit/sleep, ambit/waypoint, or a container `command`"),
            }
        })?;
        if mode == "waypoint" {
            return Ok((self.binary("waypoint")?, args));
        }
        let mut all = vec![mode];
        all.extend(args);
        Ok((self.binary("ambit-sample")?, all))
    }

    /// The CNI plugin, as a runtime runs it; fails unless it succeeds (DEL always passes).
    fn cni(&self, command: &str, key: &str) -> Result<(), SandboxError> {
        let (status, stdout) = self.cni_call(command, key)?;
        if status != 0 && command != "DEL" {
            return Err(SandboxError::Setup(format!("CNI {command} for {key} failed: {}", stdout.trim())));
        }
        Ok(())
    }

    /// Runs the CNI plugin for pod `key` (`ns/name`) exactly as a container runtime does —
    /// in the node's namespace, `CNI_*` in the environment, the network configuration with the
    /// previous plugin's result on stdin — and returns its exit status and stdout.
    pub fn cni_call(&self, command: &str, key: &str) -> Result<(i32, String), SandboxError> {
        let pod = self.state.pods.get(key).ok_or_else(|| SandboxError::Setup(format!("no pod {key}")))?;
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "sandbox",
            "type": "ambit-cni",
            "agent_socket": self.node_dir(&pod.node).join("cni.sock"),
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": format!("/run/netns/{}", pod.netns)}], "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}]},
        });
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns_name(&pod.node)])
            .arg(self.binary("ztunnel")?)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{}-{}", pod.namespace, pod.name))
            .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.opts.bin_dir.display().to_string())
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(setup)?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(config.to_string().as_bytes()).map_err(setup)?;
        }
        let out = child.wait_with_output().map_err(setup)?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// The pod's object, with status, where the controller reads it.
    fn write_pod(&self, key: &str) -> Result<(), SandboxError> {
        let p = &self.state.pods[key];
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": {"nodeName": p.node, "serviceAccountName": p.service_account},
            "status": {
                "phase": "Running",
                "podIP": p.ip.to_string(),
                "podIPs": [{"ip": p.ip.to_string()}],
                "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
            },
        });
        self.write_object("Pod", &p.namespace, &p.name, &obj)
    }

    fn write_hosts(&self, key: &str) -> Result<(), SandboxError> {
        let p = &self.state.pods[key];
        let dir = PathBuf::from("/etc/netns").join(&p.netns);
        std::fs::create_dir_all(&dir).map_err(setup)?;
        let mut hosts = format!("127.0.0.1 localhost\n{} {}\n", p.ip, p.name);
        for s in self.state.services.values() {
            hosts.push_str(&format!(
                "{} {n}.{ns}.svc.cluster.local {n}.{ns}.svc {n}.{ns}",
                s.vip,
                n = s.name,
                ns = s.namespace
            ));
            if s.namespace == p.namespace {
                hosts.push_str(&format!(" {}", s.name));
            }
            hosts.push('\n');
        }
        std::fs::write(dir.join("hosts"), hosts).map_err(setup)
    }

    /// DNAT rules for every VIP in every node, and hosts files in every pod.
    fn sync_services(&mut self) -> Result<(), SandboxError> {
        let mut rules = String::from("*nat\n:AMBIT-SERVICES - [0:0]\n");
        for s in self.state.services.values() {
            let endpoints: Vec<&PodState> = self
                .state
                .pods
                .values()
                .filter(|p| {
                    p.namespace == s.namespace
                        && !s.selector.is_empty()
                        && s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            for (port, target) in &s.ports {
                let n = endpoints.len();
                for (i, e) in endpoints.iter().enumerate() {
                    let probability = if i + 1 == n {
                        String::new()
                    } else {
                        format!(" -m statistic --mode random --probability {:.5}", 1.0 / (n - i) as f64)
                    };
                    rules.push_str(&format!(
                        "-A AMBIT-SERVICES -d {}/32 -p tcp --dport {port}{probability} -j DNAT --to-destination {}:{target}\n",
                        s.vip, e.ip
                    ));
                }
            }
        }
        rules.push_str("COMMIT\n");
        for node in &self.state.nodes {
            let ns = self.netns_name(node);
            let mut child = Command::new("ip")
                .args(["netns", "exec", &ns, "iptables-restore", "--noflush"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(setup)?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin.write_all(rules.as_bytes()).map_err(setup)?;
            }
            let out = child.wait_with_output().map_err(setup)?;
            if !out.status.success() {
                return Err(SandboxError::Setup(format!(
                    "service rules on {node}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        let keys: Vec<String> = self.state.pods.keys().cloned().collect();
        for k in keys {
            self.write_hosts(&k)?;
        }
        Ok(())
    }

    /// Marks pods Ready once their first declared port accepts connections (or at once when
    /// they declare none), and writes the status for the controller.
    fn wait_pods_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let keys: Vec<String> = self.state.pods.iter().filter(|(_, p)| !p.ready).map(|(k, _)| k.clone()).collect();
        for key in keys {
            let (netns, port) = {
                let p = &self.state.pods[&key];
                (p.netns.clone(), p.ports.first().copied())
            };
            if let Some(port) = port {
                let ns = self.ns_handle(&netns)?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                loop {
                    let ok = ns
                        .run_in(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                        .unwrap_or(false);
                    if ok {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(SandboxError::Setup(format!(
                            "pod {key} did not open port {port}; see {}",
                            self.opts.root.join("logs").display()
                        )));
                    }
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            }
            if let Some(p) = self.state.pods.get_mut(&key) {
                p.ready = true;
            }
            self.write_pod(&key)?;
        }
        Ok(())
    }

    fn kill(&mut self, pid: u32) {
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

    /// Removes a pod: CNI DEL, process, namespace, object.
    pub fn delete_pod(&mut self, key: &str) -> Result<(), SandboxError> {
        let Some(pod) = self.state.pods.get(key).cloned() else { return Ok(()) };
        say(&self.opts, &format!("deleting pod {key}"));
        let _ = std::fs::remove_file(self.object_file("Pod", &pod.namespace, &pod.name));
        self.cni("DEL", key)?;
        if let Some(pid) = pod.pid {
            self.kill(pid);
        }
        let _ = Command::new("ip").args(["netns", "del", &pod.netns]).output();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&pod.netns));
        self.state.pods.remove(key);
        self.save()
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

    /// Runs a command in a pod (`ip netns exec`, so its hosts file applies); `ambit-sample`
    /// resolves to the sandbox's binary.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Result<std::process::Output, SandboxError> {
        let key = if pod.contains('/') {
            pod.to_owned()
        } else {
            self.state.pods.keys().find(|k| k.ends_with(&format!("/{pod}"))).cloned().unwrap_or_else(|| pod.to_owned())
        };
        let p = self.state.pods.get(&key).ok_or_else(|| SandboxError::Setup(format!("no pod {pod}")))?;
        let program = if cmd.first() == Some(&"ambit-sample") {
            self.binary("ambit-sample")?.display().to_string()
        } else {
            cmd.first().map(|s| s.to_string()).unwrap_or_default()
        };
        Command::new("ip")
            .args(["netns", "exec", &p.netns, &program])
            .args(&cmd[1.min(cmd.len())..])
            .output()
            .map_err(setup)
    }

    /// A ztunnel's or the controller's address space: runs `f` inside `node`'s namespace.
    pub fn in_node<T: Send>(&self, node: &str, f: impl FnOnce() -> T + Send) -> Result<T, SandboxError> {
        self.ns_handle(&self.netns_name(node))?.run_in(f).map_err(setup)
    }

    /// An HTTP GET to `127.0.0.1:port` inside `node`'s namespace (the daemons' admin ports):
    /// the whole response, or `None` when nothing answers.
    pub fn get_in_node(&self, node: &str, port: u16, path: &str) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.in_node(node, || ambit_shared::testing::http_get(addr, path).ok()).ok().flatten()
    }

    /// Whether pod `key` has the mesh's redirect rules in its namespace.
    pub fn captured(&self, key: &str) -> bool {
        let Some(p) = self.state.pods.get(key) else { return false };
        Command::new("ip")
            .args(["netns", "exec", &p.netns, "iptables-save"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ISTIO_OUTPUT"))
    }

    /// A pod's namespace handle (tests open sockets inside pods).
    pub fn pod_netns(&self, key: &str) -> Result<NsHandle, SandboxError> {
        let p = self.state.pods.get(key).ok_or_else(|| SandboxError::Setup(format!("no pod {key}")))?;
        self.ns_handle(&p.netns)
    }

    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.opts.root.join("logs").join(format!("{component}.log"))).unwrap_or_default()
    }

    /// What runs where.
    pub fn status(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.state.nodes.iter().enumerate() {
            out.push_str(&format!("{node} ({}), pods 10.244.{}.0/24\n", node_ip(i), i + 1));
            for (name, pid) in &self.state.daemons {
                if name == &format!("ztunnel-{node}") || (i == 0 && name == "controller") {
                    out.push_str(&format!("  {name:<28} pid {pid}\n"));
                }
            }
            for p in self.state.pods.values().filter(|p| p.node == *node) {
                out.push_str(&format!(
                    "  pod {:<24} {:<12} {}\n",
                    format!("{}/{}", p.namespace, p.name),
                    p.ip,
                    if p.ready { "ready" } else { "starting" }
                ));
            }
        }
        for s in self.state.services.values() {
            let ports: Vec<String> = s.ports.iter().map(|(p, t)| format!("{p}→{t}")).collect();
            out.push_str(&format!("service {}/{} {} [{}]\n", s.namespace, s.name, s.vip, ports.join(", ")));
        }
        out
    }

    /// Stops everything and removes every namespace, link, rule and file of the run.
    pub fn down(&mut self) {
        let pids: Vec<u32> =
            self.state.pods.values().filter_map(|p| p.pid).chain(self.state.daemons.values().copied()).collect();
        for pid in pids {
            self.kill(pid);
        }
        down_prefix(&self.opts.prefix, &self.opts.root);
        self.state.pods.clear();
        self.state.daemons.clear();
    }
}

fn kill_pid(pid: u32) {
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

/// Removes everything carrying `prefix`: processes inside its namespaces, the namespaces
/// (and with them every link and rule), hosts files, and the run directory.
pub fn down_prefix(prefix: &str, root: &Path) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    for name in &names {
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                kill_pid(pid);
            }
        }
    }
    for name in &names {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{prefix}-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// What a sandbox left: namespaces, hosts files, processes in them (for tests of `down`).
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.starts_with(&format!("{prefix}-")) {
                found.push(format!("netns {l}"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{prefix}-")) {
                found.push(format!("file {}", e.path().display()));
            }
        }
    }
    found
}

fn identity_of(origin: &str, obj: &Value) -> Result<(String, String, String), SandboxError> {
    let field = |f: &str| SandboxError::Manifest {
        origin: origin.to_owned(),
        message: format!("{f} is missing or not a string"),
    };
    let kind = obj.get("kind").and_then(Value::as_str).ok_or_else(|| field("kind"))?.to_owned();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| field("metadata.name"))?.to_owned();
    let ns = match kind.as_str() {
        "Namespace" => String::new(),
        _ => obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned(),
    };
    Ok((kind, ns, name))
}

fn typed<T: serde::de::DeserializeOwned>(origin: &str, kind: &str, obj: &Value) -> Result<T, SandboxError> {
    serde_path_to_error::deserialize(obj).map_err(|e| SandboxError::Manifest {
        origin: format!("{origin}: {kind} {}", obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Every object of a file, or of every YAML file in a directory (sorted), with its origin.
pub fn read_objects(path: &Path) -> Result<Vec<(String, Value)>, SandboxError> {
    let mut files = Vec::new();
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", path.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        entries.sort();
        files.extend(entries);
    } else {
        files.push(path.to_owned());
    }
    let mut out = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| SandboxError::Setup(format!("{}: {e}", file.display())))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} (document {})", file.display(), i + 1);
            let value = Value::deserialize(doc)
                .map_err(|e| SandboxError::Manifest { origin: origin.clone(), message: e.to_string() })?;
            if !value.is_null() {
                out.push((origin, value));
            }
        }
    }
    // Namespaces and service accounts first, services before the pods that use their names.
    let rank = |v: &Value| match v.get("kind").and_then(Value::as_str) {
        Some("Namespace") => 0,
        Some("ServiceAccount") => 1,
        Some("Service") => 2,
        Some("Deployment" | "Pod") => 4,
        _ => 3,
    };
    out.sort_by_key(|(_, v)| rank(v));
    Ok(out)
}
