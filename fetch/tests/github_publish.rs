//! Publishing with the GitHub client against dctest's GitHub stand-in: creating and editing a
//! release, uploading assets to the release's `upload_url`, deleting assets, and the errors an
//! interrupted upload leaves behind.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{api, http};
use dctest::{sha256_digest, GitHubStandIn, ReleaseSpec, UploadFault};
use fetch::github::{GitHub, GitHubError, NewRelease, ReleaseEdit};
use fetch::http::HttpError;
use fetch::Secret;

const REPO: &str = "cybozu-go/neco-rs";
const TOKEN: &str = "ghp_publish-test-token";

fn standin() -> GitHubStandIn {
    let server = GitHubStandIn::start(Some(TOKEN.to_owned())).expect("start the GitHub stand-in");
    server.add_repo(REPO);
    server
}

fn draft(tag: &str) -> NewRelease {
    NewRelease {
        tag_name: tag.to_owned(),
        target_commitish: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        name: tag.to_owned(),
        body: "built by the tests".to_owned(),
        draft: true,
        prerelease: true,
    }
}

#[tokio::test]
async fn a_draft_is_created_then_published_as_a_prerelease() {
    let server = standin();
    let http = http(1);
    let token = Secret::new(TOKEN);
    let github = GitHub::new(&http, api(&server.base_url()), Some(&token));

    let created = github
        .create_release(REPO, &draft("release-2026.11.26-1"))
        .await
        .unwrap();
    assert!(created.draft && created.prerelease);
    assert_eq!(created.body.as_deref(), Some("built by the tests"));
    assert!(
        created.upload_url.ends_with("/assets{?name,label}"),
        "{}",
        created.upload_url
    );
    // A draft is found by id, not by tag (GitHub: "get a published release").
    assert!(github
        .release_by_tag(REPO, "release-2026.11.26-1")
        .await
        .unwrap()
        .is_none());
    let by_id = github.release(REPO, created.id).await.unwrap().unwrap();
    assert_eq!(by_id.tag_name, "release-2026.11.26-1");
    assert!(github.release(REPO, 999_999).await.unwrap().is_none());

    let published = github
        .edit_release(
            REPO,
            created.id,
            &ReleaseEdit {
                draft: Some(false),
                prerelease: Some(true),
                ..ReleaseEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(!published.draft && published.prerelease);
    assert!(published.published_at.is_some());
    let by_tag = github
        .release_by_tag(REPO, "release-2026.11.26-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_tag.id, created.id);
    let views = server.releases(REPO);
    assert_eq!(views.len(), 1);
    assert!(views[0].prerelease && !views[0].draft);

    // The tag is taken now.
    let err = github
        .create_release(REPO, &draft("release-2026.11.26-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GitHubError::Http(HttpError::Status { method, status, .. })
            if method == "POST" && status.as_u16() == 422),
        "{err}"
    );
}

#[tokio::test]
async fn assets_are_uploaded_to_the_upload_url_and_deleted() {
    let server = standin();
    let http = http(1);
    let token = Secret::new(TOKEN);
    let github = GitHub::new(&http, api(&server.base_url()), Some(&token));
    let release = github
        .create_release(REPO, &draft("release-2026.11.26-2"))
        .await
        .unwrap();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

    let asset = github
        .upload_asset(
            REPO,
            &release,
            "neco_2026.11.26-2_amd64.deb",
            "application/vnd.debian.binary-package",
            Bytes::from(content.clone()),
        )
        .await
        .unwrap();

    assert!(asset.is_uploaded());
    assert_eq!(asset.name, "neco_2026.11.26-2_amd64.deb");
    assert_eq!(asset.size, 100_000);
    assert_eq!(
        asset.digest.as_deref(),
        Some(sha256_digest(&content).as_str())
    );
    assert_eq!(server.asset_content(asset.id).unwrap(), content);
    let view = &server.releases(REPO)[0].assets[0];
    assert_eq!(view.content_type, "application/vnd.debian.binary-package");
    let upload = server
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/assets"))
        .unwrap();
    assert_eq!(
        upload.path,
        format!("/repos/{REPO}/releases/{}/assets", release.id)
    );
    assert_eq!(
        upload.query.as_deref(),
        Some("name=neco_2026.11.26-2_amd64.deb")
    );
    assert!(upload.has_authorization);
    // What was uploaded downloads with the same bytes.
    assert_eq!(github.download_asset(&asset).await.unwrap(), content);

    // The same name again is refused, naming method and URL.
    let err = github
        .upload_asset(
            REPO,
            &release,
            "neco_2026.11.26-2_amd64.deb",
            "application/octet-stream",
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("POST") && text.contains("422"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    github.delete_asset(REPO, asset.id).await.unwrap();
    assert!(server.releases(REPO)[0].assets.is_empty());
    let err = github.delete_asset(REPO, asset.id).await.unwrap_err();
    assert!(err.to_string().contains("DELETE"), "{err}");
}

#[tokio::test]
async fn an_interrupted_upload_leaves_a_starter_asset_to_delete() {
    let server = standin();
    let http = http(1);
    let token = Secret::new(TOKEN);
    let github = GitHub::new(&http, api(&server.base_url()), Some(&token));
    let release_id = server.add_release(
        REPO,
        ReleaseSpec::new("release-2026.11.26-3").prerelease(true),
    );
    let release = github.release(REPO, release_id).await.unwrap().unwrap();
    server.fail_next_upload(UploadFault::Interrupt);

    let err = github
        .upload_asset(
            REPO,
            &release,
            "neco.deb",
            "application/octet-stream",
            Bytes::from_static(b"deb"),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");

    let release = github.release(REPO, release_id).await.unwrap().unwrap();
    assert_eq!(release.assets.len(), 1);
    let starter = &release.assets[0];
    assert!(!starter.is_uploaded());
    assert_eq!(starter.state, "starter");
    // GitHub keeps the name taken until the starter asset is deleted.
    assert!(github
        .upload_asset(
            REPO,
            &release,
            "neco.deb",
            "application/octet-stream",
            Bytes::from_static(b"deb")
        )
        .await
        .is_err());
    github.delete_asset(REPO, starter.id).await.unwrap();
    let asset = github
        .upload_asset(
            REPO,
            &release,
            "neco.deb",
            "application/octet-stream",
            Bytes::from_static(b"deb"),
        )
        .await
        .unwrap();
    assert!(asset.is_uploaded());
    assert_eq!(server.asset_content(asset.id).unwrap(), b"deb");
}

#[tokio::test]
async fn a_corrupted_upload_shows_in_the_digest() {
    let server = standin();
    let http = http(1);
    let token = Secret::new(TOKEN);
    let github = GitHub::new(&http, api(&server.base_url()), Some(&token));
    let release_id = server.add_release(REPO, ReleaseSpec::new("release-2026.11.26-4"));
    let release = github.release(REPO, release_id).await.unwrap().unwrap();
    server.fail_next_upload(UploadFault::Corrupt);

    let asset = github
        .upload_asset(
            REPO,
            &release,
            "neco.deb",
            "application/octet-stream",
            Bytes::from_static(b"deb"),
        )
        .await
        .unwrap();

    assert!(asset.is_uploaded());
    assert_ne!(
        asset.digest.as_deref(),
        Some(sha256_digest(b"deb").as_str())
    );
}

#[tokio::test]
async fn publishing_needs_the_token() {
    let server = standin();
    let http = http(1);
    let github = GitHub::new(&http, api(&server.base_url()), None);
    let err = github
        .create_release(REPO, &draft("release-2026.11.26-5"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(server.releases(REPO).is_empty());
}
