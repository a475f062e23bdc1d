//! Container images through the OCI distribution API: tag lists (with `Link` pagination) and
//! manifest digests, anonymous or with credentials, answering bearer-token challenges.

use fetch::http::{next_link, require_success, Fetched, Http, HttpError};
use fetch::{sha256_digest, Secret};
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

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

    /// Every tag of the repository, following `Link: <…>; rel="next"`.
    pub async fn list_tags(&mut self) -> Result<Vec<String>, RegistryError> {
        let mut url = self.url("tags/list")?;
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .get(Method::GET, url.clone(), "application/json")
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
        let url = self.url(&format!("manifests/{tag}"))?;
        let head = self.get(Method::HEAD, url.clone(), MANIFEST_ACCEPT).await?;
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
                    self.get(Method::GET, url.clone(), MANIFEST_ACCEPT).await?,
                )?;
                sha256_digest(&got.body)
            }
        };
        artifacts::check_digest(&digest).map_err(|_| RegistryError::BadDigest {
            url: url.to_string(),
            digest: digest.clone(),
        })?;
        Ok(digest)
    }

    /// A request with the current authorization; on a 401 challenge, earn a token (or use
    /// basic credentials) and send it once more.
    async fn get(
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
        let request = request.build().map_err(|e| HttpError::Transport {
            method: "build".into(),
            url: self.base.to_string(),
            message: e.to_string(),
        })?;
        Ok(self.http.fetch(request).await?)
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
}
