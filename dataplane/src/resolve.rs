//! Names resolved on demand, for both proxies: the endpoints of `resolution: DNS`
//! ServiceEntries arrive as workloads with a hostname and no address, and each connection to
//! one (ztunnel's, or a waypoint's request) resolves it here. hickory's resolver caches answers
//! for their records' TTLs, so a name is asked again only when its answer expires. A name that
//! does not resolve, or resolves somewhere an entry could not lead ([`Resolver::resolve_outside`]),
//! fails the connection (nothing is sent anywhere else).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::state::{Destination, State};

/// Why a name could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {host}: {source}")]
    Lookup { host: String, source: hickory_resolver::ResolveError },
    #[error("{0} resolved to no address")]
    Empty(String),
    #[error("resolving {0}: no answer within the deadline")]
    Timeout(String),
    #[error("{host} resolved to {ip}, where a ServiceEntry may not lead (the pod itself, link-local, a meshed pod)")]
    Refused { host: String, ip: IpAddr },
}

/// The longest a connection waits for its name.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(3);

/// Whether a DNS endpoint may lead to `ip`: not the pod itself (loopback), not "any"
/// (unspecified), not the node's link-local services (metadata, node-local DNS), not multicast.
pub fn routable(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// Whether a proxy may send plain TCP to `ip` for an endpoint outside the mesh of the service
/// `own` (its key): an address [`routable`] accepts, that is neither a meshed workload's (that
/// would be plaintext to it) nor another service's virtual address (it would reach that
/// service's pods without an identity, around their waypoint) — an entry's own addresses may
/// be its endpoints' — an IPv4-mapped address judged as the IPv4 one it is.
pub fn outside_ok(state: &State, network: &str, ip: IpAddr, own: Option<&str>) -> bool {
    let ip = ip.to_canonical();
    if !routable(ip) || state.workload_by_addr(network, ip).is_some_and(|w| w.hbone) {
        return false;
    }
    !matches!(
        state.destination(network, std::net::SocketAddr::new(ip, 0)),
        Destination::Service { service, .. } if !service.passthrough && Some(&*service.key) != own
    )
}

pub struct Resolver(TokioResolver);

impl Resolver {
    /// The node's resolver configuration (`/etc/resolv.conf`), or `nameservers` when given.
    /// Without a usable configuration every lookup fails (connections to such endpoints are
    /// refused, never sent elsewhere).
    pub fn new(nameservers: &[SocketAddr]) -> Self {
        let provider = TokioConnectionProvider::default();
        let builder = if nameservers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::warn!(error = %e, "no system resolver configuration; DNS endpoints cannot be resolved");
                    TokioResolver::builder_with_config(ResolverConfig::new(), provider)
                }
            }
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true));
            }
            TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), provider)
        };
        let mut options = ResolverOpts::default();
        // Names are looked up as written (fully qualified: no search list), never from the
        // node's hosts file (`localhost`, the node's own name).
        options.ndots = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = Duration::from_secs(2);
        options.attempts = 1;
        options.cache_size = 4096;
        // A TTL of 0 would send every connection to the name server; failures are remembered
        // briefly so a dead name cannot be used to flood it.
        options.positive_min_ttl = Some(Duration::from_secs(1));
        options.negative_min_ttl = Some(Duration::from_secs(5));
        Resolver(builder.with_options(options).build())
    }

    /// An address of `host` for a connection outside the mesh: only one `allowed` accepts
    /// (see [`outside_ok`]), given in canonical form (an IPv4-mapped answer as IPv4).
    pub async fn resolve_outside(
        &self,
        host: &str,
        like: IpAddr,
        allowed: impl FnOnce(IpAddr) -> bool,
    ) -> Result<IpAddr, ResolveError> {
        let ip = self.resolve(host, like).await?.to_canonical();
        if !allowed(ip) {
            return Err(ResolveError::Refused { host: host.to_owned(), ip });
        }
        Ok(ip)
    }

    /// An address of `host`, of the same family as `like` when it has one.
    pub async fn resolve(&self, host: &str, like: IpAddr) -> Result<IpAddr, ResolveError> {
        let fqdn = if host.ends_with('.') { host.to_owned() } else { format!("{host}.") };
        let answer = tokio::time::timeout(LOOKUP_DEADLINE, self.0.lookup_ip(fqdn))
            .await
            .map_err(|_| ResolveError::Timeout(host.to_owned()))?
            .map_err(|source| ResolveError::Lookup { host: host.to_owned(), source })?;
        let all: Vec<IpAddr> = answer.iter().collect();
        let same: Vec<IpAddr> = all.iter().copied().filter(|a| a.is_ipv4() == like.is_ipv4()).collect();
        let pool = if same.is_empty() { all } else { same };
        // Connections spread over the answers (as Istio's DNS resolution balances).
        let pick = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        pool.get(pick as usize % pool.len().max(1)).copied().ok_or_else(|| ResolveError::Empty(host.to_owned()))
    }
}
