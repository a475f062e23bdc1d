//! The real steps of an update ([`StepContext`]) against a real etcd, Debian's real
//! `docker-registry` seeded by the mirror with every pinned image, the GitHub stand-in serving
//! the pinned deb, the OS feed, the sabakan stand-in and a temporary root with its own dpkg
//! database. Every server is started here and stopped by its guard.
// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dctest::debs::DebPackage;
use dctest::mirror::{Mirror, MirrorSeed};
use dctest::{sha256_digest, AssetSpec, EtcdCluster, FeedServer, GitHubStandIn, ReleaseSpec};
use dctest::{PushedImage, SabakanStandIn};
use fetch::http::{HttpOptions, RetryPolicy};
use neco::config::{ArtifactSources, EtcdConfig};
use neco::storage::{ConfigKey, Storage};
use neco::types::ContentsStatus;
use reqwest::Url;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;
use worker::online::Online;
use worker::services::{ActionLog, IMAGE_DIR, UNIT_DIR};
use worker::steps::{services, Step, StepContext};

/// The version being updated to.
const V: &str = "2026.11.26-1";
const ETCDPASSWD: &artifacts::DebianPackage = &artifacts::debs::ETCDPASSWD;

/// How long step 4 waits for a sabakan that does not answer, here.
const SABAKAN_READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The worker's client options, with short timeouts and retries.
fn http_options() -> HttpOptions {
    HttpOptions {
        per_host: 4,
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        timeout: Duration::from_secs(20),
        ..HttpOptions::default()
    }
}

fn url(text: &str) -> Url {
    let text = if text.ends_with('/') {
        text.to_owned()
    } else {
        format!("{text}/")
    };
    Url::parse(&text).unwrap()
}

/// A URL on loopback where nothing listens.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}/", dctest::free_port().unwrap())
}

async fn connect(etcd: &EtcdCluster) -> Storage {
    Storage::connect(&EtcdConfig::plain(
        etcd.endpoints(),
        "/neco/",
        Duration::from_secs(5),
    ))
    .await
    .expect("connect to etcd")
}

/// One simulated boot server: a root with an empty dpkg database and its service log.
struct Server {
    lrn: u32,
    root: TempDir,
    actions: ActionLog,
}

impl Server {
    fn new(lrn: u32) -> Self {
        let root = tempfile::tempdir().unwrap();
        neco::dpkg::init_root(root.path()).unwrap();
        let actions = ActionLog {
            path: root.path().join("var/log/neco/services.log"),
        };
        Self { lrn, root, actions }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// The installed version of a package, by `dpkg-query` itself.
    fn dpkg_version(&self, package: &str) -> Option<String> {
        let output = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path().join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${db:Status-Status} ${Version}", package])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.strip_prefix("installed ").map(str::to_owned)
    }

    fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.actions.path)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn cached_deb(&self) -> PathBuf {
        self.path()
            .join(worker::debs::CACHE_DIR)
            .join(ETCDPASSWD.asset.as_str())
    }
}

/// What the steps reach: etcd, an HTTP client and the endpoints.
struct Env {
    storage: Storage,
    online: Online,
    github_api: Url,
    sources: ArtifactSources,
}

impl Env {
    fn new(storage: Storage, github_api: &str, sources: ArtifactSources) -> Self {
        Self {
            online: Online::new(storage.clone(), http_options()).unwrap(),
            storage,
            github_api: url(github_api),
            sources,
        }
    }

    fn ctx<'a>(&'a self, server: &'a Server) -> StepContext<'a> {
        StepContext {
            root: server.path().to_owned(),
            lrn: server.lrn,
            storage: &self.storage,
            online: &self.online,
            github_api: self.github_api.clone(),
            sources: &self.sources,
            registry_credentials: None,
            service_manager: &server.actions,
            sabakan_ready_timeout: SABAKAN_READY_TIMEOUT,
        }
    }
}

