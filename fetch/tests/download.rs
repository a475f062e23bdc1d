//! `Http::download` against a loopback server that streams its body: 500 MB with flat memory,
//! a slow transfer that outlasts the client's whole-request timeout, and a transfer that stalls;
//! then `Http::upload` of the 500 MB back, streamed from disk with flat memory and retried.
//! One test binary of its own, so that its peak-memory reading is not blurred by other tests.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fetch::http::{Http, HttpOptions, RetryPolicy};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;

/// How the server sends its body: `chunks` chunks of `chunk` bytes, `pause` between them;
/// after `stall_after` chunks it stops sending (and holds the connection) until `release`.
#[derive(Clone)]
struct Plan {
    chunks: usize,
    chunk: usize,
    pause: Duration,
    stall_after: Option<usize>,
}

/// The byte at offset `i` of every body (not all zeros, so that hashing means something).
fn byte_at(i: usize) -> u8 {
    u8::try_from((i * 7 + i / 4096) % 251).unwrap_or(0)
}

fn expected_sha256(plan: &Plan) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; plan.chunk];
    for c in 0..plan.chunks {
        for (j, b) in buf.iter_mut().enumerate() {
            *b = byte_at(c * plan.chunk + j);
        }
        hasher.update(&buf);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Serves `plan` to every connection; returns the URL and what releases a stalled body.
async fn serve(plan: Plan) -> (String, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    let release = Arc::new(Notify::new());
    let released = Arc::clone(&release);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let plan = plan.clone();
            let released = Arc::clone(&released);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
                    plan.chunks * plan.chunk
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; plan.chunk];
                for c in 0..plan.chunks {
                    if plan.stall_after == Some(c) {
                        released.notified().await;
                        return;
                    }
                    for (j, b) in buf.iter_mut().enumerate() {
                        *b = byte_at(c * plan.chunk + j);
                    }
                    if socket.write_all(&buf).await.is_err() {
                        return;
                    }
                    if !plan.pause.is_zero() {
                        tokio::time::sleep(plan.pause).await;
                    }
                }
            });
        }
    });
    (url, release)
}

/// What an upload server received: the `Content-Length` and the digest of each body.
type Received = Arc<std::sync::Mutex<Vec<(Option<usize>, String)>>>;

/// Accepts uploads: reads each request's body in full (hashing it, holding none of it) and
/// answers 503 to the first `refuse` of them, 201 to the others.
async fn accept_uploads(refuse: usize) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/upload", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            // One request per connection: the head, then exactly Content-Length bytes.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read_exact(&mut byte).await.is_err() {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let mut hasher = Sha256::new();
            let mut left = length.unwrap_or(0);
            let mut buf = vec![0u8; MIB];
            while left > 0 {
                let n = socket.read(&mut buf[..left.min(MIB)]).await.unwrap();
                assert!(n > 0, "the upload ended {left} bytes early");
                hasher.update(&buf[..n]);
                left -= n;
            }
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let answer = {
                let mut log = log.lock().unwrap();
                log.push((length, digest));
                if log.len() <= refuse {
                    "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                }
            };
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (url, received)
}

fn http(timeout: Duration) -> Http {
    http_with_attempts(timeout, 1)
}

fn http_with_attempts(timeout: Duration, attempts: u32) -> Http {
    Http::with_options(HttpOptions {
        retry: RetryPolicy {
            attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        },
        timeout,
        direct: true,
        ..HttpOptions::default()
    })
    .unwrap()
}

/// The peak resident set of this process so far (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stream_to_disk_with_flat_memory_and_only_an_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();

    // 500 MB: the peak memory of the process grows by far less than the body.
    let big = Plan {
        chunks: 500,
        chunk: MIB,
        pause: Duration::ZERO,
        stall_after: None,
    };
    let (url, _release) = serve(big.clone()).await;
    let client = http(Duration::from_secs(600));
    let before = peak_rss();
    let request = client.client().get(&url).build().unwrap();
    let got = client
        .download(request, dir.path(), Duration::from_secs(10))
        .await
        .unwrap();
    let grown = peak_rss().saturating_sub(before);
    eprintln!(
        "download of {} MiB: peak memory grew by {:.1} MiB",
        got.len / 1024 / 1024,
        grown as f64 / 1024.0 / 1024.0
    );
    let downloaded_peak = peak_rss();
    assert_eq!(got.len, 500 * 1024 * 1024);
    assert_eq!(got.digest, expected_sha256(&big));
    assert_eq!(
        std::fs::metadata(got.file.path()).unwrap().len(),
        500 * 1024 * 1024
    );
    assert!(
        grown < 64 * 1024 * 1024,
        "peak memory grew by {grown} bytes for a 500 MiB download"
    );

    // The same 500 MB uploaded: streamed from the file, with its length; the first attempt
    // gets a 503 after the whole body, the second sends the whole file again.
    let (url, received) = accept_uploads(1).await;
    let client = http_with_attempts(Duration::from_secs(1), 2);
    let request = client.client().put(&url).build().unwrap();
    let answer = client.upload(request, got.file.path()).await.unwrap();
    let grown = peak_rss().saturating_sub(downloaded_peak);
    eprintln!(
        "upload of 500 MiB: peak memory grew by {:.1} MiB",
        grown as f64 / 1024.0 / 1024.0
    );
    assert_eq!(answer.status, 201);
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![
            (Some(500 * MIB), expected_sha256(&big)),
            (Some(500 * MIB), expected_sha256(&big))
        ]
    );
    assert!(
        grown < 64 * 1024 * 1024,
        "peak memory grew by {grown} bytes for a 500 MiB upload"
    );
    // A file that is not there is named, and not retried.
    let missing = dir.path().join("missing");
    let request = client.client().put(&url).build().unwrap();
    let e = client.upload(request, &missing).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    drop(got);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Slow but steady: longer than the client's whole-request timeout (1 s), never idle.
    let slow = Plan {
        chunks: 12,
        chunk: 1024,
        pause: Duration::from_millis(150),
        stall_after: None,
    };
    let (url, _release) = serve(slow.clone()).await;
    let client = http(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let request = client.client().get(&url).build().unwrap();
    let got = client
        .download(request, dir.path(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(started.elapsed() > Duration::from_secs(1));
    assert_eq!(got.digest, expected_sha256(&slow));

    // Stalled: the attempt ends after the idle timeout, naming it; no file is left.
    let stalled = Plan {
        chunks: 10,
        chunk: 1024,
        pause: Duration::ZERO,
        stall_after: Some(3),
    };
    let (url, release) = serve(stalled).await;
    let request = client.client().get(&url).build().unwrap();
    let e = client
        .download(request, dir.path(), Duration::from_millis(500))
        .await
        .unwrap_err()
        .to_string();
    release.notify_waiters();
    assert!(e.contains("no data for 0.5 s"), "{e}");
    assert!(e.contains(&url), "{e}");
    drop(got);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
