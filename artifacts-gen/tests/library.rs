//! The resolver against real loopback servers of `dctest`: the OCI registry stand-in, Debian's
//! real `docker-registry`, the GitHub releases stand-in and the OS feed. No mocks: every answer
//! goes over HTTP.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use artifacts_gen::manifest::{Kind, Manifest};
use artifacts_gen::policy::{Drop, Verdict};
use artifacts_gen::resolve::{Endpoints, ResolveError, Resolver, RuleBook, SourceError};
use common::{deb, image, os, UNUSED_FEED};
use dctest::{
    sha256_digest, AssetSpec, Auth, Fault, FeedServer, GitHubStandIn, Registry, RegistryStandIn,
    RegistryStandInConfig, ReleaseSpec,
};
use fetch::http::{Http, RetryPolicy};
use fetch::registry::Credentials;
use fetch::Secret;
use reqwest::Url;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const TODAY: time::Date = time::macros::date!(2026 - 11 - 26);

/// Retries with millisecond delays, so failing paths stay fast.
fn http(limit: usize, attempts: u32) -> Http {
    Http::new(
        limit,
        RetryPolicy {
            attempts,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
        },
    )
    .expect("build the HTTP client")
}

fn url(base: &str) -> Url {
    Url::parse(&format!("{base}/")).expect("a base URL")
}

/// Endpoints sending `ghcr.io` to `registry_base`.
fn registry_endpoints(registry_base: &str) -> Endpoints {
    Endpoints {
        registries: BTreeMap::from([("ghcr.io".to_owned(), url(registry_base))]),
        github_api: None,
        os_feed: None,
        os_image_base: None,
    }
}

fn resolver(http: Http, endpoints: Endpoints) -> Resolver {
    Resolver {
        http,
        endpoints,
        credentials: None,
        github_token: None,
    }
}

fn manifest(text: &str) -> Manifest {
    Manifest::parse(Path::new("artifacts.toml"), text)
        .unwrap_or_else(|e| panic!("{e}\n--- manifest ---\n{text}"))
}

fn rules(manifest: &Manifest) -> RuleBook {
    RuleBook::new(manifest, false, &BTreeMap::new(), TODAY).expect("rules")
}

/// A manifest of images only (plus the OS table every manifest has).
fn images_manifest(images: &[String]) -> Manifest {
    manifest(&format!("{}{}", images.concat(), os("stable", UNUSED_FEED)))
}

/// Resolves the image `name` of `manifest` alone.
async fn resolve_image(
    resolver: &Resolver,
    manifest: &Manifest,
    name: &str,
) -> Result<artifacts_gen::resolve::Resolution<artifacts_gen::generated::PinnedImage>, ResolveError>
{
    let book = rules(manifest);
    let spec = manifest
        .image
        .iter()
        .find(|i| i.name() == name)
        .unwrap_or_else(|| panic!("no image {name} in the manifest"));
    resolver
        .image(spec, book.for_component(Kind::Image, name))
        .await
}

fn verdict_of<'a>(candidates: &'a [(String, Verdict)], tag: &str) -> &'a Verdict {
    candidates
        .iter()
        .find(|(t, _)| t == tag)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{tag} is not among the candidates {candidates:?}"))
}

