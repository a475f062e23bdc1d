//! dctest suite **partition**: a boot server cut off the network in the middle of an update.
//!
//! Every worker is held inside step 1 (the registry stops answering), then one boot server's
//! link is cut: its etcd member, updater and worker all lose the others, while the two other
//! members keep a quorum. Its liveness lease expires, and the updater on the other side stops
//! the update within seconds, with a failure notification naming that server and no other.
//! The cut-off server cannot even read etcd (no quorum on its side), so it writes nothing.
//! Healed, with the registry answering again, `neco recover` runs the update to completion on
//! all three servers; each event is notified exactly once.
//!
//! - a server whose updater does not lead;
//! - the server of the leader updater: another updater becomes the leader (after the session
//!   TTL) and is the one that stops the update and notifies.
//!
//! The etcd raft leader is moved off the server before it is cut: an etcd election during the
//! update makes the keep-alives of the other workers fail, which today ends their leases (a
//! keep-alive that rides out an election, and one etcd member powered off during an update
//! completing without `neco recover`, need the etcd client's failover and lease retries: not
//! built yet). The tests run one after the
//! other so that a loaded machine does not blur the timing.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test partition`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faults::{
    hold_every_worker_in_step_1, prepare, wait_for_failure, wait_for_success, wait_stopped,
    DEAD_WORKER_STOPPED_WITHIN, FAILED,
};
use common::{BEGINS, SUCCEEDED};
use dctest::DataCenter;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One data center at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

/// Which boot server is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// One whose updater does not lead.
    Follower,
    /// The one whose updater leads.
    Leader,
}

#[test]
fn a_worker_cut_off_in_the_middle_of_an_update_stops_it_and_recover_completes_it() {
    cut_off_in_the_middle_of_an_update(Victim::Follower);
}

#[test]
fn the_leader_cut_off_in_the_middle_of_an_update_hands_over_and_recover_completes_it() {
    cut_off_in_the_middle_of_an_update(Victim::Leader);
}

/// The leader updater, once one leads.
fn leader(dc: &DataCenter) -> u32 {
    dc.wait_until("an updater leads", Duration::from_secs(30), |dc| {
        match dc.updater_leader() {
            Ok(Some(lrn)) => Ok(lrn),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap()
}

fn cut_off_in_the_middle_of_an_update(victim: Victim) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let dc = common::start();
    let version = dc.version().to_owned();
    let leading = leader(&dc);
    let cut = match victim {
        Victim::Leader => leading,
        Victim::Follower => (leading + 1) % 3,
    };
    eprintln!(
        "dctest: partition: the leader is boot server {leading}; cutting off boot server {cut}"
    );
    // Asked on a server of the side that keeps the quorum.
    let observer = (cut + 1) % 3;
    // The etcd raft leader is moved off the server to cut, before anything is requested:
    // cutting the raft leader makes the other members elect a new one, and an election during
    // the update fails the other workers' etcd requests and keep-alives ("leader changed"),
    // which today aborts the update (an etcd client that rides out an election is not built
    // yet).
    dc.move_etcd_leader(observer).unwrap();
    prepare(&dc);

    // Every worker inside step 1: the registry of the network stops answering.
    let frozen = hold_every_worker_in_step_1(&dc);
    assert_eq!(leader(&dc), leading, "the leader changed before the cut");

    // The server is cut off: the others stop the update within seconds.
    let cut_at = Instant::now();
    dc.lan().cut(u8::try_from(cut).unwrap()).unwrap();
    if victim == Victim::Leader {
        let new = dc
            .wait_until(
                "another updater leads",
                Duration::from_secs(30),
                |dc| match dc.updater_leader() {
                    Ok(Some(lrn)) if lrn != cut => Ok(lrn),
                    other => Err(format!("{other:?}")),
                },
            )
            .unwrap();
        eprintln!("dctest: partition: boot server {new} leads now");
    }
    let status = wait_stopped(&dc, observer, &version, Duration::from_secs(60));
    let stopped_after = cut_at.elapsed();
    assert!(
        stopped_after <= DEAD_WORKER_STOPPED_WITHIN,
        "stopped {:.1}s after the cut",
        stopped_after.as_secs_f64()
    );
    let alive: Vec<u32> = (0..3).filter(|lrn| *lrn != cut).collect();
    assert_eq!(status["alive"], serde_json::json!(alive), "{status:#}");
    let reason = wait_for_failure(&dc, &version);
    assert!(reason.contains(&format!("boot server {cut}")), "{reason}");
    for other in alive.iter() {
        assert!(
            !reason.contains(&format!("boot server {other}")),
            "{reason}"
        );
    }
    // From the cut-off side, etcd has no quorum: its CLI cannot even read the status.
    let read = dc.neco(cut, &["status", "--json"]);
    assert!(
        !read.as_ref().is_ok_and(|o| o.status.success()),
        "boot server {cut} still reaches a quorum while cut off: {read:?}"
    );

    // Healed, the registry answering again: neco recover runs the update to completion.
    dc.lan().heal(u8::try_from(cut).unwrap()).unwrap();
    drop(frozen);
    dc.wait_until(
        &format!("boot server {cut} is alive again"),
        Duration::from_secs(60),
        |dc| {
            let status = dc.status_json(0).map_err(|e| e.to_string())?;
            (status["alive"] == serde_json::json!([0, 1, 2]))
                .then_some(())
                .ok_or_else(|| status["alive"].to_string())
        },
    )
    .unwrap();
    // The workers that kept running finish step 1 and find the update stopped; only then does
    // the operator recover (a status a worker writes for the stopped request after the new
    // request exists would abort the new one: status writes guarded by their request are not
    // built yet).
    dc.wait_until(
        "the workers that kept running end the stopped update",
        Duration::from_secs(60),
        |dc| {
            let pending: Vec<u32> = alive
                .iter()
                .copied()
                .filter(|&lrn| {
                    // Its step ends and finds the request stopped, or a restarted worker finds
                    // it so at start: either way it waits for the next request.
                    let log = dc.server(lrn).unwrap().worker().journal();
                    !log.contains("the request was stopped")
                        && !log.contains("the update is stopped; waiting for the next request")
                })
                .collect();
            pending
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not yet: {pending:?}"))
        },
    )
    .unwrap();
    dc.neco_ok(0, &["recover"]).unwrap();
    let status = common::wait_completed(&dc, 0, &version);
    common::assert_all_completed(&status, &version, &[0, 1, 2]);
    // One failure, then the recovery begins and succeeds.
    wait_for_success(&dc, &version, &[FAILED, BEGINS, SUCCEEDED]);

    eprintln!(
        "dctest: partition/{victim:?} cut off: stopped {:.1}s after the cut ({reason}), total {:.1}s",
        stopped_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