fn sources(registry: &str, sabakan: &str, feed: &str) -> ArtifactSources {
    ArtifactSources {
        registries: BTreeMap::from([("ghcr.io".to_owned(), url(registry))]),
        sabakan: url(sabakan),
        os_image_base: format!("{}/{{channel}}/", feed.trim_end_matches('/')),
    }
}

/// The deb the mirror builds for the pin; its bytes must hash to the pinned sha256.
fn pinned_deb() -> Vec<u8> {
    let deb = DebPackage::simple("etcdpasswd", "1.4.9").build().unwrap();
    assert_eq!(
        sha256_digest(&deb),
        ETCDPASSWD.sha256.as_str(),
        "the fixture deb no longer matches the checked-in pin"
    );
    deb
}

/// A GitHub stand-in whose etcdpasswd release carries `deb` under the pinned asset name.
fn github_with(deb: Vec<u8>) -> GitHubStandIn {
    github_with_token(deb, None)
}

/// [`github_with`], answering only requests with `token`.
fn github_with_token(deb: Vec<u8>, token: Option<&str>) -> GitHubStandIn {
    let github = GitHubStandIn::start(token.map(str::to_owned)).unwrap();
    github.add_release(
        ETCDPASSWD.repository.as_str(),
        ReleaseSpec::new(ETCDPASSWD.release.as_str()).asset(AssetSpec::new(
            ETCDPASSWD.asset.as_str(),
            deb,
            true,
        )),
    );
    github
}

/// The data file of a blob in the registry's filesystem storage (distribution's layout).
fn stored_blob(storage_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage_dir
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn pushed<'a>(mirror: &'a Mirror, image: &artifacts::ContainerImage) -> &'a PushedImage {
    let path = image.repository.as_str().strip_prefix("ghcr.io/").unwrap();
    let pushed = mirror
        .images
        .iter()
        .find(|p| p.repository == path && p.tag == image.tag.as_str())
        .unwrap_or_else(|| panic!("the mirror lacks {}", image.reference()));
    assert_eq!(
        pushed.manifest_digest,
        image.digest.as_str(),
        "{}",
        image.reference()
    );
    pushed
}

/// Every blob file of an image layout, checked against its name; with (inode, mtime).
fn layout_blobs(layout: &Path) -> BTreeMap<String, (u64, i64)> {
    let mut blobs = BTreeMap::new();
    for file in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        let digest = sha256_digest(&std::fs::read(file.path()).unwrap());
        assert_eq!(
            digest,
            format!("sha256:{name}"),
            "{}",
            file.path().display()
        );
        let meta = file.metadata().unwrap();
        blobs.insert(
            digest,
            (meta.ino(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000),
        );
    }
    blobs
}

// --- step 1 ----------------------------------------------------------------------------------

#[tokio::test]
async fn step1_copies_every_pinned_image_once() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let mirror = Mirror::start(&MirrorSeed::neco_2025().unwrap()).expect("start the mirror");
    let env = Env::new(
        connect(&etcd).await,
        &mirror.github.base_url(),
        sources(
            &mirror.registry.base_url(),
            &dead_url(),
            &mirror.feed.base_url(),
        ),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);

    ctx.run(Step::FetchImages, V).await.unwrap();
    let images_dir = server.path().join(IMAGE_DIR);
    let mut stamps = BTreeMap::new();
    assert!(!artifacts::ARTIFACTS.images.is_empty());
    for image in artifacts::ARTIFACTS.images {
        let name = image.name.as_str();
        let layout = images_dir.join(name);
        let pushed = pushed(&mirror, image);
        assert!(
            fetch::oci::is_present(&layout, worker::steps::image_source(image)).unwrap(),
            "{name} is not in its layout"
        );
        let blobs = layout_blobs(&layout);
        for digest in [&pushed.manifest_digest, &pushed.config_digest]
            .into_iter()
            .chain(&pushed.layer_digests)
        {
            assert!(blobs.contains_key(digest), "{name} lacks {digest}");
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"].as_str(),
            Some(image.digest.as_str())
        );
        assert_eq!(
            env.storage.container_tag(0, name).await.unwrap().as_deref(),
            Some(image.tag.as_str()),
            "install/0/containers/{name}"
        );
        stamps.insert(name, blobs);
    }

    // Again, with the registry gone: every pin is present and recorded, so nothing is
    // downloaded and no file is rewritten.
    let Mirror { registry, .. } = mirror;
    drop(registry);
    ctx.run(Step::FetchImages, V).await.unwrap();
    for image in artifacts::ARTIFACTS.images {
        let name = image.name.as_str();
        assert_eq!(layout_blobs(&images_dir.join(name)), stamps[name], "{name}");
    }
}

