//! The worker through a real etcd's normal life: a compacted history, a member that dies or
//! stalls in the middle of an update, and a stopped update recovered and requested again
//! while one of its steps still runs. Steps are gated stand-ins that say when they start, so
//! that each fault lands exactly inside a step.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::EtcdCluster;
use neco::config::EtcdConfig;
use neco::lease::KeptLease;
use neco::storage::{StatusEvent, Storage, LIVENESS_TTL};
use neco::types::UpdateCondition::{Aborted, Completed, Running};
use neco::types::{Lrn, UpdateStatus};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use worker::run::{Exit, RunSteps, Worker};
use worker::steps::{final_step, Step, StepError};

mod common;
use common::{guard, put_status, request, st, Capture, NEW, V};

/// How long one test's update may take at most.
const LIMIT: Duration = Duration::from_secs(60);

/// Steps that say when they start and, the first time a held step runs, wait for the test.
struct Gated {
    lrn: Lrn,
    started: mpsc::UnboundedSender<(Lrn, u32)>,
    holds: Mutex<BTreeMap<u32, oneshot::Receiver<()>>>,
}

impl Gated {
    /// Steps of `lrn` holding at each of `held`; returns the releases in the same order.
    fn new(
        lrn: Lrn,
        started: &mpsc::UnboundedSender<(Lrn, u32)>,
        held: &[u32],
    ) -> (Self, Vec<oneshot::Sender<()>>) {
        let mut holds = BTreeMap::new();
        let mut releases = Vec::new();
        for &step in held {
            let (release, hold) = oneshot::channel();
            holds.insert(step, hold);
            releases.push(release);
        }
        let steps = Self {
            lrn,
            started: started.clone(),
            holds: Mutex::new(holds),
        };
        (steps, releases)
    }
}

impl RunSteps for Gated {
    async fn run_step(&self, step: Step, _version: &str) -> Result<(), StepError> {
        let _ = self.started.send((self.lrn, step.number()));
        let hold = self.holds.lock().unwrap().remove(&step.number());
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        Ok(())
    }
}

/// Worker 0 at version `V`, its steps never held.
fn ungated_worker(storage: &Storage) -> Worker<'_, Gated> {
    let (started, _) = mpsc::unbounded_channel();
    let (steps, _) = Gated::new(0, &started, &[]);
    Worker {
        storage,
        lrn: 0,
        version: V.to_owned(),
        steps,
    }
}

async fn connect(endpoints: Vec<String>) -> Storage {
    Storage::connect(&EtcdConfig::plain(
        endpoints,
        "/neco/",
        Duration::from_secs(2),
    ))
    .await
    .expect("connect to etcd")
}

/// Compacts the history up to the current revision, as etcd's periodic compaction does.
async fn compact_all(storage: &Storage) {
    let mut client = storage.client();
    let revision = storage.snapshot().await.unwrap().revision;
    client.compact(revision, None).await.unwrap();
}

/// Peer `peer` answers every report of worker `me` (the same step, then completion) until
/// `me` completes; returns every status `me` wrote.
async fn echo_until_completed(
    storage: &Storage,
    revision: i64,
    me: Lrn,
    peer: Lrn,
) -> Vec<UpdateStatus> {
    let mut events = storage.status_events(revision);
    let mut own = Vec::new();
    loop {
        let StatusEvent::Status(lrn, status) = events.next().await.unwrap() else {
            continue;
        };
        if lrn != me {
            continue;
        }
        own.push(status.clone());
        match status.cond {
            Running => put_status(storage, peer, &st(V, status.step, Running)).await,
            Completed => {
                put_status(storage, peer, &st(V, status.step, Completed)).await;
                return own;
            }
            _ => {}
        }
    }
}

