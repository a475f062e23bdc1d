//! The lock-step protocol of the workers, as pure decisions (reference/neco-cd.md §8.2–8.4).
//!
//! Before each step every worker writes its status `{version, step, cond: running}` and waits
//! until every listed server has reported that step; then it runs the step. Anything else seen
//! on the way (a peer's abort, another version, another step, an early completion, a new
//! request) aborts the update, except a stop, which ends it between steps.

use neco::types::{Lrn, UpdateCondition, UpdateRequest, UpdateStatus};
use std::collections::{BTreeMap, BTreeSet};

/// Whether a previous attempt at `version` can no longer be resumed, so this worker must not
/// start it again: a worker that restarts in the middle of an update marks it aborted.
///
/// Fixes neco's race after the final step: a peer that is `running` at the final step has
/// passed every barrier and is only about to write `completed`; it does not count as an abort.
pub fn update_aborted(
    version: &str,
    me: Lrn,
    statuses: &BTreeMap<Lrn, UpdateStatus>,
    final_step: u32,
) -> bool {
    statuses
        .iter()
        .filter(|(_, st)| st.version == version)
        .any(|(lrn, st)| match st.cond {
            UpdateCondition::Completed => false,
            UpdateCondition::Aborted => true,
            _ if *lrn != me && (st.step == 1 || st.step == final_step) => false,
            _ => true,
        })
}

/// The barrier of one step: who still has to report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub version: String,
    pub step: u32,
    servers: Vec<Lrn>,
    waiting: BTreeSet<Lrn>,
}

/// What a status event means for the barrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not relevant (a server outside the request).
    Ignore,
    /// Counted; others are still missing.
    Wait,
    /// Every server reported the step: run it.
    Run,
    /// The update cannot go on.
    Abort(String),
    /// The updater stopped the update: end it between steps, leaving the status as it is.
    Stop,
}

impl Barrier {
    pub fn new(request: &UpdateRequest, step: u32) -> Self {
        let mut servers = request.servers.clone();
        servers.sort_unstable();
        Self {
            version: request.version.clone(),
            step,
            waiting: servers.iter().copied().collect(),
            servers,
        }
    }

    /// The barrier of the next step.
    pub fn next(&self) -> Self {
        Self {
            version: self.version.clone(),
            step: self.step + 1,
            waiting: self.servers.iter().copied().collect(),
            servers: self.servers.clone(),
        }
    }