#[tokio::test]
async fn step1_refuses_a_tampered_layer_and_records_nothing_for_it() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let mirror = Mirror::start(&MirrorSeed::neco_2025().unwrap()).expect("start the mirror");
    let env = Env::new(
        connect(&etcd).await,
        &mirror.github.base_url(),
        sources(
            &mirror.registry.base_url(),
            &dead_url(),
            &mirror.feed.base_url(),
        ),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);

    let etcd_image = &artifacts::images::ETCD;
    let layer = pushed(&mirror, etcd_image).layer_digests[0].clone();
    let blob = stored_blob(mirror.registry.storage_dir(), &layer);
    let original = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, b"tampered layer bytes").unwrap();

    let e = ctx.run(Step::FetchImages, V).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(e.step, 1, "{text}");
    assert!(text.starts_with("step 1 (fetch images): "), "{text}");
    assert!(text.contains(&layer), "the error names the layer: {text}");
    assert!(text.contains(etcd_image.repository.as_str()), "{text}");
    let layout = server.path().join(IMAGE_DIR).join("etcd");
    assert!(!fetch::oci::is_present(&layout, worker::steps::image_source(etcd_image)).unwrap());
    assert!(!layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"))
        .exists());
    assert_eq!(env.storage.container_tag(0, "etcd").await.unwrap(), None);

    // Repaired, the step completes and records it.
    std::fs::write(&blob, original).unwrap();
    ctx.run(Step::FetchImages, V).await.unwrap();
    assert!(fetch::oci::is_present(&layout, worker::steps::image_source(etcd_image)).unwrap());
    assert_eq!(
        env.storage
            .container_tag(0, "etcd")
            .await
            .unwrap()
            .as_deref(),
        Some(etcd_image.tag.as_str())
    );
}

// --- step 2 ----------------------------------------------------------------------------------

#[tokio::test]
async fn step2_installs_the_pinned_deb() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let deb = pinned_deb();
    let github = github_with(deb.clone());
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &dead_url(), &dead_url()),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);

    assert_eq!(server.dpkg_version("etcdpasswd"), None);
    ctx.run(Step::InstallDebs, V).await.unwrap();
    assert_eq!(server.dpkg_version("etcdpasswd").as_deref(), Some("1.4.9"));
    assert!(server
        .path()
        .join("usr/share/doc/etcdpasswd/README")
        .is_file());
    assert_eq!(std::fs::read(server.cached_deb()).unwrap(), deb);
    assert_eq!(
        env.storage
            .deb_release(0, "etcdpasswd")
            .await
            .unwrap()
            .as_deref(),
        Some(ETCDPASSWD.release.as_str())
    );
    // Nothing went to the host's dpkg database.
    assert_eq!(
        neco::dpkg::installed_version(Path::new("/"), "etcdpasswd").unwrap(),
        None
    );

    // Installed and recorded: a second run asks GitHub nothing.
    let asked = github.requests().len();
    ctx.run(Step::InstallDebs, V).await.unwrap();
    assert_eq!(github.requests().len(), asked);
}

