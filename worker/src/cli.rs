//! The command line of `neco-worker`, in the library so that the man page generator
//! (`manpages`) renders the same definition the binary parses.

use clap::Parser;
use std::path::PathBuf;

/// Installs the neco release the updater requests, then the pinned artifacts in lock-step with
/// the other boot servers.
#[derive(Debug, Parser)]
#[command(
    name = "neco-worker",
    version = neco::VERSION,
    after_help = "\
Exit status: 0 after SIGTERM or SIGINT; 10 after installing a new neco package (the supervisor
must start the new binary); 1 on a failure a restart may cure (etcd unreachable, an aborted
update); 2 when the configuration, the rack file or the neco installation is unusable."
)]
pub struct Cli {
    /// Root directory of the boot server (config, dpkg database, images, unit files).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// How services are restarted: `systemd` (systemctl), or `log` (actions appended to
    /// var/log/neco/services.log under the root, for machines without systemd).
    #[arg(long, value_enum, default_value = "systemd")]
    pub service_manager: Manager,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: neco::logging::LogFormat,
}

/// How services are restarted.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Manager {
    Systemd,
    Log,
}
