//! Shared set-up of the neco-updater end-to-end tests: a real etcd, the GitHub stand-in, a
//! webhook sink, boot-server roots, updater processes (each a `ChildGuard` whose log is printed
//! when the test fails) and workers simulated through the neco library.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use dctest::{ChildGuard, EtcdCluster, GitHubStandIn, WebhookSink};
use neco::config::EtcdConfig;
use neco::lease::KeptLease;
use neco::storage::{ConfigKey, Storage};
use neco::types::{Lrn, UpdateCondition, UpdateRequest, UpdateStatus};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository whose releases the updater follows.
pub const REPO: &str = "cybozu-go/neco";
/// The version `neco setup` requests in these tests.
pub const V1: &str = "2026.11.26-1";
/// A newer release.
pub const V2: &str = "2026.11.27-2";

/// One simulated data center: etcd, GitHub, the webhook sink and a client.
pub struct Dc {
    pub storage: Storage,
    pub github: GitHubStandIn,
    pub sink: WebhookSink,
    pub etcd: EtcdCluster,
    dir: tempfile::TempDir,
}

impl Dc {
    /// A single-member etcd.
    pub async fn start() -> Self {
        Self::with_etcd(EtcdCluster::single().expect("start etcd")).await
    }

    pub async fn with_etcd(etcd: EtcdCluster) -> Self {
        let github = GitHubStandIn::start(None).expect("start the GitHub stand-in");
        github.add_repo(REPO);
        let sink = WebhookSink::start().expect("start the webhook sink");
        let dir = tempfile::tempdir().unwrap();
        // The test's own client reads the same config as the daemons (TLS and a password
        // when the etcd is secured).
        let own = dir.path().join("test");
        write_root_for(&etcd, &own, &github.base_url(), 0);
        let config = neco::config::Config::load(&own).unwrap();
        let storage = Storage::connect(&config.etcd)
            .await
            .expect("connect to etcd");
        // Fast settings for every test; the webhook goes to the sink.
        storage
            .put_config(ConfigKey::Slack, &sink.url())
            .await
            .unwrap();
        storage
            .put_config(ConfigKey::CheckUpdateInterval, "1000000000")
            .await
            .unwrap();
        Self {
            storage,
            github,
            sink,
            etcd,
            dir,
        }
    }

    /// A boot-server root `<tmp>/boot-<lrn>` with `etc/neco/config.toml` and `etc/neco/rack`.
    pub fn root(&self, lrn: Lrn) -> PathBuf {
        let root = self.dir.path().join(format!("boot-{lrn}"));
        write_root_for(&self.etcd, &root, &self.github.base_url(), lrn);
        root
    }

    /// Starts neco-updater on the root of boot server `lrn`.
    pub fn updater(&self, lrn: Lrn) -> Updater {
        Updater::start(&format!("updater-{lrn}"), &self.root(lrn))
    }

    /// Raw etcd client (no prefix), to write values exactly as given.
    pub async fn raw(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.etcd.endpoints(), None)
            .await
            .unwrap()
    }

    /// The current request; panics when there is none.
    pub async fn request(&self) -> UpdateRequest {
        self.storage
            .request()
            .await
            .unwrap()
            .expect("an update request")
            .0
    }

    /// Writes a worker status.
    pub async fn status(&self, lrn: Lrn, version: &str, step: u32, cond: UpdateCondition) {
        self.status_msg(lrn, version, step, cond, "").await;
    }

    pub async fn status_msg(
        &self,
        lrn: Lrn,
        version: &str,
        step: u32,
        cond: UpdateCondition,
        message: &str,
    ) {
        let status = UpdateStatus {
            version: version.into(),
            step,
            cond,
            message: message.into(),
        };
        let revision = self
            .storage
            .request()
            .await
            .unwrap()
            .map_or(0, |(_, rev)| rev);
        self.storage
            .put_status(lrn, &status, revision)
            .await
            .unwrap();
    }

    /// Every listed worker goes through steps 1..=3 in lock-step and completes.
    pub async fn run_workers(&self, version: &str, lrns: &[Lrn]) {
        for step in 1..=3 {
            for &lrn in lrns {
                self.status(lrn, version, step, UpdateCondition::Running)
                    .await;
            }
        }
        for &lrn in lrns {
            self.status(lrn, version, 3, UpdateCondition::Completed)
                .await;
        }
    }

    /// A liveness key for a simulated worker, on a lease of `ttl` it keeps alive.
    pub async fn alive(&self, lrn: Lrn, ttl: Duration) -> KeptLease {
        let lease = KeptLease::grant(&self.storage, ttl).await.unwrap();
        self.storage.put_alive(lrn, lease.id(), V1).await.unwrap();
        lease
    }

    /// Notifications delivered to the sink, as `(title, fields)`.
    pub fn notifications(&self) -> Vec<Note> {
        self.sink
            .delivered()
            .iter()
            .map(|n| Note::of(&n.json))
            .collect()
    }

    /// Notifications with this title.
    pub fn titled(&self, title: &str) -> Vec<Note> {
        self.notifications()
            .into_iter()
            .filter(|n| n.title == title)
            .collect()
    }

    /// Waits for the first notification with this title.
    pub async fn wait_note(&self, title: &str, timeout: Duration) -> Note {
        eventually(&format!("a notification {title:?}"), timeout, || async {
            self.titled(title).into_iter().next()
        })
        .await
    }

    /// Waits until `status/current` satisfies `check`.
    pub async fn wait_request(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&UpdateRequest) -> bool,
    ) -> UpdateRequest {
        eventually(what, timeout, || async {
            self.storage
                .request()
                .await
                .unwrap()
                .map(|(r, _)| r)
                .filter(|r| check(r))
        })
        .await
    }
}