/// `neco config set github-token` and `proxy` apply to the next step: the worker reads them
/// when it uses them, not once at its start.
#[tokio::test]
async fn step2_uses_the_github_token_and_proxy_that_config_holds_at_the_step() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let github = github_with_token(pinned_deb(), Some("token-2"));
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &dead_url(), &dead_url()),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);
    env.storage
        .put_config(ConfigKey::GitHubToken, "token-1")
        .await
        .unwrap();
    let refused = ctx.run(Step::InstallDebs, V).await.unwrap_err();
    assert!(refused.message.contains("401"), "{refused}");

    // Through a proxy that is not there: refused before GitHub is asked.
    env.storage
        .put_config(ConfigKey::GitHubToken, "token-2")
        .await
        .unwrap();
    env.storage
        .put_config(ConfigKey::Proxy, &dead_url())
        .await
        .unwrap();
    let asked = github.requests().len();
    let unreachable = ctx.run(Step::InstallDebs, V).await.unwrap_err();
    assert_eq!(github.requests().len(), asked, "{unreachable}");
    assert_eq!(server.dpkg_version("etcdpasswd"), None);

    env.storage.delete_config(ConfigKey::Proxy).await.unwrap();
    ctx.run(Step::InstallDebs, V).await.unwrap();
    assert_eq!(server.dpkg_version("etcdpasswd").as_deref(), Some("1.4.9"));
    assert!(!refused.to_string().contains("token-1"), "{refused}");
}

#[tokio::test]
async fn step2_refuses_a_deb_that_is_not_the_pinned_one() {
    let etcd = EtcdCluster::single().expect("start etcd");
    // Same name and version, other bytes: what a replaced release asset looks like.
    let mut other = DebPackage::simple("etcdpasswd", "1.4.9");
    other.files[0].1 = b"not the pinned build\n".to_vec();
    let other = other.build().unwrap();
    let github = github_with(other.clone());
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &dead_url(), &dead_url()),
    );
    let server = Server::new(0);

    let e = env
        .ctx(&server)
        .run(Step::InstallDebs, V)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("step 2 (install debs): etcdpasswd: "),
        "{text}"
    );
    assert!(text.contains(ETCDPASSWD.sha256.as_str()), "{text}");
    assert!(text.contains(&sha256_digest(&other)), "{text}");
    assert_eq!(server.dpkg_version("etcdpasswd"), None);
    assert!(!server.cached_deb().exists());
    assert_eq!(
        env.storage.deb_release(0, "etcdpasswd").await.unwrap(),
        None
    );
}

// --- step 3 ----------------------------------------------------------------------------------

#[tokio::test]
async fn step3_writes_units_and_restarts_only_changed_services() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let env = Env::new(
        connect(&etcd).await,
        &dead_url(),
        sources(&dead_url(), &dead_url(), &dead_url()),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);
    let specs = services();
    let unit = |name: &str| server.path().join(UNIT_DIR).join(format!("{name}.service"));

    ctx.run(Step::Services, V).await.unwrap();
    let all: Vec<String> = specs
        .iter()
        .map(|s| format!("restart {}.service", s.name))
        .collect();
    assert_eq!(server.actions(), all);
    for spec in &specs {
        let text = std::fs::read_to_string(unit(spec.name)).unwrap();
        assert!(
            text.contains(&spec.image.reference()),
            "{}: {text}",
            spec.name
        );
        assert!(
            text.contains(&format!(
                "oci:/{IMAGE_DIR}/{}:{}",
                spec.image.name, spec.image.tag
            )),
            "{}: {text}",
            spec.name
        );
    }

    // Unchanged: nothing restarts.
    ctx.run(Step::Services, V).await.unwrap();
    assert_eq!(server.actions().len(), all.len());

    // One unit edited by hand: only that one is rewritten and restarted.
    let vault = unit("vault");
    let rendered = std::fs::read_to_string(&vault).unwrap();
    std::fs::write(&vault, "[Service]\nExecStart=/bin/false\n").unwrap();
    let etcd_unit = std::fs::metadata(unit("etcd-container")).unwrap();
    ctx.run(Step::Services, V).await.unwrap();
    let actions = server.actions();
    assert_eq!(actions[all.len()..], ["restart vault.service".to_owned()]);
    assert_eq!(std::fs::read_to_string(&vault).unwrap(), rendered);
    let after = std::fs::metadata(unit("etcd-container")).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (etcd_unit.ino(), etcd_unit.mtime_nsec()),
        "an unchanged unit is not rewritten"
    );
}

