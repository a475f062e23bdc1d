//! `cargo xtask`: the project's automation.
//!
//! It owns the commands people and CI run (`ci`, `codegen`, `bench`): it installs the Debian
//! packages they need, then drives `cargo` and the project's binaries as processes. It must
//! build on a fresh machine with nothing but cargo: no dependency that needs a system package
//! or a C compiler at build time (the test fixtures of `dctest` are pure Rust).

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
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
    /// (`-D warnings`) and the tests, each with and without `--features release`.
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
    /// Run a benchmark and print its report.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
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
];
/// Debian packages the benchmarks need.
const BENCH_PACKAGES: &[&str] = &["docker-registry", "skopeo"];

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match workspace_root() {
        Ok(root) => match cli.command {
            Cmd::Ci => ci(&root),
            Cmd::Codegen { mirror, check } => codegen(&root, mirror, check),
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

fn ci(root: &Path) -> anyhow::Result<()> {
    let cargo = cargo();
    let mut steps = Steps::new();
    steps.step("Debian packages", || ensure_packages(TEST_PACKAGES))?;
    steps.step("cargo fmt --check", || {
        run(root, &cargo, &["fmt", "--all", "--check"])
    })?;
    for (label, features) in [("default", None), ("release", Some("artifacts/release"))] {
        let mut clippy = vec!["clippy", "--workspace", "--all-targets", "--locked"];
        let mut test = vec!["test", "--workspace", "--locked"];
        if let Some(features) = features {
            clippy.extend(["--features", features]);
            test.extend(["--features", features]);
        }
        clippy.extend(["--", "-D", "warnings"]);
        steps.step(&format!("clippy ({label} pins)"), || {
            run(root, &cargo, &clippy)
        })?;
        steps.step(&format!("tests ({label} pins)"), || {
            run(root, &cargo, &test)
        })?;
    }
    steps.summary("cargo xtask ci passed");
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
