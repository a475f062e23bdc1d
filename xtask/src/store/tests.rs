//! Bringing a candidate in from the simulated upstream (`dctest::upstream`): Debian's real
//! `docker-registry` behind token authentication with a multi-platform index and a private
//! image, the GitHub stand-in with a deb, the feed stand-in with the OS files.
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use artifacts_gen::generated::{PinnedDeb, PinnedImage, PinnedOs};
use dctest::mirror::MirrorSeed;
use dctest::upstream::{Upstream as SimulatedUpstream, UpstreamOptions};
use dctest::Registry;
use fetch::http::{HttpOptions, RetryPolicy};

const OS_VERSION: &str = "4200.1.0";
const INDEX: &str = "ghcr.io/cybozu/multi";
const PRIVATE: &str = "ghcr.io/cybozu-go/setup-hw";
const SEED: &str = r#"
[[image]]
repository = "ghcr.io/cybozu/etcd"
tags = ["3.5.15.1"]

[[image]]
repository = "ghcr.io/cybozu/multi"
tags = ["1.0.0"]

[[image]]
repository = "ghcr.io/cybozu-go/setup-hw"
tags = ["1.20.1"]

[[deb]]
github = "cybozu-go/etcdpasswd"
package = "etcdpasswd"
releases = [{ tag = "v1.4.9", version = "1.4.9" }]

[os_image]
channel = "stable"
versions = ["4200.1.0"]
"#;

struct Upstream {
    upstream: SimulatedUpstream,
    pins: PinnedSet,
}

impl Upstream {
    fn start() -> Self {
        let seed = MirrorSeed::parse("the store test's seed", SEED).unwrap();
        let upstream = SimulatedUpstream::start(
            &seed,
            UpstreamOptions {
                private: vec![PRIVATE.to_owned()],
                multi_platform: vec![INDEX.to_owned()],
            },
        )
        .unwrap();
        let image = |repository: &str, tag: &str| PinnedImage {
            name: repository.rsplit('/').next().unwrap().to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest: upstream.digest(repository, tag).unwrap(),
            private: repository == PRIVATE,
            resolved: "2026-12-03".to_owned(),
        };
        let release = &upstream.github.releases("cybozu-go/etcdpasswd")[0];
        let deb = upstream.github.asset_content(release.assets[0].id).unwrap();
        let pins = PinnedSet {
            resolved_from: "the simulated upstream".to_owned(),
            images: vec![
                image("ghcr.io/cybozu/etcd", "3.5.15.1"),
                image(INDEX, "1.0.0"),
                image(PRIVATE, "1.20.1"),
            ],
            debs: vec![PinnedDeb {
                name: "etcdpasswd".to_owned(),
                repository: "cybozu-go/etcdpasswd".to_owned(),
                release: "v1.4.9".to_owned(),
                asset: release.assets[0].name.clone(),
                sha256: fetch::sha256_digest(&deb),
                resolved: "2026-12-03".to_owned(),
            }],
            os_image: PinnedOs {
                channel: "stable".to_owned(),
                version: OS_VERSION.to_owned(),
                kernel_sha512: upstream
                    .feed
                    .served_sha512(OS_VERSION, dctest::feed::KERNEL_FILE)
                    .unwrap(),
                initrd_sha512: upstream
                    .feed
                    .served_sha512(OS_VERSION, dctest::feed::INITRD_FILE)
                    .unwrap(),
                resolved: "2026-12-03".to_owned(),
            },
        };
        Self { upstream, pins }
    }

