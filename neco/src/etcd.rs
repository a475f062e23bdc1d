//! The connection to etcd: every configured member, one at a time, and the next one when it
//! fails.
//!
//! etcd-client balances the requests of one client over every endpoint it is given without
//! skipping a dead one, so a client of all members fails at random while any member is down.
//! [`Etcd`] instead talks to one member and moves to the next (in the configured order,
//! wrapping around) when a request fails in a way that another member may not: the member
//! does not answer, its connection broke, or it is busy electing a leader. Every request gets
//! a timeout of its own and is retried on the next member for a while ([`Patience`]);
//! watches ([`crate::watch`]) reopen on the new member from the revision after the last one
//! they saw. Answers are never retried (a failed comparison, a missing key, a denied
//! permission); every request is written to be safe to repeat.

use crate::config::EtcdConfig;
use crate::duration;
use crate::storage::{Result, StorageError};
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long requests wait for a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// How long one request may take before its member counts as failed.
    pub request_timeout: Duration,
    /// How long a request is retried (on the next member each time) before it fails.
    pub retry_for: Duration,
}

impl Patience {
    /// The daemons: ride out an election, a stall or a member's death; fail (and be
    /// restarted) only when no member serves for 20 s.
    pub const DAEMON: Self = Self {
        request_timeout: Duration::from_secs(5),
        retry_for: Duration::from_secs(20),
    };
    /// The operator CLI: rides out an election, and says within seconds that etcd cannot be
    /// reached.
    pub const CLI: Self = Self {
        request_timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(6),
    };
}
/// The pause between two attempts of one request.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// HTTP/2 pings on every connection, so that a watch or keep-alive stream to a member that is
/// gone (powered off, cut off) ends instead of waiting forever. etcd refuses pings more
/// frequent than every 5 s (`--grpc-keepalive-min-time`).
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What a failed request says about its member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// This member cannot serve now (unreachable, connection broken, no leader, busy): another
    /// member may.
    Member,
    /// An answer: retrying does not change it.
    Answer,
}

/// gRPC status codes (etcd-client does not re-export tonic's `Code`).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Classifies an error of etcd-client.
pub(crate) fn classify(error: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match error {
        // The first keep-alive of a stream answers "lease not found" for a lease that is gone.
        E::LeaseKeepAliveError(message) if message.contains("not found") => Failure::Answer,
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Failure::Member
        }
        // An auth token that etcd dropped (a simple token expires after five idle minutes,
        // and every token of a user goes when its password is set): reconnecting
        // authenticates again.
        E::GRpcStatus(status)
            if i32::from(status.code()) == code::UNAUTHENTICATED
                && status.message().contains("invalid auth token") =>
        {
            Failure::Member
        }
        E::GRpcStatus(status) => match i32::from(status.code()) {
            // "etcdserver: leader changed", "etcdserver: request timed out", "etcdserver: no
            // leader", a refused connection: Unavailable. A broken connection: Unknown with
            // the transport's message ("h2 protocol error: error reading a body from
            // connection"); etcd answers with the codes of its errors, not Unknown.
            code::UNAVAILABLE
            | code::DEADLINE_EXCEEDED
            | code::CANCELLED
            | code::ABORTED
            | code::UNKNOWN => Failure::Member,
            _ => Failure::Answer,
        },
        _ => Failure::Answer,
    }
}

struct Current {
    /// Index into the endpoints.
    index: usize,
    /// Increases with every move to another member.
    generation: u64,
    client: Client,
}

struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    dial_timeout: Duration,
    patience: Patience,
    current: RwLock<Current>,
    /// One reconnection at a time: callers that saw the same failure wait for its outcome.
    moving: tokio::sync::Mutex<()>,
    /// The generation, for watches and keep-alives that must move along.
    moved: tokio::sync::watch::Sender<u64>,
}

