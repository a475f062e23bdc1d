//! `cargo xtask nightly`: the pipeline from `main` to a tested release candidate.
//!
//! 1. fetch the remote; check out `release` at the remote's `release` (created from `main` when
//!    the remote has none); merge the remote's `main` into it as a real merge, never a
//!    fast-forward, in the work tree only; a conflict stops with the conflicting files;
//! 2. regenerate `artifacts_release.rs` in process (`artifacts-gen --release`), printing the
//!    old → new table;
//! 3. when neither changed anything: "nothing to release", exit 0;
//! 4. test the candidate (the release build and the release profile of dctest — a
//!    [`Candidate`], so tests can put in a cheaper but real check);
//! 5. commit `[ci skip] YYYY.MM.DD-N` (both parents when main was merged), tag
//!    `test-YYYY.MM.DD-N`, push the branch, then the tag only if the branch was accepted.
//!
//! On any failure nothing is pushed and the repository is put back: HEAD where it was, the
//! work tree clean, `release` where it was, no new tag. `--dry-run` does everything but push
//! and then puts the repository back the same way.
//!
//! The date is computed once (UTC). N is `CIRCLE_BUILD_NUM` when set, otherwise one more than
//! the highest N of every `test-` and `release-` tag of any date: the updater orders versions
//! by N and refuses a smaller one, so N must grow across days, as CircleCI's build number does.

use crate::git::{short, Git, Head};
use crate::tag::ReleaseTag;
use crate::Steps;
use anyhow::{bail, Context as _};
use git2::Oid;
use std::path::{Path, PathBuf};

/// The release pins, relative to the repository root.
pub const RELEASE_FILE: &str = "artifacts/src/generated/artifacts_release.rs";
/// The manifest artifacts-gen reads, relative to the repository root.
pub const MANIFEST: &str = "artifacts.toml";

/// What the pipeline works on.
#[derive(Debug, Clone)]
pub struct Options {
    /// The repository's work tree.
    pub repo: PathBuf,
    pub remote: String,
    pub main: String,
    pub release: String,
    pub dry_run: bool,
    /// N of the version, when CI gives one (`CIRCLE_BUILD_NUM`).
    pub build_num: Option<u64>,
    /// The day of the version (UTC), computed once by the caller.
    pub today: time::Date,
    /// Endpoint overrides for artifacts-gen (`--registry HOST=URL`, `--github-api URL`,
    /// `--os-feed URL`, `--os-image-base URL`), passed as its arguments.
    pub artifacts_gen_args: Vec<String>,
}

/// Builds and tests a candidate: the merged work tree at `repo`, as version `tag`.
pub trait Candidate {
    fn test(&mut self, repo: &Path, tag: &ReleaseTag, steps: &mut Steps) -> anyhow::Result<()>;
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Neither main nor the artifacts changed anything; nothing was pushed.
    NothingToRelease,
    /// The candidate passed; `release` and `tag` were pushed, both naming `commit`.
    Pushed { tag: String, commit: String },
    /// The candidate passed; `plan` says what would have been pushed. Nothing was, and the
    /// repository is as it was.
    DryRun { tag: String, plan: String },
}

/// The state to put back when the run fails or is a dry run.
struct Saved {
    head: Head,
    release: Option<Oid>,
    tag: Option<String>,
}

impl Saved {
    fn restore(&self, git: &Git, release: &str) -> anyhow::Result<()> {
        // Off `release` first (a checked-out branch cannot be moved), then back where we were.
        let release_now = git.branch(release)?;
        if let Some(oid) = release_now.or(self.release) {
            git.repo.set_head_detached(oid)?;
        }
        git.reset_branch(release, self.release)?;
        if let Some(tag) = &self.tag {
            git.delete_tag(tag)?;
        }
        git.restore_head(&self.head)
    }
}

