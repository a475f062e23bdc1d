//! The command line of `neco-updater`, in the library so that the man page generator
//! (`manpages`) renders the same definition the binary parses.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

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
    version = neco::VERSION,
    after_help = "\
Exit status: 0 after SIGTERM or SIGINT, 1 on a failure a restart may cure (etcd unreachable),
2 when the configuration file is unusable."
)]
pub struct Cli {
    /// Root directory under which etc/neco/config.toml is read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// TTL of the leadership lease: how soon another instance takes over after this one dies.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: neco::logging::LogFormat,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    neco::duration::parse(text).map_err(|e| e.to_string())
}
