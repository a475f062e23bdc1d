//! Publishing the package on GitHub as a pre-release, idempotently.
//!
//! Split in two: [`plan`] is pure (the release as GitHub has it and the local files in, the
//! actions out) and table-tested; [`publish`] reads the release, prints the plan, and, unless
//! it is a dry run, carries it out and checks the result.
//!
//! The rules:
//! - no release for the tag: create it as a **draft**, upload, then publish it as a
//!   pre-release, so the staging updaters never see a release without its package (an
//!   interrupted run leaves a draft, which the next run finds and completes);
//! - assets left in state `starter` (or any state but `uploaded`) by an interrupted upload are
//!   deleted: GitHub refuses to upload that name again while they exist;
//! - an uploaded asset identical to the local file (same sha256) is kept; a different one on a
//!   draft is deleted and uploaded again. On a published pre-release the run is refused:
//!   staging may run that package already, and one version must be one package (a missing
//!   asset is still uploaded);
//! - a full release (production follows it) is never changed: when an asset differs or is
//!   missing, the run is refused and nothing is written;
//! - each upload is checked against the local sha256 (GitHub's `digest`, or the downloaded
//!   bytes); a mismatch deletes the asset and fails the run;
//! - after the run, the release is read again and planned again: anything left to do is an
//!   error. Running it again on an unchanged release does nothing.

use crate::progress::{human_size, Progress};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use fetch::github::{GitHub, NewRelease, Release, ReleaseEdit};
use std::fmt;
use std::path::PathBuf;

/// A file to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// The asset name (`neco_2026.11.26-1_amd64.deb`).
    pub name: String,
    pub path: PathBuf,
    pub content_type: String,
    /// `sha256:<hex>`; `None` only in a dry run before the package is built.
    pub digest: Option<String>,
    pub size: u64,
}

/// The release on GitHub, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRelease {
    pub id: u64,
    pub draft: bool,
    pub prerelease: bool,
    pub assets: Vec<RemoteAsset>,
}

/// An asset of a [`RemoteRelease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAsset {
    pub id: u64,
    pub name: String,
    /// State `uploaded`: complete and downloadable.
    pub uploaded: bool,
    /// `sha256:<hex>` of the content, when known.
    pub digest: Option<String>,
}

/// One step of publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the release as a draft: invisible to the updaters until it is published.
    CreateDraft,
    /// Delete an asset an interrupted upload left behind.
    DeleteIncomplete { id: u64, name: String },
    /// Delete an uploaded asset whose content differs from the local file.
    DeleteDifferent {
        id: u64,
        name: String,
        digest: Option<String>,
    },
    /// Upload a local file.
    Upload { name: String },
    /// The published asset is identical to the local file.
    Keep { name: String },
    /// Dry run before a build: whether the published asset is identical is known only once
    /// the package is built.
    CompareAfterBuild { name: String },
    /// Publish the draft as a pre-release.
    PublishPrerelease,
}

impl Action {
    /// Whether carrying it out changes anything on GitHub.
    pub fn changes(&self) -> bool {
        !matches!(self, Self::Keep { .. } | Self::CompareAfterBuild { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateDraft => f.write_str(
                "create the release as a draft (published as a pre-release once its assets are uploaded)",
            ),
            Self::DeleteIncomplete { id, name } => write!(
                f,
                "delete the incomplete asset {name} (id {id}) left by an interrupted upload"
            ),
            Self::DeleteDifferent { id, name, digest } => write!(
                f,
                "delete the asset {name} (id {id}): its content ({}) differs from the local file",
                digest.as_deref().unwrap_or("sha256 unknown")
            ),
            Self::Upload { name } => write!(f, "upload {name}"),
            Self::Keep { name } => write!(f, "keep {name}: the published asset is identical"),
            Self::CompareAfterBuild { name } => write!(
                f,
                "compare the published {name} with the built file (replace it if it differs)"
            ),
            Self::PublishPrerelease => f.write_str("publish the draft as a pre-release"),
        }
    }
}

/// Why publishing was refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("release {tag} is a full release (production installs it) and {problems}: refusing to change it, nothing was written; cut a new tag instead")]
    FullRelease { tag: String, problems: String },
    #[error("release {tag} is a published pre-release (staging may have installed it) and {problems}: refusing to replace it, nothing was written; cut a new tag instead, or delete the release on GitHub if no cluster installed it")]
    PublishedDiffers { tag: String, problems: String },
}

