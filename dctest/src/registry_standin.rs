//! An in-process OCI distribution registry stand-in, written from the distribution spec, for
//! what Debian's `docker-registry` cannot do: spec pagination of `tags/list` (`n`, `last`,
//! `Link`), bearer-token auth (anonymous and with basic credentials for private repositories),
//! rate limiting (429 with `Retry-After`), latency, and broken answers.
//!
//! Repository names contain slashes, so every request goes through one fallback handler that
//! parses the path itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::json;

use crate::http_server::{bind_loopback, json_response, respond, ServerThread};
use crate::token_auth::{basic_challenge, basic_credentials, pulled_repositories, Basic};
use crate::util::{lock, parse_query, query_value, sha256_digest};
use crate::Result;

/// The `service` of the token challenge.
pub const SERVICE: &str = "standin";
/// Media type of the manifests served.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// How clients must authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// Everything is served without credentials.
    #[default]
    None,
    /// Every `/v2/` request needs a bearer token, which `/token` gives to anyone.
    AnonymousToken,
    /// Like [`Auth::AnonymousToken`], but tokens for the `private_repos` are only issued to
    /// requests carrying these basic credentials.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// Repositories that need credentials.
        private_repos: BTreeSet<String>,
    },
}

impl Auth {
    /// [`Auth::Basic`] from string slices.
    pub fn basic<I, S>(user: &str, password: &str, private_repos: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
            private_repos: private_repos.into_iter().map(Into::into).collect(),
        }
    }
}

/// A broken behaviour of one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `tags/list` answers 200 with an HTML page.
    Html,
    /// `tags/list` answers 200 with truncated JSON.
    InvalidJson,
    /// Every endpoint of the repository answers 404 `NAME_UNKNOWN`.
    NotFound,
    /// `tags/list` answers `{"name": ..., "tags": null}`.
    NullTags,
    /// Every endpoint of the repository answers 503.
    ServerError503Always,
}

/// Configuration of a [`RegistryStandIn`]; build it with the methods or set the fields.
#[derive(Debug, Clone, Default)]
pub struct RegistryStandInConfig {
    /// Repository name → tags, served in this order when no pagination applies.
    pub repos: BTreeMap<String, Vec<String>>,
    /// Authentication mode.
    pub auth: Auth,
    /// Sleep added to every request.
    pub latency: Duration,
    /// How many requests to each path (without query; `/v2/` and `/token` included) are
    /// answered 429 before the path is served.
    pub fail_first_with_429: u32,
    /// The `Retry-After` value (seconds) of the 429 answers.
    pub retry_after_secs: u64,
    /// Broken repositories.
    pub faults: BTreeMap<String, Fault>,
    /// Page size of `tags/list` when the request has no `n`; `None` = everything in one page in
    /// the configured order.
    pub default_page_size: Option<usize>,
}

