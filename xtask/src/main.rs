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
mod deb;
mod progress;
mod publish;
mod release;
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
    /// into a temporary root, systemd-analyze verify, byte-identical repackaging.
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
    /// suites against it (real etcd cluster, registry mirror, GitHub / sabakan / feed / webhook
    /// stand-ins, boot servers with the package installed by dpkg and their daemons
    /// supervised), then print a summary.
    Dctest {
        /// Run only this suite.
        #[arg(value_name = "SUITE", value_parser = clap::builder::PossibleValuesParser::new(SUITES))]
        suite: Option<String>,
    },
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

#[derive(Debug, Subcommand)]
enum Bench {
    /// artifacts-gen resolution: concurrent against sequential and the ideal bound, tag
    /// selection at 100,000 tags, and against `skopeo list-tags` on a real registry.
    Resolve,
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
            Cmd::Bench {
                bench: Bench::Resolve,
            } => bench_resolve(&root),
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

/// A sequence of named steps with their durations, summarised at the end.
struct Steps {
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn new() -> Self {
        Self { done: Vec::new() }
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
    }
}

/// The dctest suites (integration tests of the dctest crate behind its `suites` feature), and
/// what each checks.
const SUITES: [&str; 4] = ["bootstrap", "upgrade", "functions", "datacenter"];

fn suite_summary(suite: &str) -> &'static str {
    match suite {
        "bootstrap" => "neco setup 0 1 2; the first update completes; images, units, debs, sabakan contents, notification",
        "upgrade" => "prod ignores a pre-release; staging self-updates every server (exit 10), all steps complete; promotion to prod",
        "functions" => "a broken image aborts, notifies and completes after neco recover; a dead worker stops the update within seconds",
        "datacenter" => "leader updater killed, worker killed, join/leave reconfigure, one etcd member killed",
        _ => "",
    }
}

/// Runs dctest suites against a package, each as a step.
fn run_suites(
    root: &Path,
    cargo: &str,
    deb: &Path,
    suites: &[&str],
    steps: &mut Steps,
) -> anyhow::Result<()> {
    for suite in suites {
        steps.step(&format!("dctest {suite}: {}", suite_summary(suite)), || {
            eprintln!("$ NECO_DEB={} {cargo} test --locked -p dctest --features suites --test {suite}", deb.display());
            let status = Command::new(cargo)
                .args(["test", "--locked", "-p", "dctest", "--features", "suites", "--test", suite])
                .env("NECO_DEB", deb)
                .current_dir(root)
                .status()
                .with_context(|| format!("cannot run {cargo}"))?;
            if !status.success() {
                bail!("the {suite} suite failed ({status}); the logs of every process are printed above");
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn dctest(root: &Path, suite: Option<&str>) -> anyhow::Result<()> {
    let cargo = cargo();
    let mut steps = Steps::new();
    steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
    let deb = build_unpublished_package(root, &cargo, &mut steps, false)?;
    let suites: Vec<&str> = match suite {
        Some(s) => vec![s],
        None => SUITES.to_vec(),
    };
    run_suites(root, &cargo, &deb, &suites, &mut steps)?;
    steps.summary("cargo xtask dctest passed");
    Ok(())
}

fn ci(root: &Path) -> anyhow::Result<()> {
    let cargo = cargo();
    let mut steps = Steps::new();
    steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
    steps.step("cargo fmt --check", || {
        run(root, &cargo, &["fmt", "--all", "--check"])
    })?;
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
    steps.summary("cargo xtask ci passed");
    Ok(())
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
    let commit = release::Commit::read(root)?;
    release::check_source(root, &tag, &commit, true)?;
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
            binaries = deb::build_binaries(root, cargo)?;
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
        ensure_packages(TEST_PACKAGES)?;
        let seed = dctest::mirror::MirrorSeed::neco_2025()?;
        eprintln!("starting the local mirror (docker-registry, GitHub and feed stand-ins)");
        let m = dctest::mirror::Mirror::start(&seed)?;
        for o in m.registry_overrides() {
            common.extend(["--registry".to_owned(), o]);
        }
        common.extend([
            "--github-api".to_owned(),
            m.github.base_url(),
            "--os-feed".to_owned(),
            m.feed.feed_url(),
        ]);
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
