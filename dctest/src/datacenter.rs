//! The virtual data center: everything the suites of DESIGN §7 run against, on one machine,
//! on a private network of its own.
//!
//! [`DataCenter::start`] brings up
//! - the private network ([`Lan`]) and, on its bridge, the mirror of upstream seeded with every
//!   pinned version ([`Mirror::start_on`] with [`MirrorSeed::neco_2025`]: Debian's registry, the
//!   GitHub stand-in with the pinned deb releases, the OS feed), a sabakan stand-in and a
//!   webhook sink;
//! - neco's own repository `cybozu-go/neco` in the same GitHub stand-in, with the full release
//!   `release-<version>` of the neco package under test (the `.deb` and its `.sha256`);
//! - boot servers `0..N`, each a [`Machine`] booted with systemd as PID 1 ([`BootServer`]):
//!   `/etc/neco/config.toml` pointing at all of the above, `/etc/neco/rack`, an etcd member
//!   (Debian's `etcd.service`) on servers 0, 1 and 2, and the neco package installed with plain
//!   `dpkg -i`, whose postinst starts `neco-updater` and `neco-worker` as systemd units.
//!
//! Everything is removed when the data center is dropped (machines killed, layers, mounts and
//! namespaces removed, processes stopped by PID), also when the test panics; a panicking test
//! first gets the end of every journal on stderr.

use crate::boot_server::{self, BootServer, Setup, ETCD_UNIT};
use crate::debs;
use crate::error::{Error, Result};
use crate::etcd::EtcdClient;
use crate::github::{AssetSpec, ReleaseSpec};
use crate::machine::{layers_dir, sweep_leftovers, BaseImage, BOOT_TIMEOUT};
use crate::mirror::{Mirror, MirrorSeed};
use crate::network::Lan;
use crate::sabakan::SabakanStandIn;
use crate::store::Store;
use crate::util::{sha256_digest, tail};
use crate::webhook::WebhookSink;
use std::collections::BTreeMap;
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
/// The boot servers that run an etcd member, as in neco.
pub const ETCD_MEMBERS: [u32; 3] = [0, 1, 2];
/// Lines of each journal printed when a test fails.
const FAILURE_LOG_LINES: usize = 150;
/// Set to keep the directory of a failed data center (layers, consoles) for inspection.
pub const KEEP_ENV: &str = "DCTEST_KEEP";
/// The package file of the neco package under test, when set.
pub const DEB_ENV: &str = "NECO_DEB";
/// How long a service of the pins may take to answer.
const SERVICE_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long both daemons of a new boot server may take to become active.
const DAEMONS_TIMEOUT: Duration = Duration::from_secs(30);

/// How to build the data center.
#[derive(Debug, Clone)]
pub struct Options {
    /// The neco package installed on every boot server and published as the current release.
    pub deb: PathBuf,
    /// Boot servers `0..servers` are created (at least the three etcd members).
    pub servers: u32,
    /// `neco-updater --session-ttl`.
    pub session_ttl: Duration,
    /// Images (`host/path`, tag) pushed into the registry mirror besides the seed's: the pins
    /// of the package under test, which a nightly candidate may have moved past the seed. The
    /// mirror's images are made from repository and tag alone, so a tag pushed here has the
    /// digest any other mirror gave it.
    pub images: Vec<(String, String)>,
    /// A store of a candidate's upstream artifacts ([`crate::store`]) served besides the seed:
    /// its images pushed into the registry under their pinned repositories and tags, its debs
    /// as the assets of their releases, its OS files as the feed's files of the pinned version.
    pub store: Option<PathBuf>,
}

