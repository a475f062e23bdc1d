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
//! Whichever member is the etcd raft leader stays so: when it is the one cut off, the others
//! elect a new leader in the middle of the update, and the workers on their side ride that
//! out (requests and keep-alives retried). `neco recover` runs as soon as the cut-off server
//! is back, while the other workers may still be inside step 1 of the stopped request: what
//! they write for it afterwards is refused (status writes are guarded by their request).
//!
//! Third, the machine of an etcd member loses its power in the middle of an update of the two
//! other boot servers: the raft leader's machine, so that the survivors elect a new leader
//! during the update. The update completes without `neco recover`, no daemon of the two
//! restarts, and the one notification is the success.
//!
//! The tests run one after the other so that a loaded machine does not blur the timing.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test partition`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faults::{
    hold_every_worker_in_step_1, hold_in_step_1, prepare, wait_for_failure, wait_for_success,
    wait_stopped, DEAD_WORKER_STOPPED_WITHIN, FAILED,
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
    eprintln!(
        "dctest: partition: the etcd raft leader is on boot server {}",
        dc.etcd_leader().unwrap()
    );
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
    // The operator recovers at once: the workers that kept running may still be inside step 1
    // of the stopped request, and what they write for it from now on changes nothing.
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

#[test]
fn an_etcd_members_machine_losing_power_in_the_middle_of_an_update_does_not_stop_it() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let mut dc = common::start();
    let version = dc.version().to_owned();
    prepare(&dc);
    // The raft leader's machine is the one to lose; the other two are updated.
    let lost = dc.etcd_leader().unwrap();
    let updated: Vec<u32> = (0..3).filter(|lrn| *lrn != lost).collect();
    eprintln!(
        "dctest: partition: boot server {lost} holds the etcd raft leader; updating {updated:?}"
    );
    let starts = |dc: &DataCenter| -> Vec<(u32, u32)> {
        updated
            .iter()
            .map(|lrn| {
                let server = dc.server(*lrn).unwrap();
                (server.updater().starts(), server.worker().starts())
            })
            .collect()
    };
    let frozen = hold_in_step_1(&dc, &updated);
    let before = starts(&dc);

    dc.kill_server(lost).unwrap();
    let killed = Instant::now();
    let leader = dc
        .wait_until(
            "the survivors elect a new raft leader",
            Duration::from_secs(30),
            |dc| match dc.etcd_leader() {
                Ok(lrn) if lrn != lost => Ok(lrn),
                other => Err(format!("{other:?}")),
            },
        )
        .unwrap();
    eprintln!(
        "dctest: partition: boot server {leader} holds the raft leader {:.1}s after the power cut",
        killed.elapsed().as_secs_f64()
    );
    drop(frozen);
    let status = common::wait_completed(&dc, updated[0], &version);
    common::assert_all_completed(&status, &version, &updated);
    // `neco setup` requested the update (no begin notice): one success.
    wait_for_success(&dc, &version, &[SUCCEEDED]);
    // No daemon of the updated servers restarted (a later event than any exit: the update
    // completed after the power cut).
    assert_eq!(
        starts(&dc),
        before,
        "starts (updater, worker) of {updated:?}"
    );
    for lrn in &updated {
        let server = dc.server(*lrn).unwrap();
        for daemon in [server.updater(), server.worker()] {
            assert!(
                daemon.exits().is_empty(),
                "{}: {:?}",
                daemon.name(),
                daemon.exits()
            );
        }
    }

    eprintln!(
        "dctest: partition: etcd member {lost} lost: update of {updated:?} completed {:.1}s after the power cut, total {:.1}s",
        killed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
