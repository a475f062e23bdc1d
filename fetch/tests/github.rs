//! The GitHub client against loopback servers: dctest's GitHub stand-in, and tiny servers for
//! what the stand-in does not do (a redirect to another host, rate limits).
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use common::{api, http, seen, serve, taken, LogBuffer, HOST_A, HOST_B};
use dctest::{sha256_digest, AssetSpec, GitHubStandIn, ReleaseSpec};
use fetch::github::{Asset, GitHub, GitHubError};
use fetch::http::HttpError;
use fetch::Secret;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

fn standin(token: Option<&str>) -> GitHubStandIn {
    GitHubStandIn::start(token.map(str::to_owned)).expect("start the GitHub stand-in")
}

/// Bytes that are not all alike, so a truncated or shifted download would show.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn releases_follow_every_page() {
    let gh_server = standin(None);
    for n in 1..=205 {
        gh_server.add_release("cybozu-go/many", ReleaseSpec::new(&format!("v{n}")));
    }
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);

    let releases = github.releases("cybozu-go/many").await.unwrap();

    let tags: Vec<&str> = releases.iter().map(|r| r.tag_name.as_str()).collect();
    assert_eq!(tags.len(), 205);
    assert_eq!(tags[0], "v205", "newest first, as GitHub lists them");
    assert_eq!(tags[204], "v1");
    let pages: Vec<Option<String>> = gh_server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/repos/cybozu-go/many/releases")
        .map(|r| r.query)
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages[0].as_deref(), Some("per_page=100"));
    assert!(
        pages[2].as_deref().is_some_and(|q| q.contains("page=3")),
        "{pages:?}"
    );
}

#[tokio::test]
async fn releases_of_an_unknown_repository_name_the_url() {
    let gh_server = standin(None);
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);
    let e = github.releases("cybozu-go/nothing").await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "{}/repos/cybozu-go/nothing/releases",
            gh_server.base_url()
        )),
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
}

#[tokio::test]
async fn releases_and_assets_carry_their_fields() {
    let gh_server = standin(None);
    let bytes = content(1000);
    let id = gh_server.add_release(
        "cybozu-go/neco",
        ReleaseSpec::new("release-2026.11.26-1")
            .prerelease(true)
            .asset(AssetSpec::new(
                "neco_2026.11.26-1_amd64.deb",
                bytes.clone(),
                true,
            )),
    );
    let view = gh_server.releases("cybozu-go/neco").remove(0);
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);

    let release = github
        .release_by_tag("cybozu-go/neco", "release-2026.11.26-1")
        .await
        .unwrap()
        .expect("the release");

    assert_eq!(release.id, id);
    assert_eq!(release.tag_name, "release-2026.11.26-1");
    assert_eq!(release.name.as_deref(), Some("release-2026.11.26-1"));
    assert!(release.prerelease);
    assert!(!release.draft);
    assert!(
        release
            .html_url
            .ends_with("/cybozu-go/neco/releases/tag/release-2026.11.26-1"),
        "{}",
        release.html_url
    );
    assert_eq!(release.published_at, view.published_at);
    assert!(release.published_at.is_some());
    let [asset] = release.assets.as_slice() else {
        panic!("one asset: {:?}", release.assets);
    };
    assert_eq!(asset.id, view.assets[0].id);
    assert_eq!(asset.name, "neco_2026.11.26-1_amd64.deb");
    assert_eq!(asset.size, 1000);
    assert_eq!(asset.state, "uploaded");
    assert!(asset.is_uploaded());
    assert!(
        asset
            .browser_download_url
            .starts_with(&format!("{}/download/", gh_server.base_url())),
        "{}",
        asset.browser_download_url
    );
    assert_eq!(
        asset.digest.as_deref(),
        Some(sha256_digest(&bytes).as_str())
    );
}

