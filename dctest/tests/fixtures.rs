//! Exercises every fixture for real over loopback HTTP.

use sha2::Digest as _;
use std::collections::BTreeSet;
use std::time::Duration;

use dctest::github::RequestRecord;
use dctest::{
    basic_authorization, sha256_digest, AssetSpec, Auth, Fault, FeedServer, GitHubStandIn,
    Registry, RegistryStandIn, RegistryStandInConfig, ReleaseSpec,
};
use serde_json::Value;

/// HTTP helpers of the tests (in a `cfg(test)` module, where panicking helpers are fine).
#[cfg(test)]
mod support {
    use std::time::Duration;

    use serde_json::Value;

    /// A response read whole.
    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Answer {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    pub fn agent(follow_redirects: bool) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .redirects(if follow_redirects { 5 } else { 0 })
            .build()
    }

    /// Sends a request and reads the answer, whatever its status.
    pub fn send(
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut request = agent.request(method, url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = match body {
            Some(body) => request.send_bytes(body),
            None => request.call(),
        };
        let response = match response {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .flat_map(|name| {
                response
                    .all(&name)
                    .into_iter()
                    .map(|v| (name.clone(), v.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("read body");
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
        send(&agent(false), "GET", url, headers, None)
    }

    /// Parses `<url>; rel="next"` out of a Link header.
    pub fn link(header: Option<&str>, rel: &str) -> Option<String> {
        header?.split(',').find_map(|part| {
            let (target, params) = part.trim().split_once(';')?;
            params
                .contains(&format!("rel=\"{rel}\""))
                .then(|| target.trim().trim_matches(['<', '>']).to_owned())
        })
    }

    /// Parses `key="value"` parameters of a `WWW-Authenticate: Bearer ...` challenge.
    pub fn challenge_params(header: &str) -> Vec<(String, String)> {
        header
            .strip_prefix("Bearer ")
            .expect("bearer challenge")
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim_matches('"').to_owned()))
            .collect()
    }

    pub fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    }
}

use support::{agent, challenge_params, get, link, send, strings};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// --- Debian's docker-registry -----------------------------------------------------------------

#[test]
fn registry_serves_pushed_images() {
    let registry = Registry::start().expect("start docker-registry");
    assert_eq!(registry.host(), format!("127.0.0.1:{}", registry.port()));
    let first = registry
        .push_image("cybozu/etcd", "3.5.15.1")
        .expect("push first");
    let second = registry
        .push_image("cybozu/etcd", "3.5.16.1")
        .expect("push second");
    let other = registry.push_image("neco", "1.0.0").expect("push other");
    assert_ne!(first.manifest_digest, second.manifest_digest);
    assert_ne!(first.layer_digests, second.layer_digests);
    assert_ne!(first.manifest_digest, other.manifest_digest);
    assert_eq!(first.layer_digests.len(), 1);

    let list = get(
        &format!("{}/v2/cybozu/etcd/tags/list", registry.base_url()),
        &[],
    );
    assert_eq!(list.status, 200, "{}", list.text());
    let tags: BTreeSet<String> = strings(&list.json()["tags"]).into_iter().collect();
    assert_eq!(
        tags,
        BTreeSet::from(["3.5.15.1".to_owned(), "3.5.16.1".to_owned()])
    );

    let head = send(
        &agent(false),
        "HEAD",
        &format!("{}/v2/cybozu/etcd/manifests/3.5.15.1", registry.base_url()),
        &[("Accept", OCI_MANIFEST)],
        None,
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(first.manifest_digest.as_str())
    );

    // The manifest bytes hash to the digest and reference the config and layer blobs.
    let manifest = get(
        &format!(
            "{}/v2/cybozu/etcd/manifests/{}",
            registry.base_url(),
            first.manifest_digest
        ),
        &[("Accept", OCI_MANIFEST)],
    );
    assert_eq!(manifest.status, 200);
    assert_eq!(sha256_digest(&manifest.body), first.manifest_digest);
    assert_eq!(
        manifest.json()["config"]["digest"],
        first.config_digest.as_str()
    );
    let layer = get(
        &format!(
            "{}/v2/cybozu/etcd/blobs/{}",
            registry.base_url(),
            first.layer_digests[0]
        ),
        &[],
    );
    assert_eq!(layer.status, 200);
    assert_eq!(sha256_digest(&layer.body), first.layer_digests[0]);

    registry
        .delete_manifest("cybozu/etcd", &first.manifest_digest)
        .expect("delete");
    let gone = registry.manifest_digest("cybozu/etcd", &first.manifest_digest);
    assert!(
        matches!(gone, Err(dctest::Error::HttpStatus { status: 404, .. })),
        "{gone:?}"
    );
    assert_eq!(
        registry
            .manifest_digest("cybozu/etcd", "3.5.16.1")
            .expect("still there"),
        second.manifest_digest
    );
    assert!(registry.log_path().exists());
}

#[test]
fn registry_push_tags_puts_one_manifest_under_many_tags() {
    let registry = Registry::start().expect("start docker-registry");
    let tags: Vec<String> = (1..=5)
        .map(|build| format!("1.2.3.{build}"))
        .chain(["1.2".to_owned(), "1.2.4.1-rc.1".to_owned()])
        .collect();
    let image = registry
        .push_tags("bench/many", &tags)
        .expect("push the tags");
    assert_eq!(image.repository, "bench/many");
    assert_eq!(image.tag, tags[0]);

    let listed: BTreeSet<String> = registry
        .tags("bench/many")
        .expect("list")
        .into_iter()
        .collect();
    assert_eq!(listed, tags.iter().cloned().collect::<BTreeSet<_>>());
    for tag in &tags {
        assert_eq!(
            registry.manifest_digest("bench/many", tag).expect("HEAD"),
            image.manifest_digest,
            "{tag}"
        );
    }

    // Arguments are checked before anything is sent.
    let none: &[&str] = &[];
    assert!(matches!(
        registry.push_tags("bench/none", none),
        Err(dctest::Error::InvalidArgument(_))
    ));
    assert!(matches!(
        registry.push_tags("bench/bad", &["1.0.0", "not:a:tag"]),
        Err(dctest::Error::InvalidArgument(_))
    ));
    assert!(matches!(
        registry.tags("bench/bad"),
        Err(dctest::Error::HttpStatus { status: 404, .. })
    ));
}

#[test]
fn registry_process_is_killed_on_drop() {
    let registry = Registry::start().expect("start docker-registry");
    let pid = registry.pid();
    let dir = registry.dir().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(registry);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

// --- registry stand-in ------------------------------------------------------------------------

#[test]
fn standin_paginates_with_n_and_link() {
    let configured = ["3.5.2.1", "3.5.10.1", "1.0.0", "latest", "3.5.1.1"];
    let standin =
        RegistryStandIn::start(RegistryStandInConfig::new().repo("cybozu/etcd", configured))
            .expect("start");

    // Without n: one page, in the configured (unsorted) order, no Link.
    let all = get(
        &format!("{}/v2/cybozu/etcd/tags/list", standin.base_url()),
        &[],
    );
    assert_eq!(all.status, 200);
    assert_eq!(strings(&all.json()["tags"]), configured);
    assert_eq!(all.header("Link"), None);
    assert_eq!(
        all.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );

    // With n=2: walk the Link headers.
    let mut url = format!("{}/v2/cybozu/etcd/tags/list?n=2", standin.base_url());
    let mut walked = Vec::new();
    let mut pages = 0;
    loop {
        let page = get(&url, &[]);
        assert_eq!(page.status, 200, "{}", page.text());
        let tags = strings(&page.json()["tags"]);
        assert!(tags.len() <= 2);
        walked.extend(tags);
        pages += 1;
        match link(page.header("Link"), "next") {
            Some(next) => {
                assert!(
                    next.starts_with("/v2/cybozu/etcd/tags/list?n=2&last="),
                    "{next}"
                );
                url = format!("{}{next}", standin.base_url());
            }
            None => break,
        }
    }
    let mut sorted: Vec<String> = configured.iter().map(|t| (*t).to_owned()).collect();
    sorted.sort();
    assert_eq!(walked, sorted);
    assert_eq!(pages, 3);

    let bad = get(
        &format!("{}/v2/cybozu/etcd/tags/list?n=x", standin.base_url()),
        &[],
    );
    assert_eq!(bad.status, 400);
    let unknown = get(&format!("{}/v2/nope/tags/list", standin.base_url()), &[]);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["errors"][0]["code"], "NAME_UNKNOWN");
    assert_eq!(standin.requests_for("/v2/cybozu/etcd/"), 5);
}

#[test]
fn standin_default_page_size_paginates_without_n() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("a/b", ["3", "1", "2"])
            .default_page_size(Some(2)),
    )
    .expect("start");
    let first = get(&format!("{}/v2/a/b/tags/list", standin.base_url()), &[]);
    assert_eq!(strings(&first.json()["tags"]), ["1", "2"]);
    let next = link(first.header("Link"), "next").expect("Link next");
    let second = get(&format!("{}{next}", standin.base_url()), &[]);
    assert_eq!(strings(&second.json()["tags"]), ["3"]);
    assert_eq!(second.header("Link"), None);
}

#[test]
fn standin_serves_deterministic_manifests() {
    let standin =
        RegistryStandIn::start(RegistryStandInConfig::new().repo("cybozu/etcd", ["3.5.15.1"]))
            .expect("start");
    let url = format!("{}/v2/cybozu/etcd/manifests/3.5.15.1", standin.base_url());
    let expected = RegistryStandIn::manifest_digest_for("cybozu/etcd", "3.5.15.1");
    let head = send(
        &agent(false),
        "HEAD",
        &url,
        &[("Accept", OCI_MANIFEST)],
        None,
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(expected.as_str())
    );
    let body_len = RegistryStandIn::manifest_for("cybozu/etcd", "3.5.15.1").len();
    assert_eq!(
        head.header("Content-Length"),
        Some(body_len.to_string().as_str())
    );
    let got = get(&url, &[("Accept", OCI_MANIFEST)]);
    assert_eq!(got.header("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(sha256_digest(&got.body), expected);
    let by_digest = get(
        &format!("{}/v2/cybozu/etcd/manifests/{expected}", standin.base_url()),
        &[],
    );
    assert_eq!(by_digest.status, 200);
    let missing = get(
        &format!("{}/v2/cybozu/etcd/manifests/9.9.9", standin.base_url()),
        &[],
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
}

#[test]
fn standin_anonymous_token_flow() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["1.0.0"])
            .repo("cybozu/other", ["2.0.0"])
            .auth(Auth::AnonymousToken),
    )
    .expect("start");
    let base = standin.base_url();
    let root = get(&format!("{base}/v2/"), &[]);
    assert_eq!(root.status, 401);

    let url = format!("{base}/v2/cybozu/etcd/tags/list");
    let denied = get(&url, &[]);
    assert_eq!(denied.status, 401);
    let params = challenge_params(denied.header("WWW-Authenticate").expect("challenge"));
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .expect(key)
    };
    assert_eq!(param("realm"), format!("{base}/token"));
    assert_eq!(param("service"), "standin");
    assert_eq!(param("scope"), "repository:cybozu/etcd:pull");

