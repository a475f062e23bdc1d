//! What the fault suites (functions, partition) share: notifications with their reasons,
//! waiting for a stopped update, a registry that stops answering, the worker statuses.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use dctest::DataCenter;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The title neco gives a notification of a failed update.
pub const FAILED: &str = "Update failed";
/// The TTL of a worker's liveness lease (neco's `LIVENESS_TTL`).
pub const LIVENESS_TTL: Duration = Duration::from_secs(5);
/// How long after a request the updater waits for the liveness key of a listed server that has
/// none (neco's `LIVENESS_GRACE`).
pub const LIVENESS_GRACE: Duration = Duration::from_secs(30);
/// How long after a worker's death the update must be stopped: the TTL, the updater's reaction
/// and a loaded machine. The worker timeout (60 min by default) is what it must not take.
pub const DEAD_WORKER_STOPPED_WITHIN: Duration = Duration::from_secs(15);

/// The notifications the sink accepted: (title, Version field, Reason field or "").
pub fn notifications(dc: &DataCenter) -> Vec<(String, String, String)> {
    dc.webhook
        .delivered()
        .iter()
        .filter_map(|n| {
            let attachment = n.json.pointer("/attachments/0")?;
            let fields = attachment["fields"].as_array()?;
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|f| f["title"] == name)
                    .and_then(|f| f["value"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            Some((
                attachment["title"].as_str()?.to_owned(),
                field("Version"),
                field("Reason"),
            ))
        })
        .collect()
}

/// The titles of the notifications about `version`, in order.
pub fn titles_of(dc: &DataCenter, version: &str) -> Vec<String> {
    notifications(dc)
        .into_iter()
        .filter(|(_, v, _)| v == version)
        .map(|(title, _, _)| title)
        .collect()
}

/// Waits for a failure notification about `version` and returns its Reason.
pub fn wait_for_failure(dc: &DataCenter, version: &str) -> String {
    dc.wait_until("the failure notification", Duration::from_secs(15), |dc| {
        let got = notifications(dc);
        got.iter()
            .find(|(title, v, _)| title == FAILED && v == version)
            .map(|(_, _, reason)| reason.clone())
            .ok_or_else(|| format!("{got:?}"))
    })
    .unwrap()
}

/// Waits until `neco status` on boot server `lrn` reports the update to `version` stopped and
/// returns the report.
pub fn wait_stopped(dc: &DataCenter, lrn: u32, version: &str, timeout: Duration) -> Value {
    dc.wait_until("the updater stopped the update", timeout, |dc| {
        let status = dc.status_json(lrn).map_err(|e| e.to_string())?;
        match super::request_of(&status) {
            Some((v, _, true)) if v == version => Ok(status),
            Some((v, state, _)) if v == version && state == "completed" => {
                panic!("the update completed instead of stopping: {status:#}")
            }
            _ => Err(status.to_string()),
        }
    })
    .unwrap()
}

/// `neco config set slack`, then every worker is alive and no update is requested yet.
pub fn prepare(dc: &DataCenter) {
    dc.neco_ok(0, &["config", "set", "slack", &dc.webhook.url()])
        .unwrap();
    super::wait_idle(dc);
}

/// Waits for the success notification about `version`, then checks that the notifications
/// about it are exactly `expected`, in order.
pub fn wait_for_success(dc: &DataCenter, version: &str, expected: &[&str]) {
    dc.wait_until(
        &format!("the success notification of {version}"),
        Duration::from_secs(15),
        |dc| {
            let got = titles_of(dc, version);
            got.iter()
                .any(|t| t == super::SUCCEEDED)
                .then_some(())
                .ok_or_else(|| format!("{got:?}"))
        },
    )
    .unwrap();
    assert_eq!(
        titles_of(dc, version),
        expected,
        "the notifications about {version}: {:?}",
        notifications(dc)
    );
}

/// `neco setup 0 1 2` on boot server 0 (the webhook is configured already).
pub fn setup(dc: &DataCenter) {
    setup_servers(dc, &[0, 1, 2]);
}

/// `neco setup <servers>` on the first of `servers`.
pub fn setup_servers(dc: &DataCenter, servers: &[u32]) {
    let args: Vec<String> = std::iter::once("setup".to_owned())
        .chain(servers.iter().map(u32::to_string))
        .collect();
    let out = dc.neco_ok(servers[0], &args).unwrap();
    eprintln!("dctest: neco setup: {}", out.trim());
}

/// The worker statuses in etcd (`status/bootservers/<LRN>`), by LRN.
pub fn worker_statuses(dc: &DataCenter) -> Vec<(u32, Value)> {
    dc.etcd
        .get_prefix("/neco/status/bootservers/")
        .unwrap()
        .into_iter()
        .map(|kv| {
            let lrn = kv.key.rsplit('/').next().unwrap().parse().unwrap();
            (lrn, serde_json::from_str(&kv.value).unwrap())
        })
        .collect()
}

/// Freezes a process with SIGSTOP until dropped (SIGCONT): a registry that stops answering.
pub struct Frozen {
    pid: u32,
}

impl Frozen {
    pub fn new(pid: u32) -> Self {
        signal("-STOP", pid);
        Self { pid }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.pid);
    }
}

fn signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// The registry of the network stops answering, `neco setup 0 1 2` requests the update, and
/// every worker is inside step 1, fetching images, until the returned guard is dropped.
pub fn hold_every_worker_in_step_1(dc: &DataCenter) -> Frozen {
    hold_in_step_1(dc, &[0, 1, 2])
}

/// Like [`hold_every_worker_in_step_1`], for an update of `servers` only (`neco setup` on the
/// first of them).
pub fn hold_in_step_1(dc: &DataCenter, servers: &[u32]) -> Frozen {
    let frozen = Frozen::new(
        dc.mirror
            .registry_view()
            .expect("the registry of the network")
            .pid(),
    );
    setup_servers(dc, servers);
    let asked = servers[0];
    dc.wait_until("every worker runs step 1", Duration::from_secs(30), |dc| {
        let status = dc.status_json(asked).map_err(|e| e.to_string())?;
        let running = status["request"]["statuses"].as_array().is_some_and(|s| {
            s.len() == servers.len()
                && s.iter()
                    .all(|s| s["step"] == 1 && s["condition"] == "running")
        });
        let inside = servers.iter().all(|lrn| {
            dc.server(*lrn)
                .is_ok_and(|s| s.worker().journal().contains("running step"))
        });
        (running && inside)
            .then_some(())
            .ok_or_else(|| status.to_string())
    })
    .unwrap();
    frozen
}
