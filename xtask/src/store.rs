//! Brings a nightly candidate's upstream artifacts into the store the virtual data center
//! serves (`dctest::store`): every image the release pins by its pinned digest with every
//! manifest and blob (verified by `fetch::oci`), every pinned deb (sha256 checked), the OS
//! image's kernel and initrd (sha512 checked). They are pulled from where artifacts-gen
//! resolved them, through the same endpoint overrides and credentials.
//!
//! What the store holds already with the right content is not fetched again; each use renews
//! a file's modification time, and what the candidate does not use is pruned once nothing has
//! used it for `dctest::store::KEEP_UNUSED`. A copy that fails names the artifact and the URL,
//! and leaves `candidate.json` as it was (the data center serves only a complete store).

use anyhow::{bail, Context as _};
use artifacts_gen::generated::PinnedSet;
use dctest::store::{Candidate, Store, StoredDeb, StoredImage, StoredOs, KEEP_UNUSED};
use fetch::github::GitHub;
use fetch::http::{Checksum, Http, DOWNLOAD_IDLE};
use fetch::oci::{copy_image_platforms, ImageSource, Platforms};
use fetch::registry::Credentials;
use fetch::Secret;
use reqwest::Url;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Where the candidate's artifacts come from: artifacts-gen's endpoints.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Registry host → base URL of its API (any other host: `https://<host>/`).
    pub registries: BTreeMap<String, Url>,
    /// Sent to the registry of private images only.
    pub credentials: Option<Credentials>,
    pub github_api: Url,
    pub github_token: Option<Secret>,
    /// The OS image's file base URL, `{channel}` to be filled in. [`bring_in`] needs it; the
    /// nightly leaves it `None` without `--os-image-base` and fills in the `base_url` of the
    /// candidate's `artifacts.toml`.
    pub os_image_base: Option<String>,
}

/// The registry overrides of `HOST=URL` items (`--registry`).
pub fn parse_overrides(items: &[String]) -> anyhow::Result<BTreeMap<String, Url>> {
    items
        .iter()
        .map(|item| artifacts_gen::cli::parse_registry_override(item).map_err(anyhow::Error::msg))
        .collect()
}

/// What bringing the candidate in did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files downloaded (manifests, blobs, debs, OS files).
    pub downloaded: usize,
    /// Files the store held already with the right content.
    pub reused: usize,
    /// Files pruned, and their bytes.
    pub pruned: usize,
    pub pruned_bytes: u64,
    /// The size of the store afterwards.
    pub size: u64,
    pub elapsed: Duration,
}

