//! The OCI registry client against loopback servers: Debian's real `docker-registry`, dctest's
//! registry stand-in (bearer tokens, private repositories), and tiny servers for what neither
//! does (wrong digests, a blob redirected to another host).
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use common::{api, http, seen, serve, taken, HOST_A, HOST_B};
use dctest::{sha256_digest, Auth, Registry, RegistryStandIn, RegistryStandInConfig};
use fetch::http::HttpError;
use fetch::registry::{Credentials, RegistryError, RepoClient, OCI_MANIFEST};
use fetch::Secret;
use std::sync::Arc;

#[tokio::test]
async fn manifests_and_blobs_of_the_real_registry() {
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let http = http(1);
    let mut client = RepoClient::new(&http, api(&registry.base_url()), "cybozu/etcd", None);

    let by_tag = client.get_manifest("3.5.15.1").await.unwrap();
    assert_eq!(by_tag.media_type, OCI_MANIFEST);
    assert_eq!(by_tag.digest, pushed.manifest_digest);
    assert_eq!(sha256_digest(&by_tag.bytes), pushed.manifest_digest);
    let by_digest = client.get_manifest(&pushed.manifest_digest).await.unwrap();
    assert_eq!(by_digest, by_tag);
    assert_eq!(
        client.manifest_digest("3.5.15.1").await.unwrap(),
        pushed.manifest_digest
    );

    let config = client.get_blob(&pushed.config_digest).await.unwrap();
    assert_eq!(sha256_digest(&config), pushed.config_digest);
    let layer = client.get_blob(&pushed.layer_digests[0]).await.unwrap();
    assert_eq!(sha256_digest(&layer), pushed.layer_digests[0]);

    let absent = sha256_digest(b"no such blob");
    let e = client.get_blob(&absent).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("/v2/cybozu/etcd/blobs/{absent}")),
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
    let e = client.get_manifest("9.9.9").await.unwrap_err();
    assert!(
        e.to_string().contains("/v2/cybozu/etcd/manifests/9.9.9"),
        "{e}"
    );
}

#[tokio::test]
async fn references_that_are_neither_tag_nor_digest_are_refused_before_any_request() {
    let http = http(1);
    let mut client = RepoClient::new(&http, api("http://127.0.0.1:9"), "a/b", None);
    for bad in ["../../x", "a/b", "sha512:00", ""] {
        let e = client.get_manifest(bad).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::BadReference { .. }),
            "{bad}: {e}"
        );
    }
    let e = client.get_blob("latest").await.unwrap_err();
    assert!(matches!(e, RegistryError::BadReference { .. }), "{e}");
}

#[tokio::test]
async fn manifests_of_a_private_repository_need_the_credentials() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu-go/setup-hw", ["1.20.1"])
            .auth(Auth::basic("robot", "pull-secret", ["cybozu-go/setup-hw"])),
    )
    .unwrap();
    let http = http(1);
    let expected = RegistryStandIn::manifest_digest_for("cybozu-go/setup-hw", "1.20.1");

    let mut anonymous =
        RepoClient::new(&http, api(&standin.base_url()), "cybozu-go/setup-hw", None);
    let e = anonymous.get_manifest("1.20.1").await.unwrap_err();
    assert!(matches!(e, RegistryError::NeedsCredentials { .. }), "{e:?}");

    let credentials = Credentials {
        username: "robot".to_owned(),
        password: Secret::new("pull-secret"),
    };
    let mut client = RepoClient::new(
        &http,
        api(&standin.base_url()),
        "cybozu-go/setup-hw",
        Some(&credentials),
    );
    let manifest = client.get_manifest("1.20.1").await.unwrap();
    assert_eq!(manifest.digest, expected);
    assert_eq!(manifest.media_type, OCI_MANIFEST);
    // The token earned is kept: asking by digest costs no second token.
    let issued = standin.tokens_issued();
    assert_eq!(
        client.get_manifest(&expected).await.unwrap().digest,
        expected
    );
    assert_eq!(standin.tokens_issued(), issued);
}

/// Bytes a tiny registry serves for a path, with the headers it adds.
fn serve_bytes(
    body: &'static [u8],
    headers: Vec<(&'static str, String)>,
) -> axum::response::Response {
    let mut response = (StatusCode::OK, body).into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("a header value"));
    }
    response
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;

