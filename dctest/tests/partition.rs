//! dctest suite **partition**: a boot server cut off the network in the middle of an update.
//!
//! Every worker is held inside step 1 (the registry stops answering), then boot server 2's
//! link is cut (its etcd member, updater and worker all lose the others; the two remaining
//! members keep a quorum). Its liveness lease expires, and the updater on the other side stops
//! the update within seconds, with a failure notification naming boot server 2 and no other.
//! Healed, and with the registry answering again, `neco recover` runs the update to completion
//! on all three servers; each event is notified once.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test partition`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faults::{
    prepare, setup, titles_of, wait_for_failure, wait_stopped, Frozen, DEAD_WORKER_STOPPED_WITHIN,
    FAILED,
};
use common::{BEGINS, SUCCEEDED};
use std::time::{Duration, Instant};

/// The boot server that is cut off.
const CUT: u32 = 2;

#[test]
fn a_worker_cut_off_in_the_middle_of_an_update_stops_it_and_recover_completes_it() {
    let started = Instant::now();
    let dc = common::start();
    let version = dc.version().to_owned();
    prepare(&dc);

    // Every worker inside step 1: the registry of the network stops answering.
    let frozen = Frozen::new(
        dc.mirror
            .registry_view()
            .expect("the registry of the network")
            .pid(),
    );
    setup(&dc);
    dc.wait_until("every worker runs step 1", Duration::from_secs(30), |dc| {
        let status = dc.status_json(0).map_err(|e| e.to_string())?;
        let running = status["request"]["statuses"].as_array().is_some_and(|s| {
            s.len() == 3
                && s.iter()
                    .all(|s| s["step"] == 1 && s["condition"] == "running")
        });
        running.then_some(()).ok_or_else(|| status.to_string())
    })
    .unwrap();

    // Boot server 2 is cut off: the others stop the update within seconds.
    let cut_at = Instant::now();
    dc.lan().cut(u8::try_from(CUT).unwrap()).unwrap();
    let status = wait_stopped(&dc, &version, Duration::from_secs(60));
    let stopped_after = cut_at.elapsed();
    assert!(
        stopped_after <= DEAD_WORKER_STOPPED_WITHIN,
        "stopped {:.1}s after the cut",
        stopped_after.as_secs_f64()
    );
    assert_eq!(status["alive"], serde_json::json!([0, 1]), "{status:#}");
    let reason = wait_for_failure(&dc, &version);
    assert!(reason.contains(&format!("boot server {CUT}")), "{reason}");
    assert!(
        !reason.contains("boot server 0") && !reason.contains("boot server 1"),
        "{reason}"
    );
    // From the cut-off side, etcd has no quorum: its CLI cannot even read the status.
    assert!(
        !dc.neco(CUT, &["status", "--json"])
            .unwrap()
            .status
            .success(),
        "boot server {CUT} still reaches a quorum while cut off"
    );

    // Healed, the registry answering again: neco recover runs the update to completion.
    dc.lan().heal(u8::try_from(CUT).unwrap()).unwrap();
    drop(frozen);
    dc.wait_until(
        &format!("boot server {CUT} is alive again"),
        Duration::from_secs(60),
        |dc| {
            let status = dc.status_json(0).map_err(|e| e.to_string())?;
            (status["alive"] == serde_json::json!([0, 1, 2]))
                .then_some(())
                .ok_or_else(|| status["alive"].to_string())
        },
    )
    .unwrap();
    dc.neco_ok(0, &["recover"]).unwrap();
    let status = common::wait_completed(&dc, 0, &version);
    common::assert_all_completed(&status, &version, &[0, 1, 2]);
    dc.wait_until("the success notification", Duration::from_secs(15), |dc| {
        let got = titles_of(dc, &version);
        got.iter()
            .any(|t| t == SUCCEEDED)
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    })
    .unwrap();
    assert_eq!(
        titles_of(&dc, &version),
        vec![FAILED.to_owned(), BEGINS.to_owned(), SUCCEEDED.to_owned()],
        "one failure, then the recovery begins and succeeds"
    );

    eprintln!(
        "dctest: partition/worker cut off: stopped {:.1}s after the cut ({reason}), total {:.1}s",
        stopped_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