#[tokio::test]
async fn registry_pagination_sees_every_tag_and_picks_the_numerically_highest() {
    // Served in lexical order two at a time: 3.5.9.1 comes after 3.5.15.1 and the highest
    // release is on the third of five pages.
    let tags = [
        "3.5.9.1",
        "latest",
        "3.5.15.1",
        "3.5",
        "3.5.16.1-rc.1",
        "3.5.10.2",
        "3.4.99.9",
        "3.5.15.0",
        "3.5.x.1",
    ];
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", tags)
            .default_page_size(Some(2)),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[image("ghcr.io/cybozu/etcd", &[])]);
    let r = resolver(http(4, 3), registry_endpoints(&standin.base_url()));

    let got = resolve_image(&r, &m, "etcd").await.expect("etcd resolves");

    let mut seen: Vec<&str> = got
        .selection
        .candidates
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    seen.sort_unstable();
    let mut want = tags.to_vec();
    want.sort_unstable();
    assert_eq!(seen, want, "every tag of every page is a candidate");
    assert_eq!(
        standin.requests_for("/v2/cybozu/etcd/tags/list"),
        5,
        "9 tags in pages of 2 are 5 requests"
    );
    assert_eq!(got.pin.tag, "3.5.15.1");
    assert_eq!(got.selection.chosen.as_deref(), Some("3.5.15.1"));
    let c = &got.selection.candidates;
    assert_eq!(verdict_of(c, "3.5.15.1"), &Verdict::Chosen);
    assert_eq!(verdict_of(c, "3.5.9.1"), &Verdict::Older);
    assert_eq!(verdict_of(c, "3.5.10.2"), &Verdict::Older);
    assert_eq!(
        verdict_of(c, "3.5.16.1-rc.1"),
        &Verdict::Dropped(Drop::Prerelease)
    );
    assert_eq!(verdict_of(c, "3.5"), &Verdict::Dropped(Drop::MovingTag));
    assert_eq!(verdict_of(c, "latest"), &Verdict::Dropped(Drop::MovingTag));
    assert_eq!(
        verdict_of(c, "3.5.x.1"),
        &Verdict::Dropped(Drop::Unparsable)
    );
    assert_eq!(
        got.pin.digest,
        RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1")
    );
    assert_eq!(got.pin.repository, "ghcr.io/cybozu/etcd");
    assert_eq!(got.pin.name, "etcd");
}

#[tokio::test]
async fn registry_anonymous_bearer_token_flow() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["3.5.14.1", "3.5.15.1"])
            .auth(Auth::AnonymousToken),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[image("ghcr.io/cybozu/etcd", &[])]);
    let r = resolver(http(4, 3), registry_endpoints(&standin.base_url()));

    let got = resolve_image(&r, &m, "etcd").await.expect("etcd resolves");

    assert_eq!(got.pin.tag, "3.5.15.1");
    assert_eq!(
        got.pin.digest,
        RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1")
    );
    assert_eq!(
        standin.tokens_issued(),
        1,
        "one token, earned on the first challenge, serves the tag list and the manifest"
    );
}

#[tokio::test]
async fn registry_private_repository_needs_credentials() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu-go/setup-hw", ["1.20.0", "1.20.1"])
            .repo("cybozu/etcd", ["3.5.15.1"])
            .auth(Auth::basic("robot", "pull-secret", ["cybozu-go/setup-hw"])),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[
        image("ghcr.io/cybozu-go/setup-hw", &["private = true"]),
        image("ghcr.io/cybozu/etcd", &[]),
    ]);

    // Without credentials: a clear error naming the image and the variables to set.
    let anonymous = resolver(http(4, 3), registry_endpoints(&standin.base_url()));
    let err = resolve_image(&anonymous, &m, "setup-hw")
        .await
        .expect_err("a private image needs credentials")
        .to_string();
    assert!(err.starts_with("image setup-hw: "), "{err}");
    assert!(err.contains("NECO_REGISTRY_USERNAME"), "{err}");
    assert!(err.contains("/v2/cybozu-go/setup-hw/"), "{err}");
    // The public image next to it needs none.
    let public = resolve_image(&anonymous, &m, "etcd")
        .await
        .expect("a public image resolves anonymously");
    assert_eq!(public.pin.tag, "3.5.15.1");

    // With credentials.
    let mut authenticated = resolver(http(4, 3), registry_endpoints(&standin.base_url()));
    authenticated.credentials = Some(Credentials {
        username: "robot".to_owned(),
        password: Secret::new("pull-secret"),
    });
    let got = resolve_image(&authenticated, &m, "setup-hw")
        .await
        .expect("setup-hw resolves with credentials");
    assert_eq!(got.pin.tag, "1.20.1");
    assert!(got.pin.private);
    assert_eq!(
        got.pin.digest,
        RegistryStandIn::manifest_digest_for("cybozu-go/setup-hw", "1.20.1")
    );

    // Wrong credentials: refused, and the password is not in the message.
    let mut wrong = resolver(http(4, 3), registry_endpoints(&standin.base_url()));
    wrong.credentials = Some(Credentials {
        username: "robot".to_owned(),
        password: Secret::new("not-the-password"),
    });
    let err = resolve_image(&wrong, &m, "setup-hw")
        .await
        .expect_err("wrong credentials are refused")
        .to_string();
    assert!(err.starts_with("image setup-hw: "), "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}

#[tokio::test]
async fn registry_429_is_retried_until_served() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["3.5.14.1", "3.5.15.1"])
            .fail_first_with_429(2)
            .retry_after_secs(0),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[image("ghcr.io/cybozu/etcd", &[])]);
    let r = resolver(http(4, 4), registry_endpoints(&standin.base_url()));

    let got = resolve_image(&r, &m, "etcd")
        .await
        .expect("etcd resolves after the 429s");

    assert_eq!(got.pin.tag, "3.5.15.1");
    assert_eq!(
        got.pin.digest,
        RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1")
    );
    // Two 429s for the tag list and two for the manifest.
    assert_eq!(standin.throttled(), 4);
    assert_eq!(standin.requests_for("/v2/cybozu/etcd/tags/list"), 3);
    assert_eq!(standin.requests_for("/v2/cybozu/etcd/manifests/"), 3);
}

