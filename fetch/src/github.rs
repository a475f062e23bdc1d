//! A client of GitHub's REST API for releases: every release (all `Link` pages), the latest
//! release, a release by tag or id, the bytes of an asset and its sha256; and, for publishing,
//! creating and editing a release, uploading an asset and deleting one.
//!
//! Rate limits: a 403 or 429 that GitHub marks as a rate limit is
//! [`GitHubError::RateLimited`], with the time it resets when GitHub says; the caller decides
//! when to try again. A 429 is first retried by [`Http`] (waiting `Retry-After`, capped), so a
//! short limit never reaches the caller.
//!
//! Errors name the URL that was requested (not where a download was redirected to); the token
//! is only ever sent in the `Authorization` header, which reqwest marks sensitive and drops on
//! a redirect to another host.

use crate::http::{next_link, parse_retry_after, require_success, Fetched, Http, HttpError};
use crate::{is_sha256_digest, sha256_digest, Secret};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// A release. Fields GitHub always sends but older answers, mirrors or stand-ins may lack are
/// `#[serde(default)]` (zero or empty).
#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    #[serde(default)]
    pub id: u64,
    pub tag_name: String,
    /// The title; GitHub sends `null` when none was given.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    /// The release's web page.
    #[serde(default)]
    pub html_url: String,
    /// Where assets are uploaded, as a URI template:
    /// `https://uploads.github.com/repos/<o>/<r>/releases/<id>/assets{?name,label}`.
    #[serde(default)]
    pub upload_url: String,
    /// The description; GitHub sends `null` when none was given.
    #[serde(default)]
    pub body: Option<String>,
    /// RFC 3339; `None` for a draft.
    #[serde(default)]
    pub published_at: Option<String>,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

/// A release to create with [`GitHub::create_release`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewRelease {
    pub tag_name: String,
    /// The commit (or branch) the tag is created at when it does not exist yet; GitHub's
    /// default branch when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_commitish: Option<String>,
    pub name: String,
    pub body: String,
    pub draft: bool,
    pub prerelease: bool,
}

/// The fields of a release to change with [`GitHub::edit_release`]; `None` leaves a field as
/// it is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReleaseEdit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prerelease: Option<bool>,
}

/// An asset of a [`Release`].
#[derive(Debug, Clone, Deserialize)]
pub struct Asset {
    #[serde(default)]
    pub id: u64,
    pub name: String,
    /// The API URL of the asset; with `Accept: application/octet-stream` it serves the bytes.
    pub url: String,
    /// The public download URL (works without a token for public repositories only).
    #[serde(default)]
    pub browser_download_url: String,
    /// Size in bytes (0 when not given).
    #[serde(default)]
    pub size: u64,
    /// `uploaded` once complete; anything else (`starter`, `open`) is an interrupted upload.
    #[serde(default)]
    pub state: String,
    /// `sha256:<hex>`, present on assets uploaded since GitHub started computing it.
    #[serde(default)]
    pub digest: Option<String>,
}

impl Asset {
    /// Whether the upload completed, so the asset can be downloaded.
    pub fn is_uploaded(&self) -> bool {
        self.state == "uploaded"
    }

    /// Whether the name can be used as a file name in a directory, or as one path segment
    /// of a URL: not empty, not `.` or `..`, without `/`, `\\` or NUL. Names come from the
    /// release's publisher: check this before joining one onto a path.
    pub fn has_safe_name(&self) -> bool {
        is_safe_file_name(&self.name)
    }
}

/// See [`Asset::has_safe_name`].
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: bad URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: pagination does not end (more than {pages} pages)")]
    EndlessPages { url: String, pages: usize },
    /// GitHub refused for a rate limit; `reset` is when to try again (unix seconds), when
    /// GitHub said.
    #[error("{url}: GitHub API rate limit exceeded; {}", reset_text(*.reset))]
    RateLimited { url: String, reset: Option<u64> },
    #[error("asset {name} ({url}): GitHub's digest {digest:?} is not sha256:<64 hex>")]
    BadDigest {
        name: String,
        url: String,
        digest: String,
    },
    #[error("{url}: downloaded {got} bytes, but the asset has {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{url}: the downloaded bytes have digest {got}, but GitHub says {expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        got: String,
    },
}