impl RegistryStandInConfig {
    /// An empty configuration: no repositories, no auth, no latency, no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a repository with its tags (served in the given order).
    #[must_use]
    pub fn repo<I, S>(mut self, name: &str, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.repos
            .insert(name.to_owned(), tags.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the authentication mode.
    #[must_use]
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the latency added to every request.
    #[must_use]
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Answers the first `count` requests to each path with 429.
    #[must_use]
    pub fn fail_first_with_429(mut self, count: u32) -> Self {
        self.fail_first_with_429 = count;
        self
    }

    /// Sets the `Retry-After` seconds of 429 answers (default 0).
    #[must_use]
    pub fn retry_after_secs(mut self, seconds: u64) -> Self {
        self.retry_after_secs = seconds;
        self
    }

    /// Makes `repo` misbehave.
    #[must_use]
    pub fn fault(mut self, repo: &str, fault: Fault) -> Self {
        self.faults.insert(repo.to_owned(), fault);
        self
    }

    /// Sets the page size used when a `tags/list` request has no `n`.
    #[must_use]
    pub fn default_page_size(mut self, size: Option<usize>) -> Self {
        self.default_page_size = size;
        self
    }
}

/// A running stand-in; stopped when dropped.
#[derive(Debug)]
pub struct RegistryStandIn {
    // Dropped first: stops the server before the state goes.
    _server: ServerThread,
    shared: Arc<Shared>,
}

impl RegistryStandIn {
    /// Starts the stand-in on a free 127.0.0.1 port.
    pub fn start(config: RegistryStandInConfig) -> Result<Self> {
        let (listener, addr) = bind_loopback("registry-standin")?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            repos: Mutex::new(config.repos.clone()),
            config,
            requests: AtomicU64::new(0),
            per_path: Mutex::new(BTreeMap::new()),
            throttled: Mutex::new(BTreeMap::new()),
            throttled_total: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            tokens: Mutex::new(BTreeMap::new()),
            tokens_issued: AtomicU64::new(0),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("registry-standin", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.shared
            .base_url
            .trim_start_matches("http://")
            .to_owned()
    }

    /// Replaces (or adds) the tags of a repository while running.
    pub fn set_tags<I, S>(&self, name: &str, tags: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        lock(&self.shared.repos)
            .insert(name.to_owned(), tags.into_iter().map(Into::into).collect());
    }

    /// Total number of requests received.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Number of requests whose path starts with `path_prefix`.
    pub fn requests_for(&self, path_prefix: &str) -> u64 {
        lock(&self.shared.per_path)
            .iter()
            .filter(|(path, _)| path.starts_with(path_prefix))
            .map(|(_, count)| count)
            .sum()
    }

    /// Number of 429 answers sent.
    pub fn throttled(&self) -> u64 {
        self.shared.throttled_total.load(Ordering::SeqCst)
    }

    /// Number of tokens issued by `/token`.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued.load(Ordering::SeqCst)
    }

    /// Highest number of requests handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The manifest served for `name:tag` (deterministic).
    pub fn manifest_for(name: &str, tag: &str) -> Vec<u8> {
        let config = format!("{{\"dctest\":\"{name}:{tag}\"}}");
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_digest(config.as_bytes()),
                "size": config.len(),
            },
            "layers": [],
        })
        .to_string()
        .into_bytes()
    }

    /// The `Docker-Content-Digest` served for `name:tag`: `sha256:<hex>` of
    /// [`RegistryStandIn::manifest_for`].
    pub fn manifest_digest_for(name: &str, tag: &str) -> String {
        sha256_digest(&Self::manifest_for(name, tag))
    }
}

/// What a token allows.
#[derive(Debug, Clone)]
struct Grant {
    repos: BTreeSet<String>,
    authenticated: bool,
}

#[derive(Debug)]
struct Shared {
    base_url: String,
    config: RegistryStandInConfig,
    repos: Mutex<BTreeMap<String, Vec<String>>>,
    requests: AtomicU64,
    per_path: Mutex<BTreeMap<String, u64>>,
    throttled: Mutex<BTreeMap<String, u32>>,
    throttled_total: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    tokens: Mutex<BTreeMap<String, Grant>>,
    tokens_issued: AtomicU64,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let path = request.uri().path().to_owned();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    *lock(&shared.per_path).entry(path.clone()).or_default() += 1;
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let mut response = match shared.throttle(&path) {
        Some(response) => response,
        None => shared.route(
            request.method(),
            &path,
            request.uri().query(),
            request.headers(),
        ),
    };
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// An error answer in the distribution spec's format.
fn oci_error(status: StatusCode, code: &str, message: &str, detail: serde_json::Value) -> Response {
    json_response(
        status,
        &json!({ "errors": [{ "code": code, "message": message, "detail": detail }] }),
    )
}

fn name_unknown(name: &str) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "repository name not known to registry",
        json!({ "name": name }),
    )
}

fn unsupported() -> Response {
    oci_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "The operation is unsupported.",
        json!(null),
    )
}

