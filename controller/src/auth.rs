//! Caller authentication for the xDS and CA services: a bearer token becomes a caller identity
//! (and, for node proxies, the node they run on).
//!
//! Locally the operator provides a token file; in Kubernetes the API server reviews
//! service-account tokens (`TokenReview`, see `source::kube`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ambit_shared::Identity;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    /// The node the caller runs on, when known (node proxies).
    pub node: Option<String>,
    /// The caller's pod (namespace is the identity's), when the token names it.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token in the authorization header")]
    NoToken,
    #[error("token not recognised")]
    UnknownToken,
    #[error("token review failed: {0}")]
    Review(String),
    /// The reviewer answered, and the answer is no (not authenticated, wrong audience).
    #[error("token refused: {0}")]
    Refused(String),
    #[error("authenticated user {0:?} is not a service account")]
    NotServiceAccount(String),
}

#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError>;
}

/// Extracts and checks the bearer token of a gRPC request.
pub async fn authenticate(auth: &dyn Authenticator, metadata: &MetadataMap) -> Result<Caller, Status> {
    let token = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(Status::unauthenticated(AuthError::NoToken.to_string()));
    };
    auth.authenticate(token).await.map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Tokens from an operator-provided YAML file:
///
/// ```yaml
/// tokens:
///   - token: 3f1c…            # a long random secret
///     identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel
///     node: node-1            # for node proxies
/// ```
#[derive(Debug, Default)]
pub struct TokenFile {
    tokens: HashMap<String, Caller>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileDoc {
    tokens: Vec<TokenEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    identity: String,
    #[serde(default)]
    node: Option<String>,
}

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: p.clone(), source })?;
        Self::parse(&p, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, TokenFileError> {
        let invalid = |reason: String| TokenFileError::Invalid { path: path.to_owned(), reason };
        let doc: TokenFileDoc = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut tokens = HashMap::new();
        for (i, e) in doc.tokens.into_iter().enumerate() {
            if e.token.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!("tokens[{i}].token is shorter than {MIN_TOKEN_LEN} characters")));
            }
            let identity: Identity =
                e.identity.parse().map_err(|err| invalid(format!("tokens[{i}].identity: {err}")))?;
            let caller = Caller { identity, node: e.node, pod: None };
            if tokens.insert(e.token, caller).is_some() {
                return Err(invalid(format!("tokens[{i}].token is listed twice")));
            }
        }
        Ok(TokenFile { tokens })
    }
}

#[tonic::async_trait]
impl Authenticator for TokenFile {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        // Compare against every entry without early exit on the first differing byte.
        let mut found = None;
        for (t, caller) in &self.tokens {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(caller.clone());
            }
        }
        found.ok_or(AuthError::UnknownToken)
    }
}

/// A token file re-read when it changes (new workloads get tokens while the controller runs);
/// an invalid new version is logged and the previous one kept.
pub struct ReloadingTokenFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<(Option<std::time::SystemTime>, Arc<TokenFile>)>,
}

impl ReloadingTokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let file = TokenFile::load(path)?;
        Ok(ReloadingTokenFile { path: path.to_owned(), current: std::sync::Mutex::new((modified, Arc::new(file))) })
    }

    fn tokens(&self) -> Arc<TokenFile> {
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if modified.is_some() && modified != current.0 {
            match TokenFile::load(&self.path) {
                Ok(file) => {
                    tracing::info!(path = %self.path.display(), "token file reloaded");
                    *current = (modified, Arc::new(file));
                }
                Err(e) => {
                    tracing::error!(error = %e, "token file changed but is invalid; keeping the previous tokens");
                    current.0 = modified;
                }
            }
        }
        current.1.clone()
    }
}

#[tonic::async_trait]
impl Authenticator for ReloadingTokenFile {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let tokens = self.tokens();
        tokens.authenticate(token).await
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `system:serviceaccount:<ns>:<sa>` → (ns, sa).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    rest.split_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_authenticates_known_tokens_only() {
        let f = TokenFile::parse(
            "t.yaml",
            "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  identity: spiffe://cluster.local/ns/ambit-system/sa/ztunnel\n  node: node-1\n",
        )
        .unwrap();
        let c = f.authenticate("aaaaaaaaaaaaaaaaaaaa").await.unwrap();
        assert_eq!(c.identity.to_string(), "spiffe://cluster.local/ns/ambit-system/sa/ztunnel");
        assert_eq!(c.node.as_deref(), Some("node-1"));
        assert_eq!(f.authenticate("bbbbbbbbbbbbbbbbbbbb").await, Err(AuthError::UnknownToken));
    }

