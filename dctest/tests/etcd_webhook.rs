//! The etcd and webhook fixtures, checked against real clients (`etcdctl`, ureq).

// Test code: a failed call is a failed test.
#![allow(clippy::expect_used)]

use dctest::{EtcdCluster, WebhookSink};
use std::process::Command;

fn etcdctl(endpoints: &[String], args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("run etcdctl (Debian package etcd-client)")
}

#[test]
fn single_member_serves_and_dies_with_the_fixture() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 1);
    assert!(endpoints[0].starts_with("http://127.0.0.1:"));
    let put = etcdctl(&endpoints, &["put", "/neco/test", "value"]);
    assert!(put.status.success(), "{put:?}");
    let get = etcdctl(&endpoints, &["get", "--print-value-only", "/neco/test"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "value");
    let pid = etcd.pid(0).unwrap();
    drop(etcd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd (pid {pid}) still runs after the fixture was dropped"
    );
}

#[test]
fn cluster_survives_one_member_and_restarts_it() {
    let mut etcd = EtcdCluster::start(3).unwrap();
    let endpoints = etcd.endpoints();
    let members = etcdctl(&endpoints, &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&members.stdout).lines().count(),
        3,
        "{members:?}"
    );
    etcd.kill_member(0).unwrap();
    assert!(etcd.pid(0).is_none());
    // The two others keep a quorum and accept writes once they have elected a leader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let put = loop {
        let put = etcdctl(&endpoints[1..], &["put", "k", "after-kill"]);
        if put.status.success() || std::time::Instant::now() > deadline {
            break put;
        }
    };
    assert!(put.status.success(), "{put:?}");
    etcd.restart_member(0).unwrap();
    let get = etcdctl(&endpoints[..1], &["get", "--print-value-only", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "after-kill");
}

#[test]
fn webhook_sink_records_and_fails_on_demand() {
    let sink = WebhookSink::start().unwrap();
    sink.fail_next(1, 500);
    let agent = ureq::AgentBuilder::new().build();
    let first = agent
        .post(&sink.url())
        .set("Content-Type", "application/json")
        .send_string(r#"{"text":"one"}"#);
    assert!(matches!(first, Err(ureq::Error::Status(500, _))));
    let second = agent
        .post(&sink.url())
        .set("Content-Type", "application/json")
        .send_string(r#"{"text":"two"}"#)
        .unwrap();
    assert_eq!(second.status(), 200);
    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].answered, 500);
    assert_eq!(received[1].json["text"], "two");
    assert_eq!(sink.delivered().len(), 1);
    assert_eq!(
        received[1].content_type.as_deref(),
        Some("application/json")
    );
}

#[test]
fn the_raft_leadership_moves_to_the_member_asked_for() {
    let etcd = EtcdCluster::start(3).unwrap();
    let client = etcd.client();
    let (leader, ids) = client.leader().expect("endpoint status");
    assert_eq!(ids.len(), 3, "{ids:?}");
    for target in etcd.endpoints().iter().filter(|e| **e != leader) {
        client.move_leader_to(target).expect("move-leader");
        assert_eq!(&client.leader().expect("endpoint status").0, target);
    }
    // Asked for the one that leads: nothing to do.
    let (now, _) = client.leader().expect("endpoint status");
    client.move_leader_to(&now).expect("move-leader to itself");
    assert_eq!(client.leader().expect("endpoint status").0, now);
}

#[test]
fn a_secured_member_needs_a_client_certificate_and_enforces_its_roles() {
    let etcd = EtcdCluster::secured().unwrap();
    let security = etcd.security().expect("a secured cluster has its security");
    let endpoints = etcd.endpoints();
    assert!(
        endpoints[0].starts_with("https://127.0.0.1:"),
        "{endpoints:?}"
    );
    // The fixture's own client (root, by its certificate) reads and writes anything.
    etcd.etcdctl_output(&["put", "/other/key", "v"]).unwrap();
    // The CA alone is not enough: the member wants a client certificate.
    let ca = security.ca();
    let ca = ca.to_string_lossy();
    let anonymous = etcdctl(&endpoints, &["--cacert", &ca, "get", "/neco/x"]);
    assert!(!anonymous.status.success(), "{anonymous:?}");
    // The daemons' certificate (CN=neco) is the user neco: its role reaches /neco/ only.
    let client = security.client();
    let as_neco = |args: &[&str]| {
        let cert = client.cert.to_string_lossy();
        let key = client.key.to_string_lossy();
        let mut all = vec!["--cacert", &ca, "--cert", &cert, "--key", &key];
        all.extend_from_slice(args);
        etcdctl(&endpoints, &all)
    };
    let put = as_neco(&["put", "/neco/x", "1"]);
    assert!(put.status.success(), "{put:?}");
    let denied = as_neco(&["put", "/other/key", "2"]);
    assert!(!denied.status.success(), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    assert_eq!(security.user(), "neco");
}
