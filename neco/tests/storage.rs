//! The storage layer against a real etcd (Debian etcd-server, started by the test).

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used)]

use dctest::EtcdCluster;
use etcd_client::Client;
use neco::config::EtcdConfig;
use neco::lease::{KeptLease, Leadership};
use neco::storage::{ConfigKey, Env, Storage, StorageError, DEFAULT_WORKER_TIMEOUT};
use neco::types::{ContentsStatus, UpdateCondition, UpdateRequest, UpdateStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A storage on its own prefix, so the tests of this file can share one etcd.
async fn storage(etcd: &EtcdCluster) -> Storage {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    Storage::connect(&EtcdConfig::plain(
        etcd.endpoints(),
        format!("/t{n}/neco/"),
        Duration::from_secs(3),
    ))
    .await
    .unwrap()
}

fn request(version: &str, servers: &[u32], stop: bool) -> UpdateRequest {
    UpdateRequest {
        version: version.into(),
        servers: servers.to_vec(),
        stop,
        started_at: time::OffsetDateTime::now_utc(),
    }
}

fn status(version: &str, step: u32, cond: UpdateCondition) -> UpdateStatus {
    UpdateStatus {
        version: version.into(),
        step,
        cond,
        message: String::new(),
    }
}

/// Writes a worker status for the current request (revision 0 when there is none).
async fn put_status(s: &Storage, lrn: u32, status: &UpdateStatus) {
    let revision = s.request().await.unwrap().map_or(0, |(_, rev)| rev);
    s.put_status(lrn, status, revision).await.unwrap();
}

async fn raw(etcd: &EtcdCluster) -> Client {
    Client::connect(etcd.endpoints(), None).await.unwrap()
}

#[tokio::test]
async fn config_defaults_and_values() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    assert_eq!(s.env().await.unwrap(), Env::None);
    s.put_config(ConfigKey::Env, "staging").await.unwrap();
    assert_eq!(s.env().await.unwrap(), Env::Staging);
    assert_eq!(s.config(ConfigKey::Slack).await.unwrap(), None);
    s.put_config(ConfigKey::Slack, "http://127.0.0.1:1/hook")
        .await
        .unwrap();
    assert_eq!(
        s.config(ConfigKey::Slack).await.unwrap().as_deref(),
        Some("http://127.0.0.1:1/hook")
    );
    assert_eq!(
        s.duration_config(ConfigKey::WorkerTimeout, DEFAULT_WORKER_TIMEOUT)
            .await
            .unwrap(),
        Duration::from_secs(3600)
    );
    // Stored as nanoseconds, as neco does.
    s.put_config(ConfigKey::WorkerTimeout, "600000000000")
        .await
        .unwrap();
    assert_eq!(
        s.duration_config(ConfigKey::WorkerTimeout, DEFAULT_WORKER_TIMEOUT)
            .await
            .unwrap(),
        Duration::from_secs(600)
    );
    s.put_config(ConfigKey::Env, "qa").await.unwrap();
    let err = s.env().await.unwrap_err().to_string();
    assert!(
        err.contains("config/env") && err.contains("\"qa\""),
        "{err}"
    );
}

#[tokio::test]
async fn request_needs_the_leader_key() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    assert!(s.request().await.unwrap().is_none());
    let leader = Leadership::campaign(&s, "leader/updater/", "host", Duration::from_secs(5))
        .await
        .unwrap();
    // The Go election layout: <prefix>leader/updater//<lease hex>.
    assert!(
        leader.key().starts_with(&s.key("leader/updater//")),
        "{}",
        leader.key()
    );
    let req = request("2026.11.26-1", &[0, 1, 2], false);
    s.put_request(&req, leader.key()).await.unwrap();
    let (got, rev) = s.request().await.unwrap().unwrap();
    assert_eq!(got.version, req.version);
    assert_eq!(got.servers, req.servers);
    assert!(rev > 0);
    let key = leader.key().to_owned();
    leader.resign().await.unwrap();
    let err = s.put_request(&req, &key).await.unwrap_err();
    assert!(matches!(err, StorageError::NoLeader { .. }), "{err}");
}

