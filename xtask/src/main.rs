//! `cargo xtask`: the project's automation.
//!
//! It owns the commands people and CI run (`ci`, `codegen`, `release`, `bench`): it installs
//! the Debian packages they need, then drives `cargo` and the project's binaries as processes.
//! It must build on a fresh machine with nothing but cargo and the C compiler every Rust build
//! links with: no dependency that needs a system package at build time (the test fixtures of
//! `dctest` are pure Rust; `fetch`'s TLS needs only the C compiler).
//!
//! - [`release`]: `cargo xtask release`, with [`tag`] (the tag and version rules), [`deb`]
//!   (build and package), [`publish`] (the GitHub pre-release, planned then carried out) and
//!   [`progress`] (the display of long steps);
//! - [`checks`]: the checks of a built package that `cargo xtask ci` runs.

mod checks;
mod current;
mod deb;
mod git;
mod nightly;
mod nightly_e2e;
mod progress;
mod promote;
mod publish;
mod release;
mod store;
mod tag;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Project automation for neco-rs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// What CI runs: install missing Debian packages, then the format check, clippy
    /// (`-D warnings`) and the tests, each with and without `--features release`; then build
    /// the release package (not published) and check it: metadata, files, lintian, an install
    /// into a temporary root, systemd-analyze verify, byte-identical repackaging; then every
    /// dctest suite; then `cargo xtask nightly` without --mirror against a simulated upstream
    /// (needs a clean work tree: it runs in this checkout, with a remote of its own).
    ///
    /// A failing step before the suites stops the command at once. The suites all run, also
    /// after one fails; the summary ends with a table of the suites (passed / FAILED / not run,
    /// duration, what each checks) and their wall time, and the command fails when any failed.
    Ci,
    /// Regenerate artifacts/src/generated/artifacts.rs and artifacts_release.rs with
    /// artifacts-gen.
    Codegen {
        /// Resolve against the local mirror (docker-registry, GitHub and feed stand-ins seeded
        /// with dctest/mirror/neco-pins-2025-03-10.toml) instead of upstream. For machines
        /// without access to ghcr.io, GitHub and flatcar.org.
        #[arg(long)]
        mirror: bool,
        /// Write nothing; fail when a generated file is not what a fresh resolution gives.
        #[arg(long)]
        check: bool,
    },
    /// Build the neco Debian package for a release tag and publish it as a GitHub
    /// pre-release.
    Release(ReleaseArgs),
    /// Check a built package as `cargo xtask ci` does: metadata, files, lintian, an install
    /// into a temporary root with dpkg, systemd-analyze verify (built from HEAD).
    CheckDeb {
        /// The package file.
        #[arg(value_name = "FILE")]
        deb: PathBuf,
    },
    /// The virtual data center: build the neco package (not published) and run the dctest
    /// suites against it (boot servers booted by systemd-nspawn with systemd as PID 1 on a
    /// private network, etcd members on three of them, the package installed with `dpkg -i`
    /// and its daemons run by systemd; registry mirror, GitHub / sabakan / feed / webhook
    /// stand-ins on the network), then print a summary.
    ///
    /// Every selected suite runs, also after one fails. The summary, printed on success and on
    /// failure, ends with a table of the suites: result (passed / FAILED / not run, e.g. when
    /// the package did not build), duration and what each checks, then the wall time of the
    /// suites against the goal of under 6 minutes for all of them. The command fails when any
    /// suite failed.
    Dctest {
        /// Run only this suite.
        #[arg(value_name = "SUITE", value_parser = clap::builder::PossibleValuesParser::new(SUITES))]
        suite: Option<String>,
    },
    /// The nightly pipeline: merge main into release, regenerate the release pins, build and
    /// run the release profile of dctest (bootstrap, upgrade) on the candidate; on success
    /// commit `[ci skip] YYYY.MM.DD-N`, tag `test-YYYY.MM.DD-N` and push the branch, then the
    /// tag. On any failure nothing is pushed and the repository is put back as it was.
    Nightly(NightlyArgs),
    /// The nightly end to end, as `cargo xtask ci` runs it last: `cargo xtask nightly`
    /// without --mirror against a simulated upstream (a broken blob first: nothing pushed;
    /// then the candidate tested and pushed to a bare repository on disk). Needs a clean work
    /// tree.
    NightlyE2e,
    /// Serve a simulated upstream on loopback until interrupted, for running `cargo xtask
    /// nightly` without --mirror by hand: the real docker-registry behind token authentication
    /// (ghcr.io/cybozu-go/setup-hw private, ghcr.io/cybozu/cilium a multi-platform index, a
    /// newer ghcr.io/cybozu/etcd tag than the mirror's), the GitHub and feed stand-ins; none of
    /// the bytes are the mirror's. Prints the nightly's endpoint flags and writes the
    /// credentials to target/simulated-upstream.env (mode 0600).
    SimulatedUpstream,
    /// Promote a tested candidate: tag `release-YYYY.MM.DD-N` on the commit of
    /// `test-YYYY.MM.DD-N` and push the tag (CI then builds and publishes the pre-release).
    Promote(PromoteArgs),
    /// Run a benchmark and print its report.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Cutting a release: tag the commit release-YYYY.MM.DD-N, check it out, and run
  GITHUB_TOKEN=... cargo xtask release release-YYYY.MM.DD-N
