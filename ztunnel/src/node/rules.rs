//! Istio's in-pod redirect rules, installed inside a pod's network namespace with
//! `iptables-restore` (run under `nsenter --net=<netns>`):
//! - mangle: packets ztunnel marked `0x539` set connmark `0x111`, restored on replies;
//! - nat PREROUTING: inbound TCP (not to 15008, not from ztunnel, not kubelet's
//!   169.254.7.127) → REDIRECT 15006;
//! - nat OUTPUT: outbound TCP not from ztunnel and not to loopback → REDIRECT 15001;
//!   connmarked traffic and loopback are left alone; with the DNS proxy on, DNS (UDP and TCP
//!   port 53, not over loopback) → REDIRECT 15053 first;
//! - `ip rule fwmark 0x111/0xfff lookup 100` with a local route in table 100.
//!
//! The same set goes into ip6tables (loopback `::1`, kubelet's IPv6 probe source) whenever the
//! namespace has IPv6, so a dual-stack pod's IPv6 traffic is captured too, never let through.
//!
//! Applying is idempotent (our chains are declared, which flushes them, and the jumps are
//! added only when missing); removing takes out exactly what we added.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dns_proxy::DNS_PORT;
use crate::inpod::{CONN_MARK, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_PORT, PROXY_MARK};

/// Source address kubelet probes are rewritten to on the node (left uncaptured).
pub const PROBE_SOURCE: &str = "169.254.7.127";
/// Istio's IPv6 equivalent.
pub const PROBE_SOURCE_V6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";
pub const ROUTE_TABLE: u32 = 100;

const PRERT: &str = "ISTIO_PRERT";
const OUTPUT: &str = "ISTIO_OUTPUT";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("running {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} in {netns} failed: {stderr}")]
    Failed { command: String, netns: String, stderr: String },
}

/// IPv4 or IPv6: which tools and addresses a rule set uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    fn probe(self) -> String {
        match self {
            Family::V4 => format!("{PROBE_SOURCE}/32"),
            Family::V6 => format!("{PROBE_SOURCE_V6}/128"),
        }
    }
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

/// The rule set for one pod's namespace.
#[derive(Debug, Clone)]
pub struct InPodRules {
    netns: PathBuf,
    /// Redirect the pod's DNS to the proxy's DNS listener.
    dns: bool,
}