#[tokio::test]
async fn registry_persistent_503_fails_after_the_configured_attempts() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/broken", ["1.0.0"])
            .fault("cybozu/broken", Fault::ServerError503Always),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[image("ghcr.io/cybozu/broken", &[])]);
    let r = resolver(http(4, 3), registry_endpoints(&standin.base_url()));

    let err = resolve_image(&r, &m, "broken")
        .await
        .expect_err("a registry that always answers 503 fails")
        .to_string();

    assert!(err.starts_with("image broken: "), "{err}");
    let tags_url = format!("{}/v2/cybozu/broken/tags/list", standin.base_url());
    assert!(err.contains(&tags_url), "{err} should name {tags_url}");
    assert!(err.contains("503"), "{err}");
    assert_eq!(
        standin.requests_for("/v2/cybozu/broken/tags/list"),
        3,
        "three attempts in all"
    );
}

#[tokio::test]
async fn registry_faults_are_errors_naming_component_and_url() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/html", ["1.0.0"])
            .repo("cybozu/badjson", ["1.0.0"])
            .repo("cybozu/nulltags", ["1.0.0"])
            .fault("cybozu/html", Fault::Html)
            .fault("cybozu/badjson", Fault::InvalidJson)
            .fault("cybozu/gone", Fault::NotFound)
            .fault("cybozu/nulltags", Fault::NullTags),
    )
    .expect("start the registry stand-in");
    let m = images_manifest(&[
        image("ghcr.io/cybozu/html", &[]),
        image("ghcr.io/cybozu/badjson", &[]),
        image("ghcr.io/cybozu/gone", &[]),
        image("ghcr.io/cybozu/nulltags", &[]),
    ]);
    let r = resolver(http(4, 3), registry_endpoints(&standin.base_url()));

    for (name, detail) in [
        ("html", "expected JSON"),
        ("badjson", "expected JSON"),
        ("gone", "404"),
    ] {
        let err = resolve_image(&r, &m, name)
            .await
            .expect_err("a broken answer is an error")
            .to_string();
        assert!(err.starts_with(&format!("image {name}: ")), "{err}");
        let tags_url = format!("{}/v2/cybozu/{name}/tags/list", standin.base_url());
        assert!(err.contains(&tags_url), "{err} should name {tags_url}");
        assert!(err.contains(detail), "{err} should say {detail}");
    }

    let err = resolve_image(&r, &m, "nulltags")
        .await
        .expect_err("no tags at all is no acceptable version");
    assert!(
        matches!(err.source, SourceError::NoAcceptable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.starts_with("image nulltags: "), "{text}");
    assert!(text.contains("no acceptable version"), "{text}");
    assert!(text.contains("--explain nulltags"), "{text}");
}

