//! neco-updater end to end: the real binary against a real etcd, the GitHub stand-in and a
//! webhook sink; workers are simulated through the neco library.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, secs, stays, Dc, Updater, REPO, V1, V2};
use dctest::ReleaseSpec;
use neco::storage::{keys, ConfigKey};
use neco::types::UpdateCondition::{Aborted, Completed, Running};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const BEGIN: &str = "Update begins";
const SUCCESS: &str = "Update completed successfully";
const FAILURE: &str = "Update failed";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn nanos(d: Duration) -> String {
    d.as_nanos().to_string()
}

/// How many release checks the GitHub stand-in has answered.
fn checks(dc: &Dc) -> usize {
    dc.github
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(&format!("/repos/{REPO}/releases")))
        .count()
}

/// Waits until the updater has asked GitHub at least `n` more times than `before`.
async fn more_checks(dc: &Dc, before: usize, n: usize) {
    eventually("more release checks", secs(15), || async {
        (checks(dc) >= before + n).then_some(())
    })
    .await;
}

async fn neco_release(dc: &Dc) -> String {
    dc.storage.neco_release().await.unwrap()
}

async fn wait_release(dc: &Dc, version: &str) {
    eventually(
        &format!("info/neco-release = {version}"),
        secs(15),
        || async { (neco_release(dc).await == version).then_some(()) },
    )
    .await;
}

