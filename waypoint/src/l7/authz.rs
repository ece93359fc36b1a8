//! AuthorizationPolicy as compiled for a waypoint: Istio's string forms, `from`/`to`/`when`
//! and their `not` lists, IP blocks; evaluated in Istio's order — CUSTOM is not supported,
//! then DENY (any match denies), then ALLOW (with ALLOW policies present, one must match);
//! AUDIT only logs. A connection forwarded as TCP is checked with Istio's L4 semantics
//! ([`Layer::Tcp`]). It does not build the subject (the proxy does, from the connection's peer).

use std::borrow::Cow;
use std::net::IpAddr;

use ambit_shared::proto::waypoint as pb;
use ambit_shared::{Cidr, Identity};

use super::CompileError;

/// Istio's string forms: exact, `prefix*`, `*suffix`, `*`.
#[derive(Debug)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn new(s: &str) -> Self {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
        }
    }

    fn matches_ci(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v.eq_ignore_ascii_case(e),
            Pattern::Prefix(p) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p),
            Pattern::Suffix(s) => v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s),
        }
    }
}

/// A field's values and its `not` values: both lists must be satisfied.
#[derive(Debug, Default)]
struct Field<T> {
    values: Vec<T>,
    not: Vec<T>,
}

impl<T> Field<T> {
    fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not.is_empty()
    }

    fn check(&self, hit: impl Fn(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&hit)) && !self.not.iter().any(&hit)
    }
}

fn patterns(values: &[String], not: &[String]) -> Field<Pattern> {
    Field {
        values: values.iter().map(|v| Pattern::new(v)).collect(),
        not: not.iter().map(|v| Pattern::new(v)).collect(),
    }
}

fn cidrs(field: &str, values: &[String], not: &[String]) -> Result<Field<Cidr>, CompileError> {
    let parse = |v: &String| {
        v.parse::<Cidr>().map_err(|_| CompileError::Invalid { field: field.into(), value: v.clone(), what: "IP block" })
    };
    Ok(Field {
        values: values.iter().map(parse).collect::<Result<_, _>>()?,
        not: not.iter().map(parse).collect::<Result<_, _>>()?,
    })
}

#[derive(Debug)]
struct Source {
    principals: Field<Pattern>,
    request_principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    ip_blocks: Field<Cidr>,
    remote_ip_blocks: Field<Cidr>,
    /// `ns/sa`, exact.
    service_accounts: Field<String>,
}

#[derive(Debug)]
struct Operation {
    hosts: Field<Pattern>,
    ports: Field<Pattern>,
    methods: Field<Pattern>,
    paths: Field<Pattern>,
}

#[derive(Debug)]
struct Condition {
    attribute: Attribute,
    values: Field<Pattern>,
}

/// An AuthorizationPolicy `when` key the waypoint can evaluate. Any other key is a compile
/// error (the service's L7 config is rejected) rather than a condition that never matches,
/// which would make a DENY rule silently inert.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attribute {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// `request.headers[name]`, the name lower-cased.
    Header(String),
    /// `request.auth.claims[a][b]…`: the path into the claims.
    Claim(Vec<String>),
}

impl Attribute {
    fn parse(key: &str) -> Option<Attribute> {
        let bracketed = |rest: &str| -> Option<Vec<String>> {
            let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
            let parts: Vec<String> = inner.split("][").map(str::to_owned).collect();
            (!parts.iter().any(|p| p.is_empty() || p.contains(['[', ']']))).then_some(parts)
        };
        Some(match key {
            "source.ip" => Attribute::SourceIp,
            "remote.ip" => Attribute::RemoteIp,
            "source.namespace" => Attribute::SourceNamespace,
            "source.principal" => Attribute::SourcePrincipal,
            "destination.ip" => Attribute::DestinationIp,
            "destination.port" => Attribute::DestinationPort,
            "request.auth.principal" => Attribute::RequestPrincipal,
            "request.auth.audiences" => Attribute::RequestAudiences,
            "request.auth.presenter" => Attribute::RequestPresenter,
            _ => {
                if let Some(rest) = key.strip_prefix("request.headers") {
                    let mut name = bracketed(rest)?;
                    if name.len() != 1 {
                        return None;
                    }
                    let name = name.remove(0).to_ascii_lowercase();
                    let pseudo = matches!(name.as_str(), ":authority" | ":path" | ":method");
                    if !pseudo && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return None;
                    }
                    Attribute::Header(name)
                } else {
                    Attribute::Claim(bracketed(key.strip_prefix("request.auth.claims")?)?)
                }
            }
        })
    }
}