    let token_answer = get(
        &format!(
            "{}?service={}&scope={}",
            param("realm"),
            param("service"),
            param("scope").replace(':', "%3A").replace('/', "%2F")
        ),
        &[],
    );
    assert_eq!(token_answer.status, 200, "{}", token_answer.text());
    let token = token_answer.json()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(token_answer.json()["access_token"], token.as_str());
    let bearer = format!("Bearer {token}");

    let served = get(&url, &[("Authorization", &bearer)]);
    assert_eq!(served.status, 200);
    assert_eq!(strings(&served.json()["tags"]), ["1.0.0"]);
    assert_eq!(
        get(&format!("{base}/v2/"), &[("Authorization", &bearer)]).status,
        200
    );
    // The token is scoped to one repository.
    let other = get(
        &format!("{base}/v2/cybozu/other/tags/list"),
        &[("Authorization", &bearer)],
    );
    assert_eq!(other.status, 401);
    assert_eq!(get(&url, &[("Authorization", "Bearer forged")]).status, 401);
    assert_eq!(standin.tokens_issued(), 1);
}

#[test]
fn standin_private_repository_needs_credentials() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("public/app", ["1.0.0"])
            .repo("private/app", ["2.0.0"])
            .auth(Auth::basic("alice", "s3cret", ["private/app"])),
    )
    .expect("start");
    let base = standin.base_url();
    let token_url =
        |repo: &str| format!("{base}/token?service=standin&scope=repository:{repo}:pull");

    // Refused without or with wrong credentials.
    let anonymous = get(&token_url("private/app"), &[]);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous
        .header("WWW-Authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    let wrong = basic_authorization("alice", "wrong");
    assert_eq!(
        get(&token_url("private/app"), &[("Authorization", &wrong)]).status,
        401
    );

    // An anonymous token for a public repository does not open the private one.
    let public_token = get(&token_url("public/app"), &[]).json()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let public_bearer = format!("Bearer {public_token}");
    assert_eq!(
        get(
            &format!("{base}/v2/public/app/tags/list"),
            &[("Authorization", &public_bearer)]
        )
        .status,
        200
    );
    assert_eq!(
        get(
            &format!("{base}/v2/private/app/tags/list"),
            &[("Authorization", &public_bearer)]
        )
        .status,
        401
    );

    // With credentials the token works.
    let good = basic_authorization("alice", "s3cret");
    let answer = get(&token_url("private/app"), &[("Authorization", &good)]);
    assert_eq!(answer.status, 200);
    let bearer = format!("Bearer {}", answer.json()["token"].as_str().expect("token"));
    let served = get(
        &format!("{base}/v2/private/app/tags/list"),
        &[("Authorization", &bearer)],
    );
    assert_eq!(served.status, 200);
    assert_eq!(strings(&served.json()["tags"]), ["2.0.0"]);
}