#[tokio::test]
async fn digests_that_do_not_match_are_errors_naming_url_and_digests() {
    let right = sha256_digest(MANIFEST);
    let other = sha256_digest(b"other");
    let (right_c, other_c) = (right.clone(), other.clone());
    let addr = serve(
        HOST_A,
        Router::new().fallback(move |request: Request| {
            let (right, other) = (right_c.clone(), other_c.clone());
            async move {
                match request.uri().path() {
                    // Says it is `other`, but the bytes are MANIFEST.
                    "/v2/a/b/manifests/lying" => {
                        serve_bytes(MANIFEST, vec![("docker-content-digest", other)])
                    }
                    // Asked by digest `other`, serves MANIFEST without saying anything.
                    p if p == format!("/v2/a/b/manifests/{other}") => serve_bytes(MANIFEST, vec![]),
                    // Honest, and without a Content-Type: the document's mediaType counts.
                    "/v2/a/b/manifests/honest" => {
                        serve_bytes(MANIFEST, vec![("docker-content-digest", right)])
                    }
                    // A blob whose bytes are not what was asked for.
                    p if p == format!("/v2/a/b/blobs/{other}") => serve_bytes(b"tampered", vec![]),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        }),
    )
    .await;
    let http = http(1);
    let base = api(&format!("http://{addr}"));
    let mut client = RepoClient::new(&http, base, "a/b", None);

    let e = client.get_manifest("lying").await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{text}");
    assert!(text.contains(&right) && text.contains(&other), "{text}");
    assert!(text.contains("/v2/a/b/manifests/lying"), "{text}");

    let e = client.get_manifest(&other).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&right) && text.contains(&other), "{text}");
    assert!(text.contains("the digest asked for"), "{text}");

    let honest = client.get_manifest("honest").await.unwrap();
    assert_eq!(honest.digest, right);
    assert_eq!(honest.media_type, OCI_MANIFEST);

    let e = client.get_blob(&other).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&format!("/v2/a/b/blobs/{other}")), "{text}");
    assert!(text.contains(&sha256_digest(b"tampered")), "{text}");
}

#[tokio::test]
async fn blobs_follow_redirects_without_carrying_the_token_to_another_host() {
    let blob: &'static [u8] = b"layer bytes";
    let digest = sha256_digest(blob);
    let storage_log = seen::<Option<String>>();
    let log = Arc::clone(&storage_log);
    let storage = serve(
        HOST_B,
        Router::new().fallback(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(authorization(&headers));
                blob
            }
        }),
    )
    .await;
    let registry_log = seen::<Option<String>>();
    let log = Arc::clone(&registry_log);
    let registry = serve(
        HOST_A,
        Router::new().fallback(move |request: Request| {
            let log = Arc::clone(&log);
            async move {
                let auth = authorization(request.headers());
                log.lock().unwrap().push(auth.clone());
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if request.uri().path() == "/token" {
                    return axum::Json(serde_json::json!({ "token": "t0ken" })).into_response();
                }
                if auth.as_deref() != Some("Bearer t0ken") {
                    let challenge = format!(r#"Bearer realm="http://{host}/token",service="test""#);
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, challenge)],
                    )
                        .into_response();
                }
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("http://{storage}/signed?x=1"))],
                )
                    .into_response()
            }
        }),
    )
    .await;
    let http = http(1);
    let mut client = RepoClient::new(&http, api(&format!("http://{registry}")), "a/b", None);
    let got = client.get_blob(&digest).await.unwrap();
    assert_eq!(&got[..], blob);
    assert_eq!(
        taken(&storage_log),
        vec![None],
        "no token for the storage host"
    );
    assert!(
        taken(&registry_log).contains(&Some("Bearer t0ken".to_owned())),
        "{:?}",
        taken(&registry_log)
    );
}

#[tokio::test]
async fn transport_errors_name_the_url() {
    let http = http(1);
    let mut client = RepoClient::new(&http, api("http://127.0.0.1:9"), "a/b", None);
    let digest = sha256_digest(b"x");
    let e = client.get_blob(&digest).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Http(HttpError::Transport { .. })),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!("/v2/a/b/blobs/{digest}")),
        "{e}"
    );
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Blobs streamed to disk (`get_blob_to`): the same bytes and checks as `get_blob`, from the
/// real registry. (A private repository's blobs are not served by the stand-in: untested.)
#[tokio::test]
async fn blobs_stream_into_a_file_with_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let idle = std::time::Duration::from_secs(10);
    let registry = Registry::start().expect("start docker-registry");
    let pushed = registry.push_image("cybozu/etcd", "3.5.15.1").unwrap();
    let http = http(1);
    let mut client = RepoClient::new(&http, api(&registry.base_url()), "cybozu/etcd", None);
    let layer = &pushed.layer_digests[0];
    let got = client.get_blob_to(layer, dir.path(), idle).await.unwrap();
    assert_eq!(&got.digest, layer);
    assert_eq!(
        std::fs::read(got.file.path()).unwrap(),
        client.get_blob(layer).await.unwrap()
    );
    let absent = sha256_digest(b"no such blob");
    let text = client
        .get_blob_to(&absent, dir.path(), idle)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&format!("/v2/cybozu/etcd/blobs/{absent}")) && text.contains("404"),
        "{text}"
    );
    drop(got);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
