//! Sabakan contents: the pinned OS image and assets uploaded to sabakan by one worker at a
//! time (reference/neco-cd.md §8.5, contents protocol).

use fetch::http::{require_success, Checksum, Http, HttpError, DOWNLOAD_IDLE};
use neco::lease::Leadership;
use neco::storage::{keys, Storage, StorageError};
use neco::types::{ContentsStatus, Lrn};
use reqwest::Url;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where, under the root, the OS image is downloaded and its archive built (temporary files).
pub const WORK_DIR: &str = "var/lib/neco/os-image";
/// The contents target in etcd (`contents/sabakan`).
pub const TARGET: &str = "sabakan";
/// TTL of the lease behind the worker leadership held while uploading. The holder keeps it
/// alive for as long as it runs (an upload may take minutes); when the holder dies, the others
/// wait at most this long. Twice the liveness TTL: a holder cut off from etcd for that long has
/// been declared dead and the update stopped already.
pub const UPLOAD_TTL: Duration = Duration::from_secs(10);
/// How long step 4 waits for sabakan to answer before it uploads: step 3 may have restarted
/// it a moment ago.
pub const SABAKAN_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The pause between two questions to a sabakan that does not answer yet.
const SABAKAN_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("sabakan {url}: {message}")]
    Sabakan { url: String, message: String },
    #[error("OS image {version}: {message}")]
    OsImage { version: String, message: String },
    /// This server's own files (the deb cache, the work directory) failed it: nothing is
    /// wrong with the contents, so the failure is not recorded for the others.
    #[error("{path}: {message}")]
    Local { path: String, message: String },
    #[error("the sabakan contents of {version} failed on a preceding worker; fix the cause and run `neco recover`")]
    FailedBefore { version: String },
}

impl ContentsError {
    /// Whether the error may go away by itself or is this server's own: sabakan restarting (a
    /// refused connection) or busy (5xx, 429, 408), the network, etcd, a local file. Such a
    /// failure is not recorded in `contents/sabakan`, so the other workers do not inherit it.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(e) => e.is_transient(),
            Self::Local { .. } => true,
            Self::Storage(_) => true,
            Self::Sabakan { .. } | Self::OsImage { .. } | Self::FailedBefore { .. } => false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    id: String,
}

/// A client of sabakan's REST API (`/api/v1/images/coreos`, `/api/v1/assets`).
#[derive(Debug)]
pub struct Sabakan<'a> {
    pub http: &'a Http,
    pub base: Url,
    /// How long [`Sabakan::wait_ready`] waits ([`SABAKAN_READY_TIMEOUT`] in the worker).
    pub ready_timeout: Duration,
}

