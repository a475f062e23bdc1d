//! The virtual data center: everything the suites of DESIGN §7 run against, on one machine and
//! on loopback only.
//!
//! [`DataCenter::start`] brings up
//! - a 3-member etcd cluster ([`EtcdCluster`]);
//! - the mirror of upstream seeded with every pinned version ([`Mirror`] with
//!   [`MirrorSeed::neco_2025`]): Debian's registry, the GitHub stand-in with the pinned deb
//!   releases, and the OS feed;
//! - neco's own repository `cybozu-go/neco` in the same GitHub stand-in, with the full release
//!   `release-<version>` of the neco package under test (the `.deb` and its `.sha256`);
//! - a sabakan stand-in and a webhook sink;
//! - boot servers `0..N`: a root directory each with its own dpkg database, `etc/neco/config.toml`
//!   pointing at all of the above, `etc/neco/rack`, the neco package installed into it with the
//!   real `dpkg --root`, and `neco-updater` and `neco-worker` started **from that root** under a
//!   [`Supervisor`] (systemd's `Restart=always`), so that after a self-update (the worker exits
//!   10) the restarted worker is the newly installed binary.
//!
//! Everything is stopped by PID when the data center is dropped, also when the test panics; a
//! panicking test first gets the end of every process log on stderr.

use crate::debs;
use crate::error::{Error, Result};
use crate::etcd::EtcdCluster;
use crate::github::{AssetSpec, ReleaseSpec};
use crate::mirror::{Mirror, MirrorSeed};
use crate::process::output_with_timeout;
use crate::sabakan::SabakanStandIn;
use crate::supervisor::{Supervisor, DEFAULT_RESTART_DELAY};
use crate::util::{sha256_digest, tail, write_text as write};
use crate::webhook::WebhookSink;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The GitHub repository of neco's own releases, as in production.
pub const NECO_REPOSITORY: &str = "cybozu-go/neco";
/// The leadership lease of the updaters: how soon another one takes over from a dead leader.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3);
/// How often [`DataCenter::wait_until`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one `neco` command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Members of the etcd cluster.
const ETCD_MEMBERS: usize = 3;
/// Lines of each log printed when a test fails.
const FAILURE_LOG_LINES: usize = 150;
/// Set to keep the directory of a failed data center (roots, logs) for inspection.
pub const KEEP_ENV: &str = "DCTEST_KEEP";
/// The package file of the neco package under test, when set.
pub const DEB_ENV: &str = "NECO_DEB";

/// How to build the data center.
#[derive(Debug, Clone)]
pub struct Options {
    /// The neco package installed on every boot server and published as the current release.
    pub deb: PathBuf,
    /// Boot servers `0..servers` are created.
    pub servers: u32,
    /// `neco-updater --session-ttl`.
    pub session_ttl: Duration,
    /// The supervisor's delay before a restart (systemd's `RestartSec=`).
    pub restart_delay: Duration,
    /// Images (`host/path`, tag) pushed into the registry mirror besides the seed's: the pins
    /// of the package under test, which a nightly candidate may have moved past the seed. The
    /// mirror's images are made from repository and tag alone, so a tag pushed here has the
    /// digest any other mirror gave it.
    pub images: Vec<(String, String)>,
}

impl Options {
    /// Three boot servers, session TTL 3 s, restart delay 200 ms, the seed's images only.
    pub fn new(deb: impl Into<PathBuf>) -> Self {
        Self {
            deb: deb.into(),
            servers: 3,
            session_ttl: DEFAULT_SESSION_TTL,
            restart_delay: DEFAULT_RESTART_DELAY,
            images: Vec::new(),
        }
    }
}

/// A release of neco published on the GitHub stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRelease {
    /// The release id, for [`DataCenter::set_prerelease`].
    pub id: u64,
    /// `release-<version>`.
    pub tag: String,
    /// The package's `Version:`.
    pub version: String,
    /// The asset name, `neco_<version>_amd64.deb`.
    pub asset: String,
    /// `sha256:<hex>` of the package.
    pub sha256: String,
}

/// One simulated boot server.
#[derive(Debug)]
pub struct BootServer {
    lrn: u32,
    root: PathBuf,
    // The daemons die first when a server is dropped.
    updater: Supervisor,
    worker: Supervisor,
}

