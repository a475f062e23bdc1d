//! `neco`: the operator CLI of the boot servers.

use anyhow::{bail, Context as _};
use clap::Parser as _;
use neco::cli::{Cli, Command, ConfigCommand};
use neco::config::Config;
use neco::release::ReleaseVersion;
use neco::storage::{
    ConfigKey, Env, Storage, StorageError, DEFAULT_CHECK_UPDATE_INTERVAL, DEFAULT_WORKER_TIMEOUT,
};
use std::io::Read as _;
use std::process::ExitCode;

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
            // A configuration that cannot work (the config file, its etcd TLS files, the CA,
            // the user or password): 2, like a usage error, so that scripts can tell it from
            // an etcd that is down.
            if neco::is_configuration_error(&e) {
                ExitCode::from(neco::EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Storage> {
    let config = Config::load(&cli.root)?;
    Ok(Storage::connect_with(&config.etcd, neco::etcd::Patience::CLI).await?)
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
            // The updater follows releases by this form: another version would be requested
            // and never be completed or replaced.
            if let Err(e) = version.parse::<ReleaseVersion>() {
                bail!(
                    "setup: the installed neco package has version {version:?}, not a release \
                     version (YYYY.MM.DD-N: {e}); install a released neco package first"
                );
            }
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
    // A webhook URL is a credential, a proxy URL may hold a password: neither is echoed.
    let url = |value: &str| -> Result<Option<String>, String> {
        let not_shown = "(the value is not shown: it may hold a credential)";
        let url = reqwest::Url::parse(value)
            .map_err(|e| format!("{}: not a URL: {e} {not_shown}", key.key()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{}: expected an absolute http(s) URL {not_shown}",
                key.key()
            ));
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
                (ConfigKey::GitHubToken, Some(v)) if v != "-" => bail!(
                    "config set github-token: the token is read from standard input only (an \
                     argument is visible in the process list and the shell history): \
                     neco config set github-token < FILE"
                ),
                (ConfigKey::GitHubToken, _) => {
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

async fn status(storage: &Storage, json: bool) -> anyhow::Result<ExitCode> {
    let report = neco::status::Report::read(storage).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
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
        // A bad webhook or proxy URL is refused without showing the secret in it.
        for (key, bad) in [
            (ConfigKey::Slack, "hooks.example/services/T0/B0/s3cret"),
            (ConfigKey::Proxy, "socks://user:s3cret@proxy.example"),
            (ConfigKey::Proxy, "http://user:s3cret@"),
        ] {
            let err = validate(key, bad).unwrap_err();
            assert!(err.contains(key.key()), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
