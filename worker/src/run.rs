//! The worker's outer loop (reference/neco-cd.md §8.2) and the update of one request in
//! lock-step with the other workers (§8.4).

use crate::barrier::{update_aborted, Barrier, Decision};
use crate::steps::{final_step, Step, StepError};
use neco::storage::{StatusEvent, Storage, StorageError};
use neco::types::{update_completed, Lrn, UpdateCondition, UpdateRequest, UpdateStatus};

/// Why the worker returns to its caller.
#[derive(Debug)]
pub enum Exit {
    /// The request asks for another neco version: install it and restart.
    SelfUpdate(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The update was aborted (the status says why); the process exits and restarts.
    #[error("update aborted: {0}")]
    Aborted(String),
}

/// How an update ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Stopped,
}

/// What runs the steps: [`crate::steps::StepContext`] in production; tests of the protocol
/// may count or fail steps.
#[allow(async_fn_in_trait)]
pub trait RunSteps {
    async fn run_step(&self, step: Step, version: &str) -> Result<(), StepError>;
}

impl RunSteps for crate::steps::StepContext<'_> {
    async fn run_step(&self, step: Step, version: &str) -> Result<(), StepError> {
        self.run(step, version).await
    }
}

/// One worker: this server's LRN and installed version.
pub struct Worker<'a, S> {
    pub storage: &'a Storage,
    pub lrn: Lrn,
    pub version: String,
    pub steps: S,
}

impl<S: RunSteps> Worker<'_, S> {
    /// Follows requests until one asks for another version ([`Exit::SelfUpdate`]) or an error
    /// ends the process.
    pub async fn run(&self) -> Result<Exit, RunError> {
        let (request, revision) = loop {
            if let Some((req, rev)) = self.storage.request().await? {
                break (Some(req), rev);
            }
            // Watch from the revision at which there was no request (a compacted one would
            // fail the watch); a request written since the first read is read again.
            let snapshot = self.storage.snapshot().await?;
            if snapshot.request.is_none() {
                break (None, snapshot.revision);
            }
        };
        self.follow(request, revision).await
    }

    /// Like [`Worker::run`], but ignores the request of `revision` and every earlier one: after
    /// a failed self-update, the worker waits for the next request instead of trying again in
    /// a loop.
    pub async fn run_after(&self, revision: i64) -> Result<Exit, RunError> {
        self.follow(None, revision).await
    }

    /// Records that the self-update to `version` failed, as an aborted status of that version:
    /// the updater stops the update and notifies the reason.
    pub async fn report_self_update_failure(
        &self,
        version: &str,
        reason: &str,
    ) -> Result<(), StorageError> {
        self.put(
            version,
            0,
            UpdateCondition::Aborted,
            format!(
                "self-update from {} to {version} failed: {reason}",
                self.version
            ),
        )
        .await
    }

    async fn follow(
        &self,
        mut request: Option<UpdateRequest>,
        mut revision: i64,
    ) -> Result<Exit, RunError> {
        loop {
            let Some(req) = request.take() else {
                let (req, rev) = self.storage.wait_request(revision).await?;
                request = Some(req);
                revision = rev;
                continue;
            };
            if let Some(exit) = self.handle(&req, revision).await? {
                return Ok(exit);
            }
            let (next, rev) = self.storage.wait_request(revision).await?;
            request = Some(next);
            revision = rev;
        }
    }

    /// Acts on one request; `Some` when the process must leave the loop.
    async fn handle(&self, req: &UpdateRequest, revision: i64) -> Result<Option<Exit>, RunError> {
        if req.stop {
            tracing::info!(version = %req.version, "the update is stopped; waiting for the next request");
            return Ok(None);
        }
        if !req.is_member(self.lrn) {
            tracing::info!(servers = ?req.servers, "not a member of the request");
            return Ok(None);
        }
        if req.version != self.version {
            return Ok(Some(Exit::SelfUpdate(req.version.clone())));
        }
        let statuses = self.storage.snapshot().await?.statuses;
        if update_aborted(&req.version, self.lrn, &statuses, final_step()) {
            if let Some(own) = statuses
                .get(&self.lrn)
                .filter(|st| st.version == req.version && st.cond != UpdateCondition::Aborted)
            {
                let mut aborted = own.clone();
                aborted.cond = UpdateCondition::Aborted;
                aborted.message = "the worker restarted during the update".into();
                self.storage.put_status(self.lrn, &aborted).await?;
            }
            tracing::warn!(version = %req.version, "the previous update was aborted; waiting for the next request");
            return Ok(None);
        }
        if update_completed(&req.version, &req.servers, &statuses) {
            tracing::info!(version = %req.version, "already completed");
            return Ok(None);
        }
        match self.update(req, revision).await? {
            Outcome::Completed => tracing::info!(version = %req.version, "update finished"),
            Outcome::Stopped => tracing::info!(version = %req.version, "the request was stopped"),
        }
        Ok(None)
    }

    async fn put(
        &self,
        version: &str,
        step: u32,
        cond: UpdateCondition,
        message: String,
    ) -> Result<(), StorageError> {
        self.storage
            .put_status(
                self.lrn,
                &UpdateStatus {
                    version: version.to_owned(),
                    step,
                    cond,
                    message,
                },
            )
            .await
    }

    async fn abort(&self, version: &str, step: u32, message: String) -> RunError {
        tracing::error!(step, %message, "aborting the update");
        if let Err(e) = self
            .put(version, step, UpdateCondition::Aborted, message.clone())
            .await
        {
            tracing::error!(error = %e, "cannot record the abort");
        }
        RunError::Aborted(message)
    }

    /// Runs every step in lock-step. Events are replayed from the request's revision, so a
    /// late worker sees the reports its peers made before it started watching.
    async fn update(&self, req: &UpdateRequest, revision: i64) -> Result<Outcome, RunError> {
        let mut barrier = Barrier::new(req, 1);
        let mut events = self.storage.status_events(revision).await?;
        self.put(&req.version, 1, UpdateCondition::Running, String::new())
            .await?;
        loop {
            let event = match events.next().await {
                Ok(event) => event,
                Err(e) => return Err(self.abort(&req.version, barrier.step, e.to_string()).await),
            };
            let decision = match &event {
                StatusEvent::Request(r) => barrier.on_request(r),
                StatusEvent::Status(lrn, st) => barrier.on_status(*lrn, st),
            };
            match decision {
                Decision::Ignore | Decision::Wait => continue,
                Decision::Stop => return Ok(Outcome::Stopped),
                Decision::Abort(message) => {
                    return Err(self.abort(&req.version, barrier.step, message).await)
                }
                Decision::Run => {}
            }
            let Some(step) = Step::from_number(barrier.step) else {
                return Err(self
                    .abort(
                        &req.version,
                        barrier.step,
                        format!("invalid step {}", barrier.step),
                    )
                    .await);
            };
            tracing::info!(step = barrier.step, name = step.name(), "running step");
            if let Err(e) = self.steps.run_step(step, &req.version).await {
                return Err(self.abort(&req.version, barrier.step, e.to_string()).await);
            }
            if barrier.step == final_step() {
                self.put(
                    &req.version,
                    barrier.step,
                    UpdateCondition::Completed,
                    String::new(),
                )
                .await?;
                return Ok(Outcome::Completed);
            }
            barrier = barrier.next();
            self.put(
                &req.version,
                barrier.step,
                UpdateCondition::Running,
                String::new(),
            )
            .await?;
        }
    }
}
