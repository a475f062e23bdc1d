//! A simulated upstream for the nightly's tests, separate from the mirror: Debian's real
//! `docker-registry` behind token authentication (as ghcr.io: anonymous tokens for public
//! repositories, basic credentials for private ones, [`crate::token_auth`]), the GitHub
//! releases stand-in and the OS feed stand-in, seeded from a [`MirrorSeed`].
//!
//! Nothing it serves is what the mirror makes: every image carries the label
//! `io.cybozu.neco-rs.origin=upstream` (the same runnable program, other digests), the
//! repositories named in [`UpstreamOptions::multi_platform`] are image indexes of a linux/amd64
//! and a linux/arm64 image, every deb has other content, and the OS files other bytes. A
//! candidate resolved against it pins digests only it has, so a data center can serve them
//! only from a store filled from it.

use crate::debs::DebPackage;
use crate::error::{Error, Result};
use crate::feed::FeedServer;
use crate::github::{AssetSpec, GitHubStandIn, ReleaseSpec};
use crate::mirror::MirrorSeed;
use crate::registry::{Registry, RegistryView};
use crate::token_auth::{TokenPolicy, TokenServer};
use crate::util::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The label value of every image it makes.
pub const ORIGIN: &str = "upstream";

/// What is special about some repositories (`host/path`, as the seed names them).
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    /// Pulled only with [`Upstream::credentials`].
    pub private: Vec<String>,
    /// Image indexes (linux/arm64 first, then linux/amd64) instead of plain manifests.
    pub multi_platform: Vec<String>,
}

/// The running upstream; everything stops on drop.
#[derive(Debug)]
pub struct Upstream {
    /// The clients' registry: token authentication in front of [`Upstream::seeder`]'s storage.
    view: RegistryView,
    token: TokenServer,
    /// Where images are pushed (no authentication; never handed to a client).
    seeder: Registry,
    pub github: GitHubStandIn,
    pub feed: FeedServer,
    hosts: BTreeSet<String>,
    options: UpstreamOptions,
    /// `(host/path, tag)` → the digest pushed.
    digests: Mutex<BTreeMap<(String, String), String>>,
}

/// The user of the private repositories.
pub const USER: &str = "dctest-puller";
/// Their password (a test's own secret).
pub const PASSWORD: &str = "upstream-s3cret";

impl Upstream {
    /// Starts the servers on loopback and seeds them from `seed`.
    pub fn start(seed: &MirrorSeed, options: UpstreamOptions) -> Result<Self> {
        let path_of = |repository: &str| -> Result<String> {
            repository
                .split_once('/')
                .map(|(_, path)| path.to_owned())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("image {repository:?}: expected host/path"))
                })
        };
        let private = options
            .private
            .iter()
            .map(|r| path_of(r))
            .collect::<Result<BTreeSet<_>>>()?;
        let token = TokenServer::start(TokenPolicy {
            service: "dctest-upstream".to_owned(),
            user: USER.to_owned(),
            password: PASSWORD.to_owned(),
            private,
        })?;
        let seeder = Registry::start()?;
        let view = seeder.serve_with_token_auth(&token)?;
        let github = GitHubStandIn::start(None)?;
        let feed = FeedServer::start(&seed.os_image.channel, &[])?;
        let mut upstream = Self {
            view,
            token,
            seeder,
            github,
            feed,
            hosts: BTreeSet::new(),
            options,
            digests: Mutex::default(),
        };
        for image in &seed.image {
            let (host, _) = image.repository.split_once('/').ok_or_else(|| {
                Error::InvalidArgument(format!("image {:?}: expected host/path", image.repository))
            })?;
            upstream.hosts.insert(host.to_owned());
            for tag in &image.tags {
                upstream.push(&image.repository, tag)?;
            }
        }
        for deb in &seed.deb {
            upstream.github.add_repo(&deb.github);
            for release in &deb.releases {
                let mut package = DebPackage::simple(&deb.package, &release.version);
                for (_, content) in &mut package.files {
                    content.extend_from_slice(b"built upstream\n");
                }
                let asset = AssetSpec::new(&package.file_name(), package.build()?, true);
                upstream.github.add_release(
                    &deb.github,
                    ReleaseSpec::new(&release.tag)
                        .prerelease(release.prerelease)
                        .draft(release.draft)
                        .asset(asset),
                );
            }
        }
        let channel = &seed.os_image.channel;
        for version in &seed.os_image.versions {
            let bytes = |kind: &str| {
                format!("upstream flatcar {kind} channel={channel} version={version}\n")
                    .repeat(32)
                    .into_bytes()
            };
            upstream
                .feed
                .add_files(version, bytes("kernel"), bytes("initrd"))?;
        }
        Ok(upstream)
    }

    /// Pushes `repository:tag` (`host/path`), as an index when the repository is
    /// multi-platform; returns its digest.
    pub fn push(&self, repository: &str, tag: &str) -> Result<String> {
        let (_, path) = repository.split_once('/').ok_or_else(|| {
            Error::InvalidArgument(format!("image {repository:?}: expected host/path"))
        })?;
        let digest = if self.options.multi_platform.iter().any(|r| r == repository) {
            let arm64 =
                self.seeder
                    .push_image_as(path, &format!("{tag}-arm64"), ORIGIN, "arm64")?;
            let amd64 =
                self.seeder
                    .push_image_as(path, &format!("{tag}-amd64"), ORIGIN, "amd64")?;
            self.seeder
                .push_index(path, tag, &[(&arm64, "arm64"), (&amd64, "amd64")])?
        } else {
            self.seeder
                .push_image_as(path, tag, ORIGIN, "amd64")?
                .manifest_digest
        };
        lock(&self.digests).insert((repository.to_owned(), tag.to_owned()), digest.clone());
        Ok(digest)
    }

    /// The digest of `repository:tag` as pushed here.
    pub fn digest(&self, repository: &str, tag: &str) -> Option<String> {
        lock(&self.digests)
            .get(&(repository.to_owned(), tag.to_owned()))
            .cloned()
    }

    /// The registry's base URL, as clients reach it (token authentication).
    pub fn registry_url(&self) -> String {
        self.view.base_url()
    }

    /// `HOST=URL` for every registry host of the seed: the form of `artifacts-gen
    /// --registry`.
    pub fn registry_overrides(&self) -> Vec<String> {
        crate::mirror::overrides(&self.hosts, &self.registry_url())
    }

    /// The requests the clients' registry answered (`METHOD /path`).
    pub fn registry_requests(&self) -> Result<Vec<String>> {
        self.view.requests()
    }

    /// The token server.
    pub fn token(&self) -> &TokenServer {
        &self.token
    }

    /// The user and password of the private repositories.
    pub fn credentials(&self) -> (&'static str, &'static str) {
        (USER, PASSWORD)
    }

    /// The seeder's registry, for faults (a blob changed in its storage).
    pub fn seeder(&self) -> &Registry {
        &self.seeder
    }
}
