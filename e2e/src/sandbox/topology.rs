//! The sandbox's topology: node names and addresses, the network namespaces of nodes and pods
//! (named under the run prefix), per-node directories, and running code or commands inside a
//! node's namespace.
//!
//! Owns naming and addressing, not what runs in the namespaces (processes, pods).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ambit_shared::netns::Netns as NsHandle;

use super::handle::{say, setup, Sandbox, SandboxError};
use crate::netns::run;

pub const NODE_NET: &str = "10.240.0";

pub(super) fn node_ip(i: usize) -> String {
    format!("{NODE_NET}.{}", 11 + i)
}

pub(super) fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

impl Sandbox {
    /// A node's files: its ztunnel's sockets, token and the node agent's pod records (`pods/`).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.opts.root.join("nodes").join(node)
    }

    pub fn netns_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.opts.prefix)
    }

    pub(super) fn ns_handle(&self, netns: &str) -> Result<NsHandle, SandboxError> {
        NsHandle::open(Path::new(&format!("/run/netns/{netns}"))).map_err(setup)
    }

    pub(super) fn exec_ns(&self, netns: &str, cmd: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", netns, cmd];
        full.extend_from_slice(args);
        run("ip", &full);
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

    /// The node network (a bridge in its own namespace) and the nodes on it, each with its
    /// address, routes to the other nodes' pod CIDRs and an empty `AMBIT-SERVICES` chain.
    pub(super) fn build_nodes(&mut self) {
        say(&self.opts, &format!("node network and {} nodes", self.opts.nodes));
        let net = self.netns_name("net");
        run("ip", &["netns", "add", &net]);
        self.exec_ns(&net, "ip", &["link", "set", "lo", "up"]);
        self.exec_ns(&net, "ip", &["link", "add", "br0", "type", "bridge"]);
        self.exec_ns(&net, "ip", &["link", "set", "br0", "up"]);
        for i in 0..self.opts.nodes {
            let node = node_name(i);
            let ns = self.netns_name(&node);
            run("ip", &["netns", "add", &ns]);
            self.exec_ns(&ns, "ip", &["link", "set", "lo", "up"]);
            let port = format!("n{}", i + 1);
            run("ip", &["link", "add", "amsbtmp0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &net]);
            self.exec_ns(&ns, "ip", &["link", "set", "amsbtmp0", "name", "eth0"]);
            self.exec_ns(&ns, "ip", &["addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"]);
            self.exec_ns(&ns, "ip", &["link", "set", "eth0", "up"]);
            self.exec_ns(&net, "ip", &["link", "set", &port, "master", "br0", "up"]);
            self.exec_ns(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            self.state.nodes.push(node.clone());
            self.state.next_pod_ip.insert(node, 2);
        }
        for i in 0..self.opts.nodes {
            let ns = self.netns_name(&node_name(i));
            for j in (0..self.opts.nodes).filter(|j| *j != i) {
                self.exec_ns(&ns, "ip", &["route", "add", &format!("10.244.{}.0/24", j + 1), "via", &node_ip(j)]);
            }
            self.exec_ns(&ns, "iptables", &["-t", "nat", "-N", "AMBIT-SERVICES"]);
            self.exec_ns(&ns, "iptables", &["-t", "nat", "-A", "PREROUTING", "-j", "AMBIT-SERVICES"]);
            self.exec_ns(&ns, "iptables", &["-t", "nat", "-A", "OUTPUT", "-j", "AMBIT-SERVICES"]);
        }
    }
}