#[tokio::test]
async fn contents_need_the_worker_leader_key() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    assert!(s.contents_status("sabakan").await.unwrap().is_none());
    let leader = Leadership::campaign(&s, "leader/worker/", "0", Duration::from_secs(5))
        .await
        .unwrap();
    let st = ContentsStatus {
        version: "2026.11.26-1".into(),
        success: true,
    };
    s.put_contents_status("sabakan", &st, leader.key())
        .await
        .unwrap();
    assert_eq!(
        s.contents_status("sabakan").await.unwrap(),
        Some(st.clone())
    );
    let key = leader.key().to_owned();
    leader.resign().await.unwrap();
    assert!(matches!(
        s.put_contents_status("sabakan", &st, &key).await,
        Err(StorageError::NoLeader { .. })
    ));
}

#[tokio::test]
async fn snapshot_is_consistent_and_numeric() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let empty = s.snapshot().await.unwrap();
    assert!(empty.revision > 0);
    assert!(empty.request.is_none() && empty.statuses.is_empty());
    assert_eq!(empty.latest, "");
    assert!(empty.servers.is_empty());

    let mut raw = raw(&etcd).await;
    let guard = s.key("test/leader");
    raw.put(guard.as_bytes(), "x", None).await.unwrap();
    s.put_request(&request("1.1.0", &[0, 1, 2], false), &guard)
        .await
        .unwrap();
    put_status(&s, 0, &status("1.1.0", 1, UpdateCondition::Running)).await;
    put_status(&s, 1, &status("1.0.0", 3, UpdateCondition::Completed)).await;
    for lrn in [10, 2, 0, 1] {
        s.register_bootserver(lrn).await.unwrap();
    }
    s.put_neco_release("1.1.1", &guard).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert!(snap.revision > empty.revision);
    assert_eq!(snap.request.as_ref().unwrap().version, "1.1.0");
    assert_eq!(snap.statuses.len(), 2);
    assert_eq!(snap.latest, "1.1.1");
    // Numeric order, not etcd's lexical key order (which puts 10 before 2).
    assert_eq!(snap.servers, vec![0, 1, 2, 10]);
    assert!(snap.malformed.is_empty());
    assert_eq!(s.bootservers().await.unwrap(), vec![0, 1, 2, 10]);

    // A later write does not leak into a snapshot's revision reads: take one, write, compare.
    let before = s.snapshot().await.unwrap();
    s.register_bootserver(3).await.unwrap();
    assert_eq!(before.servers, vec![0, 1, 2, 10]);
}

#[tokio::test]
async fn malformed_status_is_reported_with_its_key() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let mut raw = raw(&etcd).await;
    raw.put(s.key("status/bootservers/1"), "{not json", None)
        .await
        .unwrap();
    put_status(&s, 0, &status("1", 1, UpdateCondition::Running)).await;
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.statuses.len(), 1);
    assert_eq!(snap.malformed.len(), 1);
    assert_eq!(snap.malformed[0].0, s.key("status/bootservers/1"));
    let err = s.status(1).await.unwrap_err().to_string();
    assert!(err.contains("status/bootservers/1"), "{err}");
}

#[tokio::test]
async fn values_written_as_neco_writes_them() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let mut raw = raw(&etcd).await;
    raw.put(
        s.key("status/current"),
        r#"{"version":"2019.01.30-1","servers":[0,1,2],"stop":false,"started_at":"2019-01-30T10:00:00.123456789+09:00"}"#,
        None,
    )
    .await
    .unwrap();
    raw.put(
        s.key("status/bootservers/2"),
        r#"{"version":"2019.01.30-1","step":13,"cond":3,"message":""}"#,
        None,
    )
    .await
    .unwrap();
    raw.put(s.key("info/bootservers/2"), "", None)
        .await
        .unwrap();
    raw.put(s.key("config/check-update-interval"), "600000000000", None)
        .await
        .unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.request.unwrap().servers, vec![0, 1, 2]);
    assert_eq!(snap.statuses[&2].cond, UpdateCondition::Completed);
    assert_eq!(snap.servers, vec![2]);
    assert_eq!(
        s.duration_config(ConfigKey::CheckUpdateInterval, Duration::ZERO)
            .await
            .unwrap(),
        Duration::from_secs(600)
    );
}