The release is published as a pre-release (staging installs it). Unticking \"pre-release\" on
GitHub makes it a full release: production installs it.")]
struct ReleaseArgs {
    /// The tag to release: release-YYYY.MM.DD-N or test-YYYY.MM.DD-N. Default: the one such
    /// tag at HEAD.
    #[arg(value_name = "TAG", conflicts_with = "version")]
    tag: Option<String>,
    /// Release this version (YYYY.MM.DD-N) under the tag release-VERSION.
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Where the package and its .sha256 file are written [default: target/debian].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Build the package, but do not publish it.
    #[arg(long)]
    no_publish: bool,
    /// Print the plan (build, package, what would change on GitHub) and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Build even though the working tree has uncommitted changes.
    #[arg(long)]
    allow_dirty: bool,
    /// The GitHub repository to publish to (owner/name) [default: the workspace's repository].
    #[arg(long, value_name = "OWNER/NAME")]
    repository: Option<String>,
    /// The GitHub REST API.
    #[arg(long, value_name = "URL", default_value = release::GITHUB_API)]
    github_api: String,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Environment: CIRCLE_BUILD_NUM (N of the version), NECO_REGISTRY_USERNAME and
NECO_REGISTRY_PASSWORD (private images), GITHUB_TOKEN (GitHub API of artifacts-gen),
ARTIFACTS_GEN_REGISTRIES / ARTIFACTS_GEN_GITHUB_API / ARTIFACTS_GEN_OS_FEED /
ARTIFACTS_GEN_OS_IMAGE_BASE (endpoints).
fetch and push run `git`, with its credentials (SSH agent, deploy key, credential helper).

Exit status: 0 pushed, dry run done, or nothing to release; 1 a step failed (named), nothing
pushed.")]
struct NightlyArgs {
    /// The git remote to fetch from and push to.
    #[arg(long, value_name = "NAME", default_value = "origin")]
    remote: String,
    /// The branch developers merge to.
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    main: String,
    /// The branch of tested candidates.
    #[arg(long, value_name = "BRANCH", default_value = "release")]
    release: String,
    /// Do everything but push, print what would be pushed, then put the repository back.
    #[arg(long)]
    dry_run: bool,
    /// N of the version YYYY.MM.DD-N [default: one more than the highest N of any test- or
    /// release- tag].
    #[arg(long, value_name = "N", env = "CIRCLE_BUILD_NUM")]
    build_num: Option<u64>,
    /// Reach a registry host at another base URL (artifacts-gen --registry), e.g.
    /// ghcr.io=http://127.0.0.1:5000. Repeatable.
    #[arg(
        long = "registry",
        value_name = "HOST=URL",
        env = "ARTIFACTS_GEN_REGISTRIES",
        value_delimiter = ','
    )]
    registries: Vec<String>,
    /// Base URL of the GitHub REST API (artifacts-gen, and the download of the current
    /// release).
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_GITHUB_API")]
    github_api: Option<String>,
    /// URL of the OS release feed for artifacts-gen.
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_OS_FEED")]
    os_feed: Option<String>,
    /// Base URL of the OS image's files and their .DIGESTS for artifacts-gen, with
    /// `{channel}`.
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_OS_IMAGE_BASE")]
    os_image_base: Option<String>,
    /// Resolve against the local mirror (as `codegen --mirror`) instead of upstream. For
    /// machines without access to ghcr.io, GitHub and flatcar.org.
    #[arg(long, conflicts_with_all = ["registries", "github_api", "os_feed", "os_image_base"])]
    mirror: bool,
    /// The package of the release running now, which the upgrade suite starts from [default:
    /// the newest release-… of --repository on GitHub; with --mirror, or when there is none,
    /// the candidate itself].
    #[arg(long, value_name = "FILE")]
    upgrade_from: Option<PathBuf>,
    /// The GitHub repository of neco's releases (owner/name) [default: the workspace's
    /// repository].
    #[arg(long, value_name = "OWNER/NAME")]
    repository: Option<String>,
    /// Where the candidate's artifacts are brought in and kept across runs [default:
    /// target/dctest-store].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PromoteArgs {
    /// The tested candidate: test-YYYY.MM.DD-N.
    #[arg(value_name = "TAG")]
    tag: String,
    /// The git remote to fetch from and push to.
    #[arg(long, value_name = "NAME", default_value = "origin")]
    remote: String,
    /// The branch release tags must be on.
    #[arg(long, value_name = "BRANCH", default_value = "release")]
    release: String,
    /// Check and print what would be pushed; create and push nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// artifacts-gen resolution: concurrent against sequential and the ideal bound, tag
    /// selection at 100,000 tags, and against `skopeo list-tags` on a real registry.
    Resolve,
    /// The lock-step rollout: 3, 10 and 30 in-process workers with no-op steps against a real
    /// 3-member etcd; time per rollout, per step and per step per worker, against the latency
    /// of one etcd write and one put → watch round trip; goal ≤ 50 ms per step at 30 workers.
    Rollout,
}

