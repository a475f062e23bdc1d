//! The updater's I/O edge: leadership, the main loop executing [`next_action`], waiting for the
//! workers, and notifications.

use crate::action::{next_action, Action};
use crate::checker;
use neco::config::GitHubConfig;
use neco::lease::Leadership;
use neco::notify::{Event, Notifier};
use neco::storage::{
    keys, ConfigKey, Snapshot, StatusEvent, Storage, StorageError, DEFAULT_CHECK_UPDATE_INTERVAL,
    DEFAULT_WORKER_TIMEOUT, LIVENESS_GRACE,
};
use neco::types::{
    update_completed, Lrn, NoticeEvent, PendingNotice, UpdateCondition, UpdateRequest,
};
use std::time::Duration;
use time::OffsetDateTime;

/// The updater of one boot server.
pub struct Updater {
    pub storage: Storage,
    pub github: GitHubConfig,
    /// The value of the leader key (this host's name).
    pub name: String,
    /// TTL of the leadership lease.
    pub session_ttl: Duration,
    /// Becomes true on SIGTERM/SIGINT: the leader resigns so that another instance takes over
    /// at once instead of after the session TTL.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// How a wait for the workers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    Completed,
    /// A worker aborted; the next snapshot stops the update.
    Aborted,
    /// A listed server's liveness key disappeared (or never appeared within the grace time).
    Dead(Lrn),
    /// The deadline passed; the next snapshot stops the update.
    TimedOut,
    /// The grace time of a listed server without its liveness key ended: look again.
    GraceOver,
    /// Someone else changed the request.
    RequestChanged,
    /// `config/worker-timeout` changed: decide again with the new deadline.
    TimeoutChanged,
}

