//! The unit files step 3 writes for the pinned images pass `systemd-analyze verify` on this
//! host: their syntax, their dependencies (`network-online.target`, `multi-user.target`) and
//! their commands (`/usr/bin/podman`, which the package depends on, must be installed).
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use worker::services::{update_services, ActionLog, UNIT_DIR};
use worker::steps::services;

#[test]
fn the_units_of_the_pinned_images_pass_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.is_file(),
        "{} is missing: install systemd (apt-get install -y systemd)",
        analyze.display()
    );
    let podman = Path::new("/usr/bin/podman");
    assert!(
        podman.is_file(),
        "{} is missing, and verify checks each unit's commands: install podman \
         (apt-get install -y podman)",
        podman.display()
    );
    let root = tempfile::tempdir().unwrap();
    let log = ActionLog {
        path: root.path().join("services.log"),
    };
    let specs = services();
    let written = update_services(root.path(), &specs, &log).unwrap();
    assert_eq!(written.len(), specs.len());
    let units: Vec<_> = specs
        .iter()
        .map(|s| {
            root.path()
                .join(UNIT_DIR)
                .join(format!("{}.service", s.name))
        })
        .collect();
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Lines about other units of the host are not this test's business.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| specs.iter().any(|s| line.contains(s.name)))
        .collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{}",
        output.status,
        stderr.trim()
    );
}

#[test]
fn the_pinned_etcd_runs_as_etcd_container_not_as_debians_etcd_service() {
    let specs = services();
    let etcd = specs
        .iter()
        .find(|s| s.image.name.as_str() == "etcd")
        .unwrap();
    assert_eq!(etcd.name, "etcd-container");
    assert!(specs.iter().all(|s| s.name != "etcd"));
}
