//! The etcd storage layer: every key of the schema (DESIGN.md §4), with neco's transaction and
//! revision discipline (reference/neco-cd.md §5) and its known bugs fixed: LRNs are numbers
//! everywhere, and removing a server's `install/<LRN>/` never touches another server's keys.

use crate::config::EtcdConfig;
use crate::etcd::{Etcd, Patience};
use crate::types::{ContentsStatus, Lrn, PendingNotice, UpdateRequest, UpdateStatus};
use crate::watch::{Seen, Watch};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Keys, relative to the prefix.
pub mod keys {
    use crate::types::Lrn;

    pub const LEADER_UPDATER: &str = "leader/updater/";
    pub const LEADER_WORKER: &str = "leader/worker/";
    pub const INFO: &str = "info/";
    pub const BOOTSERVERS: &str = "info/bootservers/";
    pub const NECO_RELEASE: &str = "info/neco-release";
    pub const STATUS: &str = "status/";
    pub const CURRENT: &str = "status/current";
    pub const STATUSES: &str = "status/bootservers/";
    pub const CONTENTS: &str = "contents/";
    pub const CONFIG: &str = "config/";
    /// Liveness: a key per boot server bound to a lease its worker keeps alive.
    pub const ALIVE: &str = "alive/";
    /// The last request whose success was notified (its JSON), written by the updater leader
    /// after it sent the notice: a leader elected between a completion and its notice sends
    /// it (an extension of neco's schema; outside `status/`, which the workers watch).
    pub const NOTIFIED: &str = "notice/succeeded";
    /// A begin or failure notice not sent yet ([`crate::types::PendingNotice`]): written with
    /// the request that makes the event, removed by the leader once it sent it, so a leader
    /// that dies in between leaves it to the next one (also an extension of neco's schema).
    pub const PENDING_NOTICE: &str = "notice/pending";

    pub fn bootserver(lrn: Lrn) -> String {
        format!("{BOOTSERVERS}{lrn}")
    }

    pub fn status(lrn: Lrn) -> String {
        format!("{STATUSES}{lrn}")
    }

    pub fn alive(lrn: Lrn) -> String {
        format!("{ALIVE}{lrn}")
    }

    pub fn contents(target: &str) -> String {
        format!("{CONTENTS}{target}")
    }

    /// Everything recorded as installed on one server. The trailing `/` keeps `install/1/`
    /// from matching `install/10/`.
    pub fn install(lrn: Lrn) -> String {
        format!("install/{lrn}/")
    }

    pub fn container(lrn: Lrn, name: &str) -> String {
        format!("install/{lrn}/containers/{name}")
    }

    pub fn deb(lrn: Lrn, name: &str) -> String {
        format!("install/{lrn}/debs/{name}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot reach etcd at {endpoints} within {timeout}: {message}")]
    Unreachable {
        endpoints: String,
        timeout: String,
        message: String,
    },
    /// The etcd settings of the configuration cannot work (a TLS file, the CA, the client
    /// certificate, the user or password): a restart does not help.
    #[error("etcd configuration: {message}")]
    Misconfigured { message: String },
    #[error("etcd {op} {key}: {source}")]
    Etcd {
        op: &'static str,
        key: String,
        source: Box<etcd_client::Error>,
    },
    #[error(
        "etcd {op} {key}: no member answered for {retried} (last tried {endpoint}): {message}"
    )]
    Unavailable {
        op: &'static str,
        key: String,
        endpoint: String,
        retried: String,
        message: String,
    },
    #[error(
        "the update request changed after revision {revision}: the status of the request it \
         replaced is not written"
    )]
    Replaced { revision: i64 },
    #[error("lost the leadership (the leader key {key} is gone)")]
    NoLeader { key: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("the update request is not stopped: `neco recover` only clears a stopped update")]
    NotStopped,
    #[error(
        "the cluster is already set up (an update request exists); use `neco join` to add a server"
    )]
    AlreadySetUp,
    #[error("{key}: malformed value {value:?}: {message}")]
    BadValue {
        key: String,
        value: String,
        message: String,
    },
    #[error("the watch on {key} ended: {message}")]
    WatchEnded { key: String, message: String },
    #[error("etcd answered {what}")]
    Unexpected { what: String },
}

