//! The command line of the operator CLI `neco`, in the library so that the man page generator
//! (`manpages`) renders the same definition the binary parses.

use crate::storage::ConfigKey;
use crate::types::Lrn;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Operate the neco boot servers: configuration, update status and recovery, membership.
#[derive(Debug, Parser)]
#[command(name = "neco", version = crate::VERSION)]
pub struct Cli {
    /// Root directory under which etc/neco/config.toml and the dpkg database are read.
    #[arg(long, value_name = "DIR", default_value = "/", global = true)]
    pub root: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read or change the cluster configuration stored in etcd.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show the boot servers and the progress of the current update.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Clear a stopped update (its request, statuses and contents records) so that the updater
    /// starts it again. Refuses an update that is not stopped.
    Recover,
    /// First setup of a cluster: register the boot servers and request an update to the neco
    /// version installed on this server.
    Setup {
        /// The LRNs of every boot server.
        #[arg(required = true, value_name = "LRN")]
        lrns: Vec<Lrn>,
    },
    /// Register a boot server; the updater reconfigures the cluster once the current update
    /// is complete.
    Join {
        #[arg(value_name = "LRN")]
        lrn: Lrn,
    },
    /// Remove a boot server and what it recorded as installed.
    Leave {
        #[arg(value_name = "LRN")]
        lrn: Lrn,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set a key. Keys: env (none, test, staging, prod), slack (webhook URL), proxy (URL),
    /// check-update-interval and worker-timeout (durations such as 10m or 1h), github-token
    /// (read from standard input only: VALUE omitted or `-`), test-version (YYYY.MM.DD-N).
    Set {
        #[arg(value_name = "KEY", value_parser = parse_key)]
        key: ConfigKey,
        #[arg(value_name = "VALUE")]
        value: Option<String>,
    },
    /// Print a key's value (the default when unset; github-token is masked).
    Get {
        #[arg(value_name = "KEY", value_parser = parse_key)]
        key: ConfigKey,
        /// Print the GitHub token itself.
        #[arg(long)]
        show_secret: bool,
    },
}

/// A configuration key by its name, for clap.
pub fn parse_key(text: &str) -> Result<ConfigKey, String> {
    ConfigKey::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = ConfigKey::ALL.iter().map(|k| k.name()).collect();
        format!("unknown key {text:?}; keys: {}", names.join(", "))
    })
}