impl Options {
    /// Three boot servers, session TTL 3 s, the seed's images only.
    pub fn new(deb: impl Into<PathBuf>) -> Self {
        Self {
            deb: deb.into(),
            servers: 3,
            session_ttl: DEFAULT_SESSION_TTL,
            images: Vec::new(),
            store: None,
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

/// The running data center. Dropping it removes everything.
#[derive(Debug)]
pub struct DataCenter {
    // Field order is drop order: the machines go first, then the servers they talk to, then
    // the network, then the directory of the layers.
    servers: BTreeMap<u32, BootServer>,
    /// etcdctl against the members on the boot servers (from the bridge's namespace).
    pub etcd: EtcdClient,
    /// The mirror of upstream; `mirror.github` also serves `cybozu-go/neco`.
    pub mirror: Mirror,
    pub sabakan: SabakanStandIn,
    pub webhook: WebhookSink,
    lan: Lan,
    base: BaseImage,
    options: Options,
    version: String,
    release: PublishedRelease,
    started: Instant,
    path: PathBuf,
    /// Taken on drop (kept on a failure with [`KEEP_ENV`]).
    dir: Option<TempDir>,
}

impl DataCenter {
    /// Starts everything and waits until each daemon runs.
    pub fn start(options: Options) -> Result<Self> {
        let started = Instant::now();
        if options.servers < ETCD_MEMBERS.len() as u32 {
            return Err(Error::InvalidArgument(format!(
                "{} boot servers: the data center needs at least {} (the etcd members)",
                options.servers,
                ETCD_MEMBERS.len()
            )));
        }
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
        sweep_leftovers();
        let base = BaseImage::ensure()?;
        let dir = layers_dir()?;
        let lan = Lan::create()?;

        let mirror = Mirror::start_on(&MirrorSeed::neco_2025()?, &lan)?;
        for (repository, tag) in &options.images {
            let (_, path) = repository.split_once('/').ok_or_else(|| {
                Error::InvalidArgument(format!("image {repository:?}: expected host/path"))
            })?;
            if !mirror.registry.tags(path).unwrap_or_default().contains(tag) {
                mirror.registry.push_image(path, tag)?;
            }
        }
        if let Some(dir) = &options.store {
            serve_store(&mirror, &Store::new(dir))?;
        }
        let sabakan = SabakanStandIn::start_on(lan.bind("sabakan")?.0)?;
        let webhook = WebhookSink::start_on(lan.bind("webhook")?.0)?;
        mirror.github.add_repo(NECO_REPOSITORY);
        let release = publish(&mirror, &deb, false)?;
        let endpoints = ETCD_MEMBERS
            .iter()
            .map(|lrn| boot_server::etcd_endpoint(*lrn))
            .collect::<Result<Vec<_>>>()?;
        let etcd = EtcdClient::new(endpoints, Some(lan.bridge().path()));

        let mut dc = Self {
            servers: BTreeMap::new(),
            etcd,
            mirror,
            sabakan,
            webhook,
            lan,
            base,
            options: Options {
                deb,
                ..options.clone()
            },
            version,
            release,
            started,
            path: dir.path().to_owned(),
            dir: Some(dir),
        };
        // The members wait for each other (etcd is Type=notify and needs a quorum): every
        // machine is started before any boot is waited for.
        for lrn in 0..options.servers {
            let mut server = dc.create_server(lrn)?;
            server.machine_mut().start()?;
            dc.servers.insert(lrn, server);
        }
        for server in dc.servers.values() {
            server.machine().wait_running(BOOT_TIMEOUT)?;
        }
        let booted = started.elapsed();
        for server in dc.servers.values() {
            server.install(&dc.options.deb)?;
        }
        for server in dc.servers.values() {
            wait_daemons(server)?;
        }
        let memory = dc
            .servers
            .values()
            .map(|s| {
                s.machine()
                    .memory()
                    .map(|bytes| format!("{:.0}", bytes as f64 / f64::from(1 << 20)))
                    .unwrap_or_else(|e| e.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "dctest: data center up in {:.1}s (machines booted at {:.1}s): {} boot servers \
             (memory MiB: {memory}), neco {} (directory {})",
            started.elapsed().as_secs_f64(),
            booted.as_secs_f64(),
            dc.servers.len(),
            dc.version,
            dc.dir().display()
        );
        Ok(dc)
    }

    /// The directory holding the machines' layers and consoles.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The private network.
    pub fn lan(&self) -> &Lan {
        &self.lan
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

    fn server_mut(&mut self, lrn: u32) -> Result<&mut BootServer> {
        self.servers
            .get_mut(&lrn)
            .ok_or_else(|| Error::InvalidArgument(format!("no boot server {lrn}")))
    }

    /// The root directory of a boot server, as the host sees it.
    pub fn root(&self, lrn: u32) -> Result<&Path> {
        Ok(self.server(lrn)?.root())
    }

    /// Runs `neco ARGS…` on boot server `lrn`, whatever its exit status.
    pub fn neco<S: AsRef<str>>(&self, lrn: u32, args: &[S]) -> Result<Output> {
        let mut argv = vec!["neco"];
        argv.extend(args.iter().map(AsRef::as_ref));
        self.server(lrn)?
            .machine()
            .exec_with_timeout(&argv, CLI_TIMEOUT)
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

    /// What the service of `repository` (an image of the mirror, `cybozu/etcd` or
    /// `ghcr.io/cybozu/etcd`) answers on boot server `lrn`, asked from the network on its port
    /// ([`crate::service_port`]): the body, `<repository>:<tag>\n` of the image that runs.
    pub fn service_answer(&self, lrn: u32, repository: &str) -> Result<String> {
        let addr = std::net::SocketAddrV4::new(
            boot_server::address(lrn)?,
            crate::service_port(repository),
        );
        let response = self.lan.bridge().http_get(addr, SERVICE_ANSWER_TIMEOUT)?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("http://{addr}/ answered no HTTP: {response:?}"))
            })
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

    /// Both daemon journals of boot server `lrn` (empty for an unknown server).
    pub fn logs_of(&self, lrn: u32) -> String {
        self.servers
            .get(&lrn)
            .map(BootServer::logs)
            .unwrap_or_default()
    }

    /// Creates boot server `lrn` (a new machine, no etcd member) with the package of
    /// [`Options::deb`] installed and its daemons running (for `neco join`; it is not
    /// registered in etcd by this).
    pub fn add_server(&mut self, lrn: u32) -> Result<()> {
        if self.servers.contains_key(&lrn) {
            return Err(Error::InvalidArgument(format!(
                "boot server {lrn} exists already"
            )));
        }
        let mut server = self.create_server(lrn)?;
        server.machine_mut().boot()?;
        server.install(&self.options.deb)?;
        wait_daemons(&server)?;
        self.servers.insert(lrn, server);
        Ok(())
    }

    /// Powers boot server `lrn` off (a clean halt: systemd stops every unit); its layer stays.
    pub fn stop_server(&mut self, lrn: u32) -> Result<()> {
        self.server_mut(lrn)?.machine_mut().power_off()
    }

    /// Kills the machine of boot server `lrn` at once, as a power cut: every process in it dies
    /// without stopping cleanly, and its address stops answering (connections to it hang until
    /// their peers give up). Its layer stays.
    pub fn kill_server(&mut self, lrn: u32) -> Result<()> {
        self.server_mut(lrn)?.machine_mut().kill()
    }

    /// Kills the worker of boot server `lrn` (SIGKILL) for good, as a worker that died and
    /// was not restarted: the unit is masked for this boot first (`systemctl mask --runtime`),
    /// so systemd's restart fails; the server's updater keeps running. Returns its main PID.
    pub fn stop_worker(&mut self, lrn: u32) -> Result<Option<u32>> {
        let server = self.server(lrn)?;
        server
            .machine()
            .exec_ok(&["systemctl", "mask", "--runtime", boot_server::WORKER_UNIT])?;
        server.worker().kill("SIGKILL")
    }

    /// Kills the worker of boot server `lrn` (SIGKILL); systemd starts it again. Returns the
    /// killed main PID.
    pub fn kill_worker(&self, lrn: u32) -> Result<Option<u32>> {
        self.server(lrn)?.worker().kill("SIGKILL")
    }

    /// Kills the updater of boot server `lrn` (SIGKILL); systemd starts it again.
    pub fn kill_updater(&self, lrn: u32) -> Result<Option<u32>> {
        self.server(lrn)?.updater().kill("SIGKILL")
    }

    /// Kills the etcd member of boot server `lrn` (SIGKILL) and keeps it stopped, as a member
    /// that died; [`Self::start_etcd_member`] starts it again from its data.
    pub fn kill_etcd_member(&self, lrn: u32) -> Result<()> {
        let machine = self.server(lrn)?.machine();
        machine.kill_unit(ETCD_UNIT, "SIGKILL")?;
        // Restart=on-abnormal would bring it back: stop it for good.
        machine.exec_ok(&["systemctl", "stop", ETCD_UNIT]).map(drop)
    }

    /// Starts the etcd member of boot server `lrn` again.
    pub fn start_etcd_member(&self, lrn: u32) -> Result<()> {
        self.server(lrn)?
            .machine()
            .exec_ok(&["systemctl", "start", ETCD_UNIT])
            .map(drop)
    }

    /// Makes the etcd member of boot server `lrn` the raft leader (`etcdctl move-leader`).
    pub fn move_etcd_leader(&self, lrn: u32) -> Result<()> {
        self.etcd.move_leader_to(&boot_server::etcd_endpoint(lrn)?)
    }

    /// The boot server whose etcd member is the raft leader now.
    pub fn etcd_leader(&self) -> Result<u32> {
        let (leader, _) = self.etcd.leader()?;
        self.lrns()
            .into_iter()
            .find(|lrn| boot_server::etcd_endpoint(*lrn).is_ok_and(|e| e == leader))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the etcd leader {leader} is no boot server's"))
            })
    }

    /// The boot server whose updater holds `leader/updater/`: the oldest key of the election,
    /// found in the journal of the updater that logged it when it became the leader. For a
    /// leader that was just killed, this is its server until its session TTL expires.
    pub fn updater_leader(&self) -> Result<Option<u32>> {
        let keys = self.etcd.get_prefix("/neco/leader/updater/")?;
        let Some(leader) = keys.iter().min_by_key(|kv| kv.create_revision) else {
            return Ok(None);
        };
        // JSON logs quote the key.
        let needle = format!("{}\"", leader.key);
        self.servers
            .values()
            .find(|s| s.updater().journal().contains(&needle))
            .map(|s| Some(s.lrn()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the leader key {} is in no updater's journal",
                    leader.key
                ))
            })
    }

    /// Kills the updater that is the leader (SIGKILL, restarted by systemd), waiting up to
    /// 30 s for a leader to exist; returns its LRN.
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

    /// A report of everything: the end of each daemon's and etcd member's journal, each
    /// machine's failed units, and the registries' logs.
    pub fn report(&self, lines: usize) -> String {
        let mut out = String::new();
        for server in self.servers.values() {
            for daemon in [server.updater(), server.worker()] {
                let state = daemon
                    .state()
                    .map(|s| {
                        format!(
                            "{}/{} result {} restarts {}",
                            s.active, s.sub, s.result, s.restarts
                        )
                    })
                    .unwrap_or_else(|e| e.to_string());
                let mut exits: BTreeMap<String, usize> = BTreeMap::new();
                for exit in daemon.exits() {
                    let key = match (exit.code, exit.signal) {
                        (Some(code), _) => format!("status {code}"),
                        (None, Some(signal)) => format!("signal {signal}"),
                        (None, None) => "unknown".to_owned(),
                    };
                    *exits.entry(key).or_default() += 1;
                }
                let _ = writeln!(
                    out,
                    "===== {} ({state}; starts {}, exits {exits:?}) =====\n{}",
                    daemon.name(),
                    daemon.starts(),
                    tail(&daemon.journal(), lines)
                );
            }
            let machine = server.machine();
            if ETCD_MEMBERS.contains(&server.lrn()) {
                let journal = machine.journal(ETCD_UNIT).unwrap_or_else(|e| e.to_string());
                let _ = writeln!(
                    out,
                    "===== {} {ETCD_UNIT} =====\n{}",
                    machine.name(),
                    tail(&journal, 20)
                );
            }
            let failed = machine
                .exec_ok(&["systemctl", "--failed", "--no-legend", "--plain"])
                .unwrap_or_else(|e| e.to_string());
            let _ = writeln!(
                out,
                "===== {} failed units =====\n{}",
                machine.name(),
                failed.trim()
            );
        }
        let mut registries = vec![self.mirror.registry.log_path().to_owned()];
        registries.extend(self.mirror.registry_view().map(|v| v.log_path().to_owned()));
        for path in registries {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let _ = writeln!(
                out,
                "===== registry ({}) =====\n{}",
                path.display(),
                tail(&text, 20)
            );
        }
        out
    }

    fn create_server(&self, lrn: u32) -> Result<BootServer> {
        let setup = Setup {
            config_toml: self.config_toml(lrn)?,
            etcd_members: ETCD_MEMBERS.contains(&lrn).then(|| ETCD_MEMBERS.to_vec()),
            session_ttl: self.options.session_ttl,
        };
        BootServer::create(&self.base, &self.lan, self.dir(), lrn, &setup)
    }

    /// `/etc/neco/config.toml` of boot server `lrn`: every etcd member, its own first when
    /// it runs one (the daemons use the first member that answers, so a server cut off or a
    /// member killed affects the daemons that were using that member, not everyone's).
    fn config_toml(&self, lrn: u32) -> Result<String> {
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
                    Value::Array(etcd_endpoints_of(lrn)?.into_iter().map(text).collect()),
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
                    text(self.mirror.feed.file_base_template()),
                )]),
            ),
        ]);
        let body = toml::to_string(&config)
            .map_err(|e| Error::InvalidArgument(format!("rendering config.toml: {e}")))?;
        Ok(format!(
            "# A boot server of the dctest data center: everything is on its private network.\n{body}"
        ))
    }
}

