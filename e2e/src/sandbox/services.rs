//! The kube-proxy role (and cluster DNS): a DNAT rule per service VIP and endpoint in every
//! node, and the hosts file of every pod naming every service (its resolv.conf points at the
//! outside world's DNS server for the rest).
//!
//! Owns traffic to VIPs and service names; allocating a VIP when a Service is applied is
//! `apply`'s.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::handle::{setup, Sandbox, SandboxError};
use super::record::PodState;
use super::world::WORLD_IP;

impl Sandbox {
    pub(super) fn write_hosts(&self, key: &str) -> Result<(), SandboxError> {
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
        std::fs::write(dir.join("hosts"), hosts).map_err(setup)?;
        // Everything else is asked of the cluster's DNS server, the outside world's (`world`),
        // with Kubernetes' search path: captured pods' queries reach ztunnel's DNS proxy first.
        let resolv = format!(
            "nameserver {WORLD_IP}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n",
            ns = p.namespace
        );
        std::fs::write(dir.join("resolv.conf"), resolv).map_err(setup)
    }

    /// DNAT rules for every VIP in every node, and hosts files in every pod.
    pub(super) fn sync_services(&mut self) -> Result<(), SandboxError> {
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
}
