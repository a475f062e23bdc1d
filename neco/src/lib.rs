//! What the neco-rs daemons and the operator CLI share.
//!
//! This crate owns the boot server's local configuration ([`config`]), the etcd schema and its
//! storage layer ([`storage`], [`types`]) over a connection that fails over between etcd members
//! ([`etcd`]) with watches that outlive a member and a compaction, the release version type ([`release`]), Go-style
//! durations ([`duration`]) and the webhook notifier ([`notify`]). The binary `neco` is the
//! operator CLI.
//!
//! Dependency rule: it may use `fetch` (HTTP edge, GitHub client) and `artifacts`, never the
//! daemons (`updater`, `worker`), which depend on it.

pub mod cli;

/// What the programs print for `--version`: the package version they were built for
/// (`NECO_VERSION`, set by `cargo xtask release` and the packages of CI and dctest), else the
/// crate version marked `-dev`. The worker compares releases with the version in the dpkg
/// database, not with this.
pub const VERSION: &str = match option_env!("NECO_VERSION") {
    Some(version) => version,
    None => concat!(env!("CARGO_PKG_VERSION"), "-dev"),
};
pub mod config;
pub mod dpkg;
pub mod duration;
pub mod etcd;
pub mod lease;
pub mod logging;
pub mod notify;
pub mod release;
pub mod status;
pub mod storage;
pub mod types;
mod watch;

pub use fetch::Secret;

/// Exit status of the CLI and the daemons when the configuration cannot work; systemd does not
/// restart the daemons then (`RestartPreventExitStatus=2`).
pub const EXIT_CONFIG: u8 = 2;

/// Whether `error` comes from a configuration that cannot work: the config file
/// ([`config::ConfigError`]) or etcd settings ([`storage::StorageError::is_configuration`]).
pub fn is_configuration_error(error: &anyhow::Error) -> bool {
    error.downcast_ref::<config::ConfigError>().is_some()
        || error
            .downcast_ref::<storage::StorageError>()
            .is_some_and(storage::StorageError::is_configuration)
}

/// An HTTP client for the daemons: through `config/proxy` when set.
pub fn http_client(
    proxy: Option<&str>,
    per_host: usize,
    retry: fetch::http::RetryPolicy,
) -> Result<fetch::http::Http, String> {
    fetch::http::Http::with_options(http_options(proxy, per_host, retry)?)
        .map_err(|e| e.to_string())
}

/// The options of [`http_client`], for callers that change one.
pub fn http_options(
    proxy: Option<&str>,
    per_host: usize,
    retry: fetch::http::RetryPolicy,
) -> Result<fetch::http::HttpOptions, String> {
    let proxy = proxy
        .map(|p| {
            // Not echoed: a proxy URL may hold a password.
            reqwest::Url::parse(p).map_err(|e| {
                format!(
                    "config/proxy: not a URL: {e} (the value is not shown: it may hold a password)"
                )
            })
        })
        .transpose()?;
    Ok(fetch::http::HttpOptions {
        per_host,
        retry,
        proxy,
        ..fetch::http::HttpOptions::default()
    })
}

/// This host's name (the value of leader keys), `unknown` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_proxy_url_is_refused_without_its_password() {
        let retry = fetch::http::RetryPolicy::default();
        let err = super::http_options(Some("http://user:s3cret@"), 1, retry).unwrap_err();
        assert!(err.contains("config/proxy"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
