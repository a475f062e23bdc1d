//! Pinned container images copied from their registry into a local OCI image layout: step 1
//! of an update on a boot server (the linux/amd64 image), and the store of a nightly
//! candidate's images for the virtual data center (every platform, so that the copy can be
//! pushed to a registry again with the same digests).
//!
//! The layout follows the OCI image-layout spec: an `oci-layout` file
//! (`{"imageLayoutVersion":"1.0.0"}`), an `index.json` listing the images, and every blob under
//! `blobs/sha256/<hex>`. A copy fetches the manifest **by its pinned digest**, then the config
//! and every layer (for an image index: the index and its linux/amd64 manifest with its blobs,
//! or with [`Platforms::All`] every manifest it lists with theirs), verifying each digest.
//! Blobs already present with the right content are neither fetched nor written again, so a
//! second copy of the same pin makes no request at all. Each blob is written to a temporary
//! file in the blobs directory and renamed into place, so a failed copy leaves no partial
//! blob; `index.json` is replaced the same way.
//!
//! `index.json` names each image by the annotation `org.opencontainers.image.ref.name` = its
//! tag (so `skopeo` and `podman` find it as `oci:<dir>:<tag>`) and
//! `io.cybozu.neco.repository` = its repository; a copy replaces the entry of an older pin of
//! the same repository. Two repositories with the same tag in one layout would be ambiguous to
//! those tools: give each repository its own layout directory, or tell them apart by the
//! repository annotation. Copies into one layout must not run concurrently (`index.json` is
//! read, changed and replaced).

use crate::http::{Http, HttpError};
use crate::registry::{
    is_tag, Credentials, RegistryError, RepoClient, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    OCI_INDEX, OCI_MANIFEST,
};
use crate::{is_sha256_digest, sha256_digest};
use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The annotation that names an image in `index.json` (its tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation holding the repository (`host/path`) of an image in `index.json`.
pub const REPOSITORY: &str = "io.cybozu.neco.repository";
/// The content of the `oci-layout` file.
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image to copy: what an `artifacts::ContainerImage` pins, as owned strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageSource {
    /// `host/path`, e.g. `ghcr.io/cybozu/etcd`.
    pub repository: String,
    pub tag: String,
    /// The pinned manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// Pulling needs the registry credentials.
    pub private: bool,
}

impl ImageSource {
    /// The registry host, e.g. `ghcr.io` (empty when the repository has none).
    pub fn host(&self) -> &str {
        self.repository.split_once('/').map_or("", |(host, _)| host)
    }

    /// The repository path within its registry, e.g. `cybozu/etcd`.
    pub fn path(&self) -> &str {
        self.repository.split_once('/').map_or("", |(_, path)| path)
    }

    fn check(&self) -> Result<(), ImageFailure> {
        let invalid = |what: String| Err(ImageFailure::Invalid(what));
        if self.host().is_empty() || self.path().is_empty() {
            return invalid(format!("repository {:?} is not host/path", self.repository));
        }
        if !is_tag(&self.tag) {
            return invalid(format!("tag {:?} is not a valid tag", self.tag));
        }
        if !is_sha256_digest(&self.digest) {
            return invalid(format!(
                "pinned digest {:?} is not sha256:<64 hex>",
                self.digest
            ));
        }
        Ok(())
    }
}

/// `repository:tag`, as errors name an image.
impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

impl From<&ImageSource> for ImageSource {
    fn from(image: &ImageSource) -> Self {
        image.clone()
    }
}

/// Which manifests of an image index a copy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platforms {
    /// The linux/amd64 manifest only: what a boot server runs.
    LinuxAmd64,
    /// Every manifest the index lists: a copy that a registry accepts again as it is (a
    /// registry refuses an index whose manifests it does not have). The index must still have
    /// a linux/amd64 manifest: what a boot server cannot run is refused at the copy.
    All,
}