impl StorageError {
    /// Whether the configuration must change before a retry can succeed (the daemons exit 2
    /// then, which systemd does not restart).
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Misconfigured { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A config key and its etcd key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKey {
    Env,
    Slack,
    Proxy,
    CheckUpdateInterval,
    WorkerTimeout,
    GitHubToken,
    /// The fixed version followed in env `test`.
    TestVersion,
}

impl ConfigKey {
    pub const ALL: [ConfigKey; 7] = [
        Self::Env,
        Self::Slack,
        Self::Proxy,
        Self::CheckUpdateInterval,
        Self::WorkerTimeout,
        Self::GitHubToken,
        Self::TestVersion,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::Slack => "slack",
            Self::Proxy => "proxy",
            Self::CheckUpdateInterval => "check-update-interval",
            Self::WorkerTimeout => "worker-timeout",
            Self::GitHubToken => "github-token",
            Self::TestVersion => "test-version",
        }
    }

    /// The key relative to the prefix.
    pub fn key(self) -> &'static str {
        match self {
            Self::Env => "config/env",
            Self::Slack => "config/notification/slack",
            Self::Proxy => "config/proxy",
            Self::CheckUpdateInterval => "config/check-update-interval",
            Self::WorkerTimeout => "config/worker-timeout",
            Self::GitHubToken => "config/github-token",
            Self::TestVersion => "config/test-version",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which releases the updater follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// Never update (the key is absent).
    None,
    /// The fixed version of `config/test-version`, for tests.
    Test,
    /// Newest release or pre-release tagged `release-…`.
    Staging,
    /// Newest full release.
    Prod,
}

impl Env {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "test" => Some(Self::Test),
            "staging" => Some(Self::Staging),
            "prod" => Some(Self::Prod),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Test => "test",
            Self::Staging => "staging",
            Self::Prod => "prod",
        }
    }
}

/// The TTL of a worker's liveness lease: a dead worker's key disappears this long after its
/// last renewal.
pub const LIVENESS_TTL: Duration = Duration::from_secs(5);
/// How long after a request a listed worker may take to show its liveness key.
pub const LIVENESS_GRACE: Duration = Duration::from_secs(30);

/// The defaults of the duration settings.
pub const DEFAULT_CHECK_UPDATE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A consistent view of the update state at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub request: Option<UpdateRequest>,
    /// Statuses by LRN, whatever their version.
    pub statuses: BTreeMap<Lrn, UpdateStatus>,
    /// `info/neco-release`, empty when absent.
    pub latest: String,
    /// Registered boot servers, numerically sorted.
    pub servers: Vec<Lrn>,
    /// Values that could not be read: `(key, error)`. Reported, not fatal.
    pub malformed: Vec<(String, String)>,
    /// `notice/succeeded`: the last request whose success was notified.
    pub notified: Option<UpdateRequest>,
    /// `notice/pending`: a begin or failure notice not sent yet.
    pub pending_notice: Option<PendingNotice>,
}

/// An event of a watch on `status/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusEvent {
    Request(UpdateRequest),
    Status(Lrn, UpdateStatus),
}

/// The etcd schema over a connection that fails over between members ([`Etcd`]), with the key
/// prefix applied.
#[derive(Clone)]
pub struct Storage {
    etcd: Etcd,
    prefix: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A put that writes nothing when the key already holds `value`: a request retried after a
/// first attempt that was applied (its answer lost with its member) adds no second event for
/// the watchers (a worker at the next barrier would take a repeated status for a step back).
fn put_once(key: &str, value: &str) -> TxnOp {
    TxnOp::txn(
        Txn::new()
            .when(vec![Compare::value(key, CompareOp::Equal, value)])
            .or_else(vec![TxnOp::put(key, value, None)]),
    )
}

impl Storage {
    /// Connects to the first configured member that answers within the dial timeout; requests
    /// move to the next member when it fails ([`Etcd`]).
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        Self::connect_with(config, Patience::DAEMON).await
    }

    /// [`Storage::connect`] with the given patience ([`Patience::CLI`] for the operator's
    /// commands).
    pub async fn connect_with(config: &EtcdConfig, patience: Patience) -> Result<Self> {
        Ok(Self {
            etcd: Etcd::connect(config, patience).await?,
            prefix: config.prefix.clone(),
        })
    }

