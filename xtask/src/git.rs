//! The git repository work of `nightly` and `promote`.
//!
//! Everything local (status, merge, commit, tag, refs) goes through `git2`. The two network
//! operations, fetch and push, run the `git` command through `xshell`: it carries the
//! machine's credentials (CircleCI's deploy key, a person's SSH agent or credential helper),
//! and it keeps TLS and SSH out of xtask's build (git2 is built without network transports).

use anyhow::{bail, Context as _};
use git2::{BranchType, Oid, Repository, Signature};
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

/// Who the pipeline's commits are by when git has no `user.name` / `user.email`.
const FALLBACK_NAME: &str = "neco-rs nightly";
const FALLBACK_EMAIL: &str = "nightly@neco-rs.invalid";

/// A local repository and the remote it talks to.
pub struct Git {
    pub repo: Repository,
    pub dir: PathBuf,
    pub remote: String,
}

/// Where HEAD was, to go back to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Branch(String),
    Detached(Oid),
}

/// The outcome of pushing one ref.
#[derive(Debug)]
pub struct PushError {
    pub refspec: String,
    pub output: String,
}

impl Git {
    /// Opens the repository whose work tree is `dir`.
    pub fn open(dir: &Path, remote: &str) -> anyhow::Result<Self> {
        let repo = Repository::open(dir)
            .with_context(|| format!("{} is not a git repository", dir.display()))?;
        if repo.is_bare() {
            bail!(
                "{} is a bare repository; a work tree is needed",
                dir.display()
            );
        }
        repo.find_remote(remote)
            .with_context(|| format!("{}: no remote named {remote:?}", dir.display()))?;
        Ok(Self {
            repo,
            dir: dir.to_path_buf(),
            remote: remote.to_owned(),
        })
    }

    fn shell(&self) -> anyhow::Result<Shell> {
        let sh = Shell::new().context("cannot start a shell for git")?;
        sh.change_dir(&self.dir);
        Ok(sh)
    }

    /// `git fetch`: the remote's branches (pruned) and all its tags.
    pub fn fetch(&self) -> anyhow::Result<()> {
        let remote = &self.remote;
        let sh = self.shell()?;
        cmd!(sh, "git fetch --prune --tags --force {remote}")
            .run()
            .with_context(|| format!("cannot fetch from {remote}"))?;
        Ok(())
    }

