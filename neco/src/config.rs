//! The boot server's local configuration under `--root`: `etc/neco/config.toml` (how to reach
//! etcd) and `etc/neco/rack` (this server's LRN).

use crate::duration;
use crate::types::Lrn;
use crate::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file, relative to the root.
pub const CONFIG_FILE: &str = "etc/neco/config.toml";
/// The file holding this server's LRN, relative to the root.
pub const RACK_FILE: &str = "etc/neco/rack";
/// The default key prefix, neco's.
pub const DEFAULT_PREFIX: &str = "/neco/";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.3:2379`.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (default `/neco/`).
    pub prefix: String,
    pub dial_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsConfig>,
}

impl EtcdConfig {
    /// etcd without authentication or TLS (a cluster on loopback, as tests and benchmarks
    /// start one).
    pub fn plain(
        endpoints: Vec<String>,
        prefix: impl Into<String>,
        dial_timeout: Duration,
    ) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            dial_timeout,
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// Mutual TLS with etcd, as etcd's own `--trusted-ca-file`, `--cert-file`, `--key-file`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where neco's own releases are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubConfig {
    /// Base URL of the REST API (`https://api.github.com/`; a stand-in in dctest).
    pub api: reqwest::Url,
    /// `owner/name` of the repository whose releases carry the neco deb.
    pub repository: String,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        Self {
            api: reqwest::Url::parse(DEFAULT_GITHUB_API)
                .unwrap_or_else(|_| unreachable!("a constant URL")),
            repository: DEFAULT_GITHUB_REPOSITORY.to_owned(),
        }
    }
}

/// GitHub's REST API.
pub const DEFAULT_GITHUB_API: &str = "https://api.github.com/";
/// The repository of neco's releases.
pub const DEFAULT_GITHUB_REPOSITORY: &str = "cybozu-go/neco";

/// The default sabakan API of a boot server.
pub const DEFAULT_SABAKAN_URL: &str = "http://127.0.0.1:10080/";
/// Where kernel and initrd of the OS image are downloaded: `<base>amd64-usr/<version>/<file>`,
/// `{channel}` replaced by the pinned channel.
pub const DEFAULT_OS_IMAGE_BASE: &str = "https://{channel}.release.flatcar-linux.net/";

/// Where the worker gets and puts the pinned artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSources {
    /// Registry host (as pinned, e.g. `ghcr.io`) → base URL of a mirror to pull from instead.
    pub registries: std::collections::BTreeMap<String, reqwest::Url>,
    /// sabakan's REST API.
    pub sabakan: reqwest::Url,
    /// The OS image download base, with `{channel}`.
    pub os_image_base: String,
}

