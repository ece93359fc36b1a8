//! Network namespaces for tests and the sandbox: created with iproute2 under a run prefix,
//! removed on drop (also when the test panics), so nothing outlives its run.

use std::process::{Command, Output};

/// Everything this process creates starts with this, so `down` can find leftovers.
pub fn run_prefix() -> String {
    format!("ambit{}", std::process::id())
}

/// Runs a command, failing loudly with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

/// A named network namespace (`/run/netns/<name>`).
pub struct Netns {
    name: String,
    /// Deleted on drop (false for namespaces someone else owns).
    owned: bool,
}

impl Netns {
    /// Creates `<run-prefix>-<suffix>` with its loopback up.
    pub fn create(suffix: &str) -> Self {
        crate::require_root();
        let name = format!("{}-{suffix}", run_prefix());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name, owned: true };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Refers to an existing namespace without taking it over (not deleted on drop).
    pub fn adopt(name: &str) -> Self {
        Netns { name: name.to_owned(), owned: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (what a container runtime hands a CNI plugin).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace, failing loudly.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and returns its stdout, whatever its status.
    pub fn output(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        let out = Command::new("ip").args(&full).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Removes namespaces left by crashed runs of this suite (`ambit<pid>-…` whose pid is gone).
pub fn clean_leftovers() -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return 0 };
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) =
            name.strip_prefix("ambit").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            removed += 1;
        }
    }
    removed
}

/// Short, unique interface names (≤ 15 bytes) for links created from this process.
fn link_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("am{}{tag}{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Plugs a pod into its node the way a routed (bridge-less) CNI plugin does: the pod's `eth0`
/// gets `pod_ip/32` and a default route via `gateway` (so even same-node pods are reached
/// through the node); the node's end holds `gateway/32` and a host route to the pod. Returns
/// the node-side interface name.
pub fn attach_pod(node: &Netns, pod: &Netns, pod_ip: &str, gateway: &str) -> String {
    let (host_if, tmp) = (link_name("h"), link_name("p"));
    run(
        "ip",
        &["link", "add", &host_if, "netns", node.name(), "type", "veth", "peer", "name", &tmp, "netns", pod.name()],
    );
    pod.exec("ip", &["link", "set", &tmp, "name", "eth0"]);
    pod.exec("ip", &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"]);
    pod.exec("ip", &["link", "set", "eth0", "up"]);
    pod.exec("ip", &["route", "add", gateway, "dev", "eth0"]);
    pod.exec("ip", &["route", "add", "default", "via", gateway, "dev", "eth0"]);
    node.exec("ip", &["addr", "add", &format!("{gateway}/32"), "dev", &host_if]);
    node.exec("ip", &["link", "set", &host_if, "up"]);
    node.exec("ip", &["route", "replace", &format!("{pod_ip}/32"), "dev", &host_if]);
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    host_if
}
