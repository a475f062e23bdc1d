//! dctest suite **bootstrap**: a new data center is set up with `neco setup` and the first
//! update, to the neco version installed on the boot servers, completes everywhere.
//!
//! Needs the neco package (`cargo xtask release release-<version> --no-publish --allow-dirty`,
//! or `NECO_DEB`); runs with `cargo test -p dctest --features suites --test bootstrap`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Pins, SUCCEEDED};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long the daemons must run without a restart: past the etcd client's request timeout
/// (30 s), which once ended every standby updater's campaign with exit status 1.
const STEADY: Duration = Duration::from_secs(40);

#[test]
fn bootstrap() {
    let started = Instant::now();
    let dc = common::start();
    let up = started.elapsed();
    let pins = Pins::release();
    let version = dc.version().to_owned();
    let lrns = dc.lrns();
    assert_eq!(lrns, vec![0, 1, 2]);

    // Nothing happens before the setup: no request, every worker alive and waiting.
    common::wait_idle(&dc);

    let status = common::setup(&dc);
    let completed = started.elapsed();
    common::assert_all_completed(&status, &version, &lrns);
    assert_eq!(status["servers"], serde_json::json!([0, 1, 2]));
    assert_eq!(status["latest"], version.as_str());
    // Every server's own CLI sees the same completed update.
    for &lrn in &lrns {
        let status = dc.status_json(lrn).unwrap();
        common::assert_all_completed(&status, &version, &lrns);
    }

    // Step 1: every pinned image, by the pinned digest, in each server's image layouts; the
    // data center's registry serves exactly these manifests for the pinned tags (the seed's,
    // or the store's in the nightly).
    for image in &pins.images {
        let path = image.repository.strip_prefix("ghcr.io/").unwrap();
        let served = dc
            .mirror
            .registry
            .manifest_digest(path, &image.tag)
            .unwrap();
        assert_eq!(served, image.digest, "{}", image.name);
    }
    for server in dc.servers() {
        let images = server.root().join("var/lib/neco/images");
        let dirs: BTreeSet<String> = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let pinned: BTreeSet<String> = pins.images.iter().map(|i| i.name.clone()).collect();
        assert_eq!(dirs, pinned, "boot server {}", server.lrn());
        for image in &pins.images {
            let layout = images.join(&image.name);
            let index: Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
            let manifests = index["manifests"].as_array().unwrap();
            assert!(
                manifests
                    .iter()
                    .any(|m| m["digest"] == image.digest.as_str()
                        && m["annotations"]["org.opencontainers.image.ref.name"]
                            == image.tag.as_str()),
                "boot server {}: {} lacks {}@{}: {index:#}",
                server.lrn(),
                layout.display(),
                image.tag,
                image.digest
            );
            let blob = layout
                .join("blobs/sha256")
                .join(image.digest.trim_start_matches("sha256:"));
            assert!(blob.is_file(), "{}", blob.display());
            assert_eq!(
                dctest::sha256_digest(&std::fs::read(&blob).unwrap()),
                image.digest
            );
        }
    }

    // Step 2: the pinned debs are installed into each root.
    for server in dc.servers() {
        for deb in &pins.debs {
            let expected = deb
                .asset
                .strip_prefix(&format!("{}_", deb.name))
                .and_then(|rest| rest.rsplit_once('_'))
                .map(|(v, _)| v.to_owned())
                .unwrap();
            assert_eq!(
                server.installed_version(&deb.name).unwrap(),
                Some(expected),
                "boot server {}: {}",
                server.lrn(),
                deb.name
            );
        }
        assert_eq!(
            server.installed_version("neco").unwrap().as_deref(),
            Some(version.as_str())
        );
    }

    // Step 3: unit files from the pinned images, each started once by systemd, running, and
    // answering with its pinned tag.
    common::assert_services_run_the_pins(&dc, &pins);
    for server in dc.servers() {
        for path in server.unit_files().unwrap() {
            let service = server.unit(path.file_name().unwrap().to_str().unwrap());
            assert_eq!(service.starts(), 1, "{}", service.name());
        }
    }

    // What the workers recorded in etcd.
    for &lrn in &lrns {
        for image in &pins.images {
            let key = format!("/neco/install/{lrn}/containers/{}", image.name);
            let kv = dc.etcd.get(&key).unwrap();
            assert_eq!(kv.map(|kv| kv.value), Some(image.tag.clone()), "{key}");
        }
        for deb in &pins.debs {
            let key = format!("/neco/install/{lrn}/debs/{}", deb.name);
            let kv = dc.etcd.get(&key).unwrap();
            assert_eq!(kv.map(|kv| kv.value), Some(deb.release.clone()), "{key}");
        }
    }
    let contents = dc.etcd.get("/neco/contents/sabakan").unwrap().unwrap();
    let contents: Value = serde_json::from_str(&contents.value).unwrap();
    assert_eq!(contents["version"], version.as_str());
    assert_eq!(contents["success"], true);

    // Step 4: sabakan holds the pinned OS image and every pinned deb as an asset, uploaded once.
    let images = dc.sabakan.images();
    assert_eq!(
        images.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![pins.os_version.as_str()]
    );
    // The bytes the pins name: the feed's `.DIGESTS` as artifacts-gen recorded them.
    assert_eq!(
        dctest::sha512_digest(&images[0].kernel),
        pins.os_kernel_sha512
    );
    assert_eq!(
        dctest::sha512_digest(&images[0].initrd),
        pins.os_initrd_sha512
    );
    let assets = dc.sabakan.assets();
    for deb in &pins.debs {
        let asset = assets
            .iter()
            .find(|a| a.name == deb.asset)
            .unwrap_or_else(|| panic!("sabakan lacks {}", deb.asset));
        assert_eq!(dctest::sha256_digest(&asset.content), deb.sha256);
    }
    assert!(assets.iter().any(|a| a.name.starts_with("etcdpasswd_")));
    let uploads = dc
        .sabakan
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(
        uploads,
        1 + pins.debs.len(),
        "one upload each, by one worker"
    );

    // The success notification reached the webhook.
    dc.wait_until("the success notification", Duration::from_secs(15), |dc| {
        let got = common::notifications(dc);
        got.contains(&(SUCCEEDED.to_owned(), dc.version().to_owned()))
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    })
    .unwrap();

    // No daemon crashed or restarted along the way, and the standby updaters keep waiting for
    // the leadership longer than the etcd client's request timeout (30 s).
    dc.wait_until(
        &format!("every daemon ran {}s without a restart", STEADY.as_secs()),
        STEADY + Duration::from_secs(30),
        |dc| {
            for server in dc.servers() {
                for daemon in [server.updater(), server.worker()] {
                    assert_eq!(
                        daemon.starts(),
                        1,
                        "{}: {:?}",
                        daemon.name(),
                        daemon.exits()
                    );
                }
            }
            (dc.elapsed() >= STEADY)
                .then_some(())
                .ok_or_else(|| format!("{:.0}s", dc.elapsed().as_secs_f64()))
        },
    )
    .unwrap();
    // Memory per machine with everything running (daemons, etcd, the services of the pins).
    let memory: Vec<String> = dc
        .servers()
        .map(|s| {
            format!(
                "{:.0}",
                s.machine().memory().unwrap() as f64 / f64::from(1 << 20)
            )
        })
        .collect();
    eprintln!(
        "dctest: bootstrap: data center up in {:.1}s, update completed at {:.1}s, checks done at \
         {:.1}s; memory per machine (MiB): {}",
        up.as_secs_f64(),
        completed.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        memory.join(", ")
    );
}