fn jumps() -> [(&'static str, &'static str, &'static str); 4] {
    [
        ("mangle", "PREROUTING", PRERT),
        ("mangle", "OUTPUT", OUTPUT),
        ("nat", "PREROUTING", PRERT),
        ("nat", "OUTPUT", OUTPUT),
    ]
}

impl InPodRules {
    pub fn new(netns: &Path, dns: bool) -> Self {
        InPodRules { netns: netns.to_owned(), dns }
    }

    fn run(&self, cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, RulesError> {
        use std::io::Write;
        let net = format!("--net={}", self.netns.display());
        let command = format!("{cmd} {}", args.join(" "));
        let mut child = Command::new("nsenter")
            .arg(&net)
            .arg(cmd)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| RulesError::Spawn { command: command.clone(), source })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|source| RulesError::Spawn { command: command.clone(), source })?;
        }
        let out = child.wait_with_output().map_err(|source| RulesError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            return Err(RulesError::Failed {
                command,
                netns: self.netns.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The iptables-restore input (IPv4); `present` is the namespace's current `iptables-save`.
    pub fn restore_input(present: &str, dns: bool) -> String {
        Self::restore_input_for(present, Family::V4, dns)
    }

    /// The restore input for `family`; `present` is that family's current save output.
    pub fn restore_input_for(present: &str, family: Family, dns: bool) -> String {
        let (lo, probe) = (family.loopback(), family.probe());
        let mark = format!("0x{PROXY_MARK:x}/0x{MARK_MASK:x}");
        let connmark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
        let jump_missing = |table: &str, chain: &str, target: &str| {
            let wanted = format!("-A {chain} -j {target}");
            let mut in_table = false;
            !present.lines().any(|l| {
                if let Some(t) = l.strip_prefix('*') {
                    in_table = t == table;
                }
                in_table && l.trim() == wanted
            })
        };
        let mut out = String::new();
        for table in ["mangle", "nat"] {
            out.push_str(&format!("*{table}\n:{PRERT} - [0:0]\n:{OUTPUT} - [0:0]\n"));
            for (t, chain, target) in jumps() {
                if t == table && jump_missing(table, chain, target) {
                    out.push_str(&format!("-A {chain} -j {target}\n"));
                }
            }
            if table == "mangle" {
                out.push_str(&format!("-A {PRERT} -m mark --mark {mark} -j CONNMARK --set-xmark {connmark}\n"));
                out.push_str(&format!("-A {OUTPUT} -m connmark --mark {connmark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n"));
            } else {
                out.push_str(&format!("-A {PRERT} -s {probe} -p tcp -j ACCEPT\n"));
                out.push_str(&format!(
                    "-A {PRERT} ! -d {lo} -p tcp ! --dport {INBOUND_HBONE_PORT} -m mark ! --mark {mark} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}\n"
                ));
                out.push_str(&format!("-A {OUTPUT} -p tcp -m mark --mark {connmark} -j ACCEPT\n"));
                if dns {
                    out.push_str(&format!(
                        "-A {OUTPUT} ! -o lo -p udp -m mark ! --mark {mark} -m udp --dport 53 -j REDIRECT --to-ports {DNS_PORT}\n"
                    ));
                    out.push_str(&format!(
                        "-A {OUTPUT} ! -o lo -p tcp -m mark ! --mark {mark} -m tcp --dport 53 -j REDIRECT --to-ports {DNS_PORT}\n"
                    ));
                }
                out.push_str(&format!("-A {OUTPUT} ! -d {lo} -o lo -j ACCEPT\n"));
                out.push_str(&format!(
                    "-A {OUTPUT} ! -d {lo} -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports {OUTBOUND_PORT}\n"
                ));
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// Whether the namespace has IPv6 (then it gets the IPv6 rule set too). A probe that fails
    /// is an error, never "no IPv6": that would leave a dual-stack pod's IPv6 uncaptured. Only
    /// a kernel without IPv6 at all (no `/proc/sys/net/ipv6`) means none.
    pub fn has_ipv6(&self) -> Result<bool, RulesError> {
        match self.run("cat", &["/proc/sys/net/ipv6/conf/all/disable_ipv6"], None) {
            Ok(v) => Ok(v.trim() == "0"),
            Err(_) if !Path::new("/proc/sys/net/ipv6").exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn families(&self) -> Result<Vec<Family>, RulesError> {
        Ok(if self.has_ipv6()? { vec![Family::V4, Family::V6] } else { vec![Family::V4] })
    }

    /// Installs (or refreshes) the rules, for IPv6 too when the namespace has it.
    pub fn apply(&self) -> Result<(), RulesError> {
        for family in self.families()? {
            self.apply_family(family)?;
        }
        Ok(())
    }

    fn apply_family(&self, family: Family) -> Result<(), RulesError> {
        let present = self.run(family.save(), &[], None)?;
        self.run(family.restore(), &["--noflush"], Some(&Self::restore_input_for(&present, family, self.dns)))?;
        let rules = self.run("ip", &[family.ip(), "rule", "show"], None)?;
        let fwmark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
        let table = ROUTE_TABLE.to_string();
        if !rules.contains(&format!("fwmark {fwmark} lookup {ROUTE_TABLE}")) {
            self.run("ip", &[family.ip(), "rule", "add", "fwmark", &fwmark, "pref", "32764", "lookup", &table], None)?;
        }
        self.run("ip", &[family.ip(), "route", "replace", "local", family.any(), "dev", "lo", "table", &table], None)?;
        Ok(())
    }

    /// Removes everything `apply` added (what is already gone is skipped).
    pub fn remove(&self) -> Result<(), RulesError> {
        for family in self.families()? {
            self.remove_family(family)?;
        }
        Ok(())
    }

    fn remove_family(&self, family: Family) -> Result<(), RulesError> {
        let present = self.run(family.save(), &[], None)?;
        let mut input = String::new();
        for table in ["mangle", "nat"] {
            let mut section = String::new();
            let mut in_table = false;
            let mut has_chains = false;
            for l in present.lines() {
                if let Some(t) = l.strip_prefix('*') {
                    in_table = t == table;
                }
                if !in_table {
                    continue;
                }
                if l.starts_with(&format!(":{PRERT} ")) || l.starts_with(&format!(":{OUTPUT} ")) {
                    has_chains = true;
                }
                for (t, chain, target) in jumps() {
                    if t == table && l.trim() == format!("-A {chain} -j {target}") {
                        section.push_str(&format!("-D {chain} -j {target}\n"));
                    }
                }
            }
            if has_chains {
                section.push_str(&format!("-F {PRERT}\n-F {OUTPUT}\n-X {PRERT}\n-X {OUTPUT}\n"));
            }
            if !section.is_empty() {
                input.push_str(&format!("*{table}\n{section}COMMIT\n"));
            }
        }
        if !input.is_empty() {
            self.run(family.restore(), &["--noflush"], Some(&input))?;
        }
        let fwmark = format!("0x{CONN_MARK:x}/0x{MARK_MASK:x}");
        let table = ROUTE_TABLE.to_string();
        if self
            .run("ip", &[family.ip(), "rule", "show"], None)?
            .contains(&format!("fwmark {fwmark} lookup {ROUTE_TABLE}"))
        {
            self.run("ip", &[family.ip(), "rule", "del", "fwmark", &fwmark, "lookup", &table], None)?;
        }
        let _ = self.run("ip", &[family.ip(), "route", "flush", "table", &table], None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_input_is_istios_rule_set_and_adds_jumps_once() {
        let fresh = InPodRules::restore_input("", false);
        assert!(!fresh.contains("15053"), "no DNS capture when the DNS proxy is off:\n{fresh}");
        assert!(fresh.contains("-A PREROUTING -j ISTIO_PRERT"));
        assert!(fresh.contains("-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"));
        assert!(fresh.contains(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
        ));
        assert!(fresh.contains("-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"));
        assert!(fresh.contains("-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -j ACCEPT"));
        let present = "*mangle\n-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n*nat\n-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n";
        let again = InPodRules::restore_input(present, false);
        assert!(!again.contains("-A PREROUTING -j"), "jumps already there are not added twice:\n{again}");
        assert!(again.contains(":ISTIO_PRERT - [0:0]"), "our chains are re-declared (flushed) every time");
        let v6 = InPodRules::restore_input_for("", Family::V6, false);
        assert!(v6
            .contains("-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"));
        assert!(v6.contains("-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT"));
    }

    #[test]
    fn dns_capture_redirects_port_53_before_the_tcp_capture() {
        let rules = InPodRules::restore_input("", true);
        let udp = "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053";
        let tcp = "-A ISTIO_OUTPUT ! -o lo -p tcp -m mark ! --mark 0x539/0xfff -m tcp --dport 53 -j REDIRECT --to-ports 15053";
        let outbound =
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001";
        let at = |l: &str| rules.find(l).unwrap_or_else(|| panic!("missing {l}:\n{rules}"));
        assert!(at(udp) < at(outbound) && at(tcp) < at(outbound), "DNS over TCP goes to 15053, not 15001");
        let v6 = InPodRules::restore_input_for("", Family::V6, true);
        assert!(
            v6.contains("! -o lo -p tcp -m mark ! --mark 0x539/0xfff -m tcp --dport 53 -j REDIRECT --to-ports 15053")
        );
    }
}
