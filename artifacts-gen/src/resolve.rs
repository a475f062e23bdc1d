//! Resolution: ask every source concurrently, apply the policies, build the pinned set.

use crate::feed::{self, FeedError};
use crate::generated::{PinnedDeb, PinnedImage, PinnedOs, PinnedSet};
use crate::manifest::{DebSpec, ImageSpec, Kind, Manifest, OsSpec};
use crate::policy::{select, Offer, Rules, Selection};
use fetch::github::{GitHub, GitHubError};
use fetch::http::Http;
use fetch::registry::{Credentials, RegistryError, RepoClient};
use fetch::Secret;
use reqwest::Url;
use std::collections::BTreeMap;

/// Where each source is reached. Every base URL can be overridden so tests and mirrors work.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Registry host (as in `artifacts.toml`) → base URL of its API.
    pub registries: BTreeMap<String, Url>,
    /// GitHub REST API base, `https://api.github.com/` by default.
    pub github_api: Option<Url>,
    /// Replaces the OS feed URL of `artifacts.toml`.
    pub os_feed: Option<Url>,
    /// Replaces the base URL of the OS image's files of `artifacts.toml` (with `{channel}`).
    pub os_image_base: Option<String>,
}

impl Endpoints {
    pub fn upstream() -> Self {
        Self {
            registries: BTreeMap::new(),
            github_api: None,
            os_feed: None,
            os_image_base: None,
        }
    }

    fn registry_base(&self, host: &str) -> Result<Url, String> {
        match self.registries.get(host) {
            Some(url) => Ok(url.clone()),
            None => Url::parse(&format!("https://{host}/")).map_err(|e| e.to_string()),
        }
    }

    fn github(&self) -> Url {
        self.github_api.clone().unwrap_or_else(|| {
            Url::parse("https://api.github.com/").unwrap_or_else(|_| unreachable!("constant URL"))
        })
    }

    /// Whether any source is overridden (a mirror or a stand-in rather than upstream).
    pub fn overridden(&self) -> bool {
        !self.registries.is_empty()
            || self.github_api.is_some()
            || self.os_feed.is_some()
            || self.os_image_base.is_some()
    }

    /// The text recorded as `RESOLVED_FROM`. Deterministic: no ports, no times.
    pub fn provenance(&self) -> String {
        if self.overridden() {
            "a local mirror reached through endpoint overrides, not upstream: tags follow \
             the mirror and digests are the mirror's until `cargo xtask codegen` is run \
             with network access"
                .to_owned()
        } else {
            "upstream: the registries, GitHub releases and OS feed named in artifacts.toml"
                .to_owned()
        }
    }
}

/// A failure of one component, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {source}")]
pub struct ResolveError {
    pub kind: Kind,
    pub name: String,
    pub source: SourceError,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("{0}")]
    Config(String),
    #[error("no acceptable version among {} candidates ({}); run `artifacts-gen --explain {name}` to see every candidate and the rule that dropped it", .selection.candidates.len(), .selection.drop_summary())]
    NoAcceptable {
        name: String,
        selection: Box<Selection>,
    },
}

/// The sources and what to reach them with.
pub struct Resolver {
    pub http: Http,
    pub endpoints: Endpoints,
    pub credentials: Option<Credentials>,
    pub github_token: Option<Secret>,
}

/// One resolved component and the selection behind it.
#[derive(Debug, Clone)]
pub struct Resolution<T> {
    pub pin: T,
    pub selection: Selection,
}

/// Everything resolved. `resolved` dates are left empty here: [`date_pins`] fills them in.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub images: Vec<Resolution<PinnedImage>>,
    pub debs: Vec<Resolution<PinnedDeb>>,
    pub os_image: Resolution<PinnedOs>,
}

fn chosen(kind: Kind, name: &str, selection: &Selection) -> Result<String, ResolveError> {
    selection.chosen.clone().ok_or_else(|| ResolveError {
        kind,
        name: name.to_owned(),
        source: SourceError::NoAcceptable {
            name: name.to_owned(),
            selection: Box::new(selection.clone()),
        },
    })
}

impl Resolver {
    pub async fn image(
        &self,
        spec: &ImageSpec,
        rules: &Rules,
    ) -> Result<Resolution<PinnedImage>, ResolveError> {
        let name = spec.name();
        let err = |source: SourceError| ResolveError {
            kind: Kind::Image,
            name: name.to_owned(),
            source,
        };
        let (host, path) = spec
            .repository
            .split_once('/')
            .ok_or_else(|| err(SourceError::Config("repository has no host".into())))?;
        let base = self
            .endpoints
            .registry_base(host)
            .map_err(|e| err(SourceError::Config(format!("registry {host}: {e}"))))?;
        let creds = if spec.private {
            self.credentials.as_ref()
        } else {
            None
        };
        let mut client = RepoClient::new(&self.http, base, path, creds);
        let tags = client.list_tags().await.map_err(|e| err(e.into()))?;
        let selection = select(tags.into_iter().map(Offer::new).collect(), rules);
        let tag = chosen(Kind::Image, name, &selection)?;
        let digest = client
            .manifest_digest(&tag)
            .await
            .map_err(|e| err(e.into()))?;
        Ok(Resolution {
            pin: PinnedImage {
                name: name.to_owned(),
                repository: spec.repository.clone(),
                tag,
                digest,
                private: spec.private,
                resolved: String::new(),
            },
            selection,
        })
    }

