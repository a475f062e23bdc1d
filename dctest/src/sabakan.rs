//! A sabakan stand-in: the boot-image and asset endpoints of sabakan's REST API, written from
//! its documentation (cybozu-go/sabakan `docs/api.md`, `image_management.md`, `assets.md`).
//!
//! - `GET /api/v1/images/coreos`: the image index, a JSON array of
//!   `{"id", "date", "urls", "exists"}`, oldest first;
//! - `PUT /api/v1/images/coreos/<id>`: a tar archive holding exactly the files [`IMAGE_KERNEL`]
//!   and [`IMAGE_INITRD`]; 201 Created, 409 Conflict when the id exists, 400 for a bad archive
//!   or id;
//! - `GET|HEAD /api/v1/images/coreos/<id>`: the archive back (`application/tar`), 404 when
//!   unknown; `DELETE` removes it (200, or 404);
//! - `GET /api/v1/assets`: the asset names, a sorted JSON array;
//! - `PUT /api/v1/assets/<name>`: needs `Content-Type` (else 400) and `Content-Length` (else
//!   411); when `X-Sabakan-Asset-SHA256` is given the body must hash to it (else 400); 201 with
//!   `{"status":201,"id":"<id>"}` for a new asset, 200 with `{"status":200,"id":"<id>"}` (a new
//!   id) for an update;
//! - `GET|HEAD /api/v1/assets/<name>`: the content with `X-Sabakan-Asset-ID` and
//!   `X-Sabakan-Asset-SHA256`; `GET /api/v1/assets/<name>/meta`: `{"name", "id",
//!   "content-type", "date", "sha256", "urls", "exists"}`; `DELETE` removes it.
//!
//! Every request is recorded ([`SabakanStandIn::requests`]), and [`SabakanStandIn::fail_next`]
//! makes the next requests fail with a chosen status before they change anything.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read as _;
use std::sync::{Arc, Mutex};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::json;

use crate::http_server::{bind_loopback, bound_address, json_response, respond, ServerThread};
use crate::util::{lock, percent_decode, sha256_digest};
use crate::{Error, Result};
use std::net::TcpListener;

/// The kernel's file name in an image archive.
pub const IMAGE_KERNEL: &str = "kernel";
/// The initrd's file name in an image archive (sabakan's docs: `initrd.gz`).
pub const IMAGE_INITRD: &str = "initrd.gz";
/// The header carrying an asset's sha256 (hex).
pub const ASSET_SHA256_HEADER: &str = "x-sabakan-asset-sha256";
/// The header carrying an asset's id.
pub const ASSET_ID_HEADER: &str = "x-sabakan-asset-id";
/// The largest body accepted (413 beyond).
const MAX_BODY: usize = 256 << 20;

const IMAGES: &str = "/api/v1/images/coreos";
const ASSETS: &str = "/api/v1/assets";

/// One request received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SabakanRequest {
    pub method: String,
    /// The path, without query.
    pub path: String,
    pub content_type: Option<String>,
    /// The `X-Sabakan-Asset-SHA256` header, when given.
    pub asset_sha256: Option<String>,
    /// Bytes in the body.
    pub body_len: usize,
    /// The status answered.
    pub answered: u16,
}

/// A boot image held by the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SabakanImage {
    pub id: String,
    /// When it was uploaded, RFC 3339.
    pub date: String,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
}

/// An asset held by the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SabakanAsset {
    pub name: String,
    /// Assigned anew on every upload.
    pub id: u64,
    pub content_type: String,
    /// Hex sha256 of the content (no `sha256:` prefix, as sabakan writes it).
    pub sha256: String,
    /// When it was uploaded, RFC 3339.
    pub date: String,
    pub content: Vec<u8>,
}

#[derive(Debug, Default)]
struct Data {
    /// In upload order (the index's order).
    images: Vec<SabakanImage>,
    assets: BTreeMap<String, SabakanAsset>,
    last_asset_id: u64,
    requests: Vec<SabakanRequest>,
    failures: VecDeque<u16>,
}

#[derive(Debug)]
struct Shared {
    base_url: String,
    data: Mutex<Data>,
}

/// A running stand-in; stopped when dropped.
#[derive(Debug)]
pub struct SabakanStandIn {
    // Dropped first: stops the server before the state goes.
    _server: ServerThread,
    shared: Arc<Shared>,
}

