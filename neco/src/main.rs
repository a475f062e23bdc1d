//! `neco`: the operator CLI of the boot servers.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use neco::config::Config;
use neco::release::ReleaseVersion;
use neco::storage::{
    ConfigKey, Env, Storage, StorageError, DEFAULT_CHECK_UPDATE_INTERVAL, DEFAULT_WORKER_TIMEOUT,
};
use neco::types::{update_completed, Lrn, UpdateCondition};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Operate the neco boot servers: configuration, update status and recovery, membership.
#[derive(Debug, Parser)]
#[command(name = "neco", version)]
struct Cli {
    /// Root directory under which etc/neco/config.toml and the dpkg database are read.
    #[arg(long, value_name = "DIR", default_value = "/", global = true)]
    root: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: neco::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
enum ConfigCommand {
    /// Set a key. Keys: env (none, test, staging, prod), slack (webhook URL), proxy (URL),
    /// check-update-interval and worker-timeout (durations such as 10m or 1h), github-token
    /// (read from standard input when VALUE is omitted or `-`), test-version (YYYY.MM.DD-N).
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

fn parse_key(text: &str) -> Result<ConfigKey, String> {
    ConfigKey::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = ConfigKey::ALL.iter().map(|k| k.name()).collect();
        format!("unknown key {text:?}; keys: {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    neco::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Storage> {
    let config = Config::load(&cli.root)?;
    Ok(Storage::connect(&config.etcd).await?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let storage = connect(&cli).await?;
    match &cli.command {
        Command::Config { command } => config(&storage, command).await,
        Command::Status { json } => status(&storage, *json).await,
        Command::Recover => {
            match storage.clear_status_and_contents().await {
                Ok(()) => println!("cleared the stopped update; the updater will start it again"),
                Err(StorageError::NotFound { .. }) => {
                    bail!("there is no update request to recover")
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup { lrns } => {
            let version = neco::dpkg::installed_version(&cli.root, "neco")?
                .context("the neco package is not installed under --root")?;
            let request = storage
                .setup(lrns, &version, time::OffsetDateTime::now_utc())
                .await?;
            println!(
                "set up boot servers {:?}; requested the installed version {}",
                request.servers, request.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Join { lrn } => {
            storage.register_bootserver(*lrn).await?;
            println!("registered boot server {lrn}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Leave { lrn } => {
            storage.delete_bootserver(*lrn).await?;
            println!("removed boot server {lrn}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks a value for a key and returns what etcd stores (`None`: delete the key).
fn validate(key: ConfigKey, value: &str) -> Result<Option<String>, String> {
    let url = |value: &str| -> Result<Option<String>, String> {
        let url = reqwest::Url::parse(value).map_err(|e| format!("{value:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("{value:?}: expected an absolute http(s) URL"));
        }
        Ok(Some(value.to_owned()))
    };
    match key {
        ConfigKey::Env => match Env::parse(value) {
            Some(Env::None) => Ok(None),
            Some(env) => Ok(Some(env.as_str().to_owned())),
            None => Err(format!("{value:?}: expected none, test, staging or prod")),
        },
        ConfigKey::Slack | ConfigKey::Proxy => url(value),
        ConfigKey::CheckUpdateInterval | ConfigKey::WorkerTimeout => {
            let d = neco::duration::parse(value).map_err(|e| e.to_string())?;
            if d.is_zero() {
                return Err(format!("{value:?}: must be longer than zero"));
            }
            Ok(Some(d.as_nanos().to_string()))
        }
        ConfigKey::GitHubToken => {
            let token = value.trim();
            if token.is_empty() || token.chars().any(char::is_whitespace) {
                return Err("the token is empty or contains whitespace".into());
            }
            Ok(Some(token.to_owned()))
        }
        ConfigKey::TestVersion => value
            .parse::<ReleaseVersion>()
            .map(|v| Some(v.to_string()))
            .map_err(|e| e.to_string()),
    }
}

async fn config(storage: &Storage, command: &ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Set { key, value } => {
            let value = match (key, value.as_deref()) {
                (ConfigKey::GitHubToken, None | Some("-")) => {
                    let mut token = String::new();
                    std::io::stdin()
                        .read_to_string(&mut token)
                        .context("cannot read the token from standard input")?;
                    token
                }
                (_, Some(v)) => v.to_owned(),
                (_, None) => bail!("config set {}: VALUE is missing", key.name()),
            };
            let stored = validate(*key, &value)
                .map_err(|e| anyhow::anyhow!("config set {}: {e}", key.name()))?;
            match stored {
                Some(v) => storage.put_config(*key, &v).await?,
                None => storage.delete_config(*key).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Get { key, show_secret } => {
            let value = storage.config(*key).await?;
            let shown = match (key, value) {
                (ConfigKey::Env, v) => v.unwrap_or_else(|| "none".into()),
                (ConfigKey::CheckUpdateInterval, v) => {
                    format_duration(v, DEFAULT_CHECK_UPDATE_INTERVAL)
                }
                (ConfigKey::WorkerTimeout, v) => format_duration(v, DEFAULT_WORKER_TIMEOUT),
                (ConfigKey::GitHubToken, Some(_)) if !show_secret => {
                    "(set; use --show-secret to print it)".into()
                }
                (_, Some(v)) => v,
                (_, None) => bail!("{} is not set", key.name()),
            };
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn format_duration(stored: Option<String>, default: std::time::Duration) -> String {
    stored
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_nanos)
        .map_or_else(|| neco::duration::format(default), neco::duration::format)
}

#[derive(serde::Serialize)]
struct StatusJson {
    servers: Vec<Lrn>,
    alive: Vec<Lrn>,
    request: Option<RequestJson>,
    malformed: Vec<(String, String)>,
}

#[derive(serde::Serialize)]
struct RequestJson {
    version: String,
    servers: Vec<Lrn>,
    stopped: bool,
    started_at: String,
    /// clear | running | aborted | completed
    state: &'static str,
    statuses: Vec<ServerJson>,
}

#[derive(serde::Serialize)]
struct ServerJson {
    lrn: Lrn,
    alive: bool,
    step: Option<u32>,
    condition: String,
    message: String,
}

async fn status(storage: &Storage, json: bool) -> anyhow::Result<ExitCode> {
    let snapshot = storage.snapshot().await?;
    let alive = storage.alive_servers().await?;
    let request = snapshot.request.as_ref().map(|req| {
        let aborted = snapshot
            .statuses
            .values()
            .any(|st| st.version == req.version && st.cond == UpdateCondition::Aborted);
        let state = if aborted {
            "aborted"
        } else if update_completed(&req.version, &req.servers, &snapshot.statuses) {
            "completed"
        } else {
            "running"
        };
        let statuses = req
            .servers
            .iter()
            .map(|lrn| {
                let st = snapshot
                    .statuses
                    .get(lrn)
                    .filter(|st| st.version == req.version);
                ServerJson {
                    lrn: *lrn,
                    alive: alive.contains(lrn),
                    step: st.map(|s| s.step),
                    condition: st.map_or_else(|| "not started".into(), |s| s.cond.to_string()),
                    message: st.map(|s| s.message.clone()).unwrap_or_default(),
                }
            })
            .collect();
        RequestJson {
            version: req.version.clone(),
            servers: req.servers.clone(),
            stopped: req.stop,
            started_at: req
                .started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            state,
            statuses,
        }
    });
    let report = StatusJson {
        servers: snapshot.servers.clone(),
        alive,
        request,
        malformed: snapshot.malformed.clone(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Boot servers: {:?}", report.servers);
    println!("Alive: {:?}", report.alive);
    println!(
        "Latest release: {}",
        if snapshot.latest.is_empty() {
            "-"
        } else {
            &snapshot.latest
        }
    );
    println!("Update process");
    match &report.request {
        None => println!("    status: clear"),
        Some(req) => {
            println!(
                "    status: {}{}",
                req.state,
                if req.stopped {
                    " (stopped: run `neco recover` after fixing the cause)"
                } else {
                    ""
                }
            );
            println!("    version: {}", req.version);
            println!("    members: {:?}", req.servers);
            println!("    started: {}", req.started_at);
            for st in &req.statuses {
                println!(
                    "Boot server {}{}",
                    st.lrn,
                    if st.alive { "" } else { " (not alive)" }
                );
                if let Some(step) = st.step {
                    println!("    step: {step}");
                }
                println!("    condition: {}", st.condition);
                if !st.message.is_empty() {
                    println!("    message: {}", st.message);
                }
            }
        }
    }
    for (key, error) in &report.malformed {
        println!("malformed value at {key}: {error}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let ok = |k, v: &str| validate(k, v).unwrap();
        assert_eq!(ok(ConfigKey::Env, "staging").as_deref(), Some("staging"));
        assert_eq!(ok(ConfigKey::Env, "none"), None);
        assert_eq!(
            ok(ConfigKey::WorkerTimeout, "1h").as_deref(),
            Some("3600000000000")
        );
        assert_eq!(
            ok(ConfigKey::Slack, "https://hooks.example/x").as_deref(),
            Some("https://hooks.example/x")
        );
        for (key, bad) in [
            (ConfigKey::Env, "qa"),
            (ConfigKey::Slack, "not a url"),
            (ConfigKey::Proxy, "ftp://x"),
            (ConfigKey::CheckUpdateInterval, "10"),
            (ConfigKey::WorkerTimeout, "0s"),
            (ConfigKey::GitHubToken, "  "),
            (ConfigKey::TestVersion, "1.2.3"),
        ] {
            let err = validate(key, bad).unwrap_err();
            assert!(!err.is_empty(), "{key:?} {bad}");
        }
    }
}
