//! dctest suite **upgrade**: a candidate release published as a GitHub pre-release is ignored by
//! `env prod`, installed by `env staging` (every worker updates itself from the deb under
//! systemd, is restarted by systemd as the new binary, the package restarts every updater, and
//! then every step completes for the new version), and reaches `prod` once a person clears the
//! pre-release flag.
//!
//! The candidates are the package under test repackaged with a higher `Version:` (the
//! binaries read their version from the dpkg database, so for them it is a new release).
//! With `NECO_UPGRADE_FROM=<deb>` (the nightly pipeline: the release running in the field
//! now) the data center starts on that package, and the first candidate is the package under
//! test itself, which must have a higher version.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test upgrade`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::faults::{titles_of, wait_for_success};
use common::{BEGINS, SUCCEEDED};
use dctest::datacenter::find_neco_deb;
use dctest::debs::repackage_with_version;
use dctest::{DataCenter, PublishedRelease};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// neco-worker's exit status after installing a new neco package.
const EXIT_UPDATED: i32 = 10;

/// `YYYY.MM.DD-N` → `YYYY.MM.DD-(N+1)`.
fn next_version(version: &str) -> String {
    let (date, n) = version.rsplit_once('-').expect("a YYYY.MM.DD-N version");
    format!("{date}-{}", n.parse::<u32>().expect("a numeric N") + 1)
}

/// Repackages `source` as `version` (unless it is that version) and publishes it as a
/// pre-release.
fn publish_candidate(dc: &DataCenter, source: &Path, version: &str) -> PublishedRelease {
    let deb = if package_version(source) == version {
        source.to_path_buf()
    } else {
        repackage_with_version(source, version, &dc.dir().join("candidates")).unwrap()
    };
    let release = dc.publish_release(&deb, true).unwrap();
    assert_eq!(release.tag, format!("release-{version}"));
    release
}

