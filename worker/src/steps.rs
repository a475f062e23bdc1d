//! The step table of an update. Every step is idempotent and records what it installed under
//! `install/<LRN>/…`, so a step that already holds the pinned version does nothing.

use crate::contents::{self, Asset, Contents, OsFile, Sabakan};
use crate::debs;
use crate::online::Online;
use crate::services::{self, ServiceManager, ServiceSpec};
use fetch::github::GitHub;
use fetch::oci::{self, ImageSource};
use neco::config::ArtifactSources;
use neco::storage::Storage;
use neco::types::Lrn;
use std::path::PathBuf;

/// What step 1 copies for a pinned image.
pub fn image_source(image: &artifacts::ContainerImage) -> ImageSource {
    ImageSource {
        repository: image.repository.as_str().to_owned(),
        tag: image.tag.as_str().to_owned(),
        digest: image.digest.as_str().to_owned(),
        private: image.private,
    }
}

/// The steps, in order. The last one is a no-op barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    FetchImages,
    InstallDebs,
    Services,
    SabakanContents,
    Final,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::FetchImages,
        Step::InstallDebs,
        Step::Services,
        Step::SabakanContents,
        Step::Final,
    ];

    /// Steps are numbered from 1, as in etcd.
    pub fn number(self) -> u32 {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(0, |i| u32::try_from(i + 1).unwrap_or(0))
    }

    pub fn from_number(n: u32) -> Option<Self> {
        usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| Self::ALL.get(i).copied())
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::FetchImages => "fetch images",
            Step::InstallDebs => "install debs",
            Step::Services => "services",
            Step::SabakanContents => "sabakan contents",
            Step::Final => "final barrier",
        }
    }
}

/// The number of the final step.
pub fn final_step() -> u32 {
    Step::Final.number()
}

/// The services run from pinned images on every boot server.
pub fn services() -> Vec<ServiceSpec> {
    use artifacts::images as i;
    vec![
        // neco's name: Debian's etcd package has its own etcd.service, which a unit named
        // etcd.service here would override.
        ServiceSpec {
            name: "etcd-container",
            image: &i::ETCD,
            args: &[],
        },
        ServiceSpec {
            name: "vault",
            image: &i::VAULT,
            args: &["server", "-config=/etc/neco/vault.hcl"],
        },
        ServiceSpec {
            name: "sabakan",
            image: &i::SABAKAN,
            args: &["-config-file=/etc/sabakan/config.yml"],
        },
        ServiceSpec {
            name: "serf",
            image: &i::SERF,
            args: &["agent", "-config-file=/etc/serf/serf.json"],
        },
        ServiceSpec {
            name: "setup-hw",
            image: &i::SETUP_HW,
            args: &[],
        },
        ServiceSpec {
            name: "promtail",
            image: &i::PROMTAIL,
            args: &["-config.file=/etc/promtail/promtail.yaml"],
        },
        ServiceSpec {
            name: "chrony",
            image: &i::CHRONY,
            args: &[],
        },
    ]
}

/// What the steps need.
pub struct StepContext<'a> {
    pub root: PathBuf,
    pub lrn: Lrn,
    pub storage: &'a Storage,
    /// The HTTP client and the GitHub token, read from etcd at each step.
    pub online: &'a Online,
    pub github_api: reqwest::Url,
    pub sources: &'a ArtifactSources,
    pub registry_credentials: Option<fetch::registry::Credentials>,
    pub service_manager: &'a dyn ServiceManager,
    /// How long step 4 waits for sabakan to answer
    /// ([`crate::contents::SABAKAN_READY_TIMEOUT`]).
    pub sabakan_ready_timeout: std::time::Duration,
}

/// A step failure, naming the step and the component.
#[derive(Debug, thiserror::Error)]
#[error("step {step} ({name}): {message}")]
pub struct StepError {
    pub step: u32,
    pub name: &'static str,
    pub message: String,
}