#[tokio::test]
async fn real_docker_registry_resolution() {
    let registry = Registry::start().expect("start docker-registry");
    let mut pushed = BTreeMap::new();
    for tag in [
        "3.5.9.1",
        "3.5.15.1",
        "3.5.10.1",
        "3.5.16.1-rc.1",
        "3.5",
        "latest",
    ] {
        let image = registry
            .push_image("cybozu/etcd", tag)
            .unwrap_or_else(|e| panic!("push cybozu/etcd:{tag}: {e}"));
        pushed.insert(tag, image);
    }
    let m = images_manifest(&[image("ghcr.io/cybozu/etcd", &[])]);
    let r = resolver(http(4, 3), registry_endpoints(&registry.base_url()));

    let got = resolve_image(&r, &m, "etcd").await.expect("etcd resolves");

    assert_eq!(got.selection.candidates.len(), 6, "{:?}", got.selection);
    assert_eq!(got.pin.tag, "3.5.15.1");
    assert_eq!(got.pin.digest, pushed["3.5.15.1"].manifest_digest);
    let distinct: std::collections::BTreeSet<_> =
        pushed.values().map(|p| &p.manifest_digest).collect();
    assert_eq!(distinct.len(), pushed.len(), "every tag has its own digest");
}

/// Adds a release with one asset and returns the asset's content.
fn release(
    github: &GitHubStandIn,
    repo: &str,
    spec: ReleaseSpec,
    asset: &str,
    with_digest: bool,
) -> Vec<u8> {
    let content = format!("{repo} {} {asset}\n", spec.tag_name).into_bytes();
    github.add_release(
        repo,
        spec.asset(AssetSpec::new(asset, content.clone(), with_digest)),
    );
    content
}

#[tokio::test]
async fn github_debs_order_by_version_across_pages() {
    let github = GitHubStandIn::start(None).expect("start the GitHub stand-in");
    let repo = "cybozu-go/etcdpasswd";
    // The highest version is created first, so it is listed last: on the second page.
    let chosen = release(
        &github,
        repo,
        ReleaseSpec::new("v1.4.10"),
        "etcdpasswd_1.4.10_amd64.deb",
        false,
    );
    for patch in 0..105 {
        let tag = format!("v1.0.{patch}");
        release(
            &github,
            repo,
            ReleaseSpec::new(&tag),
            &format!("etcdpasswd_1.0.{patch}_amd64.deb"),
            false,
        );
    }
    // Listed first: an older release, a newer draft, a newer GitHub pre-release, and a newer
    // release without a matching asset.
    release(
        &github,
        repo,
        ReleaseSpec::new("v1.4.9"),
        "etcdpasswd_1.4.9_amd64.deb",
        false,
    );
    release(
        &github,
        repo,
        ReleaseSpec::new("v1.5.0").draft(true),
        "etcdpasswd_1.5.0_amd64.deb",
        false,
    );
    release(
        &github,
        repo,
        ReleaseSpec::new("v1.6.0").prerelease(true),
        "etcdpasswd_1.6.0_amd64.deb",
        false,
    );
    release(
        &github,
        repo,
        ReleaseSpec::new("v1.7.0"),
        "etcdpasswd_1.7.0_arm64.deb",
        false,
    );
    assert_eq!(github.releases(repo).len(), 110);

    let m = manifest(&format!(
        "{}{}",
        deb("etcdpasswd", repo, r"^etcdpasswd_.*_amd64\.deb$", &[]),
        os("stable", UNUSED_FEED)
    ));
    let book = rules(&m);
    let r = resolver(
        http(4, 3),
        Endpoints {
            github_api: Some(url(&github.base_url())),
            ..Endpoints::upstream()
        },
    );

    let got = r
        .deb(&m.deb[0], book.for_component(Kind::Deb, "etcdpasswd"))
        .await
        .expect("etcdpasswd resolves");

    let lists: Vec<_> = github
        .requests()
        .into_iter()
        .filter(|q| q.path == format!("/repos/{repo}/releases"))
        .collect();
    assert_eq!(
        lists.len(),
        2,
        "110 releases are two pages of 100: {lists:?}"
    );
    assert!(
        lists[0]
            .query
            .as_deref()
            .is_some_and(|q| q.contains("per_page=100")),
        "{lists:?}"
    );
    assert_eq!(got.selection.candidates.len(), 110);
    assert_eq!(got.pin.release, "v1.4.10");
    assert_eq!(got.pin.asset, "etcdpasswd_1.4.10_amd64.deb");
    assert_eq!(got.pin.repository, repo);
    // No `digest` field: downloaded through the redirect and hashed.
    assert_eq!(got.pin.sha256, sha256_digest(&chosen));
    let downloads: Vec<_> = github
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/download/"))
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    let asset_api: Vec<_> = github
        .requests()
        .into_iter()
        .filter(|q| {
            q.path
                .starts_with(&format!("/repos/{repo}/releases/assets/"))
        })
        .collect();
    assert_eq!(
        asset_api.len(),
        1,
        "the asset's API URL is asked and redirects to the download: {asset_api:?}"
    );
    assert!(
        downloads[0].path.ends_with("/etcdpasswd_1.4.10_amd64.deb"),
        "{downloads:?}"
    );

    let c = &got.selection.candidates;
    assert_eq!(verdict_of(c, "v1.4.10"), &Verdict::Chosen);
    assert_eq!(verdict_of(c, "v1.4.9"), &Verdict::Older);
    assert_eq!(
        verdict_of(c, "v1.5.0"),
        &Verdict::Dropped(Drop::Unusable("draft release".into()))
    );
    assert_eq!(
        verdict_of(c, "v1.6.0"),
        &Verdict::Dropped(Drop::Unusable("marked pre-release on GitHub".into()))
    );
    assert!(
        matches!(verdict_of(c, "v1.7.0"), Verdict::Dropped(Drop::Unusable(why)) if why.contains("no asset matches")),
        "{c:?}"
    );
}

