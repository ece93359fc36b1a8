//! A route as compiled from `ambit.waypoint.Route`: its matches (path, method, headers, query),
//! header operations, filters, weighted backends, timeouts, retry and fault. Matching and the
//! weighted pick are here; applying filters and sending are the proxy's.

use std::sync::Arc;
use std::time::Duration;

use ambit_shared::proto::waypoint as pb;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::{header_name, header_value, regex, CompileError};

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
    /// A DestinationRule subset of the service's endpoints.
    pub subset: Option<Arc<str>>,
}

#[derive(Debug)]
pub enum Filter {
    RequestHeaders(HeaderOps),
    ResponseHeaders(HeaderOps),
    Redirect(pb::Redirect),
    Rewrite(pb::Rewrite),
    Mirror { backend: BackendRef, percent: f64 },
}

/// A hostname a route (or a gateway listener) is for: exact, or `*.suffix` — any name ending
/// in `.suffix`, however many labels in front (Gateway API's wildcard), never `suffix` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Self {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_owned()),
            None => HostPattern::Exact(pattern),
        }
    }

    /// Whether `name` (lowercase, without a port) is covered.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == name,
            HostPattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
        }
    }

    /// How specific it is, for choosing among listeners: exact names first, then longer
    /// suffixes.
    pub fn specificity(&self) -> (bool, usize) {
        match self {
            HostPattern::Exact(h) => (true, h.len()),
            HostPattern::Suffix(s) => (false, s.len()),
        }
    }
}

/// The name in a Host header or `:authority`: lowercase, without its port or a trailing dot.
pub fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[addr]:port`.
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub ports: Vec<u16>,
    /// At an ingress gateway: the hosts it serves (empty: any).
    pub hostnames: Vec<HostPattern>,
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
        subset: Some(b.subset.as_str()).filter(|s| !s.is_empty()).map(Arc::from),
    })
}

impl Route {
    pub(super) fn compile(field: &str, r: &pb::Route) -> Result<Self, CompileError> {
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
            hostnames: r.hostnames.iter().map(|h| HostPattern::parse(h)).collect(),
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

    /// Whether it serves `host` (as [`host_name`] gives it).
    pub fn serves_host(&self, host: &str) -> bool {
        self.host_rank(host).is_some()
    }

    /// How specifically it serves `host`: its most specific hostname covering it (exact above
    /// wildcards, longer above shorter; no hostnames — any host — least); `None`: it does not.
    pub fn host_rank(&self, host: &str) -> Option<(u8, usize)> {
        if self.hostnames.is_empty() {
            return Some((0, 0));
        }
        self.hostnames
            .iter()
            .filter(|h| h.matches(host))
            .map(|h| {
                let (exact, len) = h.specificity();
                (if exact { 2 } else { 1 }, len)
            })
            .max()
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