impl BootServer {
    /// The server's LRN (its `etc/neco/rack`).
    pub fn lrn(&self) -> u32 {
        self.lrn
    }

    /// The root directory (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The supervised `neco-updater`.
    pub fn updater(&self) -> &Supervisor {
        &self.updater
    }

    /// The supervised `neco-worker`.
    pub fn worker(&self) -> &Supervisor {
        &self.worker
    }

    /// The installed version of `package` in this root's dpkg database (`dpkg-query`).
    pub fn installed_version(&self, package: &str) -> Result<Option<String>> {
        installed_version(&self.root, package)
    }

    /// The actions of `--service-manager log` (`var/log/neco/services.log`), one per line.
    pub fn service_actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("var/log/neco/services.log"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Both daemon logs, each under a header.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for sup in [&self.updater, &self.worker] {
            let _ = writeln!(
                out,
                "===== {} ({}) =====\n{}",
                sup.name(),
                sup.log_path().display(),
                sup.log()
            );
        }
        out
    }

    fn stop(&mut self) -> Result<()> {
        let updater = self.updater.stop();
        let worker = self.worker.stop();
        updater.and(worker)
    }
}

/// The running data center. Dropping it stops every process by PID.
#[derive(Debug)]
pub struct DataCenter {
    // Field order is drop order: the daemons go first, then the servers they talk to.
    servers: BTreeMap<u32, BootServer>,
    /// The etcd cluster (kill and restart members through it).
    pub etcd: EtcdCluster,
    /// The mirror of upstream; `mirror.github` also serves `cybozu-go/neco`.
    pub mirror: Mirror,
    pub sabakan: SabakanStandIn,
    pub webhook: WebhookSink,
    options: Options,
    version: String,
    release: PublishedRelease,
    /// The status database stanzas of the packages the neco package depends on.
    host_packages: HostPackages,
    started: Instant,
    path: PathBuf,
    /// Taken on drop (kept on a failure with [`KEEP_ENV`]).
    dir: Option<TempDir>,
}

impl DataCenter {
    /// Starts everything and waits until each daemon runs.
    pub fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        let deb = std::fs::canonicalize(&options.deb)
            .map_err(Error::io(format!("reading {}", options.deb.display())))?;
        let package = debs::control_field(&deb, "Package")?;
        if package != "neco" {
            return Err(Error::InvalidArgument(format!(
                "{} is the package {package:?}, not neco",
                deb.display()
            )));
        }
        let version = debs::control_field(&deb, "Version")?;
        let host_packages = HostPackages::for_deb(&deb)?;
        let dir = tempfile::Builder::new()
            .prefix("dctest-dc-")
            .tempdir()
            .map_err(Error::io("creating the data center directory"))?;

        let etcd = EtcdCluster::start(ETCD_MEMBERS)?;
        let mirror = Mirror::start(&MirrorSeed::neco_2025()?)?;
        for (repository, tag) in &options.images {
            let (_, path) = repository.split_once('/').ok_or_else(|| {
                Error::InvalidArgument(format!("image {repository:?}: expected host/path"))
            })?;
            if !mirror.registry.tags(path).unwrap_or_default().contains(tag) {
                mirror.registry.push_image(path, tag)?;
            }
        }
        let sabakan = SabakanStandIn::start()?;
        let webhook = WebhookSink::start()?;
        mirror.github.add_repo(NECO_REPOSITORY);
        let release = publish(&mirror, &deb, false)?;