fn reset_text(reset: Option<u64>) -> String {
    let Some(reset) = reset else {
        return "GitHub gave no reset time".to_owned();
    };
    let when = i64::try_from(reset)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match when {
        Some(when) => format!("it resets at {when}"),
        None => format!("it resets at unix time {reset}"),
    }
}

const MAX_PAGES: usize = 1_000;
const JSON: &str = "application/vnd.github+json";
const OCTET_STREAM: &str = "application/octet-stream";

/// A client of GitHub's REST API (or a stand-in with the same paths).
#[derive(Debug, Clone)]
pub struct GitHub<'a> {
    http: &'a Http,
    api: Url,
    token: Option<&'a Secret>,
}

impl<'a> GitHub<'a> {
    /// `api`: the REST API base, `https://api.github.com/` (a GitHub Enterprise `…/api/v3/`
    /// or a stand-in work too). `token`: sent as `Authorization: Bearer`.
    pub fn new(http: &'a Http, api: Url, token: Option<&'a Secret>) -> Self {
        Self { http, api, token }
    }

    /// `<api>/repos/<owner>/<name>/<tail…>`, each segment percent-encoded.
    fn endpoint(&self, repo: &str, tail: &[&str]) -> Result<Url, GitHubError> {
        let bad = |message: &str| GitHubError::BadUrl {
            url: format!("{}repos/{repo}/{}", self.api, tail.join("/")),
            message: message.to_owned(),
        };
        let (owner, name) = repo
            .split_once('/')
            .filter(|(owner, name)| !owner.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| bad("the repository must be owner/name"))?;
        let mut url = self.api.clone();
        url.path_segments_mut()
            .map_err(|()| bad("the API URL cannot be a base"))?
            .pop_if_empty()
            .extend(["repos", owner, name])
            .extend(tail);
        Ok(url)
    }

    fn request(&self, url: Url, accept: &str) -> Result<reqwest::Request, GitHubError> {
        self.request_with(Method::GET, url, accept, None)
    }

    /// A request with the API's headers and the token; `body`: content type and bytes.
    fn request_with(
        &self,
        method: Method,
        url: Url,
        accept: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<reqwest::Request, GitHubError> {
        let mut request = self
            .http
            .client()
            .request(method, url.clone())
            .header(ACCEPT, accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = self.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some((content_type, bytes)) = body {
            request = request.header(CONTENT_TYPE, content_type).body(bytes);
        }
        request.build().map_err(|e| GitHubError::BadUrl {
            url: url.to_string(),
            message: e.without_url().to_string(),
        })
    }

    /// Sends a request that changes something and checks that it succeeded. Errors name the
    /// method and URL.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<(&str, Bytes)>,
    ) -> Result<Fetched, GitHubError> {
        let request = self.request_with(method.clone(), url.clone(), JSON, body)?;
        let mut got = self.http.fetch(request).await?;
        got.url = url.clone();
        check_method(method.as_str(), got)
    }

    /// Sends `value` as JSON and reads the answer's JSON.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &Url,
        value: &impl Serialize,
    ) -> Result<T, GitHubError> {
        let body = serde_json::to_vec(value).map_err(|e| GitHubError::BadUrl {
            url: url.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let got = self
            .send(method, url, Some(("application/json", Bytes::from(body))))
            .await?;
        Ok(got.json()?)
    }

    /// GETs `url` (following redirects); the answer is returned whatever its status.
    async fn get(&self, url: &Url, accept: &str) -> Result<Fetched, GitHubError> {
        let mut got = self.http.fetch(self.request(url.clone(), accept)?).await?;
        if !got.status.is_success() {
            // Name what was asked for, not a (possibly signed) redirect target.
            got.url = url.clone();
        }
        Ok(got)
    }

    /// Gets JSON from `url`; 404 is `None`.
    async fn get_optional(&self, url: &Url) -> Result<Option<Release>, GitHubError> {
        let got = self.get(url, JSON).await?;
        if got.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(check(got)?.json()?))
    }

    /// Every release of `owner/name`, all pages, in the API's order (newest first).
    pub async fn releases(&self, repo: &str) -> Result<Vec<Release>, GitHubError> {
        let mut url = self.endpoint(repo, &["releases"])?;
        url.set_query(Some("per_page=100"));
        let mut releases = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = check(self.get(&url, JSON).await?)?;
            releases.extend(page.json::<Vec<Release>>()?);
            match next_link(&page)? {
                Some(next) if next != url => url = next,
                _ => return Ok(releases),
            }
        }
        Err(GitHubError::EndlessPages {
            url: url.to_string(),
            pages: MAX_PAGES,
        })
    }