#[test]
fn standin_answers_429_first() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("a", ["1"])
            .repo("b", ["2"])
            .fail_first_with_429(2),
    )
    .expect("start");
    let url = format!("{}/v2/a/tags/list", standin.base_url());
    for _ in 0..2 {
        let answer = get(&url, &[]);
        assert_eq!(answer.status, 429);
        assert_eq!(answer.header("Retry-After"), Some("0"));
    }
    // Pagination queries count for the same path.
    assert_eq!(get(&format!("{url}?n=1"), &[]).status, 200);
    assert_eq!(get(&url, &[]).status, 200);
    assert_eq!(standin.throttled(), 2);
    // Every path has its own count.
    assert_eq!(
        get(&format!("{}/v2/b/tags/list", standin.base_url()), &[]).status,
        429
    );
    assert_eq!(standin.throttled(), 3);
    assert_eq!(standin.requests(), 5);

    let slow = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("a", ["1"])
            .fail_first_with_429(1)
            .retry_after_secs(7),
    )
    .expect("start");
    let answer = get(&format!("{}/v2/a/tags/list", slow.base_url()), &[]);
    assert_eq!(answer.header("Retry-After"), Some("7"));
}

#[test]
fn standin_faults() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("html", ["1"])
            .fault("html", Fault::Html)
            .fault("invalid", Fault::InvalidJson)
            .fault("null", Fault::NullTags)
            .repo("gone", ["1"])
            .fault("gone", Fault::NotFound)
            .fault("down", Fault::ServerError503Always),
    )
    .expect("start");
    let tags = |repo: &str| get(&format!("{}/v2/{repo}/tags/list", standin.base_url()), &[]);
    let html = tags("html");
    assert_eq!(html.status, 200);
    assert!(html
        .header("Content-Type")
        .is_some_and(|v| v.starts_with("text/html")));
    let invalid = tags("invalid");
    assert_eq!(invalid.status, 200);
    assert!(serde_json::from_slice::<Value>(&invalid.body).is_err());
    let null = tags("null");
    assert_eq!(null.status, 200);
    assert!(null.json()["tags"].is_null());
    assert_eq!(tags("gone").status, 404);
    assert_eq!(
        get(&format!("{}/v2/gone/manifests/1", standin.base_url()), &[]).status,
        404
    );
    for _ in 0..3 {
        assert_eq!(tags("down").status, 503);
    }
}

