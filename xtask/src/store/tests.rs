//! Bringing a candidate in from a simulated upstream: Debian's real `docker-registry` with a
//! multi-platform index, the GitHub stand-in with a deb, the feed stand-in with the OS files.
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use artifacts_gen::generated::{PinnedDeb, PinnedImage, PinnedOs};
use dctest::debs::DebPackage;
use dctest::{AssetSpec, FeedServer, GitHubStandIn, Registry, ReleaseSpec};
use fetch::http::{HttpOptions, RetryPolicy};

/// The host the images are named by; the overrides point it at the loopback registry.
const HOST: &str = "upstream.invalid";
const OS_VERSION: &str = "4200.1.0";

struct Upstream {
    registry: Registry,
    github: GitHubStandIn,
    feed: FeedServer,
    pins: PinnedSet,
    deb: Vec<u8>,
}

impl Upstream {
    fn start() -> Self {
        let registry = Registry::start().expect("start docker-registry");
        let plain = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
        let amd64 = registry.push_image("cybozu/multi", "1.0.0-amd64").unwrap();
        let arm64 = registry.push_image("cybozu/multi", "1.0.0-arm64").unwrap();
        let index = registry
            .push_index(
                "cybozu/multi",
                "1.0.0",
                &[(&arm64, "arm64"), (&amd64, "amd64")],
            )
            .unwrap();
        let github = GitHubStandIn::start(None).unwrap();
        let deb = DebPackage::simple("etcdpasswd", "1.4.9").build().unwrap();
        github.add_repo("cybozu-go/etcdpasswd");
        github.add_release(
            "cybozu-go/etcdpasswd",
            ReleaseSpec::new("v1.4.9").asset(AssetSpec::new(
                "etcdpasswd_1.4.9_amd64.deb",
                deb.clone(),
                true,
            )),
        );
        let feed = FeedServer::start("stable", &[OS_VERSION]).unwrap();
        let sha512 = |file| FeedServer::file_sha512("stable", OS_VERSION, file).unwrap();
        let image = |path: &str, tag: &str, digest: &str| PinnedImage {
            name: path.rsplit('/').next().unwrap().to_owned(),
            repository: format!("{HOST}/{path}"),
            tag: tag.to_owned(),
            digest: digest.to_owned(),
            private: false,
            resolved: "2026-12-03".to_owned(),
        };
        let pins = PinnedSet {
            resolved_from: "a simulated upstream".to_owned(),
            images: vec![
                image("cybozu/etcd", "3.5.15.1", &plain.manifest_digest),
                image("cybozu/multi", "1.0.0", &index),
            ],
            debs: vec![PinnedDeb {
                name: "etcdpasswd".to_owned(),
                repository: "cybozu-go/etcdpasswd".to_owned(),
                release: "v1.4.9".to_owned(),
                asset: "etcdpasswd_1.4.9_amd64.deb".to_owned(),
                sha256: fetch::sha256_digest(&deb),
                resolved: "2026-12-03".to_owned(),
            }],
            os_image: PinnedOs {
                channel: "stable".to_owned(),
                version: OS_VERSION.to_owned(),
                kernel_sha512: sha512(dctest::feed::KERNEL_FILE),
                initrd_sha512: sha512(dctest::feed::INITRD_FILE),
                resolved: "2026-12-03".to_owned(),
            },
        };
        Self {
            registry,
            github,
            feed,
            pins,
            deb,
        }
    }

    fn sources(&self) -> Sources {
        Sources {
            registries: BTreeMap::from([(
                HOST.to_owned(),
                Url::parse(&format!("{}/", self.registry.base_url())).unwrap(),
            )]),
            credentials: None,
            github_api: Url::parse(&format!("{}/", self.github.base_url())).unwrap(),
            github_token: None,
            os_image_base: Some(self.feed.file_base_template()),
        }
    }
}

fn http() -> Http {
    Http::with_options(HttpOptions {
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
        },
        direct: true,
        ..HttpOptions::default()
    })
    .unwrap()
}