// --- step 4 ----------------------------------------------------------------------------------

/// `contents/sabakan` as step 4 records it for `V`.
fn recorded(success: bool) -> Option<ContentsStatus> {
    Some(ContentsStatus {
        version: V.into(),
        success,
    })
}

/// Server 0 after step 2 (its deb cached), with etcd, the OS feed and sabakan.
struct Step4 {
    etcd: EtcdCluster,
    sabakan: SabakanStandIn,
    env: Env,
    server: Server,
    _feed: FeedServer,
    _github: GitHubStandIn,
}

impl Step4 {
    async fn start() -> Self {
        let etcd = EtcdCluster::single().expect("start etcd");
        let os = &artifacts::OS_IMAGE;
        let feed = FeedServer::start(os.channel.as_str(), &[os.version.as_str()]).unwrap();
        let sabakan = SabakanStandIn::start().unwrap();
        let github = github_with(pinned_deb());
        let env = Env::new(
            connect(&etcd).await,
            &github.base_url(),
            sources(&dead_url(), &sabakan.base_url(), &feed.base_url()),
        );
        let server = Server::new(0);
        env.ctx(&server).run(Step::InstallDebs, V).await.unwrap();
        Self {
            etcd,
            sabakan,
            env,
            server,
            _feed: feed,
            _github: github,
        }
    }
}

#[tokio::test]
async fn step4_a_holder_that_died_delays_the_others_only_for_the_lease_ttl() {
    let step4 = Step4::start().await;
    let (etcd, sabakan, env) = (&step4.etcd, &step4.sabakan, &step4.env);
    let ctx = env.ctx(&step4.server);

    // Worker 1 took the upload leadership and died: its lease is no longer kept alive, and
    // nobody resigns for it.
    let dead = connect(etcd).await;
    let held = neco::lease::Leadership::campaign(
        &dead,
        neco::storage::keys::LEADER_WORKER,
        "1",
        worker::contents::UPLOAD_TTL,
    )
    .await
    .unwrap();
    drop(held);
    drop(dead);

    let started = std::time::Instant::now();
    ctx.run(Step::SabakanContents, V).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "worker 0 did not wait for the dead holder's lease: {waited:?}"
    );
    assert!(
        waited <= worker::contents::UPLOAD_TTL + Duration::from_secs(5),
        "worker 0 waited {waited:?}, longer than the lease TTL"
    );
    assert_eq!(sabakan.images().len(), 1);
}

/// Step 3 has just restarted sabakan and it does not answer yet (503 while it starts): step 4
/// waits for it, then uploads, and the result recorded is a success, not the first failure.
#[tokio::test]
async fn step4_waits_for_sabakan_to_answer_before_it_uploads() {
    let step4 = Step4::start().await;
    let (sabakan, env) = (&step4.sabakan, &step4.env);
    let ctx = env.ctx(&step4.server);

    // More failures than one request's retries (2 attempts here).
    sabakan.fail_next(6, 503);
    ctx.run(Step::SabakanContents, V).await.unwrap();
    let requests = sabakan.requests();
    assert!(requests.len() > 6, "{requests:#?}");
    assert_eq!(sabakan.images().len(), 1);
    assert_eq!(sabakan.assets().len(), 1);
    assert_eq!(
        env.storage
            .contents_status(worker::contents::TARGET)
            .await
            .unwrap(),
        recorded(true)
    );
}

