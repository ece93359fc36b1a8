//! The L7 configuration of one service, compiled from `ambit.waypoint.ServiceConfig` once per
//! update (regexes, CIDRs, header names) so each request costs comparisons only.
//!
//! - routes: the first whose port and match hold takes the request (the controller sends them
//!   in Gateway API precedence);
//! - authorization: Istio's order — CUSTOM is not supported, then DENY (any match denies),
//!   then ALLOW (with ALLOW policies present, one must match); AUDIT only logs. A connection
//!   forwarded as TCP is checked with Istio's L4 semantics ([`Layer::Tcp`]).
//! - [`normalize`]: the request path every check, route and upstream sees.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use ambit_shared::proto::waypoint as pb;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

pub mod normalize;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{field}: invalid regular expression: {source}")]
    Regex { field: String, source: regex::Error },
    #[error("{field}: {value:?} is not a valid {what}")]
    Invalid { field: String, value: String, what: &'static str },
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtConfigError),
}

fn regex(field: impl Into<String>, re: &str) -> Result<Regex, CompileError> {
    // Gateway API and Envoy regexes match the whole value.
    Regex::new(&format!("^(?:{re})$")).map_err(|source| CompileError::Regex { field: field.into(), source })
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| CompileError::Invalid {
        field: field.into(),
        value: name.into(),
        what: "header name",
    })
}

fn header_value(field: &str, value: &str) -> Result<HeaderValue, CompileError> {
    HeaderValue::from_str(value).map_err(|_| CompileError::Invalid {
        field: field.into(),
        value: value.into(),
        what: "header value",
    })
}

#[derive(Debug)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
    Present,
}

impl Matcher {
    fn compile(field: &str, m: &pb::StringMatch) -> Result<Self, CompileError> {
        use pb::string_match::Kind;
        Ok(match &m.kind {
            Some(Kind::Exact(v)) => Matcher::Exact(v.clone()),
            Some(Kind::Prefix(v)) => Matcher::Prefix(v.clone()),
            Some(Kind::Suffix(v)) => Matcher::Suffix(v.clone()),
            Some(Kind::Regex(v)) => Matcher::Regex(regex(field, v)?),
            Some(Kind::Present(_)) | None => Matcher::Present,
        })
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(e) => v == e,
            Matcher::Prefix(p) => v.starts_with(p.as_str()),
            Matcher::Suffix(s) => v.ends_with(s.as_str()),
            Matcher::Regex(r) => r.is_match(v),
            Matcher::Present => true,
        }
    }
}

#[derive(Debug)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Gateway API prefix: whole path segments (`/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(String),
    /// VirtualService prefix: leading characters.
    StringPrefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.starts_with(p) && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, Matcher, bool)>,
    pub query: Vec<(String, Matcher)>,
}