#[test]
fn standin_reports_peak_concurrency() {
    let standin = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("a", ["1"])
            .latency(Duration::from_millis(500)),
    )
    .expect("start");
    let url = format!("{}/v2/a/tags/list", standin.base_url());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                get(&url, &[]).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("client thread"), 200);
    }
    assert_eq!(standin.max_in_flight(), 4);
    assert_eq!(standin.requests(), 4);
}

#[tokio::test]
async fn standin_works_inside_a_tokio_runtime() {
    let standin =
        RegistryStandIn::start(RegistryStandInConfig::new().repo("a", ["1"])).expect("start");
    let url = format!("{}/v2/a/tags/list", standin.base_url());
    let status = tokio::task::spawn_blocking(move || get(&url, &[]).status)
        .await
        .expect("blocking task");
    assert_eq!(status, 200);
    drop(standin);
}

// --- GitHub stand-in --------------------------------------------------------------------------

#[test]
fn github_lists_releases_newest_first_with_pagination() {
    let github = GitHubStandIn::start(None).expect("start");
    for i in 1..=5 {
        github.add_release(
            "cybozu/neco",
            ReleaseSpec::new(&format!("release-2024.01.0{i}-1")),
        );
    }
    let mut url = format!(
        "{}/repos/cybozu/neco/releases?per_page=2",
        github.base_url()
    );
    let mut tags = Vec::new();
    let mut pages = 0;
    loop {
        let page = get(&url, &[]);
        assert_eq!(page.status, 200);
        let items = page.json();
        let items = items.as_array().expect("array");
        assert!(items.len() <= 2);
        tags.extend(
            items
                .iter()
                .map(|r| r["tag_name"].as_str().expect("tag").to_owned()),
        );
        pages += 1;
        if pages == 1 {
            let last = link(page.header("Link"), "last").expect("rel=last");
            assert_eq!(
                last,
                format!(
                    "{}/repos/cybozu/neco/releases?per_page=2&page=3",
                    github.base_url()
                )
            );
        }
        match link(page.header("Link"), "next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (1..=5)
        .rev()
        .map(|i| format!("release-2024.01.0{i}-1"))
        .collect();
    assert_eq!(tags, expected);

    // Default page size: everything in one page, no Link.
    let all = get(
        &format!("{}/repos/cybozu/neco/releases", github.base_url()),
        &[],
    );
    assert_eq!(all.json().as_array().expect("array").len(), 5);
    assert_eq!(all.header("Link"), None);

    let unknown = get(
        &format!("{}/repos/cybozu/nope/releases", github.base_url()),
        &[],
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["message"], "Not Found");
}

#[test]
fn github_latest_and_by_tag() {
    let github = GitHubStandIn::start(None).expect("start");
    github.add_release("o/r", ReleaseSpec::new("v1.0.0"));
    github.add_release("o/r", ReleaseSpec::new("v1.1.0").prerelease(true));
    github.add_release("o/r", ReleaseSpec::new("v1.2.0").draft(true));
    let base = github.base_url();
    let latest = get(&format!("{base}/repos/o/r/releases/latest"), &[]);
    assert_eq!(latest.status, 200);
    assert_eq!(latest.json()["tag_name"], "v1.0.0");
    let by_tag = get(&format!("{base}/repos/o/r/releases/tags/v1.1.0"), &[]);
    assert_eq!(by_tag.json()["prerelease"], true);
    assert_eq!(
        get(&format!("{base}/repos/o/r/releases/tags/v1.2.0"), &[]).status,
        404
    );
    let list = get(&format!("{base}/repos/o/r/releases"), &[]).json();
    assert_eq!(list[0]["draft"], true);
    assert!(list[0]["published_at"].is_null());
    assert!(list[1]["published_at"].is_string());

    github.add_repo("o/empty");
    let none = get(&format!("{base}/repos/o/empty/releases/latest"), &[]);
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["message"], "Not Found");
    assert_eq!(
        get(&format!("{base}/repos/o/empty/releases"), &[]).json(),
        serde_json::json!([])
    );
}

#[test]
fn github_asset_metadata_and_download_by_redirect() {
    let github = GitHubStandIn::start(None).expect("start");
    let deb = b"not really a deb".to_vec();
    let id = github.add_release(
        "cybozu-go/etcdpasswd",
        ReleaseSpec::new("v1.4.8")
            .asset(AssetSpec::new(
                "etcdpasswd_1.4.8_amd64.deb",
                deb.clone(),
                true,
            ))
            .asset(AssetSpec::new(
                "etcdpasswd_1.4.8.tar.gz",
                b"tar".to_vec(),
                false,
            )),
    );
    let base = github.base_url();
    let release = get(
        &format!("{base}/repos/cybozu-go/etcdpasswd/releases/{id}"),
        &[],
    )
    .json();
    let assets = release["assets"].as_array().expect("assets");
    assert_eq!(assets.len(), 2);
    assert_eq!(assets[0]["name"], "etcdpasswd_1.4.8_amd64.deb");
    assert_eq!(assets[0]["state"], "uploaded");
    assert_eq!(assets[0]["size"], deb.len());
    assert_eq!(assets[0]["digest"], sha256_digest(&deb).as_str());
    assert!(assets[1].get("digest").is_none());

    let api_url = assets[0]["url"].as_str().expect("url").to_owned();
    let metadata = get(&api_url, &[]);
    assert_eq!(metadata.json()["id"], assets[0]["id"]);

    // Accept: application/octet-stream → 302 to the bytes.
    let redirect = get(&api_url, &[("Accept", "application/octet-stream")]);
    assert_eq!(redirect.status, 302);
    let location = redirect.header("Location").expect("Location").to_owned();
    assert!(
        location.starts_with(&format!("{base}/download/")),
        "{location}"
    );
    assert_eq!(get(&location, &[]).body, deb);
    let followed = send(
        &agent(true),
        "GET",
        &api_url,
        &[("Accept", "application/octet-stream")],
        None,
    );
    assert_eq!(followed.status, 200);
    assert_eq!(followed.body, deb);
    let browser = assets[0]["browser_download_url"]
        .as_str()
        .expect("browser url");
    assert_eq!(get(browser, &[]).body, deb);
    assert_eq!(
        get(&format!("{base}/repos/other/repo/releases/assets/1"), &[]).status,
        404
    );
}

#[test]
fn github_requires_the_token_when_configured() {
    let github = GitHubStandIn::start(Some("t0ken".to_owned())).expect("start");
    let id = github.add_release(
        "o/r",
        ReleaseSpec::new("v1").asset(AssetSpec::new("a.deb", b"x".to_vec(), false)),
    );
    let url = format!("{}/repos/o/r/releases", github.base_url());
    assert_eq!(get(&url, &[]).status, 401);
    assert_eq!(get(&url, &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(get(&url, &[("Authorization", "Bearer t0ken")]).status, 200);
    assert_eq!(get(&url, &[("Authorization", "token t0ken")]).status, 200);
    let release = get(
        &format!("{}/repos/o/r/releases/{id}", github.base_url()),
        &[("Authorization", "token t0ken")],
    )
    .json();
    // Downloads need no token, like GitHub's signed download URLs.
    let download = release["assets"][0]["browser_download_url"]
        .as_str()
        .expect("url");
    assert_eq!(get(download, &[]).status, 200);
    let log = github.requests();
    assert_eq!(log.len(), 6);
    assert_eq!(
        log[0],
        RequestRecord {
            method: "GET".to_owned(),
            path: "/repos/o/r/releases".to_owned(),
            query: None,
            has_authorization: false,
        }
    );
    assert!(log[2].has_authorization);
    assert!(!log[5].has_authorization);
}

#[test]
fn github_create_edit_upload_delete() {
    let github = GitHubStandIn::start(None).expect("start");
    github.add_repo("cybozu-go/neco");
    let base = github.base_url();
    let a = agent(false);
    let created = send(
        &a,
        "POST",
        &format!("{base}/repos/cybozu-go/neco/releases"),
        &[("Content-Type", "application/json")],
        Some(br#"{"tag_name":"release-2024.01.01-1","name":"2024.01.01-1","body":"b","prerelease":true}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let release = created.json();
    let id = release["id"].as_u64().expect("id");
    assert_eq!(release["prerelease"], true);
    assert_eq!(release["draft"], false);
    let duplicate = send(
        &a,
        "POST",
        &format!("{base}/repos/cybozu-go/neco/releases"),
        &[],
        Some(br#"{"tag_name":"release-2024.01.01-1"}"#),
    );
    assert_eq!(duplicate.status, 422);

    // Upload through the upload_url template.
    let upload_url = release["upload_url"]
        .as_str()
        .expect("upload_url")
        .replace("{?name,label}", "?name=neco_2024.01.01-1_amd64.deb");
    let deb = b"deb bytes".to_vec();
    let uploaded = send(
        &a,
        "POST",
        &upload_url,
        &[("Content-Type", "application/vnd.debian.binary-package")],
        Some(&deb),
    );
    assert_eq!(uploaded.status, 201, "{}", uploaded.text());
    assert_eq!(uploaded.json()["digest"], sha256_digest(&deb).as_str());
    assert_eq!(uploaded.json()["state"], "uploaded");
    let again = send(&a, "POST", &upload_url, &[], Some(b"other"));
    assert_eq!(again.status, 422);

    let starter = github
        .add_starter_asset("cybozu-go/neco", id, "partial.deb")
        .expect("starter");
    let listed = get(
        &format!("{base}/repos/cybozu-go/neco/releases/{id}/assets"),
        &[],
    )
    .json();
    assert_eq!(listed[1]["state"], "starter");
    let deleted = send(
        &a,
        "DELETE",
        &format!("{base}/repos/cybozu-go/neco/releases/assets/{starter}"),
        &[],
        None,
    );
    assert_eq!(deleted.status, 204);

    // Clear the pre-release flag.
    let edited = send(
        &a,
        "PATCH",
        &format!("{base}/repos/cybozu-go/neco/releases/{id}"),
        &[],
        Some(br#"{"prerelease":false}"#),
    );
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json()["prerelease"], false);
    let latest = get(&format!("{base}/repos/cybozu-go/neco/releases/latest"), &[]);
    assert_eq!(latest.json()["id"], id);

    let views = github.releases("cybozu-go/neco");
    assert_eq!(views.len(), 1);
    assert!(!views[0].prerelease);
    assert_eq!(views[0].body, "b");
    assert_eq!(views[0].assets.len(), 1);
    assert_eq!(views[0].assets[0].sha256, sha256_digest(&deb));
    assert_eq!(github.asset_content(views[0].assets[0].id), Some(deb));
    github
        .set_prerelease("cybozu-go/neco", id, true)
        .expect("set flag");
    assert_eq!(
        get(&format!("{base}/repos/cybozu-go/neco/releases/latest"), &[]).status,
        404
    );
}

// --- OS release feed --------------------------------------------------------------------------

#[test]
fn feed_serves_json_and_files() {
    let feed = FeedServer::start("stable", &["3815.2.0", "999.0.0", "3815.2.5"]).expect("start");
    let document = get(&feed.feed_url(), &[]);
    assert_eq!(document.status, 200);
    assert!(feed
        .feed_url()
        .ends_with("/releases-json/releases-stable.json"));
    let json = document.json();
    let object = json.as_object().expect("object");
    assert_eq!(object.len(), 4);
    assert_eq!(json["3815.2.0"]["channel"], "stable");
    assert_eq!(json["3815.2.0"]["architectures"][0], "amd64");
    assert!(json["999.0.0"]["release_date"].is_string());
    assert_eq!(json["current"]["github_release"], "3815.2.5");

    let kernel = get(&feed.kernel_url("3815.2.5"), &[]);
    assert_eq!(kernel.status, 200);
    assert_eq!(kernel.body, FeedServer::kernel_bytes("stable", "3815.2.5"));
    assert!(kernel.body.len() >= 1024);
    assert_eq!(
        feed.kernel_url("3815.2.5"),
        format!(
            "{}/stable/amd64-usr/3815.2.5/flatcar_production_pxe.vmlinuz",
            feed.base_url()
        )
    );
    let initrd = get(&feed.initrd_url("3815.2.5"), &[]);
    assert_eq!(initrd.body, FeedServer::initrd_bytes("stable", "3815.2.5"));
    assert_eq!(get(&feed.kernel_url("1.0.0"), &[]).status, 404);
    // Each file's checksums beside it, Flatcar's way; a tampered file no longer matches.
    let digests = get(&format!("{}.DIGESTS", feed.kernel_url("3815.2.5")), &[]);
    assert_eq!(digests.status, 200);
    let sha512 = hex::encode(sha2::Sha512::digest(&kernel.body));
    assert_eq!(
        String::from_utf8_lossy(&digests.body),
        format!("# SHA512 HASH\n{sha512}  flatcar_production_pxe.vmlinuz\n")
    );
    assert_eq!(
        FeedServer::file_sha512("stable", "3815.2.5", dctest::feed::KERNEL_FILE),
        Some(format!("sha512:{sha512}"))
    );
    feed.tamper("3815.2.5", dctest::feed::KERNEL_FILE);
    let tampered = get(&feed.kernel_url("3815.2.5"), &[]);
    assert_ne!(hex::encode(sha2::Sha512::digest(&tampered.body)), sha512);
    assert_eq!(
        get(&format!("{}.DIGESTS", feed.kernel_url("3815.2.5")), &[]).body,
        digests.body
    );
    assert_eq!(get(&feed.initrd_url("3815.2.5"), &[]).body, initrd.body);
    assert_eq!(
        get(
            &format!("{}/releases-json/releases-beta.json", feed.base_url()),
            &[]
        )
        .status,
        404
    );

    feed.add_version("4000.0.0").expect("add version");
    assert_eq!(
        get(&feed.feed_url(), &[]).json()["current"]["github_release"],
        "4000.0.0"
    );
    assert_eq!(get(&feed.kernel_url("4000.0.0"), &[]).status, 200);
}