/// The base URL of the registry API of `host`: its override, else `https://<host>/`.
pub fn registry_base(overrides: &BTreeMap<String, Url>, host: &str) -> Result<Url, String> {
    match overrides.get(host) {
        Some(url) => Ok(url.clone()),
        None => Url::parse(&format!("https://{host}/")).map_err(|e| format!("{host}: {e}")),
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Digests of the manifests and blobs downloaded, in the order they were fetched.
    pub downloaded: Vec<String>,
    /// Digests found in the layout with the right content, not downloaded again.
    pub present: Vec<String>,
    /// Whether `index.json` was written (it is not when it already listed the pin).
    pub index_updated: bool,
}

/// A copy that failed, naming the image (`repository:tag`).
#[derive(Debug, thiserror::Error)]
#[error("image {image}: {failure}")]
pub struct ImageError {
    pub image: String,
    /// Shown in the message (not also as the source, which would print it twice).
    pub failure: ImageFailure,
}

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageFailure {
    #[error("{0}")]
    Invalid(String),
    #[error("registry of {host}: {message}")]
    Registry { host: String, message: String },
    #[error(transparent)]
    Fetch(#[from] RegistryError),
    #[error("{url}: the pinned manifest {pinned} is not in the registry (HTTP 404); {}", tag_text(.tag, .tag_digest.as_deref()))]
    PinnedManifestMissing {
        url: String,
        pinned: String,
        tag: String,
        /// What the tag points to now, when the registry still has it.
        tag_digest: Option<String>,
    },
    #[error("the registry served manifest {got} for the pinned {pinned}")]
    PinMismatch { pinned: String, got: String },
    #[error("manifest {digest}: {message}")]
    BadManifest { digest: String, message: String },
    #[error("manifest {digest} has media type {media_type:?}, which is neither an image manifest nor an image index")]
    UnsupportedMediaType { digest: String, media_type: String },
    #[error("image index {digest} has no linux/amd64 manifest (it has: {})", .platforms.join(", "))]
    NoPlatform {
        digest: String,
        platforms: Vec<String>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadLayout { path: PathBuf, message: String },
}

fn tag_text(tag: &str, digest: Option<&str>) -> String {
    match digest {
        Some(digest) => format!("the tag {tag} points to {digest}"),
        None => format!("the tag {tag} is not in the registry either"),
    }
}

/// Copies `image` (an [`ImageSource`] or a pinned [`ContainerImage`]) from its registry into
/// the OCI image layout at `layout` (created when missing) and records it in `index.json`.
///
/// `overrides`: registry host (as in the repository) → base URL of the API to pull from
/// instead (a mirror, a test registry); any other host is reached at `https://<host>/`.
/// `credentials` are sent to the registry of private images only.
pub async fn copy_image(
    http: &Http,
    layout: &Path,
    image: impl Into<ImageSource>,
    overrides: &BTreeMap<String, Url>,
    credentials: Option<&Credentials>,
) -> Result<CopyReport, ImageError> {
    copy_image_platforms(
        http,
        layout,
        image,
        overrides,
        credentials,
        Platforms::LinuxAmd64,
    )
    .await
}

/// [`copy_image`], taking the manifests of an index that `platforms` says.
pub async fn copy_image_platforms(
    http: &Http,
    layout: &Path,
    image: impl Into<ImageSource>,
    overrides: &BTreeMap<String, Url>,
    credentials: Option<&Credentials>,
    platforms: Platforms,
) -> Result<CopyReport, ImageError> {
    let image = image.into();
    copy(http, layout, &image, overrides, credentials, platforms)
        .await
        .map_err(|failure| ImageError {
            image: image.to_string(),
            failure,
        })
}

async fn copy(
    http: &Http,
    layout: &Path,
    image: &ImageSource,
    overrides: &BTreeMap<String, Url>,
    credentials: Option<&Credentials>,
    platforms: Platforms,
) -> Result<CopyReport, ImageFailure> {
    image.check()?;
    let layout = Layout::open(layout.to_owned()).await?;
    let base =
        registry_base(overrides, image.host()).map_err(|message| ImageFailure::Registry {
            host: image.host().to_owned(),
            message,
        })?;
    let credentials = if image.private { credentials } else { None };
    let mut copier = Copier {
        client: RepoClient::new(http, base, image.path(), credentials),
        layout,
        report: CopyReport::default(),
    };

    let top = copier.manifest(&image.digest, Some(&image.tag)).await?;
    match &top.kind {
        Kind::Image { blobs } => copier.blobs(blobs).await?,
        Kind::Index { manifests } => {
            let chosen = linux_amd64(manifests).ok_or_else(|| ImageFailure::NoPlatform {
                digest: top.digest.clone(),
                platforms: manifests.iter().map(Descriptor::platform_text).collect(),
            })?;
            let children: Vec<&Descriptor> = match platforms {
                Platforms::LinuxAmd64 => vec![chosen],
                Platforms::All => manifests.iter().collect(),
            };
            for entry in children {
                let child = copier.manifest(&entry.digest, None).await?;
                let Kind::Image { blobs } = &child.kind else {
                    return Err(ImageFailure::BadManifest {
                        digest: top.digest.clone(),
                        message: format!(
                            "its {} entry {} is an index",
                            entry.platform_text(),
                            child.digest
                        ),
                    });
                };
                copier.blobs(blobs).await?;
                copier.store(&child).await?;
            }
        }
    }
    copier.store(&top).await?;
    let entry = json!({
        "mediaType": top.media_type,
        "digest": top.digest,
        "size": top.bytes.len(),
        "annotations": {
            REF_NAME: image.tag,
            REPOSITORY: image.repository,
        },
    });
    copier.report.index_updated = copier.layout.record(&image.repository, entry).await?;
    Ok(copier.report)
}

/// Whether `layout` holds `image` as a [`copy_image`] ([`Platforms::LinuxAmd64`]) leaves it: `index.json` lists the pinned digest
/// under the image's repository and tag, the manifests hash to their digests, and every blob
/// they refer to (for an index, those of its linux/amd64 manifest) is there with the size its
/// descriptor gives. Layers are not hashed: that is [`copy_image`]'s work, which makes no
/// request either when everything is in place. Blocking: it reads files.
pub fn is_present(layout: &Path, image: impl Into<ImageSource>) -> Result<bool, ImageError> {
    let image = image.into();
    present(layout, &image).map_err(|failure| ImageError {
        image: image.to_string(),
        failure,
    })
}

fn present(layout: &Path, image: &ImageSource) -> Result<bool, ImageFailure> {
    image.check()?;
    let index_path = layout.join("index.json");
    let index: Value = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageFailure::BadLayout {
            path: index_path.clone(),
            message: format!("not JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(&index_path)(e)),
    };
    let listed = index
        .get("manifests")
        .and_then(Value::as_array)
        .is_some_and(|entries| {
            entries.iter().any(|entry| {
                let text = |pointer: &str| entry.pointer(pointer).and_then(Value::as_str);
                text("/digest") == Some(image.digest.as_str())
                    && entry.get("annotations").is_some_and(|a| {
                        a.get(REF_NAME).and_then(Value::as_str) == Some(image.tag.as_str())
                            && a.get(REPOSITORY).and_then(Value::as_str)
                                == Some(image.repository.as_str())
                    })
            })
        });
    if !listed {
        return Ok(false);
    }
    let blob_path = |digest: &str| {
        layout
            .join("blobs")
            .join("sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    };
    let read_manifest = |digest: &str| -> Result<Option<Kind>, ImageFailure> {
        let path = blob_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) if sha256_digest(&bytes) == digest => {
                Ok(Some(parse_manifest(digest, &bytes, None)?.1))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path)(e)),
        }
    };
    let blobs = match read_manifest(&image.digest)? {
        Some(Kind::Image { blobs }) => blobs,
        Some(Kind::Index { manifests }) => {
            let Some(chosen) = linux_amd64(&manifests) else {
                return Ok(false);
            };
            match read_manifest(&chosen.digest)? {
                Some(Kind::Image { blobs }) => blobs,
                _ => return Ok(false),
            }
        }
        None => return Ok(false),
    };
    for blob in blobs {
        let path = blob_path(&blob.digest);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && (blob.size == 0 || meta.len() == blob.size) => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    Ok(true)
}

/// The linux/amd64 entry of an index.
fn linux_amd64(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    })
}

/// A content descriptor, as far as this module reads it.
#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    digest: String,
    /// Bytes of the content (0 when not given).
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

impl Descriptor {
    fn platform_text(&self) -> String {
        match &self.platform {
            Some(p) if p.variant.is_empty() => format!("{}/{}", p.os, p.architecture),
            Some(p) => format!("{}/{}/{}", p.os, p.architecture, p.variant),
            None => format!("{} (no platform)", self.digest),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: String,
}

/// A manifest or index document, as far as this module reads it.
#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// What a manifest refers to.
#[derive(Debug)]
enum Kind {
    /// An image manifest: its config and layers.
    Image { blobs: Vec<Descriptor> },
    /// An image index: its manifests.
    Index { manifests: Vec<Descriptor> },
}

/// A manifest with its bytes, and whether it still has to be written to the layout.
#[derive(Debug)]
struct Fetched {
    digest: String,
    media_type: String,
    bytes: Bytes,
    kind: Kind,
    downloaded: bool,
}

/// Reads a manifest: its media type (the document's, else `hint`, else what its fields say)
/// and what it refers to.
fn parse_manifest(
    digest: &str,
    bytes: &[u8],
    hint: Option<&str>,
) -> Result<(String, Kind), ImageFailure> {
    let bad = |message: String| ImageFailure::BadManifest {
        digest: digest.to_owned(),
        message,
    };
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest ({e})")))?;
    let media_type = document
        .media_type
        .clone()
        .or_else(|| hint.map(str::to_owned))
        .unwrap_or_else(|| {
            if document.manifests.is_some() {
                OCI_INDEX.to_owned()
            } else {
                OCI_MANIFEST.to_owned()
            }
        });
    let check = |d: Descriptor| {
        if is_sha256_digest(&d.digest) {
            Ok(d)
        } else {
            Err(bad(format!(
                "it refers to {:?}, which is not sha256:<64 hex>",
                d.digest
            )))
        }
    };
    let kind = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let manifests = document
                .manifests
                .unwrap_or_default()
                .into_iter()
                .map(check)
                .collect::<Result<_, _>>()?;
            Kind::Index { manifests }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = document
                .config
                .ok_or_else(|| bad("an image manifest without config".to_owned()))?;
            let blobs = std::iter::once(config)
                .chain(document.layers.unwrap_or_default())
                .map(check)
                .collect::<Result<_, _>>()?;
            Kind::Image { blobs }
        }
        _ => {
            return Err(ImageFailure::UnsupportedMediaType {
                digest: digest.to_owned(),
                media_type,
            })
        }
    };
    Ok((media_type, kind))
}

struct Copier<'a> {
    client: RepoClient<'a>,
    layout: Layout,
    report: CopyReport,
}

impl Copier<'_> {
    /// The manifest `digest`: from the layout when it is there with the right content, else
    /// from the registry. `tag`: the tag of the pin, for the message when the registry lacks
    /// the pinned manifest.
    async fn manifest(&mut self, digest: &str, tag: Option<&str>) -> Result<Fetched, ImageFailure> {
        if let Some(bytes) = self.layout.read_verified(digest).await? {
            let (media_type, kind) = parse_manifest(digest, &bytes, None)?;
            self.report.present.push(digest.to_owned());
            return Ok(Fetched {
                digest: digest.to_owned(),
                media_type,
                bytes,
                kind,
                downloaded: false,
            });
        }
        let manifest = match self.client.get_manifest(digest).await {
            Ok(manifest) => manifest,
            Err(RegistryError::Http(HttpError::Status { status, url, .. }))
                if status == StatusCode::NOT_FOUND && tag.is_some() =>
            {
                let tag = tag.unwrap_or_default().to_owned();
                let tag_digest = self.client.manifest_digest(&tag).await.ok();
                return Err(ImageFailure::PinnedManifestMissing {
                    url,
                    pinned: digest.to_owned(),
                    tag,
                    tag_digest,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if manifest.digest != digest {
            return Err(ImageFailure::PinMismatch {
                pinned: digest.to_owned(),
                got: manifest.digest,
            });
        }
        let (media_type, kind) =
            parse_manifest(digest, &manifest.bytes, Some(&manifest.media_type))?;
        self.report.downloaded.push(digest.to_owned());
        Ok(Fetched {
            digest: manifest.digest,
            media_type,
            bytes: manifest.bytes,
            kind,
            downloaded: true,
        })
    }

    /// Every blob of `digests` not yet in the layout with the right content.
    async fn blobs(&mut self, blobs: &[Descriptor]) -> Result<(), ImageFailure> {
        for Descriptor { digest, .. } in blobs {
            if self.layout.has_verified(digest).await? {
                self.report.present.push(digest.clone());
                continue;
            }
            // Streamed into the layout's blob directory and renamed into place once verified:
            // a layer may be hundreds of MB.
            let downloaded = self
                .client
                .get_blob_to(digest, &self.layout.blobs, crate::http::DOWNLOAD_IDLE)
                .await?;
            tracing::debug!(%digest, size = downloaded.len, "blob downloaded");
            self.layout.persist_blob(digest, downloaded).await?;
            self.report.downloaded.push(digest.clone());
        }
        Ok(())
    }

    /// Writes a downloaded manifest into the layout (after the blobs it refers to).
    async fn store(&mut self, manifest: &Fetched) -> Result<(), ImageFailure> {
        if manifest.downloaded {
            self.layout
                .write_blob(&manifest.digest, manifest.bytes.clone())
                .await?;
        }
        Ok(())
    }
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    blobs: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageFailure + '_ {
    move |source| ImageFailure::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(path: &Path, work: F) -> Result<T, ImageFailure>
where
    F: FnOnce() -> Result<T, ImageFailure> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ImageFailure::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced, then
/// renamed into place: readers see the old content or the new, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageFailure> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    file.write_all(bytes).map_err(io_error(file.path()))?;
    file.as_file().sync_all().map_err(io_error(file.path()))?;
    // On failure the temporary file is removed when `file` is dropped.
    file.persist(path).map_err(|e| io_error(path)(e.error))?;
    Ok(())
}

/// The sha256 digest of a file; `None` when it does not exist.
fn file_digest(path: &Path) -> Result<Option<String>, ImageFailure> {
    crate::http::file_digest(path, crate::http::Checksum::Sha256).map_err(io_error(path))
}

impl Layout {
    /// Creates the directories and the `oci-layout` file when missing.
    async fn open(root: PathBuf) -> Result<Self, ImageFailure> {
        let blobs = root.join("blobs").join("sha256");
        let layout = Self { root, blobs };
        let this = layout.clone();
        blocking(&layout.root.clone(), move || {
            std::fs::create_dir_all(&this.blobs).map_err(io_error(&this.blobs))?;
            let marker = this.root.join("oci-layout");
            match std::fs::read(&marker) {
                Ok(content) => {
                    let version = serde_json::from_slice::<Value>(&content)
                        .ok()
                        .and_then(|v| v.get("imageLayoutVersion").cloned());
                    if version != Some(Value::from("1.0.0")) {
                        return Err(ImageFailure::BadLayout {
                            path: marker,
                            message: format!(
                                "expected {OCI_LAYOUT}, found {:?}",
                                String::from_utf8_lossy(&content)
                            ),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    write_atomically(&marker, OCI_LAYOUT.as_bytes())?;
                }
                Err(e) => return Err(io_error(&marker)(e)),
            }
            Ok(())
        })
        .await?;
        Ok(layout)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        // Callers pass checked `sha256:<hex>` digests only.
        self.blobs
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Whether the blob is present with the right content.
    async fn has_verified(&self, digest: &str) -> Result<bool, ImageFailure> {
        let path = self.blob_path(digest);
        let check = path.clone();
        let found = blocking(&path, move || file_digest(&check)).await?;
        Ok(found.as_deref() == Some(digest))
    }

    /// The bytes of a (small) blob when present with the right content.
    async fn read_verified(&self, digest: &str) -> Result<Option<Bytes>, ImageFailure> {
        let path = self.blob_path(digest);
        match tokio::fs::read(&path).await {
            Ok(bytes) if sha256_digest(&bytes) == digest => Ok(Some(Bytes::from(bytes))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    /// Renames a verified download (a temporary file of the blob directory) into place.
    async fn persist_blob(
        &self,
        digest: &str,
        downloaded: crate::http::Downloaded,
    ) -> Result<(), ImageFailure> {
        let path = self.blob_path(digest);
        let target = path.clone();
        blocking(&path, move || {
            downloaded
                .file
                .persist(&target)
                .map(drop)
                .map_err(|e| io_error(&target)(e.error))
        })
        .await
    }

    async fn write_blob(&self, digest: &str, bytes: Bytes) -> Result<(), ImageFailure> {
        let path = self.blob_path(digest);
        let target = path.clone();
        blocking(&path, move || write_atomically(&target, &bytes)).await
    }

    /// Puts `entry` into `index.json`, replacing the entry of the same `repository`; returns
    /// whether the file changed.
    async fn record(&self, repository: &str, entry: Value) -> Result<bool, ImageFailure> {
        let path = self.root.join("index.json");
        let repository = repository.to_owned();
        let target = path.clone();
        blocking(&path, move || {
            let mut index = match std::fs::read(&target) {
                Ok(content) => serde_json::from_slice::<Value>(&content).map_err(|e| {
                    ImageFailure::BadLayout {
                        path: target.clone(),
                        message: format!("not JSON: {e}"),
                    }
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
                Err(e) => return Err(io_error(&target)(e)),
            };
            let Some(object) = index.as_object_mut() else {
                return Err(ImageFailure::BadLayout {
                    path: target,
                    message: "not a JSON object".to_owned(),
                });
            };
            let updated = put_entry(object, &repository, entry).map_err(|message| {
                ImageFailure::BadLayout {
                    path: target.clone(),
                    message,
                }
            })?;
            if updated {
                let mut text =
                    serde_json::to_vec_pretty(&index).map_err(|e| ImageFailure::BadLayout {
                        path: target.clone(),
                        message: e.to_string(),
                    })?;
                text.push(b'\n');
                write_atomically(&target, &text)?;
            }
            Ok(updated)
        })
        .await
    }
}

/// Puts `entry` into the index object `index` in place of the entry of `repository` (or at
/// the end); fills in `schemaVersion` and `mediaType`. Returns whether anything changed.
fn put_entry(
    index: &mut Map<String, Value>,
    repository: &str,
    entry: Value,
) -> Result<bool, String> {
    let mut changed = false;
    for (key, value) in [
        ("schemaVersion", Value::from(2)),
        ("mediaType", Value::from(OCI_INDEX)),
    ] {
        if index.get(key) != Some(&value) {
            index.insert(key.to_owned(), value);
            changed = true;
        }
    }
    let manifests = index
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| "\"manifests\" is not an array".to_owned())?;
    let same_repository = |m: &Value| {
        m.pointer("/annotations")
            .and_then(|a| a.get(REPOSITORY))
            .and_then(Value::as_str)
            == Some(repository)
    };
    let mut placed = false;
    let mut updated: Vec<Value> = Vec::with_capacity(manifests.len() + 1);
    for m in manifests.iter() {
        if !same_repository(m) {
            updated.push(m.clone());
        } else if !placed {
            updated.push(entry.clone());
            placed = true;
        }
    }
    if !placed {
        updated.push(entry);
    }
    if *manifests != updated {
        *manifests = updated;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(repository: &str, tag: &str, digest: &str) -> Value {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": 1,
            "annotations": { REF_NAME: tag, REPOSITORY: repository },
        })
    }

    #[test]
    fn index_entries_replace_their_repository_only() {
        let mut index = Map::new();
        let a1 = entry("r/a", "1.0.0", &sha256_digest(b"a1"));
        let b1 = entry("r/b", "1.0.0", &sha256_digest(b"b1"));
        assert!(put_entry(&mut index, "r/a", a1.clone()).unwrap());
        assert!(put_entry(&mut index, "r/b", b1.clone()).unwrap());
        assert!(!put_entry(&mut index, "r/a", a1.clone()).unwrap());
        let a2 = entry("r/a", "1.1.0", &sha256_digest(b"a2"));
        assert!(put_entry(&mut index, "r/a", a2.clone()).unwrap());
        assert_eq!(index["manifests"], json!([a2, b1]));
        assert_eq!(index["schemaVersion"], json!(2));
        // Foreign entries (another tool's) are kept.
        let mut foreign = serde_json::from_value::<Map<String, Value>>(json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": OCI_MANIFEST, "digest": sha256_digest(b"x"), "size": 1 }],
        }))
        .unwrap();
        assert!(put_entry(&mut foreign, "r/a", a1.clone()).unwrap());
        assert_eq!(foreign["manifests"].as_array().unwrap().len(), 2);
        let mut broken =
            serde_json::from_value::<Map<String, Value>>(json!({"manifests": {}})).unwrap();
        assert!(put_entry(&mut broken, "r/a", a1).is_err());
    }

    #[test]
    fn manifests_are_read_by_media_type() {
        let d = sha256_digest(b"m");
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{d}"}},"layers":[{{"digest":"{d}"}}]}}"#
        );
        let (media_type, kind) = parse_manifest(&d, image.as_bytes(), None).unwrap();
        assert_eq!(media_type, OCI_MANIFEST);
        assert!(matches!(kind, Kind::Image { blobs } if blobs.len() == 2));
        let (media_type, _) = parse_manifest(&d, image.as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(media_type, DOCKER_MANIFEST);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}"}}]}}"#);
        let (media_type, kind) = parse_manifest(&d, index.as_bytes(), None).unwrap();
        assert_eq!(media_type, OCI_INDEX);
        assert!(matches!(kind, Kind::Index { manifests } if manifests.len() == 1));
        let escape = r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc"}}"#;
        assert!(parse_manifest(&d, escape.as_bytes(), None).is_err());
        let other = r#"{"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(
            parse_manifest(&d, other.as_bytes(), None),
            Err(ImageFailure::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn sources_are_checked() {
        let good = ImageSource {
            repository: "ghcr.io/cybozu/etcd".to_owned(),
            tag: "3.5.15.1".to_owned(),
            digest: sha256_digest(b"x"),
            private: false,
        };
        assert!(good.check().is_ok());
        assert_eq!(good.host(), "ghcr.io");
        assert_eq!(good.path(), "cybozu/etcd");
        assert_eq!(good.to_string(), "ghcr.io/cybozu/etcd:3.5.15.1");
        for bad in [
            ImageSource {
                repository: "etcd".to_owned(),
                ..good.clone()
            },
            ImageSource {
                tag: "../x".to_owned(),
                ..good.clone()
            },
            ImageSource {
                digest: "sha256:../../x".to_owned(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platforms() {
        let d = |p: Value| {
            serde_json::from_value::<Descriptor>(json!({"digest": "sha256:0", "platform": p}))
                .unwrap()
        };
        let list = vec![
            d(json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
            d(json!({"os": "linux", "architecture": "amd64"})),
        ];
        assert_eq!(linux_amd64(&list).unwrap().platform_text(), "linux/amd64");
        assert_eq!(list[0].platform_text(), "linux/arm64/v8");
        assert!(linux_amd64(&list[..1]).is_none());
    }
}
