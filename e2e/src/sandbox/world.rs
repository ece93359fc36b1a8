//! The outside world: a host off the cluster (its own network namespace on the node network,
//! like the internet seen from the nodes) running the cluster's DNS server — Debian's
//! `dnsmasq`, answering the `world.example` zone and `NXDOMAIN` for the rest of `example` and
//! `cluster.local` — and an HTTP echo server on port 80 of both its addresses.
//!
//! Its echo server also speaks HTTPS on 443 (a self-signed certificate for
//! `secure.world.example` and `www.world.example`).
//!
//! Records: `api.world.example`, `www.world.example`, `secure.world.example` → [`WORLD_IP`];
//! `other.world.example`
//! → [`WORLD_IP_2`]; `_http._tcp.world.example` SRV → `api.world.example:80`;
//! `world.example` TXT. Pods' resolv.conf names [`WORLD_IP`] (`services`), and ztunnels
//! forward there. Owns the world's namespace, addresses and programs; stopping them is
//! `down`'s.

use std::path::Path;

use super::handle::{say, setup, Sandbox, SandboxError};
use super::topology::node_ip;
use crate::netns::run;

/// The world's first address: its DNS server and echo server.
pub const WORLD_IP: &str = "10.240.0.100";
/// A second address of the world (a host no ServiceEntry names).
pub const WORLD_IP_2: &str = "10.240.0.101";
/// Where dnsmasq is on Debian (`dnsmasq-base`).
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

impl Sandbox {
    /// Runs a command in the outside world's network namespace (a client outside the
    /// cluster); `ambit-sample` resolves to the sandbox's binary.
    pub fn exec_world(&self, cmd: &[&str]) -> Result<std::process::Output, SandboxError> {
        let program = if cmd.first() == Some(&"ambit-sample") {
            self.binary("ambit-sample")?.display().to_string()
        } else {
            cmd.first().map(|s| s.to_string()).unwrap_or_default()
        };
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns_name("world"), &program])
            .args(&cmd[1.min(cmd.len())..])
            .output()
            .map_err(|e| SandboxError::Setup(e.to_string()))
    }

    /// Builds the world's namespace on the node network, with routes back to every node's pod
    /// block (pods reach it through their node), and starts its DNS and echo servers.
    pub(super) fn build_world(&mut self) -> Result<(), SandboxError> {
        say(&self.opts, "outside world (DNS server, echo server)");
        if !Path::new(DNSMASQ).exists() {
            return Err(SandboxError::Setup(format!(
                "{DNSMASQ} not found: install Debian's dnsmasq-base (scripts/packages.sh does)"
            )));
        }
        let ns = self.netns_name("world");
        let net = self.netns_name("net");
        run("ip", &["netns", "add", &ns]);
        self.exec_ns(&ns, "ip", &["link", "set", "lo", "up"]);
        run("ip", &["link", "add", "amsbtmp0", "netns", &ns, "type", "veth", "peer", "name", "world", "netns", &net]);
        self.exec_ns(&ns, "ip", &["link", "set", "amsbtmp0", "name", "eth0"]);
        for ip in [WORLD_IP, WORLD_IP_2] {
            self.exec_ns(&ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        }
        self.exec_ns(&ns, "ip", &["link", "set", "eth0", "up"]);
        self.exec_ns(&net, "ip", &["link", "set", "world", "master", "br0", "up"]);
        for i in 0..self.opts.nodes {
            self.exec_ns(&ns, "ip", &["route", "add", &format!("10.244.{}.0/24", i + 1), "via", &node_ip(i)]);
        }
        let dir = self.opts.root.join("world");
        std::fs::create_dir_all(&dir).map_err(setup)?;
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "{WORLD_IP} api.world.example www.world.example secure.world.example\n{WORLD_IP_2} other.world.example\n"
            ),
        )
        .map_err(setup)?;
        let log = self.opts.root.join("logs").join("world-dns-queries.log");
        let args: Vec<String> = [
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--log-queries",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--listen-address={WORLD_IP}"),
            format!("--addn-hosts={}", hosts.display()),
            format!("--log-facility={}", log.display()),
            "--local=/example/".into(),
            "--local=/cluster.local/".into(),
            "--srv-host=_http._tcp.world.example,api.world.example,80".into(),
            "--txt-record=world.example,outside the mesh".into(),
        ])
        .collect();
        self.spawn("world-dns", &ns, Path::new(DNSMASQ), &args, &[])?;
        let sample = self.binary("ambit-sample")?;
        let env = [("POD_NAME".to_owned(), "world".to_owned()), ("POD_NAMESPACE".to_owned(), "outside".to_owned())];
        let args: Vec<String> =
            ["echo", "--port", "80", "--tls-port", "443", "--tls-names", "secure.world.example,www.world.example"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        self.spawn("world-echo", &ns, &sample, &args, &env)?;
        Ok(())
    }
}