    /// The newest full release (neither draft nor pre-release) of `owner/name`; `None` when
    /// there is none (GitHub answers 404, as it does for a repository it does not show).
    pub async fn latest_release(&self, repo: &str) -> Result<Option<Release>, GitHubError> {
        let url = self.endpoint(repo, &["releases", "latest"])?;
        self.get_optional(&url).await
    }

    /// The published release tagged `tag`; `None` when there is none (GitHub answers 404).
    pub async fn release_by_tag(
        &self,
        repo: &str,
        tag: &str,
    ) -> Result<Option<Release>, GitHubError> {
        let url = self.endpoint(repo, &["releases", "tags", tag])?;
        self.get_optional(&url).await
    }

    /// A release by id, drafts included; `None` when there is none.
    pub async fn release(&self, repo: &str, id: u64) -> Result<Option<Release>, GitHubError> {
        let url = self.endpoint(repo, &["releases", &id.to_string()])?;
        self.get_optional(&url).await
    }

    /// Creates a release (`POST /repos/<o>/<r>/releases`); GitHub creates the tag at
    /// `target_commitish` when it does not exist.
    pub async fn create_release(
        &self,
        repo: &str,
        release: &NewRelease,
    ) -> Result<Release, GitHubError> {
        let url = self.endpoint(repo, &["releases"])?;
        self.send_json(Method::POST, &url, release).await
    }

    /// Changes a release (`PATCH /repos/<o>/<r>/releases/<id>`): publish a draft, set or clear
    /// the pre-release flag, rename.
    pub async fn edit_release(
        &self,
        repo: &str,
        id: u64,
        edit: &ReleaseEdit,
    ) -> Result<Release, GitHubError> {
        let url = self.endpoint(repo, &["releases", &id.to_string()])?;
        self.send_json(Method::PATCH, &url, edit).await
    }

    /// Deletes an asset (`DELETE /repos/<o>/<r>/releases/assets/<id>`), for example one left
    /// in state `starter` by an interrupted upload.
    pub async fn delete_asset(&self, repo: &str, asset_id: u64) -> Result<(), GitHubError> {
        let url = self.endpoint(repo, &["releases", "assets", &asset_id.to_string()])?;
        self.send(Method::DELETE, &url, None).await?;
        Ok(())
    }

