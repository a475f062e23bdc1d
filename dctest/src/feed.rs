//! An OS release feed like Flatcar's: `GET /releases-json/releases-<channel>.json` answers a
//! JSON object keyed by version (plus `current`), and the kernel and initrd of each version are
//! served under `/<channel>/amd64-usr/<version>/` with small deterministic bytes, each with its
//! `<file>.DIGESTS` beside it (a `# SHA512 HASH` section, as Flatcar's; Flatcar's also carry MD5
//! and SHA-1 sections). [`FeedServer::tamper`] makes a file's bytes differ from its DIGESTS.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::json;

use crate::http_server::{bind_loopback, bound_address, respond, ServerThread};
use crate::util::{lock, sha512_digest};
use crate::{Error, Result};
use std::net::TcpListener;

/// File name of the PXE kernel.
pub const KERNEL_FILE: &str = "flatcar_production_pxe.vmlinuz";
/// File name of the PXE initrd.
pub const INITRD_FILE: &str = "flatcar_production_pxe_image.cpio.gz";

/// A running feed server; stopped when dropped.
#[derive(Debug)]
pub struct FeedServer {
    _server: ServerThread,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    base_url: String,
    channel: String,
    versions: Mutex<Vec<String>>,
    /// `(version, file)` served with bytes that do not match their DIGESTS.
    tampered: Mutex<Vec<(String, String)>>,
    /// `(version, file)` served with these bytes instead of generated ones.
    /// With their `sha512:<hex>`, computed once (an initrd may be hundreds of MB).
    provided: Mutex<BTreeMap<(String, String), (Bytes, String)>>,
}

impl FeedServer {
    /// Starts a feed for `channel` (e.g. `stable`) listing `versions` (e.g. `3815.2.0`), in this
    /// order in the JSON document.
    pub fn start(channel: &str, versions: &[&str]) -> Result<Self> {
        Self::start_on(bind_loopback("feed")?.0, channel, versions)
    }

    /// Like [`Self::start`], serving on `listener` (for example one from [`crate::Lan::bind`]).
    pub fn start_on(listener: TcpListener, channel: &str, versions: &[&str]) -> Result<Self> {
        if !is_plain_segment(channel) {
            return Err(Error::InvalidArgument(format!(
                "{channel:?} is not a valid channel name"
            )));
        }
        for version in versions {
            validate_version(version)?;
        }
        let addr = bound_address("feed", &listener)?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            channel: channel.to_owned(),
            versions: Mutex::new(versions.iter().map(|v| (*v).to_owned()).collect()),
            tampered: Mutex::new(Vec::new()),
            provided: Mutex::new(BTreeMap::new()),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("feed", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
        })
    }

    /// `http://ADDRESS:PORT` of its listener.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The channel served.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// URL of the feed document.
    pub fn feed_url(&self) -> String {
        format!(
            "{}/releases-json/releases-{}.json",
            self.shared.base_url, self.shared.channel
        )
    }

    /// The base URL of the release files with a `{channel}` placeholder, as neco-worker's
    /// `[os-image] base-url` and `artifacts-gen --os-image-base` take it.
    pub fn file_base_template(&self) -> String {
        format!("{}/{{channel}}/", self.shared.base_url)
    }

    /// URL of the kernel of `version`.
    pub fn kernel_url(&self, version: &str) -> String {
        format!(
            "{}/{}/amd64-usr/{version}/{KERNEL_FILE}",
            self.shared.base_url, self.shared.channel
        )
    }

    /// URL of the initrd of `version`.
    pub fn initrd_url(&self, version: &str) -> String {
        format!(
            "{}/{}/amd64-usr/{version}/{INITRD_FILE}",
            self.shared.base_url, self.shared.channel
        )
    }

    /// Publishes another version while running.
    pub fn add_version(&self, version: &str) -> Result<()> {
        validate_version(version)?;
        let mut versions = lock(&self.shared.versions);
        if !versions.iter().any(|v| v == version) {
            versions.push(version.to_owned());
        }
        Ok(())
    }

    /// The versions listed, in feed order.
    pub fn versions(&self) -> Vec<String> {
        lock(&self.shared.versions).clone()
    }

    /// From now on, serves `file` (e.g. [`KERNEL_FILE`]) of `version` with other bytes than
    /// those its `.DIGESTS` names: a corrupted download or a tampered mirror.
    pub fn tamper(&self, version: &str, file: &str) {
        lock(&self.shared.tampered).push((version.to_owned(), file.to_owned()));
    }

    /// Publishes `version` (when it is not listed yet) with these bytes as its kernel and
    /// initrd, instead of generated ones; their `.DIGESTS` follow.
    pub fn add_files(&self, version: &str, kernel: Vec<u8>, initrd: Vec<u8>) -> Result<()> {
        self.add_version(version)?;
        let mut provided = lock(&self.shared.provided);
        for (file, bytes) in [(KERNEL_FILE, kernel), (INITRD_FILE, initrd)] {
            let sha512 = sha512_digest(&bytes);
            provided.insert(
                (version.to_owned(), file.to_owned()),
                (bytes.into(), sha512),
            );
        }
        Ok(())
    }

    /// `sha512:<hex>` of `file` of `version` as this feed serves it (before any tampering),
    /// as its `.DIGESTS` gives it.
    pub fn served_sha512(&self, version: &str, file: &str) -> Option<String> {
        self.shared.file(version, file).map(|(_, sha512)| sha512)
    }

    /// `sha512:<hex>` of the generated bytes of `file` of `version` in `channel`, as its
    /// `.DIGESTS` gives it (unless [`FeedServer::add_files`] provided others).
    pub fn file_sha512(channel: &str, version: &str, file: &str) -> Option<String> {
        true_bytes(channel, version, file).map(|bytes| sha512_digest(&bytes))
    }

    /// The bytes served as the kernel of `version` in `channel`.
    pub fn kernel_bytes(channel: &str, version: &str) -> Vec<u8> {
        file_bytes("kernel", channel, version)
    }

    /// The bytes served as the initrd of `version` in `channel`.
    pub fn initrd_bytes(channel: &str, version: &str) -> Vec<u8> {
        file_bytes("initrd", channel, version)
    }
}