/// Waits until the process exits and returns its code and how long that took.
async fn wait_exit(updater: &mut Updater, timeout: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    let status = eventually("the updater to exit", timeout, || {
        let status = updater.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    (status.code(), start.elapsed())
}

// --- the update cycle --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_update_completes_and_notifies_once() {
    let dc = Dc::start().await;
    let requested = dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let up = dc.updater(0);
    up.wait_log("became the leader", secs(10)).await;
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    // What `neco status` shows as the update moves through its states.
    let report = neco::status::Report::read(&dc.storage).await.unwrap();
    let req = report.request.as_ref().unwrap();
    assert_eq!((req.state, req.stopped), ("running", false));
    assert!(
        req.statuses.iter().all(|s| s.condition == "not started"),
        "{}",
        report.text()
    );

    // Two of three workers done: not yet a success.
    for step in 1..=3 {
        for lrn in 0..3 {
            dc.status(lrn, V1, step, Running).await;
        }
    }
    let text = neco::status::Report::read(&dc.storage)
        .await
        .unwrap()
        .text();
    assert!(text.contains("    status: running\n"), "{text}");
    assert!(
        text.contains("Boot server 2 (not alive)\n    step: 3\n    condition: running\n"),
        "{text}"
    );
    dc.status(0, V1, 3, Completed).await;
    dc.status(1, V1, 3, Completed).await;
    // A completion of another version does not count either.
    dc.status(2, "2026.11.25-7", 3, Completed).await;
    tokio::time::sleep(secs(1)).await;
    assert!(dc.titled(SUCCESS).is_empty(), "{:?}", dc.notifications());

    dc.status(2, V1, 3, Completed).await;
    let note = dc.wait_note(SUCCESS, secs(10)).await;
    assert_eq!(note.color, "good");
    assert_eq!(note.field("Version"), V1);
    assert_eq!(note.field("Servers"), "[0 1 2]");
    assert_eq!(
        note.field("Started at"),
        requested
            .started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );

    let text = neco::status::Report::read(&dc.storage)
        .await
        .unwrap()
        .text();
    assert!(text.contains("    status: completed\n"), "{text}");

    // Completed, same servers, same version: the updater waits for info/ (§14 `completed`).
    up.wait_action("wait-for-info", 1, secs(10)).await;
    stays("the completed request", secs(2), || async {
        dc.request().await == requested && dc.notifications().len() == 1
    })
    .await;
    assert!(dc.titled(FAILURE).is_empty() && dc.titled(BEGIN).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_follows_release_prereleases_and_never_moves_back() {
    let dc = Dc::start().await;
    dc.github
        .add_release(REPO, ReleaseSpec::new("release-2026.11.25-1"));
    dc.github.add_release(
        REPO,
        ReleaseSpec::new(&format!("release-{V2}")).prerelease(true),
    );
    // Ignored: a draft, a tag without the release- prefix, a tag that is no version.
    dc.github
        .add_release(REPO, ReleaseSpec::new("release-2026.11.28-3").draft(true));
    dc.github
        .add_release(REPO, ReleaseSpec::new("test-2026.11.29-4").prerelease(true));
    dc.github
        .add_release(REPO, ReleaseSpec::new("release-latest"));
    for lrn in [0, 1, 2] {
        dc.storage.register_bootserver(lrn).await.unwrap();
    }
    dc.storage
        .put_config(ConfigKey::Env, "staging")
        .await
        .unwrap();
    let mut up = dc.updater(0);

    wait_release(&dc, V2).await;
    let req = dc
        .wait_request("a request for the pre-release", secs(10), |r| {
            r.version == V2
        })
        .await;
    assert_eq!(req.servers, vec![0, 1, 2]);
    assert!(!req.stop);
    let note = dc.wait_note(BEGIN, secs(10)).await;
    assert_eq!(note.field("Version"), V2);
    assert_eq!(note.field("Servers"), "[0 1 2]");
    assert_eq!(note.color, "#439FE0");

    // An older release published later changes nothing.
    dc.github
        .add_release(REPO, ReleaseSpec::new("release-2026.11.26-9"));
    let before = checks(&dc);
    more_checks(&dc, before, 2).await;
    assert_eq!(neco_release(&dc).await, V2);
    assert_eq!(dc.request().await, req);
    assert_eq!(dc.titled(BEGIN).len(), 1);
    assert!(up.child.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_ignores_a_prerelease_until_its_flag_is_cleared() {
    let dc = Dc::start().await;
    dc.github
        .add_release(REPO, ReleaseSpec::new(&format!("release-{V1}")));
    let candidate = dc.github.add_release(
        REPO,
        ReleaseSpec::new(&format!("release-{V2}")).prerelease(true),
    );
    for lrn in [0, 1, 2] {
        dc.storage.register_bootserver(lrn).await.unwrap();
    }
    dc.storage.put_config(ConfigKey::Env, "prod").await.unwrap();
    let up = dc.updater(0);

    wait_release(&dc, V1).await;
    dc.wait_request("a request for the full release", secs(10), |r| {
        r.version == V1
    })
    .await;
    dc.run_workers(V1, &[0, 1, 2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;

    // The pre-release stays ignored over several checks.
    let before = checks(&dc);
    more_checks(&dc, before, 3).await;
    assert_eq!(neco_release(&dc).await, V1);
    assert_eq!(dc.request().await.version, V1);

    // An operator promotes it.
    dc.github.set_prerelease(REPO, candidate, false).unwrap();
    wait_release(&dc, V2).await;
    let req = dc
        .wait_request("a request for the promoted release", secs(10), |r| {
            r.version == V2
        })
        .await;
    assert_eq!(req.servers, vec![0, 1, 2]);
    eventually("a begin notification for V2", secs(10), || async {
        dc.titled(BEGIN)
            .iter()
            .any(|n| n.field("Version") == V2)
            .then_some(())
    })
    .await;

    // GitHub's "latest" now names an older full release: never move back.
    dc.github
        .add_release(REPO, ReleaseSpec::new("release-2026.11.26-9"));
    up.wait_log("ignoring an older neco release", secs(10))
        .await;
    assert_eq!(neco_release(&dc).await, V2);
    assert_eq!(dc.request().await, req);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_update_waits_for_neco_recover() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    // Stopped as neco (Go) writes it: local offset, all fields.
    let mut raw = dc.raw().await;
    let stopped = format!(
        r#"{{"version":"{V1}","servers":[0,1,2],"stop":true,"started_at":"2026-11-26T10:00:00.123456789+09:00"}}"#
    );
    raw.put("/neco/status/current", stopped.as_str(), None)
        .await
        .unwrap();
    let before = dc.request().await;
    let up = dc.updater(0);
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
    stays("the stopped request", secs(2), || async {
        dc.request().await == before && dc.notifications().is_empty()
    })
    .await;
    assert_eq!(up.actions("wait-for-user-recovery"), 1);

    dc.storage.clear_status_and_contents().await.unwrap();
    let req = dc
        .wait_request("a new request", secs(10), |r| !r.stop)
        .await;
    assert_eq!(
        (req.version.as_str(), req.servers.as_slice()),
        (V1, &[0, 1, 2][..])
    );
    assert!(req.started_at > before.started_at);
    dc.wait_note(BEGIN, secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_release_recorded_means_wait_then_a_newer_test_version_is_requested() {
    let dc = Dc::start().await;
    for lrn in [0, 1, 2] {
        dc.storage.register_bootserver(lrn).await.unwrap();
    }
    // A request (as neco writes it) with an abort, but no info/neco-release yet: wait-for-info
    // comes first (§14 `wait-latest`).
    let mut raw = dc.raw().await;
    raw.put(
        "/neco/status/current",
        format!(
            r#"{{"version":"{V1}","servers":[0,1,2],"stop":false,"started_at":"{}"}}"#,
            now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ),
        None,
    )
    .await
    .unwrap();
    let before = dc.request().await;
    let up = dc.updater(0);
    up.wait_action("wait-for-info", 1, secs(10)).await;
    stays("the request without a release", secs(1), || async {
        dc.request().await == before
    })
    .await;

    // env test follows config/test-version.
    dc.storage.put_config(ConfigKey::Env, "test").await.unwrap();
    dc.storage
        .put_config(ConfigKey::TestVersion, V1)
        .await
        .unwrap();
    wait_release(&dc, V1).await;
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    dc.run_workers(V1, &[0, 1, 2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;

    // §14 `update`: completed, and a newer latest ⇒ a new request.
    dc.storage
        .put_config(ConfigKey::TestVersion, V2)
        .await
        .unwrap();
    let req = dc
        .wait_request("a request for V2", secs(10), |r| r.version == V2)
        .await;
    assert_eq!(req.servers, vec![0, 1, 2]);
    let begin = dc.wait_note(BEGIN, secs(10)).await;
    assert_eq!(begin.field("Version"), V2);

    // Back to an older test version: info/neco-release does not move back.
    dc.storage
        .put_config(ConfigKey::TestVersion, V1)
        .await
        .unwrap();
    up.wait_log("ignoring an older neco release", secs(10))
        .await;
    assert_eq!(neco_release(&dc).await, V2);
    assert_eq!(dc.request().await, req);
}

// --- leadership ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_updater_takes_over_when_the_leader_dies() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let a = dc.updater(0);
    let b = dc.updater(1);
    let election = dc.storage.key(keys::LEADER_UPDATER);
    let mut raw = dc.raw().await;
    // Both campaign (two keys under the election), exactly one leads.
    eventually("two candidates and one leader", secs(10), || {
        let mut raw = raw.clone();
        let election = election.clone();
        let leaders = usize::from(a.is_leader()) + usize::from(b.is_leader());
        async move {
            let keys = raw
                .get(election, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .kvs()
                .len();
            (keys == 2 && leaders == 1).then_some(())
        }
    })
    .await;
    let (mut leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    leader.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }

    let killed = Instant::now();
    leader.child.kill().unwrap();
    follower.wait_log("became the leader", secs(10)).await;
    let took = killed.elapsed();
    assert!(
        took < secs(6),
        "the follower took over after {took:?} (session TTL 2s)"
    );
    let keys = raw
        .get(
            election.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 1, "the dead leader's key expired");

    follower.wait_action("wait-for-workers", 1, secs(10)).await;
    dc.run_workers(V1, &[0, 1, 2]).await;
    let note = dc.wait_note(SUCCESS, secs(10)).await;
    assert_eq!(note.field("Servers"), "[0 1 2]");
    assert!(!dc.request().await.stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_without_its_notice_is_notified_by_the_next_leader_once() {
    let dc = Dc::start().await;
    let requested = dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    // Every worker completed while no leader could send the notice (the leader that saw the
    // completion died before it).
    for lrn in 0..3 {
        dc.status(lrn, V1, 5, Completed).await;
    }
    let mut first = dc.updater(0);
    let note = dc.wait_note(SUCCESS, secs(10)).await;
    assert_eq!(note.field("Version"), V1);
    first.wait_action("wait-for-info", 1, secs(10)).await;
    let snapshot = dc.storage.snapshot().await.unwrap();
    assert_eq!(snapshot.notified.as_ref(), Some(&requested));

    // The next leader finds the notice recorded: no second one.
    first.child.kill().unwrap();
    let second = dc.updater(1);
    second.wait_log("became the leader", secs(10)).await;
    second.wait_action("wait-for-info", 1, secs(10)).await;
    stays("one success notice", secs(2), || async {
        dc.titled(SUCCESS).len() == 1
    })
    .await;
    assert_eq!(second.actions("notify-succeeded"), 0);
}

// --- failures ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_stops_the_update_within_seconds() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let _l0 = dc.alive(0, secs(1)).await;
    let l1 = dc.alive(1, secs(1)).await;
    let l2 = dc.alive(2, secs(1)).await;
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }
    // Living workers keep it going (leases are renewed past their TTL).
    stays("a running update", secs(3), || async {
        !dc.request().await.stop
    })
    .await;

    // Worker 1 dies: its lease is no longer renewed.
    let died = Instant::now();
    drop(l1);
    let req = dc
        .wait_request("the update to stop", secs(15), |r| r.stop)
        .await;
    let took = died.elapsed();
    assert!(took < secs(10), "stopped {took:?} after the worker died");
    assert_eq!(req.version, V1);
    let note = dc.wait_note(FAILURE, secs(10)).await;
    assert_eq!(note.color, "danger");
    let reason = note.field("Reason");
    assert!(reason.contains("boot server 1"), "{reason}");
    assert!(!reason.contains("boot server 2"), "{reason}");
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
    // A second death changes nothing more: one failure notification.
    l2.revoke().await.unwrap();
    tokio::time::sleep(secs(1)).await;
    assert_eq!(dc.titled(FAILURE).len(), 1, "{:?}", dc.notifications());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_worker_stops_the_update_and_recover_restarts_it() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }
    dc.status(0, V1, 2, Running).await;
    dc.status_msg(1, V1, 2, Aborted, "pull ghcr.io/cybozu/etcd: 404")
        .await;

    let stopped = dc
        .wait_request("the update to stop", secs(10), |r| r.stop)
        .await;
    let note = dc.wait_note(FAILURE, secs(10)).await;
    let reason = note.field("Reason");
    assert!(
        reason.contains("pull ghcr.io/cybozu/etcd: 404") && reason.contains("boot server 1"),
        "{reason}"
    );
    assert_eq!(note.field("Version"), V1);
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dc.titled(FAILURE).len(), 1, "{:?}", dc.notifications());
    let text = neco::status::Report::read(&dc.storage)
        .await
        .unwrap()
        .text();
    assert!(
        text.contains("    status: aborted (stopped: run `neco recover` after fixing the cause)\n"),
        "{text}"
    );
    assert!(
        text.contains("    message: pull ghcr.io/cybozu/etcd: 404\n"),
        "{text}"
    );

    // neco recover: the updater requests the latest version again, from scratch.
    dc.storage.clear_status_and_contents().await.unwrap();
    let req = dc
        .wait_request("a new request", secs(10), |r| !r.stop)
        .await;
    assert_eq!(req.version, V1);
    assert_eq!(req.servers, vec![0, 1, 2]);
    assert!(req.started_at > stopped.started_at);
    assert!(dc.storage.snapshot().await.unwrap().statuses.is_empty());
    dc.wait_note(BEGIN, secs(10)).await;
    up.wait_action("wait-for-workers", 2, secs(10)).await;
    dc.run_workers(V1, &[0, 1, 2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_worker_timeout_applies_to_the_running_update() {
    let dc = Dc::start().await;
    let requested = dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }
    // The default timeout (1h) is running; the operator shortens it.
    tokio::time::sleep(secs(1)).await;
    dc.storage
        .put_config(ConfigKey::WorkerTimeout, &nanos(secs(3)))
        .await
        .unwrap();
    let req = dc
        .wait_request("the update to stop", secs(10), |r| r.stop)
        .await;
    assert_eq!(req.started_at, requested.started_at);
    let note = dc.wait_note(FAILURE, secs(10)).await;
    assert!(note.field("Reason").contains("3s"), "{note:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_take_too_long_are_stopped() {
    let dc = Dc::start().await;
    dc.storage
        .put_config(ConfigKey::WorkerTimeout, &nanos(secs(2)))
        .await
        .unwrap();
    let requested = dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }
    let req = dc
        .wait_request("the update to stop", secs(10), |r| r.stop)
        .await;
    assert!(now() - requested.started_at >= time::Duration::seconds(2));
    assert_eq!(req.started_at, requested.started_at);
    let note = dc.wait_note(FAILURE, secs(10)).await;
    let reason = note.field("Reason");
    assert!(
        reason.contains("too long") && reason.contains("2s"),
        "{reason}"
    );
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
    assert_eq!(dc.titled(FAILURE).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_stops_and_reports_an_update_aborted_before_it_started() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    dc.status(1, V1, 1, Running).await;
    dc.status_msg(0, V1, 1, Aborted, "disk full").await;
    let up = dc.updater(0);
    dc.wait_request("the update to stop", secs(10), |r| r.stop)
        .await;
    let note = dc.wait_note(FAILURE, secs(10)).await;
    let reason = note.field("Reason");
    assert!(
        reason.contains("disk full") && reason.contains("boot server 0"),
        "{reason}"
    );
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_stops_and_reports_an_update_that_timed_out_before_it_started() {
    let dc = Dc::start().await;
    let started = now() - time::Duration::hours(2);
    dc.storage.setup(&[0, 1, 2], V1, started).await.unwrap();
    let up = dc.updater(0);
    let req = dc
        .wait_request("the update to stop", secs(10), |r| r.stop)
        .await;
    assert_eq!(req.started_at, started);
    let note = dc.wait_note(FAILURE, secs(10)).await;
    let reason = note.field("Reason");
    assert!(reason.contains("1h0m0s"), "{reason}");
    up.wait_action("wait-for-user-recovery", 1, secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_statuses_are_logged_and_ignored() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1], V1, now()).await.unwrap();
    let mut raw = dc.raw().await;
    // A status of a server outside the request, before the updater starts.
    raw.put("/neco/status/bootservers/2", "{not json", None)
        .await
        .unwrap();
    let mut up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    // A listed server's status turns to garbage during the update.
    dc.status(1, V1, 1, Running).await;
    raw.put("/neco/status/bootservers/1", r#"{"version": 12"#, None)
        .await
        .unwrap();
    eventually("the malformed keys in the log", secs(10), || async {
        let log = up.log_text();
        (log.contains("/neco/status/bootservers/1") && log.contains("/neco/status/bootservers/2"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = up.child.pid();
    assert!(
        up.child.is_running(),
        "the updater exited on a malformed value"
    );

    // Later valid statuses still count.
    dc.run_workers(V1, &[0, 1]).await;
    let note = dc.wait_note(SUCCESS, secs(10)).await;
    assert_eq!(note.field("Servers"), "[0 1]");
    assert!(up.child.is_running());
    assert_eq!(up.child.pid(), pid);
    assert!(!dc.request().await.stop);
}

// --- configuration and membership -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_without_restart_and_keep_the_update() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let mut up = dc.updater(0);
    let pid = up.child.pid();
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    for lrn in 0..3 {
        dc.status(lrn, V1, 1, Running).await;
    }

    // env staging (no newer release published): the checker asks GitHub every second.
    dc.storage
        .put_config(ConfigKey::Env, "staging")
        .await
        .unwrap();
    let before = checks(&dc);
    more_checks(&dc, before, 2).await;
    // A long interval stops the polling at once, without a restart.
    dc.storage
        .put_config(ConfigKey::CheckUpdateInterval, &nanos(secs(3600)))
        .await
        .unwrap();
    dc.storage
        .put_config(ConfigKey::WorkerTimeout, &nanos(secs(600)))
        .await
        .unwrap();
    tokio::time::sleep(secs(1)).await;
    let settled = checks(&dc);
    tokio::time::sleep(secs(3)).await;
    assert!(
        checks(&dc) <= settled + 1,
        "still polling GitHub every second after the interval became 1h"
    );
    up.wait_log("configuration changed", secs(5)).await;

    // A new webhook URL applies to the next notification.
    let other = dctest::WebhookSink::start().unwrap();
    dc.storage
        .put_config(ConfigKey::Slack, &other.url())
        .await
        .unwrap();
    for step in 2..=3 {
        for lrn in 0..3 {
            dc.status(lrn, V1, step, Running).await;
        }
    }
    for lrn in 0..3 {
        dc.status(lrn, V1, 3, Completed).await;
    }
    eventually("the success at the new webhook", secs(10), || async {
        (!other.delivered().is_empty()).then_some(())
    })
    .await;
    assert!(dc.sink.received().is_empty(), "{:?}", dc.sink.received());
    assert!(up.child.is_running());
    assert_eq!(up.child.pid(), pid);
    assert!(!dc.request().await.stop);
    assert!(dc.titled(FAILURE).is_empty());
    assert_eq!(up.logged("became the leader").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_reconfigure_after_a_completed_update() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;

    // A server joining during an update waits for it to complete.
    dc.run_workers(V1, &[0, 1]).await;
    dc.storage.register_bootserver(3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dc.request().await.servers, vec![0, 1, 2]);
    dc.run_workers(V1, &[2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;

    let req = dc
        .wait_request("a reconfiguration with 3", secs(10), |r| {
            r.servers == [0, 1, 2, 3]
        })
        .await;
    assert_eq!(req.version, V1);
    assert!(!req.stop);
    assert!(
        dc.storage.snapshot().await.unwrap().statuses.is_empty(),
        "the reconfiguration wipes the statuses"
    );
    let begin = dc.wait_note(BEGIN, secs(10)).await;
    assert_eq!(begin.field("Servers"), "[0 1 2 3]");
    assert_eq!(begin.field("Detail"), "start boot servers reconfiguration.");

    up.wait_action("wait-for-workers", 2, secs(10)).await;
    dc.run_workers(V1, &[0, 1, 2, 3]).await;
    eventually("a second success", secs(10), || async {
        (dc.titled(SUCCESS).len() == 2).then_some(())
    })
    .await;

    dc.storage.delete_bootserver(3).await.unwrap();
    let req = dc
        .wait_request("a reconfiguration without 3", secs(10), |r| {
            r.servers == [0, 1, 2]
        })
        .await;
    assert_eq!(req.version, V1);
    eventually("a second begin notification", secs(10), || async {
        dc.titled(BEGIN)
            .iter()
            .any(|n| n.field("Servers") == "[0 1 2]")
            .then_some(())
    })
    .await;
}

// --- process ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_file_exits_2_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let mut up = Updater::start("updater-noconfig", root.path());
    let (code, took) = wait_exit(&mut up, secs(10)).await;
    assert_eq!(code, Some(2), "{}", up.log_text());
    assert!(took < secs(5), "{took:?}");
    let log = up.log_text();
    assert!(
        log.contains(
            &root
                .path()
                .join("etc/neco/config.toml")
                .display()
                .to_string()
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_exits_1_within_seconds() {
    let root = tempfile::tempdir().unwrap();
    let port = dctest::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    common::write_root(
        root.path(),
        std::slice::from_ref(&endpoint),
        "http://127.0.0.1:1",
        0,
    );
    let mut up = Updater::start("updater-noetcd", root.path());
    let (code, took) = wait_exit(&mut up, secs(15)).await;
    assert_eq!(code, Some(1), "{}", up.log_text());
    assert!(took < secs(8), "{took:?}");
    let log = up.log_text();
    assert!(log.contains(&endpoint), "{log}");
}

// --- more failure modes ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_finished_may_go_away() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let l0 = dc.alive(0, secs(1)).await;
    let _l1 = dc.alive(1, secs(1)).await;
    let _l2 = dc.alive(2, secs(1)).await;
    let up = dc.updater(0);
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    dc.run_workers(V1, &[0]).await;
    // Worker 0 restarts after completing (as neco's etcd step does): not a failure.
    l0.revoke().await.unwrap();
    up.wait_action("wait-for-workers", 2, secs(10)).await;
    assert!(!dc.request().await.stop);
    dc.run_workers(V1, &[1, 2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;
    assert!(dc.titled(FAILURE).is_empty(), "{:?}", dc.notifications());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failures_are_retried_and_never_change_the_state() {
    let dc = Dc::start().await;
    for lrn in [0, 1] {
        dc.storage.register_bootserver(lrn).await.unwrap();
    }
    dc.storage.put_config(ConfigKey::Env, "test").await.unwrap();
    dc.storage
        .put_config(ConfigKey::TestVersion, V1)
        .await
        .unwrap();
    // Two failures, then the begin notification gets through.
    dc.sink.fail_next(2, 500);
    let up = dc.updater(0);
    dc.wait_note(BEGIN, secs(15)).await;
    assert_eq!(dc.sink.received().len(), 3);

    // The success notification fails every attempt: the update is still complete.
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    dc.sink.fail_next(100, 503);
    dc.run_workers(V1, &[0, 1]).await;
    up.wait_log("notification failed", secs(20)).await;
    up.wait_action("wait-for-info", 1, secs(10)).await;
    assert!(!dc.request().await.stop);
    assert!(dc.titled(SUCCESS).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_campaigns_again_and_resumes() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let mut up = dc.updater(0);
    let first = up.wait_log("became the leader", secs(10)).await;
    up.wait_action("wait-for-workers", 1, secs(10)).await;
    let key = first["fields"]["leader_key"].as_str().unwrap().to_owned();
    let lease = i64::from_str_radix(key.rsplit('/').next().unwrap(), 16).unwrap();
    // Someone revokes the leader's lease (as etcd does when it expires).
    dc.raw().await.lease_revoke(lease).await.unwrap();
    eventually("a second leadership", secs(10), || async {
        (up.logged("became the leader").len() == 2).then_some(())
    })
    .await;
    assert!(up.child.is_running());
    up.wait_action("wait-for-workers", 2, secs(10)).await;
    dc.run_workers(V1, &[0, 1, 2]).await;
    dc.wait_note(SUCCESS, secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_hands_the_leadership_over_at_once() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    // A long session TTL: only a resignation lets the other instance lead soon.
    let long = ["--session-ttl", "30s"];
    let a = Updater::start_with("updater-0", &dc.root(0), &long);
    a.wait_log("became the leader", secs(10)).await;
    let b = Updater::start_with("updater-1", &dc.root(1), &long);
    let election = dc.storage.key(keys::LEADER_UPDATER);
    let mut raw = dc.raw().await;
    eventually("two candidates", secs(10), || {
        let mut raw = raw.clone();
        let election = election.clone();
        async move {
            let n = raw
                .get(election, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .kvs()
                .len();
            (n == 2).then_some(())
        }
    })
    .await;
    let mut a = a;
    let term = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &a.child.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (code, _) = wait_exit(&mut a, secs(10)).await;
    assert_eq!(code, Some(0), "{}", a.log_text());
    b.wait_log("became the leader", secs(20)).await;
    let took = term.elapsed();
    assert!(
        took < secs(5),
        "the other updater led {took:?} after SIGTERM (session TTL 30s): the leader did not resign"
    );
    let n = raw
        .get(
            election.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .len();
    assert_eq!(n, 1);
}

/// On a machine that shuts down, etcd may have no quorum any more: SIGTERM still ends the
/// leader at once (its resignation gives up after `RESIGN_TIMEOUT` and leaves the lease to
/// expire), not after the 20 s a daemon retries an unanswered request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_when_etcd_does_not_answer() {
    let dc = Dc::start().await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let mut a = Updater::start("updater-0", &dc.root(0));
    a.wait_log("became the leader", secs(10)).await;
    a.wait_action("wait-for-workers", 1, secs(10)).await;
    dc.etcd.pause_member(0).unwrap();
    let term = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &a.child.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (code, _) = wait_exit(&mut a, secs(30)).await;
    let took = term.elapsed();
    dc.etcd.resume_member(0).unwrap();
    assert_eq!(code, Some(0), "{}", a.log_text());
    assert!(
        took < neco::lease::RESIGN_TIMEOUT + secs(3),
        "the updater took {took:?} to exit after SIGTERM with etcd stalled: {}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("resigning failed"),
        "{}",
        a.log_text()
    );
}

/// The member the updater talks to dies in the middle of an update: the updater moves to
/// another member without exiting, and sees the update through to its success notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_survives_the_loss_of_one_etcd_member() {
    let etcd = dctest::EtcdCluster::start(3).unwrap();
    let mut dc = Dc::with_etcd(etcd).await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let root = dc.root(0);
    let mut updater = Updater::start("updater-0", &root);
    updater.wait_action("wait-for-workers", 1, secs(10)).await;
    let storage = neco::storage::Storage::connect(&common::etcd_config(&dc.etcd.endpoints()[1..]))
        .await
        .unwrap();
    for lrn in 0..3 {
        dc_status(&storage, lrn, 1, Running).await;
    }
    // The member the updater talks to (the first endpoint) dies; two keep the quorum.
    dc.etcd.kill_member(0).unwrap();
    for step in 2..=3 {
        for lrn in 0..3 {
            dc_status(&storage, lrn, step, Running).await;
        }
    }
    for lrn in 0..3 {
        dc_status(&storage, lrn, 3, Completed).await;
    }
    let deadline = Instant::now() + secs(40);
    while dc.titled(SUCCESS).is_empty() {
        assert!(Instant::now() < deadline, "no success notification");
        assert!(updater.child.is_running(), "{}", updater.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(updater.child.is_running(), "{}", updater.log_text());
    assert!(
        updater.log_text().contains("moved to another etcd member"),
        "{}",
        updater.log_text()
    );
    assert!(!storage.request().await.unwrap().unwrap().0.stop);
    assert!(dc.titled(FAILURE).is_empty());
}

async fn dc_status(
    storage: &neco::storage::Storage,
    lrn: u32,
    step: u32,
    cond: neco::types::UpdateCondition,
) {
    let st = neco::types::UpdateStatus {
        version: V1.into(),
        step,
        cond,
        message: String::new(),
    };
    // Right after a member died the cluster may be electing a leader: retry briefly.
    eventually("a status put", secs(10), || async {
        let revision = storage.request().await.ok()?.map_or(0, |(_, rev)| rev);
        storage.put_status(lrn, &st, revision).await.ok()
    })
    .await;
}

/// A `status/current` that cannot be read is not taken for "no request": the updater writes
/// no new request over it (the update it held may be stopped, waiting for `neco recover`),
/// names the key in its log and `neco status` names it too; once the operator deletes it, the
/// update is requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_reported_and_never_overwritten() {
    let dc = Dc::start().await;
    for lrn in [0, 1, 2] {
        dc.storage.register_bootserver(lrn).await.unwrap();
    }
    let mut raw = dc.raw().await;
    raw.put("/neco/status/current", "{not json", None)
        .await
        .unwrap();
    dc.storage.put_config(ConfigKey::Env, "test").await.unwrap();
    dc.storage
        .put_config(ConfigKey::TestVersion, V1)
        .await
        .unwrap();
    let up = dc.updater(0);
    wait_release(&dc, V1).await;
    up.wait_action("invalid", 1, secs(10)).await;
    let logged = up
        .wait_log(
            "cannot act; waiting for info/ or status/current to change",
            secs(10),
        )
        .await;
    assert!(
        logged.to_string().contains("/neco/status/current"),
        "{logged}"
    );
    // Another change under info/ makes it decide again, and again it writes nothing.
    dc.storage.register_bootserver(3).await.unwrap();
    up.wait_action("invalid", 2, secs(10)).await;
    let current = raw.get("/neco/status/current", None).await.unwrap();
    assert_eq!(current.kvs()[0].value(), b"{not json");
    let report = neco::status::Report::read(&dc.storage).await.unwrap();
    assert!(
        report
            .malformed
            .iter()
            .any(|(key, _)| key == "/neco/status/current"),
        "{:?}",
        report.malformed
    );

    // Deleted by the operator: the update is requested.
    raw.delete("/neco/status/current", None).await.unwrap();
    let request = dc
        .wait_request("a request once the key is gone", secs(10), |r| {
            r.version == V1 && !r.stop
        })
        .await;
    assert_eq!(request.servers, vec![0, 1, 2, 3]);
}

/// etcd as production runs it: mutual TLS and a user with a password. The updater leads and
/// requests the update through it; with a wrong password it exits 2 (configuration: systemd
/// does not restart it) at once, naming the user, never printing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_a_secured_etcd_and_a_wrong_password_is_a_configuration_error() {
    let dc = Dc::with_etcd(dctest::EtcdCluster::secured().unwrap()).await;
    dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
    let updater = dc.updater(0);
    updater.wait_log("became the leader", secs(10)).await;
    updater.wait_action("wait-for-workers", 1, secs(10)).await;
    let (request, _) = dc.storage.request().await.unwrap().unwrap();
    assert_eq!(request.version, V1);
    // Its leader key was written through the secured etcd (the fixture reads as root).
    let leader = dc.etcd.get_prefix("/neco/leader/").unwrap();
    assert_eq!(leader.len(), 1, "{leader:?}");
    drop(updater);

    let security = dc.etcd.security().unwrap();
    let root = dc.root(1);
    common::write_root(&root, &dc.etcd.endpoints(), &dc.github.base_url(), 1);
    dctest::NecoEtcdSettings {
        password: "not-the-password",
        ..security.neco_settings()
    }
    .write_into(&root)
    .unwrap();
    let started = Instant::now();
    let mut wrong = Updater::start("updater-1", &root);
    let (code, _) = wait_exit(&mut wrong, secs(10)).await;
    let log = wrong.log_text();
    assert_eq!(code, Some(2), "{log}");
    assert!(started.elapsed() < secs(5), "{log}");
    assert!(log.contains(r#"etcd user \"neco\""#), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
    assert!(!log.contains(security.password()), "{log}");
}

/// A leader that wrote a request or a stop and died before it sent the notice: the notice
/// stays pending in etcd (written with the request, in one transaction), and the next leader
/// sends it once and clears it before it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_left_pending_by_a_dead_leader_is_sent_once_by_the_next() {
    use neco::types::{NoticeEvent, PendingNotice, UpdateRequest};
    let cases = [
        (
            NoticeEvent::Begin,
            BEGIN,
            "start updating the new release.",
            false,
            "wait-for-workers",
        ),
        (
            NoticeEvent::Failed,
            FAILURE,
            "boot server 1 aborted at step 2: pull failed",
            true,
            "wait-for-user-recovery",
        ),
    ];
    for (event, title, text, stop, then) in cases {
        let dc = Dc::start().await;
        dc.storage.setup(&[0, 1, 2], V1, now()).await.unwrap();
        // The dead leader's writes, under a leader key that is gone since.
        let mut raw = dc.raw().await;
        let guard = dc.storage.key("leader/updater/dead");
        raw.put(guard.as_str(), "dead", None).await.unwrap();
        let (request, _) = dc.storage.request().await.unwrap().unwrap();
        let written = UpdateRequest {
            stop,
            ..request.clone()
        };
        let notice = PendingNotice {
            event,
            text: text.into(),
            request,
        };
        dc.storage
            .put_request_with_notice(&written, &notice, &guard)
            .await
            .unwrap();
        raw.delete(guard.as_str(), None).await.unwrap();
        assert!(dc.etcd.get("/neco/notice/pending").unwrap().is_some());

        let up = dc.updater(0);
        let note = dc.wait_note(title, secs(10)).await;
        if event == NoticeEvent::Failed {
            assert!(
                note.fields.iter().any(|(_, value)| value.contains(text)),
                "{note:?}"
            );
        }
        // It decides what to do next only after the notice was sent and cleared.
        up.wait_action(then, 1, secs(10)).await;
        assert_eq!(dc.etcd.get("/neco/notice/pending").unwrap(), None);
        assert_eq!(
            dc.notifications()
                .iter()
                .map(|n| n.title.as_str())
                .collect::<Vec<_>>(),
            [title],
            "{event:?}"
        );
        assert_eq!(dc.request().await, written, "{event:?}");
    }
}