/// Debian packages the tests need.
const TEST_PACKAGES: &[&str] = &[
    "docker-registry",
    "etcd-server",
    "etcd-client",
    // etcd-client (the crate) generates its gRPC code with protoc at build time.
    "protobuf-compiler",
    // The release package: dpkg-deb and dpkg-shlibdeps, strip, its checks (lintian,
    // systemd-analyze verify).
    "dpkg-dev",
    "binutils",
    "lintian",
    "systemd",
    // The package depends on podman (its checks copy the host's dpkg status of every
    // dependency); worker's test of step 3's units verifies their /usr/bin/podman.
    "podman",
    // check-jsonschema (from PyPI, into a virtualenv) validates .circleci/config.yml.
    "python3-venv",
    // The machines of dctest: their root file system, systemd-nspawn, network namespaces.
    "mmdebstrap",
    "systemd-container",
    "iproute2",
    // The certificates of the TLS tests (a CA, server and client certificates).
    "openssl",
];

/// The version of the package `cargo xtask ci` builds and checks (dctest's: it parses as
/// YYYY.MM.DD-N and is newer than any real release).
const CI_TAG: &str = "test-9999.12.31-99999";
/// Debian packages the benchmarks need.
const BENCH_PACKAGES: &[&str] = &["docker-registry", "skopeo"];

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match workspace_root() {
        Ok(root) => match cli.command {
            Cmd::Ci => ci(&root),
            Cmd::Codegen { mirror, check } => codegen(&root, mirror, check),
            Cmd::Release(args) => release::run(&root, &cargo(), &release_options(args)),
            Cmd::CheckDeb { deb } => check_deb(&root, &deb),
            Cmd::Dctest { suite } => dctest(&root, suite.as_deref()),
            Cmd::Nightly(args) => nightly(&root, args),
            Cmd::SimulatedUpstream => simulated_upstream(&root),
            Cmd::NightlyE2e => {
                ensure_packages(TEST_PACKAGES).and_then(|()| nightly_e2e::run(&root, &cargo()))
            }
            Cmd::Promote(args) => promote::run(&promote::Options {
                repo: root.clone(),
                remote: args.remote,
                release: args.release,
                tag: args.tag,
                dry_run: args.dry_run,
            }),
            Cmd::Bench {
                bench: Bench::Resolve,
            } => bench_resolve(&root),
            Cmd::Bench {
                bench: Bench::Rollout,
            } => bench_rollout(&root),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask is not inside the workspace")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs a command in `dir`, echoing it; fails when it fails.
fn run(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A sequence of named steps with their durations, summarised at the end; with the table of
/// the dctest suites once they are planned.
struct Steps {
    done: Vec<(String, Duration)>,
    notes: Vec<String>,
    suites: Vec<SuiteRun>,
}

impl Steps {
    fn new() -> Self {
        Self {
            done: Vec::new(),
            notes: Vec::new(),
            suites: Vec::new(),
        }
    }

    /// A line printed with the summary.
    fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    /// The suites the command will run: the summary reports each as not run until it ran.
    fn plan_suites(&mut self, suites: &[&str]) {
        self.suites = suites
            .iter()
            .map(|suite| SuiteRun {
                suite: (*suite).to_owned(),
                result: SuiteResult::NotRun,
                took: Duration::ZERO,
            })
            .collect();
    }

    fn step(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        eprintln!("\n==> {name}");
        let start = Instant::now();
        let result = f().with_context(|| format!("step `{name}` failed"));
        self.done.push((name.to_owned(), start.elapsed()));
        if result.is_err() {
            self.summary("FAILED");
        }
        result
    }

    fn summary(&self, outcome: &str) {
        eprintln!("\n{outcome}:");
        for (name, took) in &self.done {
            eprintln!("  {:>7.1}s  {name}", took.as_secs_f64());
        }
        for note in &self.notes {
            eprintln!("  {note}");
        }
        if !self.suites.is_empty() {
            print_suites(&self.suites);
        }
    }
}

/// The dctest suites (integration tests of the dctest crate behind its `suites` feature), and
/// what each checks.
const SUITES: [&str; 6] = [
    "machines",
    "bootstrap",
    "upgrade",
    "functions",
    "datacenter",
    "partition",
];

fn suite_summary(suite: &str) -> &'static str {
    match suite {
        "machines" => "two machines boot with systemd as PID 1 on the private network; they reach each other and the bridge; unit state, journal, systemctl kill, cut/heal, power off, kill; nothing left behind; the mirror's images run under podman and answer their repository and tag",
        "bootstrap" => "on machines: dpkg -i starts both daemons under systemd; neco setup 0 1 2; the first update completes; images, service units running, debs, sabakan contents, notification",
        "upgrade" => "on machines: prod ignores a pre-release; staging self-updates every server under systemd (worker exit 10 and restart, updater restarted by the package, once each), all steps complete; promotion to prod",
        "functions" => "on machines: a broken image aborts, notifies and completes after neco recover; a dead worker stops the update within seconds",
        "datacenter" => "on machines: leader updater killed, worker killed (systemd restarts them), a new machine joins and leaves, one etcd member killed (its users move to another member, no daemon restarts, the reconfiguration completes without it)",
        "partition" => "on machines: a worker's machine, then the leader updater's, cut off in the middle of an update: stopped within seconds by the side with the quorum, the failure names that server; healed, neco recover completes it, each event notified once; the raft leader's machine losing power mid-update: the update of the others completes without neco recover or a restart",
        _ => "",
    }
}

/// The goal for the wall time of all suites, one after the other.
/// (Warm caches, 2 cores, the suites on machines.)
const SUITES_GOAL: Duration = Duration::from_secs(6 * 60);

/// How a dctest suite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SuiteResult {
    Passed,
    /// Why: the exit status of `cargo test`, or why it could not run.
    Failed(String),
    NotRun,
}

/// One suite in the summary.
#[derive(Debug, Clone)]
struct SuiteRun {
    suite: String,
    result: SuiteResult,
    took: Duration,
}

/// Runs dctest suites against a package, one after the other, every one even when an earlier
/// one failed, and records each in `steps` (its summary prints the suite table). When any
/// failed, prints the summary and fails, naming them.
///
/// The data center serves a store, as in the nightly: the release pins
/// are first brought into the store from a local mirror, as the nightly brings a candidate
/// in from upstream.
fn run_suites(
    root: &Path,
    cargo: &str,
    deb: &Path,
    suites: &[&str],
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let dir = store::default_dir(root);
    let mut brought = None;
    steps.step(
        "the release pins, into the dctest store (from a local mirror)",
        || {
            let m = start_mirror()?;
            let sources = store::Sources {
                registries: store::parse_overrides(&m.registry_overrides())?,
                credentials: None,
                github_api: reqwest::Url::parse(&format!("{}/", m.github.base_url()))?,
                github_token: None,
                os_image_base: Some(m.feed.file_base_template()),
            };
            let report = store::bring_in(
                &release::github_http()?,
                &dir,
                &release_pins(root)?,
                &sources,
            )?;
            eprintln!("{}: {}", dir.display(), report.summary());
            brought = Some(report);
            Ok(())
        },
    )?;
    if let Some(report) = brought {
        steps.note(format!(
            "dctest store {}: {}",
            dir.display(),
            report.summary()
        ));
    }
    run_suites_with(
        root,
        cargo,
        deb,
        &[(dctest::store::STORE_ENV, &dir)],
        suites,
        steps,
    )
}

/// The release pins of the work tree at `repo` (`artifacts_release.rs`).
fn release_pins(repo: &Path) -> anyhow::Result<artifacts_gen::generated::PinnedSet> {
    let path = repo.join(nightly::RELEASE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(artifacts_gen::generated::parse(&path, &text)?)
}

/// [`run_suites`] with more environment for the suites (e.g. `NECO_UPGRADE_FROM`).
fn run_suites_with(
    root: &Path,
    cargo: &str,
    deb: &Path,
    env: &[(&str, &Path)],
    suites: &[&str],
    steps: &mut Steps,
) -> anyhow::Result<()> {
    steps.plan_suites(suites);
    for (suite, run) in suites.iter().zip(steps.suites.iter_mut()) {
        eprintln!("\n==> dctest {suite}: {}", suite_summary(suite));
        let more: String = env
            .iter()
            .map(|(k, v)| format!("{k}={} ", v.display()))
            .collect();
        eprintln!(
            "$ NECO_DEB={} {more}{cargo} test --locked -p dctest --features suites --test {suite}",
            deb.display()
        );
        let start = Instant::now();
        let status = Command::new(cargo)
            .args([
                "test",
                "--locked",
                "-p",
                "dctest",
                "--features",
                "suites",
                "--test",
                suite,
            ])
            .env("NECO_DEB", deb)
            .envs(env.iter().copied())
            .current_dir(root)
            .status();
        run.took = start.elapsed();
        run.result = match status {
            Ok(status) if status.success() => SuiteResult::Passed,
            Ok(status) => SuiteResult::Failed(status.to_string()),
            Err(e) => SuiteResult::Failed(format!("cannot run {cargo}: {e}")),
        };
        if let SuiteResult::Failed(why) = &run.result {
            eprintln!(
                "the {suite} suite FAILED ({why}); the logs of every process are printed above; \
                 going on with the other suites"
            );
        }
    }
    let failed: Vec<&str> = steps
        .suites
        .iter()
        .filter(|run| matches!(run.result, SuiteResult::Failed(_)))
        .map(|run| run.suite.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    steps.summary("FAILED");
    bail!(
        "{} of {} dctest suites failed: {}",
        failed.len(),
        suites.len(),
        failed.join(", ")
    )
}

/// Prints the table of the suites (result, duration, what each checks) and their wall time
/// against [`SUITES_GOAL`].
fn print_suites(runs: &[SuiteRun]) {
    eprint!("{}", suites_report(runs));
}

fn suites_report(runs: &[SuiteRun]) -> String {
    use std::fmt::Write as _;
    let header = ["suite", "result", "duration", "what was checked"];
    let rows: Vec<[String; 4]> = runs
        .iter()
        .map(|run| {
            let (result, took) = match &run.result {
                SuiteResult::Passed => ("passed".to_owned(), seconds(run.took)),
                SuiteResult::Failed(why) => (format!("FAILED ({why})"), seconds(run.took)),
                SuiteResult::NotRun => ("not run".to_owned(), String::new()),
            };
            [
                run.suite.clone(),
                result,
                took,
                suite_summary(&run.suite).to_owned(),
            ]
        })
        .collect();
    let mut out = String::from("\ndctest suites:\n");
    for line in clikit::markdown_table(header, &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let ran = runs
        .iter()
        .filter(|run| run.result != SuiteResult::NotRun)
        .count();
    let total: Duration = runs.iter().map(|run| run.took).sum();
    let all_passed =
        runs.len() == SUITES.len() && runs.iter().all(|run| run.result == SuiteResult::Passed);
    let verdict = if total >= SUITES_GOAL {
        "NOT met"
    } else if all_passed {
        "met"
    } else {
        "not comparable (not every suite ran and passed)"
    };
    let _ = writeln!(
        out,
        "  wall time of the suites: {} ({ran} of {} ran); goal: all {} suites in < {} min: {verdict}",
        minutes(total),
        runs.len(),
        SUITES.len(),
        SUITES_GOAL.as_secs() / 60,
    );
    out
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn minutes(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{} min {:02} s", secs / 60, secs % 60)
}

/// The release profile of dctest that a nightly candidate must pass: a fresh data center on
/// the candidate, and the upgrade of one to it.
const NIGHTLY_SUITES: [&str; 2] = ["bootstrap", "upgrade"];

/// The nightly candidate check: the release build, the package at the candidate's version,
/// and the release profile of dctest on it.
struct DctestCandidate {
    cargo: String,
    from: UpgradeFrom,
    /// Where the candidate's artifacts come from, and the store they are brought into.
    sources: store::Sources,
    store: PathBuf,
}

/// The release the upgrade suite starts from.
enum UpgradeFrom {
    /// A package file given by the operator.
    File(PathBuf),
    /// The newest release of the repository on GitHub (staging's), downloaded.
    Latest { api: String, repository: String },
    /// The candidate itself, repackaged one version lower (no release to start from).
    Candidate,
}

impl nightly::Candidate for DctestCandidate {
    fn test(
        &mut self,
        repo: &Path,
        tag: &tag::ReleaseTag,
        steps: &mut Steps,
    ) -> anyhow::Result<()> {
        steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
        // Before any build: a candidate whose artifacts cannot be had stops here.
        let mut brought = None;
        steps.step("the candidate's artifacts, into the dctest store", || {
            let pins = release_pins(repo)?;
            let mut sources = self.sources.clone();
            if sources.os_image_base.is_none() {
                let manifest =
                    artifacts_gen::manifest::Manifest::load(&repo.join(nightly::MANIFEST))?;
                sources.os_image_base = Some(manifest.os_image.base_url);
            }
            let report = store::bring_in(&release::github_http()?, &self.store, &pins, &sources)?;
            eprintln!("{}: {}", self.store.display(), report.summary());
            brought = Some(report);
            Ok(())
        })?;
        if let Some(report) = brought {
            steps.note(format!(
                "dctest store {}: {}",
                self.store.display(),
                report.summary()
            ));
        }
        let mut from = None;
        steps.step("the release to upgrade from", || {
            from = match &self.from {
                UpgradeFrom::File(path) => Some(path.clone()),
                UpgradeFrom::Candidate => None,
                UpgradeFrom::Latest { api, repository } => {
                    let token = release::github_token();
                    let dir = deb::target_dir(repo).join("nightly");
                    match current::download(api, repository, token.as_ref(), &dir)? {
                        Some((tag, path)) => {
                            eprintln!("{repository}: the newest release is {tag}");
                            Some(path)
                        }
                        None => None,
                    }
                }
            };
            match &from {
                Some(path) => eprintln!("upgrade from {}", path.display()),
                None => eprintln!("no release to upgrade from: the candidate is upgraded to itself repackaged one version higher"),
            }
            Ok(())
        })?;
        let deb = build_package_as(repo, &self.cargo, steps, tag, false)?;
        let mut env: Vec<(&str, &Path)> = vec![(dctest::store::STORE_ENV, self.store.as_path())];
        env.extend(from.as_deref().map(|path| ("NECO_UPGRADE_FROM", path)));
        run_suites_with(repo, &self.cargo, &deb, &env, &NIGHTLY_SUITES, steps)
    }
}

fn nightly(root: &Path, args: NightlyArgs) -> anyhow::Result<()> {
    // Where the candidate is resolved from, and its artifacts brought in from.
    let mut registries = args.registries.clone();
    let mut github_api = args.github_api.clone();
    let mut os_feed = args.os_feed.clone();
    let mut os_image_base = args.os_image_base.clone();
    // Keeps the mirror's servers alive for the run.
    let _mirror = if args.mirror {
        let m = start_mirror()?;
        registries = m.registry_overrides();
        github_api = Some(m.github.base_url());
        os_feed = Some(m.feed.feed_url());
        os_image_base = Some(m.feed.file_base_template());
        Some(m)
    } else {
        None
    };
    let mut artifacts_gen_args = Vec::new();
    for registry in &registries {
        artifacts_gen_args.extend(["--registry".to_owned(), registry.clone()]);
    }
    for (flag, value) in [
        ("--github-api", &github_api),
        ("--os-feed", &os_feed),
        ("--os-image-base", &os_image_base),
    ] {
        if let Some(value) = value {
            artifacts_gen_args.extend([flag.to_owned(), value.clone()]);
        }
    }
    let sources = store::Sources {
        registries: store::parse_overrides(&registries)?,
        credentials: artifacts_gen::cli::registry_credentials()?,
        github_api: reqwest::Url::parse(github_api.as_deref().unwrap_or(release::GITHUB_API))
            .context("the GitHub API URL")?,
        github_token: release::github_token(),
        os_image_base,
    };
    let options = nightly::Options {
        repo: root.to_path_buf(),
        remote: args.remote,
        main: args.main,
        release: args.release,
        dry_run: args.dry_run,
        build_num: args.build_num,
        today: time::OffsetDateTime::now_utc().date(),
        artifacts_gen_args,
    };
    let mut steps = Steps::new();
    let from = match (args.upgrade_from, args.mirror) {
        (Some(path), _) => UpgradeFrom::File(path),
        // The mirror has no neco releases.
        (None, true) => UpgradeFrom::Candidate,
        (None, false) => UpgradeFrom::Latest {
            api: args
                .github_api
                .clone()
                .unwrap_or_else(|| release::GITHUB_API.to_owned()),
            repository: args
                .repository
                .clone()
                .unwrap_or_else(release::default_repository),
        },
    };
    // artifacts-gen runs in this process: its warnings (expired ignore entries, new images) are
    // `tracing` events.
    clikit::init_logging(clikit::LogFormat::Human);
    let mut candidate = DctestCandidate {
        cargo: cargo(),
        from,
        sources,
        store: args
            .store
            .clone()
            .unwrap_or_else(|| store::default_dir(root)),
    };
    let outcome = nightly::run(&options, &mut candidate, &mut steps);
    match outcome {
        Ok(outcome) => {
            steps.summary("cargo xtask nightly passed");
            match outcome {
                nightly::Outcome::NothingToRelease => println!("nothing to release"),
                nightly::Outcome::Pushed { tag, commit } => {
                    println!("pushed {} and {tag} ({commit})", options.release)
                }
                nightly::Outcome::DryRun { plan, .. } => println!("{plan}"),
            }
            Ok(())
        }
        // A failed step has printed the summary.
        Err(e) => Err(e.context("cargo xtask nightly failed; nothing was pushed")),
    }
}

fn simulated_upstream(root: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    ensure_packages(TEST_PACKAGES)?;
    let (upstream, newer) = nightly_e2e::start_upstream()?;
    let env_file = deb::target_dir(root).join("simulated-upstream.env");
    let (user, password) = upstream.credentials();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&env_file)
        .with_context(|| format!("writing {}", env_file.display()))?;
    // `mode` applies to a new file only.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("writing {}", env_file.display()))?;
    writeln!(
        file,
        "NECO_REGISTRY_USERNAME={user}\nNECO_REGISTRY_PASSWORD={password}"
    )
    .with_context(|| format!("writing {}", env_file.display()))?;
    let flags: Vec<String> = nightly_e2e::endpoint_args(&upstream)
        .chunks(2)
        .map(|pair| format!("{} '{}'", pair[0], pair.get(1).map_or("", String::as_str)))
        .collect();
    println!(
        "simulated upstream running ({}:{} is new upstream: {newer})\n\
         credentials: set -a; . {}; set +a\n\
         cargo xtask nightly --remote REMOTE {}\n\
         interrupt (Ctrl-C, SIGTERM) to stop",
        nightly_e2e::NEW_IMAGE.0,
        nightly_e2e::NEW_IMAGE.1,
        env_file.display(),
        flags.join(" ")
    );
    release::block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT"),
            _ = term.recv() => Ok(()),
        }
    })??;
    eprintln!("stopping the simulated upstream");
    Ok(())
}

fn dctest(root: &Path, suite: Option<&str>) -> anyhow::Result<()> {
    let cargo = cargo();
    let suites: Vec<&str> = match suite {
        Some(s) => vec![s],
        None => SUITES.to_vec(),
    };
    let mut steps = Steps::new();
    steps.plan_suites(&suites);
    steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
    let deb = build_unpublished_package(root, &cargo, &mut steps, false)?;
    run_suites(root, &cargo, &deb, &suites, &mut steps)?;
    steps.summary("cargo xtask dctest passed");
    Ok(())
}

fn ci(root: &Path) -> anyhow::Result<()> {
    let cargo = cargo();
    // The last step runs `cargo xtask nightly` in this checkout: say so now, not after the rest.
    nightly_e2e::require_clean(root)?;
    let mut steps = Steps::new();
    steps.plan_suites(&SUITES);
    steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
    steps.step("cargo fmt --check", || {
        run(root, &cargo, &["fmt", "--all", "--check"])
    })?;
    steps.step(
        "CircleCI config (check-jsonschema --builtin-schema vendor.circle-ci)",
        || check_circleci(root),
    )?;
    for (label, features) in [("default", None), ("release", Some("artifacts/release"))] {
        // The dctest suites are linted here and run after the package is built.
        let mut clippy = vec!["clippy", "--workspace", "--all-targets", "--locked"];
        let mut test = vec!["test", "--workspace", "--locked", "--no-fail-fast"];
        if let Some(features) = features {
            clippy.extend(["--features", features]);
            test.extend(["--features", features]);
        }
        clippy.extend(["--features", "dctest/suites"]);
        clippy.extend(["--", "-D", "warnings"]);
        steps.step(&format!("clippy ({label} pins)"), || {
            run(root, &cargo, &clippy)
        })?;
        steps.step(&format!("tests ({label} pins)"), || {
            run(root, &cargo, &test)
        })?;
    }
    let deb = build_unpublished_package(root, &cargo, &mut steps, true)?;
    run_suites(root, &cargo, &deb, &SUITES, &mut steps)?;
    steps.step(
        "the nightly without --mirror, against a simulated upstream",
        || nightly_e2e::run(root, &cargo),
    )?;
    steps.summary("cargo xtask ci passed");
    Ok(())
}

/// The check-jsonschema release that validates the CircleCI config (PyPI).
const CHECK_JSONSCHEMA_VERSION: &str = "0.39.0";

/// Validates `.circleci/config.yml` against CircleCI's schema, with check-jsonschema installed
/// into a virtualenv under the target directory (Debian's python3).
fn check_circleci(root: &Path) -> anyhow::Result<()> {
    let venv = deb::target_dir(root)
        .join("tools")
        .join(format!("check-jsonschema-{CHECK_JSONSCHEMA_VERSION}"));
    let bin = venv.join("bin/check-jsonschema");
    if !bin.exists() {
        let venv_arg = venv.to_str().context("the target directory is not UTF-8")?;
        run(root, "/usr/bin/python3", &["-m", "venv", venv_arg])?;
        let pip = venv.join("bin/pip");
        let pip = pip.to_str().context("the target directory is not UTF-8")?;
        let requirement = format!("check-jsonschema=={CHECK_JSONSCHEMA_VERSION}");
        run(
            root,
            pip,
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &requirement,
            ],
        )?;
    }
    let bin = bin.to_str().context("the target directory is not UTF-8")?;
    run(
        root,
        bin,
        &[
            "--builtin-schema",
            "vendor.circle-ci",
            ".circleci/config.yml",
        ],
    )
}

