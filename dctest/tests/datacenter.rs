//! The data center's fault and membership helpers against the real daemons: killing the leader
//! updater, killing a worker, adding a boot server that joins, and killing an etcd member (the
//! daemons that used it move to another member; none restarts). (The
//! checks of the functions suite proper, with failing updates and recovery, build on these.)
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test datacenter`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

#[test]
fn kills_and_membership() {
    let started = Instant::now();
    let mut dc = common::start();
    common::setup(&dc);
    let version = dc.version().to_owned();

    // The leader updater dies: another one takes over once its session TTL (3 s) expires, and
    // systemd starts the killed one again.
    let old = dc.kill_updater_leader().unwrap();
    let new = dc
        .wait_until(
            "another updater leads",
            Duration::from_secs(20),
            |dc| match dc.updater_leader() {
                Ok(Some(lrn)) if lrn != old => Ok(lrn),
                other => Err(format!("{other:?}")),
            },
        )
        .unwrap();
    assert_ne!(new, old);
    let killed = dc.server(old).unwrap().updater();
    killed.wait_for_start(2, Duration::from_secs(5)).unwrap();
    assert_eq!(killed.exits()[0].signal, Some(9), "{:?}", killed.exits());

    // A worker dies and comes back; the completed update stays completed.
    let pid = dc.kill_worker(1).unwrap().expect("worker 1 ran");
    let worker = dc.server(1).unwrap().worker();
    let again = worker.wait_for_start(2, Duration::from_secs(5)).unwrap();
    assert_ne!(pid, again);
    let status = common::wait_completed(&dc, 0, &version);
    common::assert_all_completed(&status, &version, &[0, 1, 2]);

    // A fourth boot server joins: the updater reconfigures the cluster and every server,
    // the new one included, completes the same version again.
    dc.add_server(3).unwrap();
    dc.neco_ok(3, &["join", "3"]).unwrap();
    let status = dc
        .wait_until(
            "the reconfiguration for [0 1 2 3]",
            common::UPDATE_TIMEOUT,
            |dc| {
                let status = dc.status_json(0).map_err(|e| e.to_string())?;
                let servers = &status["request"]["servers"];
                (servers == &serde_json::json!([0, 1, 2, 3])
                    && status["request"]["state"] == "completed")
                    .then_some(status.clone())
                    .ok_or_else(|| status.to_string())
            },
        )
        .unwrap();
    common::assert_all_completed(&status, &version, &[0, 1, 2, 3]);
    assert!(dc
        .root(3)
        .unwrap()
        .join("var/lib/neco/images/etcd/index.json")
        .is_file());

    // The etcd member of boot server 0 dies. The daemons that were using it (boot server 0
    // lists its own member first, boot server 3 lists member 0 first) move to a living member
    // without exiting; whichever member is the raft leader stays so (when it is member 0, the
    // others elect a new one). Then, with member 0 still dead, server 3 leaves and the
    // reconfiguration completes: no daemon restarted on the way.
    let affected = |lrn: u32| lrn == 0 || lrn == 3;
    let starts = |dc: &dctest::DataCenter, lrns: &[u32]| -> Vec<(u32, u32, u32)> {
        lrns.iter()
            .map(|lrn| {
                let s = dc.server(*lrn).unwrap();
                (*lrn, s.updater().starts(), s.worker().starts())
            })
            .collect()
    };
    let before = starts(&dc, &[0, 1, 2, 3]);
    eprintln!(
        "dctest: datacenter: the etcd raft leader is on boot server {}",
        dc.etcd_leader().unwrap()
    );
    dc.kill_etcd_member(0).unwrap();
    dc.wait_until(
        "the daemons of the killed member moved to a living one",
        Duration::from_secs(60),
        |dc| {
            let waiting: Vec<String> = dc
                .servers()
                .filter(|s| affected(s.lrn()))
                .flat_map(|s| [s.updater(), s.worker()])
                .filter(|d| !d.journal().contains("moved to another etcd member"))
                .map(|d| d.name())
                .collect();
            waiting
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not yet: {waiting:?}"))
        },
    )
    .unwrap();
    assert_eq!(
        starts(&dc, &[0, 1, 2, 3]),
        before,
        "starts after the member died"
    );
    dc.neco_ok(1, &["leave", "3"]).unwrap();
    dc.stop_server(3).unwrap();
    let status = dc
        .wait_until(
            "the reconfiguration for [0 1 2]",
            common::UPDATE_TIMEOUT,
            |dc| {
                let status = dc.status_json(1).map_err(|e| e.to_string())?;
                (status["request"]["servers"] == serde_json::json!([0, 1, 2])
                    && status["request"]["state"] == "completed")
                    .then_some(status.clone())
                    .ok_or_else(|| status.to_string())
            },
        )
        .unwrap();
    common::assert_all_completed(&status, &version, &[0, 1, 2]);
    assert!(dc.etcd.get_prefix("/neco/install/3/").unwrap().is_empty());
    let remaining: Vec<_> = before
        .iter()
        .filter(|(lrn, _, _)| *lrn != 3)
        .cloned()
        .collect();
    assert_eq!(
        starts(&dc, &[0, 1, 2]),
        remaining,
        "starts after the reconfiguration without member 0"
    );

    eprintln!(
        "dctest: datacenter helpers: total {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
