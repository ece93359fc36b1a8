//! L4 authorization as ztunnel enforces it, with Istio's semantics:
//! 1. any matching DENY policy denies;
//! 2. with no ALLOW policy, the connection is allowed;
//! 3. any matching ALLOW policy allows;
//! 4. otherwise denied.
//!
//! A policy matches when any of its groups matches; a group when all its clauses match (an
//! empty group matches everything); a clause when any of its matches matches (a clause without
//! matches holds); a match when every field it sets holds (an empty match never matches). A workload that names a policy
//! we do not know is denied (fail closed) rather than judged without it.

use std::net::{IpAddr, SocketAddr};

use ambit_dataplane::state::{State, Workload};
use ambit_shared::proto::security::{
    string_match::MatchType, Action, Address, Authorization, Group, Match, Rules, ServiceAccountMatch, StringMatch,
};
use ambit_shared::{Cidr, Identity};

/// What authorization knows about one connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo<'a> {
    /// The verified peer identity; `None` for plaintext (15006) clients.
    pub source_identity: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination: SocketAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A DENY policy matched.
    DeniedBy(String),
    /// ALLOW policies exist and none matched.
    NotAllowed,
    /// The workload names a policy that has not arrived (or was removed).
    UnknownPolicy(String),
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::DeniedBy(p) => write!(f, "denied by policy {p}"),
            Denial::NotAllowed => f.write_str("no ALLOW policy matched"),
            Denial::UnknownPolicy(p) => write!(f, "policy {p} is unknown (fail closed)"),
        }
    }
}

fn string_matches(m: &StringMatch, value: &str) -> bool {
    match &m.match_type {
        Some(MatchType::Exact(e)) => value == e,
        Some(MatchType::Prefix(p)) => value.starts_with(p.as_str()),
        Some(MatchType::Suffix(s)) => value.ends_with(s.as_str()),
        Some(MatchType::Presence(())) => !value.is_empty(),
        None => false,
    }
}

/// A block from a policy; one that cannot be read matches nothing (the controller validates
/// them, so this is a malformed resource).
fn cidr_contains(a: &Address, ip: IpAddr) -> bool {
    Cidr::from_bytes(&a.address, a.length).is_some_and(|c| c.contains(ip))
}

fn sa_matches(m: &ServiceAccountMatch, id: Option<&Identity>) -> bool {
    id.is_some_and(|id| id.namespace() == m.namespace && id.service_account() == m.service_account)
}

/// `true` when `positive` is empty or one of it holds, and none of `negative` holds.
fn field<T>(positive: &[T], negative: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&holds)) && !negative.iter().any(holds)
}

fn is_empty(m: &Match) -> bool {
    m.namespaces.is_empty()
        && m.not_namespaces.is_empty()
        && m.principals.is_empty()
        && m.not_principals.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty()
}

fn match_holds(m: &Match, conn: &ConnectionInfo<'_>, principal: &str) -> bool {
    if is_empty(m) {
        return false;
    }
    let ns = conn.source_identity.map(Identity::namespace).unwrap_or("");
    let port = u32::from(conn.destination.port());
    field(&m.namespaces, &m.not_namespaces, |s| string_matches(s, ns))
        && field(&m.principals, &m.not_principals, |s| string_matches(s, principal))
        && field(&m.service_accounts, &m.not_service_accounts, |s| sa_matches(s, conn.source_identity))
        && field(&m.source_ips, &m.not_source_ips, |a| cidr_contains(a, conn.source_ip))
        && field(&m.destination_ips, &m.not_destination_ips, |a| cidr_contains(a, conn.destination.ip()))
        && field(&m.destination_ports, &m.not_destination_ports, |p| *p == port)
}

/// A clause without matches holds (as in Istio's ztunnel); otherwise any match must hold.
fn clause_holds(c: &Rules, conn: &ConnectionInfo<'_>, principal: &str) -> bool {
    c.matches.is_empty() || c.matches.iter().any(|m| match_holds(m, conn, principal))
}

fn group_holds(g: &Group, conn: &ConnectionInfo<'_>, principal: &str) -> bool {
    g.rules.iter().all(|c| clause_holds(c, conn, principal))
}

/// Whether `policy` matches the connection.
pub fn policy_matches(policy: &Authorization, conn: &ConnectionInfo<'_>) -> bool {
    policy_matches_principal(policy, conn, &principal_of(conn))
}

/// Principals are written without the scheme: `cluster.local/ns/a/sa/b`; plaintext has none.
fn principal_of(conn: &ConnectionInfo<'_>) -> String {
    conn.source_identity.map(Identity::principal).unwrap_or_default()
}

fn policy_matches_principal(policy: &Authorization, conn: &ConnectionInfo<'_>, principal: &str) -> bool {
    policy.groups.iter().any(|g| group_holds(g, conn, principal))
}

/// Evaluates the policies that apply to a destination (already resolved by name; `Err(name)`
/// for a name that is not known).
pub fn authorize<'p>(
    policies: impl IntoIterator<Item = Result<&'p Authorization, &'p str>>,
    conn: &ConnectionInfo<'_>,
) -> Result<(), Denial> {
    let principal = principal_of(conn);
    let mut allows = Vec::new();
    for p in policies {
        let p = p.map_err(|name| Denial::UnknownPolicy(name.to_owned()))?;
        if p.dry_run {
            continue;
        }
        if p.action == Action::Deny as i32 {
            if policy_matches_principal(p, conn, &principal) {
                return Err(Denial::DeniedBy(format!("{}/{}", p.namespace, p.name)));
            }
        } else {
            allows.push(p);
        }
    }
    if allows.is_empty() || allows.iter().any(|p| policy_matches_principal(p, conn, &principal)) {
        Ok(())
    } else {
        Err(Denial::NotAllowed)
    }
}

/// Authorization of a connection against the mesh state: the policies
/// [`State::policies_for`] finds for the destination, evaluated by [`authorize`].
pub trait Authorize {
    /// Authorizes a connection to `destination`: global policies, its namespace's, and the
    /// ones it names (fail closed on unknown names).
    fn authorize(&self, destination: &Workload, conn: &ConnectionInfo<'_>) -> Result<(), Denial>;
}

impl Authorize for State {
    fn authorize(&self, destination: &Workload, conn: &ConnectionInfo<'_>) -> Result<(), Denial> {
        authorize(self.policies_for(destination), conn)
    }
}

#[cfg(test)]
mod tests;