#[tokio::test]
async fn github_digest_field_is_used_when_present() {
    let github = GitHubStandIn::start(None).expect("start the GitHub stand-in");
    let repo = "cybozu-go/sabakan";
    release(
        &github,
        repo,
        ReleaseSpec::new("v3.1.3"),
        "sabakan_3.1.3_amd64.deb",
        true,
    );
    let chosen = release(
        &github,
        repo,
        ReleaseSpec::new("v3.1.4"),
        "sabakan_3.1.4_amd64.deb",
        true,
    );
    let m = manifest(&format!(
        "{}{}",
        deb("sabakan", repo, r"^sabakan_.*_amd64\.deb$", &[]),
        os("stable", UNUSED_FEED)
    ));
    let book = rules(&m);
    let r = resolver(
        http(4, 3),
        Endpoints {
            github_api: Some(url(&github.base_url())),
            ..Endpoints::upstream()
        },
    );

    let got = r
        .deb(&m.deb[0], book.for_component(Kind::Deb, "sabakan"))
        .await
        .expect("sabakan resolves");

    assert_eq!(got.pin.release, "v3.1.4");
    assert_eq!(got.pin.asset, "sabakan_3.1.4_amd64.deb");
    assert_eq!(got.pin.sha256, sha256_digest(&chosen));
    let fetched: Vec<_> = github
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/download/") || q.path.contains("/releases/assets/"))
        .collect();
    assert!(
        fetched.is_empty(),
        "GitHub's digest is used without downloading: {fetched:?}"
    );
}

#[tokio::test]
async fn feed_skips_current_and_picks_the_highest_version() {
    let feed = FeedServer::start("stable", &["3815.2.0", "3975.2.10", "3975.2.9", "999.0.0"])
        .expect("start the feed");
    let m = manifest(&os("stable", &feed.feed_url()));
    let book = rules(&m);
    let os_rules = book.for_component(Kind::Os, "stable");

    // The manifest's own URL.
    let r = resolver(http(4, 3), Endpoints::upstream());
    let got = r
        .os_image(&m.os_image, os_rules)
        .await
        .expect("the OS resolves");
    assert_eq!(got.pin.version, "3975.2.10");
    assert_eq!(got.pin.channel, "stable");
    let mut seen: Vec<&str> = got
        .selection
        .candidates
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, ["3815.2.0", "3975.2.10", "3975.2.9", "999.0.0"]);

    // An override replaces a feed URL that nobody serves.
    let unserved = manifest(&os("stable", "http://127.0.0.1:9/releases-stable.json"));
    let r = resolver(
        http(4, 3),
        Endpoints {
            os_feed: Some(Url::parse(&feed.feed_url()).expect("feed URL")),
            os_image_base: Some(feed.file_base_template()),
            ..Endpoints::upstream()
        },
    );
    let got = r
        .os_image(&unserved.os_image, os_rules)
        .await
        .expect("the OS resolves through the override");
    assert_eq!(got.pin.version, "3975.2.10");
    // The checksums come from the chosen release's `.DIGESTS`.
    assert_eq!(
        Some(got.pin.kernel_sha512),
        FeedServer::file_sha512("stable", "3975.2.10", dctest::feed::KERNEL_FILE)
    );
    assert_eq!(
        Some(got.pin.initrd_sha512),
        FeedServer::file_sha512("stable", "3975.2.10", dctest::feed::INITRD_FILE)
    );

    // Files nobody serves: the error names the checksum file's URL.
    let r = resolver(
        http(4, 1),
        Endpoints {
            os_image_base: Some("http://127.0.0.1:9/{channel}/".to_owned()),
            ..Endpoints::upstream()
        },
    );
    let e = r
        .os_image(&m.os_image, os_rules)
        .await
        .expect_err("no checksums")
        .to_string();
    assert!(
        e.contains(
            "http://127.0.0.1:9/stable/amd64-usr/3975.2.10/flatcar_production_pxe.vmlinuz.DIGESTS"
        ),
        "{e}"
    );
}

