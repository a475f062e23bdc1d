//! Copying pinned images from Debian's real `docker-registry` into OCI image layouts, checked
//! by hashing every blob and, when it is installed, by `skopeo` as an external oracle.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::{sha256_digest, PushedImage, Registry};
use fetch::http::{Http, RetryPolicy};
use fetch::oci::{
    copy_image, copy_image_platforms, is_present, ImageSource, Platforms, REF_NAME, REPOSITORY,
};
use fetch::registry::{OCI_INDEX, OCI_MANIFEST};
use reqwest::Url;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The host the images are named by; the override points it at the loopback registry.
/// (`.invalid` never resolves, so nothing can leak to a real host.)
const HOST: &str = "registry.invalid";
const SKOPEO: &str = "/usr/bin/skopeo";

fn http() -> Http {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the HTTP client");
    Http::with_client(
        client,
        4,
        RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
        },
    )
}

/// Points [`HOST`] at `registry`.
fn overrides(registry: &Registry) -> BTreeMap<String, Url> {
    BTreeMap::from([(
        HOST.to_owned(),
        Url::parse(&format!("{}/", registry.base_url())).unwrap(),
    )])
}

fn source(pushed: &PushedImage) -> ImageSource {
    ImageSource {
        repository: format!("{HOST}/{}", pushed.repository),
        tag: pushed.tag.clone(),
        digest: pushed.manifest_digest.clone(),
        private: false,
    }
}

/// Checks what the image-layout spec asks and every blob's content; returns the digests of
/// the blobs and the entries of `index.json` (none when it does not exist).
fn check_layout(dir: &Path) -> (BTreeSet<String>, Vec<Value>) {
    let marker: Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(marker, json!({"imageLayoutVersion": "1.0.0"}));
    let mut blobs = BTreeSet::new();
    for file in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        let digest = sha256_digest(&std::fs::read(file.path()).unwrap());
        assert_eq!(
            digest,
            format!("sha256:{name}"),
            "blob {name} (a temporary or partial file?)"
        );
        blobs.insert(digest);
    }
    let entries = match std::fs::read(dir.join("index.json")) {
        Ok(bytes) => {
            let index: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(index["schemaVersion"], json!(2));
            assert_eq!(index["mediaType"], json!(OCI_INDEX));
            let entries = index["manifests"].as_array().unwrap().clone();
            for entry in &entries {
                let digest = entry["digest"].as_str().unwrap();
                assert!(
                    blobs.contains(digest),
                    "index.json lists {digest}, not in blobs"
                );
                let size = std::fs::metadata(dir.join("blobs/sha256").join(&digest[7..]))
                    .unwrap()
                    .len();
                assert_eq!(entry["size"], json!(size));
            }
            entries
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read index.json: {e}"),
    };
    (blobs, entries)
}

/// `(inode, mtime)` of every file of the layout: a rewrite changes at least one of them.
fn stamps(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path(), (meta.ino(), meta.modified().unwrap()));
            }
        }
    }
    out
}

fn skopeo(args: &[&str]) -> Option<std::process::Output> {
    if !Path::new(SKOPEO).is_file() {
        eprintln!("{SKOPEO} is not installed: the external check is skipped");
        return None;
    }
    let output = Command::new(SKOPEO).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output)
}

/// `skopeo` reads the image back: the raw manifest is the pinned one, and a copy out of the
/// layout (which verifies every blob) succeeds.
fn skopeo_accepts(dir: &Path, tag: &str, manifest_digest: &str) {
    let reference = format!("oci:{}:{tag}", dir.display());
    let Some(raw) = skopeo(&["inspect", "--raw", &reference]) else {
        return;
    };
    assert_eq!(sha256_digest(&raw.stdout), manifest_digest);
    let out = tempfile::tempdir().unwrap();
    let target = format!("dir:{}", out.path().join("copy").display());
    skopeo(&[
        "--insecure-policy",
        "--override-os",
        "linux",
        "--override-arch",
        "amd64",
        "copy",
        &reference,
        &target,
    ]);
}