impl Drop for DataCenter {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "dctest: the test failed after {:.1}s; the end of every journal follows\n{}",
                self.elapsed().as_secs_f64(),
                self.report(FAILURE_LOG_LINES)
            );
        }
        // The machines are removed (killed, unmounted, their layers deleted) here, before the
        // stand-ins and the network, all at once; with KEEP_ENV the consoles stay in the
        // directory.
        std::thread::scope(|scope| {
            for server in std::mem::take(&mut self.servers).into_values() {
                scope.spawn(move || drop(server));
            }
        });
        if let Some(dir) = self.dir.take() {
            if failed && std::env::var_os(KEEP_ENV).is_some() {
                eprintln!(
                    "dctest: kept the data center directory {}",
                    dir.keep().display()
                );
            } else if failed {
                eprintln!(
                    "dctest: set {KEEP_ENV}=1 to keep the directory (machine consoles) of a failed run"
                );
            }
        }
    }
}

/// The etcd endpoints in boot server `lrn`'s configuration: its own member first when it runs
/// one, then the others in LRN order.
pub fn etcd_endpoints_of(lrn: u32) -> Result<Vec<String>> {
    let mut members = ETCD_MEMBERS.to_vec();
    if let Some(own) = members.iter().position(|m| *m == lrn) {
        members.rotate_left(own);
    }
    members
        .into_iter()
        .map(boot_server::etcd_endpoint)
        .collect()
}