fn release_options(args: ReleaseArgs) -> release::Options {
    release::Options {
        tag: args.tag,
        version: args.version,
        out: args.out,
        no_publish: args.no_publish,
        dry_run: args.dry_run,
        allow_dirty: args.allow_dirty,
        repository: args.repository.unwrap_or_else(release::default_repository),
        github_api: args.github_api,
    }
}

/// The package of `cargo xtask ci` and `cargo xtask dctest`: built from the working tree as it
/// is, never published; with `check`, also checked (metadata, lintian, install, units,
/// reproducibility). Returns the package file.
fn build_unpublished_package(
    root: &Path,
    cargo: &str,
    steps: &mut Steps,
    check: bool,
) -> anyhow::Result<PathBuf> {
    let tag = tag::ReleaseTag::parse(CI_TAG)?;
    build_package_as(root, cargo, steps, &tag, check)
}

/// Builds the package of the working tree as it is (not published) at the version of `tag`;
/// with `check`, also checks it. Returns the package file.
fn build_package_as(
    root: &Path,
    cargo: &str,
    steps: &mut Steps,
    tag: &tag::ReleaseTag,
    check: bool,
) -> anyhow::Result<PathBuf> {
    let commit = release::Commit::read(root)?;
    release::check_source(root, tag, &commit, true)?;
    let meta = deb::Meta {
        version: tag.version.clone(),
        tag: tag.tag.clone(),
        commit: commit.hash.clone(),
        epoch: commit.time,
        homepage: env!("CARGO_PKG_REPOSITORY").to_owned(),
    };
    let mut binaries = PathBuf::new();
    steps.step(
        "release build (cargo build --release --features artifacts/release)",
        || {
            binaries = deb::build_binaries(root, cargo, &tag.version)?;
            Ok(())
        },
    )?;
    let mut built = None;
    steps.step(
        &format!("package neco {} (--no-publish)", meta.version),
        || {
            let out = deb::target_dir(root).join("debian");
            let package = release::package(root, &binaries, &meta, &out)?;
            eprintln!(
                "  {} {} ({} bytes)",
                package.deb.display(),
                package.digest,
                package.size
            );
            built = Some(package);
            Ok(())
        },
    )?;
    let built = built.context("the package step built nothing")?;
    if check {
        steps.step("package checks", || checks::run_all(&built.deb, &meta))?;
        steps.step("package reproducibility", || {
            checks::reproducible(root, &binaries, &meta, &built.tree, &built.digest)
        })?;
    }
    Ok(built.deb)
}