#[test]
fn the_candidate_is_brought_in_once_and_served_with_its_digests() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());

    let first = bring_in(&http(), dir.path(), &upstream.pins, &upstream.sources()).unwrap();
    // Two images (one of them an index of two platforms, every manifest and blob), one deb,
    // two OS files.
    assert_eq!(first.downloaded, 3 + (1 + 2 * 3) + 1 + 2, "{first:?}");
    assert_eq!(first.reused, 0, "{first:?}");
    assert!(first.size > 0);
    assert_eq!(store.candidate().unwrap(), candidate(&upstream.pins));
    assert_eq!(
        store.deb(&upstream.pins.debs[0].sha256).unwrap(),
        upstream.deb
    );
    assert_eq!(
        store
            .os_file(&upstream.pins.os_image.kernel_sha512)
            .unwrap(),
        FeedServer::kernel_bytes("stable", OS_VERSION)
    );

    // Served again by another registry, every image has its pinned digest.
    let served = Registry::start().expect("start docker-registry");
    for image in &store.candidate().unwrap().images {
        served
            .push_stored(&store, image.path().unwrap(), &image.tag, &image.digest)
            .unwrap();
        assert_eq!(
            served
                .manifest_digest(image.path().unwrap(), &image.tag)
                .unwrap(),
            image.digest
        );
    }

    // The second run asks upstream nothing.
    let registry_requests = upstream.registry.requests().unwrap().len();
    let github_requests = upstream.github.requests().len();
    assert!(registry_requests > 0);
    let second = bring_in(&http(), dir.path(), &upstream.pins, &upstream.sources()).unwrap();
    assert_eq!(second.downloaded, 0, "{second:?}");
    assert_eq!(second.reused, first.downloaded, "{second:?}");
    assert_eq!(
        upstream.registry.requests().unwrap().len(),
        registry_requests,
        "{:#?}",
        upstream.registry.requests().unwrap()[registry_requests..].to_vec()
    );
    assert_eq!(upstream.github.requests().len(), github_requests);
    assert_eq!(second.pruned, 0);
}

#[test]
fn a_blob_that_does_not_match_its_digest_names_the_image_and_records_nothing() {
    let upstream = Upstream::start();
    // Corrupt the layer of cybozu/etcd in the registry's own storage.
    let layer = dctest::ImageBlobs::build("cybozu/etcd", "3.5.15.1")
        .unwrap()
        .layer_digest;
    let hex = layer.trim_start_matches("sha256:");
    let data = upstream
        .registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let e = format!(
        "{:#}",
        bring_in(&http(), dir.path(), &upstream.pins, &upstream.sources()).unwrap_err()
    );
    assert!(e.contains("upstream.invalid/cybozu/etcd:3.5.15.1"), "{e}");
    assert!(e.contains(&upstream.registry.base_url()), "{e}");
    assert!(e.contains(&layer), "{e}");
    assert!(Store::new(dir.path()).candidate().is_err());
}

#[test]
fn old_entries_are_pruned_once_unused_for_long() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    bring_in(&http(), dir.path(), &upstream.pins, &upstream.sources()).unwrap();
    let before = store.size().unwrap();
    // The candidate no longer pins the index: its blobs stay while recently used, and go
    // when nothing has used them for longer than the keep time.
    let mut smaller = candidate(&upstream.pins);
    smaller.images.retain(|i| i.tag != "1.0.0");
    assert_eq!(store.prune(&smaller, KEEP_UNUSED).unwrap().files, 0);
    let pruned = store.prune(&smaller, Duration::ZERO).unwrap();
    assert_eq!(pruned.files, 1 + 2 * 3, "{pruned:?}");
    assert!(store.size().unwrap() <= before - pruned.bytes);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.oci_dir().join("index.json")).unwrap())
            .unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [smaller.images[0].digest.as_str()]);
    // What the candidate still pins is all there.
    for image in &smaller.images {
        store.blob(&image.digest).unwrap();
    }
}