/// A connection to one member of the configured etcd cluster at a time. Cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.endpoints)
            .field("member", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connects to the first configured member that answers within the dial timeout.
    pub async fn connect(config: &EtcdConfig, patience: Patience) -> Result<Self> {
        let unreachable = |message: String| StorageError::Unreachable {
            endpoints: config.endpoints.join(","),
            timeout: duration::format(config.dial_timeout),
            message,
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout)
            // The transport's own limit, above every request's (a campaign waits long).
            .with_timeout(Duration::from_secs(30).max(config.dial_timeout))
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), password.expose().to_owned());
        }
        if let Some(tls) = &config.tls {
            let tls =
                tls_options(tls).map_err(|message| StorageError::Misconfigured { message })?;
            options = options.with_tls(tls);
        }
        if config.endpoints.is_empty() {
            return Err(unreachable("no endpoint is configured".into()));
        }
        let mut failures = Vec::new();
        for (index, endpoint) in config.endpoints.iter().enumerate() {
            match connect_one(endpoint, options.clone(), config.dial_timeout).await {
                Ok(client) => {
                    let (moved, _) = tokio::sync::watch::channel(0);
                    return Ok(Self {
                        inner: Arc::new(Inner {
                            endpoints: config.endpoints.clone(),
                            options,
                            dial_timeout: config.dial_timeout,
                            patience,
                            current: RwLock::new(Current {
                                index,
                                generation: 0,
                                client,
                            }),
                            moving: tokio::sync::Mutex::new(()),
                            moved,
                        }),
                    });
                }
                Err(error) => {
                    if let Some(message) = misconfiguration(config, endpoint, &error) {
                        return Err(StorageError::Misconfigured { message });
                    }
                    failures.push(format!("{endpoint}: {error}"));
                }
            }
        }
        Err(unreachable(failures.join("; ")))
    }

    /// The client of the current member and its generation (for [`Etcd::failed`]).
    pub fn client(&self) -> (Client, u64) {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (current.client.clone(), current.generation)
    }

    /// The endpoint of the current member.
    pub fn endpoint(&self) -> String {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.endpoints[current.index].clone()
    }

    /// How long requests wait.
    pub fn patience(&self) -> Patience {
        self.inner.patience
    }

    /// Resolves when the connection moves past `generation`.
    pub async fn moved_past(&self, generation: u64) {
        let mut moved = self.inner.moved.subscribe();
        if moved.wait_for(|g| *g > generation).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Reports that the member of `generation` failed: moves to the next member that answers
    /// (unless another caller already moved). Keeps the current one when none answers.
    pub async fn failed(&self, generation: u64, reason: &str) {
        let _moving = self.inner.moving.lock().await;
        let start = {
            let current = self
                .inner
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.generation != generation {
                return;
            }
            current.index
        };
        let count = self.inner.endpoints.len();
        let failed = &self.inner.endpoints[start];
        for step in 1..=count {
            let index = (start + step) % count;
            let endpoint = &self.inner.endpoints[index];
            match connect_one(
                endpoint,
                self.inner.options.clone(),
                self.inner.dial_timeout,
            )
            .await
            {
                Ok(client) => {
                    let mut current = self
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    current.index = index;
                    current.generation = generation + 1;
                    current.client = client;
                    drop(current);
                    self.inner.moved.send_replace(generation + 1);
                    if index == start {
                        tracing::warn!(%endpoint, %reason, "no other etcd member answers; reconnected to the same one");
                    } else {
                        tracing::warn!(from = %failed, to = %endpoint, %reason, "moved to another etcd member");
                    }
                    return;
                }
                Err(error) => {
                    tracing::debug!(%endpoint, %error, "etcd member does not answer");
                }
            }
        }
        tracing::warn!(%failed, %reason, "no other etcd member answers; staying");
    }

    /// Runs a request on the current member, retried on the next members while its failures
    /// are the members' ([`Failure::Member`]) and the retry time ([`Patience`]) has not
    /// passed. `request` must
    /// be safe to repeat: an attempt that timed out may have been applied.
    pub async fn call<T, F, Fut>(&self, op: &'static str, key: &str, mut request: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let Patience {
            request_timeout,
            retry_for,
        } = self.inner.patience;
        let deadline = Instant::now() + retry_for;
        loop {
            let (client, generation) = self.client();
            let reason = match tokio::time::timeout(request_timeout, request(client)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if classify(&e) == Failure::Answer => {
                    return Err(StorageError::Etcd {
                        op,
                        key: key.to_owned(),
                        source: Box::new(e),
                    })
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}", duration::format(request_timeout)),
            };
            let endpoint = self.endpoint();
            if Instant::now() >= deadline {
                return Err(StorageError::Unavailable {
                    op,
                    key: key.to_owned(),
                    endpoint,
                    retried: duration::format(retry_for),
                    message: reason,
                });
            }
            tracing::warn!(op, %key, %endpoint, %reason, "etcd request failed; retrying");
            self.failed(generation, &reason).await;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Why one member could not be connected to.
#[derive(Debug)]
enum ConnectError {
    TimedOut,
    Etcd(etcd_client::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut => f.write_str("timed out"),
            Self::Etcd(e) => write!(f, "{e}"),
        }
    }
}

async fn connect_one(
    endpoint: &str,
    options: ConnectOptions,
    timeout: Duration,
) -> std::result::Result<Client, ConnectError> {
    // With a user, connecting authenticates (an RPC); otherwise the channel is lazy.
    let connect = Client::connect([endpoint], Some(options));
    let mut client = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ConnectError::TimedOut)?
        .map_err(ConnectError::Etcd)?;
    // A lazy channel connects on first use: prove that the member answers.
    tokio::time::timeout(timeout, client.status())
        .await
        .map_err(|_| ConnectError::TimedOut)?
        .map_err(ConnectError::Etcd)?;
    Ok(client)
}