#[tokio::test]
async fn latest_is_the_newest_full_release() {
    let gh_server = standin(None);
    let repo = "cybozu-go/neco";
    gh_server.add_release(repo, ReleaseSpec::new("release-2026.11.24-1"));
    gh_server.add_release(repo, ReleaseSpec::new("release-2026.11.25-1"));
    gh_server.add_release(
        repo,
        ReleaseSpec::new("release-2026.11.26-1").prerelease(true),
    );
    gh_server.add_release(repo, ReleaseSpec::new("release-2026.11.27-1").draft(true));
    gh_server.add_release(
        "cybozu-go/only-pre",
        ReleaseSpec::new("release-2026.11.26-1").prerelease(true),
    );
    gh_server.add_repo("cybozu-go/empty");
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);

    let latest = github
        .latest_release(repo)
        .await
        .unwrap()
        .expect("a release");
    assert_eq!(latest.tag_name, "release-2026.11.25-1");
    assert!(!latest.prerelease && !latest.draft);

    // GitHub answers 404 when there is no full release.
    assert!(github
        .latest_release("cybozu-go/only-pre")
        .await
        .unwrap()
        .is_none());
    assert!(github
        .latest_release("cybozu-go/empty")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn release_by_tag_and_missing_tags() {
    let gh_server = standin(None);
    let repo = "cybozu-go/neco";
    gh_server.add_release(repo, ReleaseSpec::new("release-2026.11.25-1"));
    gh_server.add_release(
        repo,
        ReleaseSpec::new("release-2026.11.26-1").prerelease(true),
    );
    gh_server.add_release(repo, ReleaseSpec::new("release-2026.11.27-1").draft(true));
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);

    let pre = github
        .release_by_tag(repo, "release-2026.11.26-1")
        .await
        .unwrap()
        .expect("the pre-release");
    assert_eq!(pre.tag_name, "release-2026.11.26-1");
    assert!(pre.prerelease);
    assert!(github
        .release_by_tag(repo, "release-2026.11.28-1")
        .await
        .unwrap()
        .is_none());
    // Drafts are not published, so GitHub does not find them by tag.
    assert!(github
        .release_by_tag(repo, "release-2026.11.27-1")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn assets_download_through_the_redirect_and_hash() {
    let gh_server = standin(None);
    let repo = "cybozu-go/neco";
    let plain = content(300_000);
    let digested = content(4321);
    gh_server.add_release(
        repo,
        ReleaseSpec::new("release-2026.11.26-1")
            .asset(AssetSpec::new("plain.deb", plain.clone(), false))
            .asset(AssetSpec::new("digested.deb", digested.clone(), true)),
    );
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);
    let release = github
        .release_by_tag(repo, "release-2026.11.26-1")
        .await
        .unwrap()
        .expect("the release");
    let [plain_asset, digested_asset] = release.assets.as_slice() else {
        panic!("two assets: {:?}", release.assets);
    };

    let got = github.download_asset(plain_asset).await.unwrap();
    assert_eq!(got.as_ref(), plain.as_slice());
    let got = github.download_asset(digested_asset).await.unwrap();
    assert_eq!(got.as_ref(), digested.as_slice());
    let downloads = |server: &GitHubStandIn| {
        server
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/download/"))
            .count()
    };
    assert_eq!(downloads(&gh_server), 2, "{:?}", gh_server.requests());

    // Without GitHub's digest the asset is downloaded and hashed; with it, it is not.
    assert_eq!(
        github.asset_sha256(plain_asset).await.unwrap(),
        sha256_digest(&plain)
    );
    assert_eq!(downloads(&gh_server), 3);
    assert_eq!(
        github.asset_sha256(digested_asset).await.unwrap(),
        sha256_digest(&digested)
    );
    assert_eq!(downloads(&gh_server), 3);
}

#[tokio::test]
async fn downloads_are_checked_against_size_and_digest() {
    let gh_server = standin(None);
    let repo = "cybozu-go/neco";
    gh_server.add_release(
        repo,
        ReleaseSpec::new("v1").asset(AssetSpec::new("a.deb", content(100), true)),
    );
    let http = http(1);
    let github = GitHub::new(&http, api(&gh_server.base_url()), None);
    let release = github.release_by_tag(repo, "v1").await.unwrap().unwrap();
    let asset = &release.assets[0];

    let wrong_size = Asset {
        size: 99,
        ..asset.clone()
    };
    let e = github.download_asset(&wrong_size).await.unwrap_err();
    assert!(
        matches!(&e, GitHubError::SizeMismatch { url, expected: 99, got: 100 } if url == &asset.url),
        "{e}"
    );

    let wrong_digest = Asset {
        digest: Some(sha256_digest(b"something else")),
        ..asset.clone()
    };
    let e = github.download_asset(&wrong_digest).await.unwrap_err();
    assert!(matches!(&e, GitHubError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&asset.url), "{e}");

    let bad_digest = Asset {
        digest: Some("sha256:ABC".into()),
        ..asset.clone()
    };
    let e = github.asset_sha256(&bad_digest).await.unwrap_err();
    assert!(matches!(&e, GitHubError::BadDigest { .. }), "{e}");
    assert!(e.to_string().contains(&asset.url), "{e}");
}

#[tokio::test]
async fn the_token_is_sent_as_bearer() {
    const TOKEN: &str = "gh-required-token";
    let gh_server = standin(Some(TOKEN));
    let repo = "cybozu-go/neco";
    let bytes = content(64);
    gh_server.add_release(
        repo,
        ReleaseSpec::new("v1").asset(AssetSpec::new("a.deb", bytes.clone(), false)),
    );
    let http = http(1);
    let base = api(&gh_server.base_url());

    let anonymous = GitHub::new(&http, base.clone(), None);
    let e = anonymous.releases(repo).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("{base}repos/cybozu-go/neco/releases")),
        "{text}"
    );
    assert!(text.contains("401"), "{text}");
    let e = anonymous.latest_release(repo).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");

    let token = Secret::new(TOKEN);
    let github = GitHub::new(&http, base, Some(&token));
    assert_eq!(github.releases(repo).await.unwrap().len(), 1);
    let latest = github.latest_release(repo).await.unwrap().expect("v1");
    let got = github.download_asset(&latest.assets[0]).await.unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());
    let requests = gh_server.requests();
    let api_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.path.starts_with("/repos/"))
        .collect();
    assert_eq!(api_requests.len(), 5, "{requests:?}");
    assert!(!api_requests[0].has_authorization && !api_requests[1].has_authorization);
    assert!(
        api_requests[2..].iter().all(|r| r.has_authorization),
        "{requests:?}"
    );
}

