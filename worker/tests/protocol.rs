//! The worker's outer loop and lock-step protocol (reference/neco-cd.md §8.2–8.4, the worker
//! cases of §14) against a real etcd. The steps are a recording stand-in that can fail at a
//! chosen step, as neco's own mock operator; the real steps are tested in `steps.rs`.
//!
//! Peers are driven by watching the worker's own status key and answering each report, never
//! by sleeping. A worker that must stay idle is checked by waiting for the log line of its
//! decision and then writing a sentinel request for another version: the worker returns
//! `SelfUpdate(sentinel)` only after it has handled (and ignored) what came before.
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::EtcdCluster;
use neco::storage::{StatusEvent, Storage};
use neco::types::UpdateCondition::{self, Aborted, Completed, Running};
use neco::types::{Lrn, UpdateStatus};
use std::collections::BTreeMap;
use std::time::Duration;
use worker::run::{Exit, RunError, Worker};
use worker::steps::final_step;

mod common;
use common::*;

// --- the table -------------------------------------------------------------------------------

/// What the test does.
#[derive(Debug, Clone)]
enum Act {
    Status(Lrn, UpdateStatus),
    Request(&'static str, &'static [Lrn], bool),
    /// `neco recover`: clear statuses and contents of the stopped request.
    Clear,
    /// The case has seen what it waited for.
    Done,
}

/// What the worker must do.
#[derive(Debug, Clone, Copy)]
enum WantExit {
    SelfUpdate(&'static str),
    /// `run()` fails with an error containing the text.
    Error(&'static str),
    /// `run()` is still waiting when the driver is done.
    Idle,
}

struct Case {
    name: &'static str,
    /// Statuses written before the request.
    before: Vec<(Lrn, UpdateStatus)>,
    request: (&'static str, &'static [Lrn], bool),
    /// Statuses written after the request, before the worker starts (replayed to it).
    after_request: Vec<(Lrn, UpdateStatus)>,
    fail_at: Option<u32>,
    /// The worker idles: wait for this log text, then do `then`.
    idle_log: Option<&'static str>,
    then: Vec<Act>,
    /// The answer to each status the worker writes for itself.
    peers: fn(&UpdateStatus) -> Vec<Act>,
    exit: WantExit,
    steps: Vec<u32>,
    /// The worker's own status at the end (`None`: it never wrote one).
    own: Option<(u32, UpdateCondition)>,
    own_message: Option<&'static str>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            before: vec![],
            request: (V, &[0, 1], false),
            after_request: vec![],
            fail_at: None,
            idle_log: None,
            then: vec![],
            peers: silent,
            exit: WantExit::Idle,
            steps: vec![],
            own: None,
            own_message: None,
        }
    }
}

/// No peer answers.
fn silent(_: &UpdateStatus) -> Vec<Act> {
    vec![]
}

/// Peer 1 reports every step when the worker does, and completes with it.
fn echo(own: &UpdateStatus) -> Vec<Act> {
    match own.cond {
        Running => vec![Act::Status(1, st(V, own.step, Running))],
        Completed => vec![Act::Status(1, st(V, own.step, Completed)), Act::Done],
        _ => vec![],
    }
}

/// `echo`, but at step 2 `instead` replaces peer 1's report.
fn at_step2(own: &UpdateStatus, instead: Vec<Act>) -> Vec<Act> {
    if own.cond == Running && own.step == 2 {
        instead
    } else {
        echo(own)
    }
}

fn all_steps() -> Vec<u32> {
    (1..=final_step()).collect()
}