    pub async fn deb(
        &self,
        spec: &DebSpec,
        rules: &Rules,
    ) -> Result<Resolution<PinnedDeb>, ResolveError> {
        let err = |source: SourceError| ResolveError {
            kind: Kind::Deb,
            name: spec.name.clone(),
            source,
        };
        let pattern = regex::Regex::new(&spec.asset)
            .map_err(|e| err(SourceError::Config(format!("asset pattern: {e}"))))?;
        let github = GitHub::new(
            &self.http,
            self.endpoints.github(),
            self.github_token.as_ref(),
        );
        let releases = github
            .releases(&spec.github)
            .await
            .map_err(|e| err(SourceError::GitHub(e)))?;
        let allow_pre = rules.policy.prerelease && !rules.release;
        let offers = releases
            .iter()
            .map(|r| Offer {
                tag: r.tag_name.clone(),
                unusable: if r.draft {
                    Some("draft release".into())
                } else if r.prerelease && !allow_pre {
                    Some("marked pre-release on GitHub".into())
                } else if !r.assets.iter().any(|a| pattern.is_match(&a.name)) {
                    Some(format!("no asset matches {:?}", spec.asset))
                } else {
                    None
                },
            })
            .collect();
        let selection = select(offers, rules);
        let tag = chosen(Kind::Deb, &spec.name, &selection)?;
        let asset = releases
            .iter()
            .filter(|r| r.tag_name == tag && !r.draft)
            .flat_map(|r| r.assets.iter())
            .find(|a| pattern.is_match(&a.name))
            .ok_or_else(|| {
                err(SourceError::Config(format!(
                    "release {tag}: asset vanished"
                )))
            })?;
        let sha256 = github
            .asset_sha256(asset)
            .await
            .map_err(|e| err(SourceError::GitHub(e)))?;
        Ok(Resolution {
            pin: PinnedDeb {
                name: spec.name.clone(),
                repository: spec.github.clone(),
                release: tag,
                asset: asset.name.clone(),
                sha256,
                resolved: String::new(),
            },
            selection,
        })
    }

    pub async fn os_image(
        &self,
        spec: &OsSpec,
        rules: &Rules,
    ) -> Result<Resolution<PinnedOs>, ResolveError> {
        let err = |source: SourceError| ResolveError {
            kind: Kind::Os,
            name: spec.channel.clone(),
            source,
        };
        let feed = self
            .endpoints
            .os_feed
            .as_ref()
            .map_or_else(|| spec.feed.clone(), Url::to_string);
        let versions = feed::versions(&self.http, &feed)
            .await
            .map_err(|e| err(SourceError::Feed(e)))?;
        let selection = select(versions.into_iter().map(Offer::new).collect(), rules);
        let version = chosen(Kind::Os, &spec.channel, &selection)?;
        // The checksums the feed publishes next to the chosen release's files.
        let base = self
            .endpoints
            .os_image_base
            .as_deref()
            .unwrap_or(&spec.base_url);
        let digests_url = |file: &str| {
            let url = format!(
                "{}.DIGESTS",
                artifacts::OsImage::file_url(base, &spec.channel, &version, file)
            );
            Url::parse(&url).map_err(|e| {
                err(SourceError::Feed(FeedError::BadUrl {
                    url,
                    message: e.to_string(),
                }))
            })
        };
        let kernel_url = digests_url(artifacts::OsImage::KERNEL_FILE)?;
        let initrd_url = digests_url(artifacts::OsImage::INITRD_FILE)?;
        let (kernel, initrd) = futures::join!(
            feed::file_sha512(&self.http, &kernel_url, artifacts::OsImage::KERNEL_FILE),
            feed::file_sha512(&self.http, &initrd_url, artifacts::OsImage::INITRD_FILE),
        );
        Ok(Resolution {
            pin: PinnedOs {
                channel: spec.channel.clone(),
                version,
                kernel_sha512: kernel.map_err(|e| err(SourceError::Feed(e)))?,
                initrd_sha512: initrd.map_err(|e| err(SourceError::Feed(e)))?,
                resolved: String::new(),
            },
            selection,
        })
    }