/// sabakan is a host of the data center: reached directly, not through `config/proxy` (a
/// proxy to the outside that does not answer here).
#[tokio::test]
async fn step4_reaches_sabakan_without_the_proxy() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let os = &artifacts::OS_IMAGE;
    let sabakan = SabakanStandIn::start().unwrap();
    // The OS image is there already: nothing is downloaded from the feed.
    sabakan
        .add_image(os.version.as_str(), b"kernel", b"initrd")
        .unwrap();
    let github = github_with(pinned_deb());
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &sabakan.base_url(), &dead_url()),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);
    ctx.run(Step::InstallDebs, V).await.unwrap();
    env.storage
        .put_config(ConfigKey::Proxy, &dead_url())
        .await
        .unwrap();
    ctx.run(Step::SabakanContents, V).await.unwrap();
    assert_eq!(sabakan.assets().len(), 1);
}

/// An upload sabakan refuses (the cached deb is not what its sha256 says: HTTP 400) is no
/// passing trouble: it is recorded, and the next worker fails the step at once.
#[tokio::test]
async fn step4_records_a_refused_upload_so_the_others_do_not_repeat_it() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let os = &artifacts::OS_IMAGE;
    let feed = FeedServer::start(os.channel.as_str(), &[os.version.as_str()]).unwrap();
    let sabakan = SabakanStandIn::start().unwrap();
    let env = Env::new(
        connect(&etcd).await,
        &dead_url(),
        sources(&dead_url(), &sabakan.base_url(), &feed.base_url()),
    );
    let (first, second) = (Server::new(0), Server::new(1));
    for server in [&first, &second] {
        let cached = server.cached_deb();
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"not the pinned deb").unwrap();
    }
    let e = env
        .ctx(&first)
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err();
    assert!(e.message.contains("400"), "{e}");
    assert_eq!(
        env.storage.contents_status("sabakan").await.unwrap(),
        recorded(false)
    );
    let asked = sabakan.requests().len();
    let e = env
        .ctx(&second)
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err();
    assert!(e.message.contains("failed on a preceding worker"), "{e}");
    // It waited for sabakan (one question), and uploaded nothing.
    assert!(
        sabakan.requests()[asked..]
            .iter()
            .all(|r| r.method == "GET"),
        "{:#?}",
        sabakan.requests()
    );
}

/// A server whose deb cache lacks an asset (its own trouble, not the contents'): the step
/// fails naming the file, and nothing is recorded, so the next worker uploads.
#[tokio::test]
async fn step4_does_not_record_a_failure_of_the_servers_own_files() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let os = &artifacts::OS_IMAGE;
    let feed = FeedServer::start(os.channel.as_str(), &[os.version.as_str()]).unwrap();
    let sabakan = SabakanStandIn::start().unwrap();
    let deb = pinned_deb();
    let github = github_with(deb.clone());
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &sabakan.base_url(), &feed.base_url()),
    );
    let (first, second) = (Server::new(0), Server::new(1));
    let e = env
        .ctx(&first)
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains(&first.cached_deb().display().to_string()),
        "{e}"
    );
    assert_eq!(env.storage.contents_status("sabakan").await.unwrap(), None);
    // The next worker, with its cache filled by step 2, uploads everything.
    env.ctx(&second).run(Step::InstallDebs, V).await.unwrap();
    env.ctx(&second)
        .run(Step::SabakanContents, V)
        .await
        .unwrap();
    assert_eq!(sabakan.assets().len(), 1);
    assert_eq!(
        env.storage.contents_status("sabakan").await.unwrap(),
        recorded(true)
    );
}

