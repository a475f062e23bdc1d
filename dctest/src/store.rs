//! The store of a nightly candidate's upstream artifacts on disk, and how the virtual data
//! center serves it.
//!
//! Before the suites, `cargo xtask nightly` copies everything the candidate pins, from where
//! artifacts-gen resolved it, into a [`Store`] directory:
//! - `oci/`: an OCI image layout holding every pinned image by its pinned digest (an image
//!   index with every manifest it lists, so that a registry takes it again as it is), copied
//!   and verified by `fetch::oci`;
//! - `debs/<hex>`: each pinned deb, named by its sha256 and checked against it;
//! - `os/<hex>`: the kernel and the initrd of the pinned OS version, named by their sha512
//!   and checked against it;
//! - `candidate.json`: what the candidate pins ([`Candidate`]), written last and atomically:
//!   a store without it is never served.
//!
//! A file already in the store with the right content is not fetched again, and each use
//! renews its modification time; [`Store::prune`] removes what the candidate does not use and
//! nothing has used for [`KEEP_UNUSED`]. [`crate::DataCenter::start`] with
//! [`crate::datacenter::Options::store`] serves the store: each image is pushed into the data
//! center's registry under its pinned repository and tag with the same digest, each deb
//! becomes the asset of its release on the GitHub stand-in, and the OS files are what the feed
//! stand-in serves for the pinned version.
//!
//! The files are read and written here, by the fixture crate, which depends on no crate of
//! the workspace; xtask fills them.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The environment variable that hands the suites a store (`cargo xtask nightly` sets it).
pub const STORE_ENV: &str = "NECO_DCTEST_STORE";
/// How long a file nothing uses stays in the store.
pub const KEEP_UNUSED: Duration = Duration::from_secs(7 * 24 * 3600);
/// The file naming what the candidate pins.
const CANDIDATE_FILE: &str = "candidate.json";

/// What a candidate pins, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub images: Vec<StoredImage>,
    pub debs: Vec<StoredDeb>,
    pub os: StoredOs,
}

/// An image in the store's OCI layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredImage {
    /// `host/path`, e.g. `ghcr.io/cybozu/etcd`.
    pub repository: String,
    pub tag: String,
    /// `sha256:<hex>` of the manifest or index.
    pub digest: String,
}

impl StoredImage {
    /// The repository path within its registry, e.g. `cybozu/etcd`.
    pub fn path(&self) -> Result<&str> {
        self.repository
            .split_once('/')
            .map(|(_, path)| path)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "stored image {:?}: expected host/path",
                    self.repository
                ))
            })
    }
}

/// A deb in the store, as a release asset of its GitHub repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredDeb {
    /// `owner/name`.
    pub github: String,
    pub release: String,
    pub asset: String,
    /// `sha256:<hex>`.
    pub sha256: String,
}

/// The OS image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOs {
    pub channel: String,
    pub version: String,
    /// `sha512:<hex>` of the kernel and of the initrd.
    pub kernel_sha512: String,
    pub initrd_sha512: String,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub files: usize,
    pub bytes: u64,
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OCI image layout of the images.
    pub fn oci_dir(&self) -> PathBuf {
        self.dir.join("oci")
    }

    /// Where the deb with `sha256` (`sha256:<hex>`) is kept.
    pub fn deb_path(&self, sha256: &str) -> Result<PathBuf> {
        Ok(self.dir.join("debs").join(hex_of(sha256, "sha256:", 64)?))
    }

    /// Where the OS file with `sha512` (`sha512:<hex>`) is kept.
    pub fn os_path(&self, sha512: &str) -> Result<PathBuf> {
        Ok(self.dir.join("os").join(hex_of(sha512, "sha512:", 128)?))
    }

    /// Records what the candidate pins (atomically; the store is usable from then on).
    pub fn write_candidate(&self, candidate: &Candidate) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(candidate)?;
        text.push(b'\n');
        write_atomically(&self.dir.join(CANDIDATE_FILE), &text)
    }

    /// What the candidate pins; an error names the file when it is missing or malformed.
    pub fn candidate(&self) -> Result<Candidate> {
        let path = self.dir.join(CANDIDATE_FILE);
        let text = std::fs::read(&path).map_err(Error::io(format!(
            "reading {} (has `cargo xtask nightly` brought the candidate in?)",
            path.display()
        )))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// The bytes of everything in the store.
    pub fn size(&self) -> Result<u64> {
        Ok(files_under(&self.dir)?.iter().map(|(_, len, _)| len).sum())
    }

    /// Removes every blob, deb and OS file that `candidate` does not use and that was last
    /// used longer than `keep_unused` ago, and drops the images `candidate` does not pin from
    /// the layout's `index.json`.
    pub fn prune(&self, candidate: &Candidate, keep_unused: Duration) -> Result<Pruned> {
        let mut used = BTreeSet::new();
        for image in &candidate.images {
            self.reachable(&image.digest, &mut used)?;
        }
        let mut keep: BTreeSet<PathBuf> = used
            .iter()
            .map(|digest| self.blob_path(digest))
            .collect::<Result<_>>()?;
        for deb in &candidate.debs {
            keep.insert(self.deb_path(&deb.sha256)?);
        }
        keep.insert(self.os_path(&candidate.os.kernel_sha512)?);
        keep.insert(self.os_path(&candidate.os.initrd_sha512)?);
        self.drop_unpinned_entries(candidate)?;
        let now = SystemTime::now();
        let mut pruned = Pruned::default();
        for sub in ["oci/blobs/sha256", "debs", "os"] {
            for (path, len, modified) in files_under(&self.dir.join(sub))? {
                let idle = now.duration_since(modified).unwrap_or_default();
                if keep.contains(&path) || idle < keep_unused {
                    continue;
                }
                std::fs::remove_file(&path)
                    .map_err(Error::io(format!("removing {}", path.display())))?;
                pruned.files += 1;
                pruned.bytes += len;
            }
        }
        Ok(pruned)
    }

    /// Where the layout keeps the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .oci_dir()
            .join("blobs/sha256")
            .join(hex_of(digest, "sha256:", 64)?))
    }

    /// The bytes of the blob `digest` of the layout, checked against the digest.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        read_checked(&self.blob_path(digest)?, digest)
    }

    /// The bytes of the deb with `sha256`, checked against it.
    pub fn deb(&self, sha256: &str) -> Result<Vec<u8>> {
        read_checked(&self.deb_path(sha256)?, sha256)
    }

    /// The bytes of the OS file with `sha512`, checked against it.
    pub fn os_file(&self, sha512: &str) -> Result<Vec<u8>> {
        read_checked(&self.os_path(sha512)?, sha512)
    }

    /// Puts `digest` and every blob it refers to (the manifests of an index, the config and
    /// layers of a manifest) that the store holds into `out`.
    fn reachable(&self, digest: &str, out: &mut BTreeSet<String>) -> Result<()> {
        if !out.insert(digest.to_owned()) {
            return Ok(());
        }
        let Ok(bytes) = self.blob(digest) else {
            return Ok(());
        };
        let refs = references(&bytes);
        for child in refs.manifests {
            self.reachable(&child, out)?;
        }
        out.extend(refs.blobs);
        Ok(())
    }

    fn drop_unpinned_entries(&self, candidate: &Candidate) -> Result<()> {
        let path = self.oci_dir().join("index.json");
        let mut index: Value = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        let pinned = |entry: &Value| {
            let text = |pointer: &str| entry.pointer(pointer).and_then(Value::as_str);
            candidate.images.iter().any(|image| {
                text("/digest") == Some(image.digest.as_str())
                    && text("/annotations/io.cybozu.neco.repository")
                        == Some(image.repository.as_str())
            })
        };
        let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let before = manifests.len();
        manifests.retain(pinned);
        if manifests.len() != before {
            let mut text = serde_json::to_vec_pretty(&index)?;
            text.push(b'\n');
            write_atomically(&path, &text)?;
        }
        Ok(())
    }
}

