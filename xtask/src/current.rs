//! The release running in the field now, for the upgrade suite of a nightly candidate: the
//! newest `release-YYYY.MM.DD-N` of the repository that is not a draft (pre-releases count:
//! staging runs them, and staging is upgraded first), and its `neco_*.deb` asset, downloaded
//! and checked against GitHub's sha256.

use crate::tag::ReleaseTag;
use anyhow::{bail, Context as _};
use fetch::github::{GitHub, Release};
use fetch::Secret;
use std::path::{Path, PathBuf};

/// `(date, N)` of a release tag: the order the updater uses.
fn order_key(tag: &ReleaseTag) -> Option<(String, u64)> {
    let (date, n) = tag.version.rsplit_once('-')?;
    Some((date.to_owned(), n.parse().ok()?))
}

/// The newest non-draft `release-` release, with its version.
pub fn newest(releases: &[Release]) -> Option<(&Release, ReleaseTag)> {
    releases
        .iter()
        .filter(|r| !r.draft && r.tag_name.starts_with("release-"))
        .filter_map(|r| ReleaseTag::parse(&r.tag_name).ok().map(|t| (r, t)))
        .filter_map(|(r, t)| order_key(&t).map(|k| (k, r, t)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r, t)| (r, t))
}

/// Downloads the package of the newest release into `dir`; `None` when the repository has no
/// release yet.
pub fn download(
    api: &str,
    repository: &str,
    token: Option<&Secret>,
    dir: &Path,
) -> anyhow::Result<Option<(ReleaseTag, PathBuf)>> {
    let api = reqwest::Url::parse(api).with_context(|| format!("GitHub API URL {api:?}"))?;
    let http = crate::release::github_http()?;
    let github = GitHub::new(&http, api, token);
    crate::release::block_on(async {
        let releases = github
            .releases(repository)
            .await
            .with_context(|| format!("cannot list the releases of {repository}"))?;
        let Some((release, tag)) = newest(&releases) else {
            return Ok(None);
        };
        let asset = release
            .assets
            .iter()
            .find(|a| a.name.starts_with("neco_") && a.name.ends_with(".deb"))
            .with_context(|| format!("{repository} {}: no neco_*.deb asset", tag.tag))?;
        let bytes = github
            .download_asset(asset)
            .await
            .with_context(|| format!("cannot download {} of {}", asset.name, tag.tag))?;
        if let Some(digest) = &asset.digest {
            let got = fetch::sha256_digest(&bytes);
            if &got != digest {
                bail!(
                    "{} of {}: GitHub says {digest}, the download is {got}",
                    asset.name,
                    tag.tag
                );
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(&asset.name);
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Some((tag, path)))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use dctest::github::{AssetSpec, GitHubStandIn, ReleaseSpec};

    #[test]
    fn the_newest_release_that_is_not_a_draft_is_downloaded_and_checked() {
        let github = GitHubStandIn::start(None).unwrap();
        let repo = "cybozu-go/neco";
        github.add_repo(repo);
        let asset =
            |v: &str| AssetSpec::new(&format!("neco_{v}_amd64.deb"), format!("deb {v}"), true);
        for (tag, prerelease, draft) in [
            ("release-2026.11.20-5", false, false),
            ("release-2026.11.24-10", true, false),
            ("release-2026.11.24-9", false, false),
            ("release-2026.11.25-11", false, true),
            ("test-2026.11.26-12", true, false),
            ("release-latest", false, false),
        ] {
            let version = tag.split_once('-').unwrap().1;
            github.add_release(
                repo,
                ReleaseSpec::new(tag)
                    .prerelease(prerelease)
                    .draft(draft)
                    .asset(asset(version)),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let (tag, path) = download(&github.base_url(), repo, None, dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(tag.tag, "release-2026.11.24-10");
        assert_eq!(path, dir.path().join("neco_2026.11.24-10_amd64.deb"));
        assert_eq!(std::fs::read(&path).unwrap(), b"deb 2026.11.24-10");

        github.add_repo("cybozu-go/empty");
        assert!(
            download(&github.base_url(), "cybozu-go/empty", None, dir.path())
                .unwrap()
                .is_none()
        );
    }
}
