//! The release checker: which neco release the cluster should run, by env.
//!
//! - `none`: never updates;
//! - `test`: the fixed version of `config/test-version`;
//! - `staging`: the newest release or pre-release tagged `release-…`;
//! - `prod`: GitHub's latest (full) release, tagged `release-…`.
//!
//! A newer version than `info/neco-release` is written there (guarded by the leader key);
//! the checker never moves it back. GitHub failures (rate limits, 5xx, network) are logged and
//! retried at the next check; they never stop the updater.

use fetch::github::{GitHub, Release};
use fetch::http::RetryPolicy;
use neco::config::GitHubConfig;
use neco::release::ReleaseVersion;
use neco::storage::{ConfigKey, Env, Storage, StorageError};
use neco::Secret;

/// The tag prefix of releases the daemons install.
pub const RELEASE_PREFIX: &str = "release-";

/// The newest release version among `releases` whose tag is `release-<version>`, drafts
/// excluded; pre-releases included only when `prerelease` is true.
pub fn newest_release(releases: &[Release], prerelease: bool) -> Option<ReleaseVersion> {
    releases
        .iter()
        .filter(|r| !r.draft && (prerelease || !r.prerelease))
        .filter_map(|r| r.tag_name.strip_prefix(RELEASE_PREFIX))
        .filter_map(|v| v.parse::<ReleaseVersion>().ok())
        .max()
}

/// Whether `found` should replace `current` in `info/neco-release`: only forward.
pub fn should_record(found: ReleaseVersion, current: Option<ReleaseVersion>) -> bool {
    current.is_none_or(|current| found > current)
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No release to follow (env none, nothing published, or GitHub unreachable).
    Nothing,
    Version(ReleaseVersion),
}

/// Asks the source of `env` for the newest version.
pub async fn find_latest(
    storage: &Storage,
    github: &GitHubConfig,
    env: Env,
) -> Result<Found, StorageError> {
    match env {
        Env::None => Ok(Found::Nothing),
        Env::Test => match storage.config(ConfigKey::TestVersion).await? {
            None => {
                tracing::warn!(
                    "env test needs config/test-version (neco config set test-version VERSION)"
                );
                Ok(Found::Nothing)
            }
            Some(text) => match text.parse() {
                Ok(v) => Ok(Found::Version(v)),
                Err(e) => {
                    tracing::warn!(error = %e, "config/test-version is not a release version");
                    Ok(Found::Nothing)
                }
            },
        },
        Env::Staging | Env::Prod => {
            let token = storage
                .config(ConfigKey::GitHubToken)
                .await?
                .map(Secret::new);
            let proxy = storage.config(ConfigKey::Proxy).await?;
            let http = match neco::http_client(proxy.as_deref(), 4, RetryPolicy::default()) {
                Ok(http) => http,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the HTTP client (check config/proxy)");
                    return Ok(Found::Nothing);
                }
            };
            let client = GitHub::new(&http, github.api.clone(), token.as_ref());
            let answer = if env == Env::Staging {
                client
                    .releases(&github.repository)
                    .await
                    .map(|all| newest_release(&all, true))
            } else {
                client
                    .latest_release(&github.repository)
                    .await
                    .map(|latest| {
                        latest.and_then(|r| newest_release(std::slice::from_ref(&r), false))
                    })
            };
            match answer {
                Ok(Some(v)) => Ok(Found::Version(v)),
                Ok(None) => {
                    tracing::info!(env = env.as_str(), repository = %github.repository, "no release to follow");
                    Ok(Found::Nothing)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check GitHub releases; will try again");
                    Ok(Found::Nothing)
                }
            }
        }
    }
}

/// One check: find the newest version and record it when it moves forward.
pub async fn check_once(
    storage: &Storage,
    github: &GitHubConfig,
    leader_key: &str,
) -> Result<(), StorageError> {
    let env = match storage.env().await {
        Ok(env) => env,
        Err(StorageError::BadValue {
            key,
            value,
            message,
        }) => {
            tracing::error!(%key, %value, %message, "not checking releases");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Found::Version(found) = find_latest(storage, github, env).await? else {
        return Ok(());
    };
    let current_text = storage.neco_release().await?;
    let current = if current_text.is_empty() {
        None
    } else {
        match current_text.parse::<ReleaseVersion>() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "info/neco-release is malformed; replacing it");
                None
            }
        }
    };
    if should_record(found, current) {
        storage
            .put_neco_release(&found.to_string(), leader_key)
            .await?;
        tracing::info!(version = %found, previous = %current_text, env = env.as_str(), "found a new neco release");
    } else if current.is_some_and(|c| found < c) {
        tracing::info!(version = %found, current = %current_text, "ignoring an older neco release");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(tag: &str, prerelease: bool, draft: bool) -> Release {
        serde_json::from_value(serde_json::json!({
            "id": 1, "tag_name": tag, "name": tag, "draft": draft, "prerelease": prerelease,
            "assets": [], "html_url": "", "published_at": null
        }))
        .unwrap()
    }

    #[test]
    fn newest_release_table() {
        let all = vec![
            release("release-2026.11.25-9", false, false),
            release("release-2026.11.26-10", true, false),
            release("release-2026.11.27-11", false, true),
            release("test-2026.11.28-12", true, false),
            release("v1.2.3", false, false),
            release("release-garbage", false, false),
        ];
        assert_eq!(
            newest_release(&all, true).map(|v| v.to_string()).as_deref(),
            Some("2026.11.26-10")
        );
        assert_eq!(
            newest_release(&all, false)
                .map(|v| v.to_string())
                .as_deref(),
            Some("2026.11.25-9")
        );
        assert_eq!(newest_release(&[], true), None);
    }

    #[test]
    fn only_forward() {
        let v = |s: &str| s.parse::<ReleaseVersion>().unwrap();
        assert!(should_record(v("2026.11.26-2"), None));
        assert!(should_record(v("2026.11.26-10"), Some(v("2026.11.26-9"))));
        assert!(!should_record(v("2026.11.26-9"), Some(v("2026.11.26-9"))));
        assert!(!should_record(v("2026.11.25-99"), Some(v("2026.11.26-1"))));
    }
}
