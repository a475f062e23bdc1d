//! A GitHub REST API stand-in for releases and release assets, written from GitHub's public REST
//! documentation. Tests add data at runtime through [`GitHubStandIn`]'s methods; clients see it
//! over HTTP on 127.0.0.1 or on the data center's private network ([`GitHubStandIn::start_on`]).
//!
//! Faults for tests of interrupted or corrupted uploads: [`GitHubStandIn::fail_next_upload`].
//!
//! Differences from GitHub kept on purpose: uploads go to the same host as the API, asset
//! downloads redirect to `/download/<id>/<name>` on the same host, drafts are listed to every
//! client, and timestamps are deterministic (2024-01-01T00:00:00Z plus one second per object
//! created).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http_server::{bind_loopback, bound_address, json_response, respond, ServerThread};
use crate::util::{lock, parse_query, percent_decode, percent_encode, query_value, sha256_digest};
use crate::{Error, Result};
use std::net::TcpListener;

/// Largest request body accepted (asset uploads).
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Default and largest `per_page` of list endpoints.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

/// A release added by a test with [`GitHubStandIn::add_release`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseSpec {
    /// Tag, e.g. `release-2024.01.01-1`.
    pub tag_name: String,
    /// Release title.
    pub name: String,
    /// Whether it is a draft.
    pub draft: bool,
    /// Whether it is a pre-release.
    pub prerelease: bool,
    /// RFC 3339 publication time; `None` = the creation time for a non-draft, null for a draft.
    pub published_at: Option<String>,
    /// Its assets, all in state `uploaded`.
    pub assets: Vec<AssetSpec>,
}

impl ReleaseSpec {
    /// A published full release named like its tag, without assets.
    pub fn new(tag_name: &str) -> Self {
        Self {
            tag_name: tag_name.to_owned(),
            name: tag_name.to_owned(),
            ..Self::default()
        }
    }

    /// Adds an asset.
    #[must_use]
    pub fn asset(mut self, asset: AssetSpec) -> Self {
        self.assets.push(asset);
        self
    }

    /// Marks it as a pre-release.
    #[must_use]
    pub fn prerelease(mut self, prerelease: bool) -> Self {
        self.prerelease = prerelease;
        self
    }

    /// Marks it as a draft.
    #[must_use]
    pub fn draft(mut self, draft: bool) -> Self {
        self.draft = draft;
        self
    }
}

/// An asset of a [`ReleaseSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssetSpec {
    /// File name.
    pub name: String,
    /// Its bytes.
    pub content: Vec<u8>,
    /// Whether the asset JSON carries `digest: "sha256:<hex>"` (GitHub only has it for assets
    /// uploaded since mid 2025).
    pub with_digest: bool,
}

impl AssetSpec {
    /// An asset.
    pub fn new(name: &str, content: impl Into<Vec<u8>>, with_digest: bool) -> Self {
        Self {
            name: name.to_owned(),
            content: content.into(),
            with_digest,
        }
    }
}

/// What an upload does instead of succeeding, set with [`GitHubStandIn::fail_next_upload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFault {
    /// The upload is cut off: the asset stays in state `starter` (as GitHub leaves it) and the
    /// answer is 502. Uploading the same name again is refused until the asset is deleted.
    Interrupt,
    /// The asset is stored, in state `uploaded`, with other bytes than were sent (the last byte
    /// changed), as a transfer corrupted on the way would leave it.
    Corrupt,
}

/// One request received, as recorded by the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, without query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Whether the request had an `Authorization` header.
    pub has_authorization: bool,
}

/// A release as the stand-in holds it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseView {
    /// Release id.
    pub id: u64,
    /// Tag.
    pub tag_name: String,
    /// Title.
    pub name: String,
    /// Body text.
    pub body: String,
    /// Draft flag.
    pub draft: bool,
    /// Pre-release flag.
    pub prerelease: bool,
    /// Publication time.
    pub published_at: Option<String>,
    /// Assets in upload order.
    pub assets: Vec<AssetView>,
}

