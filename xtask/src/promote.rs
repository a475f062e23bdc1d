//! `cargo xtask promote TAG`: the human step from a tested candidate to a release. It tags
//! `release-YYYY.MM.DD-N` on the commit of `test-YYYY.MM.DD-N` and pushes that tag; CI then
//! builds and publishes the pre-release (staging), and a person clears the pre-release flag on
//! GitHub for production.
//!
//! Checked first: the tag is a `test-` tag the remote has, its commit is on the remote's
//! `release` branch (release builds need the release pins, which only that branch has), and
//! the `release-` tag does not exist on another commit. Re-running after a push is harmless.

use crate::git::{short, Git};
use crate::tag::ReleaseTag;
use anyhow::{bail, Context as _};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub repo: PathBuf,
    pub remote: String,
    pub release: String,
    pub tag: String,
    pub dry_run: bool,
}

/// The `release-` tag of a `test-` tag.
pub fn release_tag_of(test: &str) -> anyhow::Result<ReleaseTag> {
    let tag = ReleaseTag::parse(test)?;
    if !tag.tag.starts_with("test-") {
        bail!(
            "{test:?} is not a test- tag: promote the tested candidate (test-{})",
            tag.version
        );
    }
    Ok(ReleaseTag::parse(&format!("release-{}", tag.version))?)
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let release_tag = release_tag_of(&options.tag)?;
    let git = Git::open(&options.repo, &options.remote)?;
    git.fetch()?;
    let remote = &options.remote;
    let commit = git
        .tag_commit(&options.tag)?
        .with_context(|| format!("{remote} has no tag {} (is the name right?)", options.tag))?;
    let branch = git
        .commit_of(&git.remote_branch(&options.release))?
        .with_context(|| format!("{remote} has no branch {}", options.release))?;
    if !git.is_ancestor(commit, branch)? {
        bail!(
            "{} ({}) is not on {remote}/{}: only candidates of the release branch can be released",
            options.tag,
            short(commit),
            options.release
        );
    }
    match git.tag_commit(&release_tag.tag)? {
        Some(existing) if existing != commit => bail!(
            "{} exists already on another commit ({}, not {})",
            release_tag.tag,
            short(existing),
            short(commit)
        ),
        Some(_) => eprintln!("{} is already on {}", release_tag.tag, short(commit)),
        None if options.dry_run => {}
        None => git.tag(&release_tag.tag, commit)?,
    }
    let refspec = format!("refs/tags/{0}:refs/tags/{0}", release_tag.tag);
    if options.dry_run {
        println!(
            "would tag {} on {} ({}) and push it to {remote} (--dry-run: nothing done)",
            release_tag.tag,
            options.tag,
            short(commit)
        );
        return Ok(());
    }
    git.push(&refspec).map_err(|e| {
        anyhow::anyhow!(
            "{remote} refused the tag {}:\n{}",
            release_tag.tag,
            e.output.trim_end()
        )
    })?;
    println!(
        "pushed {} ({}): CI builds and publishes it as a pre-release; staging installs it.\n\
         Production: clear \"pre-release\" on its GitHub release page once staging is fine.",
        release_tag.tag,
        short(commit)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::run_git as git;
    use std::path::Path;

    /// A bare remote with main and release (each one commit past their fork) and a test- tag
    /// on each; a clone on main.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("neco.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&remote).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&remote, &["init", "--bare", "--quiet"]);
        git(&work, &["init", "--quiet"]);
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", "on main"],
        );
        git(&work, &["checkout", "--quiet", "-b", "release"]);
        git(
            &work,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                "[ci skip] 2026.11.26-7",
            ],
        );
        git(&work, &["tag", "test-2026.11.26-7"]);
        // A candidate tag that is not on release (a test- tag pushed by hand on main).
        git(&work, &["checkout", "--quiet", "main"]);
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", "more on main"],
        );
        git(&work, &["tag", "test-2026.11.25-6"]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        git(
            &work,
            &["push", "--quiet", "origin", "main", "release", "--tags"],
        );
        git(
            &work,
            &["tag", "-d", "test-2026.11.26-7", "test-2026.11.25-6"],
        );
        git(&work, &["checkout", "--quiet", "main"]);
        (dir, remote, work)
    }

    fn options(work: &Path, tag: &str) -> Options {
        Options {
            repo: work.to_path_buf(),
            remote: "origin".into(),
            release: "release".into(),
            tag: tag.into(),
            dry_run: false,
        }
    }

    #[test]
    fn the_release_tag_lands_on_the_candidate_commit_on_the_remote() {
        let (_dir, remote, work) = fixture();
        run(&options(&work, "test-2026.11.26-7")).unwrap();
        assert_eq!(
            git(&remote, &["rev-parse", "release-2026.11.26-7^{commit}"]),
            git(&remote, &["rev-parse", "test-2026.11.26-7^{commit}"])
        );
        // Again: nothing changes, no error.
        run(&options(&work, "test-2026.11.26-7")).unwrap();
    }

    #[test]
    fn refused_promotions_push_nothing() {
        let (_dir, remote, work) = fixture();
        let refs = || {
            git(
                &remote,
                &["for-each-ref", "--format=%(objectname) %(refname)"],
            )
        };
        let before = refs();
        for (tag, expected) in [
            ("release-2026.11.26-7", "is not a test- tag"),
            ("test-2026.11.26-8", "origin has no tag test-2026.11.26-8"),
            ("test-2026.11.25-6", "is not on origin/release"),
            ("test-2026.11.26", "is not a release tag"),
        ] {
            let err = run(&options(&work, tag)).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{tag}: {err:#}");
        }
        let dry = Options {
            dry_run: true,
            ..options(&work, "test-2026.11.26-7")
        };
        run(&dry).unwrap();
        assert_eq!(refs(), before);
        assert!(!git(&work, &["tag"]).contains("release-"));
    }

    #[test]
    fn a_release_tag_on_another_commit_is_refused() {
        let (_dir, remote, work) = fixture();
        git(&work, &["tag", "release-2026.11.26-7", "main"]);
        git(
            &work,
            &["push", "--quiet", "origin", "release-2026.11.26-7"],
        );
        let err = run(&options(&work, "test-2026.11.26-7")).unwrap_err();
        assert!(
            format!("{err:#}").contains("exists already on another commit"),
            "{err:#}"
        );
        assert_eq!(
            git(&remote, &["rev-parse", "release-2026.11.26-7^{commit}"]),
            git(&remote, &["rev-parse", "main"])
        );
    }
}