/// A kernel whose bytes are not those the pinned sha512 names (from the feed's `.DIGESTS`)
/// aborts the step, naming the file; sabakan is given nothing, and the failure is recorded.
#[tokio::test]
async fn step4_refuses_an_os_image_file_that_does_not_match_its_pinned_checksum() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let os = &artifacts::OS_IMAGE;
    let feed = FeedServer::start(os.channel.as_str(), &[os.version.as_str()]).unwrap();
    // The pins were generated from these very bytes.
    assert_eq!(
        FeedServer::file_sha512(
            os.channel.as_str(),
            os.version.as_str(),
            dctest::feed::KERNEL_FILE
        )
        .as_deref(),
        Some(os.kernel_sha512.as_str())
    );
    feed.tamper(os.version.as_str(), dctest::feed::KERNEL_FILE);
    let sabakan = SabakanStandIn::start().unwrap();
    let env = Env::new(
        connect(&etcd).await,
        &dead_url(),
        sources(&dead_url(), &sabakan.base_url(), &feed.base_url()),
    );
    let server = Server::new(0);
    let e = env
        .ctx(&server)
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err();
    assert!(
        e.message.contains(&feed.kernel_url(os.version.as_str())),
        "{e}"
    );
    assert!(e.message.contains(os.kernel_sha512.as_str()), "{e}");
    assert!(e.message.contains("checksum"), "{e}");
    assert!(
        sabakan.requests().iter().all(|r| r.method == "GET"),
        "{:#?}",
        sabakan.requests()
    );
    assert!(sabakan.images().is_empty());
    assert_eq!(
        env.storage.contents_status("sabakan").await.unwrap(),
        recorded(false)
    );
    // Nothing of the download is left.
    let work = server.path().join(worker::contents::WORK_DIR);
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

#[tokio::test]
async fn step4_three_workers_upload_the_contents_exactly_once() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let os = &artifacts::OS_IMAGE;
    let feed = FeedServer::start(os.channel.as_str(), &["3975.2.2", os.version.as_str()]).unwrap();
    let sabakan = SabakanStandIn::start().unwrap();
    let deb = pinned_deb();
    let github = github_with(deb.clone());
    let env = Env::new(
        connect(&etcd).await,
        &github.base_url(),
        sources(&dead_url(), &sabakan.base_url(), &feed.base_url()),
    );
    let servers = [Server::new(0), Server::new(1), Server::new(2)];
    let ctxs: Vec<_> = servers.iter().map(|s| env.ctx(s)).collect();
    // Step 2 fills each server's deb cache, the source of the assets.
    for ctx in &ctxs {
        ctx.run(Step::InstallDebs, V).await.unwrap();
    }

    let (a, b, c) = tokio::join!(
        ctxs[0].run(Step::SabakanContents, V),
        ctxs[1].run(Step::SabakanContents, V),
        ctxs[2].run(Step::SabakanContents, V),
    );
    for r in [a, b, c] {
        r.unwrap();
    }

    let puts = |path: &str| {
        sabakan
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path == path)
            .count()
    };
    let image_path = format!("/api/v1/images/coreos/{}", os.version);
    let asset_path = format!("/api/v1/assets/{}", ETCDPASSWD.asset);
    assert_eq!(puts(&image_path), 1, "{:#?}", sabakan.requests());
    assert_eq!(puts(&asset_path), 1, "{:#?}", sabakan.requests());
    let images = sabakan.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, os.version.as_str());
    assert_eq!(
        images[0].kernel,
        FeedServer::kernel_bytes(os.channel.as_str(), os.version.as_str())
    );
    assert_eq!(
        images[0].initrd,
        FeedServer::initrd_bytes(os.channel.as_str(), os.version.as_str())
    );
    let assets = sabakan.assets();
    assert_eq!(assets.len(), 1);
    assert_eq!(assets[0].name, ETCDPASSWD.asset.as_str());
    assert_eq!(assets[0].content, deb);
    assert_eq!(
        format!("sha256:{}", assets[0].sha256),
        ETCDPASSWD.sha256.as_str()
    );
    let upload = sabakan
        .requests()
        .into_iter()
        .find(|r| r.path == asset_path)
        .unwrap();
    assert_eq!(
        upload
            .asset_sha256
            .map(|h| format!("sha256:{h}"))
            .as_deref(),
        Some(ETCDPASSWD.sha256.as_str())
    );
    assert_eq!(
        env.storage.contents_status("sabakan").await.unwrap(),
        recorded(true)
    );
    // The uploader's downloads and archive were temporary files.
    for server in &servers {
        let work = server.path().join(worker::contents::WORK_DIR);
        let left: Vec<_> = std::fs::read_dir(&work)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    assert!(
        servers
            .iter()
            .any(|s| s.path().join(worker::contents::WORK_DIR).is_dir()),
        "no worker downloaded the OS image into its work directory"
    );

    // Done: running it again asks sabakan nothing.
    let asked = sabakan.requests().len();
    for ctx in &ctxs {
        ctx.run(Step::SabakanContents, V).await.unwrap();
    }
    assert_eq!(sabakan.requests().len(), asked);
}