    #[tokio::test]
    async fn token_file_changes_are_picked_up_and_bad_versions_ignored() {
        let path = std::env::temp_dir().join(format!("ambit-tokens-{}.yaml", std::process::id()));
        let entry = |t: &str| format!("- token: {t}\n  identity: spiffe://cluster.local/ns/shop/sa/waypoint\n");
        std::fs::write(&path, format!("tokens:\n{}", entry("aaaaaaaaaaaaaaaaaaaa"))).unwrap();
        let f = ReloadingTokenFile::load(&path).unwrap();
        assert!(f.authenticate("aaaaaaaaaaaaaaaaaaaa").await.is_ok());
        assert_eq!(f.authenticate("bbbbbbbbbbbbbbbbbbbb").await, Err(AuthError::UnknownToken));
        // mtime granularity: make sure the rewrite is seen as a change.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::write(&path, format!("tokens:\n{}{}", entry("aaaaaaaaaaaaaaaaaaaa"), entry("bbbbbbbbbbbbbbbbbbbb")))
            .unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert!(f.authenticate("bbbbbbbbbbbbbbbbbbbb").await.is_ok(), "new token accepted without restart");
        std::fs::write(&path, "tokens: [oops").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert!(f.authenticate("bbbbbbbbbbbbbbbbbbbb").await.is_ok(), "an invalid file keeps the previous tokens");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_token_files_are_refused_with_the_field() {
        let short =
            TokenFile::parse("t.yaml", "tokens:\n- token: short\n  identity: spiffe://cluster.local/ns/a/sa/b\n");
        assert!(short.unwrap_err().to_string().contains("tokens[0].token"));
        let bad_id =
            TokenFile::parse("t.yaml", "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  identity: cluster.local/ns/a\n");
        assert!(bad_id.unwrap_err().to_string().contains("tokens[0].identity"));
        let unknown = TokenFile::parse(
            "t.yaml",
            "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  identity: spiffe://cluster.local/ns/a/sa/b\n  nod: x\n",
        );
        assert!(unknown.unwrap_err().to_string().contains("nod"));
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(service_account_of("system:serviceaccount:ambit-system:ztunnel"), Some(("ambit-system", "ztunnel")));
        assert_eq!(service_account_of("kubernetes-admin"), None);
    }
}

/// How long a reviewed token's caller is remembered. Short, so a deleted service account or
/// pod stops being served within a minute, yet a reconnect storm after a controller restart
/// costs one review per token, not one per stream.
pub const REVIEW_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Deadline of one review (an API server that hangs must not hold a CA call forever).
pub const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Reviews in flight at once; more callers wait their turn (within the deadline).
const REVIEWS_IN_FLIGHT: usize = 32;
/// Remembered acceptances at most; beyond it, expired entries are dropped, then nothing new is
/// kept.
const REVIEW_CACHE_ENTRIES: usize = 16_384;
/// Remembered refusals at most, apart from the acceptances: a flood of junk tokens can fill
/// this, never push out the callers that were accepted.
const REFUSAL_CACHE_ENTRIES: usize = 1_024;
/// How long a definitive refusal is remembered: a client retrying a bad token in a loop costs
/// one review per interval. Short, so a token that was only early (not yet propagated) passes
/// soon after.
pub const REVIEW_REFUSAL_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// A remembered answer and until when it holds.
type Remembered = (std::time::Instant, Result<Caller, AuthError>);

/// Wraps an authenticator that asks someone else (the API server's TokenReview). Answers are
/// remembered under the token's SHA-256 (the token itself is not kept): an acceptance for
/// [`REVIEW_CACHE_TTL`], never past the token's own `exp`; a definitive refusal for
/// [`REVIEW_REFUSAL_TTL`]. A review that failed to happen (API server unreachable, timeout) is
/// not remembered. Reviews run at most [`REVIEWS_IN_FLIGHT`] at a time, each within
/// [`REVIEW_TIMEOUT`].
pub struct CachedReviews<A> {
    inner: A,
    cache: Mutex<HashMap<[u8; 32], Remembered>>,
    refusals: Mutex<HashMap<[u8; 32], Remembered>>,
    in_flight: tokio::sync::Semaphore,
    ttl: std::time::Duration,
    timeout: std::time::Duration,
}

impl<A: Authenticator> CachedReviews<A> {
    pub fn new(inner: A) -> Self {
        Self::with_times(inner, REVIEW_CACHE_TTL, REVIEW_TIMEOUT)
    }

    /// With another cache lifetime and review deadline.
    pub fn with_times(inner: A, ttl: std::time::Duration, timeout: std::time::Duration) -> Self {
        let in_flight = tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT);
        CachedReviews { inner, cache: Mutex::default(), refusals: Mutex::default(), in_flight, ttl, timeout }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Caller, AuthError>> {
        let now = std::time::Instant::now();
        let live = |map: &Mutex<HashMap<[u8; 32], Remembered>>| {
            let map = map.lock().unwrap_or_else(|p| p.into_inner());
            map.get(key).filter(|(until, _)| now < *until).map(|(_, answer)| answer.clone())
        };
        live(&self.cache).or_else(|| live(&self.refusals))
    }