    /// The physical key of a relative key.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn relative(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned()
    }

    /// The client of the current member (for tests that write as other programs do).
    pub fn client(&self) -> Client {
        self.etcd.client().0
    }

    /// The connection (for leases and elections, which follow it from member to member).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// A get of one physical key (or prefix, by `options`), retried on other members.
    async fn get(
        &self,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        self.etcd
            .call("get", key, |mut client| {
                let options = options.clone();
                async move { client.get(key, options).await }
            })
            .await
    }

    /// A transaction, retried on other members: every transaction here is safe to repeat
    /// (a repeated put writes the same value; a guard that held still holds).
    async fn txn(&self, key: &str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.etcd
            .call("txn", key, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
    }

    async fn get_value(&self, relative: &str) -> Result<Option<(String, i64)>> {
        let key = self.key(relative);
        let resp = self.get(&key, None).await?;
        Ok(resp.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        }))
    }

    async fn put_value(&self, relative: &str, value: &str) -> Result<()> {
        let key = self.key(relative);
        self.etcd
            .call("put", &key, |mut client| {
                let key = key.clone();
                async move { client.put(key, value, None).await }
            })
            .await?;
        Ok(())
    }

    /// A transaction that runs `ops` only while `guard` (a leader key, physical) exists.
    async fn guarded(&self, guard: &str, ops: Vec<TxnOp>, what: &str) -> Result<()> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(guard, CompareOp::Greater, 0)])
            .and_then(ops);
        let resp = self.txn(&self.key(what), txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StorageError::NoLeader {
                key: guard.to_owned(),
            })
        }
    }

    // --- config ------------------------------------------------------------------------------

    /// A config value; `None` when unset.
    pub async fn config(&self, key: ConfigKey) -> Result<Option<String>> {
        Ok(self.get_value(key.key()).await?.map(|(v, _)| v))
    }

    /// Writes a config value as it is (callers validate).
    pub async fn put_config(&self, key: ConfigKey, value: &str) -> Result<()> {
        self.put_value(key.key(), value).await
    }

    pub async fn env(&self) -> Result<Env> {
        match self.config(ConfigKey::Env).await? {
            None => Ok(Env::None),
            Some(text) => Env::parse(&text).ok_or_else(|| StorageError::BadValue {
                key: self.key(ConfigKey::Env.key()),
                value: text,
                message: "expected none, test, staging or prod".into(),
            }),
        }
    }

    /// Removes a config value (back to its default).
    pub async fn delete_config(&self, key: ConfigKey) -> Result<()> {
        let full = self.key(key.key());
        self.etcd
            .call("delete", &full, |mut client| {
                let full = full.clone();
                async move { client.delete(full, None).await }
            })
            .await?;
        Ok(())
    }

    /// A duration setting, stored as decimal nanoseconds like neco.
    pub async fn duration_config(&self, key: ConfigKey, default: Duration) -> Result<Duration> {
        match self.config(key).await? {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(Duration::from_nanos)
                .map_err(|_| StorageError::BadValue {
                    key: self.key(key.key()),
                    value: text,
                    message: "expected a count of nanoseconds".into(),
                }),
        }
    }

    // --- info --------------------------------------------------------------------------------

    pub async fn register_bootserver(&self, lrn: Lrn) -> Result<()> {
        self.put_value(&keys::bootserver(lrn), "").await
    }

    /// Removes a boot server and what it recorded as installed, in one transaction. The
    /// server must be registered when this starts; the removal itself is safe to repeat.
    pub async fn delete_bootserver(&self, lrn: Lrn) -> Result<()> {
        let server = self.key(&keys::bootserver(lrn));
        let install = self.key(&keys::install(lrn));
        if self.get(&server, None).await?.kvs().is_empty() {
            return Err(StorageError::NotFound {
                what: format!("boot server {lrn}"),
            });
        }
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(server.as_bytes(), None),
            TxnOp::delete(install.as_bytes(), Some(DeleteOptions::new().with_prefix())),
        ]);
        self.txn(&server, txn).await?;
        Ok(())
    }

    /// Registered boot servers, numerically sorted.
    pub async fn bootservers(&self) -> Result<Vec<Lrn>> {
        self.bootservers_at(0).await.map(|(servers, _)| servers)
    }

    async fn bootservers_at(&self, revision: i64) -> Result<(Vec<Lrn>, Vec<(String, String)>)> {
        let prefix = self.key(keys::BOOTSERVERS);
        let mut options = GetOptions::new().with_prefix().with_keys_only();
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = self.get(&prefix, Some(options)).await?;
        Ok(self.parse_bootservers(resp.kvs()))
    }

    /// Registered servers (numerically sorted) and the keys under `info/bootservers/` that
    /// are not a server number.
    fn parse_bootservers(
        &self,
        kvs: &[etcd_client::KeyValue],
    ) -> (Vec<Lrn>, Vec<(String, String)>) {
        let mut servers = Vec::new();
        let mut malformed = Vec::new();
        for kv in kvs {
            let key = self.relative(kv.key());
            match key
                .strip_prefix(keys::BOOTSERVERS)
                .and_then(|s| s.parse::<Lrn>().ok())
            {
                Some(lrn) => servers.push(lrn),
                None => malformed.push((self.key(&key), "not a boot server number".into())),
            }
        }
        servers.sort_unstable();
        (servers, malformed)
    }

    /// `info/neco-release`, empty when absent.
    pub async fn neco_release(&self) -> Result<String> {
        Ok(self
            .get_value(keys::NECO_RELEASE)
            .await?
            .map(|(v, _)| v)
            .unwrap_or_default())
    }

    pub async fn put_neco_release(&self, version: &str, leader_key: &str) -> Result<()> {
        let key = self.key(keys::NECO_RELEASE);
        self.guarded(
            leader_key,
            vec![put_once(&key, version)],
            keys::NECO_RELEASE,
        )
        .await
    }

    /// The first setup of a cluster: registers `servers`, records `version` as the latest
    /// release and requests an update to it, in one transaction that fails when a request
    /// already exists.
    pub async fn setup(
        &self,
        servers: &[Lrn],
        version: &str,
        started_at: time::OffsetDateTime,
    ) -> Result<UpdateRequest> {
        let mut sorted = servers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let request = UpdateRequest {
            version: version.to_owned(),
            servers: sorted.clone(),
            stop: false,
            started_at,
        };
        let current = self.key(keys::CURRENT);
        let mut ops: Vec<TxnOp> = sorted
            .iter()
            .map(|lrn| TxnOp::put(self.key(&keys::bootserver(*lrn)).as_bytes(), "", None))
            .collect();
        ops.push(TxnOp::put(
            self.key(keys::NECO_RELEASE).as_bytes(),
            version,
            None,
        ));
        ops.push(TxnOp::put(
            current.as_bytes(),
            self.encode(keys::CURRENT, &request)?.1,
            None,
        ));
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                current.as_bytes(),
                CompareOp::Equal,
                0,
            )])
            .and_then(ops);
        let resp = self.txn(&current, txn).await?;
        // A retried attempt after a first one that was applied finds this very request.
        if !resp.succeeded() && self.request().await?.map(|(r, _)| r).as_ref() != Some(&request) {
            return Err(StorageError::AlreadySetUp);
        }
        Ok(request)
    }

    // --- status ------------------------------------------------------------------------------

    fn decode<T: serde::de::DeserializeOwned>(&self, relative: &str, value: &str) -> Result<T> {
        serde_json::from_str(value).map_err(|e| StorageError::BadValue {
            key: self.key(relative),
            value: value.to_owned(),
            message: e.to_string(),
        })
    }

    /// The value of a single-key get, `None` when absent; a malformed one goes into
    /// `malformed` (its full key and the error) and counts as absent.
    fn decode_one<T: serde::de::DeserializeOwned>(
        &self,
        malformed: &mut Vec<(String, String)>,
        relative: &str,
        get: &etcd_client::GetResponse,
    ) -> Option<T> {
        let kv = get.kvs().first()?;
        let value = String::from_utf8_lossy(kv.value());
        match self.decode(relative, &value) {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                malformed.push((self.key(relative), e.to_string()));
                None
            }
        }
    }

    /// The full key of `relative` and `value` as the JSON to put there.
    fn encode<T: serde::Serialize>(&self, relative: &str, value: &T) -> Result<(String, String)> {
        let key = self.key(relative);
        match serde_json::to_string(value) {
            Ok(json) => Ok((key, json)),
            Err(e) => Err(StorageError::BadValue {
                key,
                value: String::new(),
                message: e.to_string(),
            }),
        }
    }

    /// The update request and its modification revision.
    pub async fn request(&self) -> Result<Option<(UpdateRequest, i64)>> {
        match self.get_value(keys::CURRENT).await? {
            None => Ok(None),
            Some((value, rev)) => Ok(Some((self.decode(keys::CURRENT, &value)?, rev))),
        }
    }

    /// Writes the request while `leader_key` exists.
    pub async fn put_request(&self, request: &UpdateRequest, leader_key: &str) -> Result<()> {
        let (key, value) = self.encode(keys::CURRENT, request)?;
        self.guarded(leader_key, vec![put_once(&key, &value)], keys::CURRENT)
            .await
    }

    /// Writes the request and the notice it owes ([`keys::PENDING_NOTICE`]) while
    /// `leader_key` exists, in one transaction.
    pub async fn put_request_with_notice(
        &self,
        request: &UpdateRequest,
        notice: &PendingNotice,
        leader_key: &str,
    ) -> Result<()> {
        let (key, value) = self.encode(keys::CURRENT, request)?;
        let (pending, notice) = self.encode(keys::PENDING_NOTICE, notice)?;
        self.guarded(
            leader_key,
            vec![put_once(&key, &value), put_once(&pending, &notice)],
            keys::CURRENT,
        )
        .await
    }

    /// Removes the pending notice once it was sent, if it is still `notice` (while
    /// `leader_key` exists).
    pub async fn clear_notice(&self, notice: &PendingNotice, leader_key: &str) -> Result<()> {
        let (pending, value) = self.encode(keys::PENDING_NOTICE, notice)?;
        self.guarded(
            leader_key,
            vec![TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::value(
                        pending.as_str(),
                        CompareOp::Equal,
                        value.as_str(),
                    )])
                    .and_then(vec![TxnOp::delete(pending.as_bytes(), None)]),
            )],
            keys::PENDING_NOTICE,
        )
        .await
    }

    /// Records that the success of `request` was notified.
    pub async fn put_notified(&self, request: &UpdateRequest, leader_key: &str) -> Result<()> {
        let (key, value) = self.encode(keys::NOTIFIED, request)?;
        self.guarded(leader_key, vec![put_once(&key, &value)], keys::NOTIFIED)
            .await
    }

    /// Writes the request and wipes every worker status, in one transaction.
    /// The notice it owes is written with it.
    pub async fn put_reconfigure_request(
        &self,
        request: &UpdateRequest,
        notice: &PendingNotice,
        leader_key: &str,
    ) -> Result<()> {
        let statuses = self.key(keys::STATUSES);
        let (key, value) = self.encode(keys::CURRENT, request)?;
        let (pending, notice) = self.encode(keys::PENDING_NOTICE, notice)?;
        self.guarded(
            leader_key,
            // Once: a retry after an applied attempt would wipe the statuses the workers
            // wrote for this request since.
            vec![TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::value(
                        key.as_str(),
                        CompareOp::Equal,
                        value.as_str(),
                    )])
                    .or_else(vec![
                        TxnOp::put(key.as_str(), value.as_str(), None),
                        TxnOp::delete(
                            statuses.as_bytes(),
                            Some(DeleteOptions::new().with_prefix()),
                        ),
                        TxnOp::put(pending.as_str(), notice.as_str(), None),
                    ]),
            )],
            keys::CURRENT,
        )
        .await
    }

    /// Writes a worker's status for the request written at `request_revision` (the request's
    /// modification revision), in a transaction that writes nothing once the request was
    /// rewritten (stopped, replaced, deleted): [`StorageError::Replaced`]. A worker that
    /// finishes a step of a stopped request cannot disturb the request that follows it.
    pub async fn put_status(
        &self,
        lrn: Lrn,
        status: &UpdateStatus,
        request_revision: i64,
    ) -> Result<()> {
        let relative = keys::status(lrn);
        let (key, value) = self.encode(&relative, status)?;
        let current = self.key(keys::CURRENT);
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                current.as_bytes(),
                CompareOp::Equal,
                request_revision,
            )])
            .and_then(vec![put_once(&key, &value)]);
        if self.txn(&key, txn).await?.succeeded() {
            Ok(())
        } else {
            Err(StorageError::Replaced {
                revision: request_revision,
            })
        }
    }

    pub async fn status(&self, lrn: Lrn) -> Result<Option<UpdateStatus>> {
        let relative = keys::status(lrn);
        match self.get_value(&relative).await? {
            None => Ok(None),
            Some((value, _)) => Ok(Some(self.decode(&relative, &value)?)),
        }
    }

    /// Everything the updater decides on, read in one transaction: one revision, one round
    /// trip (every worker takes one before each update).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let current = self.key(keys::CURRENT);
        let bootservers = self.key(keys::BOOTSERVERS);
        let release_key = self.key(keys::NECO_RELEASE);
        let status_prefix = self.key(keys::STATUSES);
        let notified_key = self.key(keys::NOTIFIED);
        let pending_key = self.key(keys::PENDING_NOTICE);
        let txn = Txn::new().and_then(vec![
            TxnOp::get(current.as_bytes(), None),
            TxnOp::get(
                bootservers.as_bytes(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
            TxnOp::get(release_key.as_bytes(), None),
            TxnOp::get(
                status_prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(notified_key.as_bytes(), None),
            TxnOp::get(pending_key.as_bytes(), None),
        ]);
        let resp = self.txn(&current, txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let gets: Vec<etcd_client::GetResponse> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                etcd_client::TxnOpResponse::Get(get) => Some(get),
                _ => None,
            })
            .collect();
        let [request_get, servers_get, release_get, statuses_get, notified_get, pending_get] =
            <[etcd_client::GetResponse; 6]>::try_from(gets).map_err(|gets| {
                StorageError::Unexpected {
                    what: format!(
                        "the snapshot transaction with {} get responses, not 6",
                        gets.len()
                    ),
                }
            })?;
        let mut malformed = Vec::new();
        let request = self.decode_one(&mut malformed, keys::CURRENT, &request_get);
        let notified = self.decode_one(&mut malformed, keys::NOTIFIED, &notified_get);
        let pending_notice = self.decode_one(&mut malformed, keys::PENDING_NOTICE, &pending_get);
        let (servers, bad_servers) = self.parse_bootservers(servers_get.kvs());
        malformed.extend(bad_servers);
        let latest = release_get
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .unwrap_or_default();
        let mut statuses = BTreeMap::new();
        for kv in statuses_get.kvs() {
            let relative = self.relative(kv.key());
            let value = String::from_utf8_lossy(kv.value());
            let lrn = relative
                .strip_prefix(keys::STATUSES)
                .and_then(|s| s.parse::<Lrn>().ok());
            match (lrn, self.decode::<UpdateStatus>(&relative, &value)) {
                (Some(lrn), Ok(status)) => {
                    statuses.insert(lrn, status);
                }
                (None, _) => {
                    malformed.push((self.key(&relative), "not a boot server number".into()))
                }
                (_, Err(e)) => malformed.push((self.key(&relative), e.to_string())),
            }
        }
        Ok(Snapshot {
            revision,
            request,
            statuses,
            latest,
            servers,
            malformed,
            notified,
            pending_notice,
        })
    }

    /// Deletes the stopped request, every status and every contents record, checking that the
    /// request did not change in between. Refuses a request that is not stopped.
    pub async fn clear_status_and_contents(&self) -> Result<()> {
        loop {
            let Some((request, revision)) = self.request().await? else {
                return Err(StorageError::NotFound {
                    what: "update request".into(),
                });
            };
            if !request.stop {
                return Err(StorageError::NotStopped);
            }
            let current = self.key(keys::CURRENT);
            let status = self.key(keys::STATUS);
            let contents = self.key(keys::CONTENTS);
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    current.as_bytes(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(vec![
                    TxnOp::delete(status.as_bytes(), Some(DeleteOptions::new().with_prefix())),
                    TxnOp::delete(
                        contents.as_bytes(),
                        Some(DeleteOptions::new().with_prefix()),
                    ),
                ]);
            let resp = self.txn(&current, txn).await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
    }

    // --- contents and install records --------------------------------------------------------

    pub async fn contents_status(&self, target: &str) -> Result<Option<ContentsStatus>> {
        let relative = keys::contents(target);
        match self.get_value(&relative).await? {
            None => Ok(None),
            Some((value, _)) => Ok(Some(self.decode(&relative, &value)?)),
        }
    }

    /// Records a contents upload while `leader_key` (of `leader/worker/`) exists.
    pub async fn put_contents_status(
        &self,
        target: &str,
        status: &ContentsStatus,
        leader_key: &str,
    ) -> Result<()> {
        let relative = keys::contents(target);
        let (key, value) = self.encode(&relative, status)?;
        self.guarded(leader_key, vec![put_once(&key, &value)], &relative)
            .await
    }

    pub async fn record_container(&self, lrn: Lrn, name: &str, tag: &str) -> Result<()> {
        self.put_value(&keys::container(lrn, name), tag).await
    }

    pub async fn container_tag(&self, lrn: Lrn, name: &str) -> Result<Option<String>> {
        Ok(self
            .get_value(&keys::container(lrn, name))
            .await?
            .map(|(v, _)| v))
    }

    pub async fn record_deb(&self, lrn: Lrn, name: &str, release: &str) -> Result<()> {
        self.put_value(&keys::deb(lrn, name), release).await
    }

    pub async fn deb_release(&self, lrn: Lrn, name: &str) -> Result<Option<String>> {
        Ok(self.get_value(&keys::deb(lrn, name)).await?.map(|(v, _)| v))
    }

    // --- liveness ----------------------------------------------------------------------------

    /// Boot servers whose liveness key exists, numerically sorted.
    pub async fn alive_servers(&self) -> Result<Vec<Lrn>> {
        let prefix = self.key(keys::ALIVE);
        let resp = self
            .get(
                &prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(self.alive_in(resp.kvs()))
    }

    /// The servers whose liveness key is among `kvs`, numerically sorted.
    fn alive_in(&self, kvs: &[etcd_client::KeyValue]) -> Vec<Lrn> {
        let mut alive: Vec<Lrn> = kvs
            .iter()
            .filter_map(|kv| {
                self.relative(kv.key())
                    .strip_prefix(keys::ALIVE)
                    .and_then(|s| s.parse().ok())
            })
            .collect();
        alive.sort_unstable();
        alive
    }

    /// Puts this server's liveness key bound to `lease` (a lease the caller keeps alive).
    pub async fn put_alive(&self, lrn: Lrn, lease: i64, version: &str) -> Result<()> {
        let key = self.key(&keys::alive(lrn));
        self.etcd
            .call("put", &key, |mut client| {
                let key = key.clone();
                let options = etcd_client::PutOptions::new().with_lease(lease);
                async move { client.put(key, version, Some(options)).await }
            })
            .await?;
        Ok(())
    }

    // --- watches -----------------------------------------------------------------------------
    //
    // Every wait below survives a member's death and a compaction (`crate::watch`): after a
    // compaction it decides from the state of its range what it missed.

    /// A watch of a relative key (or prefix) from revision `revision + 1`.
    fn watch(&self, relative: &str, prefix: bool, options: WatchOptions, revision: i64) -> Watch {
        Watch::new(
            &self.etcd,
            self.key(relative),
            prefix,
            options,
            revision + 1,
        )
    }

    /// The revision of etcd now (a read's header), to watch from.
    async fn revision_now(&self, relative: &str) -> Result<i64> {
        let key = self.key(relative);
        let resp = self
            .get(&key, Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Returns after the first change under `info/` after `revision` (also, spuriously, after
    /// a compaction hid what happened: callers read `info/` again).
    pub async fn wait_info(&self, revision: i64) -> Result<()> {
        let mut watch = self.watch(keys::INFO, true, WatchOptions::new(), revision);
        watch.next().await.map(|_| ())
    }

    /// Returns when `status/current` is deleted after `revision` (or is found absent after a
    /// compaction).
    pub async fn wait_request_deletion(&self, revision: i64) -> Result<()> {
        let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let mut watch = self.watch(keys::CURRENT, false, options, revision);
        loop {
            match watch.next().await? {
                Seen::Events(_) => return Ok(()),
                Seen::State { kvs } if kvs.is_empty() => return Ok(()),
                Seen::State { .. } => {}
            }
        }
    }

    /// Returns the first request written after `revision`, with its revision (after a
    /// compaction: the current request, if it was written after `revision`).
    pub async fn wait_request(&self, revision: i64) -> Result<(UpdateRequest, i64)> {
        let options = WatchOptions::new().with_filters([WatchFilterType::NoDelete]);
        let mut watch = self.watch(keys::CURRENT, false, options, revision);
        loop {
            let kv = match watch.next().await? {
                Seen::Events(events) => events.into_iter().find_map(|e| e.kv().cloned()),
                Seen::State { kvs } => kvs.into_iter().find(|kv| kv.mod_revision() > revision),
            };
            if let Some(kv) = kv {
                let value = String::from_utf8_lossy(kv.value());
                return Ok((self.decode(keys::CURRENT, &value)?, kv.mod_revision()));
            }
        }
    }

    /// Returns the relative key of the first change under `config/` from now on (`config/`
    /// itself when a compaction hid which key changed).
    pub async fn wait_config_change(&self) -> Result<String> {
        let revision = self.revision_now(keys::CONFIG).await?;
        let mut watch = self.watch(keys::CONFIG, true, WatchOptions::new(), revision);
        match watch.next().await? {
            Seen::Events(events) => Ok(events
                .first()
                .and_then(|e| e.kv())
                .map_or_else(|| keys::CONFIG.to_owned(), |kv| self.relative(kv.key()))),
            Seen::State { .. } => Ok(keys::CONFIG.to_owned()),
        }
    }

    /// Watches `status/` (request and worker statuses) from `revision + 1` and hands every put
    /// to `handle` until it returns `Some`. Malformed values are logged with their key and
    /// skipped: one bad value must not end the watch.
    pub async fn watch_status<T>(
        &self,
        revision: i64,
        mut handle: impl FnMut(StatusEvent) -> Option<T>,
    ) -> Result<T> {
        let mut events = self.status_events(revision);
        loop {
            match events.next().await {
                Ok(event) => {
                    if let Some(done) = handle(event) {
                        return Ok(done);
                    }
                }
                Err(StorageError::BadValue {
                    key,
                    value,
                    message,
                }) => tracing::error!(%key, %value, %message, "ignoring a malformed value"),
                Err(e) => return Err(e),
            }
        }
    }

    /// The puts under `status/` from `revision + 1`, one at a time, for callers that do work
    /// between events (the worker runs its steps between barriers). After a compaction, the
    /// keys written since the last event seen come as one put each (their last value), in
    /// revision order: the same end state, without the values in between.
    pub fn status_events(&self, revision: i64) -> StatusEvents {
        let options = WatchOptions::new().with_filters([WatchFilterType::NoDelete]);
        StatusEvents {
            storage: self.clone(),
            watch: self.watch(keys::STATUS, true, options, revision),
            seen: revision,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Watches the liveness keys from `revision + 1` and returns the first of `servers` whose
    /// key is deleted (its lease expired or was revoked), or found missing after a compaction.
    pub async fn wait_dead_server(&self, revision: i64, servers: &[Lrn]) -> Result<Lrn> {
        let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let mut watch = self.watch(keys::ALIVE, true, options, revision);
        loop {
            match watch.next().await? {
                Seen::Events(events) => {
                    let kvs: Vec<_> = events.iter().filter_map(|e| e.kv()).cloned().collect();
                    if let Some(lrn) = self
                        .alive_in(&kvs)
                        .into_iter()
                        .find(|l| servers.contains(l))
                    {
                        return Ok(lrn);
                    }
                }
                Seen::State { kvs } => {
                    let alive = self.alive_in(&kvs);
                    if let Some(lrn) = servers.iter().copied().find(|l| !alive.contains(l)) {
                        return Ok(lrn);
                    }
                }
            }
        }
    }
}

/// A watch on `status/` yielding one event at a time.
pub struct StatusEvents {
    storage: Storage,
    watch: Watch,
    /// The revision of the last put handed out.
    seen: i64,
    /// Decoded events of the last response; a malformed value is an error of its own event
    /// only, so the events after it are not lost.
    pending: std::collections::VecDeque<Result<StatusEvent>>,
}

impl std::fmt::Debug for StatusEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusEvents")
            .field("key", &self.watch.key())
            .field("seen", &self.seen)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl StatusEvents {
    /// The next put of the request or of a worker status, in revision order.
    pub async fn next(&mut self) -> Result<StatusEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let mut kvs: Vec<etcd_client::KeyValue> = match self.watch.next().await? {
                Seen::Events(events) => events
                    .into_iter()
                    .filter(|e| e.event_type() == EventType::Put)
                    .filter_map(|e| e.kv().cloned())
                    .collect(),
                Seen::State { kvs } => {
                    let seen = self.seen;
                    let mut newer: Vec<_> = kvs
                        .into_iter()
                        .filter(|kv| kv.mod_revision() > seen)
                        .collect();
                    newer.sort_by_key(|kv| kv.mod_revision());
                    newer
                }
            };
            for kv in kvs.drain(..) {
                self.seen = self.seen.max(kv.mod_revision());
                if let Some(event) = self.storage.status_event(&kv) {
                    self.pending.push_back(event);
                }
            }
        }
    }
}

impl Storage {
    /// The event of a put under `status/`; `None` for a key that is neither the request nor
    /// a worker status.
    fn status_event(&self, kv: &etcd_client::KeyValue) -> Option<Result<StatusEvent>> {
        let relative = self.relative(kv.key());
        let value = String::from_utf8_lossy(kv.value());
        if relative == keys::CURRENT {
            Some(self.decode(&relative, &value).map(StatusEvent::Request))
        } else {
            let lrn = relative
                .strip_prefix(keys::STATUSES)
                .and_then(|s| s.parse::<Lrn>().ok())?;
            Some(
                self.decode(&relative, &value)
                    .map(|st| StatusEvent::Status(lrn, st)),
            )
        }
    }
}