// --- unreachable endpoints -------------------------------------------------------------------

#[tokio::test]
async fn unreachable_endpoints_are_named_in_the_step_error() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let storage = connect(&etcd).await;
    let (registry, github, sabakan) = (dead_url(), dead_url(), dead_url());
    let feed = FeedServer::start(
        artifacts::OS_IMAGE.channel.as_str(),
        &[artifacts::OS_IMAGE.version.as_str()],
    )
    .unwrap();
    let env = Env::new(
        storage,
        &github,
        sources(&registry, &sabakan, &feed.base_url()),
    );
    let server = Server::new(0);
    let ctx = env.ctx(&server);

    let host = registry.trim_end_matches('/');
    let e = ctx.run(Step::FetchImages, V).await.unwrap_err().to_string();
    assert!(e.starts_with("step 1 (fetch images): "), "{e}");
    assert!(e.contains(host), "the error names the registry {host}: {e}");

    let host = github.trim_end_matches('/');
    let e = ctx.run(Step::InstallDebs, V).await.unwrap_err().to_string();
    assert!(e.starts_with("step 2 (install debs): etcdpasswd: "), "{e}");
    assert!(e.contains(host), "the error names GitHub {host}: {e}");

    // The deb is in the cache as step 2 leaves it; sabakan does not answer.
    let cached = server.cached_deb();
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, pinned_deb()).unwrap();
    let host = sabakan.trim_end_matches('/');
    let e = ctx
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("step 4 (sabakan contents): "), "{e}");
    assert!(e.contains(host), "the error names sabakan {host}: {e}");
    // A sabakan that does not answer may be restarting: nothing is recorded, so that the
    // other workers (or this one after `neco recover`) try again instead of inheriting it.
    assert_eq!(env.storage.contents_status("sabakan").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_os_feed_is_named_and_nothing_is_uploaded() {
    let etcd = EtcdCluster::single().expect("start etcd");
    let sabakan = SabakanStandIn::start().unwrap();
    let feed = dead_url();
    let env = Env::new(
        connect(&etcd).await,
        &dead_url(),
        sources(&dead_url(), &sabakan.base_url(), &feed),
    );
    let server = Server::new(0);
    let cached = server.cached_deb();
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, pinned_deb()).unwrap();

    let e = env
        .ctx(&server)
        .run(Step::SabakanContents, V)
        .await
        .unwrap_err()
        .to_string();
    let kernel = format!(
        "{}{}/amd64-usr/{}/",
        feed,
        artifacts::OS_IMAGE.channel,
        artifacts::OS_IMAGE.version
    );
    assert!(
        e.contains(&kernel),
        "the error names the feed {kernel}: {e}"
    );
    assert!(sabakan.images().is_empty() && sabakan.assets().is_empty());
}