/// What a match looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl RouteMatch {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != r.method) || !self.path.matches(r.path) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, m, invert)| {
            let hit = r.headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| m.matches(v)));
            hit != *invert
        });
        headers_ok
            && self.query.iter().all(|(name, m)| {
                r.query
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .any(|(k, v)| k == name && m.matches(v))
            })
    }
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn compile(field: &str, m: &pb::HeaderModifier) -> Result<Self, CompileError> {
        let pair =
            |h: &pb::Header| Ok::<_, CompileError>((header_name(field, &h.name)?, header_value(field, &h.value)?));
        Ok(HeaderOps {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m.remove.iter().map(|n| header_name(field, n)).collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendRef {
    /// `ns/hostname`: the service's key in the workload state.
    pub service_key: String,
    pub hostname: String,
    /// 0: the port the request came to.
    pub port: u16,
    pub weight: u32,
    pub request_headers: Option<HeaderOps>,
}

#[derive(Debug)]
pub enum Filter {
    RequestHeaders(HeaderOps),
    ResponseHeaders(HeaderOps),
    Redirect(pb::Redirect),
    Rewrite(pb::Rewrite),
    Mirror { backend: BackendRef, percent: f64 },
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub ports: Vec<u16>,
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<BackendRef>,
    pub total_weight: u64,
    pub filters: Vec<Filter>,
    pub timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<pb::Retry>,
    pub fault: Option<pb::Fault>,
}

fn duration(d: &Option<prost_types::Duration>) -> Option<Duration> {
    d.as_ref().and_then(|d| Duration::try_from(*d).ok()).filter(|d| !d.is_zero())
}

fn backend(field: &str, b: &pb::Backend) -> Result<BackendRef, CompileError> {
    let mut request_headers = None;
    for f in &b.filters {
        if let Some(pb::filter::Kind::RequestHeaders(m)) = &f.kind {
            request_headers = Some(HeaderOps::compile(field, m)?);
        }
    }
    Ok(BackendRef {
        service_key: format!("{}/{}", b.namespace, b.hostname),
        hostname: b.hostname.clone(),
        port: u16::try_from(b.port).unwrap_or(0),
        weight: b.weight,
        request_headers,
    })
}

impl Route {
    fn compile(field: &str, r: &pb::Route) -> Result<Self, CompileError> {
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = format!("{field}.matches[{i}]");
                let path = if !m.has_path {
                    PathMatch::Any
                } else {
                    match m.path_kind() {
                        pb::PathKind::PathExact => PathMatch::Exact(m.path.clone()),
                        pb::PathKind::PathPrefix => PathMatch::Prefix(m.path.clone()),
                        pb::PathKind::PathRegex => PathMatch::Regex(regex(format!("{at}.path"), &m.path)?),
                        pb::PathKind::PathStringPrefix => PathMatch::StringPrefix(m.path.clone()),
                    }
                };
                let method = if m.method.is_empty() {
                    None
                } else {
                    Some(Method::from_bytes(m.method.as_bytes()).map_err(|_| CompileError::Invalid {
                        field: format!("{at}.method"),
                        value: m.method.clone(),
                        what: "method",
                    })?)
                };
                let headers = m
                    .headers
                    .iter()
                    .map(|h| {
                        let f = format!("{at}.headers");
                        let value = h.value.clone().unwrap_or_default();
                        Ok((header_name(&f, &h.name)?, Matcher::compile(&f, &value)?, h.invert))
                    })
                    .collect::<Result<_, CompileError>>()?;
                let query = m
                    .query
                    .iter()
                    .map(|q| Ok((q.name.clone(), Matcher::compile(&at, &q.value.clone().unwrap_or_default())?)))
                    .collect::<Result<_, CompileError>>()?;
                Ok(RouteMatch { path, method, headers, query })
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let backends =
            r.backends.iter().map(|b| backend(&format!("{field}.backends"), b)).collect::<Result<Vec<_>, _>>()?;
        let filters = r
            .filters
            .iter()
            .filter_map(|f| {
                let at = format!("{field}.filters");
                Some(match f.kind.as_ref()? {
                    pb::filter::Kind::RequestHeaders(m) => HeaderOps::compile(&at, m).map(Filter::RequestHeaders),
                    pb::filter::Kind::ResponseHeaders(m) => HeaderOps::compile(&at, m).map(Filter::ResponseHeaders),
                    pb::filter::Kind::Redirect(r) => Ok(Filter::Redirect(r.clone())),
                    pb::filter::Kind::Rewrite(r) => Ok(Filter::Rewrite(r.clone())),
                    pb::filter::Kind::Mirror(m) => {
                        let b = m.backend.clone().unwrap_or_default();
                        backend(&at, &b)
                            .map(|backend| Filter::Mirror { backend, percent: if m.all { 100.0 } else { m.percent } })
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Route {
            name: r.name.clone(),
            ports: r.ports.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
            matches: if matches.is_empty() {
                vec![RouteMatch { path: PathMatch::Any, method: None, headers: Vec::new(), query: Vec::new() }]
            } else {
                matches
            },
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            backends,
            filters,
            timeout: duration(&r.timeout),
            backend_timeout: duration(&r.backend_timeout),
            retry: r.retry.clone(),
            fault: r.fault,
        })
    }

    pub fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    /// A backend by weight (`None` when every weight is 0: Gateway API answers 500).
    pub fn pick_backend(&self) -> Option<&BackendRef> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = fastrand::u64(0..self.total_weight);
        for b in &self.backends {
            let w = u64::from(b.weight);
            if n < w {
                return Some(b);
            }
            n -= w;
        }
        None
    }
}

// --- authorization -----------------------------------------------------------------------

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

fn cidrs(field: &str, values: &[String], not: &[String]) -> Result<Field<(IpAddr, u8)>, CompileError> {
    let parse = |v: &String| {
        let (ip, len) = match v.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok(), len.parse::<u8>().ok()),
            None => {
                let ip = v.parse::<IpAddr>().ok();
                (ip, ip.map(|ip| if ip.is_ipv4() { 32 } else { 128 }))
            }
        };
        match (ip, len) {
            (Some(ip), Some(len)) if len <= if ip.is_ipv4() { 32 } else { 128 } => Ok((ip, len)),
            _ => Err(CompileError::Invalid { field: field.into(), value: v.clone(), what: "IP block" }),
        }
    };
    Ok(Field {
        values: values.iter().map(parse).collect::<Result<_, _>>()?,
        not: not.iter().map(parse).collect::<Result<_, _>>()?,
    })
}

fn in_cidr(ip: IpAddr, (net, len): &(IpAddr, u8)) -> bool {
    // An IPv4 client seen through a dual-stack socket is still that IPv4 address.
    match (ip.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - u32::from(*len)) };
            u32::from(a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if *len == 0 { 0 } else { u128::MAX << (128 - u32::from(*len)) };
            u128::from(a) & mask == u128::from(*n) & mask
        }
        _ => false,
    }
}

#[derive(Debug)]
struct Source {
    principals: Field<Pattern>,
    request_principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    ip_blocks: Field<(IpAddr, u8)>,
    remote_ip_blocks: Field<(IpAddr, u8)>,
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
            && self.ip_blocks.check(|c| in_cidr(s.source_ip, c))
            && self.remote_ip_blocks.check(|c| in_cidr(s.remote_ip, c))
            && self.service_accounts.check(|want| principal.is_some_and(|p| is_service_account(p, want)))
    }
}

/// Whether principal `td/ns/<ns>/sa/<sa>` is service account `want` (`<ns>/<sa>`).
fn is_service_account(principal: &str, want: &str) -> bool {
    let Some((_, rest)) = principal.split_once("/ns/") else { return false };
    let Some((ns, sa)) = rest.split_once("/sa/") else { return false };
    want.split_once('/') == Some((ns, sa))
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
fn canonical_host(host: &str) -> String {
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
                    let block = block.clone();
                    return cidrs("when", &[block], &[])
                        .ok()
                        .and_then(|f| f.values.first().copied())
                        .zip(v.parse::<IpAddr>().ok())
                        .is_some_and(|(c, ip)| in_cidr(ip, &c));
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
    fn compile(p: &pb::Policy) -> Result<Self, CompileError> {
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
                    to: r
                        .to
                        .iter()
                        .map(|t| Operation {
                            hosts: patterns(&t.hosts, &t.not_hosts),
                            ports: patterns(&t.ports, &t.not_ports),
                            methods: patterns(&t.methods, &t.not_methods),
                            paths: patterns(&t.paths, &t.not_paths),
                        })
                        .collect(),
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
        self.rules.iter().any(|r| r.matches(s, layer, self.action))
    }
}

/// The authorization verdict: `Err(policy name)` when denied.
pub fn authorize(policies: &[Policy], s: &Subject<'_>, layer: Layer) -> Result<(), String> {
    for p in policies.iter().filter(|p| p.action == pb::Action::Audit && p.matches(s, layer)) {
        tracing::info!(target: "access", policy = %p.name, "audit policy matched");
    }
    let enforced = |p: &&Policy| !p.dry_run;
    if let Some(p) = policies.iter().filter(enforced).find(|p| p.action == pb::Action::Deny && p.matches(s, layer)) {
        return Err(p.name.clone());
    }
    let mut allows = policies.iter().filter(enforced).filter(|p| p.action == pb::Action::Allow).peekable();
    if allows.peek().is_none() {
        return Ok(());
    }
    if allows.clone().any(|p| p.matches(s, layer)) {
        Ok(())
    } else {
        Err("no ALLOW policy matched".into())
    }
}

/// One service's compiled configuration.
#[derive(Debug)]
pub struct ServiceL7 {
    pub hostname: String,
    pub ports: Vec<(u16, pb::Protocol)>,
    pub routes: Vec<Route>,
    pub policies: Vec<Policy>,
    /// Its DestinationRule's traffic policy.
    pub backend: Option<pb::BackendPolicy>,
    /// RequestAuthentication rules.
    pub jwt: Vec<crate::jwt::Rule>,
}

impl ServiceL7 {
    pub fn compile(c: &pb::ServiceConfig) -> Result<Self, CompileError> {
        Ok(ServiceL7 {
            hostname: c.hostname.clone(),
            ports: c.ports.iter().filter_map(|p| Some((u16::try_from(p.port).ok()?, p.protocol()))).collect(),
            routes: c
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route::compile(&format!("routes[{i}] ({})", r.name), r))
                .collect::<Result<_, _>>()?,
            policies: c.policies.iter().map(Policy::compile).collect::<Result<_, _>>()?,
            backend: c.backend.clone(),
            jwt: c.jwt_rules.iter().map(crate::jwt::Rule::compile).collect::<Result<_, _>>()?,
        })
    }

    pub fn protocol(&self, port: u16) -> pb::Protocol {
        self.ports.iter().find(|(p, _)| *p == port).map_or(pb::Protocol::Unspecified, |(_, proto)| *proto)
    }
}

#[cfg(test)]
mod tests;
