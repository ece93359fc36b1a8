//! Names resolved on demand: the endpoints of `resolution: DNS` ServiceEntries arrive as
//! workloads with a hostname and no address, and each connection to one resolves it here.
//! hickory's resolver caches answers for their records' TTLs, so a name is asked again only
//! when its answer expires. A name that does not resolve fails the connection (nothing is sent
//! anywhere else).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// Why a name could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {host}: {source}")]
    Lookup { host: String, source: hickory_resolver::ResolveError },
    #[error("{0} resolved to no address")]
    Empty(String),
}

pub struct Resolver(TokioResolver);

impl Resolver {
    /// The node's resolver configuration (`/etc/resolv.conf`), or `nameservers` when given.
    /// Without a usable configuration every lookup fails (connections to such endpoints are
    /// refused, never sent elsewhere).
    pub fn new(nameservers: &[SocketAddr]) -> Self {
        let provider = TokioConnectionProvider::default();
        let resolver = if nameservers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder.build(),
                Err(e) => {
                    tracing::warn!(error = %e, "no system resolver configuration; DNS endpoints cannot be resolved");
                    TokioResolver::builder_with_config(ResolverConfig::new(), provider).build()
                }
            }
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true));
            }
            TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), provider).build()
        };
        Resolver(resolver)
    }

    /// An address of `host`, of the same family as `like` when it has one.
    pub async fn resolve(&self, host: &str, like: IpAddr) -> Result<IpAddr, ResolveError> {
        let answer =
            self.0.lookup_ip(host).await.map_err(|source| ResolveError::Lookup { host: host.to_owned(), source })?;
        let all: Vec<IpAddr> = answer.iter().collect();
        all.iter()
            .find(|a| a.is_ipv4() == like.is_ipv4())
            .or(all.first())
            .copied()
            .ok_or_else(|| ResolveError::Empty(host.to_owned()))
    }
}
