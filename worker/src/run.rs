//! The worker's outer loop (reference/neco-cd.md §8.2) and the update of one request in
//! lock-step with the other workers (§8.4).

use crate::barrier::{update_aborted, Barrier, Decision};
use crate::steps::{final_step, Step, StepError};
use neco::storage::{StatusEvent, Storage, StorageError};
use neco::types::{update_completed, Lrn, UpdateCondition, UpdateRequest, UpdateStatus};

/// Why the worker returns to its caller.
#[derive(Debug)]
pub enum Exit {
    /// The request (written at `revision`) asks for another neco version: install it and
    /// restart.
    SelfUpdate { version: String, revision: i64 },
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
    /// The request was rewritten while this worker wrote its status: the status was not
    /// written, and the next request is followed.
    Replaced,
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

    /// Records that the self-update to `version` (requested at `revision`) failed, as an
    /// aborted status of that version: the updater stops the update and notifies the reason.
    /// Nothing is written when the request changed meanwhile.
    pub async fn report_self_update_failure(
        &self,
        version: &str,
        revision: i64,
        reason: &str,
    ) -> Result<(), StorageError> {
        let message = format!(
            "self-update from {} to {version} failed: {reason}",
            self.version
        );
        match self
            .put(version, revision, 0, UpdateCondition::Aborted, message)
            .await
        {
            Err(StorageError::Replaced { .. }) => {
                tracing::info!("the request changed meanwhile; the failure is not recorded");
                Ok(())
            }
            other => other,
        }
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
            return Ok(Some(Exit::SelfUpdate {
                version: req.version.clone(),
                revision,
            }));
        }
        let statuses = self.storage.snapshot().await?.statuses;
        if update_aborted(&req.version, self.lrn, &statuses, final_step()) {
            if let Some(own) = statuses
                .get(&self.lrn)
                .filter(|st| st.version == req.version && st.cond != UpdateCondition::Aborted)
            {
                let mut aborted = own.clone();
                aborted.cond = UpdateCondition::Aborted;
                aborted.message = "an earlier attempt at this update did not finish on this \
                                   server (the worker restarted, or the request was rewritten \
                                   during the update)"
                    .into();
                match self.storage.put_status(self.lrn, &aborted, revision).await {
                    Ok(()) | Err(StorageError::Replaced { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            tracing::warn!(version = %req.version, "the previous update was aborted; waiting for the next request");
            return Ok(None);
        }
        if update_completed(&req.version, &req.servers, &statuses) {
            tracing::info!(version = %req.version, "already completed");
            return Ok(None);
        }
        // Restarted after its own final step while a peer is still at it: nothing to run
        // again (and a new status would disturb the peers' final barrier).
        if statuses
            .get(&self.lrn)
            .is_some_and(|st| st.version == req.version && st.cond == UpdateCondition::Completed)
        {
            tracing::info!(version = %req.version, "this server completed the update; waiting for the next request");
            return Ok(None);
        }
        match self.update(req, revision).await? {
            Outcome::Completed => tracing::info!(version = %req.version, "update finished"),
            Outcome::Stopped => tracing::info!(version = %req.version, "the request was stopped"),
            Outcome::Replaced => tracing::info!(
                version = %req.version,
                "the request changed; following the next one"
            ),
        }
        Ok(None)
    }

    /// Writes this worker's status for the request written at `revision`.
    async fn put(
        &self,
        version: &str,
        revision: i64,
        step: u32,
        cond: UpdateCondition,
        message: String,
    ) -> Result<(), StorageError> {
        let status = UpdateStatus {
            version: version.to_owned(),
            step,
            cond,
            message,
        };
        self.storage.put_status(self.lrn, &status, revision).await
    }

    /// Writes the status of a step: [`Outcome::Replaced`] when the request changed.
    async fn put_step(
        &self,
        version: &str,
        revision: i64,
        step: u32,
        cond: UpdateCondition,
    ) -> Result<Option<Outcome>, RunError> {
        match self.put(version, revision, step, cond, String::new()).await {
            Ok(()) => Ok(None),
            Err(StorageError::Replaced { .. }) => Ok(Some(Outcome::Replaced)),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the abort and ends the process ([`RunError::Aborted`]), unless the request
    /// changed meanwhile: then nothing is recorded and the next request is followed.
    async fn abort(
        &self,
        version: &str,
        revision: i64,
        step: u32,
        message: String,
    ) -> Result<Outcome, RunError> {
        tracing::error!(step, %message, "aborting the update");
        match self
            .put(
                version,
                revision,
                step,
                UpdateCondition::Aborted,
                message.clone(),
            )
            .await
        {
            Ok(()) => {}
            Err(StorageError::Replaced { .. }) => {
                tracing::info!("the request changed meanwhile; the abort is not recorded");
                return Ok(Outcome::Replaced);
            }
            Err(e) => tracing::error!(error = %e, "cannot record the abort"),
        }
        Err(RunError::Aborted(message))
    }

    /// Runs every step in lock-step. Events are replayed from the request's revision, so a
    /// late worker sees the reports its peers made before it started watching. Every status is
    /// written for the request of `revision` only.
    async fn update(&self, req: &UpdateRequest, revision: i64) -> Result<Outcome, RunError> {
        let version = req.version.as_str();
        let mut barrier = Barrier::new(req, 1);
        let mut events = self.storage.status_events(revision);
        if let Some(outcome) = self
            .put_step(version, revision, 1, UpdateCondition::Running)
            .await?
        {
            return Ok(outcome);
        }
        loop {
            let event = match events.next().await {
                Ok(event) => event,
                Err(e) => {
                    return self
                        .abort(version, revision, barrier.step, e.to_string())
                        .await
                }
            };
            let decision = match &event {
                StatusEvent::Request(r) => barrier.on_request(r),
                StatusEvent::Status(lrn, st) => barrier.on_status(*lrn, st),
            };
            match decision {
                Decision::Ignore | Decision::Wait => continue,
                Decision::Stop => return Ok(Outcome::Stopped),
                Decision::Abort(message) => {
                    return self.abort(version, revision, barrier.step, message).await
                }
                Decision::Run => {}
            }
            let Some(step) = Step::from_number(barrier.step) else {
                let message = format!("invalid step {}", barrier.step);
                return self.abort(version, revision, barrier.step, message).await;
            };
            tracing::info!(step = barrier.step, name = step.name(), "running step");
            if let Err(e) = self.steps.run_step(step, version).await {
                return self
                    .abort(version, revision, barrier.step, e.to_string())
                    .await;
            }
            if barrier.step == final_step() {
                let written = self
                    .put_step(version, revision, barrier.step, UpdateCondition::Completed)
                    .await?;
                return Ok(written.unwrap_or(Outcome::Completed));
            }
            barrier = barrier.next();
            if let Some(outcome) = self
                .put_step(version, revision, barrier.step, UpdateCondition::Running)
                .await?
            {
                return Ok(outcome);
            }
        }
    }
}
