//! What the suites share: starting the data center with the package under test, the pins the
//! package was built with, and reading `neco status --json`.
// Test code: a failed call is a failed test (the data center prints every log when it panics).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod faults;

use dctest::datacenter::{find_neco_deb, Options};
use dctest::store::STORE_ENV;
use dctest::DataCenter;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one update of three boot servers may take on a loaded 2-core machine.
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts the data center with the neco package under test. Without a package the suite fails
/// (never skips) and says how to build one.
pub fn start() -> DataCenter {
    let deb =
        find_neco_deb().unwrap_or_else(|e| panic!("the dctest suites need the neco package: {e}"));
    eprintln!("dctest: package under test {}", deb.display());
    start_on(&deb)
}

/// Starts the data center with `deb` installed, its registry mirror holding every image of
/// the release pins, and checks that the mirror serves each at its pinned digest. With
/// [`STORE_ENV`] (the nightly), the mirror serves the candidate's artifacts from that store,
/// as upstream made them; otherwise it makes every pinned tag itself (the pins were resolved
/// against a mirror like it).
pub fn start_on(deb: &Path) -> DataCenter {
    let pins = Pins::release();
    let store = std::env::var_os(STORE_ENV).map(PathBuf::from);
    let images = match store {
        Some(_) => Vec::new(),
        None => pins
            .images
            .iter()
            .map(|i| (i.repository.clone(), i.tag.clone()))
            .collect(),
    };
    let options = Options {
        images,
        store,
        ..Options::new(deb)
    };
    let dc = DataCenter::start(options).unwrap_or_else(|e| panic!("starting the data center: {e}"));
    for image in &pins.images {
        let (_, path) = image.repository.split_once('/').unwrap();
        let served = dc
            .mirror
            .registry
            .manifest_digest(path, &image.tag)
            .unwrap();
        assert_eq!(
            served, image.digest,
            "the release pins name {}:{} at {}, but the data center serves {served}: pins \
             resolved against upstream are served from the store that `cargo xtask nightly` \
             fills ({STORE_ENV})",
            image.repository, image.tag, image.digest
        );
    }
    dc
}

/// One pinned image of the release pins.
#[derive(Debug, Clone)]
pub struct PinnedImage {
    pub name: String,
    /// `ghcr.io/…`
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// One pinned Debian package.
#[derive(Debug, Clone)]
pub struct PinnedDeb {
    pub name: String,
    pub repository: String,
    pub release: String,
    pub asset: String,
    pub sha256: String,
}

/// The pins the package was built with: `cargo xtask release` builds with
/// `--features artifacts/release`, i.e. `artifacts/src/generated/artifacts_release.rs`. dctest
/// depends on no crate of the workspace, so the generated file is read as text: it is the
/// independent oracle of what every boot server must end up with.
#[derive(Debug, Clone)]
pub struct Pins {
    pub images: Vec<PinnedImage>,
    pub debs: Vec<PinnedDeb>,
    pub os_channel: String,
    pub os_version: String,
    /// `sha512:<hex>` of the OS image's kernel and initrd.
    pub os_kernel_sha512: String,
    pub os_initrd_sha512: String,
}

impl Pins {
    pub fn release() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../artifacts/src/generated/artifacts_release.rs");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let mut images = Vec::new();
        let mut debs = Vec::new();
        let mut os = None;
        for block in text.split("pub const ").skip(1) {
            let header = block.lines().next().unwrap_or("");
            if header.contains(": ContainerImage = ") {
                images.push(PinnedImage {
                    name: field(block, "name"),
                    repository: field(block, "repository"),
                    tag: field(block, "tag"),
                    digest: field(block, "digest"),
                });
            } else if header.contains(": DebianPackage = ") {
                debs.push(PinnedDeb {
                    name: field(block, "name"),
                    repository: field(block, "repository"),
                    release: field(block, "release"),
                    asset: field(block, "asset"),
                    sha256: field(block, "sha256"),
                });
            } else if header.starts_with("OS_IMAGE:") {
                os = Some((
                    field(block, "channel"),
                    field(block, "version"),
                    field(block, "kernel_sha512"),
                    field(block, "initrd_sha512"),
                ));
            }
        }
        let (os_channel, os_version, os_kernel_sha512, os_initrd_sha512) =
            os.expect("the pins have an OS_IMAGE");
        assert!(!images.is_empty() && !debs.is_empty(), "no pins parsed");
        Self {
            images,
            debs,
            os_channel,
            os_version,
            os_kernel_sha512,
            os_initrd_sha512,
        }
    }
}

/// The first string literal after `<name>: ` in a block of the generated file.
fn field(block: &str, name: &str) -> String {
    let marker = format!("{name}: ");
    let start = block
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {block}"));
    let rest = &block[start + marker.len()..];
    let open = rest.find('"').expect("a string literal") + 1;
    let close = rest[open..].find('"').expect("a closed string literal") + open;
    rest[open..close].to_owned()
}

/// The update request of a `neco status --json` report: (version, state, stopped).
pub fn request_of(status: &Value) -> Option<(String, String, bool)> {
    let request = status.get("request").filter(|r| !r.is_null())?;
    Some((
        request["version"].as_str()?.to_owned(),
        request["state"].as_str()?.to_owned(),
        request["stopped"].as_bool()?,
    ))
}

