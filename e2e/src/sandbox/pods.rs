//! The kubelet's role: creating a pod (namespace, link, object with status, CNI ADD, its
//! container's process), readiness, CNI calls exactly as a container runtime makes them,
//! deleting a pod, and running commands inside pods.
//!
//! Owns pods; Deployments and their replicas are `apply`'s, service names in hosts files
//! `services`'.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_shared::netns::Netns as NsHandle;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::json;

use super::handle::{say, setup, Sandbox, SandboxError};
use super::record::PodState;
use crate::netns::{attach_pod, run};

impl Sandbox {
    /// Creates a pod: namespace, link, its object (with IP) for the controller, the CNI call,
    /// then its process.
    pub(super) fn create_pod(
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
    pub(super) fn write_pod(&self, key: &str) -> Result<(), SandboxError> {
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

    /// Marks pods Ready once their first declared port accepts connections (or at once when
    /// they declare none), and writes the status for the controller.
    pub(super) fn wait_pods_ready(&mut self) -> Result<(), SandboxError> {
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
}
