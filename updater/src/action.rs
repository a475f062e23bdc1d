//! The decision core of the updater: what to do next, given a snapshot of etcd. Pure: data in,
//! data out (reference/neco-cd.md §7.4, with its gaps closed: numeric server lists, no
//! downgrade, and no crash loop on a bad version).

use neco::release::ReleaseVersion;
use neco::storage::Snapshot;
use neco::types::{update_completed, UpdateCondition};
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

/// The next action of the updater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until something under `info/` changes.
    WaitInfo,
    /// Request an update to `latest` for the registered servers.
    RequestUpdate,
    /// Wait until the workers complete (or one aborts, dies, or the deadline passes).
    WaitWorkers,
    /// Stop the update; the reason goes into the failure notification.
    RequestStop { reason: String },
    /// The update is stopped: wait until an operator runs `neco recover`.
    WaitUserRecovery,
    /// The set of boot servers changed after a completed update: run it again for the new set.
    Reconfigure,
    /// Every server completed the request, and its success was not notified yet (also when
    /// the leader that saw the completion died before the notice).
    NotifySucceeded,
    /// The snapshot holds a value the updater cannot act on; log it and wait for `info/`.
    Invalid { reason: String },
}

impl Action {
    /// neco's name for the action, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::WaitInfo => "wait-for-info",
            Action::RequestUpdate => "request-update",
            Action::WaitWorkers => "wait-for-workers",
            Action::RequestStop { .. } => "request-stop",
            Action::WaitUserRecovery => "wait-for-user-recovery",
            Action::Reconfigure => "reconfigure",
            Action::NotifySucceeded => "notify-succeeded",
            Action::Invalid { .. } => "invalid",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decides the next action. `timeout` is the worker timeout, counted from the request's
/// persisted `started_at`, so a restarted updater does not extend it.
pub fn next_action(snapshot: &Snapshot, now: OffsetDateTime, timeout: Duration) -> Action {
    if snapshot.latest.is_empty() {
        return Action::WaitInfo;
    }
    let latest = match snapshot.latest.parse::<ReleaseVersion>() {
        Ok(v) => v,
        Err(e) => {
            return Action::Invalid {
                reason: format!("info/neco-release: {e}"),
            }
        }
    };
    // A request that cannot be read is not "no request": writing a new one would bypass the
    // operator (the update it held may be stopped, waiting for `neco recover`).
    if let Some((key, error)) = snapshot
        .malformed
        .iter()
        .find(|(key, _)| key.ends_with(neco::storage::keys::CURRENT))
    {
        return Action::Invalid {
            reason: format!(
                "{key} cannot be read ({error}): no update is requested until it is fixed or \
                 deleted"
            ),
        };
    }
    let Some(request) = &snapshot.request else {
        // No boot server registered yet (`neco setup` has not run): nothing to update. A
        // request for an empty list would make `neco setup` refuse to set the cluster up.
        if snapshot.servers.is_empty() {
            return Action::WaitInfo;
        }
        return Action::RequestUpdate;
    };
    if request.stop {
        return Action::WaitUserRecovery;
    }
    if let Some((lrn, status)) = snapshot
        .statuses
        .iter()
        .find(|(_, st)| st.version == request.version && st.cond == UpdateCondition::Aborted)
    {
        return Action::RequestStop {
            reason: format!(
                "boot server {lrn} aborted at step {}: {}",
                status.step, status.message
            ),
        };
    }
    if !update_completed(&request.version, &request.servers, &snapshot.statuses) {
        let elapsed = now - request.started_at;
        if elapsed > timeout {
            return Action::RequestStop {
                reason: format!(
                    "workers take too long for update: not completed within {} (started at {})",
                    neco::duration::format(timeout),
                    request
                        .started_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                ),
            };
        }
        return Action::WaitWorkers;
    }
    if snapshot.notified.as_ref() != Some(request) {
        return Action::NotifySucceeded;
    }
    let mut requested = request.servers.clone();
    requested.sort_unstable();
    if requested != snapshot.servers {
        return Action::Reconfigure;
    }
    let current = match request.version.parse::<ReleaseVersion>() {
        Ok(v) => v,
        Err(e) => {
            return Action::Invalid {
                reason: format!("status/current: {e}"),
            }
        }
    };
    if latest > current {
        Action::RequestUpdate
    } else {
        // Equal, or `info/neco-release` older than what runs: never move back.
        Action::WaitInfo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neco::types::{UpdateRequest, UpdateStatus};
    use std::collections::BTreeMap;

    const V1: &str = "2026.11.26-1";
    const V2: &str = "2026.11.27-2";
    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-26 12:00 UTC)
    }