/// Ten images behind a slow registry, resolved with at most `limit` requests in flight.
async fn resolve_ten_slow_images(limit: usize) -> usize {
    let mut config = RegistryStandInConfig::new().latency(Duration::from_millis(100));
    let mut images = Vec::new();
    for i in 0..10 {
        config = config.repo(&format!("cybozu/img{i}"), ["1.0.0.1", "1.0.1.1"]);
        images.push(image(&format!("ghcr.io/cybozu/img{i}"), &[]));
    }
    let standin = RegistryStandIn::start(config).expect("start the registry stand-in");
    let feed = FeedServer::start("stable", &["3975.2.1"]).expect("start the feed");
    let m = manifest(&format!(
        "{}{}",
        images.concat(),
        os("stable", &feed.feed_url())
    ));
    let r = resolver(http(limit, 3), registry_endpoints(&standin.base_url()));

    let resolved = r
        .resolve_all(&m, &rules(&m))
        .await
        .unwrap_or_else(|errors| panic!("{errors:?}"));

    assert_eq!(resolved.images.len(), 10);
    for (i, got) in resolved.images.iter().enumerate() {
        assert_eq!(got.pin.name, format!("img{i}"), "manifest order is kept");
        assert_eq!(got.pin.tag, "1.0.1.1");
        assert_eq!(
            got.pin.digest,
            RegistryStandIn::manifest_digest_for(&format!("cybozu/img{i}"), "1.0.1.1")
        );
    }
    assert_eq!(resolved.os_image.pin.version, "3975.2.1");
    assert_eq!(
        standin.requests(),
        20,
        "a tag list and a manifest per image"
    );
    standin.max_in_flight()
}

#[tokio::test]
async fn resolve_all_is_concurrent_within_the_per_host_limit() {
    let peak = resolve_ten_slow_images(3).await;
    assert!(peak > 1, "requests were sent one at a time (peak {peak})");
    assert!(
        peak <= 3,
        "the per-host limit of 3 was exceeded (peak {peak})"
    );
    let peak = resolve_ten_slow_images(10).await;
    assert!(
        peak > 3,
        "a limit of 10 allows more than 3 in flight (peak {peak})"
    );
    assert!(
        peak <= 10,
        "the per-host limit of 10 was exceeded (peak {peak})"
    );
}

#[tokio::test]
async fn resolve_all_reports_every_failure() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["3.5.15.1"])
            .fault("cybozu/gone", Fault::NotFound)
            .fault("cybozu/empty", Fault::NullTags),
    )
    .expect("start the registry stand-in");
    let feed = FeedServer::start("stable", &["3975.2.1"]).expect("start the feed");
    let m = manifest(&format!(
        "{}{}{}{}",
        image("ghcr.io/cybozu/gone", &[]),
        image("ghcr.io/cybozu/etcd", &[]),
        image("ghcr.io/cybozu/empty", &[]),
        os("stable", &feed.feed_url())
    ));
    let r = resolver(http(4, 3), registry_endpoints(&standin.base_url()));

    let errors = r
        .resolve_all(&m, &rules(&m))
        .await
        .expect_err("two images fail");

    let names: Vec<&str> = errors.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["gone", "empty"]);
}