#[tokio::test]
async fn a_copy_is_a_valid_layout_listing_the_image() {
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("images");

    assert!(!is_present(&layout, source(&pushed)).unwrap());
    let report = copy_image(
        &http(),
        &layout,
        &source(&pushed),
        &overrides(&registry),
        None,
    )
    .await
    .unwrap();

    let (blobs, entries) = check_layout(&layout);
    let mut expected: BTreeSet<String> = pushed.layer_digests.iter().cloned().collect();
    expected.insert(pushed.config_digest.clone());
    expected.insert(pushed.manifest_digest.clone());
    assert_eq!(blobs, expected);
    assert_eq!(
        report.downloaded.iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert!(report.present.is_empty());
    assert!(report.index_updated);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], json!(pushed.manifest_digest));
    assert_eq!(entries[0]["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(entries[0]["annotations"][REF_NAME], json!("3.5.15.1"));
    assert_eq!(
        entries[0]["annotations"][REPOSITORY],
        json!(format!("{HOST}/cybozu/etcd"))
    );
    assert!(is_present(&layout, source(&pushed)).unwrap());
    skopeo_accepts(&layout, "3.5.15.1", &pushed.manifest_digest);
}

#[tokio::test]
async fn copies_are_idempotent_and_a_new_pin_replaces_the_old_entry() {
    let registry = Registry::start().expect("start docker-registry");
    let old = registry.push_image("cybozu/etcd", "3.5.14.1").unwrap();
    let new = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let other = registry.push_image("cybozu/coredns", "1.11.3.1").unwrap();
    let http = http();
    let overrides = overrides(&registry);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path();

    copy_image(&http, layout, source(&old), &overrides, None)
        .await
        .unwrap();
    copy_image(&http, layout, source(&other), &overrides, None)
        .await
        .unwrap();
    copy_image(&http, layout, source(&new), &overrides, None)
        .await
        .unwrap();
    let (_, entries) = check_layout(layout);
    let listed: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["annotations"][REPOSITORY].as_str().unwrap(),
                e["annotations"][REF_NAME].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("registry.invalid/cybozu/etcd", "3.5.15.1"),
            ("registry.invalid/cybozu/coredns", "1.11.3.1"),
        ],
        "the new pin of etcd took the place of the old one"
    );

    assert!(is_present(layout, source(&new)).unwrap());
    assert!(is_present(layout, source(&other)).unwrap());
    assert!(
        !is_present(layout, source(&old)).unwrap(),
        "the old pin is no longer listed"
    );
    std::fs::remove_file(
        layout
            .join("blobs/sha256")
            .join(&other.layer_digests[0]["sha256:".len()..]),
    )
    .unwrap();
    assert!(
        !is_present(layout, source(&other)).unwrap(),
        "a layer is missing"
    );

    // A damaged blob is not "present": it is downloaded again and replaced.
    let layer = layout
        .join("blobs/sha256")
        .join(&new.layer_digests[0]["sha256:".len()..]);
    std::fs::write(&layer, b"damaged").unwrap();
    let repaired = copy_image(&http, layout, source(&new), &overrides, None)
        .await
        .unwrap();
    assert_eq!(repaired.downloaded, vec![new.layer_digests[0].clone()]);
    assert!(!repaired.index_updated);
    check_layout(layout);

    // With everything in place, a copy needs no registry at all and writes nothing.
    let before = stamps(layout);
    drop(registry);
    let again = copy_image(&http, layout, source(&new), &overrides, None)
        .await
        .unwrap();
    assert!(again.downloaded.is_empty(), "{again:?}");
    assert_eq!(again.present.len(), 3, "{again:?}");
    assert!(!again.index_updated);
    assert_eq!(stamps(layout), before, "no file was rewritten");
    skopeo_accepts(layout, "3.5.15.1", &new.manifest_digest);
}

#[tokio::test]
async fn a_wrong_pinned_digest_fails_naming_the_image_and_both_digests() {
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = sha256_digest(b"not the manifest");
    let image = ImageSource {
        digest: wrong.clone(),
        ..source(&pushed)
    };

    let e = copy_image(&http(), dir.path(), &image, &overrides(&registry), None)
        .await
        .unwrap_err();

    let text = e.to_string();
    assert!(
        text.starts_with("image registry.invalid/cybozu/etcd:3.5.15.1: "),
        "{text}"
    );
    assert!(text.contains(&wrong), "{text}");
    assert!(text.contains(&pushed.manifest_digest), "{text}");
    assert!(
        text.contains(&format!(
            "{}/v2/cybozu/etcd/manifests/{wrong}",
            registry.base_url()
        )),
        "{text}"
    );
    let (blobs, entries) = check_layout(dir.path());
    assert!(blobs.is_empty(), "{blobs:?}");
    assert!(entries.is_empty());
}

#[tokio::test]
async fn a_deleted_manifest_fails_naming_the_image() {
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    registry
        .delete_manifest("cybozu/etcd", &pushed.manifest_digest)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let e = copy_image(
        &http(),
        dir.path(),
        source(&pushed),
        &overrides(&registry),
        None,
    )
    .await
    .unwrap_err();

    let text = e.to_string();
    assert!(
        text.starts_with("image registry.invalid/cybozu/etcd:3.5.15.1: "),
        "{text}"
    );
    assert!(text.contains(&pushed.manifest_digest), "{text}");
    assert!(text.contains("is not in the registry"), "{text}");
    assert!(
        text.contains("the tag 3.5.15.1 is not in the registry either"),
        "{text}"
    );
    let (blobs, entries) = check_layout(dir.path());
    assert!(blobs.is_empty() && entries.is_empty());
}

