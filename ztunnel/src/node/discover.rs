//! Finding the network namespaces of running pods the node agent was never told about: pods
//! that started before the CNI plugin was installed (Ambit installed into a running cluster),
//! or whose records were lost.
//!
//! Only namespaces the container runtime pinned in its directory (`--netns-dir`, containerd's
//! and CRI-O's `/var/run/netns`) are candidates: a tenant cannot put one there, so a namespace
//! made with `unshare` in a pod can never be taken for another pod. The paths are stable (no
//! `/proc/<pid>` that another process may take), and there are as many as the node has pods.
//!
//! A namespace is a pod's only when it holds every address of the pod and no address of any
//! other workload, is not a namespace the agent already holds for another pod, and is not the
//! agent's own. Two namespaces that qualify are ambiguous: nothing is captured on a guess.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ambit_shared::netns::Netns;

/// Where a pod's namespace was found: its pinned path, and the namespace's inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub inode: u64,
}

/// What the search says of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Found(Found),
    /// No namespace qualifies (not started yet, or on another node).
    Missing,
    /// Several namespaces qualify: left alone.
    Ambiguous(Vec<PathBuf>),
}

/// What the search must leave alone.
#[derive(Debug, Default)]
pub struct Exclude {
    /// Inodes of namespaces the agent holds for pods already.
    pub inodes: HashSet<u64>,
    /// Addresses of every workload the control plane knows (a pod's own are allowed in its
    /// namespace, no other).
    pub addresses: HashSet<IpAddr>,
}

/// One pinned namespace: its path, inode and non-loopback addresses.
struct Candidate {
    path: PathBuf,
    inode: u64,
    addresses: HashSet<IpAddr>,
}

/// Looks for each pod's namespace (by key, with its addresses) among the namespaces pinned in
/// `netns_dir`.
pub fn find(netns_dir: &Path, pods: &BTreeMap<String, Vec<IpAddr>>, exclude: &Exclude) -> BTreeMap<String, Outcome> {
    let own = nix::sys::stat::stat("/proc/self/ns/net").ok().map(|s| s.st_ino);
    let mut seen: HashMap<u64, ()> = HashMap::new();
    let mut candidates = Vec::new();
    if let Ok(entries) = std::fs::read_dir(netns_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            // The inode of the namespace opened here, and its addresses read through that same
            // handle: what is judged is what would be captured.
            let Ok(ns) = Netns::open(&path) else { continue };
            let Some(inode) = nix::sys::stat::fstat(ns.as_fd()).ok().map(|s| s.st_ino) else { continue };
            if Some(inode) == own || exclude.inodes.contains(&inode) || seen.insert(inode, ()).is_some() {
                continue;
            }
            let addresses = addresses_in(&ns);
            if !addresses.is_empty() {
                candidates.push(Candidate { path, inode, addresses });
            }
        }
    }
    pods.iter()
        .map(|(key, ips)| {
            let ips: HashSet<IpAddr> = ips.iter().map(IpAddr::to_canonical).collect();
            let mut fits: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| {
                    ips.iter().all(|ip| c.addresses.contains(ip))
                        && c.addresses.iter().all(|a| ips.contains(a) || !exclude.addresses.contains(a))
                })
                .collect();
            let outcome = match fits.len() {
                0 => Outcome::Missing,
                1 => {
                    let c = fits.remove(0);
                    Outcome::Found(Found { path: c.path.clone(), inode: c.inode })
                }
                _ => Outcome::Ambiguous(fits.iter().map(|c| c.path.clone()).collect()),
            };
            (key.clone(), outcome)
        })
        .collect()
}

/// The addresses on a namespace's interfaces other than loopback; none if it cannot be
/// entered.
fn addresses_in(ns: &Netns) -> HashSet<IpAddr> {
    ns.run_in(|| {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return HashSet::new() };
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
            // Link-local IPv6 addresses are every interface's; they name no pod.
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_found_in_an_empty_or_missing_directory() {
        let dir = std::env::temp_dir().join(format!("ambit-discover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        // A file that is not a namespace is skipped, not an error.
        std::fs::write(dir.join("not-a-netns"), b"x").unwrap_or_default();
        let mut pods = BTreeMap::new();
        pods.insert("x/pod".to_owned(), vec![IpAddr::from([192, 0, 2, 77])]);
        for d in [dir.as_path(), Path::new("/nonexistent/netns")] {
            assert_eq!(find(d, &pods, &Exclude::default())["x/pod"], Outcome::Missing);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
