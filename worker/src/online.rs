//! The HTTP clients and the GitHub token of the worker, as etcd's `config/` says when they
//! are needed: an operator's `neco config set proxy` or `github-token` applies to the next
//! step or self-update without a restart. Hosts of the data center (sabakan) are reached
//! directly, never through the proxy.

use fetch::http::{Http, HttpOptions};
use neco::storage::{ConfigKey, Storage, StorageError};
use neco::Secret;
use std::sync::Arc;

/// Why the client or the token is not at hand.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// etcd did not answer (a restart may cure it).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// `config/proxy` cannot be used.
    #[error("{0}")]
    Proxy(String),
}

/// Reads `config/proxy` and `config/github-token` at each use; the client is built again only
/// when the proxy changed.
pub struct Online {
    storage: Storage,
    /// Everything but the proxy.
    options: HttpOptions,
    /// The client of the proxy read last.
    cached: tokio::sync::Mutex<Option<(Option<String>, Arc<Http>)>>,
    /// The client of the data center's own hosts.
    local: Http,
}

impl Online {
    /// `options`' proxy is used when `config/proxy` is not set.
    pub fn new(storage: Storage, options: HttpOptions) -> Result<Self, OnlineError> {
        let local = Http::with_options(HttpOptions {
            proxy: None,
            direct: true,
            ..options.clone()
        })
        .map_err(|e| OnlineError::Proxy(e.to_string()))?;
        Ok(Self {
            storage,
            options,
            cached: tokio::sync::Mutex::new(None),
            local,
        })
    }

    /// The client of the data center's own hosts (sabakan): no proxy.
    pub fn local(&self) -> &Http {
        &self.local
    }

    /// The client for the proxy that `config/proxy` names now.
    pub async fn http(&self) -> Result<Arc<Http>, OnlineError> {
        let proxy = self.storage.config(ConfigKey::Proxy).await?;
        let mut cached = self.cached.lock().await;
        if let Some((used, http)) = cached.as_ref() {
            if *used == proxy {
                return Ok(Arc::clone(http));
            }
        }
        let mut options = self.options.clone();
        if let Some(text) = &proxy {
            // The URL may hold a password: neither it nor the parse error's input is shown.
            let url = reqwest::Url::parse(text)
                .map_err(|e| OnlineError::Proxy(format!("config/proxy is not a URL: {e}")))?;
            tracing::info!(
                proxy_host = url.host_str().unwrap_or_default(),
                "downloads go through config/proxy"
            );
            options.proxy = Some(url);
        }
        let http = Arc::new(
            Http::with_options(options)
                .map_err(|e| OnlineError::Proxy(format!("config/proxy: {e}")))?,
        );
        *cached = Some((proxy, Arc::clone(&http)));
        Ok(http)
    }

    /// `config/github-token` now.
    pub async fn github_token(&self) -> Result<Option<Secret>, StorageError> {
        Ok(self
            .storage
            .config(ConfigKey::GitHubToken)
            .await?
            .map(Secret::new))
    }
}