/// What a manifest or index refers to.
#[derive(Debug, Default)]
pub struct References {
    /// The document's `mediaType`, when it names one.
    pub media_type: Option<String>,
    /// The manifests of an index.
    pub manifests: Vec<String>,
    /// The config and layers of an image manifest.
    pub blobs: Vec<String>,
}

/// The digests a manifest or index document names (nothing for what is not JSON).
pub fn references(bytes: &[u8]) -> References {
    let document: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let digests = |key: &str| -> Vec<String> {
        match document.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|d| d.get("digest").and_then(Value::as_str).map(str::to_owned))
                .collect(),
            Some(d) => d
                .get("digest")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    };
    let mut blobs = digests("config");
    blobs.extend(digests("layers"));
    References {
        media_type: document
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned),
        manifests: digests("manifests"),
        blobs,
    }
}

/// The hex of `digest`, which must be `prefix` and `len` lowercase hex digits.
fn hex_of<'a>(digest: &'a str, prefix: &str, len: usize) -> Result<&'a str> {
    match digest.strip_prefix(prefix) {
        Some(hex)
            if hex.len() == len
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidArgument(format!(
            "{digest:?} is not {prefix}<{len} lowercase hex digits>"
        ))),
    }
}

/// The content of `path`, which must hash to `digest` (`sha256:…` or `sha512:…`).
fn read_checked(path: &Path, digest: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let got = if digest.starts_with("sha512:") {
        crate::sha512_digest(&bytes)
    } else {
        crate::sha256_digest(&bytes)
    };
    if got != digest {
        return Err(Error::InvalidArgument(format!(
            "{}: the content hashes to {got}, not {digest}",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Every regular file under `dir` (none when it does not exist): path, length, mtime.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("listing {}", d.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", d.display())))?;
            let meta = entry
                .metadata()
                .map_err(Error::io(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((entry.path(), meta.len(), modified));
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` through a synced temporary file renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(Error::io(format!("creating a file in {}", dir.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(Error::io(format!("writing {}", path.display())))?;
    file.persist(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()))(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_manifests_and_indexes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "config": {"digest": d('a')},
            "layers": [{"digest": d('b')}, {"digest": d('c')}],
        }))
        .unwrap_or_default();
        let refs = references(&manifest);
        assert_eq!(refs.blobs, [d('a'), d('b'), d('c')]);
        assert!(refs.manifests.is_empty());
        let index = serde_json::to_vec(&serde_json::json!({
            "manifests": [{"digest": d('d')}, {"digest": d('e')}],
        }))
        .unwrap_or_default();
        assert_eq!(references(&index).manifests, [d('d'), d('e')]);
        assert!(references(b"not json").blobs.is_empty());
    }

    #[test]
    fn paths_take_checked_digests_only() {
        let store = Store::new("/store");
        let hex = "ab".repeat(32);
        assert_eq!(
            store.deb_path(&format!("sha256:{hex}")).ok(),
            Some(PathBuf::from(format!("/store/debs/{hex}")))
        );
        assert!(store.deb_path("sha256:../../etc/passwd").is_err());
        assert!(store.os_path(&format!("sha256:{hex}")).is_err());
        assert!(store
            .os_path(&format!("sha512:{}", "cd".repeat(64)))
            .is_ok());
    }
}