/// A notification, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub title: String,
    pub color: String,
    pub fields: Vec<(String, String)>,
}

impl Note {
    fn of(json: &Value) -> Self {
        let a = &json["attachments"][0];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Self {
            title: text(&a["title"]),
            color: text(&a["color"]),
            fields: a["fields"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| (text(&f["title"]), text(&f["value"])))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The value of a field; panics when it is missing.
    pub fn field(&self, title: &str) -> &str {
        self.fields
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {title:?} in {self:?}"))
    }
}

pub fn etcd_config(endpoints: &[String]) -> EtcdConfig {
    EtcdConfig::plain(endpoints.to_vec(), "/neco/", Duration::from_secs(3))
}

/// [`write_root`] for `etcd`, with its TLS and authentication settings when it is secured.
pub fn write_root_for(etcd: &EtcdCluster, root: &Path, github: &str, lrn: Lrn) {
    write_root(root, &etcd.endpoints(), github, lrn);
    if let Some(security) = etcd.security() {
        security.neco_settings().write_into(root).unwrap();
    }
}

pub fn write_root(root: &Path, endpoints: &[String], github: &str, lrn: Lrn) {
    let etc = root.join("etc/neco");
    std::fs::create_dir_all(&etc).unwrap();
    let endpoints = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        etc.join("config.toml"),
        format!(
            "[etcd]\nendpoints = [{endpoints}]\nprefix = \"/neco/\"\n\n[github]\napi-url = \"{github}\"\nrepository = \"{REPO}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(etc.join("rack"), format!("{lrn}\n")).unwrap();
}

/// A neco-updater process. Its log (stdout and stderr) is printed when the test fails.
pub struct Updater {
    pub name: String,
    pub log: PathBuf,
    pub child: ChildGuard,
    _logdir: tempfile::TempDir,
}

impl Updater {
    pub fn start(name: &str, root: &Path) -> Self {
        Self::start_with(name, root, &["--session-ttl", "2s"])
    }

    pub fn start_with(name: &str, root: &Path, extra: &[&str]) -> Self {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_neco-updater"));
        command
            .arg("--root")
            .arg(root)
            .args(["--log-format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = ChildGuard::spawn(name, &mut command).unwrap();
        Self {
            name: name.into(),
            log,
            child,
            _logdir: logdir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines as JSON objects (lines that are not JSON are skipped).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }

    /// How many times the updater logged the action `action` ("wait-for-workers", …).
    pub fn actions(&self, action: &str) -> usize {
        self.logged("next action")
            .iter()
            .filter(|l| l["fields"]["action"] == action)
            .count()
    }

    pub async fn wait_log(&self, message: &str, timeout: Duration) -> Value {
        eventually(
            &format!("{} to log {message:?}", self.name),
            timeout,
            || async { self.logged(message).into_iter().next() },
        )
        .await
    }

    /// Waits until the updater decided `action` at least `count` times.
    pub async fn wait_action(&self, action: &str, count: usize, timeout: Duration) {
        eventually(
            &format!("{} to decide {action} ({count}×)", self.name),
            timeout,
            || async { (self.actions(action) >= count).then_some(()) },
        )
        .await;
    }

    pub fn is_leader(&self) -> bool {
        !self.logged("became the leader").is_empty()
    }
}

impl Drop for Updater {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} (pid {}) -----\n{}\n----- end of {} -----",
                self.name,
                self.child.pid(),
                self.log_text(),
                self.name
            );
        }
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks for `duration` that `probe` keeps returning true.
pub async fn stays<F, Fut>(what: &str, duration: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        assert!(probe().await, "{what} changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds, for brevity.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
