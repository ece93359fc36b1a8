//! Finding the network namespaces of running pods the node agent was never told about: pods
//! that started before the CNI plugin was installed (Ambit installed into a running cluster),
//! or whose records were lost. Every process under the host's `/proc` is looked at, each
//! distinct network namespace once, and a pod is found where one of its addresses sits on a
//! namespace's interface — as Istio's node agent finds them.
//!
//! An address found in two namespaces is ambiguous: nothing is captured on a guess. The
//! namespace's inode is kept with the pod, so a later run never follows a `/proc/<pid>` path
//! to whatever process took that pid since.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ambit_shared::netns::Netns;

/// Where a pod's namespace was found: a path that opens it now, and the namespace's inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub inode: u64,
}

/// What the search says of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Found(Found),
    /// No namespace holds its addresses (not started yet, or on another node).
    Missing,
    /// Several namespaces hold them: left alone.
    Ambiguous(Vec<PathBuf>),
}

/// A namespace's identity: (device, inode) of its `ns/net` file.
type NsId = (u64, u64);

/// Looks for each pod's addresses (by key) among the namespaces of `proc_root`'s processes,
/// leaving out the namespace this process runs in (the node's own).
pub fn find(proc_root: &Path, pods: &BTreeMap<String, Vec<IpAddr>>) -> BTreeMap<String, Outcome> {
    let own = std::fs::metadata("/proc/self/ns/net").ok().map(|m| (m.dev(), m.ino()));
    let mut namespaces: HashMap<NsId, PathBuf> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_str().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            let path = entry.path().join("ns/net");
            // A process that exited, or one we may not look into: skipped.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let id = (meta.dev(), meta.ino());
            if Some(id) != own {
                namespaces.entry(id).or_insert(path);
            }
        }
    }
    let mut holders: HashMap<IpAddr, Vec<(NsId, PathBuf)>> = HashMap::new();
    for (id, path) in namespaces {
        for ip in addresses_in(&path) {
            holders.entry(ip).or_default().push((id, path.clone()));
        }
    }
    pods.iter()
        .map(|(key, ips)| {
            let mut seen: Vec<(NsId, PathBuf)> = Vec::new();
            for (id, path) in ips.iter().filter_map(|ip| holders.get(&ip.to_canonical())).flatten() {
                if !seen.iter().any(|(s, _)| s == id) {
                    seen.push((*id, path.clone()));
                }
            }
            let outcome = match seen.len() {
                0 => Outcome::Missing,
                1 => {
                    let (id, path) = seen.remove(0);
                    Outcome::Found(Found { path, inode: id.1 })
                }
                _ => Outcome::Ambiguous(seen.into_iter().map(|(_, p)| p).collect()),
            };
            (key.clone(), outcome)
        })
        .collect()
}

/// The addresses on a namespace's interfaces other than loopback; none if it cannot be
/// entered.
fn addresses_in(path: &Path) -> Vec<IpAddr> {
    let Ok(ns) = Netns::open(path) else { return Vec::new() };
    ns.run_in(|| {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
        addrs
            .filter(|a| !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK))
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()).to_canonical())
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_is_never_a_pods() {
        // This process's addresses (any non-loopback ones it has) are not found as a pod's:
        // the node's namespace is left out.
        let own: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|all| all.filter_map(|a| a.address?.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip()))).collect())
            .unwrap_or_default();
        let mut pods = BTreeMap::new();
        pods.insert("x/own".to_owned(), own);
        pods.insert("x/nowhere".to_owned(), vec!["192.0.2.77".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))]);
        let found = find(Path::new("/proc"), &pods);
        assert_eq!(found["x/nowhere"], Outcome::Missing);
        assert!(!matches!(found["x/own"], Outcome::Found(_)), "{:?}", found["x/own"]);
    }
}