/// Runs the pipeline. On failure the repository is put back before the error is returned.
pub fn run(
    options: &Options,
    candidate: &mut dyn Candidate,
    steps: &mut Steps,
) -> anyhow::Result<Outcome> {
    let git = Git::open(&options.repo, &options.remote)?;
    let changes = git.changes()?;
    if !changes.is_empty() {
        bail!(
            "{}: the work tree has changes; the nightly pipeline needs a clean checkout:\n  {}",
            options.repo.display(),
            changes.join("\n  ")
        );
    }
    let mut saved = Saved {
        head: git.head()?,
        release: git.branch(&options.release)?,
        tag: None,
    };
    let result = pipeline(options, &git, candidate, steps, &mut saved);
    let restore_all = !matches!(result, Ok(Outcome::Pushed { .. }));
    let restored = if restore_all {
        saved.restore(&git, &options.release)
    } else {
        git.restore_head(&saved.head)
    };
    match (result, restored) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Ok(_), Err(e)) => {
            Err(e.context("the run passed, but the repository could not be put back"))
        }
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => {
            Err(e.context(format!("and the repository could not be put back: {r:#}")))
        }
    }
}

fn pipeline(
    options: &Options,
    git: &Git,
    candidate: &mut dyn Candidate,
    steps: &mut Steps,
    saved: &mut Saved,
) -> anyhow::Result<Outcome> {
    let (remote, main, release) = (&options.remote, &options.main, &options.release);
    steps.step(&format!("fetch {remote}"), || git.fetch())?;

    let main_oid = git
        .commit_of(&git.remote_branch(main))?
        .with_context(|| format!("{remote} has no branch {main}"))?;
    let remote_release = git.commit_of(&git.remote_branch(release))?;
    let base = remote_release.unwrap_or(main_oid);
    let mut merged = false;
    steps.step(&format!("merge {remote}/{main} into {release}"), || {
        match remote_release {
            Some(_) => eprintln!("{release} is {remote}/{release} ({})", short(base)),
            None => eprintln!(
                "{remote} has no {release} branch: creating it from {remote}/{main} ({})",
                short(base)
            ),
        }
        git.switch_to(release, base)?;
        merged = git.merge_into_worktree(base, main_oid, &format!("{remote}/{main}"))?;
        if merged {
            eprintln!(
                "merged {remote}/{main} ({}) into {release}",
                short(main_oid)
            );
        } else {
            eprintln!(
                "{remote}/{main} ({}) is already in {release}",
                short(main_oid)
            );
        }
        Ok(())
    })?;

    let release_file = options.repo.join(RELEASE_FILE);
    let before = std::fs::read(&release_file).ok();
    steps.step(
        "regenerate artifacts_release.rs (artifacts-gen --release)",
        || regenerate(options),
    )?;
    let after = std::fs::read(&release_file)
        .with_context(|| format!("artifacts-gen wrote no {}", release_file.display()))?;
    let artifacts_changed = before.as_deref() != Some(after.as_slice());

    if !merged && !artifacts_changed && remote_release.is_some() {
        eprintln!(
            "\nnothing to release: {remote}/{main} is already in {release} and no pin changed"
        );
        return Ok(Outcome::NothingToRelease);
    }

    let tag = next_tag(git, options)?;
    eprintln!("\ncandidate {} (tag {})", tag.version, tag.tag);
    // The candidate records its own steps (build, package, dctest suites).
    candidate
        .test(&options.repo, &tag, steps)
        .with_context(|| {
            format!(
                "candidate {} failed its tests; nothing was pushed",
                tag.version
            )
        })?;

    let mut commit = base;
    let mut committed = false;
    steps.step(&format!("commit and tag {}", tag.tag), || {
        let file = Path::new(RELEASE_FILE);
        let parents: Vec<Oid> = if merged {
            vec![base, main_oid]
        } else {
            vec![base]
        };
        let tree = git.index_tree(&[file])?;
        if merged || tree != git.tree_of(base)? {
            let message = format!("[ci skip] {}", tag.version);
            commit = git.commit(&[file], &parents, &message)?;
            committed = true;
            eprintln!("committed {} {message:?}", short(commit));
        } else {
            eprintln!(
                "{release} is {remote}/{main} unchanged: tagging {}",
                short(base)
            );
        }
        git.tag(&tag.tag, commit)?;
        saved.tag = Some(tag.tag.clone());
        Ok(())
    })?;

    let branch_spec = format!("refs/heads/{release}:refs/heads/{release}");
    let tag_spec = format!("refs/tags/{0}:refs/tags/{0}", tag.tag);
    if options.dry_run {
        let what = match (committed, merged) {
            (true, true) => "a merge commit of the old release and main",
            (true, false) => "a commit on the old release",
            (false, _) => "a new branch at main",
        };
        let plan = format!(
            "would push to {remote}:\n  {release} -> {commit} ({what})\n  tag {} -> {commit}\n(--dry-run: nothing pushed; the local branch and tag are removed again)",
            tag.tag
        );
        return Ok(Outcome::DryRun {
            tag: tag.tag.clone(),
            plan,
        });
    }
    steps.step(&format!("push {release} to {remote}"), || {
        git.push(&branch_spec).map_err(|e| {
            anyhow::anyhow!(
                "{remote} refused {} (has {release} moved since the fetch?); the tag {} was not pushed:\n{}",
                e.refspec,
                tag.tag,
                e.output.trim_end()
            )
        })
    })?;
    steps.step(&format!("push tag {} to {remote}", tag.tag), || {
        git.push(&tag_spec).map_err(|e| {
            anyhow::anyhow!(
                "{release} was pushed, but {remote} refused the tag {}:\n{}\npush it by hand: git push {remote} {}",
                tag.tag,
                e.output.trim_end(),
                e.refspec
            )
        })
    })?;
    Ok(Outcome::Pushed {
        tag: tag.tag.clone(),
        commit: commit.to_string(),
    })
}

