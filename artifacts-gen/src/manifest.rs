//! `artifacts.toml`: which components are tracked, where they come from, and their policies.

use crate::policy::{IgnoreEntry, Policy};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// An error reading the manifest. The messages name the file, and for syntax or schema errors
/// the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
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
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub image: Vec<ImageSpec>,
    #[serde(default)]
    pub deb: Vec<DebSpec>,
    pub os_image: OsSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Component name; becomes `artifacts::images::<NAME>`. Defaults to the last path element.
    pub name: Option<String>,
    /// `host/path`, e.g. `ghcr.io/cybozu/etcd`.
    pub repository: String,
    /// Pulling needs credentials (`NECO_REGISTRY_USERNAME` / `NECO_REGISTRY_PASSWORD`).
    #[serde(default)]
    pub private: bool,
    #[serde(flatten)]
    pub policy: PolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebSpec {
    pub name: String,
    /// GitHub `owner/name`.
    pub github: String,
    /// Regular expression the asset file name must match.
    pub asset: String,
    #[serde(flatten)]
    pub policy: PolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsSpec {
    pub channel: String,
    /// URL of the release feed: a JSON object keyed by version.
    pub feed: String,
    /// Base URL of the releases' files, `{channel}` replaced by the channel: a release's file
    /// is at `<base>amd64-usr/<version>/<file>`, its checksums at `<file>.DIGESTS`.
    pub base_url: String,
    #[serde(flatten)]
    pub policy: PolicySpec,
}

/// The policy keys shared by every component.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicySpec {
    /// A semver requirement on the upstream `X.Y.Z` part, e.g. `">=3.5, <3.6"`.
    pub versions: Option<String>,
    /// Whether pre-releases may be chosen (never in release mode).
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub ignore: Vec<IgnoreSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreSpec {
    pub version: String,
    pub reason: String,
    /// The entry stops applying after this day (TOML date, e.g. `2027-01-01`).
    pub until: Option<toml::value::Datetime>,
}

/// What kind of component a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Deb,
    Os,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Image => "image",
            Kind::Deb => "deb",
            Kind::Os => "os image",
        })
    }
}

impl ImageSpec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| {
            self.repository
                .rsplit('/')
                .next()
                .unwrap_or(&self.repository)
        })
    }
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses manifest text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = clikit::parse_toml(text).map_err(|e| ManifestError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
        manifest.check().map_err(|message| ManifestError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for image in &self.image {
            let name = image.name();
            artifacts::check_name(name).map_err(|e| format!("image {name:?}: name: {e}"))?;
            artifacts::check_repository(&image.repository)
                .map_err(|e| format!("image {name:?}: repository {:?}: {e}", image.repository))?;
            if !names.insert(("image", name.to_owned())) {
                return Err(format!("image {name:?} is listed twice"));
            }
            image
                .policy
                .to_policy()
                .map_err(|e| format!("image {name:?}: {e}"))?;
        }
        for deb in &self.deb {
            let name = &deb.name;
            artifacts::check_name(name).map_err(|e| format!("deb {name:?}: name: {e}"))?;
            artifacts::check_github_repo(&deb.github)
                .map_err(|e| format!("deb {name:?}: github {:?}: {e}", deb.github))?;
            regex::Regex::new(&deb.asset)
                .map_err(|e| format!("deb {name:?}: asset pattern {:?}: {e}", deb.asset))?;
            if !names.insert(("deb", name.clone())) {
                return Err(format!("deb {name:?} is listed twice"));
            }
            deb.policy
                .to_policy()
                .map_err(|e| format!("deb {name:?}: {e}"))?;
        }
        let os = &self.os_image;
        artifacts::check_name(&os.channel)
            .map_err(|e| format!("os_image: channel {:?}: {e}", os.channel))?;
        reqwest::Url::parse(&os.feed).map_err(|e| format!("os_image: feed {:?}: {e}", os.feed))?;
        let base = os.base_url.replace("{channel}", &os.channel);
        reqwest::Url::parse(&base)
            .map_err(|e| e.to_string())
            .and_then(|url| {
                if url.path().ends_with('/') {
                    Ok(())
                } else {
                    Err("it must end with `/`".to_owned())
                }
            })
            .map_err(|e| format!("os_image: base_url {:?}: {e}", os.base_url))?;
        os.policy
            .to_policy()
            .map_err(|e| format!("os_image: {e}"))?;
        Ok(())
    }

    /// Finds a component by name (`--explain NAME`).
    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        if self.image.iter().any(|i| i.name() == name) {
            Some(Kind::Image)
        } else if self.deb.iter().any(|d| d.name == name) {
            Some(Kind::Deb)
        } else if name == "os" || name == "os-image" || name == self.os_image.channel {
            Some(Kind::Os)
        } else {
            None
        }
    }
}

