//! RequestAuthentication: JWTs validated against their issuer's JSON Web Key Set (inline, or
//! fetched from `jwksUri`, cached and refreshed).
//!
//! Istio's semantics: a request without a token passes on without a request principal; a
//! token that is present but invalid (bad signature, expired, wrong audience, unknown issuer)
//! is refused with 401. A valid token gives the request principal `<iss>/<sub>` and its
//! claims (for authorization), copies claims to headers as configured, and is removed from
//! the request unless `forwardOriginalToken` is set.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ambit_shared::proto::waypoint as pb;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};

/// How often a fetched key set is refreshed (Istio's default is 20 minutes).
const JWKS_REFRESH: Duration = Duration::from_secs(20 * 60);
/// How long a request waits for a key set that has never been fetched.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);
/// After a failed first fetch, requests needing that key set fail at once (401) for this long
/// instead of queueing behind another fetch; after a failed refresh, the next try waits this.
const FETCH_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
}

#[derive(Debug)]
pub struct Rule {
    issuer: String,
    audiences: Vec<String>,
    inline: Option<Arc<JwkSet>>,
    uri: Option<String>,
    locations: Vec<Location>,
    output: Vec<(HeaderName, String)>,
    forward: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("{0}: jwks is not a JSON Web Key Set: {1}")]
    Jwks(String, String),
    #[error("{0}: {1:?} is not a header name")]
    Header(String, String),
}

impl Rule {
    pub fn compile(r: &pb::JwtRule) -> Result<Self, JwtConfigError> {
        let header = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| JwtConfigError::Header(r.source.clone(), n.into()))
        };
        let inline = if r.jwks.is_empty() {
            None
        } else {
            let set: JwkSet =
                serde_json::from_str(&r.jwks).map_err(|e| JwtConfigError::Jwks(r.source.clone(), e.to_string()))?;
            Some(Arc::new(set))
        };
        let mut locations = r
            .locations
            .iter()
            .map(|l| {
                Ok(if l.param.is_empty() {
                    Location::Header { name: header(&l.header)?, prefix: l.prefix.clone() }
                } else {
                    Location::Param(l.param.clone())
                })
            })
            .collect::<Result<Vec<_>, JwtConfigError>>()?;
        if locations.is_empty() {
            locations = vec![
                Location::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".into() },
                Location::Param("access_token".into()),
            ];
        }
        Ok(Rule {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            inline,
            uri: (!r.jwks_uri.is_empty()).then(|| r.jwks_uri.clone()),
            locations,
            output: r
                .output_claim_to_headers
                .iter()
                .map(|o| Ok((header(&o.header)?, o.claim.clone())))
                .collect::<Result<_, JwtConfigError>>()?,
            forward: r.forward_original_token,
        })
    }
}

/// The result for one request.
#[derive(Debug)]
pub enum Verdict {
    /// No token anywhere: no request principal.
    Anonymous,
    Valid {
        principal: String,
        claims: serde_json::Value,
    },
    Invalid(String),
}

type Fetched = HashMap<String, (Instant, Arc<JwkSet>)>;

/// Key sets fetched from `jwksUri`, shared by every service's rules. Requests never wait for a
/// refresh: a stale key set is served while one background task fetches the next (an outage
/// keeps the last good keys). Only a key set never fetched is waited for, once, with a deadline;
/// a failure is remembered for [`FETCH_BACKOFF`] so an outage does not queue every request.
pub struct KeySets {
    /// Each URI's last good key set and when it was fetched.
    fetched: Arc<RwLock<Fetched>>,
    /// URIs with a background refresh in flight (one each).
    refreshing: Arc<Mutex<HashSet<String>>>,
    /// URIs whose first fetch failed, until when requests fail fast.
    failed: RwLock<HashMap<String, Instant>>,
    /// First fetches, one at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Roots for `https://` key set URIs (the system's by default).
    tls: Arc<rustls::ClientConfig>,
}

impl Default for KeySets {
    fn default() -> Self {
        KeySets::with_tls(crate::fetch::system_tls())
    }
}

impl KeySets {
    pub fn with_tls(tls: Arc<rustls::ClientConfig>) -> Self {
        KeySets {
            fetched: Arc::default(),
            refreshing: Arc::default(),
            failed: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            tls,
        }
    }

    fn cached(&self, uri: &str) -> Option<(Instant, Arc<JwkSet>)> {
        self.fetched.read().unwrap_or_else(|p| p.into_inner()).get(uri).cloned()
    }

    fn failed_recently(&self, uri: &str) -> bool {
        self.failed.read().unwrap_or_else(|p| p.into_inner()).get(uri).is_some_and(|until| Instant::now() < *until)
    }

