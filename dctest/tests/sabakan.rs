//! The sabakan stand-in through a plain HTTP client (ureq), with image archives built by the
//! `tar` crate, as sabakan's API documentation describes the endpoints.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::sabakan::{IMAGE_INITRD, IMAGE_KERNEL};
use dctest::{sha256_digest, SabakanStandIn};
use serde_json::{json, Value};
use std::io::Read as _;

/// Status, headers of interest and body of an answer, whatever its status.
struct Answer {
    status: u16,
    content_type: Option<String>,
    asset_id: Option<String>,
    asset_sha256: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("transport error: {e}"),
    };
    let header = |name: &str| response.header(name).map(str::to_owned);
    let (status, content_type, asset_id, asset_sha256) = (
        response.status(),
        header("content-type"),
        header("x-sabakan-asset-id"),
        header("x-sabakan-asset-sha256"),
    );
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).unwrap();
    Answer {
        status,
        content_type,
        asset_id,
        asset_sha256,
        body,
    }
}

fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

fn delete(url: &str) -> Answer {
    answer(agent().delete(url).call())
}

fn put(url: &str, content_type: Option<&str>, sha256: Option<&str>, body: &[u8]) -> Answer {
    let mut request = agent().put(url);
    if let Some(content_type) = content_type {
        request = request.set("Content-Type", content_type);
    }
    if let Some(sha256) = sha256 {
        request = request.set("X-Sabakan-Asset-SHA256", sha256);
    }
    answer(request.send_bytes(body))
}

/// A tar archive of `files`, built with the `tar` crate.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The files of a tar archive, in order.
fn files_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(archive);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (name, content)
        })
        .collect()
}

fn hex(content: &[u8]) -> String {
    sha256_digest(content)["sha256:".len()..].to_owned()
}

#[test]
fn images_are_uploaded_listed_downloaded_and_deleted() {
    let sabakan = SabakanStandIn::start().unwrap();
    let index = format!("{}/api/v1/images/coreos", sabakan.base_url());
    let image = format!("{index}/3815.2.0");
    let kernel = b"kernel bytes".repeat(100);
    let initrd = b"initrd bytes".repeat(300);

    let empty = get(&index);
    assert_eq!(empty.status, 200);
    assert!(empty
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(empty.json(), json!([]));

    let tar = archive(&[(IMAGE_KERNEL, &kernel), (IMAGE_INITRD, &initrd)]);
    let created = put(&image, Some("application/tar"), None, &tar);
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );

    let listed = get(&index).json();
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], json!("3815.2.0"));
    assert_eq!(entries[0]["urls"], json!([image]));
    assert_eq!(entries[0]["exists"], json!(true));
    let date = entries[0]["date"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc3339).is_ok(),
        "{date}"
    );

    let downloaded = get(&image);
    assert_eq!(downloaded.status, 200);
    assert_eq!(downloaded.content_type.as_deref(), Some("application/tar"));
    assert_eq!(
        files_of(&downloaded.body),
        vec![
            (IMAGE_KERNEL.to_owned(), kernel.clone()),
            (IMAGE_INITRD.to_owned(), initrd.clone()),
        ]
    );
    let held = sabakan.images();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].kernel.clone(), held[0].initrd.clone()),
        (kernel.clone(), initrd.clone())
    );

    // The same id again: a conflict, and the image stays as it was.
    let other = archive(&[(IMAGE_KERNEL, b"k2"), (IMAGE_INITRD, b"i2")]);
    assert_eq!(
        put(&image, Some("application/tar"), None, &other).status,
        409
    );
    assert_eq!(sabakan.images()[0].kernel, kernel);

    // Archives lacking a file, holding another, or not tar at all.
    let next = format!("{index}/3850.0.0");
    for bad in [
        archive(&[(IMAGE_KERNEL, b"k")]),
        archive(&[(IMAGE_INITRD, b"i")]),
        archive(&[(IMAGE_KERNEL, b"k"), (IMAGE_INITRD, b"i"), ("extra", b"x")]),
        b"not a tar archive".to_vec(),
        Vec::new(),
    ] {
        let refused = put(&next, Some("application/tar"), None, &bad);
        assert_eq!(
            refused.status,
            400,
            "{}",
            String::from_utf8_lossy(&refused.body)
        );
    }
    assert_eq!(sabakan.images().len(), 1);
    assert_eq!(get(&next).status, 404);

    assert_eq!(delete(&image).status, 200);
    assert_eq!(get(&index).json(), json!([]));
    assert_eq!(get(&image).status, 404);
    assert_eq!(delete(&image).status, 404);
}