    fn req(version: &str, servers: &[u32], stop: bool, age: Duration) -> UpdateRequest {
        UpdateRequest {
            version: version.into(),
            servers: servers.to_vec(),
            stop,
            started_at: now() - age,
        }
    }

    fn st(version: &str, cond: UpdateCondition) -> UpdateStatus {
        UpdateStatus {
            version: version.into(),
            step: 3,
            cond,
            message: "pull failed".into(),
        }
    }

    fn snap(
        latest: &str,
        request: Option<UpdateRequest>,
        statuses: &[(u32, UpdateStatus)],
        servers: &[u32],
    ) -> Snapshot {
        // The success of a completed request was notified (the rows about the notice say
        // otherwise).
        Snapshot {
            revision: 10,
            notified: request.clone(),
            request,
            statuses: statuses.iter().cloned().collect::<BTreeMap<_, _>>(),
            latest: latest.into(),
            servers: servers.to_vec(),
            malformed: Vec::new(),
            pending_notice: None,
        }
    }

    #[test]
    fn decision_table() {
        use UpdateCondition::{Aborted, Completed, Running};
        let fresh = Duration::from_secs(60);
        let done = |v: &str| vec![(0, st(v, Completed)), (1, st(v, Completed))];
        let rows: Vec<(&str, Snapshot, Action)> = vec![
            (
                "no latest yet (wait-latest)",
                snap("", Some(req(V1, &[0, 1], false, fresh)), &[], &[0, 1]),
                Action::WaitInfo,
            ),
            (
                "latest, no request (recover)",
                snap(V1, None, &[], &[0, 1]),
                Action::RequestUpdate,
            ),
            (
                "no server registered yet",
                snap(V1, None, &[], &[]),
                Action::WaitInfo,
            ),
            (
                "stopped",
                snap(V1, Some(req(V1, &[0, 1], true, fresh)), &[], &[0, 1]),
                Action::WaitUserRecovery,
            ),
            (
                "aborted",
                snap(
                    V1,
                    Some(req(V1, &[0, 1], false, fresh)),
                    &[(0, st(V1, Aborted))],
                    &[0, 1],
                ),
                Action::RequestStop {
                    reason: "boot server 0 aborted at step 3: pull failed".into(),
                },
            ),
            (
                "an abort of another version does not count",
                snap(
                    V1,
                    Some(req(V1, &[0, 1], false, fresh)),
                    &[(0, st("2026.11.25-9", Aborted))],
                    &[0, 1],
                ),
                Action::WaitWorkers,
            ),
            (
                "not completed (waiting)",
                snap(
                    V1,
                    Some(req(V1, &[0, 1], false, fresh)),
                    &[(0, st(V1, Running))],
                    &[0, 1],
                ),
                Action::WaitWorkers,
            ),
            (
                "reconfigure: a server joined",
                snap(V1, Some(req(V1, &[0, 1], false, fresh)), &done(V1), &[0, 1, 2]),
                Action::Reconfigure,
            ),
            (
                "request order does not matter (numeric)",
                snap(
                    V1,
                    Some(req(V1, &[10, 2], false, fresh)),
                    &[(2, st(V1, Completed)), (10, st(V1, Completed))],
                    &[2, 10],
                ),
                Action::WaitInfo,
            ),
            (
                "update to a newer release",
                snap(V2, Some(req(V1, &[0, 1], false, fresh)), &done(V1), &[0, 1]),
                Action::RequestUpdate,
            ),
            (
                "completed, nothing new",
                snap(V1, Some(req(V1, &[0, 1], false, fresh)), &done(V1), &[0, 1]),
                Action::WaitInfo,
            ),
            (
                "never move to an older release",
                snap(V1, Some(req(V2, &[0, 1], false, fresh)), &done(V2), &[0, 1]),
                Action::WaitInfo,
            ),
            (
                "unparsable latest does not crash-loop",
                snap("release-x", None, &[], &[0]),
                Action::Invalid {
                    reason: "info/neco-release: \"release-x\" is not a neco release version YYYY.MM.DD-N: the date must be YYYY.MM.DD".into(),
                },
            ),
            (
                "a malformed request is not overwritten",
                Snapshot {
                    malformed: vec![(
                        "/neco/status/current".into(),
                        "expected value at line 1 column 1".into(),
                    )],
                    ..snap(V2, None, &[], &[0, 1])
                },
                Action::Invalid {
                    reason: "/neco/status/current cannot be read (expected value at line 1 column 1): no update is requested until it is fixed or deleted".into(),
                },
            ),
            (
                "a malformed status does not block a request",
                Snapshot {
                    malformed: vec![(
                        "/neco/status/bootservers/1".into(),
                        "expected value".into(),
                    )],
                    ..snap(V1, None, &[], &[0, 1])
                },
                Action::RequestUpdate,
            ),
        ];
        for (name, snapshot, want) in rows {
            assert_eq!(next_action(&snapshot, now(), HOUR), want, "{name}");
        }
    }

