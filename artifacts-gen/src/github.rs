//! Debian packages from GitHub releases: list releases (all pages), and the sha256 of an asset
//! (GitHub's `digest` field, or download and hash).

use crate::http::{next_link, require_success, Http, HttpError};
use crate::Secret;
use reqwest::header::ACCEPT;
use reqwest::Url;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    pub tag_name: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Asset {
    pub name: String,
    /// The API URL of the asset; with `Accept: application/octet-stream` it serves the bytes.
    pub url: String,
    /// `sha256:<hex>`, present on assets uploaded since GitHub started computing it.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: bad URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: pagination does not end (more than {pages} pages)")]
    EndlessPages { url: String, pages: usize },
    #[error("asset {name}: GitHub's digest {digest:?} is not sha256:<64 hex>")]
    BadDigest { name: String, digest: String },
}

const MAX_PAGES: usize = 1_000;

/// A client of GitHub's REST API (or a stand-in with the same paths).
pub struct GitHub<'a> {
    http: &'a Http,
    api: Url,
    token: Option<&'a Secret>,
}

impl<'a> GitHub<'a> {
    pub fn new(http: &'a Http, api: Url, token: Option<&'a Secret>) -> Self {
        Self { http, api, token }
    }

    fn request(&self, url: Url, accept: &str) -> Result<reqwest::Request, GitHubError> {
        let mut request = self
            .http
            .client()
            .get(url.clone())
            .header(ACCEPT, accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(token) = self.token {
            request = request.bearer_auth(token.expose());
        }
        request.build().map_err(|e| GitHubError::BadUrl {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// Every release of `owner/name`, all pages, in the API's order.
    pub async fn releases(&self, repo: &str) -> Result<Vec<Release>, GitHubError> {
        let path = format!("repos/{repo}/releases?per_page=100");
        let mut url = self.api.join(&path).map_err(|e| GitHubError::BadUrl {
            url: format!("{}{path}", self.api),
            message: e.to_string(),
        })?;
        let mut releases = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .http
                .fetch(self.request(url.clone(), "application/vnd.github+json")?)
                .await?;
            let page = require_success("GET", page)?;
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

    /// The sha256 of an asset: GitHub's `digest` when present, else the hash of its bytes.
    pub async fn asset_sha256(&self, asset: &Asset) -> Result<String, GitHubError> {
        if let Some(digest) = &asset.digest {
            return artifacts::check_digest(digest)
                .map(|()| digest.clone())
                .map_err(|_| GitHubError::BadDigest {
                    name: asset.name.clone(),
                    digest: digest.clone(),
                });
        }
        let url = Url::parse(&asset.url).map_err(|e| GitHubError::BadUrl {
            url: asset.url.clone(),
            message: e.to_string(),
        })?;
        // reqwest follows the redirect to the storage host and drops `Authorization` when
        // the host changes.
        let got = self
            .http
            .fetch(self.request(url, "application/octet-stream")?)
            .await?;
        let got = require_success("GET", got)?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&got.body))))
    }
}
