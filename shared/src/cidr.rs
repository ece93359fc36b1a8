//! IP blocks (`10.0.0.0/8`, `fd00::/8`, a bare address as a host block) and whether an
//! address falls inside one: the one implementation the controller validates policies with
//! and both proxies match connections against.
//!
//! An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:10.1.2.3`) are one address: a
//! client seen through a dual-stack socket matches the IPv4 blocks that cover it, and a block
//! written in mapped form matches the IPv4 clients it covers, so neither the family a socket
//! reports nor the way a block is written decides whether a policy applies. Otherwise the
//! families never mix (`::/0` matches no IPv4 client, as in Envoy). Host bits beyond the
//! prefix are ignored, as Istio does.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An address block: an address and a prefix length that fits its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A block that does not parse or whose prefix is longer than its address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or block (address/prefix; an IPv4-mapped block is ::ffff:a.b.c.d/96 or longer)")]
pub struct CidrError(pub String);

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

impl Cidr {
    /// A block from an address and prefix length; `None` when the prefix is too long, or when
    /// an IPv4-mapped address (`::ffff:a.b.c.d`) has a prefix under 96: such a block reads like
    /// an IPv4 one but covers no IPv4 client at all, so a DENY written that way would deny
    /// nothing.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let mapped = matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
        (prefix <= max_prefix(addr) && !(mapped && prefix < 96)).then_some(Cidr { addr, prefix })
    }

    /// A block from its wire form (4 or 16 address bytes and a prefix length in bits).
    pub fn from_bytes(address: &[u8], prefix: u32) -> Option<Self> {
        let addr = match address.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(address).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(address).ok()?),
            _ => return None,
        };
        Cidr::new(addr, u8::try_from(prefix).ok()?)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the block. Families do not mix (as in Envoy), except that an
    /// IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are one address: a mapped
    /// client is matched as its IPv4 address, and a block written in mapped form
    /// (`::ffff:10.0.0.0/104`) is the IPv4 block it names, for ALLOW and DENY alike. `::/0`
    /// matches no IPv4 client, mapped or not.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let v4 = |a: Ipv4Addr, n: Ipv4Addr, prefix: u8| {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        };
        // A mapped client is its IPv4 address: it never matches IPv6-only blocks such as `::/0`.
        match (ip.to_canonical(), self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => v4(a, n, self.prefix),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(a), IpAddr::V6(n)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(n) & mask
            }
            (IpAddr::V4(a), IpAddr::V6(n)) => match n.to_ipv4_mapped() {
                Some(n) if self.prefix >= 96 => v4(a, n, self.prefix - 96),
                _ => false,
            },
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().map_err(|_| err())?, len.parse::<u8>().map_err(|_| err())?),
            None => {
                let ip = s.parse::<IpAddr>().map_err(|_| err())?;
                (ip, max_prefix(ip))
            }
        };
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        assert_eq!(c("10.0.0.0/8").prefix(), 8);
        assert_eq!(c("10.1.2.3"), Cidr::new("10.1.2.3".parse().unwrap(), 32).unwrap());
        assert_eq!(c("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(c("::1").prefix(), 128);
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "host/8",
            " 10.0.0.1",
            "::ffff:10.0.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn matches_by_prefix_ignoring_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("10.1.2.3/16").contains(ip("10.1.9.9")), "host bits beyond the prefix are ignored");
        assert!(c("10.1.2.5/31").contains(ip("10.1.2.4")));
        assert!(!c("10.1.2.5/31").contains(ip("10.1.2.6")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")), "families never mix");
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("10.1.2.3").contains(ip("10.1.2.3")) && !c("10.1.2.3").contains(ip("10.1.2.4")));
    }

    #[test]
    fn an_ipv4_client_on_a_dual_stack_socket_is_matched_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(c("10.0.0.0/8").contains(mapped));
        assert!(!c("11.0.0.0/8").contains(mapped));
        assert!(c("::ffff:0:0/96").contains(mapped), "and still the IPv6 address it is");
        assert!(!c("::/0").contains(mapped), "but not an IPv6 client");
        assert!(!c("2001:db8::/32").contains(mapped));
    }

    #[test]
    fn a_block_in_mapped_form_covers_its_ipv4_clients() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
        assert!(!c("::ffff:10.0.0.0/104").contains(ip("11.1.2.3")));
        assert!(c("::ffff:0:0/96").contains(ip("192.0.2.1")));
        assert!(c("::ffff:10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!c("::/0").contains(ip("10.1.2.3")), "a block wider than the mapped range is IPv6 only");
        assert!(!c("::/95").contains(ip("10.1.2.3")));
        assert!(!c("2001:db8::/32").contains(ip("10.1.2.3")));
    }

    #[test]
    fn wire_form() {
        assert_eq!(Cidr::from_bytes(&[10, 0, 0, 0], 8), Some(c("10.0.0.0/8")));
        assert_eq!(Cidr::from_bytes(&[10, 0, 0, 0], 33), None);
        assert_eq!(Cidr::from_bytes(&[10, 0, 0], 8), None);
        assert_eq!(Cidr::from_bytes(&[0; 16], 128), Some(c("::/128")));
    }
}