#[test]
fn assets_are_checked_against_their_sha256() {
    let sabakan = SabakanStandIn::start().unwrap();
    let assets = format!("{}/api/v1/assets", sabakan.base_url());
    let url = format!("{assets}/sabakan-cryptsetup");
    let v1 = b"cryptsetup v1".to_vec();
    let v2 = b"cryptsetup v2, longer".to_vec();

    assert_eq!(get(&assets).json(), json!([]));
    assert_eq!(get(&url).status, 404);
    assert_eq!(get(&format!("{url}/meta")).status, 404);

    let created = put(&url, Some("application/octet-stream"), Some(&hex(&v1)), &v1);
    assert_eq!(created.status, 201);
    let first_id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(created.json()["status"], json!(201));

    assert_eq!(get(&assets).json(), json!(["sabakan-cryptsetup"]));
    let meta = get(&format!("{url}/meta"));
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["name"], json!("sabakan-cryptsetup"));
    assert_eq!(meta["id"], json!(first_id));
    assert_eq!(meta["sha256"], json!(hex(&v1)));
    assert_eq!(meta["content-type"], json!("application/octet-stream"));
    assert_eq!(meta["urls"], json!([url]));
    assert_eq!(meta["exists"], json!(true));
    let content = get(&url);
    assert_eq!(content.body, v1);
    assert_eq!(content.asset_id.as_deref(), Some(first_id.as_str()));
    assert_eq!(content.asset_sha256, Some(hex(&v1)));

    // An update: 200 and a new id. Without the sha256 header the body is taken as it is.
    let updated = put(&url, Some("application/x-test"), None, &v2);
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["status"], json!(200));
    assert_ne!(updated.json()["id"], json!(first_id));
    assert_eq!(get(&url).body, v2);
    assert_eq!(
        get(&url).content_type.as_deref(),
        Some("application/x-test")
    );

    // A body that does not match its sha256 header is refused and changes nothing.
    let refused = put(
        &url,
        Some("application/octet-stream"),
        Some(&hex(&v1)),
        &v2[1..],
    );
    assert_eq!(refused.status, 400);
    assert!(String::from_utf8_lossy(&refused.body).contains(&hex(&v1)));
    // No Content-Type: 400; no Content-Length (chunked): 411.
    let other = format!("{assets}/other");
    let untyped = put(&other, None, None, b"x");
    assert_eq!(untyped.status, 400);
    assert!(String::from_utf8_lossy(&untyped.body).contains("Content-Type"));
    let chunked = answer(
        agent()
            .put(&other)
            .set("Content-Type", "application/octet-stream")
            .send(&b"x"[..]),
    );
    assert_eq!(chunked.status, 411);
    let held = sabakan.assets();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].content, v2);
    assert_eq!(held[0].sha256, hex(&v2));

    assert_eq!(delete(&url).status, 200);
    assert_eq!(get(&assets).json(), json!([]));
    assert_eq!(delete(&url).status, 404);
}

#[test]
fn requests_are_recorded_and_failures_can_be_injected() {
    let sabakan = SabakanStandIn::start().unwrap();
    let url = format!("{}/api/v1/assets/a", sabakan.base_url());
    sabakan.fail_next(2, 503);

    assert_eq!(
        put(&url, Some("text/plain"), Some(&hex(b"a")), b"a").status,
        503
    );
    assert_eq!(get(&url).status, 503);
    assert!(
        sabakan.assets().is_empty(),
        "a failed request changes nothing"
    );
    assert_eq!(
        put(&url, Some("text/plain"), Some(&hex(b"a")), b"a").status,
        201
    );

    let requests = sabakan.requests();
    let seen: Vec<(&str, &str, u16)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.answered))
        .collect();
    assert_eq!(
        seen,
        [
            ("PUT", "/api/v1/assets/a", 503),
            ("GET", "/api/v1/assets/a", 503),
            ("PUT", "/api/v1/assets/a", 201),
        ]
    );
    assert_eq!(requests[2].content_type.as_deref(), Some("text/plain"));
    assert_eq!(requests[2].asset_sha256, Some(hex(b"a")));
    assert_eq!(requests[2].body_len, 1);
}

#[test]
fn seeded_contents_are_served() {
    let sabakan = SabakanStandIn::start().unwrap();
    sabakan.add_image("3815.2.0", b"k", b"i").unwrap();
    assert!(sabakan.add_image("3815.2.0", b"k", b"i").is_err());
    assert!(sabakan.add_image("../x", b"k", b"i").is_err());
    let id = sabakan
        .add_asset("ipxe.efi", "application/efi", b"efi")
        .unwrap();
    let base = sabakan.base_url();
    assert_eq!(
        get(&format!("{base}/api/v1/images/coreos")).json()[0]["id"],
        json!("3815.2.0")
    );
    assert_eq!(
        files_of(&get(&format!("{base}/api/v1/images/coreos/3815.2.0")).body),
        vec![
            (IMAGE_KERNEL.to_owned(), b"k".to_vec()),
            (IMAGE_INITRD.to_owned(), b"i".to_vec()),
        ]
    );
    assert_eq!(
        get(&format!("{base}/api/v1/assets/ipxe.efi/meta")).json()["id"],
        json!(id.to_string())
    );
    assert!(sabakan.requests().len() == 3, "seeding records no request");
}