    /// Uploads `bytes` as the asset `name` of `release`, to the release's `upload_url` (GitHub:
    /// `uploads.github.com`; without one, `<api>/repos/<o>/<r>/releases/<id>/assets`, as GitHub
    /// Enterprise and the stand-ins serve it). GitHub refuses a name that exists, also one left
    /// in state `starter` by an interrupted upload: delete that first.
    pub async fn upload_asset(
        &self,
        repo: &str,
        release: &Release,
        name: &str,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<Asset, GitHubError> {
        let mut url = self.upload_endpoint(repo, release)?;
        url.query_pairs_mut().clear().append_pair("name", name);
        let got = self
            .send(Method::POST, &url, Some((content_type, bytes)))
            .await?;
        Ok(got.json()?)
    }

    /// The upload URL of a release: its `upload_url` without the `{?name,label}` template.
    fn upload_endpoint(&self, repo: &str, release: &Release) -> Result<Url, GitHubError> {
        if release.upload_url.is_empty() {
            return self.endpoint(repo, &["releases", &release.id.to_string(), "assets"]);
        }
        let template = release.upload_url.as_str();
        let base = template.split_once('{').map_or(template, |(base, _)| base);
        let url = Url::parse(base).map_err(|e| GitHubError::BadUrl {
            url: template.to_owned(),
            message: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GitHubError::BadUrl {
                url: template.to_owned(),
                message: "the upload URL must be http(s)".to_owned(),
            });
        }
        Ok(url)
    }

    /// The bytes of an asset, from its API URL (reqwest follows the redirect to the storage
    /// host and drops `Authorization` when the host changes). Checked against the asset's
    /// `size` and, when GitHub gives one, its `digest`.
    pub async fn download_asset(&self, asset: &Asset) -> Result<Bytes, GitHubError> {
        let url = Url::parse(&asset.url).map_err(|e| GitHubError::BadUrl {
            url: asset.url.clone(),
            message: e.to_string(),
        })?;
        let got = check(self.get(&url, OCTET_STREAM).await?)?;
        let size = u64::try_from(got.body.len()).unwrap_or(u64::MAX);
        if asset.size != 0 && size != asset.size {
            return Err(GitHubError::SizeMismatch {
                url: url.to_string(),
                expected: asset.size,
                got: size,
            });
        }
        if let Some(expected) = &asset.digest {
            let digest = sha256_digest(&got.body);
            if &digest != expected {
                return Err(GitHubError::DigestMismatch {
                    url: url.to_string(),
                    expected: expected.clone(),
                    got: digest,
                });
            }
        }
        Ok(got.body)
    }

    /// [`GitHub::download_asset`] streamed into a temporary file in `dir` ([`Http::download`]:
    /// memory stays flat, only silence for `idle` ends it), with the same size and digest
    /// checks.
    pub async fn download_asset_to(
        &self,
        asset: &Asset,
        dir: &std::path::Path,
        idle: std::time::Duration,
    ) -> Result<crate::http::Downloaded, GitHubError> {
        let url = Url::parse(&asset.url).map_err(|e| GitHubError::BadUrl {
            url: asset.url.clone(),
            message: e.to_string(),
        })?;
        let got = self
            .http
            .download(self.request(url.clone(), OCTET_STREAM)?, dir, idle)
            .await?;
        if asset.size != 0 && got.len != asset.size {
            return Err(GitHubError::SizeMismatch {
                url: url.to_string(),
                expected: asset.size,
                got: got.len,
            });
        }
        if let Some(expected) = &asset.digest {
            if &got.digest != expected {
                return Err(GitHubError::DigestMismatch {
                    url: url.to_string(),
                    expected: expected.clone(),
                    got: got.digest.clone(),
                });
            }
        }
        Ok(got)
    }

    /// The sha256 of an asset (`sha256:<hex>`): GitHub's `digest` when present, else the hash
    /// of its bytes.
    pub async fn asset_sha256(&self, asset: &Asset) -> Result<String, GitHubError> {
        if let Some(digest) = &asset.digest {
            if !is_sha256_digest(digest) {
                return Err(GitHubError::BadDigest {
                    name: asset.name.clone(),
                    url: asset.url.clone(),
                    digest: digest.clone(),
                });
            }
            return Ok(digest.clone());
        }
        let bytes = self.download_asset(asset).await?;
        Ok(sha256_digest(&bytes))
    }
}

/// A success, or the error it is: [`GitHubError::RateLimited`] or an HTTP status error.
fn check(got: Fetched) -> Result<Fetched, GitHubError> {
    check_method("GET", got)
}

/// [`check`] for any method.
fn check_method(method: &str, got: Fetched) -> Result<Fetched, GitHubError> {
    if let Some(reset) = rate_limit(&got, unix_now()) {
        return Err(GitHubError::RateLimited {
            url: got.url.to_string(),
            reset,
        });
    }
    Ok(require_success(method, got)?)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `Some(reset)` when `got` is GitHub refusing for a rate limit (every 429; a 403 with
/// `x-ratelimit-remaining: 0`, a `Retry-After`, or a message about a rate limit). `reset`, in
/// unix seconds: `now + Retry-After` when given, else `x-ratelimit-reset` when the remaining
/// count is 0, as GitHub documents.
fn rate_limit(got: &Fetched, now: u64) -> Option<Option<u64>> {
    let exhausted = got
        .header("x-ratelimit-remaining")
        .is_some_and(|v| v.trim() == "0");
    let retry_after = got.header(RETRY_AFTER.as_str()).and_then(parse_retry_after);
    let limited = match got.status {
        StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::FORBIDDEN => {
            exhausted
                || retry_after.is_some()
                || String::from_utf8_lossy(&got.body)
                    .to_ascii_lowercase()
                    .contains("rate limit")
        }
        _ => false,
    };
    if !limited {
        return None;
    }
    let reset = match retry_after {
        Some(wait) => Some(now.saturating_add(wait.as_secs())),
        None if exhausted => got
            .header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<u64>().ok()),
        None => None,
    };
    Some(reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_could_leave_their_directory_are_unsafe() {
        for (name, safe) in [
            ("neco_2026.12.01-1_amd64.deb", true),
            ("..deb", true),
            ("", false),
            (".", false),
            ("..", false),
            ("../etc/passwd", false),
            ("a/b.deb", false),
            ("a\\b.deb", false),
            ("a\0.deb", false),
        ] {
            assert_eq!(is_safe_file_name(name), safe, "{name:?}");
        }
    }
    use reqwest::header::HeaderMap;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Fetched {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        Fetched {
            url: Url::parse("https://api.example/repos/o/r/releases").unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn rate_limits_are_recognised() {
        let now = 1_000;
        let primary = answer(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000000"),
            ],
            "",
        );
        assert_eq!(rate_limit(&primary, now), Some(Some(1_700_000_000)));
        let secondary = answer(403, &[("retry-after", "60")], "");
        assert_eq!(rate_limit(&secondary, now), Some(Some(1_060)));
        let by_message = answer(
            403,
            &[("x-ratelimit-remaining", "12"), ("x-ratelimit-reset", "5")],
            r#"{"message":"You have exceeded a secondary rate limit."}"#,
        );
        assert_eq!(rate_limit(&by_message, now), Some(None));
        assert_eq!(rate_limit(&answer(429, &[], ""), now), Some(None));
        // An ordinary permission error carries the rate headers too, with some left.
        let denied = answer(
            403,
            &[
                ("x-ratelimit-remaining", "4999"),
                ("x-ratelimit-reset", "5"),
            ],
            r#"{"message":"Resource not accessible by integration"}"#,
        );
        assert_eq!(rate_limit(&denied, now), None);
        assert_eq!(
            rate_limit(&answer(404, &[("retry-after", "1")], ""), now),
            None
        );
        assert_eq!(rate_limit(&answer(200, &[], "rate limit"), now), None);
    }

    #[test]
    fn rate_limit_messages_name_the_reset() {
        let e = GitHubError::RateLimited {
            url: "https://api.example/x".into(),
            reset: Some(1_700_000_000),
        };
        assert_eq!(
            e.to_string(),
            "https://api.example/x: GitHub API rate limit exceeded; it resets at 2023-11-14T22:13:20Z"
        );
        let e = GitHubError::RateLimited {
            url: "https://api.example/x".into(),
            reset: None,
        };
        assert!(e.to_string().ends_with("GitHub gave no reset time"), "{e}");
    }

    #[test]
    fn endpoints_are_built_by_segment() {
        let http = Http::new(1, crate::http::RetryPolicy::default()).unwrap();
        for api in ["https://ghe.example/api/v3/", "https://ghe.example/api/v3"] {
            let gh = GitHub::new(&http, Url::parse(api).unwrap(), None);
            assert_eq!(
                gh.endpoint("o/r", &["releases", "tags", "a/b c"])
                    .unwrap()
                    .as_str(),
                "https://ghe.example/api/v3/repos/o/r/releases/tags/a%2Fb%20c"
            );
        }
        let gh = GitHub::new(&http, Url::parse("https://api.example/").unwrap(), None);
        for bad in ["o", "/r", "o/", "o/r/x"] {
            let e = gh.endpoint(bad, &["releases"]).unwrap_err();
            assert!(matches!(e, GitHubError::BadUrl { .. }), "{bad}: {e}");
        }
    }
}