/// Runs artifacts-gen in this process, in release mode, on the repository's manifest.
fn regenerate(options: &Options) -> anyhow::Result<()> {
    use clap::Parser as _;
    let today = options
        .today
        .format(time::macros::format_description!("[year]-[month]-[day]"))
        .context("cannot format the date")?;
    let mut args: Vec<String> = vec![
        "artifacts-gen".into(),
        "--release".into(),
        "--manifest".into(),
        options.repo.join(MANIFEST).display().to_string(),
        "--generated-dir".into(),
        options
            .repo
            .join(RELEASE_FILE)
            .parent()
            .context("the release file has no directory")?
            .display()
            .to_string(),
        "--today".into(),
        today,
    ];
    args.extend(options.artifacts_gen_args.iter().cloned());
    let cli = artifacts_gen::cli::Cli::try_parse_from(&args)
        .map_err(|e| anyhow::anyhow!("artifacts-gen arguments: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(artifacts_gen::cli::run(cli))?;
    if code != std::process::ExitCode::SUCCESS {
        bail!("artifacts-gen failed ({code:?})");
    }
    Ok(())
}

/// The version of this run: today and N (see the module documentation).
fn next_tag(git: &Git, options: &Options) -> anyhow::Result<ReleaseTag> {
    let tags = git.tags()?;
    let n = match options.build_num {
        Some(n) => n,
        None => next_number(tags.iter().map(String::as_str)),
    };
    let date = options
        .today
        .format(time::macros::format_description!("[year].[month].[day]"))
        .context("cannot format the date")?;
    let tag = ReleaseTag::parse(&format!("test-{date}-{n}"))?;
    if tags.contains(&tag.tag) {
        bail!(
            "tag {} exists already (CIRCLE_BUILD_NUM={n} used twice?)",
            tag.tag
        );
    }
    Ok(tag)
}

/// One more than the highest N of the `test-` and `release-` tags among `tags`; 1 when none.
pub fn next_number<'a>(tags: impl Iterator<Item = &'a str>) -> u64 {
    tags.filter_map(|t| ReleaseTag::parse(t).ok())
        .filter_map(|t| {
            t.version
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u64>().ok())
        })
        .max()
        .map_or(1, |n| n + 1)
}

#[cfg(test)]
mod tests;