impl Report {
    /// One line for the step summary.
    pub fn summary(&self) -> String {
        format!(
            "{} downloaded, {} reused, {} pruned ({:.1} MiB); store {:.1} MiB; {:.1} s",
            self.downloaded,
            self.reused,
            self.pruned,
            mib(self.pruned_bytes),
            mib(self.size),
            self.elapsed.as_secs_f64()
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// The store of the nightly under the workspace's target directory.
pub fn default_dir(root: &Path) -> PathBuf {
    crate::deb::target_dir(root).join("dctest-store")
}

/// The candidate's pins as the store records them.
pub fn candidate(pins: &PinnedSet) -> Candidate {
    Candidate {
        images: pins
            .images
            .iter()
            .map(|i| StoredImage {
                repository: i.repository.clone(),
                tag: i.tag.clone(),
                digest: i.digest.clone(),
            })
            .collect(),
        debs: pins
            .debs
            .iter()
            .map(|d| StoredDeb {
                github: d.repository.clone(),
                release: d.release.clone(),
                asset: d.asset.clone(),
                sha256: d.sha256.clone(),
            })
            .collect(),
        os: StoredOs {
            channel: pins.os_image.channel.clone(),
            version: pins.os_image.version.clone(),
            kernel_sha512: pins.os_image.kernel_sha512.clone(),
            initrd_sha512: pins.os_image.initrd_sha512.clone(),
        },
    }
}

/// Copies everything `pins` names into the store at `dir`, then records the candidate and
/// prunes. Blocking (it runs its own runtime).
pub fn bring_in(
    http: &Http,
    dir: &Path,
    pins: &PinnedSet,
    sources: &Sources,
) -> anyhow::Result<Report> {
    crate::release::block_on(bring_in_async(http, dir, pins, sources))?
}

async fn bring_in_async(
    http: &Http,
    dir: &Path,
    pins: &PinnedSet,
    sources: &Sources,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let store = Store::new(dir);
    let candidate = candidate(pins);
    let mut report = Report::default();
    for image in &pins.images {
        let source = ImageSource {
            repository: image.repository.clone(),
            tag: image.tag.clone(),
            digest: image.digest.clone(),
            private: image.private,
        };
        let copied = copy_image_platforms(
            http,
            &store.oci_dir(),
            source,
            &sources.registries,
            sources.credentials.as_ref(),
            Platforms::All,
        )
        .await
        .with_context(|| {
            format!(
                "bringing {}:{} in from {}",
                image.repository,
                image.tag,
                registry_url(&sources.registries, &image.repository)
            )
        })?;
        report.downloaded += copied.downloaded.len();
        report.reused += copied.present.len();
        // What was just downloaded is new; what was there is used again.
        for digest in &copied.present {
            touch(&store.blob_path(digest)?).await?;
        }
    }
    let github = GitHub::new(
        http,
        sources.github_api.clone(),
        sources.github_token.as_ref(),
    );
    for deb in &candidate.debs {
        let path = store.deb_path(&deb.sha256)?;
        if is_stored(&path, Checksum::Sha256, &deb.sha256).await? {
            report.reused += 1;
            continue;
        }
        let what = format!("deb {} {} {}", deb.github, deb.release, deb.asset);
        let release = github
            .release_by_tag(&deb.github, &deb.release)
            .await
            .with_context(|| format!("bringing {what} in"))?
            .with_context(|| format!("bringing {what} in: the release is not on GitHub"))?;
        let asset = release
            .assets
            .iter()
            .find(|a| a.name == deb.asset)
            .with_context(|| format!("bringing {what} in: the release has no such asset"))?;
        let dir = parent(&path)?;
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let got = github
            .download_asset_to(asset, dir, DOWNLOAD_IDLE)
            .await
            .with_context(|| format!("bringing {what} in from {}", asset.url))?;
        if got.digest != deb.sha256 {
            bail!(
                "bringing {what} in from {}: the download has sha256 {}, {} is pinned",
                asset.url,
                got.digest,
                deb.sha256
            );
        }
        persist(got, &path).await?;
        report.downloaded += 1;
    }
    let os = &candidate.os;
    let base = sources
        .os_image_base
        .as_deref()
        .context("no base URL of the OS image's files")?;
    for (file, sha512) in [
        (artifacts::OsImage::KERNEL_FILE, &os.kernel_sha512),
        (artifacts::OsImage::INITRD_FILE, &os.initrd_sha512),
    ] {
        let path = store.os_path(sha512)?;
        if is_stored(&path, Checksum::Sha512, sha512).await? {
            report.reused += 1;
            continue;
        }
        let url = artifacts::OsImage::file_url(base, &os.channel, &os.version, file);
        let what = format!("OS image {} {} {file}", os.channel, os.version);
        let parsed = Url::parse(&url).with_context(|| format!("{what}: URL {url}"))?;
        let dir = parent(&path)?;
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let request = http
            .client()
            .get(parsed)
            .build()
            .with_context(|| format!("{what}: URL {url}"))?;
        let got = http
            .download_hashed(request, dir, DOWNLOAD_IDLE, Checksum::Sha512)
            .await
            .with_context(|| format!("bringing {what} in"))?;
        if &got.digest != sha512 {
            bail!(
                "bringing {what} in from {url}: the download has checksum {}, {sha512} is pinned",
                got.digest
            );
        }
        persist(got, &path).await?;
        report.downloaded += 1;
    }
    store.write_candidate(&candidate)?;
    let pruned = store.prune(&candidate, KEEP_UNUSED)?;
    report.pruned = pruned.files;
    report.pruned_bytes = pruned.bytes;
    report.size = store.size()?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The registry base URL an image is pulled from, for messages.
fn registry_url(registries: &BTreeMap<String, Url>, repository: &str) -> String {
    let host = repository.split_once('/').map_or(repository, |(h, _)| h);
    fetch::oci::registry_base(registries, host).map_or_else(|e| e, |url| url.to_string())
}

fn parent(path: &Path) -> anyhow::Result<&Path> {
    path.parent()
        .with_context(|| format!("{} has no parent directory", path.display()))
}

/// Whether `path` holds content with `digest`; when it does, its use is recorded (mtime).
async fn is_stored(path: &Path, checksum: Checksum, digest: &str) -> anyhow::Result<bool> {
    let file = path.to_owned();
    let found = tokio::task::spawn_blocking(move || fetch::http::file_digest(&file, checksum))
        .await
        .context("hashing a stored file")?
        .with_context(|| format!("reading {}", path.display()))?;
    if found.as_deref() == Some(digest) {
        touch(path).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Records a use of a stored file: its modification time becomes now.
async fn touch(path: &Path) -> anyhow::Result<()> {
    let file = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(SystemTime::now()))
    })
    .await
    .context("touching a stored file")?
    .with_context(|| format!("touching {}", path.display()))
}

/// Renames a verified download into place.
async fn persist(downloaded: fetch::http::Downloaded, path: &Path) -> anyhow::Result<()> {
    let target = path.to_owned();
    tokio::task::spawn_blocking(move || downloaded.file.persist(&target).map(drop))
        .await
        .context("storing a download")?
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