fn cases() -> Vec<Case> {
    let f = final_step();
    vec![
        Case {
            name: "update-neco",
            request: (NEW, &[0, 1, 2], false),
            exit: WantExit::SelfUpdate(NEW),
            ..Case::default()
        },
        Case {
            name: "no-member",
            request: (V, &[1, 2], false),
            idle_log: Some("not a member"),
            then: vec![Act::Request(SENTINEL, &[0, 1, 2], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            ..Case::default()
        },
        Case {
            name: "stopped",
            request: (V, &[0, 1], true),
            idle_log: Some("the update is stopped"),
            then: vec![Act::Request(SENTINEL, &[0, 1], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            ..Case::default()
        },
        Case {
            name: "previous-abort",
            before: vec![(0, st(V, 1, Aborted)), (1, st(V, 1, Running))],
            idle_log: Some("previous update was aborted"),
            then: vec![Act::Request(SENTINEL, &[0, 1], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            own: Some((1, Aborted)),
            ..Case::default()
        },
        Case {
            name: "restarted-mid-update marks itself aborted",
            before: vec![(0, st(V, 2, Running)), (1, st(V, 2, Running))],
            idle_log: Some("previous update was aborted"),
            then: vec![Act::Request(SENTINEL, &[0, 1], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            own: Some((2, Aborted)),
            own_message: Some("restarted"),
            ..Case::default()
        },
        Case {
            name: "previous-abort-clear",
            before: vec![(0, st(V, 1, Aborted)), (1, st(V, 1, Running))],
            idle_log: Some("previous update was aborted"),
            then: vec![
                Act::Request(V, &[0, 1], true),
                Act::Clear,
                Act::Request(V, &[0, 1], false),
            ],
            peers: echo,
            exit: WantExit::Idle,
            steps: all_steps(),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "completed while a peer is still at the final step: waits, runs nothing",
            before: vec![(0, st(V, f, Completed)), (1, st(V, f, Running))],
            idle_log: Some("this server completed the update"),
            then: vec![Act::Request(SENTINEL, &[0, 1], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "previous-completed",
            before: vec![(0, st(V, f, Completed)), (1, st(V, f, Completed))],
            idle_log: Some("already completed"),
            then: vec![Act::Request(SENTINEL, &[0, 1], false)],
            exit: WantExit::SelfUpdate(SENTINEL),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "update-successful",
            peers: |own| {
                let mut acts = echo(own);
                if own.cond == Running && own.step == 2 {
                    // A server outside the request: whatever it says is ignored.
                    let mut stray = st("1999.01.01-1", 9, Aborted);
                    stray.message = "not a member".into();
                    acts.insert(0, Act::Status(3, stray));
                }
                acts
            },
            exit: WantExit::Idle,
            steps: all_steps(),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "update-successful-then-new-request",
            peers: |own| match own.cond {
                Completed => vec![
                    Act::Status(1, st(V, own.step, Completed)),
                    Act::Request(NEW, &[0, 1], false),
                ],
                _ => echo(own),
            },
            exit: WantExit::SelfUpdate(NEW),
            steps: all_steps(),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "a late worker sees the reports made before it watched",
            after_request: vec![(1, st(V, 1, Running))],
            peers: |own| match (own.cond, own.step) {
                (Running, 1) => vec![],
                _ => echo(own),
            },
            exit: WantExit::Idle,
            steps: all_steps(),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "a peer completing the final step first counts",
            peers: |own| match (own.cond, own.step) {
                (Running, s) if s == final_step() => {
                    vec![Act::Status(1, st(V, s, Completed))]
                }
                (Completed, _) => vec![Act::Done],
                _ => echo(own),
            },
            exit: WantExit::Idle,
            steps: all_steps(),
            own: Some((f, Completed)),
            ..Case::default()
        },
        Case {
            name: "cancel-request",
            peers: |own| {
                at_step2(
                    own,
                    vec![
                        Act::Request(V, &[0, 1], true),
                        Act::Request(SENTINEL, &[0, 1], false),
                    ],
                )
            },
            exit: WantExit::SelfUpdate(SENTINEL),
            steps: vec![1],
            own: Some((2, Running)),
            ..Case::default()
        },
        Case {
            // The request rewritten (not stopped) in the middle: nothing more is written for
            // the old one; the new one finds this server's unfinished attempt and marks it.
            name: "unexpected-request",
            peers: |own| match own.cond {
                Aborted => vec![Act::Done],
                _ => at_step2(own, vec![Act::Request(V, &[0, 1, 2], false)]),
            },
            exit: WantExit::Idle,
            steps: vec![1],
            own: Some((2, Aborted)),
            own_message: Some("did not finish"),
            ..Case::default()
        },
        Case {
            name: "unexpected-version",
            peers: |own| match own.cond {
                Running => vec![Act::Status(1, st(NEW, own.step, Running))],
                _ => vec![],
            },
            exit: WantExit::Error("unexpected version"),
            steps: vec![],
            own: Some((1, Aborted)),
            own_message: Some(NEW),
            ..Case::default()
        },
        Case {
            name: "unexpected-step",
            peers: |own| at_step2(own, vec![Act::Status(1, st(V, 3, Running))]),
            exit: WantExit::Error("unexpected step"),
            steps: vec![1],
            own: Some((2, Aborted)),
            own_message: Some("unexpected step"),
            ..Case::default()
        },
        Case {
            name: "aborted",
            peers: |own| {
                let mut failed = st(V, 2, Aborted);
                failed.message = "disk full".into();
                at_step2(own, vec![Act::Status(1, failed)])
            },
            exit: WantExit::Error("boot server 1 failed to update: disk full"),
            steps: vec![1],
            own: Some((2, Aborted)),
            own_message: Some("disk full"),
            ..Case::default()
        },
        Case {
            name: "unexpected-completion",
            peers: |own| at_step2(own, vec![Act::Status(1, st(V, 1, Completed))]),
            exit: WantExit::Error("reports completion"),
            steps: vec![1],
            own: Some((2, Aborted)),
            own_message: Some("reports completion"),
            ..Case::default()
        },
        Case {
            name: "completion before the final step",
            peers: |own| at_step2(own, vec![Act::Status(1, st(V, 2, Completed))]),
            exit: WantExit::Error("reports completion"),
            steps: vec![1],
            own: Some((2, Aborted)),
            own_message: Some("reports completion"),
            ..Case::default()
        },
        Case {
            name: "fail-at-step2",
            fail_at: Some(2),
            peers: echo,
            exit: WantExit::Error("step 2 (install debs): injected failure"),
            steps: vec![1, 2],
            own: Some((2, Aborted)),
            own_message: Some("step 2 (install debs): injected failure"),
            ..Case::default()
        },
    ]
}

/// Performs one act; `true` for [`Act::Done`].
async fn perform(storage: &Storage, guard: &str, act: &Act) -> bool {
    match act {
        Act::Status(lrn, status) => put_status(storage, *lrn, status).await,
        Act::Request(version, servers, stop) => storage
            .put_request(&request(version, servers, *stop), guard)
            .await
            .unwrap(),
        Act::Clear => storage.clear_status_and_contents().await.unwrap(),
        Act::Done => return true,
    }
    false
}

/// Answers the worker's own reports until the case is done.
async fn drive(storage: &Storage, guard: &str, revision: i64, case: &Case, capture: &Capture) {
    let mut events = storage.status_events(revision);
    if let Some(text) = case.idle_log {
        capture.wait_for(text).await;
        for act in &case.then {
            if perform(storage, guard, act).await {
                return;
            }
        }
    }
    loop {
        if let StatusEvent::Status(0, own) = events.next().await.unwrap() {
            for act in (case.peers)(&own) {
                if perform(storage, guard, &act).await {
                    return;
                }
            }
        }
    }
}

enum End {
    Returned(Result<Exit, RunError>),
    DriverDone,
}

/// Runs one case; returns what went wrong.
async fn run_case(etcd: &EtcdCluster, index: usize, case: &Case, capture: &Capture) -> Vec<String> {
    let storage = connect(etcd, &format!("/protocol/{index}/")).await;
    let guard = guard(&storage).await;
    for (lrn, status) in &case.before {
        put_status(&storage, *lrn, status).await;
    }
    let (version, servers, stop) = case.request;
    storage
        .put_request(&request(version, servers, stop), &guard)
        .await
        .unwrap();
    for (lrn, status) in &case.after_request {
        put_status(&storage, *lrn, status).await;
    }
    let revision = storage.snapshot().await.unwrap().revision;
    let log = Log::default();
    let worker = Worker {
        storage: &storage,
        lrn: 0,
        version: V.to_owned(),
        steps: Recorder {
            lrn: 0,
            fail_at: case.fail_at,
            duration: Duration::ZERO,
            log: log.clone(),
        },
    };
    capture.clear();
    let end = tokio::time::timeout(CASE_TIMEOUT, async {
        tokio::select! {
            r = worker.run() => End::Returned(r),
            () = drive(&storage, &guard, revision, case, capture) => End::DriverDone,
        }
    })
    .await;

    let mut problems = Vec::new();
    match (end, case.exit) {
        (Err(_), _) => problems.push(format!(
            "timed out after {CASE_TIMEOUT:?}; log: {:?}",
            capture.lines.lock().unwrap()
        )),
        (
            Ok(End::Returned(Ok(Exit::SelfUpdate { version: v, .. }))),
            WantExit::SelfUpdate(want),
        ) => {
            if v != want {
                problems.push(format!("self-update to {v}, expected {want}"));
            }
        }
        (Ok(End::Returned(Err(e))), WantExit::Error(want)) => {
            if !e.to_string().contains(want) {
                problems.push(format!("error {e:?} does not contain {want:?}"));
            }
        }
        (Ok(End::DriverDone), WantExit::Idle) => {}
        (Ok(End::Returned(r)), want) => {
            problems.push(format!("run() returned {r:?}, expected {want:?}"))
        }
        (Ok(End::DriverDone), want) => {
            problems.push(format!("run() is still waiting, expected {want:?}"));
        }
    }
    let steps = log.steps_of(0);
    if steps != case.steps {
        problems.push(format!("steps {steps:?} ran, expected {:?}", case.steps));
    }
    if let Some(bad) = log.ran.lock().unwrap().iter().find(|r| r.version != V) {
        problems.push(format!("a step ran for version {}", bad.version));
    }
    let own = storage.status(0).await.unwrap();
    match (&own, case.own) {
        (None, None) => {}
        (Some(got), Some((step, cond)))
            if got.version == V && got.step == step && got.cond == cond => {}
        (got, want) => problems.push(format!("own status {got:?}, expected {want:?}")),
    }
    if let Some(text) = case.own_message {
        let message = own.map(|s| s.message).unwrap_or_default();
        if !message.contains(text) {
            problems.push(format!("own status message {message:?} lacks {text:?}"));
        }
    }
    problems
}

#[tokio::test]
async fn worker_cases() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let mut failures = Vec::new();
    for (index, case) in cases().iter().enumerate() {
        let problems = run_case(&etcd, index, case, &capture).await;
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", case.name, problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Three workers in one process update in lock-step: every one completes, and none starts a
/// step before every worker has finished the previous one (each reports step N+1 only after
/// running step N, and runs N+1 only once all reported it).
#[tokio::test]
async fn three_workers_in_lock_step() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let servers: &[Lrn] = &[0, 1, 2];
    let storages = [
        connect(&etcd, "/neco/").await,
        connect(&etcd, "/neco/").await,
        connect(&etcd, "/neco/").await,
    ];
    let test = connect(&etcd, "/neco/").await;
    let guard = guard(&test).await;
    test.put_request(&request(V, servers, false), &guard)
        .await
        .unwrap();
    let revision = test.snapshot().await.unwrap().revision;
    let log = Log::default();
    // Worker 0 is the slowest: a missing barrier would let the others run ahead of it.
    let workers: Vec<_> = servers
        .iter()
        .zip(&storages)
        .map(|(&lrn, storage)| Worker {
            storage,
            lrn,
            version: V.to_owned(),
            steps: Recorder {
                lrn,
                fail_at: None,
                duration: Duration::from_millis(40 - 15 * u64::from(lrn)),
                log: log.clone(),
            },
        })
        .collect();

    // Once all three have completed, a request for another version ends their loops.
    let driver = async {
        let mut events = test.status_events(revision);
        let mut reports: BTreeMap<Lrn, Vec<(u32, UpdateCondition)>> = BTreeMap::new();
        let mut completed = 0;
        while completed < servers.len() {
            if let StatusEvent::Status(lrn, status) = events.next().await.unwrap() {
                assert_eq!(status.version, V);
                reports
                    .entry(lrn)
                    .or_default()
                    .push((status.step, status.cond));
                if status.cond == Completed {
                    completed += 1;
                }
            }
        }
        test.put_request(&request(NEW, servers, false), &guard)
            .await
            .unwrap();
        reports
    };
    let (r0, r1, r2, reports) = tokio::time::timeout(CASE_TIMEOUT, async {
        tokio::join!(workers[0].run(), workers[1].run(), workers[2].run(), driver)
    })
    .await
    .expect("the three workers complete in time");
    for r in [r0, r1, r2] {
        assert!(
            matches!(r, Ok(Exit::SelfUpdate { version: ref v, .. }) if v == NEW),
            "{r:?}"
        );
    }

    // Every worker reported each step once, in order, then completed.
    let mut expected: Vec<_> = (1..=final_step()).map(|s| (s, Running)).collect();
    expected.push((final_step(), Completed));
    for &lrn in servers {
        assert_eq!(reports[&lrn], expected, "reports of worker {lrn}");
        assert_eq!(log.steps_of(lrn), all_steps(), "steps of worker {lrn}");
        assert_eq!(
            test.status(lrn).await.unwrap(),
            Some(st(V, final_step(), Completed))
        );
    }
    let ran = log.ran.lock().unwrap().clone();
    for later in &ran {
        for earlier in ran.iter().filter(|r| r.step + 1 == later.step) {
            assert!(
                later.started > earlier.ended,
                "worker {} started step {} (at {}) before worker {} finished step {} (at {}): {ran:#?}",
                later.lrn,
                later.step,
                later.started,
                earlier.lrn,
                earlier.step,
                earlier.ended
            );
        }
    }
}

/// A request written while the worker starts is handled, whenever it lands between the
/// worker's first reads (neco reads the request and the revision to watch from in one Get).
#[tokio::test]
async fn a_request_written_while_the_worker_starts_is_not_missed() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let mut missed = Vec::new();
    for i in 0..30u32 {
        let storage = connect(&etcd, &format!("/start/{i}/")).await;
        let guard = guard(&storage).await;
        let worker = Worker {
            storage: &storage,
            lrn: 0,
            version: V.to_owned(),
            steps: Recorder {
                lrn: 0,
                fail_at: None,
                duration: Duration::ZERO,
                log: Log::default(),
            },
        };
        let write = async {
            // Land at a different point of the worker's start each time.
            for _ in 0..i % 10 {
                tokio::task::yield_now().await;
            }
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_micros(u64::from(i / 10) * 150) {
                tokio::task::yield_now().await;
            }
            storage
                .put_request(&request(NEW, &[0], false), &guard)
                .await
                .unwrap();
        };
        let run = async { tokio::join!(worker.run(), write).0 };
        match tokio::time::timeout(Duration::from_secs(3), run).await {
            Ok(Ok(Exit::SelfUpdate { version: v, .. })) if v == NEW => {}
            Ok(other) => panic!("attempt {i}: {other:?}"),
            Err(_) => missed.push(i),
        }
    }
    assert!(
        missed.is_empty(),
        "the request was missed in attempts {missed:?}"
    );
}