/// The data file of a blob in the registry's filesystem storage (distribution's layout).
fn stored_blob(registry: &Registry, digest: &str) -> PathBuf {
    let hex = &digest["sha256:".len()..];
    registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
async fn a_registry_serving_other_bytes_is_caught_and_nothing_partial_is_left() {
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let decoy = registry.push_image("cybozu/etcd", "3.5.14.1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http();
    let overrides = overrides(&registry);

    // A damaged layer in the registry's storage: the download is refused by digest.
    let layer = stored_blob(&registry, &pushed.layer_digests[0]);
    assert!(layer.is_file(), "{}", layer.display());
    std::fs::write(&layer, b"bit rot").unwrap();
    let e = copy_image(&http, dir.path(), source(&pushed), &overrides, None)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("image registry.invalid/cybozu/etcd:3.5.15.1: "),
        "{text}"
    );
    assert!(text.contains(&pushed.layer_digests[0]), "{text}");
    assert!(text.contains(&sha256_digest(b"bit rot")), "{text}");
    assert!(
        text.contains(&format!(
            "{}/v2/cybozu/etcd/blobs/{}",
            registry.base_url(),
            pushed.layer_digests[0]
        )),
        "{text}"
    );
    let (blobs, entries) = check_layout(dir.path());
    assert!(!blobs.contains(&pushed.layer_digests[0]));
    assert!(
        !blobs.contains(&pushed.manifest_digest),
        "the manifest comes last"
    );
    assert!(entries.is_empty(), "an incomplete image is not listed");

    // The pinned manifest's stored bytes replaced by another manifest.
    let manifest = stored_blob(&registry, &pushed.manifest_digest);
    std::fs::copy(stored_blob(&registry, &decoy.manifest_digest), &manifest).unwrap();
    let e = copy_image(&http, dir.path(), source(&pushed), &overrides, None)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("image registry.invalid/cybozu/etcd:3.5.15.1: "),
        "{text}"
    );
    assert!(text.contains(&pushed.manifest_digest), "{text}");
    assert!(text.contains(&decoy.manifest_digest), "{text}");
    let (blobs, entries) = check_layout(dir.path());
    assert!(!blobs.contains(&decoy.manifest_digest));
    assert!(entries.is_empty());
}

/// Puts `body` as `repository:reference` with `content_type`; returns the digest answered.
async fn put_manifest(
    registry: &Registry,
    repository: &str,
    reference: &str,
    content_type: &str,
    body: Vec<u8>,
) -> String {
    let url = format!(
        "{}/v2/{repository}/manifests/{reference}",
        registry.base_url()
    );
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(&url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "PUT {url}");
    response.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn manifest_size(registry: &Registry, repository: &str, digest: &str) -> usize {
    let url = format!("{}/v2/{repository}/manifests/{digest}", registry.base_url());
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_digest(&body), digest);
    body.len()
}

#[tokio::test]
async fn an_image_index_copies_the_index_and_the_linux_amd64_image() {
    let registry = Registry::start().expect("start docker-registry");
    let amd64 = registry.push_image("cybozu/multi", "1.0.0-amd64").unwrap();
    let arm64 = registry.push_image("cybozu/multi", "1.0.0-arm64").unwrap();
    let entry = |image: &PushedImage, size: usize, arch: &str| {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": size,
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    // arm64 first, so taking the first entry would be wrong.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            entry(&arm64, manifest_size(&registry, "cybozu/multi", &arm64.manifest_digest).await, "arm64"),
            entry(&amd64, manifest_size(&registry, "cybozu/multi", &amd64.manifest_digest).await, "amd64"),
        ],
    }))
    .unwrap();
    let index_digest =
        put_manifest(&registry, "cybozu/multi", "1.0.0", OCI_INDEX, index.clone()).await;
    assert_eq!(index_digest, sha256_digest(&index));
    let image = ImageSource {
        repository: format!("{HOST}/cybozu/multi"),
        tag: "1.0.0".to_owned(),
        digest: index_digest.clone(),
        private: false,
    };
    let dir = tempfile::tempdir().unwrap();

    copy_image(&http(), dir.path(), &image, &overrides(&registry), None)
        .await
        .unwrap();

    let (blobs, entries) = check_layout(dir.path());
    let mut expected: BTreeSet<String> = amd64.layer_digests.iter().cloned().collect();
    expected.extend([
        index_digest.clone(),
        amd64.manifest_digest.clone(),
        amd64.config_digest.clone(),
    ]);
    assert_eq!(blobs, expected, "the index and linux/amd64 only");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["mediaType"], json!(OCI_INDEX));
    assert_eq!(entries[0]["digest"], json!(index_digest));
    assert_eq!(entries[0]["annotations"][REF_NAME], json!("1.0.0"));
    assert!(is_present(dir.path(), &image).unwrap());
    skopeo_accepts(dir.path(), "1.0.0", &index_digest);

    // Every platform: what a registry accepts again with the same digest.
    let all = tempfile::tempdir().unwrap();
    copy_image_platforms(
        &http(),
        all.path(),
        &image,
        &overrides(&registry),
        None,
        Platforms::All,
    )
    .await
    .unwrap();
    let (blobs, entries) = check_layout(all.path());
    expected.extend(arm64.layer_digests.iter().cloned());
    expected.extend([arm64.manifest_digest.clone(), arm64.config_digest.clone()]);
    assert_eq!(blobs, expected, "the index and both platforms");
    assert_eq!(entries[0]["digest"], json!(index_digest));
}
