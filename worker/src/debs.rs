//! Debian packages from GitHub releases: the pinned debs (step 2) and neco's own package
//! (self-update). Nothing is installed unless its sha256 is the expected one.

use bytes::Bytes;
use fetch::github::{Asset, GitHub, GitHubError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where downloaded packages are kept, relative to the root (also the source of the sabakan
/// assets).
pub const CACHE_DIR: &str = "var/lib/neco/debs";

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{package}: no release {tag} in {repository}")]
    NoRelease {
        package: String,
        repository: String,
        tag: String,
    },
    #[error("{package}: release {tag} has an asset named {name:?}, which is not a plain file name (a path, `..` or NUL): nothing was downloaded")]
    UnsafeAssetName {
        package: String,
        tag: String,
        name: String,
    },
    #[error("{package}: release {tag} has no asset {wanted}")]
    NoAsset {
        package: String,
        tag: String,
        wanted: String,
    },
    #[error("{package}: release {tag} publishes no sha256 for {asset} (neither GitHub's digest nor {asset}.sha256): refusing to install it")]
    NoChecksum {
        package: String,
        tag: String,
        asset: String,
    },
    #[error("{package}: {asset} has sha256 {got}, expected {expected}: not installed")]
    Mismatch {
        package: String,
        asset: String,
        expected: String,
        got: String,
    },
    #[error("{package}: {source}")]
    GitHub {
        package: String,
        source: GitHubError,
    },
    #[error("{package}: cannot write {path}: {source}")]
    Write {
        package: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{package}: {source}")]
    Dpkg {
        package: String,
        source: neco::dpkg::DpkgError,
    },
}

/// Attempts of a download before giving up (the asset API is retried by `fetch` too).
const DOWNLOAD_ATTEMPTS: u32 = 3;
const DOWNLOAD_PAUSE: Duration = Duration::from_secs(2);

/// Finds a release by tag and its asset by a name predicate.
pub async fn find_asset(
    github: &GitHub<'_>,
    package: &str,
    repository: &str,
    tag: &str,
    wanted: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<(Asset, Vec<Asset>), DebError> {
    let release = github
        .release_by_tag(repository, tag)
        .await
        .map_err(|source| DebError::GitHub {
            package: package.to_owned(),
            source,
        })?
        .ok_or_else(|| DebError::NoRelease {
            package: package.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })?;
    let asset = release
        .assets
        .iter()
        .find(|a| a.is_uploaded() && matches(&a.name))
        .cloned()
        .ok_or_else(|| DebError::NoAsset {
            package: package.to_owned(),
            tag: tag.to_owned(),
            wanted: wanted.to_owned(),
        })?;
    // The name becomes a file name in the cache: refuse one that is a path.
    if !asset.has_safe_name() {
        return Err(DebError::UnsafeAssetName {
            package: package.to_owned(),
            tag: tag.to_owned(),
            name: asset.name,
        });
    }
    Ok((asset, release.assets))
}

/// Downloads a (small) asset into memory with a few attempts.
pub async fn download(
    github: &GitHub<'_>,
    package: &str,
    asset: &Asset,
) -> Result<Bytes, DebError> {
    with_attempts(package, asset, || github.download_asset(asset)).await
}

/// Downloads a package into a temporary file of the cache directory under `root`, streamed
/// and hashed on the way (a deb may be hundreds of MB), with a few attempts.
pub async fn download_to_cache(
    root: &Path,
    github: &GitHub<'_>,
    package: &str,
    asset: &Asset,
) -> Result<fetch::http::Downloaded, DebError> {
    let dir = root.join(CACHE_DIR);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|source| DebError::Write {
            package: package.to_owned(),
            path: dir.clone(),
            source,
        })?;
    with_attempts(package, asset, || {
        github.download_asset_to(asset, &dir, fetch::http::DOWNLOAD_IDLE)
    })
    .await
}

async fn with_attempts<T, F, Fut>(package: &str, asset: &Asset, mut get: F) -> Result<T, DebError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GitHubError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match get().await {
            Ok(got) => return Ok(got),
            Err(e @ (GitHubError::DigestMismatch { .. } | GitHubError::SizeMismatch { .. })) => {
                return Err(DebError::GitHub {
                    package: package.to_owned(),
                    source: e,
                })
            }
            Err(e) if attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(package, asset = %asset.name, error = %e, attempt, "download failed; retrying");
                tokio::time::sleep(DOWNLOAD_PAUSE).await;
            }
            Err(source) => {
                return Err(DebError::GitHub {
                    package: package.to_owned(),
                    source,
                })
            }
        }
    }
}

/// The published sha256 of an asset: GitHub's `digest`, else the first word of the
/// `<asset>.sha256` asset of the same release.
pub async fn published_sha256(
    github: &GitHub<'_>,
    package: &str,
    tag: &str,
    asset: &Asset,
    all: &[Asset],
) -> Result<String, DebError> {
    if let Some(digest) = asset.digest.clone().filter(|d| fetch::is_sha256_digest(d)) {
        return Ok(digest);
    }
    let sums_name = format!("{}.sha256", asset.name);
    let no_checksum = || DebError::NoChecksum {
        package: package.to_owned(),
        tag: tag.to_owned(),
        asset: asset.name.clone(),
    };
    let sums = all
        .iter()
        .find(|a| a.name == sums_name && a.is_uploaded())
        .ok_or_else(no_checksum)?;
    let text = download(github, package, sums).await?;
    let hex = String::from_utf8_lossy(&text)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let digest = format!("sha256:{hex}");
    if fetch::is_sha256_digest(&digest) {
        Ok(digest)
    } else {
        Err(no_checksum())
    }
}