    /// Resolves every component concurrently (the per-host limit of [`Http`] applies).
    /// Returns every failure, not just the first.
    pub async fn resolve_all(
        &self,
        manifest: &Manifest,
        rules: &RuleBook,
    ) -> Result<Resolved, Vec<ResolveError>> {
        let images = futures::future::join_all(
            manifest
                .image
                .iter()
                .map(|spec| self.image(spec, rules.for_component(Kind::Image, spec.name()))),
        );
        let debs = futures::future::join_all(
            manifest
                .deb
                .iter()
                .map(|spec| self.deb(spec, rules.for_component(Kind::Deb, &spec.name))),
        );
        let os = self.os_image(
            &manifest.os_image,
            rules.for_component(Kind::Os, &manifest.os_image.channel),
        );
        let (images, debs, os) = futures::join!(images, debs, os);
        let mut errors = Vec::new();
        let images = collect(images, &mut errors);
        let debs = collect(debs, &mut errors);
        let os = os.map_err(|e| errors.push(e)).ok();
        match os {
            Some(os_image) if errors.is_empty() => Ok(Resolved {
                images,
                debs,
                os_image,
            }),
            _ => Err(errors),
        }
    }
}

fn collect<T>(results: Vec<Result<T, ResolveError>>, errors: &mut Vec<ResolveError>) -> Vec<T> {
    results
        .into_iter()
        .filter_map(|r| r.map_err(|e| errors.push(e)).ok())
        .collect()
}

/// The rules of every component, built once from the manifest and the mode.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    rules: BTreeMap<(String, String), Rules>,
    fallback: Rules,
}

impl RuleBook {
    /// `majors`: in release mode, the major version each image must keep.
    pub fn new(
        manifest: &Manifest,
        release: bool,
        majors: &BTreeMap<String, u64>,
        today: time::Date,
    ) -> Result<Self, String> {
        let mut rules = BTreeMap::new();
        let mut add = |kind: Kind,
                       name: &str,
                       spec: &crate::manifest::PolicySpec,
                       keep_major: Option<u64>|
         -> Result<(), String> {
            let policy = spec
                .to_policy()
                .map_err(|e| format!("{kind} {name}: {e}"))?;
            rules.insert(
                (kind.to_string(), name.to_owned()),
                Rules {
                    policy,
                    release,
                    keep_major,
                    today: Some(today),
                },
            );
            Ok(())
        };
        for spec in &manifest.image {
            let major = if release {
                majors.get(spec.name()).copied()
            } else {
                None
            };
            add(Kind::Image, spec.name(), &spec.policy, major)?;
        }
        for spec in &manifest.deb {
            add(Kind::Deb, &spec.name, &spec.policy, None)?;
        }
        add(
            Kind::Os,
            &manifest.os_image.channel,
            &manifest.os_image.policy,
            None,
        )?;
        Ok(Self {
            rules,
            fallback: Rules::default(),
        })
    }

    pub fn for_component(&self, kind: Kind, name: &str) -> &Rules {
        self.rules
            .get(&(kind.to_string(), name.to_owned()))
            .unwrap_or(&self.fallback)
    }
}

/// The major version of every image of a pinned set (release mode keeps it).
pub fn majors(set: &PinnedSet) -> BTreeMap<String, u64> {
    set.images
        .iter()
        .filter_map(|i| crate::policy::parse_version(&i.tag).map(|v| (i.name.clone(), v.major())))
        .collect()
}

/// Builds the pinned set. A pin that did not change keeps the day it was first resolved;
/// a changed or new one gets `today`.
pub fn date_pins(
    resolved: &Resolved,
    current: Option<&PinnedSet>,
    resolved_from: String,
    today: &str,
) -> PinnedSet {
    let images = resolved
        .images
        .iter()
        .map(|r| {
            let mut pin = r.pin.clone();
            pin.resolved = current
                .and_then(|c| c.images.iter().find(|i| i.name == pin.name))
                .filter(|old| {
                    old.tag == pin.tag
                        && old.digest == pin.digest
                        && old.repository == pin.repository
                })
                .map_or_else(|| today.to_owned(), |old| old.resolved.clone());
            pin
        })
        .collect();
    let debs = resolved
        .debs
        .iter()
        .map(|r| {
            let mut pin = r.pin.clone();
            pin.resolved = current
                .and_then(|c| c.debs.iter().find(|d| d.name == pin.name))
                .filter(|old| {
                    old.release == pin.release && old.asset == pin.asset && old.sha256 == pin.sha256
                })
                .map_or_else(|| today.to_owned(), |old| old.resolved.clone());
            pin
        })
        .collect();
    let mut os_image = resolved.os_image.pin.clone();
    os_image.resolved = current
        .map(|c| &c.os_image)
        .filter(|old| old.channel == os_image.channel && old.version == os_image.version)
        .map_or_else(|| today.to_owned(), |old| old.resolved.clone());
    PinnedSet {
        resolved_from,
        images,
        debs,
        os_image,
    }
}
