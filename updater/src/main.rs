//! neco-updater: the leader-elected daemon that finds new neco releases and drives the
//! lock-step update of the boot servers through etcd.
//!
//! The daemon's parts live in the library (`updater`); this is the process around them.

use anyhow::Context as _;
use clap::Parser as _;
use neco::config::Config;
use neco::storage::Storage;
use std::process::ExitCode;
use updater::cli::Cli;
use updater::server;

/// Exit status when the configuration is unusable, its etcd settings included (a restart does
/// not help).
const EXIT_CONFIG: u8 = neco::EXIT_CONFIG;
/// Exit status of any other failure (etcd unreachable, …): the supervisor restarts the daemon.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    neco::logging::init(cli.log_format);
    neco::logging::run_daemon(run(cli))
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
            if neco::is_configuration_error(&e) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}