/// A worker started on an etcd that compacted its history past a completed request does not
/// fail its first watch: it waits, and follows the next request.
#[tokio::test]
async fn a_worker_started_on_a_compacted_history_waits_for_the_next_request() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let storage = connect(etcd.endpoints()).await;
    let guard = guard(&storage).await;
    storage
        .put_request(&request(V, &[0], false), &guard)
        .await
        .unwrap();
    for step in 1..=final_step() {
        put_status(&storage, 0, &st(V, step, Running)).await;
    }
    put_status(&storage, 0, &st(V, final_step(), Completed)).await;
    for i in 0..10 {
        storage.register_bootserver(i).await.unwrap();
    }
    compact_all(&storage).await;

    let worker = ungated_worker(&storage);
    let capture = Capture::default();
    let _subscriber = tracing::subscriber::set_default(capture.clone());
    let run = async {
        tokio::join!(worker.run(), async {
            // It decided on the completed request and waits from a compacted revision: a
            // request for another version must end the wait.
            capture.wait_for("already completed").await;
            storage
                .put_request(&request(NEW, &[0], false), &guard)
                .await
                .unwrap();
        })
        .0
    };
    let exit = tokio::time::timeout(LIMIT, run)
        .await
        .expect("the worker follows the next request");
    assert!(
        matches!(exit, Ok(Exit::SelfUpdate { ref version, .. }) if version == NEW),
        "{exit:?}"
    );
}

/// A worker that starts late, after its peer's report of step 1 was compacted away, still
/// sees that report (read from the current state) and completes the update in lock-step.
#[tokio::test]
async fn a_late_worker_whose_peers_report_was_compacted_completes() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let storage = connect(etcd.endpoints()).await;
    let peer = connect(etcd.endpoints()).await;
    let guard = guard(&storage).await;
    storage
        .put_request(&request(V, &[0, 1], false), &guard)
        .await
        .unwrap();
    let (_, revision) = storage.request().await.unwrap().unwrap();
    put_status(&peer, 1, &st(V, 1, Running)).await;
    compact_all(&storage).await;

    let worker = ungated_worker(&storage);
    // Peer 1 has reported step 1 already; from step 2 on it answers each report.
    let peer_side = async {
        let mut events = peer.status_events(revision);
        loop {
            if let StatusEvent::Status(0, own) = events.next().await.unwrap() {
                match own.cond {
                    Running if own.step > 1 => {
                        put_status(&peer, 1, &st(V, own.step, Running)).await
                    }
                    Completed => {
                        put_status(&peer, 1, &st(V, own.step, Completed)).await;
                        break;
                    }
                    Aborted => panic!("the worker aborted: {}", own.message),
                    _ => {}
                }
            }
        }
        peer.put_request(&request(NEW, &[0, 1], false), &guard)
            .await
            .unwrap();
    };
    let (exit, ()) = tokio::time::timeout(LIMIT, async { tokio::join!(worker.run(), peer_side) })
        .await
        .expect("the update completes");
    assert!(
        matches!(exit, Ok(Exit::SelfUpdate { ref version, .. }) if version == NEW),
        "{exit:?}"
    );
    assert_eq!(
        storage.status(0).await.unwrap(),
        Some(st(V, final_step(), Completed))
    );
}

/// The operator stops an update, runs `neco recover` and the same version is requested again,
/// all while a step of the first attempt still runs. When that step ends, the worker writes
/// nothing for the old request: it follows the new one, which completes without an abort.
#[tokio::test]
async fn stop_recover_and_the_same_version_again_during_a_step_completes_the_second_update() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let storage = connect(etcd.endpoints()).await;
    let test = connect(etcd.endpoints()).await;
    let guard = guard(&test).await;
    test.put_request(&request(V, &[0, 1], false), &guard)
        .await
        .unwrap();
    let (_, first) = test.request().await.unwrap().unwrap();
    let (started, mut starts) = mpsc::unbounded_channel();
    let (steps, mut releases) = Gated::new(0, &started, &[1]);
    let worker = Worker {
        storage: &storage,
        lrn: 0,
        version: V.to_owned(),
        steps,
    };
    let release = releases.remove(0);
    let peer = async {
        let own = echo_until_completed(&test, first, 0, 1).await;
        test.put_request(&request(NEW, &[0, 1], false), &guard)
            .await
            .unwrap();
        own
    };
    let operator = async {
        assert_eq!(starts.recv().await, Some((0, 1)));
        // Step 1 of the first request is running now.
        test.put_request(&request(V, &[0, 1], true), &guard)
            .await
            .unwrap();
        test.clear_status_and_contents().await.unwrap();
        test.put_request(&request(V, &[0, 1], false), &guard)
            .await
            .unwrap();
        release.send(()).unwrap();
    };
    let (exit, own, ()) =
        tokio::time::timeout(LIMIT, async { tokio::join!(worker.run(), peer, operator) })
            .await
            .expect("the second update completes");
    assert!(
        matches!(exit, Ok(Exit::SelfUpdate { ref version, .. }) if version == NEW),
        "{exit:?}"
    );
    let aborted: Vec<_> = own.iter().filter(|s| s.cond == Aborted).collect();
    assert!(aborted.is_empty(), "the worker aborted: {aborted:?}");
    // Step 1 of the first request, then every step of the second: nothing in between.
    let mut expected = vec![st(V, 1, Running)];
    expected.extend((1..=final_step()).map(|s| st(V, s, Running)));
    expected.push(st(V, final_step(), Completed));
    assert_eq!(own, expected);
}

