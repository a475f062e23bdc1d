//! What the worker's tests against a real etcd share: the recording stand-in for the steps,
//! the log capture of the worker's decisions, and etcd helpers.

// Test code: a failed call is a failed test; not every test file uses every helper.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use dctest::EtcdCluster;
use neco::config::EtcdConfig;
use neco::storage::Storage;
use neco::types::{Lrn, UpdateCondition, UpdateRequest, UpdateStatus};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use worker::run::RunSteps;
use worker::steps::{Step, StepError};

/// The worker's installed version.
pub const V: &str = "2026.11.26-1";
/// A version to update neco to.
pub const NEW: &str = "2026.11.27-2";
/// The version of the sentinel request that ends an idle worker's wait.
pub const SENTINEL: &str = "2026.12.01-9";
/// How long one case may take at most.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(15);

// --- the recording steps ---------------------------------------------------------------------

/// A step that ran: who, which, and when it started and ended on a clock shared by every
/// recorder of a test (a counter, so that order is exact).
#[derive(Debug, Clone)]
pub struct Ran {
    pub lrn: Lrn,
    pub step: u32,
    pub version: String,
    pub started: u64,
    pub ended: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Log {
    pub ran: Arc<Mutex<Vec<Ran>>>,
    pub clock: Arc<AtomicU64>,
}

impl Log {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    pub fn steps_of(&self, lrn: Lrn) -> Vec<u32> {
        self.ran
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.lrn == lrn)
            .map(|r| r.step)
            .collect()
    }
}

/// Stands in for the real steps: records each step, takes `duration`, fails at `fail_at`.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub lrn: Lrn,
    pub fail_at: Option<u32>,
    pub duration: Duration,
    pub log: Log,
}

impl RunSteps for Recorder {
    async fn run_step(&self, step: Step, version: &str) -> Result<(), StepError> {
        let started = self.log.tick();
        if !self.duration.is_zero() {
            tokio::time::sleep(self.duration).await;
        }
        let ended = self.log.tick();
        self.log.ran.lock().unwrap().push(Ran {
            lrn: self.lrn,
            step: step.number(),
            version: version.to_owned(),
            started,
            ended,
        });
        if self.fail_at == Some(step.number()) {
            return Err(StepError {
                step: step.number(),
                name: step.name(),
                message: "injected failure".into(),
            });
        }
        Ok(())
    }
}

// --- log capture: the handshake with an idle worker ------------------------------------------

/// Collects the events the `worker` crate logs on this thread (tests run on a current-thread
/// runtime, so every event of the worker under test is seen here).
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub lines: Arc<Mutex<Vec<String>>>,
    pub notify: Arc<tokio::sync::Notify>,
}

pub struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Decide per event: other threads of the test binary have no subscriber.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("worker")
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.lines.lock().unwrap().push(fields.0);
        self.notify.notify_waiters();
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    pub fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }

    /// Returns once a logged event contains `text`.
    pub async fn wait_for(&self, text: &str) {
        loop {
            let notified = self.notify.notified();
            if self.lines.lock().unwrap().iter().any(|l| l.contains(text)) {
                return;
            }
            notified.await;
        }
    }
}

// --- etcd ------------------------------------------------------------------------------------

pub async fn connect(etcd: &EtcdCluster, prefix: &str) -> Storage {
    Storage::connect(&EtcdConfig::plain(
        etcd.endpoints(),
        prefix.to_owned(),
        Duration::from_secs(5),
    ))
    .await
    .expect("connect to etcd")
}

/// Creates a plain key to guard request writes with (as neco's test does with `hoge`).
pub async fn guard(storage: &Storage) -> String {
    let key = storage.key("test/guard");
    storage
        .client()
        .put(key.as_bytes(), "", None)
        .await
        .expect("put the guard key");
    key
}

pub fn request(version: &str, servers: &[Lrn], stop: bool) -> UpdateRequest {
    UpdateRequest {
        version: version.to_owned(),
        servers: servers.to_vec(),
        stop,
        started_at: time::OffsetDateTime::now_utc(),
    }
}

pub fn st(version: &str, step: u32, cond: UpdateCondition) -> UpdateStatus {
    UpdateStatus {
        version: version.to_owned(),
        step,
        cond,
        message: String::new(),
    }
}

/// Writes a peer's status for the current request, as a worker of that request does.
pub async fn put_status(storage: &Storage, lrn: Lrn, status: &UpdateStatus) {
    let revision = storage.request().await.unwrap().map_or(0, |(_, rev)| rev);
    storage.put_status(lrn, status, revision).await.unwrap();
}