    fn remember(&self, key: [u8; 32], token: &str, answer: &Result<Caller, AuthError>) {
        let now = std::time::Instant::now();
        let (map, lifetime, limit) = match answer {
            Ok(_) => {
                (&self.cache, token_lifetime(token).map_or(self.ttl, |left| left.min(self.ttl)), REVIEW_CACHE_ENTRIES)
            }
            Err(AuthError::Refused(_) | AuthError::UnknownToken | AuthError::NotServiceAccount(_)) => {
                (&self.refusals, REVIEW_REFUSAL_TTL.min(self.ttl), REFUSAL_CACHE_ENTRIES)
            }
            Err(_) => return,
        };
        if lifetime.is_zero() {
            return;
        }
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= limit {
            map.retain(|_, (until, _)| now < *until);
        }
        if map.len() < limit {
            map.insert(key, (now + lifetime, answer.clone()));
        }
    }
}

#[tonic::async_trait]
impl<A: Authenticator> Authenticator for CachedReviews<A> {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let review = async {
            let _turn = self.in_flight.acquire().await.map_err(|_| AuthError::Review("shutting down".into()))?;
            if let Some(answer) = self.cached(&key) {
                return answer;
            }
            let answer = self.inner.authenticate(token).await;
            self.remember(key, token, &answer);
            answer
        };
        tokio::time::timeout(self.timeout, review)
            .await
            .map_err(|_| AuthError::Review(format!("no answer within {:?}", self.timeout)))?
    }
}

/// Time left before a JWT's `exp` (read, not verified: it only shortens how long an answer the
/// reviewer gave is remembered). `None` when the token carries no readable `exp`.
fn token_lifetime(token: &str) -> Option<std::time::Duration> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&json).ok()?.get("exp")?.as_u64()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(std::time::Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod cache_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts reviews; accepts "good", rejects anything else, hangs on "slow".
    struct Counting(Arc<AtomicUsize>);

    #[tonic::async_trait]
    impl Authenticator for Counting {
        async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            match token {
                "good" => Ok(Caller {
                    identity: Identity::new("cluster.local", "shop", "web").expect("identity"),
                    node: None,
                    pod: None,
                }),
                "slow" => std::future::pending().await,
                "unreachable" => Err(AuthError::Review("connection refused".into())),
                _ => Err(AuthError::UnknownToken),
            }
        }
    }

    #[tokio::test]
    async fn answers_are_cached_failed_reviews_are_not() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let auth = CachedReviews::new(Counting(reviews.clone()));
        for _ in 0..5 {
            let caller = auth.authenticate("good").await.expect("accepted");
            assert_eq!(caller.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "one review for five calls");
        for _ in 0..3 {
            assert_eq!(auth.authenticate("bad").await, Err(AuthError::UnknownToken));
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 2, "a refusal is remembered too");
        for _ in 0..3 {
            assert!(matches!(auth.authenticate("unreachable").await, Err(AuthError::Review(_))));
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 5, "a review that failed to happen is asked again");
    }

    #[test]
    fn a_token_is_not_trusted_past_its_expiry() {
        use base64::Engine;
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token = |exp: u64| {
            format!("{}.{}.sig", encode(serde_json::json!({"alg": "RS256"})), encode(serde_json::json!({"exp": exp})))
        };
        let left = token_lifetime(&token(now + 30)).expect("exp read");
        assert!(left <= std::time::Duration::from_secs(30) && left >= std::time::Duration::from_secs(28), "{left:?}");
        assert_eq!(token_lifetime(&token(now - 10)), Some(std::time::Duration::ZERO));
        assert_eq!(token_lifetime("opaque-bootstrap-token"), None);
    }

    #[tokio::test]
    async fn entries_expire() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let auth = CachedReviews::with_times(Counting(reviews.clone()), std::time::Duration::ZERO, REVIEW_TIMEOUT);
        auth.authenticate("good").await.expect("accepted");
        auth.authenticate("good").await.expect("accepted");
        assert_eq!(reviews.load(Ordering::SeqCst), 2, "an expired entry is reviewed again");
    }

    #[tokio::test]
    async fn a_hanging_review_ends_at_its_deadline() {
        let counting = Counting(Arc::new(AtomicUsize::new(0)));
        let auth = CachedReviews::with_times(counting, REVIEW_CACHE_TTL, std::time::Duration::from_millis(50));
        let err = auth.authenticate("slow").await.expect_err("times out");
        assert!(matches!(err, AuthError::Review(ref m) if m.contains("no answer")), "{err}");
    }
}
