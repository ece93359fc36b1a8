//! SPIFFE identities as the mesh uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
//!
//! Owns parsing (with an error that says exactly what is wrong) and display. It does not know
//! about certificates; `certs` and `tls` carry identities in URI SANs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The URI scheme prefix of every SPIFFE ID.
const SCHEME: &str = "spiffe://";
/// SPIFFE limits a trust domain to 255 bytes; Kubernetes names are far shorter.
const MAX_TRUST_DOMAIN: usize = 255;

/// A workload identity. Cheap to clone: the three parts share one allocation each.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

/// Why a string is not a mesh SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    Scheme(String),
    #[error("identity {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    #[error("identity {0:?}: trust domain {1:?} contains a character outside [a-z0-9.-_]")]
    TrustDomainChar(String, String),
    #[error("identity {0:?}: trust domain is longer than 255 bytes")]
    TrustDomainTooLong(String),
    #[error("identity {0:?}: path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("identity {0:?}: {1} segment {2:?} is not a valid Kubernetes name")]
    Segment(String, &'static str, String),
}

impl Identity {
    /// Builds an identity from its parts, validating each.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity without its scheme, as Istio's authorization `principals` spell it
    /// (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

fn valid_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

/// Kubernetes names (namespaces, service accounts) are DNS labels or subdomains: lowercase
/// alphanumerics, `-` and `.`, starting and ending alphanumeric, at most 253 bytes.
fn valid_k8s_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| IdentityError::Scheme(s.to_owned()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if td.is_empty() {
            return Err(IdentityError::EmptyTrustDomain(s.to_owned()));
        }
        if td.len() > MAX_TRUST_DOMAIN {
            return Err(IdentityError::TrustDomainTooLong(s.to_owned()));
        }
        if !td.chars().all(valid_trust_domain_char) {
            return Err(IdentityError::TrustDomainChar(s.to_owned(), td.to_owned()));
        }
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Path(s.to_owned()));
        };
        if !valid_k8s_name(ns) {
            return Err(IdentityError::Segment(s.to_owned(), "namespace", ns.to_owned()));
        }
        if !valid_k8s_name(sa) {
            return Err(IdentityError::Segment(s.to_owned(), "service account", sa.to_owned()));
        }
        Ok(Identity { trust_domain: td.into(), namespace: ns.into(), service_account: sa.into() })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/front-end".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "front-end");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/front-end");
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/front-end");
        assert_eq!(Identity::new("cluster.local", "shop", "front-end").unwrap(), id);
    }

    #[test]
    fn malformed_identities_say_what_is_wrong() {
        type E = IdentityError;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("http://cluster.local/ns/a/sa/b", |e| matches!(e, E::Scheme(_))),
            ("spiffe:///ns/a/sa/b", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| matches!(e, E::TrustDomainChar(_, td) if td == "Cluster.local")),
            ("spiffe://cluster.local", |e| matches!(e, E::Path(_))),
            ("spiffe://cluster.local/ns/a/sa", |e| matches!(e, E::Path(_))),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| matches!(e, E::Path(_))),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| matches!(e, E::Path(_))),
            ("spiffe://cluster.local/ns//sa/b", |e| matches!(e, E::Segment(_, "namespace", _))),
            (
                "spiffe://cluster.local/ns/a/sa/B_ad",
                |e| matches!(e, E::Segment(_, "service account", s) if s == "B_ad"),
            ),
            ("spiffe://cluster.local/ns/-a/sa/b", |e| matches!(e, E::Segment(_, "namespace", _))),
        ];
        for (input, check) in cases {
            let err = input.parse::<Identity>().expect_err(input);
            assert!(check(&err), "{input}: unexpected error {err:?}");
            assert!(err.to_string().contains(input), "error should quote the input: {err}");
        }
        let long = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        assert!(matches!(long.parse::<Identity>(), Err(E::TrustDomainTooLong(_))));
    }
}