impl Default for ArtifactSources {
    fn default() -> Self {
        Self {
            registries: std::collections::BTreeMap::new(),
            sabakan: reqwest::Url::parse(DEFAULT_SABAKAN_URL)
                .unwrap_or_else(|_| unreachable!("a constant URL")),
            os_image_base: DEFAULT_OS_IMAGE_BASE.to_owned(),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: EtcdConfig,
    pub github: GitHubConfig,
    pub sources: ArtifactSources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    etcd: RawEtcd,
    github: Option<RawGitHub>,
    #[serde(default)]
    registries: std::collections::BTreeMap<String, String>,
    sabakan: Option<RawSabakan>,
    os_image: Option<RawOsImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSabakan {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOsImage {
    base_url: String,
}

/// An absolute http(s) URL whose path ends with `/`, so that joining keeps it.
fn base_url(text: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: expected an http(s) URL"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGitHub {
    api_url: Option<String>,
    repository: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    dial_timeout: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

impl Config {
    /// Reads `<root>/etc/neco/config.toml`.
    pub fn load(root: &Path) -> Result<Self, ConfigError> {
        let path = root.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text, root)
    }

    /// Parses config text; relative TLS paths are taken under `root`.
    pub fn parse(path: &Path, text: &str, root: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = clikit::parse_toml(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let github = match raw.github {
            None => GitHubConfig::default(),
            Some(gh) => {
                let mut config = GitHubConfig::default();
                if let Some(api) = gh.api_url {
                    let mut url = reqwest::Url::parse(&api)
                        .map_err(|e| invalid("github.api-url", format!("{api:?}: {e}")))?;
                    if !url.path().ends_with('/') {
                        let path = format!("{}/", url.path());
                        url.set_path(&path);
                    }
                    config.api = url;
                }
                if let Some(repo) = gh.repository {
                    let valid = repo.split('/').count() == 2
                        && repo.split('/').all(|p| {
                            !p.is_empty()
                                && p.bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        });
                    if !valid {
                        return Err(invalid(
                            "github.repository",
                            format!("{repo:?}: expected owner/name"),
                        ));
                    }
                    config.repository = repo;
                }
                config
            }
        };
        let mut sources = ArtifactSources::default();
        for (host, url) in &raw.registries {
            let url = base_url(url).map_err(|e| invalid("registries", format!("{host}: {e}")))?;
            sources.registries.insert(host.clone(), url);
        }
        if let Some(sabakan) = &raw.sabakan {
            sources.sabakan = base_url(&sabakan.url).map_err(|e| invalid("sabakan.url", e))?;
        }
        if let Some(os) = &raw.os_image {
            base_url(&os.base_url.replace("{channel}", "stable"))
                .map_err(|e| invalid("os-image.base-url", e))?;
            sources.os_image_base = if os.base_url.ends_with('/') {
                os.base_url.clone()
            } else {
                format!("{}/", os.base_url)
            };
        }
        let raw = raw.etcd;
        if raw.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "at least one endpoint is needed".into(),
            ));
        }
        for endpoint in &raw.endpoints {
            let url = reqwest::Url::parse(endpoint)
                .map_err(|e| invalid("etcd.endpoints", format!("{endpoint:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    "etcd.endpoints",
                    format!("{endpoint:?}: expected http://HOST:PORT or https://HOST:PORT"),
                ));
            }
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            return Err(invalid(
                "etcd.prefix",
                format!("{prefix:?}: must start and end with `/`"),
            ));
        }
        let dial_timeout = match raw.dial_timeout {
            Some(text) => {
                duration::parse(&text).map_err(|e| invalid("etcd.dial-timeout", e.to_string()))?
            }
            None => Duration::from_secs(2),
        };
        if raw.password.is_some() && raw.username.is_none() {
            return Err(invalid("etcd.password", "set etcd.username as well".into()));
        }
        let under_root = |p: PathBuf| {
            if p.is_absolute() {
                root.join(p.strip_prefix("/").unwrap_or(&p))
            } else {
                root.join(p)
            }
        };
        let tls = if raw.tls_ca.is_some() || raw.tls_cert.is_some() || raw.tls_key.is_some() {
            if raw.tls_cert.is_some() != raw.tls_key.is_some() {
                return Err(invalid(
                    "etcd.tls-cert",
                    "tls-cert and tls-key go together".into(),
                ));
            }
            Some(TlsConfig {
                ca: raw.tls_ca.map(under_root),
                cert: raw.tls_cert.map(under_root),
                key: raw.tls_key.map(under_root),
            })
        } else {
            None
        };
        Ok(Self {
            etcd: EtcdConfig {
                endpoints: raw.endpoints,
                prefix,
                dial_timeout,
                username: raw.username,
                password: raw.password.map(Secret::new),
                tls,
            },
            github,
            sources,
        })
    }
}

/// Reads this server's LRN from `<root>/etc/neco/rack`.
pub fn read_lrn(root: &Path) -> Result<Lrn, ConfigError> {
    let path = root.join(RACK_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| ConfigError::Invalid {
        path,
        field: "rack",
        message: format!("{:?} is not a rack number (0, 1, 2, …)", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/r/etc/neco/config.toml"), text, Path::new("/r"))
    }

    #[test]
    fn minimal_and_full() {
        let c = parse("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert_eq!(c.etcd.prefix, "/neco/");
        assert_eq!(c.github, GitHubConfig::default());
        assert_eq!(c.etcd.dial_timeout, Duration::from_secs(2));
        assert!(c.etcd.tls.is_none());
        let c = parse(
            r#"[etcd]
endpoints = ["https://10.0.0.3:2379", "https://10.0.0.4:2379"]
prefix = "/test/"
dial-timeout = "500ms"
username = "neco"
password = "pw"
tls-ca = "/etc/neco/ca.crt"
tls-cert = "etc/neco/etcd.crt"
tls-key = "etc/neco/etcd.key"

[github]
api-url = "http://127.0.0.1:9999/api"
repository = "example/neco"

[registries]
"ghcr.io" = "http://127.0.0.1:5000"

[sabakan]
url = "http://127.0.0.1:10080/"

[os-image]
base-url = "http://127.0.0.1:8000/{channel}"
"#,
        )
        .unwrap();
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert_eq!(c.etcd.dial_timeout, Duration::from_millis(500));
        let tls = c.etcd.tls.unwrap();
        assert_eq!(tls.ca.unwrap(), Path::new("/r/etc/neco/ca.crt"));
        assert_eq!(tls.cert.unwrap(), Path::new("/r/etc/neco/etcd.crt"));
        assert!(!format!("{:?}", c.etcd.password).contains("pw"));
        assert_eq!(c.github.api.as_str(), "http://127.0.0.1:9999/api/");
        assert_eq!(c.github.repository, "example/neco");
        assert_eq!(
            c.sources.registries["ghcr.io"].as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(c.sources.os_image_base, "http://127.0.0.1:8000/{channel}/");
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("[etcd]\nendpoints = []\n", "etcd.endpoints"),
            ("[etcd]\nendpoints = [\"ftp://x\"]\n", "etcd.endpoints"),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\nprefix = \"neco\"\n",
                "etcd.prefix",
            ),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\ndial-timeout = \"2\"\n",
                "etcd.dial-timeout",
            ),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\ntls-cert = \"c\"\n",
                "etcd.tls-cert",
            ),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\npassword = \"p\"\n",
                "etcd.password",
            ),
            (
                "[etcd]\nendpoints = [\"http://a:1\"]\n[github]\nrepository = \"neco\"\n",
                "github.repository",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("/r/etc/neco/config.toml: "), "{err}");
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = parse("[etcd]\nendpoints = [\"http://a:1\"]\nendpoint = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/r/etc/neco/config.toml:3:1: "), "{err}");
        assert!(err.contains("endpoint"), "{err}");
    }

    #[test]
    fn rack_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/neco")).unwrap();
        std::fs::write(dir.path().join(RACK_FILE), "12\n").unwrap();
        assert_eq!(read_lrn(dir.path()).unwrap(), 12);
        std::fs::write(dir.path().join(RACK_FILE), "twelve\n").unwrap();
        let err = read_lrn(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rack") && err.contains("twelve"), "{err}");
    }
}