impl PolicySpec {
    /// The checked policy.
    pub fn to_policy(&self) -> Result<Policy, String> {
        let versions = self
            .versions
            .as_deref()
            .map(|req| semver::VersionReq::parse(req).map_err(|e| format!("versions {req:?}: {e}")))
            .transpose()?;
        let ignore = self
            .ignore
            .iter()
            .map(|entry| {
                let until = entry
                    .until
                    .as_ref()
                    .map(|d| match (d.date, d.time) {
                        (Some(date), None) => time::Date::from_calendar_date(
                            i32::from(date.year),
                            time::Month::try_from(date.month).map_err(|e| e.to_string())?,
                            date.day,
                        )
                        .map_err(|e| e.to_string()),
                        _ => Err("expected a date such as 2027-01-01".to_owned()),
                    })
                    .transpose()
                    .map_err(|e| format!("ignore {:?}: until: {e}", entry.version))?;
                if entry.reason.trim().is_empty() {
                    return Err(format!("ignore {:?}: reason is empty", entry.version));
                }
                Ok(IgnoreEntry {
                    version: entry.version.clone(),
                    reason: entry.reason.clone(),
                    until,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Policy {
            versions,
            prerelease: self.prerelease,
            ignore,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[image]]
repository = "ghcr.io/cybozu/etcd"
versions = ">=3.5, <3.6"
ignore = [{ version = "3.5.18.1", reason = "broken build", until = 2027-01-01 }]

[[deb]]
name = "etcdpasswd"
github = "cybozu-go/etcdpasswd"
asset = '^etcdpasswd_.*_amd64\.deb$'

[os_image]
channel = "stable"
feed = "https://www.flatcar.org/releases-json/releases-stable.json"
base_url = "https://{channel}.release.flatcar-linux.net/"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("artifacts.toml"), text)
    }

    #[test]
    fn parses_a_good_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.image[0].name(), "etcd");
        let policy = m.image[0].policy.to_policy().unwrap();
        assert_eq!(policy.ignore[0].until.unwrap().to_string(), "2027-01-01");
        assert_eq!(m.kind_of("etcdpasswd"), Some(Kind::Deb));
        assert_eq!(m.kind_of("stable"), Some(Kind::Os));
        assert_eq!(m.kind_of("nope"), None);
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let err = parse("[[image]]\nrepository = \"ghcr.io/a/b\"\nprivate = yes\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("artifacts.toml:3:11: "), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("versions = \">=3.5, <3.6\"", "verions = \">=3.5\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("verions"), "{err}");
        assert!(err.starts_with("artifacts.toml:"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                GOOD.replace(">=3.5, <3.6", ">=three"),
                "image \"etcd\": versions \">=three\"",
            ),
            (
                GOOD.replace("ghcr.io/cybozu/etcd", "ghcr.io/Cybozu/etcd"),
                "repository \"ghcr.io/Cybozu/etcd\"",
            ),
            (GOOD.replace("amd64\\.deb$", "(unclosed"), "asset pattern"),
            (GOOD.replace("broken build", " "), "reason is empty"),
            (
                GOOD.replace("until = 2027-01-01", "until = 2027-01-01T00:00:00"),
                "until",
            ),
            (
                format!("{GOOD}\n[[image]]\nrepository = \"ghcr.io/other/etcd\"\n"),
                "listed twice",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
