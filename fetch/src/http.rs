//! The HTTP edge shared by every source: a per-host concurrency limit, retries with backoff on
//! 429 and 5xx that honour `Retry-After`, and an optional proxy.

use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Request, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

/// The longest a download may take in all; [`Http::download`] ends one that stalls long
/// before, by its idle timeout.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// The silence after which a download's attempt is given up ([`Http::download`]'s `idle`, as
/// the daemons use it): long enough for a slow proxy, short enough to notice a dead one.
pub const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

/// The slowest an upload may be, in bytes per second: [`Http::upload`] gives up after the
/// time this rate needs, plus a minute.
pub const UPLOAD_MIN_RATE: u64 = 1 << 20;
/// How much of a file [`Http::upload`] reads at a time.
const UPLOAD_CHUNK: usize = 256 << 10;

/// The status line and headers of a response.
struct Head {
    url: Url,
    status: StatusCode,
    headers: HeaderMap,
}

/// Why reading a response failed.
enum BodyError {
    Http(reqwest::Error),
    /// No byte came for this long.
    Idle(Duration),
    /// The local file could not be written.
    Io(std::io::Error),
}

enum DownloadBody {
    File {
        file: tempfile::NamedTempFile,
        len: u64,
        digest: String,
    },
    /// A status that is not a success, with its (short) body.
    Failed(Bytes),
}

/// A body streamed to a temporary file by [`Http::download`].
#[derive(Debug)]
pub struct Downloaded {
    /// The final URL (after redirects), shown as the client shows URLs.
    pub url: Url,
    pub headers: HeaderMap,
    /// Removed when dropped; `persist` it once checked.
    pub file: tempfile::NamedTempFile,
    pub len: u64,
    /// `<algorithm>:<hex>` of the bytes: `sha256:…` from [`Http::download`], the chosen
    /// algorithm's from [`Http::download_hashed`].
    pub digest: String,
}

/// The digest (`<algorithm>:<hex>`) of the file at `path`, read in chunks; `None` when it does
/// not exist. Blocking.
pub fn file_digest(path: &std::path::Path, checksum: Checksum) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = Hasher::new(checksum);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(Some(hasher.finish()))
}

/// The hash [`Http::download_hashed`] computes while it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// `sha256:<hex>`: OCI blobs, GitHub assets.
    Sha256,
    /// `sha512:<hex>`: OS image files (what Flatcar's `.DIGESTS` files carry).
    Sha512,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(checksum: Checksum) -> Self {
        match checksum {
            Checksum::Sha256 => Self::Sha256(Sha256::new()),
            Checksum::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Self::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// The body as JSON of type `T`; an HTML page or broken JSON is an error naming the URL.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::BadBody {
            url: self.url.to_string(),
            message: format!(
                "expected JSON ({e}); content-type {:?}, body starts with {:?}",
                self.headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none"),
                snippet(&self.body)
            ),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(60)]);
    text.chars().filter(|c| !c.is_control()).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{method} {url}: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    #[error("{method} {url}: HTTP {status}{detail}")]
    Status {
        method: String,
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: {message}")]
    BadBody { url: String, message: String },
    /// A local file to send could not be read.
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

impl HttpError {
    /// Whether the failure may pass by itself: the server did not answer or broke off, or it
    /// answered that it is busy or failing (5xx, 429, 408). Not: an answer such as 4xx, or a
    /// body that cannot be read.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::BadBody { .. } | Self::File { .. } => false,
        }
    }
}

/// Retry behaviour.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first backoff; doubled each time.
    pub base_delay: Duration,
    /// No single wait is longer than this, whatever `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// How to build an [`Http`].
#[derive(Clone)]
pub struct HttpOptions {
    /// The most requests in flight to one host (at least 1).
    pub per_host: usize,
    pub retry: RetryPolicy,
    /// Every request goes through this proxy (`http://[user:password@]host:port`); `None`
    /// follows the `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` environment, as reqwest does.
    pub proxy: Option<Url>,
    pub user_agent: String,
    /// The longest a whole request may take, body included.
    pub timeout: Duration,
    /// The URLs are credentials (a Slack webhook's path is its secret): logs, errors and
    /// [`Fetched::url`] show their origin only (scheme, host, port).
    pub secret_urls: bool,
    /// No proxy at all, not even the environment's (`HTTP_PROXY`, …): for hosts of the data
    /// center itself, which a proxy to the outside cannot reach. `proxy` must be `None`.
    pub direct: bool,
}

