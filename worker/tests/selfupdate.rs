//! neco's self-update: `worker::debs::install_neco` against the GitHub stand-in with real
//! debs installed by the real dpkg into a temporary root, then the `neco-worker` binary
//! itself, which installs the requested release and exits 10 for its supervisor.
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::debs::DebPackage;
use dctest::{sha256_digest, AssetSpec, ChildGuard, EtcdCluster, GitHubStandIn, ReleaseSpec};
use fetch::github::GitHub;
use fetch::http::{Http, RetryPolicy};
use neco::storage::Storage;
use neco::types::UpdateRequest;
use reqwest::Url;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use worker::debs::{install_neco, DebError};

/// The installed version.
const OLD: &str = "2026.11.26-1";
/// The requested version.
const NEW: &str = "2026.11.27-2";
const TAG: &str = "release-2026.11.27-2";
/// neco-worker's exit status after a self-update.
const EXIT_UPDATED: i32 = 10;

fn http() -> Http {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build the HTTP client");
    Http::with_client(
        client,
        4,
        RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
    )
}

fn deb(version: &str) -> Vec<u8> {
    DebPackage::simple("neco", version).build().unwrap()
}

fn deb_name(version: &str) -> String {
    DebPackage::simple("neco", version).file_name()
}

/// A deb of the right name and version whose bytes are not the published ones.
fn tampered_deb(version: &str) -> Vec<u8> {
    let mut package = DebPackage::simple("neco", version);
    package.files[0].1 = b"tampered\n".to_vec();
    package.build().unwrap()
}

/// `<hex>  <name>`, as `sha256sum` writes it.
fn sums(bytes: &[u8], name: &str) -> Vec<u8> {
    let digest = sha256_digest(bytes);
    format!("{}  {name}\n", digest.trim_start_matches("sha256:")).into_bytes()
}