/// An asset as the stand-in holds it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetView {
    /// Asset id.
    pub id: u64,
    /// File name.
    pub name: String,
    /// `uploaded` or `starter`.
    pub state: String,
    /// Content type.
    pub content_type: String,
    /// Size in bytes.
    pub size: usize,
    /// `sha256:<hex>` of the content.
    pub sha256: String,
}

/// A running GitHub stand-in; stopped when dropped.
#[derive(Debug)]
pub struct GitHubStandIn {
    _server: ServerThread,
    shared: Arc<Shared>,
}

impl GitHubStandIn {
    /// Starts the stand-in on a free 127.0.0.1 port. With `required_token`, every API request
    /// must carry `Authorization: Bearer <token>` (or `token <token>`); downloads do not.
    pub fn start(required_token: Option<String>) -> Result<Self> {
        Self::start_on(bind_loopback("github-standin")?.0, required_token)
    }

    /// Like [`Self::start`], serving on `listener` (for example one in the namespace of the
    /// data center's network, [`crate::Lan::bind`]); URLs it hands out name its address.
    pub fn start_on(listener: TcpListener, required_token: Option<String>) -> Result<Self> {
        let addr = bound_address("github-standin", &listener)?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            required_token,
            data: Mutex::new(Data::default()),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("github-standin", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
        })
    }

    /// `http://ADDRESS:PORT` of its listener (GitHub's `https://api.github.com`).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `ADDRESS:PORT` of its listener.
    pub fn host(&self) -> String {
        self.shared
            .base_url
            .trim_start_matches("http://")
            .to_owned()
    }

    /// Makes the repository `owner/repo` exist, without releases.
    pub fn add_repo(&self, owner_repo: &str) {
        lock(&self.shared.data)
            .repos
            .entry(repo_key(owner_repo))
            .or_default();
    }

    /// Adds a release (creating the repository if needed) and returns its id.
    pub fn add_release(&self, owner_repo: &str, spec: ReleaseSpec) -> u64 {
        let mut data = lock(&self.shared.data);
        let id = data.next_id();
        let created_at = timestamp(id);
        let published_at = match spec.published_at {
            Some(at) => Some(at),
            None if spec.draft => None,
            None => Some(created_at.clone()),
        };
        let mut release = Release {
            id,
            tag_name: spec.tag_name,
            target_commitish: "main".to_owned(),
            name: spec.name,
            body: String::new(),
            draft: spec.draft,
            prerelease: spec.prerelease,
            created_at,
            published_at,
            assets: Vec::new(),
        };
        for asset in spec.assets {
            let asset_id = data.next_id();
            release.assets.push(Asset::new(
                asset_id,
                asset.name,
                None,
                asset.content,
                AssetState::Uploaded,
                asset.with_digest,
            ));
        }
        data.repos
            .entry(repo_key(owner_repo))
            .or_default()
            .push(release);
        id
    }

    /// Replaces the release of `spec`'s tag (any release with that tag is removed) with
    /// `spec`; returns the new release's id.
    pub fn replace_release(&self, owner_repo: &str, spec: ReleaseSpec) -> u64 {
        if let Some(releases) = lock(&self.shared.data).repos.get_mut(&repo_key(owner_repo)) {
            releases.retain(|r| r.tag_name != spec.tag_name);
        }
        self.add_release(owner_repo, spec)
    }

    /// Adds an asset in state `starter` (an interrupted upload) to a release; returns its id.
    pub fn add_starter_asset(&self, owner_repo: &str, release_id: u64, name: &str) -> Result<u64> {
        let mut data = lock(&self.shared.data);
        let asset_id = data.next_id();
        let release = data
            .release_mut(&repo_key(owner_repo), release_id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{owner_repo} has no release {release_id}"))
            })?;
        release.assets.push(Asset::new(
            asset_id,
            name.to_owned(),
            None,
            Vec::new(),
            AssetState::Starter,
            false,
        ));
        Ok(asset_id)
    }

    /// Sets the pre-release flag of a release, as a person un-ticking "pre-release" would.
    pub fn set_prerelease(
        &self,
        owner_repo: &str,
        release_id: u64,
        prerelease: bool,
    ) -> Result<()> {
        let mut data = lock(&self.shared.data);
        let release = data
            .release_mut(&repo_key(owner_repo), release_id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{owner_repo} has no release {release_id}"))
            })?;
        release.prerelease = prerelease;
        Ok(())
    }

    /// The releases of a repository in creation order (empty if it does not exist).
    pub fn releases(&self, owner_repo: &str) -> Vec<ReleaseView> {
        lock(&self.shared.data)
            .repos
            .get(&repo_key(owner_repo))
            .map(|releases| releases.iter().map(Release::view).collect())
            .unwrap_or_default()
    }

    /// The bytes of an asset.
    pub fn asset_content(&self, asset_id: u64) -> Option<Vec<u8>> {
        lock(&self.shared.data)
            .find_asset(asset_id)
            .map(|(_, _, asset)| asset.content.clone())
    }

    /// Makes the next upload (to any release) fail with `fault`; several calls queue faults
    /// for the uploads that follow.
    pub fn fail_next_upload(&self, fault: UploadFault) {
        lock(&self.shared.data).upload_faults.push(fault);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.data).log.clone()
    }
}