impl Shared {
    /// The bytes of a release file before any tampering (provided, else generated) and their
    /// `sha512:<hex>`.
    fn file(&self, version: &str, file: &str) -> Option<(Bytes, String)> {
        let provided = lock(&self.provided)
            .get(&(version.to_owned(), file.to_owned()))
            .cloned();
        provided.or_else(|| {
            let bytes = true_bytes(&self.channel, version, file)?;
            let sha512 = sha512_digest(&bytes);
            Some((bytes.into(), sha512))
        })
    }
}

/// The generated bytes of a release file; `None` for a file the feed lacks.
fn true_bytes(channel: &str, version: &str, file: &str) -> Option<Vec<u8>> {
    match file {
        KERNEL_FILE => Some(FeedServer::kernel_bytes(channel, version)),
        INITRD_FILE => Some(FeedServer::initrd_bytes(channel, version)),
        _ => None,
    }
}

/// About 1 KiB of text naming what it stands for.
fn file_bytes(kind: &str, channel: &str, version: &str) -> Vec<u8> {
    let line = format!("dctest flatcar {kind} channel={channel} version={version}\n");
    line.repeat(1024 / line.len() + 1).into_bytes()
}

fn is_plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        && s != "."
        && s != ".."
}

fn validate_version(version: &str) -> Result<()> {
    if is_plain_segment(version) && version != "current" {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{version:?} is not a valid version"
        )))
    }
}

/// Compares dotted versions numerically per segment (non-numeric segments compare as text).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

impl Shared {
    fn document(&self) -> String {
        let versions = lock(&self.versions).clone();
        let entry = |index: usize, version: &str| {
            let day = time::macros::date!(2024 - 01 - 01)
                .checked_add(time::Duration::days(i64::try_from(index).unwrap_or(0)))
                .unwrap_or(time::macros::date!(2024 - 01 - 01));
            json!({
                "channel": self.channel,
                "architectures": ["amd64"],
                "release_date": format!(
                    "{:04}-{:02}-{:02} 12:00:00 +0000",
                    day.year(),
                    u8::from(day.month()),
                    day.day()
                ),
                "github_release": version,
            })
        };
        let mut members: Vec<String> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{}:{}", json!(v), entry(i, v)))
            .collect();
        let current = versions
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| compare_versions(a, b));
        if let Some((i, v)) = current {
            members.push(format!("\"current\":{}", entry(i, v)));
        }
        format!("{{{}}}", members.join(","))
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, Vec::new(), "");
    }
    let path = request.uri().path();
    let feed_path = format!("/releases-json/releases-{}.json", shared.channel);
    if path == feed_path {
        return respond(
            StatusCode::OK,
            vec![(header::CONTENT_TYPE, "application/json".to_owned())],
            shared.document(),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let [channel, "amd64-usr", version, file] = segments.as_slice() {
        let known =
            *channel == shared.channel && lock(&shared.versions).iter().any(|v| v == version);
        if known {
            if let Some(name) = file.strip_suffix(".DIGESTS") {
                if let Some((_, sha512)) = shared.file(version, name) {
                    let hex = sha512.trim_start_matches("sha512:");
                    return respond(
                        StatusCode::OK,
                        vec![(header::CONTENT_TYPE, "text/plain".to_owned())],
                        format!("# SHA512 HASH\n{hex}  {name}\n"),
                    );
                }
            } else if let Some((bytes, _)) = shared.file(version, file) {
                let tampered = lock(&shared.tampered)
                    .iter()
                    .any(|(v, f)| v == version && f == file);
                let bytes = if tampered {
                    let mut changed = bytes.to_vec();
                    changed.extend_from_slice(b"tampered\n");
                    Bytes::from(changed)
                } else {
                    bytes
                };
                return respond(
                    StatusCode::OK,
                    vec![(header::CONTENT_TYPE, "application/octet-stream".to_owned())],
                    bytes,
                );
            }
        }
    }
    respond(StatusCode::NOT_FOUND, Vec::new(), "Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("999.0.0", "3815.2.0"), Ordering::Less);
        assert_eq!(compare_versions("3815.2.10", "3815.2.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.2", "1.2.0"), Ordering::Less);
        assert_eq!(compare_versions("1.2.3", "1.2.3"), Ordering::Equal);
    }

    #[test]
    fn file_bytes_differ_per_version_and_kind() {
        let kernel = FeedServer::kernel_bytes("stable", "1.0.0");
        assert!(kernel.len() >= 1024);
        assert_eq!(kernel, FeedServer::kernel_bytes("stable", "1.0.0"));
        assert_ne!(kernel, FeedServer::kernel_bytes("stable", "1.0.1"));
        assert_ne!(kernel, FeedServer::initrd_bytes("stable", "1.0.0"));
    }
}
