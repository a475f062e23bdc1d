//! The storage layer through a real etcd's normal life: a compacted history, a member that
//! dies, a member that stalls. Each test fails on a client that keeps one member, ends its
//! watches on a compaction, or gives a lease up on the first failed keep-alive.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used)]

use dctest::EtcdCluster;
use etcd_client::Client;
use neco::config::EtcdConfig;
use neco::lease::KeptLease;
use neco::storage::{StatusEvent, Storage};
use neco::types::{UpdateCondition, UpdateRequest, UpdateStatus};
use std::time::{Duration, Instant};

fn config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig::plain(endpoints, "/neco/", Duration::from_secs(2))
}

fn request(version: &str, servers: &[u32], stop: bool) -> UpdateRequest {
    UpdateRequest {
        version: version.into(),
        servers: servers.to_vec(),
        stop,
        started_at: time::OffsetDateTime::now_utc(),
    }
}

fn status(step: u32, cond: UpdateCondition) -> UpdateStatus {
    UpdateStatus {
        version: "1".into(),
        step,
        cond,
        message: String::new(),
    }
}

/// A leader key to guard request writes with.
async fn guard(raw: &mut Client, s: &Storage) -> String {
    let key = s.key("test/leader");
    raw.put(key.as_bytes(), "x", None).await.unwrap();
    key
}