impl Default for HttpOptions {
    /// 8 per host, [`RetryPolicy::default`], no proxy, `neco-rs/<version>`, 120 s.
    fn default() -> Self {
        Self {
            per_host: 8,
            retry: RetryPolicy::default(),
            proxy: None,
            user_agent: concat!("neco-rs/", env!("CARGO_PKG_VERSION")).to_owned(),
            timeout: Duration::from_secs(120),
            secret_urls: false,
            direct: false,
        }
    }
}

impl std::fmt::Debug for HttpOptions {
    /// The proxy's password, if any, is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("per_host", &self.per_host)
            .field("retry", &self.retry)
            .field("proxy", &self.proxy.as_ref().map(redacted))
            .field("user_agent", &self.user_agent)
            .field("timeout", &self.timeout)
            .field("secret_urls", &self.secret_urls)
            .field("direct", &self.direct)
            .finish()
    }
}

/// `url` with its path `/` and neither user, password, query nor fragment: scheme, host and
/// port only.
fn origin_only(url: &Url) -> Url {
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    // Both fail only for URLs that cannot have a user (no host): there is none to remove.
    let _ = origin.set_username("");
    let _ = origin.set_password(None);
    origin
}

/// `url` without its password, for messages.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        // Fails only for URLs without a host, and a URL with a password has one.
        let _ = url.set_password(Some("redacted"));
    }
    url.to_string()
}