/// The setting to blame when connecting failed in a way that no retry can cure: the server's
/// certificate is not valid for the configured CA, or the server refused the user and
/// password, or has no authentication for them. (A client certificate that the server refuses
/// is not recognized: after a TLS 1.3 handshake the client only sees the connection closed.)
/// `None` for anything else (a member down, a timeout).
fn misconfiguration(config: &EtcdConfig, endpoint: &str, error: &ConnectError) -> Option<String> {
    let ConnectError::Etcd(error) = error else {
        return None;
    };
    // tonic reports a failed TLS handshake as a status with rustls's message, or as a
    // transport error whose sources carry it.
    let mut texts = Vec::new();
    if let etcd_client::Error::GRpcStatus(status) = error {
        texts.push(status.message().to_owned());
    }
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        texts.push(e.to_string());
        source = e.source();
    }
    let found = |needle: &str| texts.iter().find(|t| t.contains(needle)).cloned();
    if let Some(text) = found("invalid peer certificate") {
        return Some(match config.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            Some(ca) => format!(
                "etcd.tls-ca {}: the certificate of {endpoint} is not valid for this CA ({text})",
                ca.display()
            ),
            None => format!(
                "the certificate of {endpoint} is not trusted ({text}); set etcd.tls-ca to the \
                 CA that signed it"
            ),
        });
    }
    if let Some(text) = found("authentication failed") {
        let user = config.username.as_deref().unwrap_or_default();
        return Some(format!(
            "etcd user {user:?}: {endpoint} refused the user name or its password ({text})"
        ));
    }
    if let Some(text) = found("authentication is not enabled") {
        return Some(format!(
            "etcd.username is set, but {endpoint} does not use authentication ({text}): \
             remove etcd.username and etcd.password"
        ));
    }
    None
}

/// The TLS settings with their files read; an error names the setting and the file.
fn tls_options(
    tls: &crate::config::TlsConfig,
) -> std::result::Result<etcd_client::TlsOptions, String> {
    let read = |setting: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("{setting} {}: cannot read it: {e}", p.display()))
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options =
            options.ca_certificate(etcd_client::Certificate::from_pem(read("etcd.tls-ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(etcd_client::Identity::from_pem(
            read("etcd.tls-cert", cert)?,
            read("etcd.tls-key", key)?,
        ));
    }
    Ok(options)
}