#[derive(Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub action: pb::Action,
    rules: Vec<Rule>,
    pub dry_run: bool,
}

/// What authorization looks at.
pub struct Subject<'a> {
    /// `spiffe://td/ns/x/sa/y`.
    pub principal: Option<&'a str>,
    /// The same peer identity, parsed (for `serviceAccounts`).
    pub identity: Option<&'a Identity>,
    pub namespace: Option<&'a str>,
    /// `iss/sub` of a validated JWT.
    pub request_principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, without `?` (`request.headers[:path]` includes it, as Envoy's does).
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub claims: Option<&'a serde_json::Value>,
}

fn strip_spiffe(p: &str) -> &str {
    p.strip_prefix("spiffe://").unwrap_or(p)
}

/// What a check can see: a request's attributes, or only a TCP connection's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Http,
    /// A connection forwarded as TCP: HTTP attributes do not exist. As at Istio's ztunnel, an
    /// ALLOW rule that needs them cannot match, and a DENY rule is enforced on its L4 part
    /// alone (a broader deny, never a narrower one).
    Tcp,
}

impl Source {
    fn needs_http(&self) -> bool {
        self.request_principals.is_set()
    }

    /// With `Layer::Tcp` the HTTP-only fields are left out (see [`Layer::Tcp`]).
    fn matches(&self, s: &Subject<'_>, layer: Layer) -> bool {
        let principal = s.principal.map(strip_spiffe);
        self.principals.check(|p| principal.is_some_and(|v| p.matches(v)))
            && (layer == Layer::Tcp
                || self.request_principals.check(|p| s.request_principal.is_some_and(|v| p.matches(v))))
            && self.namespaces.check(|p| s.namespace.is_some_and(|v| p.matches(v)))
            && self.ip_blocks.check(|c| c.contains(s.source_ip))
            && self.remote_ip_blocks.check(|c| c.contains(s.remote_ip))
            && self.service_accounts.check(|want| s.identity.is_some_and(|id| is_service_account(id, want)))
    }
}

/// Whether the peer's identity is service account `want` (`<ns>/<sa>`).
fn is_service_account(identity: &Identity, want: &str) -> bool {
    want.split_once('/') == Some((identity.namespace(), identity.service_account()))
}

/// An operation (a RateLimitPolicy rule's `match`) checked on its own, with the same fields
/// and string forms as an AuthorizationPolicy's `to.operation`.
#[derive(Debug)]
pub struct OperationMatch(Operation);

impl OperationMatch {
    pub fn compile(t: &pb::Operation) -> Self {
        OperationMatch(Operation {
            hosts: patterns(&t.hosts, &t.not_hosts),
            ports: patterns(&t.ports, &t.not_ports),
            methods: patterns(&t.methods, &t.not_methods),
            paths: patterns(&t.paths, &t.not_paths),
        })
    }

    /// Whether the request is one the operation names.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        self.0.matches(s, Layer::Http)
    }
}

impl Operation {
    fn needs_http(&self) -> bool {
        self.hosts.is_set() || self.methods.is_set() || self.paths.is_set()
    }

    fn matches(&self, s: &Subject<'_>, layer: Layer) -> bool {
        let port = s.port.to_string();
        if layer == Layer::Tcp {
            return self.ports.check(|p| p.matches(&port));
        }
        let host = canonical_host(s.host);
        self.hosts.check(|p| p.matches_ci(&host) || p.matches_ci(s.host))
            && self.ports.check(|p| p.matches(&port))
            && self.methods.check(|p| p.matches(s.method))
            && self.paths.check(|p| p.matches(s.path))
    }
}