    #[test]
    fn a_completed_request_is_notified_once_before_anything_else() {
        let completed = req(V1, &[0, 1], false, Duration::from_secs(60));
        let done = vec![
            (0, st(V1, UpdateCondition::Completed)),
            (1, st(V1, UpdateCondition::Completed)),
        ];
        let with_notice =
            |notified: Option<UpdateRequest>, latest: &str, servers: &[u32]| Snapshot {
                notified,
                ..snap(latest, Some(completed.clone()), &done, servers)
            };
        let older = UpdateRequest {
            started_at: completed.started_at - HOUR,
            ..completed.clone()
        };
        let rows = [
            (
                "never notified",
                with_notice(None, V1, &[0, 1]),
                Action::NotifySucceeded,
            ),
            (
                "the notice was of an earlier request for the same version",
                with_notice(Some(older), V1, &[0, 1]),
                Action::NotifySucceeded,
            ),
            (
                "before a new update is requested",
                with_notice(None, V2, &[0, 1]),
                Action::NotifySucceeded,
            ),
            (
                "before a reconfiguration",
                with_notice(None, V1, &[0, 1, 2]),
                Action::NotifySucceeded,
            ),
            (
                "notified: then the next update",
                with_notice(Some(completed.clone()), V2, &[0, 1]),
                Action::RequestUpdate,
            ),
            (
                "notified, nothing new",
                with_notice(Some(completed.clone()), V1, &[0, 1]),
                Action::WaitInfo,
            ),
        ];
        for (name, snapshot, want) in rows {
            assert_eq!(next_action(&snapshot, now(), HOUR), want, "{name}");
        }
        // Not completed: no notice, whatever the flag says.
        let running = Snapshot {
            notified: None,
            ..snap(V1, Some(completed.clone()), &done[..1], &[0, 1])
        };
        assert_eq!(next_action(&running, now(), HOUR), Action::WaitWorkers);
    }

    #[test]
    fn timeout_counts_from_the_persisted_start() {
        let within = snap(V1, Some(req(V1, &[0], false, HOUR)), &[], &[0]);
        assert_eq!(next_action(&within, now(), HOUR), Action::WaitWorkers);
        let late = snap(
            V1,
            Some(req(V1, &[0], false, HOUR + Duration::from_secs(1))),
            &[],
            &[0],
        );
        match next_action(&late, now(), HOUR) {
            Action::RequestStop { reason } => {
                assert!(reason.contains("1h0m0s"), "{reason}");
                assert!(reason.contains("2026-11-26T10:59:59Z"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A completed update is never timed out.
        let completed = snap(
            V1,
            Some(req(V1, &[0], false, 3 * HOUR)),
            &[(0, st(V1, UpdateCondition::Completed))],
            &[0],
        );
        assert_eq!(next_action(&completed, now(), HOUR), Action::WaitInfo);
    }
}