impl StepContext<'_> {
    fn fail(step: Step, message: impl std::fmt::Display) -> StepError {
        StepError {
            step: step.number(),
            name: step.name(),
            message: message.to_string(),
        }
    }

    /// Runs one step for the update to `version`.
    pub async fn run(&self, step: Step, version: &str) -> Result<(), StepError> {
        match step {
            Step::FetchImages => self.fetch_images().await,
            Step::InstallDebs => self.install_debs().await,
            Step::Services => {
                let restarted =
                    services::update_services(&self.root, &services(), self.service_manager)
                        .map_err(|e| Self::fail(step, e))?;
                if !restarted.is_empty() {
                    tracing::info!(?restarted, "restarted services");
                }
                Ok(())
            }
            Step::SabakanContents => self.sabakan_contents(version).await,
            Step::Final => Ok(()),
        }
    }

    async fn fetch_images(&self) -> Result<(), StepError> {
        let step = Step::FetchImages;
        let images_dir = self.root.join(services::IMAGE_DIR);
        let http = self.online.http().await.map_err(|e| Self::fail(step, e))?;
        for image in artifacts::ARTIFACTS.images {
            let name = image.name.as_str();
            let layout = services::layout_dir(&images_dir, image);
            let recorded = self
                .storage
                .container_tag(self.lrn, name)
                .await
                .map_err(|e| Self::fail(step, e))?;
            if recorded.as_deref() == Some(image.tag.as_str())
                && oci::is_present(&layout, image_source(image)).unwrap_or(false)
            {
                continue;
            }
            oci::copy_image(
                &http,
                &layout,
                image_source(image),
                &self.sources.registries,
                self.registry_credentials.as_ref(),
            )
            .await
            .map_err(|e| Self::fail(step, e))?;
            self.storage
                .record_container(self.lrn, name, image.tag.as_str())
                .await
                .map_err(|e| Self::fail(step, e))?;
            tracing::info!(image = %image.reference(), "fetched image");
        }
        Ok(())
    }

    async fn install_debs(&self) -> Result<(), StepError> {
        let step = Step::InstallDebs;
        let http = self.online.http().await.map_err(|e| Self::fail(step, e))?;
        let token = self
            .online
            .github_token()
            .await
            .map_err(|e| Self::fail(step, e))?;
        let github = GitHub::new(&http, self.github_api.clone(), token.as_ref());
        for deb in artifacts::ARTIFACTS.debs {
            let name = deb.name.as_str();
            let recorded = self
                .storage
                .deb_release(self.lrn, name)
                .await
                .map_err(|e| Self::fail(step, e))?;
            let cached = self.root.join(debs::CACHE_DIR).join(deb.asset.as_str());
            let installed = {
                let (root, package) = (self.root.clone(), name.to_owned());
                tokio::task::spawn_blocking(move || neco::dpkg::installed_version(&root, &package))
                    .await
                    .map_err(|e| Self::fail(step, format!("{name}: dpkg-query: {e}")))?
                    .map_err(|e| Self::fail(step, format!("{name}: {e}")))?
            };
            if recorded.as_deref() == Some(deb.release.as_str())
                && installed.is_some()
                && cached.exists()
            {
                continue;
            }
            debs::install_pinned(&self.root, &github, deb)
                .await
                .map_err(|e| Self::fail(step, e))?;
            self.storage
                .record_deb(self.lrn, name, deb.release.as_str())
                .await
                .map_err(|e| Self::fail(step, e))?;
            tracing::info!(deb = name, release = %deb.release, "installed deb");
        }
        Ok(())
    }

    async fn sabakan_contents(&self, version: &str) -> Result<(), StepError> {
        let step = Step::SabakanContents;
        let os = &artifacts::OS_IMAGE;
        let file = |(name, sha512): (&str, artifacts::FileDigest)| {
            let text = artifacts::OsImage::file_url(
                &self.sources.os_image_base,
                os.channel.as_str(),
                os.version.as_str(),
                name,
            );
            let url = reqwest::Url::parse(&text)
                .map_err(|e| Self::fail(step, format!("OS image URL {text}: {e}")))?;
            Ok::<_, StepError>(OsFile {
                url,
                sha512: sha512.as_str().to_owned(),
            })
        };
        let [kernel, initrd] = os.files();
        let assets = artifacts::ARTIFACTS
            .debs
            .iter()
            .map(|deb| Asset {
                name: deb.asset.as_str().to_owned(),
                content_type: "application/vnd.debian.binary-package".into(),
                sha256_hex: deb.sha256.as_str().trim_start_matches("sha256:").to_owned(),
                path: self.root.join(debs::CACHE_DIR).join(deb.asset.as_str()),
            })
            .collect();
        let contents = Contents {
            os_version: os.version.as_str().to_owned(),
            kernel: file(kernel)?,
            initrd: file(initrd)?,
            assets,
            work_dir: self.root.join(contents::WORK_DIR),
        };
        let http = self.online.http().await.map_err(|e| Self::fail(step, e))?;
        let sabakan = Sabakan {
            http: self.online.local(),
            base: self.sources.sabakan.clone(),
            ready_timeout: self.sabakan_ready_timeout,
        };
        contents::update_contents(self.storage, self.lrn, version, &sabakan, &http, &contents)
            .await
            .map_err(|e| Self::fail(step, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering() {
        assert_eq!(Step::FetchImages.number(), 1);
        assert_eq!(final_step(), 5);
        assert_eq!(Step::from_number(4), Some(Step::SabakanContents));
        assert_eq!(Step::from_number(0), None);
        assert_eq!(Step::from_number(6), None);
    }
}