/// What to do so that the release of `tag` holds exactly the `local` files (by name and
/// sha256), published as a pre-release, or stays as it is when it is a full release already.
pub fn plan(
    tag: &str,
    remote: Option<&RemoteRelease>,
    local: &[LocalFile],
) -> Result<Vec<Action>, PlanError> {
    let Some(remote) = remote else {
        let mut actions = vec![Action::CreateDraft];
        actions.extend(local.iter().map(|f| Action::Upload {
            name: f.name.clone(),
        }));
        actions.push(Action::PublishPrerelease);
        return Ok(actions);
    };
    let full = !remote.draft && !remote.prerelease;
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    let mut differs = Vec::new();
    for asset in remote.assets.iter().filter(|a| !a.uploaded) {
        actions.push(Action::DeleteIncomplete {
            id: asset.id,
            name: asset.name.clone(),
        });
    }
    for file in local {
        let published = remote
            .assets
            .iter()
            .find(|a| a.uploaded && a.name == file.name);
        match (published, &file.digest) {
            (None, _) => {
                problems.push(format!("has no asset {}", file.name));
                actions.push(Action::Upload {
                    name: file.name.clone(),
                });
            }
            (Some(_), None) => actions.push(Action::CompareAfterBuild {
                name: file.name.clone(),
            }),
            (Some(asset), Some(digest)) if asset.digest.as_ref() == Some(digest) => {
                actions.push(Action::Keep {
                    name: file.name.clone(),
                });
            }
            (Some(asset), Some(digest)) => {
                let problem = format!(
                    "its {} has {} where the local file has {digest}",
                    file.name,
                    asset.digest.as_deref().unwrap_or("an unknown sha256")
                );
                differs.push(problem.clone());
                problems.push(problem);
                actions.push(Action::DeleteDifferent {
                    id: asset.id,
                    name: asset.name.clone(),
                    digest: asset.digest.clone(),
                });
                actions.push(Action::Upload {
                    name: file.name.clone(),
                });
            }
        }
    }
    if full && !problems.is_empty() {
        return Err(PlanError::FullRelease {
            tag: tag.to_owned(),
            problems: problems.join(", "),
        });
    }
    if !remote.draft && !differs.is_empty() {
        return Err(PlanError::PublishedDiffers {
            tag: tag.to_owned(),
            problems: differs.join(", "),
        });
    }
    if remote.draft {
        actions.push(Action::PublishPrerelease);
    }
    Ok(actions)
}

/// Where to publish.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `owner/name`.
    pub repo: &'a str,
    /// `release-2026.11.26-1`.
    pub tag: &'a str,
    /// The commit the tag is created at when it does not exist yet.
    pub commit: &'a str,
    /// The release's description.
    pub body: &'a str,
}

/// How publishing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The plan that was (or, in a dry run, would be) carried out.
    pub actions: Vec<Action>,
    /// The release's page; empty when a dry run found no release.
    pub url: String,
    /// Whether the release is a pre-release (false: a full release, or none in a dry run).
    pub prerelease: bool,
}

/// Reads the release of `target.tag`, plans, prints the plan, and (unless `dry_run`) carries
/// it out and checks the result.
pub async fn publish(
    github: &GitHub<'_>,
    target: Target<'_>,
    local: &[LocalFile],
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let found = find_release(github, target.repo, target.tag).await?;
    let remote = match &found {
        Some(release) => Some(remote_view(github, release, local).await?),
        None => None,
    };
    let actions = plan(target.tag, remote.as_ref(), local)?;
    print_plan(target, found.as_ref(), &actions);
    if dry_run {
        return Ok(Outcome {
            url: found
                .as_ref()
                .map(|r| r.html_url.clone())
                .unwrap_or_default(),
            prerelease: found.as_ref().is_some_and(|r| r.prerelease),
            actions,
        });
    }
    let mut release = found;
    for action in &actions {
        release = Some(execute(github, target, release, action, local).await?);
    }
    let release = release.with_context(|| format!("no release {} after publishing", target.tag))?;
    // Read it back: what GitHub now has must need nothing more.
    let after = github
        .release(target.repo, release.id)
        .await?
        .with_context(|| format!("release {} vanished after publishing", target.tag))?;
    let view = remote_view(github, &after, local).await?;
    let left: Vec<Action> = plan(target.tag, Some(&view), local)?
        .into_iter()
        .filter(Action::changes)
        .collect();
    if !left.is_empty() {
        let left: Vec<String> = left.iter().map(ToString::to_string).collect();
        bail!(
            "release {} is not complete after publishing; still to do: {}",
            target.tag,
            left.join("; ")
        );
    }
    Ok(Outcome {
        actions,
        url: after.html_url,
        prerelease: after.prerelease,
    })
}

