//! A webhook sink: records every notification POSTed to it, like a Slack-compatible incoming
//! webhook. It can be told to fail the next requests, to test retries and that a failed post
//! never changes the state of the sender.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Router;

use crate::http_server::{bind_loopback, bound_address, respond, ServerThread};
use crate::util::lock;
use crate::Result;
use std::net::TcpListener;

/// The largest body the sink accepts.
const MAX_BODY: usize = 1 << 20;

/// One received request.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub path: String,
    pub content_type: Option<String>,
    /// The body parsed as JSON (`Null` when it was not JSON).
    pub json: serde_json::Value,
    /// The raw body.
    pub body: String,
    /// The status the sink answered.
    pub answered: u16,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Notification>>,
    failures: Mutex<VecDeque<u16>>,
}

/// A running sink; stopped when dropped.
#[derive(Debug)]
pub struct WebhookSink {
    _server: ServerThread,
    shared: Arc<Shared>,
    base_url: String,
}

impl WebhookSink {
    /// Starts the sink on a loopback port.
    pub fn start() -> Result<Self> {
        Self::start_on(bind_loopback("webhook")?.0)
    }

    /// Like [`Self::start`], serving on `listener` (for example one from [`crate::Lan::bind`]).
    pub fn start_on(listener: TcpListener) -> Result<Self> {
        let addr = bound_address("webhook", &listener)?;
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = ServerThread::start("webhook", listener, router)?;
        Ok(Self {
            _server: server,
            shared,
            base_url: format!("http://{addr}"),
        })
    }

    /// The URL to configure as the webhook, e.g. `http://127.0.0.1:PORT/hooks/neco`.
    pub fn url(&self) -> String {
        format!("{}/hooks/neco", self.base_url)
    }

    /// The next `count` requests are answered with `status` (e.g. 500) and still recorded.
    pub fn fail_next(&self, count: usize, status: u16) {
        let mut failures = lock(&self.shared.failures);
        failures.extend(std::iter::repeat_n(status, count));
    }

    /// Everything received so far, failed answers included, oldest first.
    pub fn received(&self) -> Vec<Notification> {
        lock(&self.shared.received).clone()
    }

    /// The notifications that were answered with a success status.
    pub fn delivered(&self) -> Vec<Notification> {
        self.received()
            .into_iter()
            .filter(|n| (200..300).contains(&n.answered))
            .collect()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if request.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, Vec::new(), "");
    }
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match to_bytes(request.into_body(), MAX_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, Vec::new(), ""),
    };
    let answered = lock(&shared.failures).pop_front().unwrap_or(200);
    lock(&shared.received).push(Notification {
        path,
        content_type,
        json: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        body,
        answered,
    });
    let status = StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(
        status,
        Vec::new(),
        if status.is_success() { "ok" } else { "failed" },
    )
}