        let mut dc = Self {
            servers: BTreeMap::new(),
            etcd,
            mirror,
            sabakan,
            webhook,
            options: Options {
                deb,
                ..options.clone()
            },
            version,
            release,
            host_packages,
            started,
            path: dir.path().to_owned(),
            dir: Some(dir),
        };
        for lrn in 0..options.servers {
            dc.add_server(lrn)?;
        }
        for server in dc.servers.values() {
            for sup in [&server.updater, &server.worker] {
                sup.wait_for_start(1, Duration::from_secs(10))?;
            }
        }
        eprintln!(
            "dctest: data center up in {:.1}s: {} boot servers, neco {} (directory {})",
            started.elapsed().as_secs_f64(),
            dc.servers.len(),
            dc.version,
            dc.dir().display()
        );
        Ok(dc)
    }

    /// The directory holding the roots and logs.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The version of the installed neco package (what `neco setup` requests).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The package installed on the boot servers.
    pub fn deb(&self) -> &Path {
        &self.options.deb
    }

    /// The release `release-<version>` of the installed package.
    pub fn release(&self) -> &PublishedRelease {
        &self.release
    }

    /// How long ago [`Self::start`] began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The LRNs of the boot servers, in order.
    pub fn lrns(&self) -> Vec<u32> {
        self.servers.keys().copied().collect()
    }

    /// Every boot server, in LRN order.
    pub fn servers(&self) -> impl Iterator<Item = &BootServer> {
        self.servers.values()
    }

    /// One boot server.
    pub fn server(&self, lrn: u32) -> Result<&BootServer> {
        self.servers
            .get(&lrn)
            .ok_or_else(|| Error::InvalidArgument(format!("no boot server {lrn}")))
    }

    /// The root directory of a boot server.
    pub fn root(&self, lrn: u32) -> Result<&Path> {
        Ok(self.server(lrn)?.root())
    }

    /// Runs `<root>/usr/bin/neco --root <root> ARGS…` of boot server `lrn`, whatever its exit
    /// status.
    pub fn neco<S: AsRef<str>>(&self, lrn: u32, args: &[S]) -> Result<Output> {
        let root = self.root(lrn)?;
        let mut command = daemon_command(&root.join("usr/bin/neco"), root);
        command.args(args.iter().map(AsRef::as_ref));
        output_with_timeout(&mut command, CLI_TIMEOUT)
    }

    /// Like [`Self::neco`], but a non-zero exit is an error carrying stderr; returns stdout.
    pub fn neco_ok<S: AsRef<str>>(&self, lrn: u32, args: &[S]) -> Result<String> {
        let output = self.neco(lrn, args)?;
        let shown = args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
        if !output.status.success() {
            return Err(Error::ProcessExited {
                name: format!("neco {shown} (boot server {lrn})"),
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `neco status --json` of boot server `lrn`.
    pub fn status_json(&self, lrn: u32) -> Result<serde_json::Value> {
        let text = self.neco_ok(lrn, &["status", "--json"])?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Probes every [`POLL_INTERVAL`] until `probe` returns `Ok`; `Err(reason)` means "not
    /// yet", and the last reason is in the timeout error.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let reason = match probe(self) {
                Ok(value) => {
                    eprintln!(
                        "dctest: [{:6.1}s] {what} (after {:.1}s)",
                        self.elapsed().as_secs_f64(),
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(value);
                }
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    timeout,
                    last_error: reason,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Both daemon logs of boot server `lrn` (empty for an unknown server).
    pub fn logs_of(&self, lrn: u32) -> String {
        self.servers
            .get(&lrn)
            .map(BootServer::logs)
            .unwrap_or_default()
    }

    /// Creates boot server `lrn` with the package of [`Options::deb`] installed and starts its
    /// daemons (for `neco join`; it is not registered in etcd by this).
    pub fn add_server(&mut self, lrn: u32) -> Result<()> {
        if self.servers.contains_key(&lrn) {
            return Err(Error::InvalidArgument(format!(
                "boot server {lrn} exists already"
            )));
        }
        let server = self.create_server(lrn)?;
        self.servers.insert(lrn, server);
        Ok(())
    }

    /// Stops both daemons of boot server `lrn` by PID, as a server that is switched off; its
    /// root and logs stay.
    pub fn stop_server(&mut self, lrn: u32) -> Result<()> {
        self.servers
            .get_mut(&lrn)
            .ok_or_else(|| Error::InvalidArgument(format!("no boot server {lrn}")))?
            .stop()
    }

    /// Stops the worker of boot server `lrn` by PID (SIGKILL) and starts it no more, as a worker
    /// that died for good; the server's updater keeps running. Returns the PID it had.
    pub fn stop_worker(&mut self, lrn: u32) -> Result<Option<u32>> {
        let worker = &mut self
            .servers
            .get_mut(&lrn)
            .ok_or_else(|| Error::InvalidArgument(format!("no boot server {lrn}")))?
            .worker;
        let pid = worker.pid();
        worker.stop()?;
        Ok(pid)
    }

    /// Kills the worker of boot server `lrn` (SIGKILL); its supervisor starts it again.
    /// Returns the killed PID.
    pub fn kill_worker(&self, lrn: u32) -> Result<Option<u32>> {
        self.server(lrn)?.worker.kill()
    }

    /// Kills the updater of boot server `lrn` (SIGKILL); its supervisor starts it again.
    pub fn kill_updater(&self, lrn: u32) -> Result<Option<u32>> {
        self.server(lrn)?.updater.kill()
    }

    /// The boot server whose updater holds `leader/updater/`: the oldest key of the election,
    /// found in the log of the updater that logged it when it became the leader. For a leader
    /// that was just killed, this is its server until its session TTL expires.
    pub fn updater_leader(&self) -> Result<Option<u32>> {
        let keys = self.etcd.get_prefix("/neco/leader/updater/")?;
        let Some(leader) = keys.iter().min_by_key(|kv| kv.create_revision) else {
            return Ok(None);
        };
        // JSON logs quote the key.
        let needle = format!("{}\"", leader.key);
        self.servers
            .values()
            .find(|s| s.updater.log().contains(&needle))
            .map(|s| Some(s.lrn))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the leader key {} is in no updater's log",
                    leader.key
                ))
            })
    }

    /// Kills the updater that is the leader (SIGKILL, restarted by its supervisor), waiting up
    /// to 30 s for a leader to exist; returns its LRN.
    pub fn kill_updater_leader(&self) -> Result<u32> {
        let lrn = self.wait_until("an updater leads", Duration::from_secs(30), |dc| {
            match dc.updater_leader() {
                Ok(Some(lrn)) => Ok(lrn),
                Ok(None) => Err("no leader key".into()),
                Err(e) => Err(e.to_string()),
            }
        })?;
        self.kill_updater(lrn)?;
        Ok(lrn)
    }

    /// Publishes a neco package as the release `release-<version>` of `cybozu-go/neco`: the
    /// `.deb` (without GitHub's digest) and its `.sha256`, as `cargo xtask release` uploads
    /// them; a pre-release when `prerelease`.
    pub fn publish_release(&self, deb: &Path, prerelease: bool) -> Result<PublishedRelease> {
        publish(&self.mirror, deb, prerelease)
    }

    /// Sets or clears the pre-release flag of a published release (a person promoting it).
    pub fn set_prerelease(&self, release: &PublishedRelease, prerelease: bool) -> Result<()> {
        self.mirror
            .github
            .set_prerelease(NECO_REPOSITORY, release.id, prerelease)
    }

    /// How many requests for releases of `cybozu-go/neco` the GitHub stand-in received (the
    /// updaters' release checks and the workers' downloads).
    pub fn neco_release_requests(&self) -> usize {
        let prefix = format!("/repos/{NECO_REPOSITORY}/releases");
        self.mirror
            .github
            .requests()
            .iter()
            .filter(|r| r.path.starts_with(&prefix))
            .count()
    }

    /// A report of every process: the end of each daemon log, of each etcd member's log and
    /// of the registry's log.
    pub fn report(&self, lines: usize) -> String {
        let mut out = String::new();
        for server in self.servers.values() {
            for sup in [&server.updater, &server.worker] {
                let _ = writeln!(
                    out,
                    "===== {} ({}; starts {}, exits {:?}) =====\n{}",
                    sup.name(),
                    sup.log_path().display(),
                    sup.starts(),
                    sup.exit_codes(),
                    tail(&sup.log(), lines)
                );
            }
            let actions = server.service_actions();
            let _ = writeln!(
                out,
                "===== services of boot server {} =====\n{}",
                server.lrn,
                actions.join("\n")
            );
        }
        for i in 0..self.etcd.size() {
            if let Some(path) = self.etcd.log_path(i) {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "===== etcd m{i} ({}) =====\n{}",
                    path.display(),
                    tail(&text, 20)
                );
            }
        }
        let registry = std::fs::read_to_string(self.mirror.registry.log_path()).unwrap_or_default();
        let _ = writeln!(
            out,
            "===== registry ({}) =====\n{}",
            self.mirror.registry.log_path().display(),
            tail(&registry, 20)
        );
        out
    }

    fn create_server(&self, lrn: u32) -> Result<BootServer> {
        let root = self.dir().join(format!("boot-{lrn}"));
        let logs = self.dir().join("logs");
        std::fs::create_dir_all(root.join("etc/neco"))
            .map_err(Error::io(format!("creating {}", root.display())))?;
        self.host_packages.seed(&root)?;
        write(&root.join("etc/neco/config.toml"), &self.config_toml()?)?;
        write(&root.join("etc/neco/rack"), &format!("{lrn}\n"))?;
        dpkg_install(&root, &self.options.deb)?;

        let mut updater = daemon_command(&root.join("usr/sbin/neco-updater"), &root);
        updater
            .arg("--session-ttl")
            .arg(format!("{}ms", self.options.session_ttl.as_millis()))
            .args(["--log-format", "json"]);
        let mut worker = daemon_command(&root.join("usr/sbin/neco-worker"), &root);
        worker.args(["--service-manager", "log", "--log-format", "json"]);
        let updater = Supervisor::start_with_delay(
            format!("boot-{lrn} neco-updater"),
            &updater,
            &logs.join(format!("boot-{lrn}-updater.log")),
            self.options.restart_delay,
        )?;
        let worker = Supervisor::start_with_delay(
            format!("boot-{lrn} neco-worker"),
            &worker,
            &logs.join(format!("boot-{lrn}-worker.log")),
            self.options.restart_delay,
        )?;
        Ok(BootServer {
            lrn,
            root,
            updater,
            worker,
        })
    }

    /// `etc/neco/config.toml` of every boot server.
    fn config_toml(&self) -> Result<String> {
        use toml::Value;
        let table = |pairs: Vec<(&str, Value)>| {
            Value::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        };
        let text = |s: String| Value::String(s);
        let registries = self
            .mirror
            .registry_overrides()
            .into_iter()
            .filter_map(|o| {
                o.split_once('=')
                    .map(|(host, url)| (host.to_owned(), text(url.to_owned())))
            })
            .collect::<toml::Table>();
        let config = table(vec![
            (
                "etcd",
                table(vec![(
                    "endpoints",
                    Value::Array(self.etcd.endpoints().into_iter().map(text).collect()),
                )]),
            ),
            (
                "github",
                table(vec![
                    (
                        "api-url",
                        text(format!("{}/", self.mirror.github.base_url())),
                    ),
                    ("repository", text(NECO_REPOSITORY.to_owned())),
                ]),
            ),
            ("registries", Value::Table(registries)),
            (
                "sabakan",
                table(vec![("url", text(format!("{}/", self.sabakan.base_url())))]),
            ),
            (
                "os-image",
                table(vec![(
                    "base-url",
                    text(format!("{}/{{channel}}/", self.mirror.feed.base_url())),
                )]),
            ),
        ]);
        let body = toml::to_string(&config)
            .map_err(|e| Error::InvalidArgument(format!("rendering config.toml: {e}")))?;
        Ok(format!(
            "# A boot server of the dctest data center: everything is on loopback.\n{body}"
        ))
    }
}