/// A host as `hosts` rules see it: without a port (whatever follows the colon, so `host:` and
/// `host:99999` are `host` too), without a trailing dot, lower case. IPv6 literals keep their
/// brackets.
pub(super) fn canonical_host(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
        None => host.split(':').next().unwrap_or(host),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The string values at `path` in the claims (`request.auth.claims[a][b]` nests).
fn claim<'v>(claims: &'v serde_json::Value, path: &[&str]) -> Vec<&'v str> {
    let mut v = claims;
    for part in path {
        match v.get(part) {
            Some(next) => v = next,
            None => return Vec::new(),
        }
    }
    match v {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str()).collect(),
        _ => Vec::new(),
    }
}

impl Condition {
    /// Keys only a request has.
    fn needs_http(&self) -> bool {
        matches!(
            self.attribute,
            Attribute::RequestPrincipal
                | Attribute::RequestAudiences
                | Attribute::RequestPresenter
                | Attribute::Header(_)
                | Attribute::Claim(_)
        )
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        let claims = |path: &[&str]| -> Vec<Cow<'_, str>> {
            s.claims.map(|claims| claim(claims, path)).unwrap_or_default().into_iter().map(Cow::Borrowed).collect()
        };
        let one = |v: String| vec![Cow::Owned(v)];
        let values: Vec<Cow<'_, str>> = match &self.attribute {
            Attribute::SourceIp => one(s.source_ip.to_string()),
            Attribute::RemoteIp => one(s.remote_ip.to_string()),
            Attribute::SourceNamespace => one(s.namespace.unwrap_or_default().to_owned()),
            Attribute::SourcePrincipal => one(s.principal.map(strip_spiffe).unwrap_or_default().to_owned()),
            Attribute::DestinationIp => one(s.destination_ip.to_string()),
            Attribute::DestinationPort => one(s.port.to_string()),
            Attribute::RequestPrincipal => one(s.request_principal.unwrap_or_default().to_owned()),
            Attribute::RequestAudiences => claims(&["aud"]),
            Attribute::RequestPresenter => claims(&["azp"]),
            // The request line's parts as Envoy names them; `host` is the authority in HTTP/2 too.
            Attribute::Header(name) if name == ":authority" || name == "host" => vec![Cow::Borrowed(s.host)],
            Attribute::Header(name) if name == ":path" => vec![match s.query {
                Some(q) => Cow::Owned(format!("{}?{q}", s.path)),
                None => Cow::Borrowed(s.path),
            }],
            Attribute::Header(name) if name == ":method" => vec![Cow::Borrowed(s.method)],
            // Values that are not text are compared as lossy text, never skipped (a skipped
            // value would let a DENY on the header pass).
            Attribute::Header(name) => {
                s.headers.get_all(name.as_str()).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect()
            }
            Attribute::Claim(path) => claims(&path.iter().map(String::as_str).collect::<Vec<_>>()),
        };
        let ip_key = matches!(self.attribute, Attribute::SourceIp | Attribute::RemoteIp | Attribute::DestinationIp);
        let hit = |p: &Pattern, v: &str| {
            if ip_key {
                if let Pattern::Exact(block) = p {
                    return block
                        .parse::<Cidr>()
                        .ok()
                        .zip(v.parse::<IpAddr>().ok())
                        .is_some_and(|(c, ip)| c.contains(ip));
                }
            }
            p.matches(v)
        };
        self.values.check(|p| values.iter().any(|v| hit(p, v)))
    }
}

impl Rule {
    fn needs_http(&self) -> bool {
        self.from.iter().any(Source::needs_http)
            || self.to.iter().any(Operation::needs_http)
            || self.when.iter().any(Condition::needs_http)
    }

    fn matches(&self, s: &Subject<'_>, layer: Layer, action: pb::Action) -> bool {
        if layer == Layer::Tcp && action != pb::Action::Deny && self.needs_http() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|f| f.matches(s, layer)))
            && (self.to.is_empty() || self.to.iter().any(|t| t.matches(s, layer)))
            && self.when.iter().all(|c| (layer == Layer::Tcp && c.needs_http()) || c.matches(s))
    }
}

