//! The local sandbox: a Kubernetes-shaped ambient mesh on one Linux host.
//!
//! - The node network is a bridge inside its own namespace (`<prefix>-net`); each node is a
//!   namespace on it (`10.240.0.1x`), with a pod CIDR (`10.244.<n>.0/24`) and routes to the
//!   others' pod CIDRs.
//! - Each pod is a namespace plugged into its node ([`crate::netns::attach_pod`]), runs its
//!   container's process (`ip netns exec`), and resolves service names through
//!   `/etc/netns/<pod-netns>/hosts`.
//! - The outside world ([`world`]): a host on the node network with the cluster's DNS server
//!   (dnsmasq) and an echo server; pods' resolv.conf and ztunnels' upstream name it.
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
//!
//! This module brings the sandbox up and down and applies or deletes manifests; each role is
//! its own module, lowest first: `record` (what `state.json` holds), `handle` (the
//! [`Sandbox`] struct, options, errors), `objects` (the API server's store), `topology` (nodes,
//! addresses, namespaces), `processes` (controller, ztunnels), `services` (kube-proxy: DNAT,
//! hosts files), `pods` (kubelet: pods and CNI calls), `apply` (what an object of each kind
//! does), `waypoints` (what the controller deploys for waypoint Gateways).

mod apply;
mod handle;
mod objects;
mod pods;
mod processes;
mod record;
mod services;
mod topology;
mod waypoints;
mod world;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use handle::{bin_dir, Options, Sandbox, SandboxError};
pub use objects::read_objects;
pub use record::{PodState, SandboxState, ServiceState};
pub use topology::NODE_NET;
pub use world::{WORLD_IP, WORLD_IP_2};

use handle::setup;
use objects::identity_of;
use processes::kill_pid;
use topology::node_ip;

impl Sandbox {
    /// Builds the nodes, the controller and the ztunnels; returns once they are ready.
    pub fn up(opts: Options) -> Result<Self, SandboxError> {
        crate::require_root();
        down_prefix(&opts.prefix, &opts.root);
        std::fs::create_dir_all(opts.root.join("manifests")).map_err(setup)?;
        std::fs::create_dir_all(opts.root.join("logs")).map_err(setup)?;
        let mut sb = Sandbox {
            state: SandboxState { prefix: opts.prefix.clone(), next_vip: 10, ..SandboxState::default() },
            opts,
            children: HashMap::new(),
            keep: false,
        };
        sb.build_nodes();
        sb.build_world()?;
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

    /// Waits until every ztunnel's state holds exactly the sandbox's pods (among its workloads;
    /// ServiceEntry endpoints are not pods), all healthy (the controller has read the pods'
    /// status, and deleted pods are gone).
    pub fn wait_converged(&self) -> Result<(), SandboxError> {
        let want: Vec<String> =
            self.state.pods.values().map(|p| format!("Kubernetes//Pod/{}/{}", p.namespace, p.name)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.state.nodes {
            loop {
                let dump = self.get_in_node(node, 15000, "/config_dump");
                // Pods only: ServiceEntry endpoints are workloads too.
                let workloads: Vec<Value> = dump
                    .as_deref()
                    .and_then(|d| d.split_once("\r\n\r\n"))
                    .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
                    .and_then(|v| v["workloads"].as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|w| w["uid"].as_str().is_some_and(|u| u.contains("//Pod/")))
                    .collect();
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.keep {
            self.down();
        }
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