/// The next `n` events of a status watch, each within `limit`.
async fn next_events(
    events: &mut neco::storage::StatusEvents,
    n: usize,
    limit: Duration,
) -> Vec<StatusEvent> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(
            tokio::time::timeout(limit, events.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    seen
}

/// Compacts the history up to the current revision, as etcd's periodic compaction does.
async fn compact_all(raw: &mut Client) -> i64 {
    let revision = raw
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(revision, None).await.unwrap();
    revision
}

/// Every wait of the daemons that starts from a revision etcd has compacted away reads the
/// current state instead of ending: what it waits for is found there.
#[tokio::test]
async fn waits_from_a_compacted_revision_read_the_state_instead_of_failing() {
    let etcd = EtcdCluster::single().unwrap();
    let s = Storage::connect(&config(etcd.endpoints())).await.unwrap();
    let mut raw = Client::connect(etcd.endpoints(), None).await.unwrap();
    let guard = guard(&mut raw, &s).await;
    let before = s.snapshot().await.unwrap().revision;

    s.put_request(&request("1", &[0, 1], false), &guard)
        .await
        .unwrap();
    let (_, request_revision) = s.request().await.unwrap().unwrap();
    s.put_status(1, &status(1, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    s.put_status(1, &status(2, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    s.put_status(0, &status(1, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    let lease = KeptLease::grant(&s, Duration::from_secs(10)).await.unwrap();
    s.put_alive(0, lease.id(), "1").await.unwrap();
    s.register_bootserver(0).await.unwrap();
    let compacted = compact_all(&mut raw).await;
    assert!(compacted > before);

    let limit = Duration::from_secs(5);
    // The request written after `before` is found.
    let (found, revision) = tokio::time::timeout(limit, s.wait_request(before))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.version.as_str(), revision), ("1", request_revision));
    // The statuses written since: their last values, in revision order, then the request is
    // not repeated (it was written before the first status).
    let mut events = s.status_events(request_revision);
    let seen = next_events(&mut events, 2, limit).await;
    assert_eq!(
        seen,
        vec![
            StatusEvent::Status(1, status(2, UpdateCondition::Running)),
            StatusEvent::Status(0, status(1, UpdateCondition::Running)),
        ]
    );
    // …and the watch goes on after the state it read.
    s.put_status(0, &status(2, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    assert_eq!(
        next_events(&mut events, 1, limit).await[0],
        StatusEvent::Status(0, status(2, UpdateCondition::Running))
    );
    // A listed server without its liveness key is dead.
    let dead = tokio::time::timeout(limit, s.wait_dead_server(before, &[0, 1]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead, 1);
    // `info/` may have changed: the updater reads it again.
    tokio::time::timeout(limit, s.wait_info(before))
        .await
        .unwrap()
        .unwrap();
    // The request exists: a wait for its deletion goes on, and ends when it is deleted.
    let deletion = tokio::spawn({
        let s = s.clone();
        async move { s.wait_request_deletion(before).await }
    });
    s.put_request(&request("1", &[0, 1], true), &guard)
        .await
        .unwrap();
    let (_, stopped_revision) = s.request().await.unwrap().unwrap();
    // The wait is still open after the put of the stop (a later event than its start).
    s.wait_request(request_revision).await.unwrap();
    assert!(!deletion.is_finished());
    s.clear_status_and_contents().await.unwrap();
    tokio::time::timeout(limit, deletion)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(stopped_revision > request_revision);
}

/// On a cluster of three, the member a storage talks to dies: its reads and writes, an open
/// watch and a kept-alive lease carry on through the other members, and the watch neither
/// loses nor repeats an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_watches_and_leases_move_to_another_member() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let endpoints = etcd.endpoints();
    let s = Storage::connect(&config(endpoints.clone())).await.unwrap();
    let member = s.etcd().endpoint();
    let index = endpoints.iter().position(|e| *e == member).unwrap();
    let others: Vec<String> = endpoints
        .iter()
        .filter(|e| **e != member)
        .cloned()
        .collect();
    let mut raw = Client::connect(&others, None).await.unwrap();
    let guard = guard(&mut raw, &s).await;
    s.put_request(&request("1", &[0, 1], false), &guard)
        .await
        .unwrap();
    let (_, request_revision) = s.request().await.unwrap().unwrap();
    let ttl = Duration::from_secs(3);
    let lease = KeptLease::grant(&s, ttl).await.unwrap();
    s.put_alive(0, lease.id(), "1").await.unwrap();
    let mut events = s.status_events(request_revision);
    s.put_status(0, &status(1, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    let limit = Duration::from_secs(30);
    assert_eq!(
        next_events(&mut events, 1, limit).await[0],
        StatusEvent::Status(0, status(1, UpdateCondition::Running))
    );

    etcd.kill_member(index).unwrap();
    let killed = Instant::now();
    // Written by another program while the watch's member is dead.
    let written = status(1, UpdateCondition::Running);
    // (Retried: the survivors may be electing a leader.)
    let value = serde_json::to_string(&written).unwrap();
    tokio::time::timeout(limit, async {
        while let Err(e) = raw
            .put(s.key("status/bootservers/1"), value.clone(), None)
            .await
        {
            eprintln!("put through the survivors: {e}; again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    // The storage's own write goes through another member.
    s.put_status(0, &status(2, UpdateCondition::Running), request_revision)
        .await
        .unwrap();
    assert_ne!(s.etcd().endpoint(), member);
    let seen = next_events(&mut events, 2, limit).await;
    assert_eq!(
        seen,
        vec![
            StatusEvent::Status(1, written),
            StatusEvent::Status(0, status(2, UpdateCondition::Running)),
        ]
    );
    // The lease outlives its TTL counted from the death of the member: keep-alives went to
    // another member.
    tokio::time::timeout(limit, async {
        loop {
            let left = raw
                .lease_time_to_live(lease.id(), None)
                .await
                .unwrap()
                .ttl();
            assert!(left > 0, "the lease expired after the member died");
            if killed.elapsed() > 2 * ttl {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    assert!(!lease.is_lost());
    let alive = raw.get(s.key("alive/0"), None).await.unwrap();
    assert_eq!(alive.kvs().len(), 1);
    // And the lease is still the process's to give up.
    lease.revoke().await.unwrap();
}

/// A member that stalls for a second (SIGSTOP) does not cost a lease whose TTL is longer; one
/// that stalls for good does, and the holder learns it within twice the TTL although no answer
/// ever comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shorter_than_the_ttl_keeps_the_lease_a_longer_one_loses_it() {
    let etcd = EtcdCluster::single().unwrap();
    let s = Storage::connect(&config(etcd.endpoints())).await.unwrap();
    let mut raw = Client::connect(etcd.endpoints(), None).await.unwrap();
    let ttl = Duration::from_secs(3);
    let mut lease = KeptLease::grant(&s, ttl).await.unwrap();

    etcd.pause_member(0).unwrap();
    let paused = Instant::now();
    // Wait out the stall on a clock that is not etcd's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.resume_member(0).unwrap();
    // Keep-alives are acknowledged again: the lease's time left goes back up to its TTL.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let left = raw
                .lease_time_to_live(lease.id(), None)
                .await
                .unwrap()
                .ttl();
            assert!(left > 0, "the lease expired after a stall of 1 s");
            if paused.elapsed() > ttl + Duration::from_secs(1) && left >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    assert!(!lease.is_lost(), "a stall of 1 s lost a lease of 3 s");

    etcd.pause_member(0).unwrap();
    let paused = Instant::now();
    let lost = tokio::time::timeout(3 * ttl, lease.lost()).await;
    let took = paused.elapsed();
    etcd.resume_member(0).unwrap();
    assert!(lost.is_ok(), "a stall longer than the TTL went unnoticed");
    // Given up after twice the TTL without an acknowledged keep-alive (the last one was
    // acknowledged before the stall).
    assert!(
        took <= 2 * ttl + Duration::from_secs(1),
        "the lost lease was noticed after {took:?} (TTL {ttl:?})"
    );
}