#[derive(Debug)]
struct Shared {
    base_url: String,
    required_token: Option<String>,
    data: Mutex<Data>,
}

#[derive(Debug, Default)]
struct Data {
    /// Lower-cased `owner/repo` → releases in creation order.
    repos: BTreeMap<String, Vec<Release>>,
    last_id: u64,
    log: Vec<RequestRecord>,
    /// Faults for the next uploads, first one first.
    upload_faults: Vec<UploadFault>,
}

#[derive(Debug, Clone)]
struct Release {
    id: u64,
    tag_name: String,
    target_commitish: String,
    name: String,
    body: String,
    draft: bool,
    prerelease: bool,
    created_at: String,
    published_at: Option<String>,
    assets: Vec<Asset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssetState {
    Uploaded,
    Starter,
}

impl AssetState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Starter => "starter",
        }
    }
}

#[derive(Debug, Clone)]
struct Asset {
    id: u64,
    name: String,
    label: Option<String>,
    content_type: String,
    state: AssetState,
    content: Vec<u8>,
    with_digest: bool,
    created_at: String,
}

impl Asset {
    fn new(
        id: u64,
        name: String,
        content_type: Option<String>,
        content: Vec<u8>,
        state: AssetState,
        with_digest: bool,
    ) -> Self {
        let content_type = content_type.unwrap_or_else(|| {
            if name.ends_with(".deb") {
                "application/vnd.debian.binary-package".to_owned()
            } else {
                "application/octet-stream".to_owned()
            }
        });
        Self {
            id,
            name,
            label: None,
            content_type,
            state,
            content,
            with_digest,
            created_at: timestamp(id),
        }
    }

    fn json(&self, base_url: &str, repo: &str) -> Value {
        let mut value = json!({
            "url": format!("{base_url}/repos/{repo}/releases/assets/{}", self.id),
            "browser_download_url": download_url(base_url, self.id, &self.name),
            "id": self.id,
            "node_id": format!("RA_dctest{}", self.id),
            "name": self.name,
            "label": self.label,
            "state": self.state.as_str(),
            "content_type": self.content_type,
            "size": self.content.len(),
            "download_count": 0,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "uploader": uploader(),
        });
        if self.with_digest {
            value["digest"] = json!(sha256_digest(&self.content));
        }
        value
    }

    fn view(&self) -> AssetView {
        AssetView {
            id: self.id,
            name: self.name.clone(),
            state: self.state.as_str().to_owned(),
            content_type: self.content_type.clone(),
            size: self.content.len(),
            sha256: sha256_digest(&self.content),
        }
    }
}