impl Sabakan<'_> {
    fn url(&self, path: &str) -> Result<Url, ContentsError> {
        self.base.join(path).map_err(|e| ContentsError::Sabakan {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<fetch::http::Fetched, ContentsError> {
        let request = request.build().map_err(|e| ContentsError::Sabakan {
            url: self.base.to_string(),
            message: e.to_string(),
        })?;
        let method = request.method().to_string();
        Ok(require_success(&method, self.http.fetch(request).await?)?)
    }

    /// Waits until sabakan answers (its image index), for up to its `ready_timeout`; an error
    /// that is not transient ends the wait at once.
    pub async fn wait_ready(&self) -> Result<(), ContentsError> {
        let deadline = tokio::time::Instant::now() + self.ready_timeout;
        let mut logged = false;
        loop {
            match self.image_ids().await {
                Ok(_) => {
                    if logged {
                        tracing::info!("sabakan answers");
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    if !logged {
                        tracing::info!(error = %e, "waiting for sabakan to answer");
                        logged = true;
                    }
                    tokio::time::sleep(SABAKAN_POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The OS image ids sabakan holds.
    pub async fn image_ids(&self) -> Result<Vec<String>, ContentsError> {
        let url = self.url("api/v1/images/coreos")?;
        let got = self.send(self.http.client().get(url)).await?;
        let index: Vec<IndexEntry> = got.json()?;
        Ok(index.into_iter().map(|e| e.id).collect())
    }

    /// Uploads an OS image: the tar archive at `archive`, holding `kernel` and `initrd.gz`,
    /// streamed from disk.
    pub async fn put_image(&self, id: &str, archive: &Path) -> Result<(), ContentsError> {
        let url = self.url(&format!("api/v1/images/coreos/{id}"))?;
        self.upload(
            self.http
                .client()
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, "application/tar"),
            archive,
        )
        .await
    }

    async fn upload(
        &self,
        request: reqwest::RequestBuilder,
        path: &Path,
    ) -> Result<(), ContentsError> {
        let request = request.build().map_err(|e| ContentsError::Sabakan {
            url: self.base.to_string(),
            message: e.to_string(),
        })?;
        let method = request.method().to_string();
        let sent = self.http.upload(request, path).await.map_err(|e| match e {
            // This server's file, not sabakan's answer.
            HttpError::File { path, message } => ContentsError::Local { path, message },
            other => ContentsError::Http(other),
        })?;
        require_success(&method, sent)?;
        Ok(())
    }

    /// The asset names sabakan holds.
    pub async fn asset_names(&self) -> Result<Vec<String>, ContentsError> {
        let url = self.url("api/v1/assets")?;
        let got = self.send(self.http.client().get(url)).await?;
        Ok(got.json()?)
    }

    /// Uploads the file at `path` as an asset, with its sha256 for sabakan to verify.
    pub async fn put_asset(
        &self,
        name: &str,
        content_type: &str,
        sha256_hex: &str,
        path: &Path,
    ) -> Result<(), ContentsError> {
        let url = self.url(&format!("api/v1/assets/{name}"))?;
        self.upload(
            self.http
                .client()
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header("X-Sabakan-Asset-SHA256", sha256_hex),
            path,
        )
        .await
    }
}

/// A file to upload as a sabakan asset.
#[derive(Debug, Clone)]
pub struct Asset {
    pub name: String,
    pub content_type: String,
    /// Hex, without the `sha256:` prefix.
    pub sha256_hex: String,
    /// Where the content is (the worker's deb cache).
    pub path: PathBuf,
}

/// A file of the OS image: where it is downloaded from and the checksum it must have.
#[derive(Debug, Clone)]
pub struct OsFile {
    pub url: Url,
    /// `sha512:<hex>`, as pinned from the feed's `.DIGESTS`.
    pub sha512: String,
}

/// What to upload.
#[derive(Debug, Clone)]
pub struct Contents {
    /// The OS image id (its version) and its kernel and initrd.
    pub os_version: String,
    pub kernel: OsFile,
    pub initrd: OsFile,
    pub assets: Vec<Asset>,
    /// Where the OS image's files are downloaded to, and its archive built.
    pub work_dir: PathBuf,
}

/// Writes a tar archive of the kernel and the initrd at the given paths (`kernel`,
/// `initrd.gz`), as sabakan's image API takes it, into a temporary file in `dir`. Blocking.
pub fn image_archive(
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tar::Builder::new(tempfile::NamedTempFile::new_in(dir)?);
    for (name, path) in [("kernel", kernel), ("initrd.gz", initrd)] {
        let file = std::fs::File::open(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(file.metadata()?.len());
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, file)?;
    }
    let archive = builder.into_inner()?;
    archive.as_file().sync_all()?;
    Ok(archive)
}

/// Uploads what the sabakan index lacks. The OS image's files are downloaded into temporary
/// files in the contents' `work_dir` (created when missing, emptied first), removed
/// afterwards.
pub async fn upload_missing(
    sabakan: &Sabakan<'_>,
    http: &Http,
    contents: &Contents,
) -> Result<(), ContentsError> {
    let work_dir = contents.work_dir.as_path();
    let ids = sabakan.image_ids().await?;
    if !ids.contains(&contents.os_version) {
        let failed = |message: String| ContentsError::OsImage {
            version: contents.os_version.clone(),
            message,
        };
        let local = |e: std::io::Error| ContentsError::Local {
            path: work_dir.display().to_string(),
            message: e.to_string(),
        };
        tokio::fs::create_dir_all(work_dir).await.map_err(local)?;
        // What an upload interrupted by a restart left behind (only the leader writes here).
        let mut entries = tokio::fs::read_dir(work_dir).await.map_err(local)?;
        while let Some(entry) = entries.next_entry().await.map_err(local)? {
            tokio::fs::remove_file(entry.path()).await.map_err(local)?;
        }
        // Verified before anything is uploaded: sabakan netboots every machine with them.
        let download = |file: OsFile| async move {
            let request = http
                .client()
                .get(file.url.clone())
                .build()
                .map_err(|e| failed(format!("{}: {e}", file.url)))?;
            let got = http
                .download_hashed(request, work_dir, DOWNLOAD_IDLE, Checksum::Sha512)
                .await?;
            if got.digest != file.sha512 {
                return Err(failed(format!(
                    "{}: the download has checksum {}, but {} is pinned; nothing was uploaded",
                    got.url, got.digest, file.sha512
                )));
            }
            Ok::<_, ContentsError>(got)
        };
        let kernel = download(contents.kernel.clone()).await?;
        let initrd = download(contents.initrd.clone()).await?;
        let dir = work_dir.to_owned();
        let archive = tokio::task::spawn_blocking(move || {
            image_archive(kernel.file.path(), initrd.file.path(), &dir)
        })
        .await
        .map_err(|e| failed(format!("building the image archive: {e}")))?
        .map_err(local)?;
        sabakan
            .put_image(&contents.os_version, archive.path())
            .await?;
        tracing::info!(version = %contents.os_version, "uploaded the OS image to sabakan");
    }
    let names = sabakan.asset_names().await?;
    for asset in &contents.assets {
        if !names.contains(&asset.name) {
            sabakan
                .put_asset(
                    &asset.name,
                    &asset.content_type,
                    &asset.sha256_hex,
                    &asset.path,
                )
                .await?;
            tracing::info!(asset = %asset.name, "uploaded an asset to sabakan");
        }
    }
    Ok(())
}

/// The contents protocol: one worker at a time (`leader/worker/`), recorded in
/// `contents/sabakan` so that the others skip what is done.
pub async fn update_contents(
    storage: &Storage,
    me: Lrn,
    version: &str,
    sabakan: &Sabakan<'_>,
    http: &Http,
    contents: &Contents,
) -> Result<(), ContentsError> {
    // Done already: sabakan is not asked anything.
    if let Some(st) = storage.contents_status(TARGET).await? {
        if st.version == version && st.success {
            return Ok(());
        }
    }
    // Before taking the upload leadership, so that the others are not held up meanwhile.
    sabakan.wait_ready().await?;
    let leadership =
        Leadership::campaign(storage, keys::LEADER_WORKER, &me.to_string(), UPLOAD_TTL).await?;
    let result = async {
        match storage.contents_status(TARGET).await? {
            Some(st) if st.version == version && st.success => return Ok(()),
            Some(st) if st.version == version => {
                return Err(ContentsError::FailedBefore {
                    version: version.to_owned(),
                })
            }
            _ => {}
        }
        let upload = upload_missing(sabakan, http, contents).await;
        let success = match &upload {
            Ok(()) => true,
            // Not recorded: the next worker (or this one after `neco recover`) tries again.
            Err(e) if e.is_transient() => return upload,
            Err(_) => false,
        };
        let record = storage
            .put_contents_status(
                TARGET,
                &ContentsStatus {
                    version: version.to_owned(),
                    success,
                },
                leadership.key(),
            )
            .await;
        // The upload's own error says more than a failed record.
        upload?;
        record?;
        Ok(())
    }
    .await;
    if let Err(e) = leadership.resign().await {
        tracing::warn!(error = %e, "resigning the worker leadership failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn which_failures_are_transient() {
        let status = |code: u16| {
            ContentsError::Http(HttpError::Status {
                method: "PUT".into(),
                url: "http://sabakan/api/v1/assets/a".into(),
                status: StatusCode::from_u16(code).unwrap(),
                detail: String::new(),
            })
        };
        let rows: Vec<(&str, ContentsError, bool)> = vec![
            (
                "connection refused (sabakan restarting)",
                ContentsError::Http(HttpError::Transport {
                    method: "GET".into(),
                    url: "http://sabakan/".into(),
                    message: "connection refused".into(),
                }),
                true,
            ),
            ("503", status(503), true),
            ("500", status(500), true),
            ("429", status(429), true),
            ("408", status(408), true),
            ("400: sabakan refuses the upload", status(400), false),
            ("404", status(404), false),
            (
                "a sha256 mismatch reported by sabakan",
                ContentsError::Sabakan {
                    url: "http://sabakan/".into(),
                    message: "bad".into(),
                },
                false,
            ),
            (
                "the OS image cannot be packed",
                ContentsError::OsImage {
                    version: "1".into(),
                    message: "x".into(),
                },
                false,
            ),
            (
                "etcd",
                ContentsError::Storage(StorageError::NotFound { what: "x".into() }),
                true,
            ),
        ];
        for (what, error, transient) in rows {
            assert_eq!(error.is_transient(), transient, "{what}: {error}");
        }
    }
}
