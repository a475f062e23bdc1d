//! Container images through the OCI distribution API: tag lists (with `Link` pagination),
//! manifest digests, manifests and blobs, anonymous or with credentials, answering
//! bearer-token challenges.
//!
//! Everything fetched by content is verified: a manifest's digest is the sha256 of its bytes
//! (checked against `Docker-Content-Digest` and against the reference when that is a digest),
//! and a blob must hash to the digest it was asked for.

use crate::http::{next_link, require_success, Fetched, Http, HttpError};
use crate::{is_sha256_digest, sha256_digest, Secret};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Request, StatusCode, Url};
use serde::Deserialize;

/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of a Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of a Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest type a tag may point to; the digest recorded is that of what the registry
/// serves for these.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Registry credentials (for private repositories).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: the registry asks for credentials ({challenge}); this image is private: set NECO_REGISTRY_USERNAME and NECO_REGISTRY_PASSWORD")]
    NeedsCredentials { url: String, challenge: String },
    #[error("{url}: unsupported authentication challenge {challenge:?}")]
    BadChallenge { url: String, challenge: String },
    #[error("{url}: the token endpoint answered without a token")]
    NoToken { url: String },
    #[error("{url}: bad repository path {path:?}")]
    BadPath { url: String, path: String },
    #[error("{url}: pagination does not end (more than {pages} pages)")]
    EndlessPages { url: String, pages: usize },
    #[error("{url}: the registry answered digest {digest:?}, which is not sha256:<64 hex>")]
    BadDigest { url: String, digest: String },
    #[error("{reference:?} is neither a tag nor a sha256:<64 hex> digest")]
    BadReference { reference: String },
    #[error("{url}: the bytes received have digest {got}, but {expected} was expected ({what})")]
    DigestMismatch {
        url: String,
        /// What the content should hash to.
        expected: String,
        /// What it hashes to.
        got: String,
        /// Where `expected` came from.
        what: &'static str,
    },
    #[error("{url}: not a manifest: {message}")]
    BadManifest { url: String, message: String },
}

/// A manifest (or index) as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Its media type: the document's `mediaType`, else the `Content-Type` of the answer.
    pub media_type: String,
    /// The bytes exactly as served: they are what the digest is of.
    pub bytes: Bytes,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

#[derive(Debug, Deserialize)]
struct TagList {
    /// `null` (an empty repository on some registries) is an empty list.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// The one field of a manifest this module reads.
#[derive(Debug, Deserialize)]
struct MediaTypeField {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
}

/// A client for one repository of one registry. Keeps the token it earned.
pub struct RepoClient<'a> {
    http: &'a Http,
    /// Base URL of the registry API, e.g. `https://ghcr.io`.
    base: Url,
    /// Repository path, e.g. `cybozu/etcd`.
    path: String,
    credentials: Option<&'a Credentials>,
    authorization: Option<Authorization>,
}

impl std::fmt::Debug for RepoClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoClient")
            .field("base", &self.base.as_str())
            .field("path", &self.path)
            .field("credentials", &self.credentials.map(|c| &c.username))
            .finish_non_exhaustive()
    }
}

/// What the registry accepted.
enum Authorization {
    Basic,
    Bearer(Secret),
}

const MAX_PAGES: usize = 10_000;

impl<'a> RepoClient<'a> {
    pub fn new(
        http: &'a Http,
        base: Url,
        path: &str,
        credentials: Option<&'a Credentials>,
    ) -> Self {
        Self {
            http,
            base,
            path: path.to_owned(),
            credentials,
            authorization: None,
        }
    }

    fn url(&self, tail: &str) -> Result<Url, RegistryError> {
        let text = format!("/v2/{}/{tail}", self.path);
        self.base.join(&text).map_err(|_| RegistryError::BadPath {
            url: self.base.to_string(),
            path: text,
        })
    }