/// Three workers, each talking first to its own member of a 3-member cluster, in the middle
/// of an update: member 0 stalls for a second (SIGSTOP) during step 2, member 1 dies during
/// step 3. Every worker completes, none aborts, and no liveness lease is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_completes_when_a_member_stalls_and_another_dies() {
    let mut etcd = EtcdCluster::start(3).expect("start etcd");
    let endpoints = etcd.endpoints();
    let servers: &[Lrn] = &[0, 1, 2];
    let mut storages = Vec::new();
    for lrn in servers {
        // As on a boot server: its own member first, then the others.
        let mut own_first = endpoints.clone();
        own_first.rotate_left(usize::try_from(*lrn).unwrap());
        storages.push(connect(own_first).await);
    }
    let test = connect(endpoints.clone()).await;
    let guard = guard(&test).await;
    test.put_request(&request(V, servers, false), &guard)
        .await
        .unwrap();
    let (_, revision) = test.request().await.unwrap().unwrap();
    let mut leases = Vec::new();
    for (lrn, storage) in servers.iter().zip(&storages) {
        let lease = KeptLease::grant(storage, LIVENESS_TTL).await.unwrap();
        storage.put_alive(*lrn, lease.id(), V).await.unwrap();
        leases.push(lease);
    }
    let (started, mut starts) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    let mut releases = Vec::new();
    for (lrn, storage) in servers.iter().zip(&storages) {
        let held: &[u32] = if *lrn == 0 { &[2, 3] } else { &[] };
        let (steps, mut r) = Gated::new(*lrn, &started, held);
        releases.append(&mut r);
        workers.push(Worker {
            storage,
            lrn: *lrn,
            version: V.to_owned(),
            steps,
        });
    }
    let (at_step3, at_step2) = (releases.pop().unwrap(), releases.pop().unwrap());
    let faults = async {
        while starts.recv().await != Some((0, 2)) {}
        etcd.pause_member(0).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        etcd.resume_member(0).unwrap();
        at_step2.send(()).unwrap();
        while starts.recv().await != Some((0, 3)) {}
        etcd.kill_member(1).unwrap();
        at_step3.send(()).unwrap();
    };
    let watch_all = async {
        let mut events = test.status_events(revision);
        let mut completed = 0;
        while completed < servers.len() {
            if let StatusEvent::Status(lrn, status) = events.next().await.unwrap() {
                assert_ne!(status.cond, Aborted, "worker {lrn}: {}", status.message);
                if status.cond == Completed {
                    completed += 1;
                }
            }
        }
        test.put_request(&request(NEW, servers, false), &guard)
            .await
            .unwrap();
    };
    let [l0, l1, l2] = &mut leases[..] else {
        unreachable!("three leases")
    };
    let run = async {
        tokio::join!(
            workers[0].run(),
            workers[1].run(),
            workers[2].run(),
            faults,
            watch_all
        )
    };
    let (r0, r1, r2, (), ()) = tokio::time::timeout(LIMIT, async {
        tokio::select! {
            done = run => done,
            () = l0.lost() => panic!("worker 0 lost its liveness lease"),
            () = l1.lost() => panic!("worker 1 lost its liveness lease"),
            () = l2.lost() => panic!("worker 2 lost its liveness lease"),
        }
    })
    .await
    .expect("the update completes");
    for r in [r0, r1, r2] {
        assert!(
            matches!(r, Ok(Exit::SelfUpdate { ref version, .. }) if version == NEW),
            "{r:?}"
        );
    }
    for &lrn in servers {
        assert_eq!(
            test.status(lrn).await.unwrap(),
            Some(st(V, final_step(), Completed))
        );
    }
}