/// The API host answers the asset with a redirect to a storage host (another address); the
/// storage host must not see the token.
#[tokio::test]
async fn authorization_is_dropped_on_a_redirect_to_another_host() {
    let storage_saw = seen::<Option<String>>();
    let log = Arc::clone(&storage_saw);
    let storage = serve(
        HOST_B,
        Router::new().fallback(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(authorization(&headers));
                "the bytes"
            }
        }),
    )
    .await;
    let api_saw = seen::<Option<String>>();
    let log = Arc::clone(&api_saw);
    let api_host = serve(
        HOST_A,
        Router::new().fallback(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(authorization(&headers));
                (
                    StatusCode::FOUND,
                    [(
                        header::LOCATION,
                        format!("http://{storage}/objects/a.deb?signature=x"),
                    )],
                )
            }
        }),
    )
    .await;
    let http = http(1);
    let token = Secret::new("tok-cross-host");
    let github = GitHub::new(&http, api(&format!("http://{api_host}")), Some(&token));
    let asset = Asset {
        id: 7,
        name: "a.deb".into(),
        url: format!("http://{api_host}/repos/o/r/releases/assets/7"),
        browser_download_url: String::new(),
        size: 9,
        state: "uploaded".into(),
        digest: None,
    };

    let got = github.download_asset(&asset).await.unwrap();

    assert_eq!(got.as_ref(), b"the bytes");
    assert_eq!(
        taken(&api_saw),
        [Some("Bearer tok-cross-host".to_owned())],
        "the API host gets the token"
    );
    assert_eq!(taken(&storage_saw), [None], "the storage host does not");
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A server answering every request with `status`, `headers` and `body`, counting requests.
async fn answering(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
) -> (String, Arc<Mutex<usize>>) {
    let count = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&count);
    let addr = serve(
        HOST_A,
        Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            let headers = headers.clone();
            async move {
                *counter.lock().unwrap() += 1;
                let mut response = (status, body).into_response();
                for (name, value) in headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        }),
    )
    .await;
    (format!("http://{addr}"), count)
}