impl Shared {
    /// Answers 429 while the path has not had its share of them.
    fn throttle(&self, path: &str) -> Option<Response> {
        if self.config.fail_first_with_429 == 0 {
            return None;
        }
        let mut throttled = lock(&self.throttled);
        let count = throttled.entry(path.to_owned()).or_default();
        if *count >= self.config.fail_first_with_429 {
            return None;
        }
        *count += 1;
        self.throttled_total.fetch_add(1, Ordering::SeqCst);
        let mut response = oci_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "too many requests",
            json!(null),
        );
        if let Ok(value) = HeaderValue::from_str(&self.config.retry_after_secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        Some(response)
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Response {
        let query = parse_query(query);
        let readable = method == Method::GET || method == Method::HEAD;
        if path == "/token" {
            return if readable {
                self.token(&query, headers)
            } else {
                unsupported()
            };
        }
        if path == "/v2/" || path == "/v2" {
            if !readable {
                return unsupported();
            }
            if let Some(denied) = self.authorize(None, headers) {
                return denied;
            }
            return json_response(StatusCode::OK, &json!({}));
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", json!(path));
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            if !readable {
                return unsupported();
            }
            if let Some(denied) = self.authorize(Some(name), headers) {
                return denied;
            }
            return self.tags_list(name, &query);
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            if !readable {
                return unsupported();
            }
            if let Some(denied) = self.authorize(Some(name), headers) {
                return denied;
            }
            return self.manifest(name, reference);
        }
        oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", json!(path))
    }

    fn challenge(&self, repo: Option<&str>) -> Response {
        let mut value = format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\"",
            self.base_url
        );
        if let Some(repo) = repo {
            value.push_str(&format!(",scope=\"repository:{repo}:pull\""));
        }
        let detail = match repo {
            Some(repo) => json!([{ "Type": "repository", "Name": repo, "Action": "pull" }]),
            None => json!(null),
        };
        let mut response = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
            detail,
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    fn is_private(&self, repo: &str) -> bool {
        match &self.config.auth {
            Auth::Basic { private_repos, .. } => private_repos.contains(repo),
            Auth::None | Auth::AnonymousToken => false,
        }
    }

    /// `None` when the request may go on, otherwise the 401 answer.
    fn authorize(&self, repo: Option<&str>, headers: &HeaderMap) -> Option<Response> {
        if self.config.auth == Auth::None {
            return None;
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned());
        let grant = token.and_then(|t| lock(&self.tokens).get(&t).cloned());
        let allowed = match (grant, repo) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(grant), Some(repo)) => {
                grant.repos.contains(repo) && (grant.authenticated || !self.is_private(repo))
            }
        };
        if allowed {
            None
        } else {
            Some(self.challenge(repo))
        }
    }

    /// `GET /token?service=..&scope=repository:<name>:pull`.
    fn token(&self, query: &[(String, String)], headers: &HeaderMap) -> Response {
        let repos = pulled_repositories(query);
        let mut authenticated = false;
        if let Auth::Basic { user, password, .. } = &self.config.auth {
            match basic_credentials(headers, user, password) {
                Basic::Invalid => return basic_challenge("invalid credentials"),
                Basic::Valid => authenticated = true,
                Basic::Missing => {}
            }
            if !authenticated && repos.iter().any(|r| self.is_private(r)) {
                return basic_challenge("credentials required for a private repository");
            }
        }
        let serial = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!(
            "dctest.{serial}.{}",
            &sha256_digest(format!("{}#{serial}", self.base_url).as_bytes())[7..39]
        );
        lock(&self.tokens).insert(
            token.clone(),
            Grant {
                repos,
                authenticated,
            },
        );
        json_response(
            StatusCode::OK,
            &json!({ "token": token, "access_token": token, "expires_in": 300 }),
        )
    }

    fn tags_list(&self, name: &str, query: &[(String, String)]) -> Response {
        match self.config.faults.get(name) {
            Some(Fault::Html) => {
                return respond(
                    StatusCode::OK,
                    vec![(header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned())],
                    "<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>",
                )
            }
            Some(Fault::InvalidJson) => {
                return respond(
                    StatusCode::OK,
                    vec![(header::CONTENT_TYPE, "application/json".to_owned())],
                    format!("{{\"name\":\"{name}\",\"tags\":[\"1.0.0\","),
                )
            }
            Some(Fault::NullTags) => {
                return json_response(StatusCode::OK, &json!({ "name": name, "tags": null }))
            }
            Some(Fault::NotFound) => return name_unknown(name),
            Some(Fault::ServerError503Always) => return unavailable(),
            None => {}
        }
        let Some(tags) = lock(&self.repos).get(name).cloned() else {
            return name_unknown(name);
        };
        let n = match query_value(query, "n") {
            None => None,
            Some(value) => match value.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return oci_error(
                        StatusCode::BAD_REQUEST,
                        "PAGINATION_NUMBER_INVALID",
                        "invalid number of results requested",
                        json!({ "n": value }),
                    )
                }
            },
        };
        let last = query_value(query, "last");
        let page_size = n.or(self.config.default_page_size);
        let (page, next) = paginate(tags, page_size, last);
        let mut headers = vec![(header::CONTENT_TYPE, "application/json".to_owned())];
        if let (Some(size), Some(next)) = (page_size, next) {
            headers.push((
                header::LINK,
                format!("</v2/{name}/tags/list?n={size}&last={next}>; rel=\"next\""),
            ));
        }
        respond(
            StatusCode::OK,
            headers,
            json!({ "name": name, "tags": page }).to_string(),
        )
    }

    fn manifest(&self, name: &str, reference: &str) -> Response {
        match self.config.faults.get(name) {
            Some(Fault::NotFound) => return name_unknown(name),
            Some(Fault::ServerError503Always) => return unavailable(),
            Some(Fault::Html | Fault::InvalidJson | Fault::NullTags) | None => {}
        }
        let Some(tags) = lock(&self.repos).get(name).cloned() else {
            return name_unknown(name);
        };
        let tag = if reference.starts_with("sha256:") {
            tags.into_iter()
                .find(|t| RegistryStandIn::manifest_digest_for(name, t) == reference)
        } else {
            tags.into_iter().find(|t| t == reference)
        };
        let Some(tag) = tag else {
            return oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
                json!({ "name": name, "reference": reference }),
            );
        };
        let body = RegistryStandIn::manifest_for(name, &tag);
        let digest = sha256_digest(&body);
        // For HEAD, hyper sends the headers (with Content-Length) and leaves out the body.
        respond(
            StatusCode::OK,
            vec![
                (header::CONTENT_TYPE, OCI_MANIFEST.to_owned()),
                (
                    HeaderName::from_static("docker-content-digest"),
                    digest.clone(),
                ),
                (header::ETAG, format!("\"{digest}\"")),
            ],
            body,
        )
    }
}

