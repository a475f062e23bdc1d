//! neco-updater: the leader-elected daemon that finds new neco releases and drives the
//! lock-step update of the boot servers through etcd.
//!
//! It owns leadership, the release checker and the execution of the pure decision core
//! [`action::next_action`]. It depends on `neco` (storage, config, notifier) and `fetch`
//! (GitHub), never on the worker.

mod action;
mod checker;
mod server;

use anyhow::Context as _;
use clap::Parser;
use neco::config::Config;
use neco::storage::Storage;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status when the configuration is unusable (a restart does not help).
const EXIT_CONFIG: u8 = 2;
/// Exit status of any other failure (etcd unreachable, …): the supervisor restarts the daemon.
const EXIT_FAILURE: u8 = 1;

/// Finds new neco releases and drives the update of every boot server through etcd.
///
/// All instances campaign on `leader/updater/`; the leader checks GitHub for releases
/// (`config/env`: none, test, staging, prod), writes the update request, waits for the
/// workers, stops the update on an abort, a dead server or the worker timeout, and sends
/// notifications to `config/notification/slack`. Configuration changes in etcd apply without a
/// restart.
#[derive(Debug, Parser)]
#[command(
    name = "neco-updater",
    version,
    after_help = "\
Exit status: 0 after SIGTERM or SIGINT, 1 on a failure a restart may cure (etcd unreachable),
2 when the configuration file is unusable."
)]
struct Cli {
    /// Root directory under which etc/neco/config.toml is read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// TTL of the leadership lease: how soon another instance takes over after this one dies.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    session_ttl: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    log_format: neco::logging::LogFormat,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    neco::duration::parse(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    neco::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(&cli.root) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "unusable configuration");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One shutdown signal for every phase: the leader resigns before exiting.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        neco::logging::terminated().await;
        let _ = stop.send(true);
    });
    let mut stopping = shutdown.clone();
    let result = async {
        let storage = tokio::select! {
            s = Storage::connect(&config.etcd) => s?,
            Ok(_) = stopping.wait_for(|stop| *stop) => return Ok(()),
        };
        let updater = server::Updater {
            storage,
            github: config.github.clone(),
            name: neco::hostname(),
            session_ttl: cli.session_ttl,
            shutdown: shutdown.clone(),
        };
        updater.run().await.context("neco-updater stopped")
    };
    match result.await {
        Ok(()) => {
            tracing::info!("terminated");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