impl Drop for DataCenter {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "dctest: the test failed after {:.1}s; the end of every log follows\n{}",
                self.elapsed().as_secs_f64(),
                self.report(FAILURE_LOG_LINES)
            );
        }
        for server in self.servers.values_mut() {
            if let Err(e) = server.stop() {
                eprintln!("dctest: stopping boot server {}: {e}", server.lrn);
            }
        }
        if let Some(dir) = self.dir.take() {
            if failed && std::env::var_os(KEEP_ENV).is_some() {
                eprintln!(
                    "dctest: kept the data center directory {}",
                    dir.keep().display()
                );
            } else if failed {
                eprintln!(
                    "dctest: set {KEEP_ENV}=1 to keep the roots and full logs of a failed run"
                );
            }
        }
    }
}

/// Finds the neco package under test: `$NECO_DEB`, else the highest version of
/// `target/debian/neco_*_amd64.deb` of this workspace (or of `$CARGO_TARGET_DIR`). Missing, it
/// is an error saying how to build it: the suites never skip silently.
pub fn find_neco_deb() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(DEB_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{DEB_ENV}={} is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    let dir = crate::util::target_dir().join("debian");
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name
                .strip_prefix("neco_")
                .and_then(|n| n.strip_suffix("_amd64.deb"))
            {
                found.push((version.to_owned(), entry.path()));
            }
        }
    }
    let mut best: Option<(String, PathBuf)> = None;
    for (version, path) in found {
        let newer = match &best {
            None => true,
            Some((best_version, _)) => version_greater(&version, best_version)?,
        };
        if newer {
            best = Some((version, path));
        }
    }
    best.map(|(_, path)| path).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "no neco package in {}: build it first with `cargo xtask release release-<version> \
             --no-publish --allow-dirty` (it writes target/debian/neco_<version>_amd64.deb), or \
             set {DEB_ENV} to a package file",
            dir.display()
        ))
    })
}

