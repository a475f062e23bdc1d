//! neco-worker: runs on every boot server; installs the neco release the updater requests
//! (self-update by deb), then the pinned artifacts step by step in lock-step with its peers.

use clap::Parser as _;
use fetch::github::GitHub;
use fetch::http::RetryPolicy;
use neco::config::Config;
use neco::lease::KeptLease;
use neco::storage::{Storage, LIVENESS_TTL};
use neco::Secret;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use worker::cli::{Cli, Manager};
use worker::debs::Startup;
use worker::online::{Online, OnlineError};
use worker::run::{Exit, Worker};
use worker::services::{ActionLog, ServiceManager, Systemd};
use worker::steps::StepContext;

/// Exit status after a new neco package was installed: the supervisor starts the new binary
/// (the unit's `RestartForceExitStatus=10`). The package's postinst leaves the worker alone
/// during a self-update, so this is the one restart into the new binary.
const EXIT_UPDATED: u8 = 10;
/// Exit status when the configuration or the installation is unusable.
const EXIT_CONFIG: u8 = neco::EXIT_CONFIG;
/// Exit status of a failure a restart may cure (etcd unreachable, an aborted update).
const EXIT_FAILURE: u8 = 1;
/// How often the worker looks at the dpkg database while dpkg installs the neco package.
const PACKAGE_POLL: Duration = Duration::from_secs(1);
/// For how long after the start "not installed" is asked again before it is believed (see
/// [`neco_package`]).
const NOT_INSTALLED_RECHECK: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let cli = Cli::parse();
    neco::logging::init(cli.log_format);
    neco::logging::run_daemon(async {
        tokio::select! {
            code = run(cli) => code,
            () = neco::logging::terminated() => {
                tracing::info!("terminated");
                ExitCode::SUCCESS
            }
        }
    })
}

async fn run(cli: Cli) -> ExitCode {
    let setup = || -> Result<_, String> {
        let config = Config::load(&cli.root).map_err(|e| format!("{e:#}"))?;
        let lrn = neco::config::read_lrn(&cli.root).map_err(|e| format!("{e:#}"))?;
        Ok((config, lrn))
    };
    let (config, lrn) = match setup() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let version = match neco_package(&cli.root).await {
        Ok(Package::Configured(version)) => version,
        Ok(Package::Replaced) => {
            tracing::info!(
                "dpkg replaced this binary while it waited; exiting so that the installed one starts"
            );
            return ExitCode::from(EXIT_UPDATED);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match serve(&cli, &config, lrn, &version).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            if neco::is_configuration_error(&e) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// The neco package under the root, as the worker may run with it.
enum Package {
    /// Configured, at this version.
    Configured(String),
    /// dpkg configured it while this process waited and replaced this process's executable on
    /// the way: the installed binary must be started instead.
    Replaced,
}

/// Looks at the dpkg status of neco ([`worker::debs::startup`]). While dpkg is between
/// unpacking and configuring it, waits (polling every [`PACKAGE_POLL`], logged once) until it
/// is configured. An error when it is not installed.
async fn neco_package(root: &Path) -> Result<Package, String> {
    let mut waited = false;
    let started = std::time::Instant::now();
    loop {
        let status = {
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || neco::dpkg::status(&root, "neco"))
                .await
                .map_err(|e| format!("cannot query dpkg: {e}"))?
                .map_err(|e| e.to_string())?
        };
        let text = status.as_ref().map(|s| s.status.as_str());
        match worker::debs::startup(text) {
            Startup::Run => {
                let version = status
                    .map(|s| s.version)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        format!("the neco package under {} has no version", root.display())
                    })?;
                if waited {
                    tracing::info!(version, "the neco package is configured");
                    if executable_replaced().await {
                        return Ok(Package::Replaced);
                    }
                }
                return Ok(Package::Configured(version));
            }
            Startup::Wait => {
                if !waited {
                    tracing::info!(
                        status = text.unwrap_or_default(),
                        poll = ?PACKAGE_POLL,
                        "dpkg has not configured the neco package yet; waiting until it is configured"
                    );
                    waited = true;
                }
                tokio::time::sleep(PACKAGE_POLL).await;
            }
            // dpkg-query reads the status file and then the journal of updates, so during a
            // checkpoint of a running dpkg it may find neither (measured: a worker started by
            // a first install's postinst once saw no record at all). Asked again before the
            // answer counts.
            Startup::NotInstalled if started.elapsed() < NOT_INSTALLED_RECHECK => {
                tokio::time::sleep(PACKAGE_POLL).await;
            }
            Startup::NotInstalled => {
                return Err(format!(
                    "the neco package is not installed under {} (dpkg status: {})",
                    root.display(),
                    text.unwrap_or("none")
                ))
            }
        }
    }
}

