//! In-process HTTP servers: each runs on its own thread with its own tokio runtime, so fixtures
//! work from sync tests and from `#[tokio::test]`s without nesting runtimes.

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;

use crate::{Error, Result};

/// How long a stopping server waits for open connections before it drops them.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds a listener on 127.0.0.1 with a port chosen by the kernel.
pub(crate) fn bind_loopback(name: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(Error::io(format!("bind 127.0.0.1:0 for {name}")))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io(format!("read the address of {name}")))?;
    Ok((listener, addr))
}

/// The address `listener` is bound to, for a base URL.
pub(crate) fn bound_address(name: &str, listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(Error::io(format!("read the address of {name}")))
}

/// A running server; dropping it stops the server and joins its thread.
#[derive(Debug)]
pub(crate) struct ServerThread {
    name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Serves `router` on `listener` from a new thread until dropped.
    pub(crate) fn start(name: &str, listener: TcpListener, router: Router) -> Result<Self> {
        listener.set_nonblocking(true).map_err(Error::io(format!(
            "make the listener of {name} non-blocking"
        )))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("dctest-{name}"))
            .spawn(move || run(&thread_name, listener, router, &ready_tx, stop_rx))
            .map_err(Error::io(format!("spawn the thread of {name}")))?;
        let server = Self {
            name: name.to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(message)) => Err(Error::Server {
                name: name.to_owned(),
                message,
            }),
            Err(_) => Err(Error::Server {
                name: name.to_owned(),
                message: "the server thread ended before it was ready".to_owned(),
            }),
        }
    }
}

/// Body of the server thread.
fn run(
    name: &str,
    listener: TcpListener,
    router: Router,
    ready: &std::sync::mpsc::SyncSender<Result<(), String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("dctest-{name}-rt"))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!("build the tokio runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(format!("register the listener: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = graceful_rx.await;
            })
            .into_future();
        let mut server = std::pin::pin!(server);
        tokio::select! {
            result = &mut server => {
                if let Err(e) = result {
                    eprintln!("dctest: server {name} stopped: {e}");
                }
            }
            // Either an explicit stop or the guard being dropped.
            _ = stop => {
                let _ = graceful_tx.send(());
                if tokio::time::timeout(GRACEFUL_TIMEOUT, &mut server).await.is_err() {
                    eprintln!("dctest: server {name}: dropping connections still open");
                }
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("dctest: the thread of server {} panicked", self.name);
            }
        }
    }
}

/// Builds a response; header values that are not valid are left out.
pub(crate) fn respond(
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: impl Into<Body>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    respond(
        status,
        vec![(
            axum::http::header::CONTENT_TYPE,
            "application/json; charset=utf-8".to_owned(),
        )],
        value.to_string(),
    )
}
