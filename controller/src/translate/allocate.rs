//! Virtual addresses for ServiceEntry hosts that have none, as Istio allocates them: an entry
//! without `addresses`, with a resolution other than `NONE` (a passthrough entry is reached at
//! its real addresses) and not opted out with the `networking.istio.io/enable-autoallocate-ip:
//! "false"` label, gets one IPv4 and one IPv6 address per non-wildcard host from the
//! configured ranges (Istio's defaults: `240.240.0.0/16`, `2001:2::/48`). ztunnel's DNS proxy
//! answers the host with them and routes connections to them to the entry's endpoints.
//!
//! The allocation is a function of the entries alone, so every replica and every restart
//! computes the same: each host's address is a fixed hash of `namespace/name/host` into the
//! range; on a collision the older entry (creation time, then namespace/name) keeps the
//! address and the younger takes the next free one. Addresses written in entries' `addresses`
//! inside the ranges are left out of those entries (`service`), never honoured, so no entry can
//! push another off its allocated address. When a range is full, further hosts get no address
//! of that family (their names are then left to the real DNS).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ambit_shared::cidr::Cidr;

use crate::model::{Kind, Object, ServiceEntry};
use crate::store::Store;

/// Istio's opt-out label.
pub const AUTO_ALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

/// Where a host's addresses come from.
pub type HostKey = (String, String, String);

/// Whether `se`'s hosts get allocated addresses.
pub fn wants_addresses(se: &ServiceEntry) -> bool {
    se.spec.addresses.is_empty()
        && !matches!(se.spec.resolution.as_deref(), None | Some("NONE"))
        && !se.metadata.labels.get(AUTO_ALLOCATE_LABEL).is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// Every allocated address: `(namespace, name, host)` → addresses (IPv4 first).
pub fn allocations(store: &Store, ranges: &[Cidr]) -> BTreeMap<HostKey, Vec<IpAddr>> {
    let mut entries: Vec<&ServiceEntry> = store
        .list(Kind::ServiceEntry, None)
        .filter_map(|o| match o {
            Object::ServiceEntry(se) => Some(se),
            _ => None,
        })
        .collect();
    entries.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.namespace, &a.metadata.name).cmp(&(
            &b.metadata.creation_timestamp,
            &b.metadata.namespace,
            &b.metadata.name,
        ))
    });
    let mut taken: HashSet<IpAddr> = HashSet::new();
    // Addresses handed out per range, so a full range is known without a scan.
    let mut used = vec![0u64; ranges.len()];
    let mut out = BTreeMap::new();
    for se in entries.into_iter().filter(|se| wants_addresses(se)) {
        let ns = se.metadata.namespace.clone().unwrap_or_default();
        for host in se.spec.hosts.iter().filter(|h| !h.starts_with('*')) {
            let seed = format!("{ns}/{}/{host}", se.metadata.name);
            let addresses: Vec<IpAddr> = ranges
                .iter()
                .zip(used.iter_mut())
                .filter_map(|(r, used)| allocate(*r, &seed, &mut taken, used))
                .collect();
            out.insert((ns.clone(), se.metadata.name.clone(), host.clone()), addresses);
        }
    }
    out
}

/// The first free address at or after `seed`'s place in `range` (its first and last
/// addresses are never used), marked taken; `None` when the range is full. `used` counts the
/// range's addresses already taken.
fn allocate(range: Cidr, seed: &str, taken: &mut HashSet<IpAddr>, used: &mut u64) -> Option<IpAddr> {
    let host_bits = u32::from(if range.addr().is_ipv4() { 32 } else { 128 } - range.prefix()).min(64);
    // Usable places: all but the first and the last.
    let size: u64 = if host_bits >= 64 { u64::MAX } else { (1u64 << host_bits).saturating_sub(2) };
    if size == 0 {
        return None;
    }
    if *used >= size {
        return None;
    }
    let start = fnv1a(seed.as_bytes()) % size;
    // At most `used` places are taken, so a free one is within `used + 1` steps.
    for step in 0..=*used {
        let offset = (start + step) % size + 1;
        let ip = at_offset(range, offset)?;
        if taken.insert(ip) {
            *used += 1;
            return Some(ip);
        }
    }
    None
}

fn at_offset(range: Cidr, offset: u64) -> Option<IpAddr> {
    match range.addr() {
        IpAddr::V4(base) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(range.prefix())).unwrap_or(0);
            let network = u32::from(base) & mask;
            Some(IpAddr::from((network | u32::try_from(offset).ok()?).to_be_bytes()))
        }
        IpAddr::V6(base) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(range.prefix())).unwrap_or(0);
            let network = u128::from(base) & mask;
            Some(IpAddr::from((network | u128::from(offset)).to_be_bytes()))
        }
    }
}

/// FNV-1a (64 bits): fixed for all time, unlike the standard library's hashers, so an
/// address never moves between releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Cidr {
        "240.240.0.0/16".parse().unwrap()
    }

    #[test]
    fn addresses_are_fixed_and_in_range() {
        let (mut taken, mut used) = (HashSet::new(), 0);
        let a = allocate(v4(), "egress/api/api.example.com", &mut taken, &mut used).unwrap();
        assert!(v4().contains(a));
        let (mut again, mut used_again) = (HashSet::new(), 0);
        assert_eq!(
            allocate(v4(), "egress/api/api.example.com", &mut again, &mut used_again),
            Some(a),
            "the same every time"
        );
        let v6: Cidr = "2001:2::/48".parse().unwrap();
        let b = allocate(v6, "egress/api/api.example.com", &mut taken, &mut 0).unwrap();
        assert!(v6.contains(b) && b.is_ipv6());
    }

    #[test]
    fn collisions_take_the_next_free_address_and_full_ranges_give_none() {
        let tiny: Cidr = "240.240.0.0/30".parse().unwrap();
        let (mut taken, mut used) = (HashSet::new(), 0);
        let first = allocate(tiny, "a", &mut taken, &mut used).unwrap();
        let second = allocate(tiny, "a", &mut taken, &mut used).unwrap();
        assert_ne!(first, second);
        for ip in [first, second] {
            assert!(ip != "240.240.0.0".parse::<IpAddr>().unwrap() && ip != "240.240.0.3".parse::<IpAddr>().unwrap());
        }
        assert_eq!(allocate(tiny, "a", &mut taken, &mut used), None, "two usable addresses in a /30");
    }
}