impl Policy {
    pub(super) fn compile(p: &pb::Policy) -> Result<Self, CompileError> {
        let at = format!("policy {}/{}", p.namespace, p.name);
        let rules = p
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            Ok(Source {
                                principals: patterns(&f.principals, &f.not_principals),
                                request_principals: patterns(&f.request_principals, &f.not_request_principals),
                                namespaces: patterns(&f.namespaces, &f.not_namespaces),
                                ip_blocks: cidrs(&format!("{at}.ipBlocks"), &f.ip_blocks, &f.not_ip_blocks)?,
                                remote_ip_blocks: cidrs(
                                    &format!("{at}.remoteIpBlocks"),
                                    &f.remote_ip_blocks,
                                    &f.not_remote_ip_blocks,
                                )?,
                                service_accounts: Field {
                                    values: f.service_accounts.clone(),
                                    not: f.not_service_accounts.clone(),
                                },
                            })
                        })
                        .collect::<Result<_, CompileError>>()?,
                    to: r.to.iter().map(|t| OperationMatch::compile(t).0).collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| {
                            let attribute = Attribute::parse(&c.key).ok_or_else(|| CompileError::Invalid {
                                field: format!("{at}.when.key"),
                                value: c.key.clone(),
                                what: "condition key for a waypoint",
                            })?;
                            Ok(Condition { attribute, values: patterns(&c.values, &c.not_values) })
                        })
                        .collect::<Result<_, CompileError>>()?,
                })
            })
            .collect::<Result<_, CompileError>>()?;
        Ok(Policy { name: format!("{}/{}", p.namespace, p.name), action: p.action(), rules, dry_run: p.dry_run })
    }

    pub fn matches(&self, s: &Subject<'_>, layer: Layer) -> bool {
        self.matching_rule(s, layer).is_some()
    }

    /// The index of the first rule that matches.
    fn matching_rule(&self, s: &Subject<'_>, layer: Layer) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(s, layer, self.action))
    }
}

/// Why a request or connection is denied. Displays as the log lines always read: the DENY
/// policy's `ns/name`, or `no ALLOW policy matched`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A DENY policy matched (action DENY).
    Deny {
        /// The policy, `ns/name`.
        policy: String,
        /// The index of its first rule that matched.
        rule: usize,
    },
    /// ALLOW policies are in force and none matched (action ALLOW).
    NoAllowMatched,
}

impl Denial {
    /// The action of the policies that decided.
    pub fn action(&self) -> pb::Action {
        match self {
            Denial::Deny { .. } => pb::Action::Deny,
            Denial::NoAllowMatched => pb::Action::Allow,
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Deny { policy, .. } => f.write_str(policy),
            Denial::NoAllowMatched => f.write_str("no ALLOW policy matched"),
        }
    }
}

/// The authorization verdict: `Err` says why when denied.
pub fn authorize(policies: &[Policy], s: &Subject<'_>, layer: Layer) -> Result<(), Denial> {
    for p in policies.iter().filter(|p| p.action == pb::Action::Audit && p.matches(s, layer)) {
        tracing::info!(target: "access", policy = %p.name, "audit policy matched");
    }
    let enforced = |p: &&Policy| !p.dry_run;
    let mut deny = policies.iter().filter(enforced).filter(|p| p.action == pb::Action::Deny);
    if let Some((p, rule)) = deny.find_map(|p| Some((p, p.matching_rule(s, layer)?))) {
        return Err(Denial::Deny { policy: p.name.clone(), rule });
    }
    let mut allows = policies.iter().filter(enforced).filter(|p| p.action == pb::Action::Allow).peekable();
    if allows.peek().is_none() {
        return Ok(());
    }
    if allows.clone().any(|p| p.matches(s, layer)) {
        Ok(())
    } else {
        Err(Denial::NoAllowMatched)
    }
}