#[tokio::test]
async fn install_records_and_leave_touch_only_their_server() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    assert_eq!(s.container_tag(1, "etcd").await.unwrap(), None);
    for lrn in [1, 10] {
        s.register_bootserver(lrn).await.unwrap();
        s.record_container(lrn, "etcd", "3.5.15.1").await.unwrap();
        s.record_deb(lrn, "etcdpasswd", "v1.4.9").await.unwrap();
    }
    assert_eq!(
        s.container_tag(1, "etcd").await.unwrap().as_deref(),
        Some("3.5.15.1")
    );
    s.delete_bootserver(1).await.unwrap();
    assert_eq!(s.container_tag(1, "etcd").await.unwrap(), None);
    assert_eq!(s.deb_release(1, "etcdpasswd").await.unwrap(), None);
    // neco's bug: the prefix install/1 also matched install/10.
    assert_eq!(
        s.container_tag(10, "etcd").await.unwrap().as_deref(),
        Some("3.5.15.1")
    );
    assert_eq!(
        s.deb_release(10, "etcdpasswd").await.unwrap().as_deref(),
        Some("v1.4.9")
    );
    assert_eq!(s.bootservers().await.unwrap(), vec![10]);
    assert!(matches!(
        s.delete_bootserver(1).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn recover_only_clears_a_stopped_request() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    assert!(matches!(
        s.clear_status_and_contents().await,
        Err(StorageError::NotFound { .. })
    ));
    let mut raw = raw(&etcd).await;
    let guard = s.key("test/leader");
    raw.put(guard.as_bytes(), "x", None).await.unwrap();
    s.put_request(&request("1", &[0], false), &guard)
        .await
        .unwrap();
    put_status(&s, 0, &status("1", 2, UpdateCondition::Aborted)).await;
    raw.put(
        s.key("contents/sabakan"),
        r#"{"version":"1","success":true}"#,
        None,
    )
    .await
    .unwrap();
    let err = s.clear_status_and_contents().await.unwrap_err();
    assert!(matches!(err, StorageError::NotStopped), "{err}");
    s.put_request(&request("1", &[0], true), &guard)
        .await
        .unwrap();
    s.clear_status_and_contents().await.unwrap();
    assert!(s.request().await.unwrap().is_none());
    assert!(s.status(0).await.unwrap().is_none());
    assert!(s.contents_status("sabakan").await.unwrap().is_none());
}

#[tokio::test]
async fn watches_start_after_the_revision() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let mut raw = raw(&etcd).await;
    let guard = s.key("test/leader");
    raw.put(guard.as_bytes(), "x", None).await.unwrap();
    let rev = s.snapshot().await.unwrap().revision;

    // A request written after `rev` is seen even if the watch starts later.
    s.put_request(&request("2", &[0], false), &guard)
        .await
        .unwrap();
    let (req, req_rev) = s.wait_request(rev).await.unwrap();
    assert_eq!(req.version, "2");
    assert!(req_rev > rev);

    let info = tokio::spawn({
        let s = s.clone();
        async move { s.wait_info(req_rev).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!info.is_finished());
    s.register_bootserver(5).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), info)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let rev = s.snapshot().await.unwrap().revision;
    let seen = tokio::spawn({
        let s = s.clone();
        async move {
            s.watch_status(rev, |event| match event {
                neco::storage::StatusEvent::Status(lrn, st)
                    if st.cond == UpdateCondition::Completed =>
                {
                    Some(lrn)
                }
                _ => None,
            })
            .await
        }
    });
    put_status(&s, 3, &status("2", 1, UpdateCondition::Running)).await;
    put_status(&s, 4, &status("2", 5, UpdateCondition::Completed)).await;
    let lrn = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(lrn, 4);

    let rev = s.snapshot().await.unwrap().revision;
    s.put_request(&request("2", &[0], true), &guard)
        .await
        .unwrap();
    s.clear_status_and_contents().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.wait_request_deletion(rev))
        .await
        .unwrap()
        .unwrap();

    let change = tokio::spawn({
        let s = s.clone();
        async move { s.wait_config_change().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.put_config(ConfigKey::Env, "prod").await.unwrap();
    let key = tokio::time::timeout(Duration::from_secs(5), change)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(key, "config/env");
}

#[tokio::test]
async fn liveness_keys_follow_their_lease() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let lease0 = KeptLease::grant(&s, Duration::from_secs(1)).await.unwrap();
    let lease1 = KeptLease::grant(&s, Duration::from_secs(1)).await.unwrap();
    s.put_alive(0, lease0.id(), "1").await.unwrap();
    s.put_alive(1, lease1.id(), "1").await.unwrap();
    // Kept alive past several TTLs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.alive_servers().await.unwrap(), vec![0, 1]);
    let rev = s.snapshot().await.unwrap().revision;
    let dead = tokio::spawn({
        let s = s.clone();
        async move { s.wait_dead_server(rev, &[0, 1]).await }
    });
    // A worker that dies stops renewing: its key disappears within the TTL (plus etcd's
    // expiry granularity).
    drop(lease1);
    let lrn = tokio::time::timeout(Duration::from_secs(5), dead)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(lrn, 1);
    assert_eq!(s.alive_servers().await.unwrap(), vec![0]);
    lease0.revoke().await.unwrap();
    assert!(s.alive_servers().await.unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_etcd_fails_within_the_dial_timeout() {
    let port = dctest::free_port().unwrap();
    let start = std::time::Instant::now();
    let err = Storage::connect(&EtcdConfig::plain(
        vec![format!("http://127.0.0.1:{port}")],
        "/neco/",
        Duration::from_millis(500),
    ))
    .await
    .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("500ms"), "{text}");
}

#[tokio::test]
async fn leader_loses_its_key_when_its_lease_is_gone() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let leader = Leadership::campaign(&s, "leader/updater/", "a", Duration::from_secs(1))
        .await
        .unwrap();
    let key = leader.key().to_owned();
    // A second candidate waits while the first holds the key…
    let second = tokio::spawn({
        let s = s.clone();
        async move { Leadership::campaign(&s, "leader/updater/", "b", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished());
    // …and takes over when the first one's process dies (its lease is not renewed).
    drop(leader);
    let second = tokio::time::timeout(Duration::from_secs(6), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(second.key(), key);
    let mut raw = raw(&etcd).await;
    let old = raw.get(key.as_bytes(), None).await.unwrap();
    assert!(old.kvs().is_empty());
}

/// A standby candidate waits longer than the client's request timeout (30 s) without failing:
/// the campaign is resumed, and the standby still takes over when the leader goes. Found by
/// the dctest upgrade suite, where every standby neco-updater exited 1 after 30 s.
#[tokio::test]
async fn a_standby_outlives_the_request_timeout() {
    let etcd = EtcdCluster::single().unwrap();
    let s = storage(&etcd).await;
    let leader = Leadership::campaign(&s, "leader/updater/", "a", Duration::from_secs(5))
        .await
        .unwrap();
    let second = tokio::spawn({
        let s = s.clone();
        async move { Leadership::campaign(&s, "leader/updater/", "b", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert!(!second.is_finished(), "{:?}", second.await);
    leader.resign().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut raw = raw(&etcd).await;
    let held = raw.get(second.key().as_bytes(), None).await.unwrap();
    assert_eq!(held.kvs().len(), 1);
}

/// etcd drops a user's auth tokens when its password is set (and a simple token expires after
/// five idle minutes): the client authenticates again and the request goes through.
#[tokio::test]
async fn a_dropped_auth_token_is_renewed() {
    let etcd = EtcdCluster::secured().unwrap();
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/neco");
    std::fs::create_dir_all(&etc).unwrap();
    let endpoints = format!("{:?}", etcd.endpoints()[0]);
    std::fs::write(
        etc.join("config.toml"),
        format!("[etcd]\nendpoints = [{endpoints}]\n"),
    )
    .unwrap();
    etcd.security()
        .unwrap()
        .neco_settings()
        .write_into(root.path())
        .unwrap();
    let config = neco::config::Config::load(root.path()).unwrap();
    let storage = Storage::connect(&config.etcd).await.unwrap();
    storage.put_config(ConfigKey::Env, "staging").await.unwrap();
    etcd.renew_user_password().unwrap();
    assert_eq!(
        storage.config(ConfigKey::Env).await.unwrap().as_deref(),
        Some("staging")
    );
    storage.put_config(ConfigKey::Env, "prod").await.unwrap();
    assert_eq!(
        etcd.get("/neco/config/env").unwrap().map(|kv| kv.value),
        Some("prod".to_owned())
    );
}
