//! A local mirror of upstream: the real `docker-registry`, the GitHub releases stand-in and
//! the OS feed, seeded from a TOML file listing which versions exist.
//!
//! It stands in for ghcr.io, GitHub and the Flatcar feed on a machine that cannot reach them
//! (`cargo xtask codegen --mirror`, and the suites that need the pinned artifacts to exist).
//! [`Mirror::start`] serves on loopback; [`Mirror::start_on`] serves the data center's
//! private network (the registry is seeded on loopback and served to the network by a second
//! `docker-registry` on the same storage).

use crate::debs::DebPackage;
use crate::error::{Error, Result};
use crate::feed::FeedServer;
use crate::github::{AssetSpec, GitHubStandIn, ReleaseSpec};
use crate::network::Lan;
use crate::registry::{PushedImage, Registry, RegistryView};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;

/// The seed of neco's pins of 2025-03-10, checked in beside this crate.
pub const NECO_PINS_2025: &str = include_str!("../mirror/neco-pins-2025-03-10.toml");

/// Which versions the mirror holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSeed {
    #[serde(default)]
    pub image: Vec<SeedImage>,
    #[serde(default)]
    pub deb: Vec<SeedDeb>,
    pub os_image: SeedOs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedImage {
    /// `host/path`, e.g. `ghcr.io/cybozu/etcd`; the mirror serves it as `path`.
    pub repository: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedDeb {
    /// GitHub `owner/name`.
    pub github: String,
    /// The Debian package name of the assets.
    pub package: String,
    /// Oldest first.
    pub releases: Vec<SeedRelease>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRelease {
    pub tag: String,
    /// The Debian version of the asset built for this release.
    pub version: String,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOs {
    pub channel: String,
    pub versions: Vec<String>,
}

impl MirrorSeed {
    /// Parses a seed; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))
    }

    /// Reads a seed file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The seed of neco's pins of 2025-03-10.
    pub fn neco_2025() -> Result<Self> {
        Self::parse("mirror/neco-pins-2025-03-10.toml", NECO_PINS_2025)
    }
}

/// The running mirror. Everything stops on drop.
#[derive(Debug)]
pub struct Mirror {
    pub registry: Registry,
    pub github: GitHubStandIn,
    pub feed: FeedServer,
    pub images: Vec<PushedImage>,
    hosts: BTreeSet<String>,
    /// The registry as the private network sees it, with [`Mirror::start_on`].
    view: Option<RegistryView>,
}

impl Mirror {
    /// Starts the servers on loopback and seeds them.
    pub fn start(seed: &MirrorSeed) -> Result<Self> {
        Self::start_with(seed, None)
    }

    /// Starts the servers on the bridge of `lan` (the registry is seeded on loopback and also
    /// served there) and seeds them.
    pub fn start_on(seed: &MirrorSeed, lan: &Lan) -> Result<Self> {
        Self::start_with(seed, Some(lan))
    }

    fn start_with(seed: &MirrorSeed, lan: Option<&Lan>) -> Result<Self> {
        let registry = Registry::start()?;
        let mut images = Vec::new();
        let mut hosts = BTreeSet::new();
        for image in &seed.image {
            let (host, path) = image.repository.split_once('/').ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "seed image {:?}: expected host/path",
                    image.repository
                ))
            })?;
            hosts.insert(host.to_owned());
            for tag in &image.tags {
                images.push(registry.push_image(path, tag)?);
            }
        }
        let (github, view) = match lan {
            Some(lan) => {
                let (listener, addr) = lan.bind("registry")?;
                drop(listener);
                let std::net::SocketAddr::V4(addr) = addr else {
                    return Err(Error::InvalidArgument(format!(
                        "the private network gave {addr}, not an IPv4 address"
                    )));
                };
                let view = registry.serve_in(lan.bridge(), addr)?;
                let github = GitHubStandIn::start_on(lan.bind("github-standin")?.0, None)?;
                (github, Some(view))
            }
            None => (GitHubStandIn::start(None)?, None),
        };
        for deb in &seed.deb {
            github.add_repo(&deb.github);
            for release in &deb.releases {
                let package = DebPackage::simple(&deb.package, &release.version);
                let asset = AssetSpec::new(&package.file_name(), package.build()?, true);
                github.add_release(
                    &deb.github,
                    ReleaseSpec::new(&release.tag)
                        .prerelease(release.prerelease)
                        .draft(release.draft)
                        .asset(asset),
                );
            }
        }
        let versions: Vec<&str> = seed.os_image.versions.iter().map(String::as_str).collect();
        let feed = match lan {
            Some(lan) => {
                FeedServer::start_on(lan.bind("feed")?.0, &seed.os_image.channel, &versions)?
            }
            None => FeedServer::start(&seed.os_image.channel, &versions)?,
        };
        Ok(Self {
            registry,
            github,
            feed,
            images,
            hosts,
            view,
        })
    }

    /// `HOST=URL` for every registry host of the seed, all served by the one local registry
    /// (on the private network with [`Mirror::start_on`]): the form of
    /// `artifacts-gen --registry`.
    pub fn registry_overrides(&self) -> Vec<String> {
        overrides(&self.hosts, &self.registry_url())
    }

    /// The registry's base URL as its clients reach it.
    pub fn registry_url(&self) -> String {
        self.view
            .as_ref()
            .map_or_else(|| self.registry.base_url(), RegistryView::base_url)
    }

    /// The registry serving the private network, with [`Mirror::start_on`].
    pub fn registry_view(&self) -> Option<&RegistryView> {
        self.view.as_ref()
    }
}

/// `HOST=URL` for every host of `hosts`, all served at `url`.
pub(crate) fn overrides(hosts: &BTreeSet<String>, url: &str) -> Vec<String> {
    hosts.iter().map(|host| format!("{host}={url}")).collect()
}