impl Release {
    fn json(&self, base_url: &str, repo: &str) -> Value {
        let api = format!("{base_url}/repos/{repo}/releases/{}", self.id);
        json!({
            "url": api,
            "html_url": format!("{base_url}/{repo}/releases/tag/{}", self.tag_name),
            "assets_url": format!("{api}/assets"),
            "upload_url": format!("{api}/assets{{?name,label}}"),
            "tarball_url": format!("{base_url}/repos/{repo}/tarball/{}", self.tag_name),
            "zipball_url": format!("{base_url}/repos/{repo}/zipball/{}", self.tag_name),
            "id": self.id,
            "node_id": format!("RE_dctest{}", self.id),
            "tag_name": self.tag_name,
            "target_commitish": self.target_commitish,
            "name": self.name,
            "body": self.body,
            "draft": self.draft,
            "prerelease": self.prerelease,
            "created_at": self.created_at,
            "published_at": self.published_at,
            "author": uploader(),
            "assets": self.assets.iter().map(|a| a.json(base_url, repo)).collect::<Vec<_>>(),
        })
    }

    fn view(&self) -> ReleaseView {
        ReleaseView {
            id: self.id,
            tag_name: self.tag_name.clone(),
            name: self.name.clone(),
            body: self.body.clone(),
            draft: self.draft,
            prerelease: self.prerelease,
            published_at: self.published_at.clone(),
            assets: self.assets.iter().map(Asset::view).collect(),
        }
    }
}

impl Data {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn release_mut(&mut self, repo: &str, id: u64) -> Option<&mut Release> {
        self.repos.get_mut(repo)?.iter_mut().find(|r| r.id == id)
    }

    /// Finds an asset anywhere: (repository, release id, asset).
    fn find_asset(&self, asset_id: u64) -> Option<(&str, u64, &Asset)> {
        self.repos.iter().find_map(|(repo, releases)| {
            releases.iter().find_map(|release| {
                release
                    .assets
                    .iter()
                    .find(|a| a.id == asset_id)
                    .map(|a| (repo.as_str(), release.id, a))
            })
        })
    }
}

fn repo_key(owner_repo: &str) -> String {
    owner_repo.trim_matches('/').to_ascii_lowercase()
}

fn uploader() -> Value {
    json!({ "login": "dctest", "id": 1, "type": "User" })
}

fn download_url(base_url: &str, id: u64, name: &str) -> String {
    format!("{base_url}/download/{id}/{}", percent_encode(name))
}

/// `2024-01-01T00:00:00Z` plus `serial` seconds, in RFC 3339.
fn timestamp(serial: u64) -> String {
    let seconds = i64::try_from(serial).unwrap_or(i64::MAX / 2);
    let at = time::macros::datetime!(2024-01-01 0:00 UTC)
        .checked_add(time::Duration::seconds(seconds))
        .unwrap_or(time::macros::datetime!(2024-01-01 0:00 UTC));
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2024-01-01T00:00:00Z".to_owned())
}

fn message(status: StatusCode, text: &str) -> Response {
    json_response(
        status,
        &json!({ "message": text, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string() }),
    )
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not Found")
}

fn validation_failed(resource: &str, code: &str, field: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "message": "Validation Failed",
            "errors": [{ "resource": resource, "code": code, "field": field }],
            "documentation_url": "https://docs.github.com/rest",
            "status": "422",
        }),
    )
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    lock(&shared.data).log.push(RequestRecord {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        has_authorization: parts.headers.contains_key(header::AUTHORIZATION),
    });
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    if !path.starts_with("/download/") {
        if let Some(denied) = shared.authorize(&parts.headers) {
            return denied;
        }
    }
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = parse_query(parts.uri.query());
    let request = Req {
        headers: &parts.headers,
        query: &query,
        body: &body,
    };
    shared.route(parts.method.as_str(), &segments, &request)
}

/// The parts of a request the routes use.
struct Req<'a> {
    headers: &'a HeaderMap,
    query: &'a [(String, String)],
    body: &'a Bytes,
}