fn check_deb(root: &Path, deb: &Path) -> anyhow::Result<()> {
    ensure_packages(TEST_PACKAGES)?;
    let version = deb::output_of(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Version"),
    )?;
    let commit = release::Commit::read(root)?;
    let meta = deb::Meta {
        version: version.trim().to_owned(),
        tag: String::new(),
        commit: commit.hash,
        epoch: commit.time,
        homepage: env!("CARGO_PKG_REPOSITORY").to_owned(),
    };
    checks::run_all(deb, &meta)?;
    eprintln!("{} passed every check", deb.display());
    Ok(())
}

fn codegen(root: &Path, mirror: bool, check: bool) -> anyhow::Result<()> {
    let cargo = cargo();
    let mut common: Vec<String> = Vec::new();
    // Keeps the mirror's servers alive until both files are written.
    let _mirror = if mirror {
        let m = start_mirror()?;
        common.extend(mirror_args(&m));
        Some(m)
    } else {
        None
    };
    if check {
        common.push("--check".to_owned());
    }
    for release in [false, true] {
        let mut args: Vec<String> = ["run", "--quiet", "--locked", "-p", "artifacts-gen", "--"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if release {
            args.push("--release".to_owned());
        }
        args.extend(common.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(root, &cargo, &args)?;
    }
    Ok(())
}

/// Starts the local mirror of the pins (docker-registry, GitHub and feed stand-ins seeded with
/// dctest/mirror/neco-pins-2025-03-10.toml); returns it (its servers stop when it is dropped).
fn start_mirror() -> anyhow::Result<dctest::mirror::Mirror> {
    ensure_packages(TEST_PACKAGES)?;
    let seed = dctest::mirror::MirrorSeed::neco_2025()?;
    eprintln!("starting the local mirror (docker-registry, GitHub and feed stand-ins)");
    Ok(dctest::mirror::Mirror::start(&seed)?)
}

/// The artifacts-gen arguments that point at the mirror `m`.
fn mirror_args(m: &dctest::mirror::Mirror) -> Vec<String> {
    let mut args = Vec::new();
    for o in m.registry_overrides() {
        args.extend(["--registry".to_owned(), o]);
    }
    args.extend([
        "--github-api".to_owned(),
        m.github.base_url(),
        "--os-feed".to_owned(),
        m.feed.feed_url(),
        "--os-image-base".to_owned(),
        m.feed.file_base_template(),
    ]);
    args
}

fn bench_resolve(root: &Path) -> anyhow::Result<()> {
    ensure_packages(BENCH_PACKAGES)?;
    run(
        root,
        &cargo(),
        &[
            "bench",
            "--locked",
            "-p",
            "artifacts-gen",
            "--bench",
            "resolve",
        ],
    )
}

fn bench_rollout(root: &Path) -> anyhow::Result<()> {
    // A real etcd cluster (etcdctl is dctest's reader); etcd-client (the crate) generates its
    // gRPC code with protoc at build time.
    ensure_packages(&["etcd-server", "etcd-client", "protobuf-compiler"])?;
    run(
        root,
        &cargo(),
        &["bench", "--locked", "-p", "worker", "--bench", "rollout"],
    )
}

/// Installs missing Debian packages with apt-get when running as root; otherwise prints the
/// command to run and fails.
fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}\ninstall them with:\n  sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("installing Debian packages: {list}");
    let install = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    if install(&args).is_err() {
        // A fresh machine may have no package lists yet.
        install(&["update"])?;
        install(&args)?;
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(suite: &str, result: SuiteResult, secs: u64) -> SuiteRun {
        SuiteRun {
            suite: suite.to_owned(),
            result,
            took: Duration::from_secs(secs),
        }
    }

    #[test]
    fn the_suite_table_reports_failed_and_unrun_suites() {
        let report = suites_report(&[
            run("bootstrap", SuiteResult::Passed, 40),
            run(
                "upgrade",
                SuiteResult::Failed("exit status: 101".into()),
                20,
            ),
            run("functions", SuiteResult::NotRun, 0),
            run("datacenter", SuiteResult::Passed, 15),
        ]);
        assert!(report.contains("| bootstrap  | passed "), "{report}");
        assert!(
            report.contains("| FAILED (exit status: 101) | 20.0 s "),
            "{report}"
        );
        assert!(report.contains("| functions  | not run "), "{report}");
        assert!(report.contains(suite_summary("datacenter")), "{report}");
        assert!(
            report.contains("1 min 15 s (3 of 4 ran)") && report.contains("not comparable"),
            "{report}"
        );
    }

    #[test]
    fn the_wall_time_is_compared_with_the_goal() {
        let all = |secs| -> Vec<SuiteRun> {
            SUITES
                .iter()
                .map(|s| run(s, SuiteResult::Passed, secs))
                .collect()
        };
        let per_suite = SUITES_GOAL.as_secs() / SUITES.len() as u64;
        assert!(suites_report(&all(per_suite - 1)).ends_with("in < 6 min: met\n"));
        assert!(suites_report(&all(per_suite + 1)).ends_with("in < 6 min: NOT met\n"));
        // Over the goal is over the goal, whatever else happened.
        let mut slow = all(per_suite + 5);
        slow[0].result = SuiteResult::Failed("exit status: 101".into());
        assert!(suites_report(&slow).ends_with("NOT met\n"));
    }
}