const RATE_LIMITED: &str = r#"{"message":"API rate limit exceeded for 127.0.0.1."}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_403_rate_limit_is_its_own_error_with_the_reset() {
    let (base, count) = answering(
        StatusCode::FORBIDDEN,
        vec![
            ("x-ratelimit-limit", "60".into()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", "1700000000".into()),
        ],
        RATE_LIMITED,
    )
    .await;
    let http = http(3);
    let github = GitHub::new(&http, api(&base), None);

    let e = github.latest_release("o/r").await.unwrap_err();

    match &e {
        GitHubError::RateLimited { url, reset } => {
            assert_eq!(url, &format!("{base}/repos/o/r/releases/latest"));
            assert_eq!(*reset, Some(1_700_000_000));
        }
        other => panic!("not RateLimited: {other:?}"),
    }
    assert!(e.to_string().contains("rate limit"), "{e}");
    assert_eq!(*count.lock().unwrap(), 1, "a 403 is not retried");
}

#[tokio::test]
async fn a_429_is_retried_then_reported_as_a_rate_limit() {
    let (base, count) = answering(
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "30".into())],
        RATE_LIMITED,
    )
    .await;
    let http = http(3);
    let github = GitHub::new(&http, api(&base), None);
    let before = now();

    let e = github.releases("o/r").await.unwrap_err();

    let GitHubError::RateLimited { url, reset } = &e else {
        panic!("not RateLimited: {e:?}");
    };
    assert_eq!(url, &format!("{base}/repos/o/r/releases?per_page=100"));
    let reset = reset.expect("a reset from Retry-After");
    assert!((before + 30..=now() + 30).contains(&reset), "{reset}");
    assert_eq!(*count.lock().unwrap(), 3, "Http retried the 429");
}

#[tokio::test]
async fn a_403_that_is_no_rate_limit_is_access_denied() {
    let (base, _) = answering(
        StatusCode::FORBIDDEN,
        vec![
            ("x-ratelimit-remaining", "4999".into()),
            ("x-ratelimit-reset", "1700000000".into()),
        ],
        r#"{"message":"Resource not accessible by integration"}"#,
    )
    .await;
    let http = http(1);
    let github = GitHub::new(&http, api(&base), None);
    let e = github.releases("o/r").await.unwrap_err();
    assert!(
        matches!(&e, GitHubError::Http(HttpError::Status { status, .. }) if *status == StatusCode::FORBIDDEN),
        "{e:?}"
    );
    assert!(e.to_string().contains(&base), "{e}");
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_logs() {
    const TOKEN: &str = "tok-never-printed-42";
    let (logs, _guard) = LogBuffer::capture();

    let token = Secret::new(TOKEN);
    let http = http(3);
    let mut errors = Vec::new();

    // Refused: the stand-in wants another token.
    let gh_server = standin(Some("another-token"));
    gh_server.add_release("o/r", ReleaseSpec::new("v1"));
    let github = GitHub::new(&http, api(&gh_server.base_url()), Some(&token));
    errors.push(github.releases("o/r").await.unwrap_err());
    errors.push(github.latest_release("o/r").await.unwrap_err());
    errors.push(github.release_by_tag("o/r", "v1").await.unwrap_err());
    assert!(!format!("{github:?}").contains(TOKEN), "{github:?}");

    // Rate limited, after retries that are logged.
    let (base, _) = answering(StatusCode::TOO_MANY_REQUESTS, Vec::new(), RATE_LIMITED).await;
    let github = GitHub::new(&http, api(&base), Some(&token));
    errors.push(github.releases("o/r").await.unwrap_err());

    // Nothing listening, retried and logged too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let github = GitHub::new(&http, api(&format!("http://{closed_addr}")), Some(&token));
    errors.push(github.releases("o/r").await.unwrap_err());

    for e in &errors {
        let shown = format!("{e} / {e:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    let logged = logs.text();
    assert!(
        logged.contains("retrying"),
        "the retries are logged: {logged}"
    );
    assert!(!logged.contains(TOKEN), "{logged}");
}

#[tokio::test]
async fn a_short_429_is_waited_for() {
    let count = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&count);
    let addr = serve(
        HOST_A,
        Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            async move {
                let mut n = counter.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    (StatusCode::OK, "[]").into_response()
                }
            }
        }),
    )
    .await;
    let http = http(3);
    let github = GitHub::new(&http, api(&format!("http://{addr}")), None);
    assert!(github.releases("o/r").await.unwrap().is_empty());
    assert_eq!(*count.lock().unwrap(), 2);
}