impl SabakanStandIn {
    /// Starts the stand-in on a free 127.0.0.1 port, with no images and no assets.
    pub fn start() -> Result<Self> {
        Self::start_on(bind_loopback("sabakan")?.0)
    }

    /// Like [`Self::start`], serving on `listener` (for example one from [`crate::Lan::bind`]).
    pub fn start_on(listener: TcpListener) -> Result<Self> {
        let addr = bound_address("sabakan", &listener)?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            data: Mutex::new(Data::default()),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("sabakan", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
        })
    }

    /// `http://ADDRESS:PORT` of its listener, the base URL of the API (sabakan's `http://host:10080`).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The images of the index, oldest first.
    pub fn images(&self) -> Vec<SabakanImage> {
        lock(&self.shared.data).images.clone()
    }

    /// The assets, by name.
    pub fn assets(&self) -> Vec<SabakanAsset> {
        lock(&self.shared.data).assets.values().cloned().collect()
    }

    /// Every request received so far, failed ones included, oldest first.
    pub fn requests(&self) -> Vec<SabakanRequest> {
        lock(&self.shared.data).requests.clone()
    }

    /// The next `count` requests are answered with `status` (e.g. 500) and change nothing.
    pub fn fail_next(&self, count: usize, status: u16) {
        lock(&self.shared.data)
            .failures
            .extend(std::iter::repeat_n(status, count));
    }

    /// Adds an image as if it had been uploaded (no request is recorded).
    pub fn add_image(&self, id: &str, kernel: &[u8], initrd: &[u8]) -> Result<()> {
        if !is_valid_name(id) {
            return Err(Error::InvalidArgument(format!(
                "{id:?} is not a valid image id"
            )));
        }
        let mut data = lock(&self.shared.data);
        if data.images.iter().any(|i| i.id == id) {
            return Err(Error::InvalidArgument(format!("image {id} exists")));
        }
        data.images.push(SabakanImage {
            id: id.to_owned(),
            date: now(),
            kernel: kernel.to_vec(),
            initrd: initrd.to_vec(),
        });
        Ok(())
    }

    /// Adds or replaces an asset as if it had been uploaded (no request is recorded); returns
    /// its id.
    pub fn add_asset(&self, name: &str, content_type: &str, content: &[u8]) -> Result<u64> {
        if !is_valid_name(name) {
            return Err(Error::InvalidArgument(format!(
                "{name:?} is not a valid asset name"
            )));
        }
        let (id, _) = lock(&self.shared.data).put_asset(name, content_type, content);
        Ok(id)
    }

    /// A tar archive in the format of `PUT /api/v1/images/coreos/<id>`: [`IMAGE_KERNEL`] and
    /// [`IMAGE_INITRD`], regular files with mode 0644 and mtime 0.
    pub fn image_archive(kernel: &[u8], initrd: &[u8]) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in [(IMAGE_KERNEL, kernel), (IMAGE_INITRD, initrd)] {
            let mut header = tar::Header::new_ustar();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, content)
                .map_err(Error::io(format!("add {name} to an image archive")))?;
        }
        builder
            .into_inner()
            .map_err(Error::io("finish an image archive"))
    }
}

impl Data {
    /// Stores an asset under a new id; returns the id and whether it is new.
    fn put_asset(&mut self, name: &str, content_type: &str, content: &[u8]) -> (u64, bool) {
        self.last_asset_id += 1;
        let id = self.last_asset_id;
        let asset = SabakanAsset {
            name: name.to_owned(),
            id,
            content_type: content_type.to_owned(),
            sha256: hex_sha256(content),
            date: now(),
            content: content.to_vec(),
        };
        let created = self.assets.insert(name.to_owned(), asset).is_none();
        (id, created)
    }
}