/// Waits until `neco status` on boot server `lrn` reports `version` completed on every listed
/// server; panics at once when the update aborts or stops.
pub fn wait_completed(dc: &DataCenter, lrn: u32, version: &str) -> Value {
    dc.wait_until(
        &format!("the update to {version} completed"),
        UPDATE_TIMEOUT,
        |dc| {
            let status = dc.status_json(lrn).map_err(|e| e.to_string())?;
            match request_of(&status) {
                Some((v, state, _)) if v == version && state == "completed" => Ok(status),
                Some((v, state, stopped)) if v == version && (state == "aborted" || stopped) => {
                    panic!("the update to {version} failed: {status:#}")
                }
                _ => Err(status.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Every listed server of the request reports `version` completed at the final step.
pub fn assert_all_completed(status: &Value, version: &str, lrns: &[u32]) {
    let (v, state, stopped) = request_of(status).expect("an update request");
    assert_eq!(
        (v.as_str(), state.as_str(), stopped),
        (version, "completed", false),
        "{status:#}"
    );
    let statuses = status["request"]["statuses"].as_array().expect("statuses");
    let listed: Vec<u64> = statuses.iter().filter_map(|s| s["lrn"].as_u64()).collect();
    let expected: Vec<u64> = lrns.iter().map(|&l| u64::from(l)).collect();
    assert_eq!(listed, expected, "{status:#}");
    for s in statuses {
        assert_eq!(s["condition"], "completed", "{status:#}");
        assert_eq!(s["step"], 5, "{status:#}");
        assert_eq!(s["alive"], true, "{status:#}");
    }
}

/// The bodies of the notifications the sink accepted, as (title, version).
pub fn notifications(dc: &DataCenter) -> Vec<(String, String)> {
    dc.webhook
        .delivered()
        .iter()
        .filter_map(|n| {
            let attachment = n.json.pointer("/attachments/0")?;
            let title = attachment["title"].as_str()?.to_owned();
            let version = attachment["fields"]
                .as_array()?
                .iter()
                .find(|f| f["title"] == "Version")?["value"]
                .as_str()?
                .to_owned();
            Some((title, version))
        })
        .collect()
}

/// The title neco gives a notification of a completed update.
pub const SUCCEEDED: &str = "Update completed successfully";
/// The title of the notification of a requested update.
pub const BEGINS: &str = "Update begins";

/// Bootstrap: the webhook is configured, `neco setup 0 1 2` runs on server 0, and the first
/// update (to the installed version) completes. Returns the final status.
pub fn setup(dc: &DataCenter) -> Value {
    dc.neco_ok(0, &["config", "set", "slack", &dc.webhook.url()])
        .unwrap_or_else(|e| panic!("{e}"));
    let lrns: Vec<String> = dc.lrns().iter().map(u32::to_string).collect();
    let mut args = vec!["setup".to_owned()];
    args.extend(lrns);
    let out = dc.neco_ok(0, &args).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("dctest: neco setup: {}", out.trim());
    wait_completed(dc, 0, dc.version())
}

/// Step 3 on every boot server: each unit file names a pinned image, its unit runs, and its
/// service answers on the network with that image's repository and pinned tag. The message of
/// a failure names the server and the service.
pub fn assert_services_run_the_pins(dc: &DataCenter, pins: &Pins) {
    for server in dc.servers() {
        let units = server.unit_files().unwrap();
        assert!(
            !units.is_empty(),
            "boot server {}: no unit files",
            server.lrn()
        );
        for path in &units {
            let unit = path.file_name().unwrap().to_str().unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            let image = pins
                .images
                .iter()
                .find(|i| {
                    text.contains(&format!("/{}:{} ", i.name, i.tag))
                        || text.contains(&format!("/{}:{}\n", i.name, i.tag))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "boot server {}: {unit} runs no pinned image:\n{text}",
                        server.lrn()
                    )
                });
            let service = server.unit(unit);
            let state = service.state().unwrap();
            assert_eq!(
                (state.active.as_str(), state.sub.as_str()),
                ("active", "running"),
                "boot server {}: {unit}: {state:?}\n{}",
                server.lrn(),
                service.journal()
            );
            let repository = image
                .repository
                .split_once('/')
                .map_or(image.repository.as_str(), |(_, path)| path);
            let answer = dc
                .service_answer(server.lrn(), &image.repository)
                .unwrap_or_else(|e| panic!("boot server {}: {unit}: {e}", server.lrn()));
            assert_eq!(
                answer,
                format!("{repository}:{}\n", image.tag),
                "boot server {}: {unit} answers another image than the pinned {}:{}",
                server.lrn(),
                image.repository,
                image.tag
            );
        }
    }
}

/// Waits until every worker of boot servers 0, 1, 2 is alive and no update is requested.
pub fn wait_idle(dc: &DataCenter) {
    dc.wait_until("every worker is alive", Duration::from_secs(20), |dc| {
        let status = dc.status_json(0).map_err(|e| e.to_string())?;
        (status["alive"] == serde_json::json!([0, 1, 2]) && status["request"].is_null())
            .then_some(())
            .ok_or_else(|| status.to_string())
    })
    .unwrap();
}