/// The `Version:` of a package file.
fn package_version(deb: &Path) -> String {
    let out = std::process::Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg("Version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb --field {}: {out:?}",
        deb.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The data center and the package the candidates are made of: on the package under test,
/// or on `NECO_UPGRADE_FROM` with the package under test as the first candidate.
fn start() -> (DataCenter, PathBuf, String) {
    let Some(from) = std::env::var_os(UPGRADE_FROM_ENV) else {
        let dc = common::start();
        let v2 = next_version(dc.version());
        let under_test = dc.deb().to_path_buf();
        return (dc, under_test, v2);
    };
    let under_test = find_neco_deb().unwrap();
    let from = PathBuf::from(from);
    eprintln!(
        "dctest: upgrade from {} to the package under test {}",
        from.display(),
        under_test.display()
    );
    let candidate = package_version(&under_test);
    let current = package_version(&from);
    assert!(
        dctest::datacenter::version_greater(&candidate, &current).unwrap(),
        "the package under test ({candidate}) must be newer than {UPGRADE_FROM_ENV} ({current})"
    );
    let dc = common::start_on(&from);
    (dc, under_test, candidate)
}

/// The package of the release the data center starts from.
const UPGRADE_FROM_ENV: &str = "NECO_UPGRADE_FROM";

/// The updaters check GitHub `checks` more times without changing anything: the request stays
/// on `version`, completed, and every server keeps `version` installed.
fn assert_ignored(dc: &DataCenter, version: &str, checks: usize, why: &str) {
    let before = dc.neco_release_requests();
    dc.wait_until(
        &format!("{checks} more release checks ({why})"),
        Duration::from_secs(20),
        |dc| {
            let seen = dc.neco_release_requests() - before;
            (seen >= checks)
                .then_some(())
                .ok_or_else(|| format!("{seen} checks"))
        },
    )
    .unwrap();
    let status = dc.status_json(0).unwrap();
    common::assert_all_completed(&status, version, &dc.lrns());
    assert_eq!(status["latest"], version, "{why}: {status:#}");
    for server in dc.servers() {
        assert_eq!(
            server.installed_version("neco").unwrap().as_deref(),
            Some(version),
            "{why}: boot server {}",
            server.lrn()
        );
    }
}

/// Every server self-updated exactly `updates` times so far, under systemd: each time the
/// worker exited 10 after dpkg finished and systemd started the new binary
/// (`RestartForceExitStatus=10`), the package's postinst restarted the updater once (it
/// stopped cleanly), and the worker running now is the binary installed last (a replaced one
/// would show as deleted).
fn assert_self_updated(dc: &DataCenter, version: &str, updates: usize) {
    for server in dc.servers() {
        let worker = server.worker();
        assert_eq!(
            worker.exit_codes(),
            vec![Some(EXIT_UPDATED); updates],
            "{}: {:?}\n{}",
            worker.name(),
            worker.exits(),
            worker.journal()
        );
        assert_eq!(worker.starts() as usize, 1 + updates, "{}", worker.name());
        assert_eq!(
            server.installed_version("neco").unwrap().as_deref(),
            Some(version)
        );
        assert_eq!(
            worker.executable().unwrap(),
            "/usr/sbin/neco-worker",
            "{}: the running worker is not the installed binary",
            worker.name()
        );
        let updater = server.updater();
        assert_eq!(
            (updater.starts() as usize, updater.exit_codes()),
            (1 + updates, vec![Some(0); updates]),
            "{}: restarted once by each upgrade\n{}",
            updater.name(),
            updater.journal()
        );
    }
}

fn wait_for_success_notification(dc: &DataCenter, version: &str) {
    // Begin, then success, once each.
    wait_for_success(dc, version, &[BEGINS, SUCCEEDED]);
}

#[test]
fn upgrade() {
    let started = Instant::now();
    let (dc, source, v2) = start();
    let v1 = dc.version().to_owned();
    let v3 = next_version(&v2);

    common::setup(&dc);
    dc.neco_ok(0, &["config", "set", "check-update-interval", "1s"])
        .unwrap();
    dc.neco_ok(0, &["config", "set", "env", "prod"]).unwrap();
    let bootstrapped = started.elapsed();

    // A candidate as a pre-release: prod ignores it.
    let candidate = publish_candidate(&dc, &source, &v2);
    assert_ignored(&dc, &v1, 4, "prod ignores a pre-release");
    assert!(titles_of(&dc, &v2).is_empty());
    assert_self_updated(&dc, &v1, 0);

    // Staging follows pre-releases: every worker updates itself, then the steps complete.
    let staging = Instant::now();
    dc.neco_ok(0, &["config", "set", "env", "staging"]).unwrap();
    let status = common::wait_completed(&dc, 0, &v2);
    let staging_took = staging.elapsed();
    common::assert_all_completed(&status, &v2, &dc.lrns());
    assert_eq!(status["latest"], v2.as_str());
    assert_self_updated(&dc, &v2, 1);
    common::assert_services_run_the_pins(&dc, &common::Pins::release());
    for server in dc.servers() {
        let log = server.worker().journal();
        assert!(
            log.contains("self-update") && log.contains("installed the neco package"),
            "{}",
            server.worker().name()
        );
        // The package came from the release, checked against its published .sha256.
        let cached = server
            .root()
            .join("var/lib/neco/debs")
            .join(&candidate.asset);
        assert_eq!(
            dctest::sha256_digest(&std::fs::read(&cached).unwrap()),
            candidate.sha256
        );
    }
    wait_for_success_notification(&dc, &v2);
    // The contents were already in sabakan: recorded for the new version, nothing uploaded.
    let contents = dc.etcd.get("/neco/contents/sabakan").unwrap().unwrap();
    let contents: serde_json::Value = serde_json::from_str(&contents.value).unwrap();
    assert_eq!(contents["version"], v2.as_str());
    assert_eq!(contents["success"], true);
    let uploads = dc
        .sabakan
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(uploads, 1 + dc.sabakan.assets().len(), "no second upload");

    // Back to prod with a newer pre-release out: prod's newest full release is v1, older than
    // what runs, and an update never moves back.
    let promoted = publish_candidate(&dc, &source, &v3);
    dc.neco_ok(0, &["config", "set", "env", "prod"]).unwrap();
    assert_ignored(
        &dc,
        &v2,
        4,
        "prod ignores pre-releases and never downgrades",
    );
    assert!(titles_of(&dc, &v3).is_empty());

    // A person clears the pre-release flag: v3 is the latest full release, prod installs it.
    let promotion = Instant::now();
    dc.set_prerelease(&promoted, false).unwrap();
    let status = common::wait_completed(&dc, 0, &v3);
    let promotion_took = promotion.elapsed();
    common::assert_all_completed(&status, &v3, &dc.lrns());
    assert_self_updated(&dc, &v3, 2);
    common::assert_services_run_the_pins(&dc, &common::Pins::release());
    wait_for_success_notification(&dc, &v3);

    eprintln!(
        "dctest: upgrade: bootstrap done at {:.1}s, staging update {:.1}s, prod update after \
         promotion {:.1}s, total {:.1}s",
        bootstrapped.as_secs_f64(),
        staging_took.as_secs_f64(),
        promotion_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
