//! Helpers shared by the integration tests: tiny loopback servers written for one test, and
//! clients with millisecond retry delays.
#![allow(dead_code)]

use axum::Router;
use fetch::http::{Http, RetryPolicy};
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 127.0.0.1, and a second loopback address that is another host to an HTTP client.
pub const HOST_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
pub const HOST_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Serves `router` on `ip` with a port chosen by the kernel, on the test's runtime.
pub async fn serve(ip: IpAddr, router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    let addr = listener.local_addr().expect("the listener's address");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            panic!("serving on {addr}: {e}");
        }
    });
    addr
}

/// Retries with millisecond delays, so failing paths stay fast.
pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
    }
}

/// A client that ignores any proxy of the environment (the tests talk to loopback only).
pub fn http(attempts: u32) -> Http {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build the HTTP client");
    Http::with_client(client, 4, fast_retry(attempts))
}

/// `base` with a trailing slash, as an API base URL.
pub fn api(base: &str) -> Url {
    Url::parse(&format!("{}/", base.trim_end_matches('/'))).expect("a base URL")
}

/// What a test server saw, shared with the test.
pub type Seen<T> = Arc<Mutex<Vec<T>>>;

pub fn seen<T>() -> Seen<T> {
    Arc::new(Mutex::new(Vec::new()))
}

pub fn taken<T: Clone>(seen: &Seen<T>) -> Vec<T> {
    seen.lock().expect("the log lock").clone()
}

/// Collects everything logged, at every level.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// Logs everything of this thread into a new buffer until the guard drops.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