    /// `git push <remote> <refspec>`, never forced: a remote ref that moved is rejected.
    pub fn push(&self, refspec: &str) -> Result<(), PushError> {
        let remote = &self.remote;
        let fail = |output: String| PushError {
            refspec: refspec.to_owned(),
            output,
        };
        let sh = self.shell().map_err(|e| fail(format!("{e:#}")))?;
        let output = cmd!(sh, "git push --porcelain {remote} {refspec}")
            .ignore_status()
            .output()
            .map_err(|e| fail(e.to_string()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprint!("{text}");
        if output.status.success() {
            Ok(())
        } else {
            Err(fail(text))
        }
    }

    /// Paths with uncommitted changes or untracked (not ignored) files.
    pub fn changes(&self) -> anyhow::Result<Vec<String>> {
        let mut options = git2::StatusOptions::new();
        options.include_untracked(true).include_ignored(false);
        let statuses = self
            .repo
            .statuses(Some(&mut options))
            .context("cannot read the status of the work tree")?;
        Ok(statuses
            .iter()
            .filter(|s| s.status() != git2::Status::CURRENT)
            .map(|s| s.path().unwrap_or("<non-UTF-8 path>").to_owned())
            .collect())
    }

    pub fn head(&self) -> anyhow::Result<Head> {
        let head = self.repo.head().context("HEAD does not name a commit")?;
        if head.is_branch() {
            if let Some(name) = head.shorthand() {
                return Ok(Head::Branch(name.to_owned()));
            }
        }
        let oid = head.target().context("HEAD does not name a commit")?;
        Ok(Head::Detached(oid))
    }

    /// The commit a ref (`refs/…`) names, if it exists.
    pub fn commit_of(&self, reference: &str) -> anyhow::Result<Option<Oid>> {
        match self.repo.find_reference(reference) {
            Ok(r) => {
                let commit = r
                    .peel_to_commit()
                    .with_context(|| format!("{reference} does not name a commit"))?;
                Ok(Some(commit.id()))
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {reference}")),
        }
    }

    pub fn remote_branch(&self, branch: &str) -> String {
        format!("refs/remotes/{}/{branch}", self.remote)
    }

    /// The local branch's commit, if the branch exists.
    pub fn branch(&self, branch: &str) -> anyhow::Result<Option<Oid>> {
        self.commit_of(&format!("refs/heads/{branch}"))
    }

    /// Makes `branch` point at `oid` and checks it out, discarding work-tree changes to
    /// tracked files and removing untracked (not ignored) files.
    pub fn switch_to(&self, branch: &str, oid: Oid) -> anyhow::Result<()> {
        let commit = self.repo.find_commit(oid)?;
        // Detach first: a branch that HEAD is on cannot be moved.
        self.repo.set_head_detached(oid)?;
        self.repo
            .branch(branch, &commit, true)
            .with_context(|| format!("cannot point branch {branch} at {oid}"))?;
        self.repo.set_head(&format!("refs/heads/{branch}"))?;
        self.checkout_head()
    }

    /// Makes the work tree and the index what HEAD is.
    pub fn checkout_head(&self) -> anyhow::Result<()> {
        self.repo
            .checkout_head(Some(
                git2::build::CheckoutBuilder::new()
                    .force()
                    .remove_untracked(true),
            ))
            .context("cannot check out HEAD")
    }

    /// Goes back to `head`: a branch (checked out) or a detached commit.
    pub fn restore_head(&self, head: &Head) -> anyhow::Result<()> {
        match head {
            Head::Branch(name) => {
                let oid = self
                    .branch(name)?
                    .with_context(|| format!("branch {name} no longer exists"))?;
                self.repo.set_head_detached(oid)?;
                self.repo.set_head(&format!("refs/heads/{name}"))?;
            }
            Head::Detached(oid) => self.repo.set_head_detached(*oid)?,
        }
        self.checkout_head()
    }

    /// Sets `branch` back to `oid`, or deletes it when it did not exist (`None`). HEAD must
    /// not be on it.
    pub fn reset_branch(&self, branch: &str, oid: Option<Oid>) -> anyhow::Result<()> {
        match oid {
            Some(oid) => {
                let commit = self.repo.find_commit(oid)?;
                self.repo.branch(branch, &commit, true)?;
            }
            None => {
                if let Ok(mut b) = self.repo.find_branch(branch, BranchType::Local) {
                    b.delete()
                        .with_context(|| format!("cannot delete branch {branch}"))?;
                }
            }
        }
        Ok(())
    }

    /// Merges `theirs` into the checked-out commit `ours` in the work tree and the index,
    /// without committing. Returns false when `theirs` is already part of `ours`.
    /// On conflict nothing is changed and the error lists the conflicting files.
    pub fn merge_into_worktree(&self, ours: Oid, theirs: Oid, what: &str) -> anyhow::Result<bool> {
        if ours == theirs || self.repo.graph_descendant_of(ours, theirs)? {
            return Ok(false);
        }
        let (ours_c, theirs_c) = (self.repo.find_commit(ours)?, self.repo.find_commit(theirs)?);
        let mut index = self
            .repo
            .merge_commits(&ours_c, &theirs_c, None)
            .with_context(|| format!("cannot merge {what}"))?;
        if index.has_conflicts() {
            let mut paths: Vec<String> = index
                .conflicts()?
                .filter_map(Result::ok)
                .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
                .collect();
            paths.sort();
            paths.dedup();
            bail!(
                "merging {what} conflicts in {} file(s):\n  {}\nresolve the conflict on main (a person's change); release only takes merges",
                paths.len(),
                paths.join("\n  ")
            );
        }
        let tree = self.repo.find_tree(index.write_tree_to(&self.repo)?)?;
        self.repo
            .checkout_tree(
                tree.as_object(),
                Some(git2::build::CheckoutBuilder::new().force()),
            )
            .with_context(|| format!("cannot check out the merge of {what}"))?;
        let mut repo_index = self.repo.index()?;
        repo_index.read_tree(&tree)?;
        repo_index.write()?;
        Ok(true)
    }

    /// Commits the work tree's `paths` (relative) on top of the index, with `parents`, on the
    /// checked-out branch. Returns the new commit.
    pub fn commit(&self, paths: &[&Path], parents: &[Oid], message: &str) -> anyhow::Result<Oid> {
        let mut index = self.repo.index()?;
        for path in paths {
            index
                .add_path(path)
                .with_context(|| format!("cannot stage {}", path.display()))?;
        }
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p))
            .collect::<Result<_, _>>()?;
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let signature = self.signature()?;
        self.repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .context("cannot commit")
    }

    /// The tree `oid` of the index as it is now.
    pub fn index_tree(&self, paths: &[&Path]) -> anyhow::Result<Oid> {
        let mut index = self.repo.index()?;
        for path in paths {
            index.add_path(path)?;
        }
        Ok(index.write_tree()?)
    }

    pub fn tree_of(&self, commit: Oid) -> anyhow::Result<Oid> {
        Ok(self.repo.find_commit(commit)?.tree_id())
    }

    fn signature(&self) -> anyhow::Result<Signature<'static>> {
        match self.repo.signature() {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Signature::now(FALLBACK_NAME, FALLBACK_EMAIL).context("cannot sign"),
        }
    }

    /// A lightweight tag (as neco's pipeline makes them); fails if it exists.
    pub fn tag(&self, name: &str, oid: Oid) -> anyhow::Result<()> {
        let object = self.repo.find_object(oid, None)?;
        self.repo
            .tag_lightweight(name, &object, false)
            .with_context(|| format!("cannot create tag {name}"))?;
        Ok(())
    }

    pub fn delete_tag(&self, name: &str) -> anyhow::Result<()> {
        match self.repo.tag_delete(name) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete tag {name}")),
        }
    }

    /// The names of every local tag.
    pub fn tags(&self) -> anyhow::Result<Vec<String>> {
        let names = self.repo.tag_names(None).context("cannot list tags")?;
        Ok(names.iter().flatten().map(str::to_owned).collect())
    }

    /// The commit a tag names.
    pub fn tag_commit(&self, name: &str) -> anyhow::Result<Option<Oid>> {
        self.commit_of(&format!("refs/tags/{name}"))
    }

    pub fn is_ancestor(&self, ancestor: Oid, of: Oid) -> anyhow::Result<bool> {
        Ok(ancestor == of || self.repo.graph_descendant_of(of, ancestor)?)
    }
}

pub fn short(oid: Oid) -> String {
    oid.to_string().chars().take(12).collect()
}

/// Runs the `git` command in `dir` and returns its standard output, trimmed; a failure names
/// the command and what git said.
pub fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !output.status.success() {
        anyhow::bail!(
            "git {} in {}: {}{}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Test support: [`git_output`] with a fixed identity; panics with git's output when it fails.
#[cfg(test)]
pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "-c",
        "user.name=dev",
        "-c",
        "user.email=dev@example.invalid",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "advice.detachedHead=false",
    ];
    all.extend_from_slice(args);
    git_output(dir, &all).unwrap_or_else(|e| panic!("{e:#}"))
}