/// Whether the file this process was started from is gone (dpkg replaced it): Linux shows
/// the link `/proc/self/exe` with the suffix ` (deleted)` then. `false` when it cannot tell.
async fn executable_replaced() -> bool {
    tokio::fs::read_link("/proc/self/exe")
        .await
        .is_ok_and(|path| path.to_string_lossy().ends_with(" (deleted)"))
}

async fn serve(cli: &Cli, config: &Config, lrn: u32, version: &str) -> anyhow::Result<ExitCode> {
    let storage = Storage::connect(&config.etcd).await?;
    // Liveness: a key bound to a lease kept alive while this process runs. It is not revoked on
    // exit, so a restart (self-update) within the TTL does not look like a death.
    let mut lease = KeptLease::grant(&storage, LIVENESS_TTL).await?;
    storage.put_alive(lrn, lease.id(), version).await?;
    tracing::info!(lrn, version, "neco-worker started");

    // config/proxy and config/github-token are read at each use.
    let online = Online::new(
        storage.clone(),
        neco::http_options(None, 4, RetryPolicy::default()).map_err(anyhow::Error::msg)?,
    )?;
    let manager: Box<dyn ServiceManager> = match cli.service_manager {
        Manager::Systemd => Box::new(Systemd),
        Manager::Log => Box::new(ActionLog {
            path: cli.root.join("var/log/neco/services.log"),
        }),
    };
    let credentials = match (
        std::env::var("NECO_REGISTRY_USERNAME").ok(),
        std::env::var("NECO_REGISTRY_PASSWORD").ok(),
    ) {
        (Some(username), Some(password)) => Some(fetch::registry::Credentials {
            username,
            password: Secret::new(password),
        }),
        _ => None,
    };
    let worker = Worker {
        storage: &storage,
        lrn,
        version: version.to_owned(),
        steps: StepContext {
            root: cli.root.clone(),
            lrn,
            storage: &storage,
            online: &online,
            github_api: config.github.api.clone(),
            sources: &config.sources,
            registry_credentials: credentials,
            service_manager: manager.as_ref(),
            sabakan_ready_timeout: worker::contents::SABAKAN_READY_TIMEOUT,
        },
    };
    // After a failed self-update: the revision of the request it was for, so that the worker
    // waits for the next request instead of retrying in a loop.
    let mut after: Option<i64> = None;
    loop {
        let follow = async {
            match after {
                Some(revision) => worker.run_after(revision).await,
                None => worker.run().await,
            }
        };
        let exit = tokio::select! {
            r = follow => r?,
            () = lease.lost() => anyhow::bail!("lost the liveness lease"),
        };
        match exit {
            Exit::SelfUpdate {
                version: target,
                revision,
            } => {
                tracing::info!(from = version, to = %target, "self-update");
                let http = match online.http().await {
                    Ok(http) => http,
                    // etcd did not answer: exit 1, a restart may cure it.
                    Err(OnlineError::Storage(e)) => return Err(e.into()),
                    Err(e @ OnlineError::Proxy(_)) => {
                        tracing::error!(error = %e, "self-update failed; aborting the update");
                        worker
                            .report_self_update_failure(&target, revision, &e.to_string())
                            .await?;
                        after = Some(revision);
                        continue;
                    }
                };
                let token = online.github_token().await?;
                let github = GitHub::new(&http, config.github.api.clone(), token.as_ref());
                match worker::debs::install_neco(
                    &cli.root,
                    &github,
                    &config.github.repository,
                    &target,
                )
                .await
                {
                    Ok(()) => {
                        tracing::info!(
                            to = %target,
                            "dpkg returned; exiting so that systemd starts the new binary"
                        );
                        return Ok(ExitCode::from(EXIT_UPDATED));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "self-update failed; aborting the update");
                        worker
                            .report_self_update_failure(&target, revision, &e.to_string())
                            .await?;
                        after = Some(revision);
                    }
                }
            }
        }
    }
}