/// Checks a download's digest against the expected `sha256:` digest.
pub fn verify(package: &str, asset: &str, got: &str, expected: &str) -> Result<(), DebError> {
    if got == expected {
        Ok(())
    } else {
        Err(DebError::Mismatch {
            package: package.to_owned(),
            asset: asset.to_owned(),
            expected: expected.to_owned(),
            got: got.to_owned(),
        })
    }
}

/// Moves a verified download (a temporary file of the cache directory) to its name in the
/// cache under `root` (atomically) and returns its path.
pub fn cache(
    root: &Path,
    package: &str,
    name: &str,
    downloaded: fetch::http::Downloaded,
) -> Result<PathBuf, DebError> {
    if !fetch::github::is_safe_file_name(name) {
        return Err(DebError::UnsafeAssetName {
            package: package.to_owned(),
            tag: String::new(),
            name: name.to_owned(),
        });
    }
    let dir = root.join(CACHE_DIR);
    let path = dir.join(name);
    let write_err = |source| DebError::Write {
        package: package.to_owned(),
        path: path.clone(),
        source,
    };
    downloaded
        .file
        .persist(&path)
        .map_err(|e| write_err(e.error))?;
    Ok(path)
}

/// Downloads, verifies against `expected` and installs one pinned package. Returns the path of
/// the cached file.
pub async fn install_pinned(
    root: &Path,
    github: &GitHub<'_>,
    deb: &artifacts::DebianPackage,
) -> Result<PathBuf, DebError> {
    let package = deb.name.as_str();
    let wanted = deb.asset.as_str();
    let (asset, _) = find_asset(
        github,
        package,
        deb.repository.as_str(),
        deb.release.as_str(),
        wanted,
        |name| name == wanted,
    )
    .await?;
    let downloaded = download_to_cache(root, github, package, &asset).await?;
    verify(package, wanted, &downloaded.digest, deb.sha256.as_str())?;
    let path = cache(root, package, wanted, downloaded)?;
    neco::dpkg::install_async(root, &path)
        .await
        .map_err(|source| DebError::Dpkg {
            package: package.to_owned(),
            source,
        })?;
    Ok(path)
}

/// The neco package of a release: `release-<version>`, the asset `^neco_.*\.deb$`, verified
/// against its published sha256 and installed with dpkg in a transient systemd unit of its own
/// ([`neco::dpkg::install_self_update`]). Nothing is installed unless the sha256 matches; when
/// dpkg itself fails, the package may be left unpacked or half-configured (dpkg says which).
pub async fn install_neco(
    root: &Path,
    github: &GitHub<'_>,
    repository: &str,
    version: &str,
) -> Result<(), DebError> {
    let tag = format!("release-{version}");
    let (asset, all) = find_asset(github, "neco", repository, &tag, "neco_*.deb", |name| {
        name.starts_with("neco_") && name.ends_with(".deb")
    })
    .await?;
    let expected = published_sha256(github, "neco", &tag, &asset, &all).await?;
    let downloaded = download_to_cache(root, github, "neco", &asset).await?;
    verify("neco", &asset.name, &downloaded.digest, &expected)?;
    let path = cache(root, "neco", &asset.name, downloaded)?;
    neco::dpkg::install_self_update(root, &path)
        .await
        .map_err(|source| DebError::Dpkg {
            package: "neco".into(),
            source,
        })?;
    tracing::info!(version, asset = %asset.name, "installed the neco package");
    Ok(())
}

/// What neco-worker does at start, by the dpkg status of the neco package under its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// The package is configured (`installed`, or only triggers of other packages await it):
    /// run.
    Run,
    /// The package is between unpacking and configuring (`half-installed`, `unpacked`,
    /// `half-configured`): dpkg is installing it (an operator's `dpkg -i` whose postinst
    /// restarted the worker) or was interrupted. Wait until it is configured.
    Wait,
    /// The package is not installed (no record, `not-installed`, `config-files`) or the status
    /// is not one dpkg writes: the configuration error, which a restart does not cure.
    NotInstalled,
}

/// The decision at start over the `Status` field of neco in the dpkg database (`want eflag
/// state`, such as `install ok installed`); `None` when dpkg has no record of it.
pub fn startup(status: Option<&str>) -> Startup {
    let words: Vec<&str> = status.unwrap_or("").split_whitespace().collect();
    let [_want, _error_flag, state] = words.as_slice() else {
        return Startup::NotInstalled;
    };
    match *state {
        "installed" | "triggers-awaited" | "triggers-pending" => Startup::Run,
        "half-installed" | "unpacked" | "half-configured" => Startup::Wait,
        _ => Startup::NotInstalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_by_dpkg_status() {
        let table = [
            (Some("install ok installed"), Startup::Run),
            (Some("hold ok installed"), Startup::Run),
            (Some("deinstall ok installed"), Startup::Run),
            (Some("install ok triggers-pending"), Startup::Run),
            (Some("install ok triggers-awaited"), Startup::Run),
            (Some("install ok half-installed"), Startup::Wait),
            (Some("install reinstreq half-installed"), Startup::Wait),
            (Some("install ok unpacked"), Startup::Wait),
            (Some("install ok half-configured"), Startup::Wait),
            (Some("install reinstreq half-configured"), Startup::Wait),
            (None, Startup::NotInstalled),
            (Some(""), Startup::NotInstalled),
            (Some("unknown ok not-installed"), Startup::NotInstalled),
            (Some("deinstall ok config-files"), Startup::NotInstalled),
            (Some("installed"), Startup::NotInstalled),
            (Some("install ok"), Startup::NotInstalled),
            (Some("install ok installed extra"), Startup::NotInstalled),
            (Some("install ok configuring"), Startup::NotInstalled),
        ];
        for (status, expected) in table {
            assert_eq!(startup(status), expected, "{status:?}");
        }
    }
}
