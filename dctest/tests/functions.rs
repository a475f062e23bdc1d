//! dctest suite **functions**: updates that fail, and what the operator sees of them.
//!
//! - A broken image: the manifest of one pinned image is missing from the registry when the
//!   first update runs. Step 1 aborts, the updater stops the update and the webhook gets a
//!   failure naming the image; once the image is back, `neco recover` runs the update again to
//!   completion and the webhook gets the success.
//! - A worker that dies in the middle of a step and does not come back: its liveness key
//!   expires (5 s TTL) and the updater stops the update within seconds, not after the worker
//!   timeout, with a failure naming the boot server.
//! - A worker that is dead already when the update is requested: no key goes away during the
//!   update, so the updater stops it when the grace time for a missing liveness key (30 s)
//!   ends, again naming the boot server.
//!
//! (Killing the leader updater, a worker that is restarted, join/leave and an etcd member that
//! dies are in the `datacenter` suite.) Each test has its own data center; they run one after
//! the other so that a loaded machine does not blur the timing of the liveness check.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test functions`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faults::{
    hold_every_worker_in_step_1, notifications, prepare, setup, titles_of, wait_for_failure,
    wait_for_success, wait_stopped, worker_statuses, DEAD_WORKER_STOPPED_WITHIN, FAILED,
    LIVENESS_GRACE, LIVENESS_TTL,
};
use common::{Pins, BEGINS, SUCCEEDED};
use serde_json::Value;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One data center at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_broken_image_aborts_and_neco_recover_completes_once_it_is_fixed() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let dc = common::start();
    let version = dc.version().to_owned();
    let pins = Pins::release();
    prepare(&dc);

    // The manifest of one pinned image disappears from the registry before the first update.
    let image = pins.images.first().unwrap().clone();
    let path = image
        .repository
        .strip_prefix("ghcr.io/")
        .unwrap()
        .to_owned();
    assert_eq!(
        dc.mirror
            .registry
            .manifest_digest(&path, &image.tag)
            .unwrap(),
        image.digest
    );
    dc.mirror
        .registry
        .delete_manifest(&path, &image.digest)
        .unwrap();
    assert!(
        dc.mirror
            .registry
            .manifest_digest(&path, &image.tag)
            .is_err(),
        "{}:{} is still served",
        image.repository,
        image.tag
    );
    let named = |text: &str| text.contains(&image.repository) && text.contains(&image.digest);

    // The first update aborts at step 1, the updater stops it and says why.
    setup(&dc);
    let status = wait_stopped(&dc, 0, &version, common::UPDATE_TIMEOUT);
    let aborted_at = started.elapsed();
    assert_eq!(status["request"]["state"], "aborted", "{status:#}");
    let statuses = worker_statuses(&dc);
    let aborted: Vec<&(u32, Value)> = statuses.iter().filter(|(_, st)| st["cond"] == 2).collect();
    assert!(!aborted.is_empty(), "no worker aborted: {statuses:?}");
    for (lrn, st) in &aborted {
        assert_eq!(st["version"], version.as_str(), "boot server {lrn}: {st}");
        assert_eq!(st["step"], 1, "boot server {lrn}: {st}");
        assert!(
            named(st["message"].as_str().unwrap()),
            "boot server {lrn}: the message does not name {}@{}: {st}",
            image.repository,
            image.digest
        );
    }
    for (lrn, st) in &statuses {
        assert_ne!(st["cond"], 3, "boot server {lrn} completed: {st}");
    }
    let reason = wait_for_failure(&dc, &version);
    assert!(
        named(&reason),
        "the reason does not name {}@{}: {reason}",
        image.repository,
        image.digest
    );
    assert!(reason.contains("step 1"), "{reason}");
    assert!(
        !titles_of(&dc, &version).iter().any(|t| t == SUCCEEDED),
        "{:?}",
        notifications(&dc)
    );
    // Stopped means stopped: nothing runs again by itself. Each worker ends its part (it
    // meets the broken image and aborts, or finds the request stopped); after that the
    // request is still the stopped one.
    dc.wait_until(
        "every worker ends the stopped update",
        Duration::from_secs(60),
        |dc| {
            let statuses = worker_statuses(dc);
            let ended = dc.servers().all(|server| {
                statuses
                    .iter()
                    .any(|(lrn, st)| *lrn == server.lrn() && st["cond"] == 2)
                    || server
                        .worker()
                        .journal()
                        .contains("the request changed; following the next one")
            });
            ended.then_some(()).ok_or_else(|| format!("{statuses:?}"))
        },
    )
    .unwrap();
    let later = dc.status_json(0).unwrap();
    for field in ["version", "started_at", "stopped", "servers"] {
        assert_eq!(
            later["request"][field], status["request"][field],
            "{field}: {later:#}"
        );
    }
    assert_eq!(later["request"]["stopped"], true, "{later:#}");
    for st in later["request"]["statuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_ne!(st["condition"], "completed", "{later:#}");
        assert!(st["step"].as_u64().unwrap_or(0) <= 1, "{later:#}");
    }

    // The image is pushed again: the mirror's images are reproducible, so it is the pinned
    // manifest again.
    let pushed = dc.mirror.registry.push_image(&path, &image.tag).unwrap();
    assert_eq!(pushed.manifest_digest, image.digest);
    assert_eq!(
        dc.mirror
            .registry
            .manifest_digest(&path, &image.tag)
            .unwrap(),
        image.digest
    );

    // `neco recover` clears the stopped update; the updater requests it again and it completes.
    let recover = Instant::now();
    let out = dc.neco_ok(1, &["recover"]).unwrap();
    eprintln!("dctest: neco recover: {}", out.trim());
    let status = common::wait_completed(&dc, 0, &version);
    let recovered_in = recover.elapsed();
    common::assert_all_completed(&status, &version, &[0, 1, 2]);
    // One failure, then the recovery begins and succeeds.
    wait_for_success(&dc, &version, &[FAILED, BEGINS, SUCCEEDED]);
    for server in dc.servers() {
        let index = server
            .root()
            .join("var/lib/neco/images")
            .join(&image.name)
            .join("index.json");
        let index =
            std::fs::read_to_string(&index).unwrap_or_else(|e| panic!("{}: {e}", index.display()));
        assert!(
            index.contains(&image.digest),
            "boot server {}: {index}",
            server.lrn()
        );
    }

    eprintln!(
        "dctest: functions/broken image: stopped at {:.1}s ({reason}), recovered in {:.1}s, \
         total {:.1}s",
        aborted_at.as_secs_f64(),
        recovered_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_worker_dying_in_the_middle_of_a_step_stops_the_update_within_seconds() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let mut dc = common::start();
    let version = dc.version().to_owned();
    prepare(&dc);

    // The registry stops answering: every worker stays inside step 1, fetching images.
    let frozen = hold_every_worker_in_step_1(&dc);

    // Worker 2 dies there and is not started again.
    let killed_at = Instant::now();
    let pid = dc.stop_worker(2).unwrap().expect("worker 2 ran");
    let worker = dc.server(2).unwrap().worker();
    let exits = worker.exits();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0].signal, Some(9), "{pid}: {exits:?}");

    // Its liveness key expires and the updater stops the update.
    let status = wait_stopped(&dc, 0, &version, Duration::from_secs(60));
    let stopped_after = killed_at.elapsed();
    assert!(
        stopped_after <= DEAD_WORKER_STOPPED_WITHIN,
        "stopped {:.1}s after the worker died",
        stopped_after.as_secs_f64()
    );
    assert!(
        stopped_after >= LIVENESS_TTL - Duration::from_secs(2),
        "stopped {:.1}s after the worker died, before its liveness lease could expire",
        stopped_after.as_secs_f64()
    );
    let statuses = status["request"]["statuses"].as_array().unwrap();
    for s in statuses {
        assert_eq!(s["step"], 1, "{status:#}");
        assert_eq!(s["condition"], "running", "{status:#}");
        assert_eq!(s["alive"], s["lrn"] != 2, "{status:#}");
    }
    assert_eq!(status["alive"], serde_json::json!([0, 1]), "{status:#}");
    let reason = wait_for_failure(&dc, &version);
    let notified_after = killed_at.elapsed();
    assert!(reason.contains("boot server 2"), "{reason}");
    assert!(
        !reason.contains("boot server 0") && !reason.contains("boot server 1"),
        "{reason}"
    );

    // The registry answers again: the living workers finish step 1 and find the request
    // stopped when they write step 2 (a status for a rewritten request is not written); they
    // wait for the next request; nothing aborts and nothing is notified twice.
    drop(frozen);
    dc.wait_until(
        "workers 0 and 1 end the stopped update",
        Duration::from_secs(60),
        |dc| {
            let done = [0, 1].iter().all(|&lrn| {
                dc.server(lrn)
                    .unwrap()
                    .worker()
                    .journal()
                    .contains("the request changed; following the next one")
            });
            done.then_some(())
                .ok_or_else(|| format!("{:?}", worker_statuses(dc)))
        },
    )
    .unwrap();
    let status = dc.status_json(0).unwrap();
    assert_eq!(
        common::request_of(&status),
        Some((version.clone(), "running".to_owned(), true)),
        "{status:#}"
    );
    for (lrn, st) in worker_statuses(&dc) {
        assert_eq!(st["cond"], 1, "boot server {lrn}: {st}");
        assert_eq!(st["step"], 1, "boot server {lrn}: {st}");
    }
    for lrn in [0, 1] {
        let worker = dc.server(lrn).unwrap().worker();
        assert_eq!(
            worker.starts(),
            1,
            "{}: {:?}",
            worker.name(),
            worker.exits()
        );
    }
    assert_eq!(
        titles_of(&dc, &version),
        vec![FAILED.to_owned()],
        "{:?}",
        notifications(&dc)
    );

    eprintln!(
        "dctest: functions/dead worker: stopped {:.1}s and notified {:.1}s after the worker died \
         ({reason}), total {:.1}s",
        stopped_after.as_secs_f64(),
        notified_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_worker_dead_before_the_request_stops_the_update_after_the_grace_time() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let mut dc = common::start();
    let version = dc.version().to_owned();
    prepare(&dc);

    // Worker 2 dies before there is anything to do, and its liveness key expires.
    dc.stop_worker(2).unwrap().expect("worker 2 ran");
    dc.wait_until(
        "the liveness key of boot server 2 expired",
        LIVENESS_TTL + Duration::from_secs(15),
        |dc| {
            let status = dc.status_json(0).map_err(|e| e.to_string())?;
            (status["alive"] == serde_json::json!([0, 1]))
                .then_some(())
                .ok_or_else(|| status["alive"].to_string())
        },
    )
    .unwrap();

    // The update is requested for every server: no key of boot server 2 goes away now, so only
    // the end of the grace time (30 s after the request) can tell the updater it is dead.
    let requested = Instant::now();
    setup(&dc);
    let status = wait_stopped(&dc, 0, &version, LIVENESS_GRACE + Duration::from_secs(30));
    let stopped_after = requested.elapsed();
    assert!(
        stopped_after >= LIVENESS_GRACE - Duration::from_secs(2),
        "stopped {:.1}s after the request, within the grace time",
        stopped_after.as_secs_f64()
    );
    let statuses = status["request"]["statuses"].as_array().unwrap();
    assert_eq!(statuses[2]["condition"], "not started", "{status:#}");
    assert_eq!(statuses[2]["alive"], false, "{status:#}");
    let reason = wait_for_failure(&dc, &version);
    assert!(reason.contains("boot server 2"), "{reason}");
    assert_eq!(
        titles_of(&dc, &version),
        vec![FAILED.to_owned()],
        "{:?}",
        notifications(&dc)
    );

    eprintln!(
        "dctest: functions/worker dead before the request: stopped {:.1}s after the request \
         ({reason}), total {:.1}s",
        stopped_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