/// `dpkg --compare-versions a gt b`.
pub fn version_greater(a: &str, b: &str) -> Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map_err(Error::io("running dpkg --compare-versions"))?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(Error::InvalidArgument(format!(
            "dpkg --compare-versions {a:?} gt {b:?}: {status}"
        ))),
    }
}

/// The installed version of `package` in the dpkg database under `root`.
pub fn installed_version(root: &Path, package: &str) -> Result<Option<String>> {
    let output = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${db:Status-Status} ${Version}", package])
        .output()
        .map_err(Error::io("running dpkg-query"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .strip_prefix("installed ")
        .map(str::to_owned))
}

/// Publishes `deb` on the GitHub stand-in's `cybozu-go/neco`.
fn publish(mirror: &Mirror, deb: &Path, prerelease: bool) -> Result<PublishedRelease> {
    let version = debs::control_field(deb, "Version")?;
    let bytes = std::fs::read(deb).map_err(Error::io(format!("reading {}", deb.display())))?;
    let asset = format!("neco_{version}_amd64.deb");
    let sha256 = sha256_digest(&bytes);
    let sums = format!("{}  {asset}\n", sha256.trim_start_matches("sha256:"));
    let tag = format!("release-{version}");
    let id = mirror.github.add_release(
        NECO_REPOSITORY,
        ReleaseSpec::new(&tag)
            .prerelease(prerelease)
            .asset(AssetSpec::new(&format!("{asset}.sha256"), sums, false))
            .asset(AssetSpec::new(&asset, bytes, false)),
    );
    Ok(PublishedRelease {
        id,
        tag,
        version,
        asset,
        sha256,
    })
}

/// A daemon or CLI of a boot server: run from its root, loopback without proxies.
fn daemon_command(program: &Path, root: &Path) -> Command {
    let mut command = Command::new(program);
    command.arg("--root").arg(root).current_dir(root);
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
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("RUST_BACKTRACE", "1")
        .env(
            "RUST_LOG",
            std::env::var("DCTEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    command
}

/// `dpkg -i` into a root, as DESIGN §5 prescribes for a simulated boot server.
fn dpkg_install(root: &Path, deb: &Path) -> Result<()> {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--force-not-root")
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .arg("--install")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive");
    std::fs::create_dir_all(root.join("var/log"))
        .map_err(Error::io(format!("creating {}/var/log", root.display())))?;
    let output = output_with_timeout(&mut command, Duration::from_secs(60))?;
    if !output.status.success() {
        return Err(Error::ProcessExited {
            name: format!("dpkg --root={} --install {}", root.display(), deb.display()),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The host's dpkg status stanzas of the packages a package depends on (transitively), so that
/// a fresh root's database has them as installed, like a real boot server: `dpkg --root`
/// checks dependencies against the root's database, which would otherwise be empty.
#[derive(Debug, Clone)]
struct HostPackages {
    /// `dpkg-query --status` of the packages.
    stanzas: String,
    /// `${binary:Package}` of each, for their (empty) file lists.
    names: Vec<String>,
}

impl HostPackages {
    fn for_deb(deb: &Path) -> Result<Self> {
        let mut fields = Command::new("dpkg-deb");
        fields
            .arg("--field")
            .arg(deb)
            .arg("Pre-Depends")
            .arg("Depends");
        let fields = run_query(&mut fields)?;
        let mut queue: Vec<String> = fields
            .lines()
            .filter_map(|l| l.split_once(':').map(|(_, v)| v))
            .flat_map(relation_names)
            .collect();
        let mut seen = BTreeSet::new();
        let mut installed = Vec::new();
        while let Some(name) = queue.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let mut query = Command::new("dpkg-query");
            query.args([
                "-W",
                "-f=${db:Status-Status}\n${Pre-Depends}, ${Depends}\n",
                &name,
            ]);
            // Virtual or absent packages cannot be copied; dpkg reports them if they matter.
            if let Ok(text) = run_query(&mut query) {
                if let Some(relations) = text.strip_prefix("installed\n") {
                    queue.extend(relations.lines().flat_map(relation_names));
                    installed.push(name);
                }
            }
        }
        if installed.is_empty() {
            return Ok(Self {
                stanzas: String::new(),
                names: Vec::new(),
            });
        }
        let mut status = Command::new("dpkg-query");
        status.arg("--status").args(&installed);
        let stanzas = run_query(&mut status)?;
        let mut names = Command::new("dpkg-query");
        names
            .args(["-W", "-f=${binary:Package}\n"])
            .args(&installed);
        let names = run_query(&mut names)?.lines().map(str::to_owned).collect();
        Ok(Self { stanzas, names })
    }

    /// Creates the dpkg database of a fresh root holding these packages.
    fn seed(&self, root: &Path) -> Result<()> {
        let admin = root.join("var/lib/dpkg");
        for dir in ["info", "updates"] {
            std::fs::create_dir_all(admin.join(dir))
                .map_err(Error::io(format!("creating {}", admin.join(dir).display())))?;
        }
        write(&admin.join("status"), &self.stanzas)?;
        write(&admin.join("available"), "")?;
        for name in &self.names {
            write(&admin.join(format!("info/{name}.list")), "")?;
        }
        Ok(())
    }
}

/// The package names of a relation field (`a (>= 1) | b, c:any`): the first alternative of
/// each.
fn relation_names(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|relation| {
            let first = relation.split('|').next()?.trim();
            let name = first.split([' ', '(']).next()?.trim();
            let name = name.split(':').next()?.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// Runs a query command and returns its stdout; failures carry stderr.
fn run_query(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .map_err(Error::io(format!("running {command:?}")))?;
    if !output.status.success() {
        return Err(Error::ProcessExited {
            name: format!("{command:?}"),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_fields() {
        assert_eq!(
            relation_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2)"),
            vec!["libc6", "libgcc-s1"]
        );
        assert_eq!(
            relation_names(" a | b (<< 2), python3:any, , c"),
            vec!["a", "python3", "c"]
        );
        assert!(relation_names("").is_empty());
    }

    #[test]
    fn debian_version_order() {
        assert!(version_greater("2026.11.26-10", "2026.11.26-9").expect("dpkg"));
        assert!(!version_greater("2026.11.26-1", "2026.11.26-1").expect("dpkg"));
    }

    #[test]
    fn a_root_gets_the_host_packages_a_deb_depends_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut package = debs::DebPackage::simple("dctest-depends", "1.0");
        package.files.clear();
        let bytes = package.build().expect("build");
        // Add a dependency on the host's dpkg by repacking the control file.
        let deb = dir.path().join(package.file_name());
        std::fs::write(&deb, bytes).expect("write");
        let tree = dir.path().join("tree");
        run_query(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree)).expect("extract");
        let control = tree.join("DEBIAN/control");
        let text = std::fs::read_to_string(&control).expect("control");
        std::fs::write(&control, format!("{text}Depends: dpkg (>= 1.0)\n")).expect("control");
        run_query(Command::new("dpkg-deb").arg("-b").arg(&tree).arg(&deb)).expect("build");

        let host = HostPackages::for_deb(&deb).expect("host packages");
        assert!(host.names.iter().any(|n| n == "dpkg"), "{:?}", host.names);
        let root = dir.path().join("root");
        host.seed(&root).expect("seed");
        dpkg_install(&root, &deb).expect("install with its dependency satisfied");
        assert_eq!(
            installed_version(&root, "dctest-depends").expect("query"),
            Some("1.0".into())
        );
        assert!(installed_version(&root, "dpkg").expect("query").is_some());
    }
}
