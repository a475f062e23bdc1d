//! The HTTP client's options against loopback servers.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{header, HeaderMap, Uri};
use axum::Router;
use common::{fast_retry, seen, serve, taken, LogBuffer, HOST_A, HOST_B};
use fetch::http::{Http, HttpOptions};
use reqwest::{StatusCode, Url};
use std::sync::Arc;

/// With a proxy, every request goes to the proxy (in absolute form), with the user agent and
/// the proxy's credentials; the target is never contacted.
#[tokio::test]
async fn requests_go_through_the_proxy() {
    let proxy_saw = seen::<(String, Option<String>, Option<String>)>();
    let log = Arc::clone(&proxy_saw);
    let proxy = serve(
        HOST_A,
        Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                let text = |name| {
                    headers
                        .get(name)
                        .map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
                };
                log.lock().unwrap().push((
                    uri.to_string(),
                    text(header::USER_AGENT),
                    text(header::PROXY_AUTHORIZATION),
                ));
                "via the proxy"
            }
        }),
    )
    .await;
    // Nothing listens on the target: only the proxy can answer.
    let closed = std::net::TcpListener::bind((HOST_B, 0)).unwrap();
    let target = format!("http://{}/some/path?q=1", closed.local_addr().unwrap());
    drop(closed);
    let options = HttpOptions {
        per_host: 2,
        retry: fast_retry(1),
        proxy: Some(Url::parse(&format!("http://neco:proxy-password@{proxy}/")).unwrap()),
        user_agent: "neco-test/1".into(),
        ..HttpOptions::default()
    };
    assert!(
        !format!("{options:?}").contains("proxy-password"),
        "{options:?}"
    );
    let http = Http::with_options(options).unwrap();
    assert!(!format!("{http:?}").contains("proxy-password"), "{http:?}");

    let request = http.client().get(&target).build().unwrap();
    let got = http.fetch(request).await.unwrap();

    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), b"via the proxy");
    assert_eq!(
        taken(&proxy_saw),
        [(
            target,
            Some("neco-test/1".to_owned()),
            Some(dctest::basic_authorization("neco", "proxy-password")),
        )]
    );
}

#[tokio::test]
async fn without_a_proxy_the_target_is_reached_with_the_user_agent() {
    let saw = seen::<Option<String>>();
    let log = Arc::clone(&saw);
    let target = serve(
        HOST_A,
        Router::new().fallback(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(
                    headers
                        .get(header::USER_AGENT)
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                "direct"
            }
        }),
    )
    .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .user_agent("neco-custom/2")
        .build()
        .unwrap();
    let http = Http::with_client(client, 1, fast_retry(1));
    let request = http
        .client()
        .get(format!("http://{target}/x"))
        .build()
        .unwrap();
    let got = http.fetch(request).await.unwrap();
    assert_eq!(got.body.as_ref(), b"direct");
    assert_eq!(taken(&saw), [Some("neco-custom/2".to_owned())]);
}

/// With `secret_urls` (a webhook, whose path is its secret), a failing request's retries,
/// its errors and the response's URL show the origin only: neither a failing status nor a
/// refused connection prints the path.
#[tokio::test]
async fn secret_urls_show_their_origin_only() {
    const SECRET: &str = "T000/B000/XXXXsecretXXXX";
    let (logs, _guard) = LogBuffer::capture();
    let failing = serve(
        HOST_A,
        Router::new().fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }),
    )
    .await;
    let closed = std::net::TcpListener::bind((HOST_B, 0)).unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let http = Http::with_options(HttpOptions {
        retry: fast_retry(2),
        secret_urls: true,
        ..HttpOptions::default()
    })
    .unwrap();
    let mut errors = Vec::new();
    for addr in [failing, closed_addr] {
        let url = format!("http://{addr}/services/{SECRET}?token={SECRET}");
        let request = http.client().post(&url).body("{}").build().unwrap();
        match http.fetch(request).await {
            Ok(got) => {
                assert_eq!(got.url.as_str(), format!("http://{addr}/"));
                errors.push(
                    fetch::http::require_success("POST", got)
                        .unwrap_err()
                        .to_string(),
                );
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(errors.len(), 2);
    for (error, addr) in errors.iter().zip([failing, closed_addr]) {
        assert!(!error.contains(SECRET), "{error}");
        assert!(error.contains(&addr.to_string()), "{error}");
    }
    let logged = logs.text();
    assert!(logged.contains("retrying"), "{logged}");
    assert!(!logged.contains(SECRET), "{logged}");
    assert!(logged.contains(&failing.to_string()), "{logged}");
}