fn hex_sha256(content: &[u8]) -> String {
    sha256_digest(content)
        .trim_start_matches("sha256:")
        .to_owned()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// An image id or asset name: one non-empty path segment of printable ASCII.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// A request as the router needs it.
struct Incoming {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header_text(header::CONTENT_TYPE.as_str());
    let asset_sha256 = header_text(ASSET_SHA256_HEADER);
    let (response, body_len) = match to_bytes(request.into_body(), MAX_BODY).await {
        Err(_) => (
            text(StatusCode::PAYLOAD_TOO_LARGE, "content is too large"),
            0,
        ),
        Ok(body) => {
            let body_len = body.len();
            let failure = lock(&shared.data).failures.pop_front();
            let response = match failure {
                Some(status) => text(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "failure injected by the test",
                ),
                None => shared.route(Incoming {
                    method: method.clone(),
                    path: path.clone(),
                    headers,
                    body: body.to_vec(),
                }),
            };
            (response, body_len)
        }
    };
    lock(&shared.data).requests.push(SabakanRequest {
        method: method.to_string(),
        path,
        content_type,
        asset_sha256,
        body_len,
        answered: response.status().as_u16(),
    });
    response
}

fn text(status: StatusCode, message: &str) -> Response {
    respond(
        status,
        vec![(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned())],
        format!("{message}\n"),
    )
}

fn not_found(what: &str) -> Response {
    text(StatusCode::NOT_FOUND, &format!("{what} not found"))
}

fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

impl Shared {
    fn route(&self, request: Incoming) -> Response {
        let is_get = request.method == Method::GET || request.method == Method::HEAD;
        if request.path == IMAGES {
            return if is_get {
                self.image_index()
            } else {
                method_not_allowed()
            };
        }
        if request.path == ASSETS {
            return if is_get {
                self.asset_index()
            } else {
                method_not_allowed()
            };
        }
        if let Some(id) = request.path.strip_prefix(&format!("{IMAGES}/")) {
            let id = percent_decode(id, false);
            return match request.method {
                Method::PUT => self.put_image(&id, &request.body),
                Method::DELETE => self.delete_image(&id),
                _ if is_get => self.get_image(&id),
                _ => method_not_allowed(),
            };
        }
        if let Some(rest) = request.path.strip_prefix(&format!("{ASSETS}/")) {
            if let Some(name) = rest.strip_suffix("/meta") {
                let name = percent_decode(name, false);
                return if is_get {
                    self.asset_meta(&name)
                } else {
                    method_not_allowed()
                };
            }
            let name = percent_decode(rest, false);
            return match request.method {
                Method::PUT => self.put_asset(&name, &request.headers, &request.body),
                Method::DELETE => self.delete_asset(&name),
                _ if is_get => self.get_asset(&name),
                _ => method_not_allowed(),
            };
        }
        not_found(&format!("path {}", request.path))
    }

    fn image_url(&self, id: &str) -> String {
        format!("{}{IMAGES}/{id}", self.base_url)
    }

    fn asset_url(&self, name: &str) -> String {
        format!("{}{ASSETS}/{name}", self.base_url)
    }

    fn image_index(&self) -> Response {
        let data = lock(&self.data);
        let index: Vec<serde_json::Value> = data
            .images
            .iter()
            .map(|image| {
                json!({
                    "id": image.id,
                    "date": image.date,
                    "urls": [self.image_url(&image.id)],
                    "exists": true,
                })
            })
            .collect();
        json_response(StatusCode::OK, &json!(index))
    }

    fn put_image(&self, id: &str, body: &[u8]) -> Response {
        if !is_valid_name(id) {
            return text(StatusCode::BAD_REQUEST, &format!("invalid image id {id:?}"));
        }
        if lock(&self.data).images.iter().any(|i| i.id == id) {
            return text(StatusCode::CONFLICT, &format!("image {id} already exists"));
        }
        let (kernel, initrd) = match read_image_archive(body) {
            Ok(files) => files,
            Err(message) => return text(StatusCode::BAD_REQUEST, &message),
        };
        let mut data = lock(&self.data);
        // Checked again under the same lock as the insert.
        if data.images.iter().any(|i| i.id == id) {
            return text(StatusCode::CONFLICT, &format!("image {id} already exists"));
        }
        data.images.push(SabakanImage {
            id: id.to_owned(),
            date: now(),
            kernel,
            initrd,
        });
        json_response(StatusCode::CREATED, &json!({ "status": 201, "id": id }))
    }

    fn get_image(&self, id: &str) -> Response {
        let image = lock(&self.data).images.iter().find(|i| i.id == id).cloned();
        let Some(image) = image else {
            return not_found(&format!("image {id}"));
        };
        match SabakanStandIn::image_archive(&image.kernel, &image.initrd) {
            Ok(archive) => respond(
                StatusCode::OK,
                vec![(header::CONTENT_TYPE, "application/tar".to_owned())],
                archive,
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn delete_image(&self, id: &str) -> Response {
        let mut data = lock(&self.data);
        let before = data.images.len();
        data.images.retain(|i| i.id != id);
        if data.images.len() == before {
            return not_found(&format!("image {id}"));
        }
        respond(StatusCode::OK, Vec::new(), "")
    }

    fn asset_index(&self) -> Response {
        let names: Vec<String> = lock(&self.data).assets.keys().cloned().collect();
        json_response(StatusCode::OK, &json!(names))
    }

    fn put_asset(&self, name: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        if !is_valid_name(name) {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("invalid asset name {name:?}"),
            );
        }
        let Some(content_type) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        else {
            return text(StatusCode::BAD_REQUEST, "no Content-Type");
        };
        if !headers.contains_key(header::CONTENT_LENGTH) {
            return text(StatusCode::LENGTH_REQUIRED, "no Content-Length");
        }
        let actual = hex_sha256(body);
        if let Some(expected) = headers.get(ASSET_SHA256_HEADER) {
            let expected = expected
                .to_str()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if expected != actual {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("sha256 mismatch: the header says {expected}, the body is {actual}"),
                );
            }
        }
        let (id, created) = lock(&self.data).put_asset(name, content_type, body);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_response(
            status,
            &json!({ "status": status.as_u16(), "id": id.to_string() }),
        )
    }

    fn get_asset(&self, name: &str) -> Response {
        let asset = lock(&self.data).assets.get(name).cloned();
        let Some(asset) = asset else {
            return not_found(&format!("asset {name}"));
        };
        respond(
            StatusCode::OK,
            vec![
                (header::CONTENT_TYPE, asset.content_type),
                (
                    HeaderName::from_static(ASSET_ID_HEADER),
                    asset.id.to_string(),
                ),
                (HeaderName::from_static(ASSET_SHA256_HEADER), asset.sha256),
            ],
            asset.content,
        )
    }

    fn asset_meta(&self, name: &str) -> Response {
        let asset = lock(&self.data).assets.get(name).cloned();
        let Some(asset) = asset else {
            return not_found(&format!("asset {name}"));
        };
        json_response(
            StatusCode::OK,
            &json!({
                "name": asset.name,
                "id": asset.id.to_string(),
                "content-type": asset.content_type,
                "date": asset.date,
                "sha256": asset.sha256,
                "urls": [self.asset_url(&asset.name)],
                "exists": true,
            }),
        )
    }

    fn delete_asset(&self, name: &str) -> Response {
        if lock(&self.data).assets.remove(name).is_none() {
            return not_found(&format!("asset {name}"));
        }
        respond(StatusCode::OK, Vec::new(), "")
    }
}

/// The kernel and initrd of an image archive, which must hold exactly these two regular
/// files; anything else is the message of a 400.
fn read_image_archive(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let invalid = |e: std::io::Error| format!("invalid tar archive: {e}");
    let mut archive = tar::Archive::new(body);
    let mut kernel = None;
    let mut initrd = None;
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let path = entry
            .path()
            .map_err(invalid)?
            .to_string_lossy()
            .into_owned();
        let name = path.trim_start_matches("./").to_owned();
        let slot = match name.as_str() {
            IMAGE_KERNEL => &mut kernel,
            IMAGE_INITRD => &mut initrd,
            _ => {
                return Err(format!(
                    "unexpected file {path:?}: the archive must hold {IMAGE_KERNEL} and {IMAGE_INITRD} only"
                ))
            }
        };
        if !entry.header().entry_type().is_file() {
            return Err(format!("{name} is not a regular file"));
        }
        if slot.is_some() {
            return Err(format!("{name} is in the archive twice"));
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(invalid)?;
        *slot = Some(content);
    }
    match (kernel, initrd) {
        (Some(kernel), Some(initrd)) => Ok((kernel, initrd)),
        (None, _) => Err(format!("the archive lacks {IMAGE_KERNEL}")),
        (_, None) => Err(format!("the archive lacks {IMAGE_INITRD}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_round_trip_and_are_checked() {
        let archive = SabakanStandIn::image_archive(b"k", b"i").expect("an archive");
        assert_eq!(
            read_image_archive(&archive),
            Ok((b"k".to_vec(), b"i".to_vec()))
        );
        assert!(read_image_archive(b"").is_err());
        assert!(read_image_archive(b"not a tar archive at all").is_err());
    }

    #[test]
    fn names_are_single_segments() {
        assert!(is_valid_name("3815.2.0"));
        assert!(is_valid_name("sabakan-cryptsetup"));
        for bad in ["", ".", "..", "a/b", "a b", "\u{e9}"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