/// Waits until both daemons of `server` run (postinst started them).
fn wait_daemons(server: &BootServer) -> Result<()> {
    for daemon in [server.updater(), server.worker()] {
        daemon.wait_for_start(1, DAEMONS_TIMEOUT)?;
    }
    Ok(())
}

/// Serves what `store` holds through the mirror: images at their pinned digests, debs as the
/// assets of their releases, the OS files as the feed's files of the pinned version.
fn serve_store(mirror: &Mirror, store: &Store) -> Result<()> {
    let candidate = store.candidate()?;
    let os = &candidate.os;
    if os.channel != mirror.feed.channel() {
        return Err(Error::InvalidArgument(format!(
            "the store's OS image is of channel {:?}, the feed serves {:?}",
            os.channel,
            mirror.feed.channel()
        )));
    }
    for image in &candidate.images {
        mirror
            .registry
            .push_stored(store, image.path()?, &image.tag, &image.digest)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "serving {}:{} from the store {}: {e}",
                    image.repository,
                    image.tag,
                    store.dir().display()
                ))
            })?;
    }
    for deb in &candidate.debs {
        let content = store.deb(&deb.sha256)?;
        mirror.github.add_repo(&deb.github);
        mirror.github.replace_release(
            &deb.github,
            ReleaseSpec::new(&deb.release).asset(AssetSpec::new(&deb.asset, content, true)),
        );
    }
    mirror.feed.add_files(
        &os.version,
        store.os_file(&os.kernel_sha512)?,
        store.os_file(&os.initrd_sha512)?,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_lists_its_own_etcd_first() {
        let first = |lrn| etcd_endpoints_of(lrn).expect("endpoints")[0].clone();
        assert_eq!(first(0), "http://10.123.0.10:2379");
        assert_eq!(first(2), "http://10.123.0.12:2379");
        assert_eq!(first(3), "http://10.123.0.10:2379");
        assert_eq!(
            etcd_endpoints_of(1).expect("endpoints"),
            vec![
                "http://10.123.0.11:2379",
                "http://10.123.0.12:2379",
                "http://10.123.0.10:2379"
            ]
        );
    }

    #[test]
    fn debian_version_order() {
        assert!(version_greater("2026.11.26-10", "2026.11.26-9").expect("dpkg"));
        assert!(!version_greater("2026.11.26-1", "2026.11.26-1").expect("dpkg"));
    }
}