    fn sources(&self) -> Sources {
        let (username, password) = self.upstream.credentials();
        Sources {
            registries: parse_overrides(&self.upstream.registry_overrides()).unwrap(),
            credentials: Some(Credentials {
                username: username.to_owned(),
                password: Secret::new(password),
            }),
            github_api: Url::parse(&format!("{}/", self.upstream.github.base_url())).unwrap(),
            github_token: None,
            os_image_base: Some(self.upstream.feed.file_base_template()),
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
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());

    let first = bring_in(&http(), dir.path(), &up.pins, &up.sources()).unwrap();
    // Three images (one an index of two platforms: every manifest and blob), one deb, two
    // OS files.
    assert_eq!(first.downloaded, 3 + (1 + 2 * 3) + 3 + 1 + 2, "{first:?}");
    assert_eq!(first.reused, 0, "{first:?}");
    assert!(first.size > 0);
    assert_eq!(store.candidate().unwrap(), candidate(&up.pins));
    let release = &up.upstream.github.releases("cybozu-go/etcdpasswd")[0];
    assert_eq!(
        Some(store.deb(&up.pins.debs[0].sha256).unwrap()),
        up.upstream.github.asset_content(release.assets[0].id)
    );
    let kernel = store.os_file(&up.pins.os_image.kernel_sha512).unwrap();
    assert!(String::from_utf8_lossy(&kernel).starts_with("upstream flatcar kernel"));
    // The private image was pulled with the credentials; the public ones anonymously.
    assert!(up.upstream.token().issued() > 0);
    assert_eq!(up.upstream.token().refused(), 0);

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
    let registry_requests = up.upstream.registry_requests().unwrap().len();
    let github_requests = up.upstream.github.requests().len();
    assert!(registry_requests > 0);
    let second = bring_in(&http(), dir.path(), &up.pins, &up.sources()).unwrap();
    assert_eq!(second.downloaded, 0, "{second:?}");
    assert_eq!(second.reused, first.downloaded, "{second:?}");
    assert_eq!(
        up.upstream.registry_requests().unwrap().len(),
        registry_requests,
        "{:#?}",
        up.upstream.registry_requests().unwrap()[registry_requests..].to_vec()
    );
    assert_eq!(up.upstream.github.requests().len(), github_requests);
    assert_eq!(second.pruned, 0);
}

#[test]
fn a_private_image_needs_the_credentials() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        credentials: None,
        ..up.sources()
    };
    let e = format!(
        "{:#}",
        bring_in(&http(), dir.path(), &up.pins, &sources).unwrap_err()
    );
    assert!(e.contains("ghcr.io/cybozu-go/setup-hw:1.20.1"), "{e}");
    assert!(e.contains(&up.upstream.registry_url()), "{e}");
    assert!(!e.contains(up.upstream.credentials().1), "{e}");
    assert!(up.upstream.token().refused() > 0);
    assert!(Store::new(dir.path()).candidate().is_err());
}

#[test]
fn a_blob_that_does_not_match_its_digest_names_the_image_and_records_nothing() {
    let up = Upstream::start();
    // Corrupt the layer of cybozu/etcd in the registry's own storage.
    let layer = dctest::ImageBlobs::build_as(
        "cybozu/etcd",
        "3.5.15.1",
        Some(dctest::upstream::ORIGIN),
        "amd64",
    )
    .unwrap()
    .layer_digest;
    let hex = layer.trim_start_matches("sha256:");
    let data = up
        .upstream
        .seeder()
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
        bring_in(&http(), dir.path(), &up.pins, &up.sources()).unwrap_err()
    );
    assert!(e.contains("ghcr.io/cybozu/etcd:3.5.15.1"), "{e}");
    assert!(e.contains(&up.upstream.registry_url()), "{e}");
    assert!(e.contains(&layer), "{e}");
    assert!(Store::new(dir.path()).candidate().is_err());
}

#[test]
fn old_entries_are_pruned_once_unused_for_long() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    bring_in(&http(), dir.path(), &up.pins, &up.sources()).unwrap();
    let before = store.size().unwrap();
    // The candidate no longer pins the index: its blobs stay while recently used, and go
    // when nothing has used them for longer than the keep time.
    let mut smaller = candidate(&up.pins);
    smaller.images.retain(|i| i.repository != INDEX);
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
    let pinned: Vec<&str> = smaller.images.iter().map(|i| i.digest.as_str()).collect();
    assert_eq!(listed, pinned);
    // What the candidate still pins is all there.
    for image in &smaller.images {
        store.blob(&image.digest).unwrap();
    }
}