fn unavailable() -> Response {
    oci_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "service unavailable",
        json!(null),
    )
}

/// Applies the spec's pagination; returns the page and the tag to continue after, if any.
///
/// Without a page size and without `last`, the tags come in the configured order; otherwise
/// in lexical order.
fn paginate(
    tags: Vec<String>,
    page_size: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<String>) {
    if page_size.is_none() && last.is_none() {
        return (tags, None);
    }
    let mut sorted = tags;
    sorted.sort();
    sorted.dedup();
    let after: Vec<String> = sorted
        .into_iter()
        .filter(|t| last.is_none_or(|last| t.as_str() > last))
        .collect();
    let Some(size) = page_size else {
        return (after, None);
    };
    let more = after.len() > size;
    let page: Vec<String> = after.into_iter().take(size).collect();
    let next = if more { page.last().cloned() } else { None };
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn pagination_follows_the_spec() {
        let all = tags(&["c", "a", "d", "b", "e"]);
        assert_eq!(paginate(all.clone(), None, None), (all.clone(), None));
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (tags(&["a", "b"]), Some("b".to_owned()))
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (tags(&["c", "d"]), Some("d".to_owned()))
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("d")),
            (tags(&["e"]), None)
        );
        assert_eq!(
            paginate(all.clone(), Some(5), None),
            (tags(&["a", "b", "c", "d", "e"]), None)
        );
        assert_eq!(paginate(all.clone(), Some(0), None), (Vec::new(), None));
        assert_eq!(paginate(all, None, Some("c")), (tags(&["d", "e"]), None));
    }

    #[test]
    fn manifest_digests_are_deterministic_and_distinct() {
        let a = RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1");
        assert_eq!(
            a,
            RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1")
        );
        assert_ne!(
            a,
            RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.2")
        );
        assert_ne!(
            a,
            RegistryStandIn::manifest_digest_for("cybozu/etc", "d3.5.15.1")
        );
        assert!(a.starts_with("sha256:") && a.len() == 71);
    }
}