    /// `/v2/<path>/manifests/<reference>` once `reference` is checked to be a tag or a digest.
    fn manifest_url(&self, reference: &str) -> Result<Url, RegistryError> {
        if !is_tag(reference) && !is_sha256_digest(reference) {
            return Err(RegistryError::BadReference {
                reference: reference.to_owned(),
            });
        }
        self.url(&format!("manifests/{reference}"))
    }

    /// Every tag of the repository, following `Link: <…>; rel="next"`.
    pub async fn list_tags(&mut self) -> Result<Vec<String>, RegistryError> {
        let mut url = self.url("tags/list")?;
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .request(Method::GET, url.clone(), "application/json")
                .await?;
            let page = require_success("GET", page)?;
            let list: TagList = page.json()?;
            tags.extend(list.tags.unwrap_or_default());
            match next_link(&page)? {
                Some(next) if next != url => url = next,
                _ => return Ok(tags),
            }
        }
        Err(RegistryError::EndlessPages {
            url: url.to_string(),
            pages: MAX_PAGES,
        })
    }

    /// The digest of the manifest a tag points to: `Docker-Content-Digest` of a HEAD request,
    /// or the sha256 of the body of a GET when the registry does not say.
    pub async fn manifest_digest(&mut self, tag: &str) -> Result<String, RegistryError> {
        let url = self.manifest_url(tag)?;
        let head = self
            .request(Method::HEAD, url.clone(), MANIFEST_ACCEPT)
            .await?;
        let from_header = head
            .status
            .is_success()
            .then(|| head.header("docker-content-digest").map(str::to_owned))
            .flatten();
        let digest = match from_header {
            Some(d) => d,
            None => {
                let got = require_success(
                    "GET",
                    self.request(Method::GET, url.clone(), MANIFEST_ACCEPT)
                        .await?,
                )?;
                sha256_digest(&got.body)
            }
        };
        if !is_sha256_digest(&digest) {
            return Err(RegistryError::BadDigest {
                url: url.to_string(),
                digest,
            });
        }
        Ok(digest)
    }

    /// The manifest (or image index) `reference` (a tag or a `sha256:` digest) points to,
    /// asking for every type of [`MANIFEST_ACCEPT`]. Its digest is the sha256 of the bytes,
    /// which must equal `Docker-Content-Digest` when the registry sends one, and `reference`
    /// when that is a digest.
    pub async fn get_manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let url = self.manifest_url(reference)?;
        let got = require_success(
            "GET",
            self.request(Method::GET, url.clone(), MANIFEST_ACCEPT)
                .await?,
        )?;
        let digest = sha256_digest(&got.body);
        if let Some(answered) = got.header("docker-content-digest") {
            // Only a sha256 digest can be compared; other algorithms are not checked here.
            if answered.starts_with("sha256:") && answered != digest {
                return Err(RegistryError::DigestMismatch {
                    url: url.to_string(),
                    expected: answered.to_owned(),
                    got: digest,
                    what: "the registry's Docker-Content-Digest",
                });
            }
        }
        if is_sha256_digest(reference) && reference != digest {
            return Err(RegistryError::DigestMismatch {
                url: url.to_string(),
                expected: reference.to_owned(),
                got: digest,
                what: "the digest asked for",
            });
        }
        let media_type =
            manifest_media_type(&got).map_err(|message| RegistryError::BadManifest {
                url: url.to_string(),
                message,
            })?;
        Ok(Manifest {
            media_type,
            bytes: got.body,
            digest,
        })
    }

    /// The blob `digest` (`sha256:<hex>`), following redirects (to a storage host, say), and
    /// verified: its bytes must hash to `digest`.
    pub async fn get_blob(&mut self, digest: &str) -> Result<Bytes, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(RegistryError::BadReference {
                reference: digest.to_owned(),
            });
        }
        let url = self.url(&format!("blobs/{digest}"))?;
        let mut got = self
            .request(Method::GET, url.clone(), "application/octet-stream")
            .await?;
        if !got.status.is_success() {
            // Name the blob URL asked for, not a (possibly signed) redirect target.
            got.url = url.clone();
        }
        let got = require_success("GET", got)?;
        let actual = sha256_digest(&got.body);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                url: url.to_string(),
                expected: digest.to_owned(),
                got: actual,
                what: "the blob's digest",
            });
        }
        Ok(got.body)
    }

    /// [`RepoClient::get_blob`] streamed into a temporary file in `dir` ([`Http::download`]:
    /// memory stays flat, only `idle` silence ends an attempt), verified the same way. The
    /// authorization is earned first with a `HEAD` of the blob, which answers the challenge.
    pub async fn get_blob_to(
        &mut self,
        digest: &str,
        dir: &std::path::Path,
        idle: std::time::Duration,
    ) -> Result<crate::http::Downloaded, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(RegistryError::BadReference {
                reference: digest.to_owned(),
            });
        }
        let url = self.url(&format!("blobs/{digest}"))?;
        if self.authorization.is_none() {
            self.request(Method::HEAD, url.clone(), "application/octet-stream")
                .await?;
        }
        let request = self.build(Method::GET, url.clone(), "application/octet-stream")?;
        let got = self
            .http
            .download(request, dir, idle)
            .await
            .map_err(|e| match e {
                // Name the blob URL asked for, not a (possibly signed) redirect target.
                HttpError::Status {
                    method,
                    status,
                    detail,
                    ..
                } => HttpError::Status {
                    method,
                    url: url.to_string(),
                    status,
                    detail,
                },
                other => other,
            })?;
        if got.digest != digest {
            return Err(RegistryError::DigestMismatch {
                url: url.to_string(),
                expected: digest.to_owned(),
                got: got.digest,
                what: "the blob's digest",
            });
        }
        Ok(got)
    }

    /// A request with the current authorization; on a 401 challenge, earn a token (or use
    /// basic credentials) and send it once more.
    async fn request(
        &mut self,
        method: Method,
        url: Url,
        accept: &str,
    ) -> Result<Fetched, RegistryError> {
        let first = self.send(method.clone(), url.clone(), accept).await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let Some(challenge) = first.header(WWW_AUTHENTICATE.as_str()).map(str::to_owned) else {
            return Ok(first);
        };
        self.authorization = Some(self.authorize(&url, &challenge).await?);
        self.send(method, url, accept).await
    }

    async fn send(&self, method: Method, url: Url, accept: &str) -> Result<Fetched, RegistryError> {
        let request = self.build(method, url, accept)?;
        Ok(self.http.fetch(request).await?)
    }

    /// A request with the current authorization.
    fn build(&self, method: Method, url: Url, accept: &str) -> Result<Request, RegistryError> {
        let mut request = self
            .http
            .client()
            .request(method, url)
            .header(ACCEPT, accept);
        match (&self.authorization, self.credentials) {
            (Some(Authorization::Bearer(token)), _) => {
                request = request.bearer_auth(token.expose());
            }
            (Some(Authorization::Basic), Some(creds)) => {
                request = request.basic_auth(&creds.username, Some(creds.password.expose()));
            }
            _ => {}
        }
        Ok(request.build().map_err(|e| HttpError::Transport {
            method: "build".into(),
            url: self.base.to_string(),
            message: e.to_string(),
        })?)
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` header value.
    async fn authorize(&self, url: &Url, challenge: &str) -> Result<Authorization, RegistryError> {
        let parsed = Challenge::parse(challenge).ok_or_else(|| RegistryError::BadChallenge {
            url: url.to_string(),
            challenge: challenge.to_owned(),
        })?;
        match parsed.scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Err(RegistryError::NeedsCredentials {
                        url: url.to_string(),
                        challenge: challenge.to_owned(),
                    });
                }
                Ok(Authorization::Basic)
            }
            "bearer" => {
                let realm = parsed
                    .param("realm")
                    .ok_or_else(|| RegistryError::BadChallenge {
                        url: url.to_string(),
                        challenge: challenge.to_owned(),
                    })?;
                let mut token_url =
                    Url::parse(realm)
                        .or_else(|_| url.join(realm))
                        .map_err(|_| RegistryError::BadChallenge {
                            url: url.to_string(),
                            challenge: challenge.to_owned(),
                        })?;
                {
                    let mut q = token_url.query_pairs_mut();
                    if let Some(service) = parsed.param("service") {
                        q.append_pair("service", service);
                    }
                    let scope = parsed
                        .param("scope")
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("repository:{}:pull", self.path));
                    q.append_pair("scope", &scope);
                }
                let mut request = self.http.client().get(token_url.clone());
                if let Some(creds) = self.credentials {
                    request = request.basic_auth(&creds.username, Some(creds.password.expose()));
                }
                let request = request.build().map_err(|e| HttpError::Transport {
                    method: "build".into(),
                    url: realm.to_owned(),
                    message: e.to_string(),
                })?;
                let got = self.http.fetch(request).await?;
                if got.status == StatusCode::UNAUTHORIZED && self.credentials.is_none() {
                    return Err(RegistryError::NeedsCredentials {
                        url: url.to_string(),
                        challenge: challenge.to_owned(),
                    });
                }
                let got = require_success("GET", got)?;
                let body: TokenResponse = got.json()?;
                let token = body
                    .token
                    .or(body.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RegistryError::NoToken {
                        url: token_url.to_string(),
                    })?;
                Ok(Authorization::Bearer(Secret::new(token)))
            }
            _ => Err(RegistryError::BadChallenge {
                url: url.to_string(),
                challenge: challenge.to_owned(),
            }),
        }
    }
}

/// Whether `reference` is a tag by the distribution grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(reference: &str) -> bool {
    reference.len() <= 128
        && reference
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The media type of a manifest answer: the document's `mediaType` when it has one (it is
/// part of what the digest covers), else the `Content-Type` without parameters.
fn manifest_media_type(got: &Fetched) -> Result<String, String> {
    let field: MediaTypeField = serde_json::from_slice(&got.body)
        .map_err(|e| format!("the body is not a JSON object ({e})"))?;
    if let Some(media_type) = field.media_type.filter(|m| !m.is_empty()) {
        return Ok(media_type);
    }
    got.header(CONTENT_TYPE.as_str())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "neither a mediaType field nor a Content-Type header".to_owned())
}

/// A parsed `WWW-Authenticate` header: a scheme and `key="value"` parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        (_, c) => {
                            value.push(c);
                            escaped = false;
                        }
                    }
                }
            } else {
                value = chars.by_ref().take_while(|c| *c != ',').collect();
            }
            params.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Some(Self {
            scheme: scheme.to_owned(),
            params,
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let c = Challenge::parse(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:cybozu/etcd:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://ghcr.io/token"));
        assert_eq!(c.param("service"), Some("ghcr.io"));
        assert_eq!(c.param("scope"), Some("repository:cybozu/etcd:pull,push"));
        let basic = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(basic.scheme, "Basic");
        assert_eq!(basic.param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn references() {
        for tag in ["3.5.15.1", "latest", "_x", "1.0-rc.1", &"a".repeat(128)] {
            assert!(is_tag(tag), "{tag}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "../x",
            "a:b",
            "a b",
            &"a".repeat(129),
        ] {
            assert!(!is_tag(bad), "{bad}");
        }
    }

    fn answer(content_type: Option<&str>, body: &str) -> Fetched {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, content_type.parse().unwrap());
        }
        Fetched {
            url: Url::parse("https://r.example/v2/a/manifests/1").unwrap(),
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn media_types() {
        let with_field = answer(
            Some("application/json"),
            &format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#),
        );
        assert_eq!(manifest_media_type(&with_field).unwrap(), OCI_INDEX);
        let by_header = answer(
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            r#"{"schemaVersion":2}"#,
        );
        assert_eq!(manifest_media_type(&by_header).unwrap(), OCI_MANIFEST);
        assert!(manifest_media_type(&answer(None, r#"{"schemaVersion":2}"#)).is_err());
        assert!(manifest_media_type(&answer(Some(OCI_MANIFEST), "<html>")).is_err());
    }
}