    /// The servers that have not reported this step yet.
    pub fn waiting(&self) -> impl Iterator<Item = Lrn> + '_ {
        self.waiting.iter().copied()
    }

    /// A worker status was written (this worker's own included).
    pub fn on_status(&mut self, lrn: Lrn, status: &UpdateStatus) -> Decision {
        if !self.servers.contains(&lrn) {
            return Decision::Ignore;
        }
        if status.version != self.version {
            return Decision::Abort(format!(
                "unexpected version in the status of boot server {lrn}: {} (updating to {})",
                status.version, self.version
            ));
        }
        match status.cond {
            UpdateCondition::Aborted => {
                return Decision::Abort(format!(
                    "boot server {lrn} failed to update: {}",
                    status.message
                ))
            }
            UpdateCondition::Completed
                if status.step == self.step && self.step == crate::steps::final_step() =>
            {
                // A peer that completed the final step while this worker waits for the same
                // final barrier is ahead, not wrong: the final step is a no-op barrier.
            }
            UpdateCondition::Completed => {
                return Decision::Abort(format!(
                    "boot server {lrn} reports completion at step {} while this one is at step {}",
                    status.step, self.step
                ))
            }
            _ => {}
        }
        if status.step != self.step {
            return Decision::Abort(format!(
                "unexpected step in the status of boot server {lrn}: {} (expected {})",
                status.step, self.step
            ));
        }
        self.waiting.remove(&lrn);
        if self.waiting.is_empty() {
            Decision::Run
        } else {
            Decision::Wait
        }
    }

    /// The request was rewritten during the update.
    pub fn on_request(&self, request: &UpdateRequest) -> Decision {
        if request.stop {
            Decision::Stop
        } else {
            Decision::Abort(format!(
                "unexpected request during the update: version {} for {:?}",
                request.version, request.servers
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpdateCondition::{Aborted, Completed, NotRunning, Running};

    fn st(version: &str, step: u32, cond: UpdateCondition) -> UpdateStatus {
        UpdateStatus {
            version: version.into(),
            step,
            cond,
            message: "boom".into(),
        }
    }

    fn request(servers: &[Lrn], stop: bool) -> UpdateRequest {
        UpdateRequest {
            version: "1".into(),
            servers: servers.to_vec(),
            stop,
            started_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// A row: name, statuses by LRN, whether the update counts as aborted for worker 0.
    type Row = (&'static str, Vec<(Lrn, UpdateStatus)>, bool);

    #[test]
    fn aborted_table() {
        let rows: Vec<Row> = vec![
            ("no statuses", vec![], false),
            (
                "own status running: a restart mid-update",
                vec![(0, st("1", 2, Running))],
                true,
            ),
            (
                "own status at step 1 too",
                vec![(0, st("1", 1, Running))],
                true,
            ),
            (
                "peer at step 1 is fine",
                vec![(1, st("1", 1, Running))],
                false,
            ),
            (
                "peer not running at step 1",
                vec![(1, st("1", 1, NotRunning))],
                false,
            ),
            ("peer at step 2", vec![(1, st("1", 2, Running))], true),
            (
                "peer running the final step (neco's race)",
                vec![(1, st("1", 5, Running))],
                false,
            ),
            ("peer aborted", vec![(1, st("1", 3, Aborted))], true),
            (
                "completed ones",
                vec![(0, st("1", 5, Completed)), (1, st("1", 5, Completed))],
                false,
            ),
            (
                "other versions do not count",
                vec![(0, st("0", 3, Aborted))],
                false,
            ),
        ];
        for (name, statuses, want) in rows {
            let map: BTreeMap<_, _> = statuses.into_iter().collect();
            assert_eq!(update_aborted("1", 0, &map, 5), want, "{name}");
        }
    }

    #[test]
    fn barrier_waits_for_every_listed_server() {
        let mut b = Barrier::new(&request(&[2, 0, 1], false), 1);
        assert_eq!(b.on_status(0, &st("1", 1, Running)), Decision::Wait);
        assert_eq!(b.on_status(3, &st("1", 7, Running)), Decision::Ignore);
        assert_eq!(b.on_status(1, &st("1", 1, Running)), Decision::Wait);
        assert_eq!(b.waiting().collect::<Vec<_>>(), vec![2]);
        assert_eq!(b.on_status(2, &st("1", 1, Running)), Decision::Run);
        let mut next = b.next();
        assert_eq!(next.step, 2);
        assert_eq!(next.on_status(0, &st("1", 2, Running)), Decision::Wait);
    }

    #[test]
    fn barrier_aborts_on_anything_unexpected() {
        let cases = [
            (st("2", 1, Running), "unexpected version"),
            (st("1", 1, Aborted), "failed to update: boom"),
            (st("1", 3, Running), "unexpected step"),
            (st("1", 0, Completed), "reports completion"),
            (st("1", 1, Completed), "reports completion"),
        ];
        for (status, want) in cases {
            let mut b = Barrier::new(&request(&[0, 1], false), 1);
            match b.on_status(1, &status) {
                Decision::Abort(message) => assert!(message.contains(want), "{message}"),
                other => panic!("{status:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn completion_at_the_same_final_step_counts() {
        let mut b = Barrier::new(&request(&[0, 1], false), 5);
        assert_eq!(b.on_status(1, &st("1", 5, Completed)), Decision::Wait);
        assert_eq!(b.on_status(0, &st("1", 5, Running)), Decision::Run);
    }

    #[test]
    fn requests_during_the_update() {
        let b = Barrier::new(&request(&[0], false), 2);
        assert_eq!(b.on_request(&request(&[0], true)), Decision::Stop);
        assert!(matches!(
            b.on_request(&request(&[0, 1], false)),
            Decision::Abort(_)
        ));
    }
}