impl Updater {
    /// Campaigns, leads until the leadership is lost, and campaigns again. Returns only on an
    /// error that a restart may cure (etcd unreachable, …).
    pub async fn run(&self) -> Result<(), StorageError> {
        loop {
            let mut leadership = tokio::select! {
                l = Leadership::campaign(
                    &self.storage,
                    keys::LEADER_UPDATER,
                    &self.name,
                    self.session_ttl,
                ) => l?,
                () = self.stopping() => return Ok(()),
            };
            let key = leadership.key().to_owned();
            tracing::info!(leader_key = %key, "became the leader");
            let result = tokio::select! {
                r = self.run_loop(&key) => r,
                r = self.check_releases(&key) => r,
                () = leadership.lost() => Err(StorageError::NoLeader { key: key.clone() }),
                () = self.stopping() => {
                    tracing::info!("terminated; resigning the leadership");
                    Ok(())
                }
            };
            if let Err(e) = leadership.resign().await {
                tracing::warn!(error = %e, "resigning failed");
            }
            match result {
                Err(StorageError::NoLeader { .. }) => {
                    tracing::warn!("lost the leadership; campaigning again");
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Resolves once a shutdown is requested.
    async fn stopping(&self) {
        let mut shutdown = self.shutdown.clone();
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            // No one can request a shutdown any more.
            std::future::pending::<()>().await;
        }
    }

    /// The release checker of one leadership term.
    async fn check_releases(&self, leader_key: &str) -> Result<(), StorageError> {
        loop {
            checker::check_once(&self.storage, &self.github, leader_key).await?;
            let interval = self
                .duration(
                    ConfigKey::CheckUpdateInterval,
                    DEFAULT_CHECK_UPDATE_INTERVAL,
                )
                .await?;
            // A config change (env, token, interval…) takes effect at once.
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                changed = self.storage.wait_config_change() => {
                    let key = changed?;
                    tracing::info!(%key, "configuration changed");
                }
            }
        }
    }

    async fn duration(&self, key: ConfigKey, default: Duration) -> Result<Duration, StorageError> {
        match self.storage.duration_config(key, default).await {
            Ok(d) => Ok(d),
            Err(StorageError::BadValue {
                key,
                value,
                message,
            }) => {
                tracing::error!(%key, %value, %message, default = %neco::duration::format(default), "using the default");
                Ok(default)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the notifier from the current configuration (changes apply to the next message).
    async fn notify(&self, event: Event, request: &UpdateRequest) {
        let url = match self.storage.config(ConfigKey::Slack).await {
            Ok(Some(url)) => url,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook URL");
                return;
            }
        };
        let proxy = self.storage.config(ConfigKey::Proxy).await.ok().flatten();
        match Notifier::new(&url, proxy.as_deref()) {
            Ok(notifier) => notifier.notify_logged(&event, request).await,
            Err(e) => tracing::warn!(error = %e, "cannot notify"),
        }
    }

    /// The state machine of one leadership term.
    async fn run_loop(&self, leader_key: &str) -> Result<(), StorageError> {
        loop {
            let snapshot = self.storage.snapshot().await?;
            for (key, error) in &snapshot.malformed {
                tracing::error!(%key, %error, "ignoring a malformed value");
            }
            // A notice owed first (this leader's, or one its predecessor died before sending):
            // at least once, in the order of the events.
            if let Some(notice) = &snapshot.pending_notice {
                self.notify(notice_event(notice), &notice.request).await;
                self.storage.clear_notice(notice, leader_key).await?;
                continue;
            }
            let timeout = self
                .duration(ConfigKey::WorkerTimeout, DEFAULT_WORKER_TIMEOUT)
                .await?;
            let action = next_action(&snapshot, OffsetDateTime::now_utc(), timeout);
            tracing::info!(action = %action, revision = snapshot.revision, "next action");
            match action {
                Action::WaitInfo => self.storage.wait_info(snapshot.revision).await?,
                Action::Invalid { reason } => {
                    tracing::error!(%reason, "cannot act; waiting for info/ or status/current to change");
                    let revision = snapshot.revision;
                    tokio::select! {
                        r = self.storage.wait_info(revision) => r?,
                        r = self.storage.wait_request_deletion(revision) => r?,
                        r = self.storage.wait_request(revision) => match r {
                            // Rewritten, readable or not: decide again.
                            Ok(_) | Err(StorageError::BadValue { .. }) => {}
                            Err(e) => return Err(e),
                        },
                    }
                }
                Action::RequestUpdate => {
                    let request = UpdateRequest {
                        version: snapshot.latest.clone(),
                        servers: snapshot.servers.clone(),
                        stop: false,
                        started_at: OffsetDateTime::now_utc(),
                    };
                    let notice = PendingNotice {
                        event: NoticeEvent::Begin,
                        text: "start updating the new release.".into(),
                        request: request.clone(),
                    };
                    self.storage
                        .put_request_with_notice(&request, &notice, leader_key)
                        .await?;
                    tracing::info!(version = %request.version, servers = ?request.servers, "requested an update");
                }
                Action::Reconfigure => {
                    let Some(current) = &snapshot.request else {
                        continue;
                    };
                    let request = UpdateRequest {
                        version: current.version.clone(),
                        servers: snapshot.servers.clone(),
                        stop: false,
                        started_at: OffsetDateTime::now_utc(),
                    };
                    let notice = PendingNotice {
                        event: NoticeEvent::Begin,
                        text: "start boot servers reconfiguration.".into(),
                        request: request.clone(),
                    };
                    self.storage
                        .put_reconfigure_request(&request, &notice, leader_key)
                        .await?;
                    tracing::info!(servers = ?request.servers, "requested a reconfiguration");
                }
                Action::WaitWorkers => {
                    let Some(request) = &snapshot.request else {
                        continue;
                    };
                    match self.wait_workers(&snapshot, request, timeout).await? {
                        WaitOutcome::Completed => {
                            // The next snapshot says notify-succeeded.
                            tracing::info!(version = %request.version, "every boot server completed the update");
                        }
                        WaitOutcome::Dead(lrn) => {
                            // A worker that finished may go away: only an unfinished one stops
                            // the update.
                            let finished = self
                                .storage
                                .status(lrn)
                                .await
                                .ok()
                                .flatten()
                                .is_some_and(|st| {
                                    st.version == request.version
                                        && st.cond == UpdateCondition::Completed
                                });
                            if finished {
                                continue;
                            }
                            let reason = format!(
                                "boot server {lrn} stopped responding: its worker's liveness key expired"
                            );
                            self.stop(request, leader_key, reason).await?;
                        }
                        outcome => {
                            tracing::info!(?outcome, "stopped waiting for the workers");
                        }
                    }
                }
                Action::NotifySucceeded => {
                    let Some(request) = &snapshot.request else {
                        continue;
                    };
                    // At least once: a leader that dies between the notice and the record
                    // makes the next one send it again; none is lost.
                    self.notify(Event::Succeeded, request).await;
                    self.storage.put_notified(request, leader_key).await?;
                }
                Action::RequestStop { reason } => {
                    let Some(request) = &snapshot.request else {
                        continue;
                    };
                    self.stop(request, leader_key, reason).await?;
                }
                Action::WaitUserRecovery => {
                    self.storage
                        .wait_request_deletion(snapshot.revision)
                        .await?;
                    tracing::info!("the update request was cleared");
                }
            }
        }
    }

    /// Marks the request stopped, with the failure notice it owes (sent by the next turn of
    /// the loop; once per stop, also when a newly elected leader finds an aborted or
    /// timed-out update).
    async fn stop(
        &self,
        request: &UpdateRequest,
        leader_key: &str,
        reason: String,
    ) -> Result<(), StorageError> {
        let mut stopped = request.clone();
        stopped.stop = true;
        let notice = PendingNotice {
            event: NoticeEvent::Failed,
            text: reason,
            request: request.clone(),
        };
        self.storage
            .put_request_with_notice(&stopped, &notice, leader_key)
            .await?;
        tracing::error!(version = %request.version, reason = %notice.text, "stopped the update");
        Ok(())
    }

    /// Waits until every listed worker completes, one aborts, one dies, the request changes or
    /// the deadline (`started_at + timeout`, persisted) passes.
    async fn wait_workers(
        &self,
        snapshot: &Snapshot,
        request: &UpdateRequest,
        timeout: Duration,
    ) -> Result<WaitOutcome, StorageError> {
        let now = OffsetDateTime::now_utc();
        let alive = self.storage.alive_servers().await?;
        let overdue = now - request.started_at > LIVENESS_GRACE;
        let missing = request.servers.iter().copied().find(|lrn| {
            !alive.contains(lrn)
                && !snapshot.statuses.get(lrn).is_some_and(|st| {
                    st.version == request.version && st.cond == UpdateCondition::Completed
                })
        });
        if let (true, Some(lrn)) = (overdue, missing) {
            return Ok(WaitOutcome::Dead(lrn));
        }
        // A listed server without its liveness key within the grace time: look again when the
        // grace time ends (no watch event would tell of a key that is already gone).
        let grace_left = missing.map(|_| {
            Duration::try_from(request.started_at + LIVENESS_GRACE - now).unwrap_or(Duration::ZERO)
        });
        let remaining = (request.started_at + timeout) - now;
        let remaining = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
        let mut statuses = snapshot.statuses.clone();
        let watch = self
            .storage
            .watch_status(snapshot.revision, |event| match event {
                StatusEvent::Request(changed) => {
                    (changed != *request).then_some(WaitOutcome::RequestChanged)
                }
                StatusEvent::Status(lrn, status) => {
                    if status.version != request.version {
                        return None;
                    }
                    let cond = status.cond;
                    let message = status.message.clone();
                    statuses.insert(lrn, status);
                    match cond {
                        UpdateCondition::Aborted => {
                            tracing::error!(lrn, %message, "a worker aborted the update");
                            Some(WaitOutcome::Aborted)
                        }
                        UpdateCondition::Completed => {
                            tracing::info!(lrn, "worker finished updating");
                            update_completed(&request.version, &request.servers, &statuses)
                                .then_some(WaitOutcome::Completed)
                        }
                        _ => None,
                    }
                }
            });
        tokio::select! {
            outcome = watch => outcome,
            dead = self.storage.wait_dead_server(snapshot.revision, &request.servers) => dead.map(WaitOutcome::Dead),
            () = tokio::time::sleep(remaining) => Ok(WaitOutcome::TimedOut),
            () = async {
                match grace_left {
                    Some(left) => tokio::time::sleep(left).await,
                    None => std::future::pending().await,
                }
            } => Ok(WaitOutcome::GraceOver),
            changed = self.timeout_changed() => changed.map(|()| WaitOutcome::TimeoutChanged),
        }
    }

    /// Resolves when `config/worker-timeout` changes.
    async fn timeout_changed(&self) -> Result<(), StorageError> {
        loop {
            if self.storage.wait_config_change().await? == ConfigKey::WorkerTimeout.key() {
                return Ok(());
            }
        }
    }
}

/// The notification of a pending notice.
fn notice_event(notice: &PendingNotice) -> Event {
    match notice.event {
        NoticeEvent::Begin => Event::Begin {
            detail: notice.text.clone(),
        },
        NoticeEvent::Failed => Event::Failed {
            reason: notice.text.clone(),
        },
    }
}