#[derive(Debug, Deserialize)]
struct CreateRelease {
    tag_name: Option<String>,
    target_commitish: Option<String>,
    name: Option<String>,
    body: Option<String>,
    draft: Option<bool>,
    prerelease: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct EditRelease {
    tag_name: Option<String>,
    target_commitish: Option<String>,
    name: Option<String>,
    body: Option<String>,
    draft: Option<bool>,
    prerelease: Option<bool>,
}

impl Shared {
    fn authorize(&self, headers: &HeaderMap) -> Option<Response> {
        let required = self.required_token.as_deref()?;
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Some(message(StatusCode::UNAUTHORIZED, "Requires authentication"));
        };
        let ok = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, token)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                    && token.trim() == required
            });
        if ok {
            None
        } else {
            Some(message(StatusCode::UNAUTHORIZED, "Bad credentials"))
        }
    }

    fn route(&self, method: &str, segments: &[&str], req: &Req<'_>) -> Response {
        match (method, segments) {
            ("GET", ["repos", owner, repo, "releases"]) => self.list(owner, repo, req),
            ("POST", ["repos", owner, repo, "releases"]) => self.create(owner, repo, req),
            ("GET", ["repos", owner, repo, "releases", "latest"]) => self.latest(owner, repo),
            ("GET", ["repos", owner, repo, "releases", "tags", tag]) => {
                self.by_tag(owner, repo, tag)
            }
            ("GET", ["repos", owner, repo, "releases", "assets", id]) => {
                self.asset(owner, repo, id, req)
            }
            ("DELETE", ["repos", owner, repo, "releases", "assets", id]) => {
                self.delete_asset(owner, repo, id)
            }
            ("GET", ["repos", owner, repo, "releases", id]) => self.by_id(owner, repo, id),
            ("PATCH", ["repos", owner, repo, "releases", id]) => self.edit(owner, repo, id, req),
            ("DELETE", ["repos", owner, repo, "releases", id]) => {
                self.delete_release(owner, repo, id)
            }
            ("GET", ["repos", owner, repo, "releases", id, "assets"]) => {
                self.list_assets(owner, repo, id)
            }
            ("POST", ["repos", owner, repo, "releases", id, "assets"]) => {
                self.upload(owner, repo, id, req)
            }
            ("GET" | "HEAD", ["download", id, _name]) => self.download(id),
            _ => not_found(),
        }
    }

    fn list(&self, owner: &str, repo: &str, req: &Req<'_>) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let data = lock(&self.data);
        let Some(releases) = data.repos.get(&key) else {
            return not_found();
        };
        let per_page = query_value(req.query, "per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_PER_PAGE)
            .min(MAX_PER_PAGE);
        let page = query_value(req.query, "page")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(1);
        let last_page = releases.len().div_ceil(per_page).max(1);
        let items: Vec<Value> = releases
            .iter()
            .rev()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|r| r.json(&self.base_url, &key))
            .collect();
        let link_to = |n: usize, rel: &str| {
            format!(
                "<{}/repos/{key}/releases?per_page={per_page}&page={n}>; rel=\"{rel}\"",
                self.base_url
            )
        };
        let mut links = Vec::new();
        if page > 1 {
            links.push(link_to(page - 1, "prev"));
        }
        if page < last_page {
            links.push(link_to(page + 1, "next"));
            links.push(link_to(last_page, "last"));
        }
        if page > 1 {
            links.push(link_to(1, "first"));
        }
        let mut headers = vec![(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".to_owned(),
        )];
        if !links.is_empty() {
            headers.push((header::LINK, links.join(", ")));
        }
        respond(StatusCode::OK, headers, Value::Array(items).to_string())
    }

    fn latest(&self, owner: &str, repo: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let data = lock(&self.data);
        let latest = data
            .repos
            .get(&key)
            .and_then(|releases| releases.iter().rev().find(|r| !r.draft && !r.prerelease));
        match latest {
            Some(release) => json_response(StatusCode::OK, &release.json(&self.base_url, &key)),
            None => not_found(),
        }
    }

    fn by_tag(&self, owner: &str, repo: &str, tag: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let data = lock(&self.data);
        // "Get a published release with the specified tag": drafts are not found.
        let release = data.repos.get(&key).and_then(|releases| {
            releases
                .iter()
                .rev()
                .find(|r| !r.draft && r.tag_name == tag)
        });
        match release {
            Some(release) => json_response(StatusCode::OK, &release.json(&self.base_url, &key)),
            None => not_found(),
        }
    }

    fn by_id(&self, owner: &str, repo: &str, id: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let data = lock(&self.data);
        let release = data
            .repos
            .get(&key)
            .and_then(|releases| releases.iter().find(|r| r.id == id));
        match release {
            Some(release) => json_response(StatusCode::OK, &release.json(&self.base_url, &key)),
            None => not_found(),
        }
    }

    fn create(&self, owner: &str, repo: &str, req: &Req<'_>) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(input) = serde_json::from_slice::<CreateRelease>(req.body) else {
            return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        };
        let Some(tag_name) = input.tag_name.filter(|t| !t.is_empty()) else {
            return validation_failed("Release", "missing_field", "tag_name");
        };
        let mut data = lock(&self.data);
        let Some(releases) = data.repos.get(&key) else {
            return not_found();
        };
        if releases.iter().any(|r| r.tag_name == tag_name) {
            return validation_failed("Release", "already_exists", "tag_name");
        }
        let id = data.next_id();
        let draft = input.draft.unwrap_or(false);
        let created_at = timestamp(id);
        let release = Release {
            id,
            name: input.name.unwrap_or_else(|| tag_name.clone()),
            tag_name,
            target_commitish: input.target_commitish.unwrap_or_else(|| "main".to_owned()),
            body: input.body.unwrap_or_default(),
            draft,
            prerelease: input.prerelease.unwrap_or(false),
            published_at: (!draft).then(|| created_at.clone()),
            created_at,
            assets: Vec::new(),
        };
        let value = release.json(&self.base_url, &key);
        data.repos.entry(key).or_default().push(release);
        let mut response = json_response(StatusCode::CREATED, &value);
        if let Some(Ok(location)) = value["url"].as_str().map(str::parse) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }

    fn edit(&self, owner: &str, repo: &str, id: &str, req: &Req<'_>) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let Ok(input) = serde_json::from_slice::<EditRelease>(req.body) else {
            return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        };
        let mut data = lock(&self.data);
        if let Some(tag) = &input.tag_name {
            let taken = data
                .repos
                .get(&key)
                .is_some_and(|rs| rs.iter().any(|r| r.id != id && &r.tag_name == tag));
            if taken {
                return validation_failed("Release", "already_exists", "tag_name");
            }
        }
        // Publishing a draft stamps its publication time.
        let publishes = input.draft == Some(false)
            && data
                .repos
                .get(&key)
                .and_then(|rs| rs.iter().find(|r| r.id == id))
                .is_some_and(|r| r.draft && r.published_at.is_none());
        let published_at = publishes.then(|| timestamp(data.next_id()));
        let Some(release) = data.release_mut(&key, id) else {
            return not_found();
        };
        if let Some(tag_name) = input.tag_name {
            release.tag_name = tag_name;
        }
        if let Some(target) = input.target_commitish {
            release.target_commitish = target;
        }
        if let Some(name) = input.name {
            release.name = name;
        }
        if let Some(body) = input.body {
            release.body = body;
        }
        if let Some(prerelease) = input.prerelease {
            release.prerelease = prerelease;
        }
        if let Some(draft) = input.draft {
            release.draft = draft;
        }
        if published_at.is_some() {
            release.published_at = published_at;
        }
        json_response(StatusCode::OK, &release.json(&self.base_url, &key))
    }

    fn delete_release(&self, owner: &str, repo: &str, id: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let mut data = lock(&self.data);
        let Some(releases) = data.repos.get_mut(&key) else {
            return not_found();
        };
        let before = releases.len();
        releases.retain(|r| r.id != id);
        if releases.len() == before {
            return not_found();
        }
        respond(StatusCode::NO_CONTENT, Vec::new(), "")
    }

    fn list_assets(&self, owner: &str, repo: &str, id: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let mut data = lock(&self.data);
        match data.release_mut(&key, id) {
            Some(release) => {
                let assets: Vec<Value> = release
                    .assets
                    .iter()
                    .map(|a| a.json(&self.base_url, &key))
                    .collect();
                json_response(StatusCode::OK, &Value::Array(assets))
            }
            None => not_found(),
        }
    }

    fn asset(&self, owner: &str, repo: &str, id: &str, req: &Req<'_>) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let data = lock(&self.data);
        let Some((asset_repo, _, asset)) = data.find_asset(id) else {
            return not_found();
        };
        if asset_repo != key {
            return not_found();
        }
        let wants_bytes = req
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/octet-stream"));
        if wants_bytes {
            respond(
                StatusCode::FOUND,
                vec![(
                    header::LOCATION,
                    download_url(&self.base_url, asset.id, &asset.name),
                )],
                "",
            )
        } else {
            json_response(StatusCode::OK, &asset.json(&self.base_url, &key))
        }
    }

    fn delete_asset(&self, owner: &str, repo: &str, id: &str) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let mut data = lock(&self.data);
        let Some(releases) = data.repos.get_mut(&key) else {
            return not_found();
        };
        for release in releases.iter_mut() {
            let before = release.assets.len();
            release.assets.retain(|a| a.id != id);
            if release.assets.len() != before {
                return respond(StatusCode::NO_CONTENT, Vec::new(), "");
            }
        }
        not_found()
    }

    fn upload(&self, owner: &str, repo: &str, id: &str, req: &Req<'_>) -> Response {
        let key = repo_key(&format!("{owner}/{repo}"));
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let Some(name) = query_value(req.query, "name").filter(|n| !n.is_empty()) else {
            return validation_failed("ReleaseAsset", "missing_field", "name");
        };
        let label = query_value(req.query, "label").map(str::to_owned);
        let content_type = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut data = lock(&self.data);
        let asset_id = data.next_id();
        let Some(release) = data.release_mut(&key, id) else {
            return not_found();
        };
        if release.assets.iter().any(|a| a.name == name) {
            return validation_failed("ReleaseAsset", "already_exists", "name");
        }
        let fault = (!data.upload_faults.is_empty()).then(|| data.upload_faults.remove(0));
        let Some(release) = data.release_mut(&key, id) else {
            return not_found();
        };
        let mut content = req.body.to_vec();
        let mut state = AssetState::Uploaded;
        match fault {
            None => {}
            Some(UploadFault::Interrupt) => {
                content.clear();
                state = AssetState::Starter;
            }
            Some(UploadFault::Corrupt) => match content.last_mut() {
                Some(last) => *last ^= 0xff,
                None => content.push(0),
            },
        }
        let mut asset = Asset::new(
            asset_id,
            name.to_owned(),
            content_type,
            content,
            state,
            true,
        );
        asset.label = label;
        let value = asset.json(&self.base_url, &key);
        release.assets.push(asset);
        if fault == Some(UploadFault::Interrupt) {
            return message(StatusCode::BAD_GATEWAY, "Upload interrupted");
        }
        json_response(StatusCode::CREATED, &value)
    }

    fn download(&self, id: &str) -> Response {
        let Ok(id) = id.parse::<u64>() else {
            return not_found();
        };
        let data = lock(&self.data);
        match data.find_asset(id) {
            Some((_, _, asset)) if asset.state == AssetState::Uploaded => respond(
                StatusCode::OK,
                vec![
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename={}", asset.name),
                    ),
                ],
                asset.content.clone(),
            ),
            _ => respond(StatusCode::NOT_FOUND, Vec::new(), "Not Found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_and_increasing() {
        assert_eq!(timestamp(0), "2024-01-01T00:00:00Z");
        assert_eq!(timestamp(61), "2024-01-01T00:01:01Z");
        assert!(timestamp(2) > timestamp(1));
    }
}