/// The published release of `tag`, or else its draft (GitHub finds drafts only by id or in
/// the list of releases).
async fn find_release(
    github: &GitHub<'_>,
    repo: &str,
    tag: &str,
) -> anyhow::Result<Option<Release>> {
    if let Some(release) = github.release_by_tag(repo, tag).await? {
        return Ok(Some(release));
    }
    let mut drafts: Vec<Release> = github
        .releases(repo)
        .await?
        .into_iter()
        .filter(|r| r.draft && r.tag_name == tag)
        .collect();
    match drafts.len() {
        0 | 1 => Ok(drafts.pop()),
        n => bail!(
            "{repo} has {n} draft releases for {tag}; delete all but one (ids {})",
            drafts
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The plan's view of a release: the sha256 of every uploaded asset named like a local file
/// (GitHub's digest, or the hash of its downloaded bytes).
async fn remote_view(
    github: &GitHub<'_>,
    release: &Release,
    local: &[LocalFile],
) -> anyhow::Result<RemoteRelease> {
    let mut assets = Vec::new();
    for asset in &release.assets {
        let uploaded = asset.is_uploaded();
        let ours = local.iter().any(|f| f.name == asset.name);
        let digest = if uploaded && ours {
            Some(
                github
                    .asset_sha256(asset)
                    .await
                    .with_context(|| format!("cannot get the sha256 of {}", asset.name))?,
            )
        } else {
            asset.digest.clone()
        };
        assets.push(RemoteAsset {
            id: asset.id,
            name: asset.name.clone(),
            uploaded,
            digest,
        });
    }
    Ok(RemoteRelease {
        id: release.id,
        draft: release.draft,
        prerelease: release.prerelease,
        assets,
    })
}

fn print_plan(target: Target<'_>, found: Option<&Release>, actions: &[Action]) {
    let state = match found {
        None => "does not exist yet".to_owned(),
        Some(r) => format!(
            "exists as a {} (id {}, {} assets)",
            if r.draft {
                "draft"
            } else if r.prerelease {
                "pre-release"
            } else {
                "full release"
            },
            r.id,
            r.assets.len()
        ),
    };
    eprintln!("release {} of {} {state}; plan:", target.tag, target.repo);
    for action in actions {
        eprintln!("  - {action}");
    }
    if !actions.iter().any(Action::changes) {
        eprintln!("  (nothing to change)");
    }
}

/// Carries out one action; returns the release as it is afterwards.
async fn execute(
    github: &GitHub<'_>,
    target: Target<'_>,
    release: Option<Release>,
    action: &Action,
    local: &[LocalFile],
) -> anyhow::Result<Release> {
    let existing = || {
        release
            .clone()
            .with_context(|| format!("no release {} to {action}", target.tag))
    };
    match action {
        Action::CreateDraft => {
            let created = github
                .create_release(
                    target.repo,
                    &NewRelease {
                        tag_name: target.tag.to_owned(),
                        target_commitish: Some(target.commit.to_owned()),
                        name: target.tag.to_owned(),
                        body: target.body.to_owned(),
                        draft: true,
                        prerelease: true,
                    },
                )
                .await
                .with_context(|| format!("cannot create the release {}", target.tag))?;
            eprintln!(
                "  ✓ created draft release {} (id {})",
                target.tag, created.id
            );
            Ok(created)
        }
        Action::DeleteIncomplete { id, name } | Action::DeleteDifferent { id, name, .. } => {
            github
                .delete_asset(target.repo, *id)
                .await
                .with_context(|| format!("cannot delete the asset {name}"))?;
            eprintln!("  ✓ deleted {name} (id {id})");
            existing()
        }
        Action::Upload { name } => {
            let release = existing()?;
            let file = local
                .iter()
                .find(|f| &f.name == name)
                .with_context(|| format!("no local file {name}"))?;
            upload(github, target, &release, file).await?;
            Ok(release)
        }
        Action::Keep { .. } | Action::CompareAfterBuild { .. } => existing(),
        Action::PublishPrerelease => {
            let release = existing()?;
            let published = github
                .edit_release(
                    target.repo,
                    release.id,
                    &ReleaseEdit {
                        draft: Some(false),
                        prerelease: Some(true),
                        ..ReleaseEdit::default()
                    },
                )
                .await
                .with_context(|| format!("cannot publish the release {}", target.tag))?;
            eprintln!("  ✓ published {} as a pre-release", target.tag);
            Ok(published)
        }
    }
}

/// Uploads one file and checks what GitHub stored; a mismatch deletes the asset again.
async fn upload(
    github: &GitHub<'_>,
    target: Target<'_>,
    release: &Release,
    file: &LocalFile,
) -> anyhow::Result<()> {
    let expected = file
        .digest
        .as_deref()
        .with_context(|| format!("{} has no sha256 (was it built?)", file.name))?;
    let bytes = std::fs::read(&file.path)
        .with_context(|| format!("cannot read {}", file.path.display()))?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if fetch::sha256_digest(&bytes) != expected || size != file.size {
        bail!(
            "{} changed since it was built: refusing to upload it",
            file.path.display()
        );
    }
    let progress = Progress::start(format!("upload {} ({})", file.name, human_size(size)));
    let asset = github
        .upload_asset(
            target.repo,
            release,
            &file.name,
            &file.content_type,
            Bytes::from(bytes),
        )
        .await
        .with_context(|| {
            format!(
                "cannot upload {}; an incomplete asset it left is deleted by the next run",
                file.name
            )
        })?;
    let stored = if asset.size != size {
        Some(format!("{} bytes", asset.size))
    } else {
        let digest = github
            .asset_sha256(&asset)
            .await
            .with_context(|| format!("cannot check the uploaded {}", file.name))?;
        (digest != expected).then_some(digest)
    };
    if let Some(stored) = stored {
        github
            .delete_asset(target.repo, asset.id)
            .await
            .with_context(|| {
                format!(
                    "the uploaded {} is not what was sent, and deleting it failed",
                    file.name
                )
            })?;
        bail!(
            "GitHub stored {} as {stored}, not {expected} ({size} bytes): deleted it; run again",
            file.name
        );
    }
    progress.finish(&format!("uploaded, {expected}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dctest::{AssetSpec, GitHubStandIn, ReleaseSpec, UploadFault};
    use fetch::http::{Http, RetryPolicy};
    use fetch::Secret;
    use std::time::Duration;

    const TAG: &str = "release-2026.11.26-1";
    const DEB: &str = "neco_2026.11.26-1_amd64.deb";
    const SUMS: &str = "neco_2026.11.26-1_amd64.deb.sha256";

    fn local(name: &str, digest: Option<&str>) -> LocalFile {
        LocalFile {
            name: name.to_owned(),
            path: PathBuf::from(name),
            content_type: "application/octet-stream".to_owned(),
            digest: digest.map(str::to_owned),
            size: 1,
        }
    }

    fn remote(draft: bool, prerelease: bool, assets: &[(u64, &str, bool, &str)]) -> RemoteRelease {
        RemoteRelease {
            id: 1,
            draft,
            prerelease,
            assets: assets
                .iter()
                .map(|(id, name, uploaded, digest)| RemoteAsset {
                    id: *id,
                    name: (*name).to_owned(),
                    uploaded: *uploaded,
                    digest: Some((*digest).to_owned()),
                })
                .collect(),
        }
    }

    fn upload(name: &str) -> Action {
        Action::Upload {
            name: name.to_owned(),
        }
    }

    fn keep(name: &str) -> Action {
        Action::Keep {
            name: name.to_owned(),
        }
    }

    #[test]
    fn plans() {
        let files = [local(SUMS, Some("sha256:s")), local(DEB, Some("sha256:d"))];
        let both = [(2, SUMS, true, "sha256:s"), (3, DEB, true, "sha256:d")];
        let cases: Vec<(&str, Option<RemoteRelease>, Vec<Action>)> = vec![
            (
                "no release: a draft, the uploads, then the pre-release",
                None,
                vec![
                    Action::CreateDraft,
                    upload(SUMS),
                    upload(DEB),
                    Action::PublishPrerelease,
                ],
            ),
            (
                "a complete pre-release: nothing to do",
                Some(remote(false, true, &both)),
                vec![keep(SUMS), keep(DEB)],
            ),
            (
                "promoted to a full release, identical: nothing to do",
                Some(remote(false, false, &both)),
                vec![keep(SUMS), keep(DEB)],
            ),
            (
                "an interrupted run: a draft with the checksum and a starter deb",
                Some(remote(
                    true,
                    true,
                    &[(2, SUMS, true, "sha256:s"), (3, DEB, false, "")],
                )),
                vec![
                    Action::DeleteIncomplete {
                        id: 3,
                        name: DEB.to_owned(),
                    },
                    keep(SUMS),
                    upload(DEB),
                    Action::PublishPrerelease,
                ],
            ),
            (
                "a pre-release made by hand, without assets",
                Some(remote(false, true, &[])),
                vec![upload(SUMS), upload(DEB)],
            ),
            (
                "a draft with another build of the deb, and a foreign asset",
                Some(remote(
                    true,
                    true,
                    &[
                        (2, SUMS, true, "sha256:s"),
                        (3, DEB, true, "sha256:other"),
                        (4, "notes.txt", true, "sha256:n"),
                    ],
                )),
                vec![
                    keep(SUMS),
                    Action::DeleteDifferent {
                        id: 3,
                        name: DEB.to_owned(),
                        digest: Some("sha256:other".to_owned()),
                    },
                    upload(DEB),
                    Action::PublishPrerelease,
                ],
            ),
            (
                "a full release with identical assets and a starter left over",
                Some(remote(
                    false,
                    false,
                    &[
                        (2, SUMS, true, "sha256:s"),
                        (3, DEB, true, "sha256:d"),
                        (4, "x.deb", false, ""),
                    ],
                )),
                vec![
                    Action::DeleteIncomplete {
                        id: 4,
                        name: "x.deb".to_owned(),
                    },
                    keep(SUMS),
                    keep(DEB),
                ],
            ),
        ];
        for (what, remote, expected) in cases {
            assert_eq!(
                plan(TAG, remote.as_ref(), &files).unwrap(),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn full_releases_are_never_changed() {
        let files = [local(SUMS, Some("sha256:s")), local(DEB, Some("sha256:d"))];
        for (what, assets) in [
            (
                "a different deb",
                vec![(2, SUMS, true, "sha256:s"), (3, DEB, true, "sha256:other")],
            ),
            ("no deb", vec![(2, SUMS, true, "sha256:s")]),
            ("no assets", vec![]),
        ] {
            let err = plan(TAG, Some(&remote(false, false, &assets)), &files).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("full release"), "{what}: {text}");
            assert!(text.contains("nothing was written"), "{what}: {text}");
        }
    }

    #[test]
    fn a_published_prerelease_is_never_replaced_by_another_build() {
        let files = [local(SUMS, Some("sha256:s")), local(DEB, Some("sha256:d"))];
        let assets = [(2, SUMS, true, "sha256:s"), (3, DEB, true, "sha256:other")];
        let err = plan(TAG, Some(&remote(false, true, &assets)), &files).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("published pre-release"), "{text}");
        assert!(
            text.contains("sha256:other where the local file has sha256:d"),
            "{text}"
        );
        assert!(text.contains("nothing was written"), "{text}");
        // A missing asset is still repaired.
        let actions = plan(
            TAG,
            Some(&remote(false, true, &[(2, SUMS, true, "sha256:s")])),
            &files,
        )
        .unwrap();
        assert_eq!(actions, vec![keep(SUMS), upload(DEB)]);
    }

    #[test]
    fn dry_runs_before_a_build_compare_later() {
        let files = [local(DEB, None)];
        let actions = plan(
            TAG,
            Some(&remote(false, false, &[(3, DEB, true, "sha256:d")])),
            &files,
        )
        .unwrap();
        assert_eq!(
            actions,
            vec![Action::CompareAfterBuild {
                name: DEB.to_owned()
            }]
        );
        assert!(!actions[0].changes());
    }

    // Against the GitHub stand-in.

    const REPO: &str = "cybozu-go/neco-rs";
    const TOKEN: &str = "ghp_xtask-publish-test";

    struct Fixture {
        server: GitHubStandIn,
        http: Http,
        token: Secret,
        dir: tempfile::TempDir,
        files: Vec<LocalFile>,
    }

    impl Fixture {
        fn new(deb: &[u8]) -> Self {
            let server = GitHubStandIn::start(Some(TOKEN.to_owned())).unwrap();
            server.add_repo(REPO);
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let http = Http::with_client(
                client,
                2,
                RetryPolicy {
                    attempts: 2,
                    base_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(5),
                },
            );
            let mut fixture = Self {
                server,
                http,
                token: Secret::new(TOKEN),
                dir: tempfile::tempdir().unwrap(),
                files: Vec::new(),
            };
            fixture.set_deb(deb);
            fixture
        }

        /// (Re)writes the local deb and its checksum file.
        fn set_deb(&mut self, deb: &[u8]) {
            let digest = fetch::sha256_digest(deb);
            let sums = format!("{}  {DEB}\n", digest.trim_start_matches("sha256:"));
            let mut files = Vec::new();
            for (name, bytes) in [(SUMS, sums.as_bytes()), (DEB, deb)] {
                let path = self.dir.path().join(name);
                std::fs::write(&path, bytes).unwrap();
                files.push(LocalFile {
                    name: name.to_owned(),
                    path,
                    content_type: "application/octet-stream".to_owned(),
                    digest: Some(fetch::sha256_digest(bytes)),
                    size: bytes.len() as u64,
                });
            }
            self.files = files;
        }

        async fn run(&self, dry_run: bool) -> anyhow::Result<Outcome> {
            let api = reqwest::Url::parse(&format!("{}/", self.server.base_url())).unwrap();
            let github = GitHub::new(&self.http, api, Some(&self.token));
            let target = Target {
                repo: REPO,
                tag: TAG,
                commit: "0123456789abcdef0123456789abcdef01234567",
                body: "neco 2026.11.26-1",
            };
            publish(&github, target, &self.files, dry_run).await
        }

        /// Requests that change something, so far.
        fn writes(&self) -> Vec<String> {
            self.server
                .requests()
                .into_iter()
                .filter(|r| r.method != "GET")
                .map(|r| format!("{} {}", r.method, r.path))
                .collect()
        }

        /// The release's assets: (name, state, sha256).
        fn assets(&self) -> Vec<(String, String, String)> {
            let releases = self.server.releases(REPO);
            assert_eq!(releases.len(), 1, "{releases:?}");
            releases[0]
                .assets
                .iter()
                .map(|a| (a.name.clone(), a.state.clone(), a.sha256.clone()))
                .collect()
        }

        fn expected_assets(&self) -> Vec<(String, String, String)> {
            self.files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        "uploaded".to_owned(),
                        f.digest.clone().unwrap(),
                    )
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn create_upload_then_rerun_is_a_no_op() {
        let fx = Fixture::new(b"the deb, first build");

        let outcome = fx.run(false).await.unwrap();

        assert!(outcome.prerelease);
        assert!(
            outcome.url.ends_with(&format!("/releases/tag/{TAG}")),
            "{}",
            outcome.url
        );
        let release = &fx.server.releases(REPO)[0];
        assert!(release.prerelease && !release.draft);
        assert_eq!(release.tag_name, TAG);
        assert_eq!(fx.assets(), fx.expected_assets());
        let writes = fx.writes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(writes[0].starts_with("POST") && writes[3].starts_with("PATCH"));

        // Again: nothing is written.
        let before = fx.writes().len();
        let again = fx.run(false).await.unwrap();
        assert!(
            !again.actions.iter().any(Action::changes),
            "{:?}",
            again.actions
        );
        assert_eq!(fx.writes().len(), before);

        // Promoted by a person: still nothing to do.
        fx.server.set_prerelease(REPO, release.id, false).unwrap();
        let promoted = fx.run(false).await.unwrap();
        assert!(!promoted.prerelease);
        assert_eq!(fx.writes().len(), before);
    }

    #[tokio::test]
    async fn an_interrupted_upload_is_repaired_by_the_next_run() {
        let fx = Fixture::new(b"the deb");
        // The first upload (the checksum file) is cut off and leaves a starter asset; the
        // client's retry is refused because of it.
        fx.server.fail_next_upload(UploadFault::Interrupt);
        let err = fx.run(false).await.unwrap_err();
        assert!(format!("{err:#}").contains("next run"), "{err:#}");
        let release = &fx.server.releases(REPO)[0];
        assert!(
            release.draft,
            "the updaters never see a half-published release"
        );
        assert!(fx.assets().iter().any(|(_, state, _)| state == "starter"));

        let outcome = fx.run(false).await.unwrap();

        assert!(outcome.prerelease);
        assert!(outcome
            .actions
            .iter()
            .any(|a| matches!(a, Action::DeleteIncomplete { .. })));
        assert_eq!(fx.assets(), fx.expected_assets());
        assert!(!fx.server.releases(REPO)[0].draft);
    }

    #[tokio::test]
    async fn a_starter_asset_on_a_prerelease_is_deleted() {
        let fx = Fixture::new(b"the deb");
        let id = fx
            .server
            .add_release(REPO, ReleaseSpec::new(TAG).prerelease(true));
        fx.server.add_starter_asset(REPO, id, DEB).unwrap();

        fx.run(false).await.unwrap();

        assert_eq!(fx.assets(), fx.expected_assets());
        assert!(fx.server.releases(REPO)[0].prerelease);
    }

    #[tokio::test]
    async fn a_corrupted_upload_is_deleted_and_the_run_fails() {
        let fx = Fixture::new(b"the deb");
        fx.server.fail_next_upload(UploadFault::Corrupt);

        let err = fx.run(false).await.unwrap_err();

        assert!(format!("{err:#}").contains("deleted it"), "{err:#}");
        // Neither the corrupted asset nor a published release stays behind.
        assert!(fx.server.releases(REPO)[0].draft);
        assert!(!fx.assets().iter().any(|(name, _, _)| name == SUMS));
        fx.run(false).await.unwrap();
        assert_eq!(fx.assets(), fx.expected_assets());
    }

    #[tokio::test]
    async fn a_full_release_with_another_deb_is_refused_and_untouched() {
        let fx = Fixture::new(b"this build");
        fx.server.add_release(
            REPO,
            ReleaseSpec::new(TAG).asset(AssetSpec::new(DEB, b"another build".to_vec(), true)),
        );
        let before = fx.server.releases(REPO);

        let err = fx.run(false).await.unwrap_err();

        assert!(err.to_string().contains("full release"), "{err}");
        assert_eq!(fx.server.releases(REPO), before);
        assert!(fx.writes().is_empty(), "{:?}", fx.writes());
    }

    #[tokio::test]
    async fn a_published_prerelease_with_another_deb_is_refused_and_untouched() {
        let mut fx = Fixture::new(b"first build");
        fx.run(false).await.unwrap();
        let published = fx.assets();
        let before = fx.server.releases(REPO);
        let writes = fx.writes().len();
        fx.set_deb(b"second build");

        let err = fx.run(false).await.unwrap_err();

        assert!(err.to_string().contains("published pre-release"), "{err}");
        assert_eq!(fx.server.releases(REPO), before);
        assert_eq!(fx.assets(), published);
        assert_eq!(fx.writes().len(), writes, "{:?}", fx.writes());
    }

    #[tokio::test]
    async fn a_dry_run_writes_nothing() {
        let fx = Fixture::new(b"the deb");
        let id = fx
            .server
            .add_release(REPO, ReleaseSpec::new(TAG).prerelease(true));
        fx.server.add_starter_asset(REPO, id, DEB).unwrap();

        let outcome = fx.run(true).await.unwrap();

        assert!(outcome.actions.iter().any(Action::changes));
        assert!(fx.writes().is_empty(), "{:?}", fx.writes());
        assert_eq!(
            fx.assets(),
            vec![(
                DEB.to_owned(),
                "starter".to_owned(),
                fetch::sha256_digest(b"")
            )]
        );
    }

    #[tokio::test]
    async fn assets_without_a_github_digest_are_compared_by_their_bytes() {
        let fx = Fixture::new(b"the deb");
        // Uploaded before GitHub computed digests: no `digest` in the JSON.
        let sums = std::fs::read(&fx.files[0].path).unwrap();
        fx.server.add_release(
            REPO,
            ReleaseSpec::new(TAG)
                .prerelease(true)
                .asset(AssetSpec::new(SUMS, sums, false))
                .asset(AssetSpec::new(DEB, b"the deb".to_vec(), false)),
        );

        let outcome = fx.run(false).await.unwrap();

        assert!(
            !outcome.actions.iter().any(Action::changes),
            "{:?}",
            outcome.actions
        );
        assert!(fx.writes().is_empty());
    }
}