/// A client with per-host limits. Cheap to share behind an `Arc`.
pub struct Http {
    client: reqwest::Client,
    per_host: usize,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    retry: RetryPolicy,
    secret_urls: bool,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("per_host", &self.per_host)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Http {
    /// [`HttpOptions::default`] with `per_host` requests in flight per host and `retry`.
    pub fn new(per_host: usize, retry: RetryPolicy) -> Result<Self, HttpError> {
        Self::with_options(HttpOptions {
            per_host,
            retry,
            ..HttpOptions::default()
        })
    }

    /// A client built from `options`: connect timeout 10 s, whole-request timeout
    /// `options.timeout`.
    pub fn with_options(options: HttpOptions) -> Result<Self, HttpError> {
        let build_error = |message: String| HttpError::Transport {
            method: "build".into(),
            url: options.proxy.as_ref().map(redacted).unwrap_or_default(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(options.user_agent.as_str())
            .connect_timeout(Duration::from_secs(10))
            .timeout(options.timeout);
        if options.direct {
            if options.proxy.is_some() {
                return Err(build_error("a direct client cannot have a proxy".into()));
            }
            builder = builder.no_proxy();
        }
        if let Some(proxy) = &options.proxy {
            let proxy = reqwest::Proxy::all(proxy.clone()).map_err(|e| {
                build_error(format!("bad proxy: {}", error_chain(&e.without_url())))
            })?;
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(|e| build_error(error_chain(&e)))?;
        Ok(Self {
            secret_urls: options.secret_urls,
            ..Self::with_client(client, options.per_host, options.retry)
        })
    }

    /// Wraps a client built elsewhere; `per_host`: the most requests in flight to one host
    /// (at least 1).
    pub fn with_client(client: reqwest::Client, per_host: usize, retry: RetryPolicy) -> Self {
        Self {
            client,
            per_host: per_host.max(1),
            limits: Mutex::new(HashMap::new()),
            retry,
            secret_urls: false,
        }
    }

    /// `url` as logs and errors show it: without its password, or only its origin when the
    /// URLs are credentials ([`HttpOptions::secret_urls`]).
    fn shown(&self, url: &Url) -> String {
        if self.secret_urls {
            format!("{}…", origin_only(url))
        } else {
            redacted(url)
        }
    }

    /// A transport error on one line, its URL shown as [`Http::shown`] does.
    fn describe(&self, e: &reqwest::Error, url: &Url) -> String {
        let text = error_chain(e);
        if self.secret_urls {
            text.replace(url.as_str(), &self.shown(url))
        } else {
            text
        }
    }

    /// The underlying client, to build the requests given to [`Http::fetch`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn limit_for(&self, url: &Url) -> Arc<Semaphore> {
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
    }

    /// Sends a request (retrying 429, 5xx and transport errors) and reads the whole body.
    /// Any final status is returned as it is; callers decide what is an error.
    pub async fn fetch(&self, request: Request) -> Result<Fetched, HttpError> {
        self.send_and_read(&request, retry_clone(self, &request))
            .await
    }

    /// [`Http::send`] what `make` builds, reading the whole body of the answer.
    async fn send_and_read<M, MFut>(&self, request: &Request, make: M) -> Result<Fetched, HttpError>
    where
        M: FnMut() -> MFut,
        MFut: std::future::Future<Output = Result<Request, HttpError>>,
    {
        let (head, body) = self
            .send(request, make, |resp| async move {
                resp.bytes().await.map_err(BodyError::Http)
            })
            .await?;
        Ok(Fetched {
            url: head.url,
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// Sends a GET-like request (retried as [`Http::fetch`] does, a broken transfer from the
    /// start) and streams a successful body into a temporary file in `dir`, hashing it on the
    /// way: memory stays flat whatever the size. There is no limit on the whole transfer, only
    /// on silence: `idle` without a byte ends an attempt. The caller checks the digest and
    /// persists the file; dropped, it is removed. A final status that is not a success is an
    /// [`HttpError::Status`].
    pub async fn download(
        &self,
        request: Request,
        dir: &std::path::Path,
        idle: Duration,
    ) -> Result<Downloaded, HttpError> {
        self.download_hashed(request, dir, idle, Checksum::Sha256)
            .await
    }

    /// [`Http::download`], hashing with `checksum`.
    pub async fn download_hashed(
        &self,
        mut request: Request,
        dir: &std::path::Path,
        idle: Duration,
        checksum: Checksum,
    ) -> Result<Downloaded, HttpError> {
        // The client's whole-request timeout is for API calls, not for hundreds of MB.
        *request.timeout_mut() = Some(DOWNLOAD_LIMIT);
        let method = request.method().to_string();
        let (head, body) = self
            .send(
                &request,
                retry_clone(self, &request),
                |mut resp| async move {
                    if !resp.status().is_success() {
                        let bytes = resp.bytes().await.map_err(BodyError::Http)?;
                        return Ok(DownloadBody::Failed(bytes));
                    }
                    let file = tempfile::NamedTempFile::new_in(dir).map_err(BodyError::Io)?;
                    let (std_file, path) = file.into_parts();
                    let mut out = tokio::fs::File::from_std(std_file);
                    let mut hasher = Hasher::new(checksum);
                    let mut len = 0u64;
                    loop {
                        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
                            Err(_) => return Err(BodyError::Idle(idle)),
                            Ok(chunk) => chunk.map_err(BodyError::Http)?,
                        };
                        let Some(chunk) = chunk else { break };
                        hasher.update(&chunk);
                        len += u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                        out.write_all(&chunk).await.map_err(BodyError::Io)?;
                    }
                    out.flush().await.map_err(BodyError::Io)?;
                    out.sync_all().await.map_err(BodyError::Io)?;
                    let std_file = out.into_std().await;
                    Ok(DownloadBody::File {
                        file: tempfile::NamedTempFile::from_parts(std_file, path),
                        len,
                        digest: hasher.finish(),
                    })
                },
            )
            .await?;
        match body {
            DownloadBody::File { file, len, digest } => Ok(Downloaded {
                url: head.url,
                headers: head.headers,
                file,
                len,
                digest,
            }),
            DownloadBody::Failed(body) => Err(status_error(
                &method,
                &Fetched {
                    url: head.url,
                    status: head.status,
                    headers: head.headers,
                    body,
                },
            )),
        }
    }

    /// Sends `request` (a request without a body; PUT, POST) with the file at `path` as its
    /// body, streamed from disk with its length as `Content-Length`: memory stays flat
    /// whatever the size. Retried as [`Http::fetch`] does, reopening the file for every
    /// attempt. The transfer may take as long as [`UPLOAD_MIN_RATE`] needs, plus a minute.
    /// Any final status is returned as it is, with the body read in full.
    pub async fn upload(
        &self,
        request: Request,
        path: &std::path::Path,
    ) -> Result<Fetched, HttpError> {
        let file_error = |e: std::io::Error| HttpError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let len = tokio::fs::metadata(path).await.map_err(file_error)?.len();
        let limit = Duration::from_secs(60 + len / UPLOAD_MIN_RATE);
        let template = retry_clone(self, &request);
        let make = || async {
            let mut request = template().await?;
            let file = tokio::fs::File::open(path).await.map_err(file_error)?;
            *request.body_mut() = Some(reqwest::Body::wrap_stream(file_chunks(file)));
            request
                .headers_mut()
                .insert(reqwest::header::CONTENT_LENGTH, len.into());
            *request.timeout_mut() = Some(limit);
            Ok(request)
        };
        self.send_and_read(&request, make).await
    }

    /// The retry loop of [`Http::fetch`], [`Http::download`] and [`Http::upload`]: sends
    /// what `make` builds for each attempt (a copy of `request`, with a fresh body), reads the
    /// response with `read`, and tries again on 429, 5xx, transport errors and failed reads
    /// (not on local I/O errors).
    async fn send<T, M, MFut, F, Fut>(
        &self,
        request: &Request,
        mut make: M,
        mut read: F,
    ) -> Result<(Head, T), HttpError>
    where
        M: FnMut() -> MFut,
        MFut: std::future::Future<Output = Result<Request, HttpError>>,
        F: FnMut(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, BodyError>>,
    {
        let method = request.method().to_string();
        let url = request.url().clone();
        let shown = self.shown(&url);
        let limit = self.limit_for(&url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let this = make().await?;
            let outcome = {
                let _permit = limit.acquire().await.map_err(|e| HttpError::Transport {
                    method: method.clone(),
                    url: shown.clone(),
                    message: e.to_string(),
                })?;
                match self.client.execute(this).await {
                    Ok(resp) => {
                        let head = Head {
                            url: if self.secret_urls {
                                origin_only(resp.url())
                            } else {
                                resp.url().clone()
                            },
                            status: resp.status(),
                            headers: resp.headers().clone(),
                        };
                        read(resp).await.map(|body| (head, body))
                    }
                    Err(e) => Err(BodyError::Http(e)),
                }
            };
            let wait = match &outcome {
                Ok((head, _)) if is_retryable(head.status) => {
                    Some(self.delay(attempt, Some(&head.headers)))
                }
                Ok(_) => None,
                Err(BodyError::Http(e))
                    if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() =>
                {
                    Some(self.delay(attempt, None))
                }
                Err(BodyError::Idle(_)) => Some(self.delay(attempt, None)),
                Err(_) => None,
            };
            match (outcome, wait) {
                (Ok((head, _)), Some(wait)) if attempt < self.retry.attempts => {
                    tracing::warn!(url = %shown, status = %head.status, attempt, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                }
                (Err(e), Some(wait)) if attempt < self.retry.attempts => {
                    let error = self.describe_body(&e, &url);
                    tracing::warn!(url = %shown, %error, attempt, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                }
                (Ok(done), _) => return Ok(done),
                (Err(e), _) => {
                    return Err(HttpError::Transport {
                        method,
                        url: shown,
                        message: self.describe_body(&e, &url),
                    })
                }
            }
        }
    }

    fn describe_body(&self, e: &BodyError, url: &Url) -> String {
        match e {
            BodyError::Http(e) => self.describe(e, url),
            BodyError::Idle(idle) => format!("no data for {} s", idle.as_secs_f64()),
            BodyError::Io(e) => format!("writing the download: {e}"),
        }
    }

    /// How long to wait before the next attempt: `Retry-After` when given (capped), else
    /// exponential backoff.
    fn delay(&self, attempt: u32, headers: Option<&HeaderMap>) -> Duration {
        let backoff = self
            .retry
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        headers
            .and_then(|h| h.get(RETRY_AFTER))
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .unwrap_or(backoff)
            .min(self.retry.max_delay)
    }
}

/// What [`Http::send`] sends for each attempt of a request with no body or a clonable one: a
/// copy. A request with a streamed body cannot be copied; such a body goes through
/// [`Http::upload`].
fn retry_clone<'a>(
    http: &'a Http,
    request: &'a Request,
) -> impl Fn() -> std::future::Ready<Result<Request, HttpError>> + 'a {
    move || {
        std::future::ready(request.try_clone().ok_or_else(|| HttpError::Transport {
            method: request.method().to_string(),
            url: http.shown(request.url()),
            message: "a streamed request body cannot be retried".into(),
        }))
    }
}

/// The chunks of a file, read as the request body is sent.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut chunk = bytes::BytesMut::zeroed(UPLOAD_CHUNK);
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        chunk.truncate(n);
        Ok(Some((chunk.freeze(), file)))
    })
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let now = time::OffsetDateTime::now_utc();
    Some(Duration::try_from(when - now).unwrap_or(Duration::ZERO))
}

/// An error and its causes on one line (reqwest hides the interesting part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

/// Turns a non-success status into an error naming method and URL.
pub fn require_success(method: &str, f: Fetched) -> Result<Fetched, HttpError> {
    if f.status.is_success() {
        Ok(f)
    } else {
        Err(status_error(method, &f))
    }
}

/// The error of a response whose status is not a success.
fn status_error(method: &str, f: &Fetched) -> HttpError {
    let detail = match f.status {
        StatusCode::NOT_FOUND => " (not found: check the repository name)".to_owned(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            " (access denied: check the credentials)".to_owned()
        }
        _ if !f.body.is_empty() => format!(": {}", snippet(&f.body)),
        _ => String::new(),
    };
    HttpError::Status {
        method: method.to_owned(),
        url: f.url.to_string(),
        status: f.status,
        detail,
    }
}

/// The `next` link of a paginated answer, resolved against the request URL.
pub fn next_link(page: &Fetched) -> Result<Option<Url>, HttpError> {
    let Some(link) = page.header("link") else {
        return Ok(None);
    };
    for part in link.split(',') {
        let mut pieces = part.split(';');
        let target = pieces.next().unwrap_or("").trim();
        let is_next = pieces.any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            continue;
        }
        let target = target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .ok_or_else(|| HttpError::BadBody {
                url: page.url.to_string(),
                message: format!("bad Link header {link:?}"),
            })?;
        let url = page.url.join(target).map_err(|_| HttpError::BadBody {
            url: page.url.to_string(),
            message: format!("bad Link header {link:?}"),
        })?;
        return Ok(Some(url));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn page(link: Option<&str>) -> Fetched {
        let mut headers = HeaderMap::new();
        if let Some(link) = link {
            headers.insert("link", link.parse().unwrap());
        }
        Fetched {
            url: Url::parse("https://r.example/v2/a/b/tags/list?n=2").unwrap(),
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn link_headers() {
        assert_eq!(next_link(&page(None)).unwrap(), None);
        let rel = page(Some(r#"</v2/a/b/tags/list?n=2&last=x>; rel="next""#));
        assert_eq!(
            next_link(&rel).unwrap().unwrap().as_str(),
            "https://r.example/v2/a/b/tags/list?n=2&last=x"
        );
        let gh = page(Some(
            r#"<https://api.example/r?page=2>; rel="next", <https://api.example/r?page=5>; rel="last""#,
        ));
        assert_eq!(
            next_link(&gh).unwrap().unwrap().as_str(),
            "https://api.example/r?page=2"
        );
        let last_only = page(Some(r#"<https://api.example/r?page=1>; rel="prev""#));
        assert_eq!(next_link(&last_only).unwrap(), None);
        assert!(next_link(&page(Some(r#"/no-brackets; rel="next""#))).is_err());
    }

    #[test]
    fn proxy_passwords_are_not_shown() {
        for proxy in [
            "http://neco:pw-0xsecret@127.0.0.1:3128/",
            "socks5://neco:pw-0xsecret@127.0.0.1:1080/",
            "ftp://neco:pw-0xsecret@127.0.0.1/",
        ] {
            let options = HttpOptions {
                proxy: Some(Url::parse(proxy).unwrap()),
                ..HttpOptions::default()
            };
            assert!(!format!("{options:?}").contains("pw-0xsecret"));
            match Http::with_options(options) {
                Ok(http) => assert!(!format!("{http:?}").contains("pw-0xsecret")),
                Err(e) => assert!(!format!("{e} {e:?}").contains("pw-0xsecret"), "{e:?}"),
            }
        }
    }

    #[test]
    fn delay_honours_retry_after_and_caps() {
        let http = Http::new(
            1,
            RetryPolicy {
                attempts: 3,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
            },
        )
        .unwrap();
        assert_eq!(http.delay(1, None), Duration::from_millis(100));
        assert_eq!(http.delay(3, None), Duration::from_millis(400));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(http.delay(1, Some(&h)), Duration::from_secs(2));
        h.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(http.delay(1, Some(&h)), Duration::from_secs(5));
    }
}