    async fn get(&self, uri: &str) -> Result<Arc<JwkSet>, String> {
        if let Some((at, set)) = self.cached(uri) {
            if at.elapsed() >= JWKS_REFRESH {
                self.refresh_in_background(uri);
            }
            return Ok(set);
        }
        let recent_failure = || Err(format!("fetching {uri} failed recently; retrying after {FETCH_BACKOFF:?}"));
        if self.failed_recently(uri) {
            return recent_failure();
        }
        let _one = self.fetching.lock().await;
        if let Some((_, set)) = self.cached(uri) {
            return Ok(set);
        }
        if self.failed_recently(uri) {
            return recent_failure();
        }
        match tokio::time::timeout(FIRST_FETCH_WAIT, fetch(uri, &self.tls))
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
        {
            Ok(set) => {
                let set = Arc::new(set);
                self.fetched
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uri.to_owned(), (Instant::now(), set.clone()));
                self.failed.write().unwrap_or_else(|p| p.into_inner()).remove(uri);
                Ok(set)
            }
            Err(e) => {
                self.failed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uri.to_owned(), Instant::now() + FETCH_BACKOFF);
                Err(format!("fetching {uri}: {e}"))
            }
        }
    }

    /// Fetches `uri` again on a task of its own; a failure keeps the keys and retries after
    /// [`FETCH_BACKOFF`].
    fn refresh_in_background(&self, uri: &str) {
        if !self.refreshing.lock().unwrap_or_else(|p| p.into_inner()).insert(uri.to_owned()) {
            return;
        }
        let (fetched, refreshing, tls, uri) =
            (self.fetched.clone(), self.refreshing.clone(), self.tls.clone(), uri.to_owned());
        tokio::spawn(async move {
            let result = tokio::time::timeout(FIRST_FETCH_WAIT, fetch(&uri, &tls))
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            let mut map = fetched.write().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(set) => {
                    map.insert(uri.clone(), (Instant::now(), Arc::new(set)));
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %e, "JWKS refresh failed; keeping the previous keys");
                    // Stale again after the back-off, which triggers the next try.
                    let retry_from =
                        Instant::now().checked_sub(JWKS_REFRESH - FETCH_BACKOFF).unwrap_or_else(Instant::now);
                    if let Some(entry) = map.get_mut(&uri) {
                        entry.0 = retry_from;
                    }
                }
            }
            drop(map);
            refreshing.lock().unwrap_or_else(|p| p.into_inner()).remove(&uri);
        });
    }
}

/// One GET of a key set, over HTTP or HTTPS.
async fn fetch(uri: &str, tls: &Arc<rustls::ClientConfig>) -> Result<JwkSet, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let (status, body) = crate::fetch::request(http::Method::GET, &parsed, None, bytes::Bytes::new(), tls).await?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
}

fn find_token(rules: &[Rule], headers: &http::HeaderMap, query: Option<&str>) -> Option<(String, Location)> {
    for rule in rules {
        for loc in &rule.locations {
            match loc {
                Location::Header { name, prefix } => {
                    if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                        let token = if prefix.is_empty() {
                            Some(v)
                        } else {
                            v.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &v[prefix.len()..])
                        };
                        if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
                            return Some((t.to_owned(), loc.clone()));
                        }
                    }
                }
                Location::Param(p) => {
                    let value =
                        query.unwrap_or("").split('&').find_map(|kv| kv.strip_prefix(p.as_str())?.strip_prefix('='));
                    if let Some(t) = value.filter(|t| !t.is_empty()) {
                        return Some((t.to_owned(), loc.clone()));
                    }
                }
            }
        }
    }
    None
}

fn verify(token: &str, rule: &Rule, keys: &JwkSet) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err("no key for the token's kid".into());
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.set_issuer(&[&rule.issuer]);
    if rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rule.audiences);
    }
    validation.leeway = 60;
    let mut last = String::new();
    for jwk in candidates {
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => k,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Authenticates a request against `rules` (the service's), updating its headers on success.
/// Every `outputClaimToHeaders` header the client wrote is removed first, whatever the verdict:
/// only a verified claim may fill one (a backend trusts them).
pub async fn authenticate(rules: &[Rule], keys: &KeySets, parts: &mut http::request::Parts) -> Verdict {
    for (header, _) in rules.iter().flat_map(|r| &r.output) {
        parts.headers.remove(header);
    }
    let Some((token, location)) = find_token(rules, &parts.headers, parts.uri.query()) else {
        return Verdict::Anonymous;
    };
    let issuer = match jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token) {
        Ok(data) => data.claims.get("iss").and_then(|v| v.as_str()).map(str::to_owned),
        Err(e) => return Verdict::Invalid(format!("malformed token: {e}")),
    };
    let Some(rule) = rules.iter().find(|r| Some(&r.issuer) == issuer.as_ref()) else {
        return Verdict::Invalid("Jwt issuer is not configured".into());
    };
    let keys = match (&rule.inline, &rule.uri) {
        (Some(set), _) => Ok(set.clone()),
        (None, Some(uri)) => keys.get(uri).await,
        (None, None) => Err("no keys".into()),
    };
    let claims = match keys.and_then(|k| verify(&token, rule, &k)) {
        Ok(c) => c,
        Err(e) => return Verdict::Invalid(e),
    };
    for (header, claim) in &rule.output {
        let value = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Some(v.to_string()),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            parts.headers.insert(header.clone(), v);
        }
    }
    if !rule.forward {
        if let Location::Header { name, .. } = &location {
            parts.headers.remove(name);
        }
    }
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
    Verdict::Valid { principal: format!("{}/{sub}", rule.issuer), claims }
}

#[cfg(test)]
mod tests;