/// A root with its own dpkg database and neco `OLD` installed.
fn root_with_old_neco() -> TempDir {
    let root = tempfile::tempdir().unwrap();
    neco::dpkg::init_root(root.path()).unwrap();
    let file = root.path().join(deb_name(OLD));
    std::fs::write(&file, deb(OLD)).unwrap();
    neco::dpkg::install(root.path(), &file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(dpkg_version(root.path()).as_deref(), Some(OLD));
    root
}

/// The installed version of neco under `root`, by `dpkg-query` itself.
fn dpkg_version(root: &Path) -> Option<String> {
    let output = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${db:Status-Status} ${Version}", "neco"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .strip_prefix("installed ")
        .map(str::to_owned)
}

/// Whether the stand-in served the bytes of an asset named `name`.
fn downloaded(github: &GitHubStandIn, name: &str) -> bool {
    github
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/download/") && r.path.ends_with(&format!("/{name}")))
}

// --- install_neco ----------------------------------------------------------------------------

/// One release layout per repository of one stand-in; each installs into its own root.
#[tokio::test]
async fn install_neco_verifies_before_installing() {
    let github = GitHubStandIn::start(None).unwrap();
    let http = http();
    let api = Url::parse(&format!("{}/", github.base_url())).unwrap();
    let client = GitHub::new(&http, api, None);
    let name = deb_name(NEW);
    let good = deb(NEW);

    // GitHub's digest; another package of the release (the operation CLI) comes first.
    github.add_release(
        "neco/with-digest",
        ReleaseSpec::new(TAG)
            .asset(AssetSpec::new(
                &format!("neco-operation-cli-linux_{NEW}_amd64.deb"),
                b"not neco".to_vec(),
                true,
            ))
            .asset(AssetSpec::new(&name, good.clone(), true)),
    );
    // No digest, but a published `.sha256`.
    github.add_release(
        "neco/with-sums",
        ReleaseSpec::new(TAG)
            .asset(AssetSpec::new(&name, good.clone(), false))
            .asset(AssetSpec::new(
                &format!("{name}.sha256"),
                sums(&good, &name),
                false,
            )),
    );
    // Neither: refused.
    github.add_release(
        "neco/no-checksum",
        ReleaseSpec::new(TAG).asset(AssetSpec::new(&name, good.clone(), false)),
    );
    // Published sums of the genuine deb, other bytes served.
    github.add_release(
        "neco/tampered",
        ReleaseSpec::new(TAG)
            .asset(AssetSpec::new(&name, tampered_deb(NEW), false))
            .asset(AssetSpec::new(
                &format!("{name}.sha256"),
                sums(&good, &name),
                false,
            )),
    );
    // Another release only.
    github.add_release(
        "neco/missing",
        ReleaseSpec::new("release-2026.11.26-1").asset(AssetSpec::new(
            &deb_name(OLD),
            deb(OLD),
            true,
        )),
    );

    for repository in ["neco/with-digest", "neco/with-sums"] {
        let root = root_with_old_neco();
        install_neco(root.path(), &client, repository, NEW)
            .await
            .unwrap_or_else(|e| panic!("{repository}: {e}"));
        assert_eq!(
            dpkg_version(root.path()).as_deref(),
            Some(NEW),
            "{repository}"
        );
        assert!(
            root.path().join("usr/share/doc/neco/README").is_file(),
            "{repository}"
        );
    }

    let root = root_with_old_neco();
    let e = install_neco(root.path(), &client, "neco/no-checksum", NEW)
        .await
        .unwrap_err();
    assert!(matches!(e, DebError::NoChecksum { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&name) && e.to_string().contains(TAG),
        "{e}"
    );
    assert_eq!(dpkg_version(root.path()).as_deref(), Some(OLD));

    let root = root_with_old_neco();
    let e = install_neco(root.path(), &client, "neco/tampered", NEW)
        .await
        .unwrap_err();
    assert!(matches!(e, DebError::Mismatch { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&sha256_digest(&good)), "{text}");
    assert!(text.contains(&sha256_digest(&tampered_deb(NEW))), "{text}");
    assert_eq!(dpkg_version(root.path()).as_deref(), Some(OLD));
    let cache = root.path().join(worker::debs::CACHE_DIR).join(&name);
    assert!(!cache.exists(), "an unverified deb is not kept");

    let root = root_with_old_neco();
    let e = install_neco(root.path(), &client, "neco/missing", NEW)
        .await
        .unwrap_err();
    assert!(matches!(e, DebError::NoRelease { .. }), "{e:?}");
    assert!(e.to_string().contains(TAG), "the error names the tag: {e}");
    assert_eq!(dpkg_version(root.path()).as_deref(), Some(OLD));

    // The refused deb was never even downloaded from the release without a checksum.
    let no_checksum = github
        .releases("neco/no-checksum")
        .into_iter()
        .flat_map(|r| r.assets)
        .next()
        .unwrap();
    assert!(!github
        .requests()
        .iter()
        .any(|r| r.path == format!("/download/{}/{name}", no_checksum.id)));

    // An asset whose name is a path out of the cache (it matches `neco_*.deb`): refused,
    // naming it, before anything is downloaded or written.
    let escaping = format!("neco_../../../../tmp/evil_{NEW}_amd64.deb");
    github.add_release(
        "neco/escaping",
        ReleaseSpec::new(TAG).asset(AssetSpec::new(&escaping, good.clone(), true)),
    );
    let root = root_with_old_neco();
    let before = github.requests().len();
    let e = install_neco(root.path(), &client, "neco/escaping", NEW)
        .await
        .unwrap_err();
    assert!(matches!(e, DebError::UnsafeAssetName { .. }), "{e:?}");
    assert!(e.to_string().contains(&escaping), "{e}");
    assert_eq!(dpkg_version(root.path()).as_deref(), Some(OLD));
    let downloads: Vec<_> = github.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/download/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(downloads.is_empty(), "{downloads:?}");
}

// --- the binary ------------------------------------------------------------------------------

struct Boot {
    /// Runs as long as the test holds it.
    etcd: EtcdCluster,
    github: GitHubStandIn,
    root: TempDir,
    storage: Storage,
}

/// etcd with a request for `NEW` to servers 0 and 1, a GitHub stand-in whose
/// `cybozu-go/neco` release of `NEW` holds `deb` (published sums of the genuine deb), and a
/// root of boot server 0 with neco `OLD` installed and configured to use both.
async fn boot(deb: Vec<u8>) -> Boot {
    boot_with(deb, EtcdCluster::single().expect("start etcd")).await
}

/// [`boot`] on `etcd`; the root's config has its TLS and authentication settings when it is
/// secured, and the test's own client reads that config.
async fn boot_with(deb: Vec<u8>, etcd: EtcdCluster) -> Boot {
    let github = GitHubStandIn::start(None).unwrap();
    let name = deb_name(NEW);
    github.add_release(
        "cybozu-go/neco",
        ReleaseSpec::new(TAG)
            .asset(AssetSpec::new(&name, deb, false))
            .asset(AssetSpec::new(
                &format!("{name}.sha256"),
                sums(&self::deb(NEW), &name),
                false,
            )),
    );
    let root = root_with_old_neco();
    let config = format!(
        "[etcd]\nendpoints = [{}]\n\n[github]\napi-url = \"{}/\"\nrepository = \"cybozu-go/neco\"\n",
        etcd.endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        github.base_url()
    );
    let etc = root.path().join("etc/neco");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), config).unwrap();
    std::fs::write(etc.join("rack"), "0\n").unwrap();
    if let Some(security) = etcd.security() {
        security.neco_settings().write_into(root.path()).unwrap();
    }

    let config = neco::config::Config::load(root.path()).unwrap();
    let storage = Storage::connect(&config.etcd).await.unwrap();
    let guard = storage.key("test/guard");
    storage
        .client()
        .put(guard.as_bytes(), "", None)
        .await
        .unwrap();
    storage
        .put_request(
            &UpdateRequest {
                version: NEW.into(),
                servers: vec![0, 1],
                stop: false,
                started_at: time::OffsetDateTime::now_utc(),
            },
            &guard,
        )
        .await
        .unwrap();
    Boot {
        etcd,
        github,
        root,
        storage,
    }
}

impl Boot {
    fn log_path(&self) -> PathBuf {
        self.root.path().join("worker.log")
    }

    fn spawn(&self) -> ChildGuard {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_neco-worker"));
        command
            .arg("--root")
            .arg(self.root.path())
            .args(["--service-manager", "log"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            command.env_remove(var);
        }
        ChildGuard::spawn("neco-worker", &mut command).unwrap()
    }

    /// Waits up to `limit` for `worker` to exit; its log is in the panic when it does not.
    async fn wait_exit(
        &self,
        worker: &mut ChildGuard,
        limit: Duration,
    ) -> std::process::ExitStatus {
        within(limit, || {
            let status = worker.try_wait().unwrap();
            async move { status }
        })
        .await
        .unwrap_or_else(|| panic!("neco-worker did not exit; its log:\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The value of the worker's liveness key (its installed version), if it exists.
    async fn alive_value(&self) -> Option<String> {
        if !self.storage.alive_servers().await.unwrap().contains(&0) {
            return None;
        }
        let key = self.storage.key("alive/0");
        let resp = self
            .storage
            .client()
            .get(key.as_bytes(), None)
            .await
            .unwrap();
        resp.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }
}

/// Polls `check` every 50 ms until it gives `Some`, for at most `limit`.
async fn within<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_binary_installs_the_requested_release_and_exits_10() {
    installs_the_requested_release_and_exits_10(boot(deb(NEW)).await).await;
}

/// The same self-update through etcd as production runs it (mutual TLS, a user with a
/// password); then a key file that is not there: exit 2 (configuration, which systemd does
/// not restart) at once, naming the setting and the file.
#[tokio::test]
async fn the_binary_updates_through_a_secured_etcd_and_a_missing_key_is_a_configuration_error() {
    let etcd = EtcdCluster::secured().expect("start a secured etcd");
    let boot = boot_with(deb(NEW), etcd).await;
    let root = boot.root.path().to_owned();
    let boot = installs_the_requested_release_and_exits_10(boot).await;

    let security = boot.etcd.security().unwrap();
    let config = root.join("etc/neco/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("/etc/neco/etcd.key", "/etc/neco/missing.key"),
    )
    .unwrap();
    let started = Instant::now();
    let mut worker = boot.spawn();
    let status = boot.wait_exit(&mut worker, Duration::from_secs(10)).await;
    let log = boot.log();
    assert_eq!(status.code(), Some(2), "log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(5), "log:\n{log}");
    assert!(
        log.contains("etcd.tls-key") && log.contains("/etc/neco/missing.key"),
        "log:\n{log}"
    );
    assert!(!log.contains(security.password()), "log:\n{log}");
}

async fn installs_the_requested_release_and_exits_10(boot: Boot) -> Boot {
    let mut worker = boot.spawn();
    let status = boot.wait_exit(&mut worker, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(EXIT_UPDATED), "log:\n{}", boot.log());
    assert_eq!(dpkg_version(boot.root.path()).as_deref(), Some(NEW));
    assert!(downloaded(&boot.github, &deb_name(NEW)));
    // The liveness key outlives the process by its lease's TTL, so a restart after a
    // self-update does not look like a death; it names the version that was running.
    assert_eq!(
        boot.alive_value().await.as_deref(),
        Some(OLD),
        "{}",
        boot.log()
    );
    // The worker ran no step: it only installs the release it was asked for.
    assert_eq!(boot.storage.status(0).await.unwrap(), None);
    drop(worker);
    boot
}

#[tokio::test]
async fn the_binary_refuses_a_tampered_release_and_keeps_running() {
    let boot = boot(tampered_deb(NEW)).await;
    let mut worker = boot.spawn();
    // Alive, with the version it runs.
    let alive = within(Duration::from_secs(20), || boot.alive_value()).await;
    assert_eq!(alive.as_deref(), Some(OLD), "log:\n{}", boot.log());
    // It downloaded the deb, refused it, and waits to try again.
    let failed = within(Duration::from_secs(20), || {
        let log = boot.log();
        async move { log.contains("self-update failed").then_some(log) }
    })
    .await
    .unwrap_or_else(|| panic!("no failed self-update in the log:\n{}", boot.log()));
    assert!(failed.contains("sha256"), "{failed}");
    assert!(downloaded(&boot.github, &deb_name(NEW)));
    // The failure aborts the update with its reason (the updater stops it and notifies), and
    // the worker waits for the next request instead of retrying in a loop.
    let status = within(Duration::from_secs(10), || async {
        boot.storage.status(0).await.ok().flatten()
    })
    .await
    .unwrap_or_else(|| panic!("no status written:\n{}", boot.log()));
    assert_eq!(status.version, NEW);
    assert_eq!(status.cond, neco::types::UpdateCondition::Aborted);
    assert!(
        status.message.contains("self-update") && status.message.contains("sha256"),
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        boot.log().matches("self-update failed").count(),
        1,
        "retried in a loop:\n{}",
        boot.log()
    );
    assert!(worker.is_running(), "log:\n{}", boot.log());
    assert_eq!(dpkg_version(boot.root.path()).as_deref(), Some(OLD));
    let status = worker.kill().unwrap();
    assert_ne!(status.code(), Some(EXIT_UPDATED));
    assert_eq!(dpkg_version(boot.root.path()).as_deref(), Some(OLD));
}
