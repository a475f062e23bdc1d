//! The nightly pipeline against real git repositories on disk (a bare remote, the clone the
//! pipeline runs in, and a second clone playing the developers) and the local mirror of the
//! pins (the real docker-registry, GitHub and feed stand-ins) that artifacts-gen resolves
//! against. The candidate check is real but smaller than dctest: every image of the candidate's
//! release pins is pulled from the registry by digest, blobs verified.

use super::*;
use crate::git::run_git as git;
use dctest::mirror::{Mirror, MirrorSeed};

const TODAY: time::Date = time::macros::date!(2026 - 11 - 26);
/// The highest existing tag of the fixture: the run's N is one more.
const OLD_TAG: &str = "test-2026.11.25-7";
const NEXT_TAG: &str = "test-2026.11.26-8";

impl<F: FnMut(&Path, &ReleaseTag, &mut Steps) -> anyhow::Result<()>> Candidate for F {
    fn test(&mut self, repo: &Path, tag: &ReleaseTag, steps: &mut Steps) -> anyhow::Result<()> {
        self(repo, tag, steps)
    }
}

struct Fixture {
    mirror: Mirror,
    /// The bare remote.
    remote: PathBuf,
    /// The developers' clone.
    dev: PathBuf,
    /// The clone the pipeline runs in (CI's checkout of main).
    ci: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A remote whose main and release hold the workspace's manifest and generated pins (up to
    /// date with the mirror), with an older candidate tag; a CI clone on main.
    fn new() -> Self {
        let mirror = Mirror::start(&MirrorSeed::neco_2025().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("neco.git");
        let dev = dir.path().join("dev");
        let ci = dir.path().join("ci");
        std::fs::create_dir_all(&remote).unwrap();
        git(&remote, &["init", "--bare", "--quiet"]);
        std::fs::create_dir_all(dev.join("artifacts/src/generated")).unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for file in [
            MANIFEST,
            RELEASE_FILE,
            "artifacts/src/generated/artifacts.rs",
        ] {
            std::fs::copy(workspace.join(file), dev.join(file)).unwrap();
        }
        std::fs::write(dev.join("README.md"), "neco-rs\n\nline two\n").unwrap();
        std::fs::write(dev.join(".gitignore"), "/target\n").unwrap();
        git(&dev, &["init", "--quiet"]);
        git(&dev, &["add", "."]);
        git(&dev, &["commit", "--quiet", "-m", "initial"]);
        git(&dev, &["remote", "add", "origin", remote.to_str().unwrap()]);
        git(&dev, &["push", "--quiet", "origin", "main", "main:release"]);
        git(&dev, &["tag", OLD_TAG]);
        git(&dev, &["push", "--quiet", "origin", OLD_TAG]);
        git(
            dir.path(),
            &["clone", "--quiet", remote.to_str().unwrap(), "ci"],
        );
        Self {
            mirror,
            remote,
            dev,
            ci,
            _dir: dir,
        }
    }

    fn options(&self) -> Options {
        let mut args = Vec::new();
        for o in self.mirror.registry_overrides() {
            args.extend(["--registry".to_owned(), o]);
        }
        args.extend([
            "--github-api".to_owned(),
            self.mirror.github.base_url(),
            "--os-feed".to_owned(),
            self.mirror.feed.feed_url(),
            "--os-image-base".to_owned(),
            self.mirror.feed.file_base_template(),
        ]);
        Options {
            repo: self.ci.clone(),
            remote: "origin".into(),
            main: "main".into(),
            release: "release".into(),
            dry_run: false,
            build_num: None,
            today: TODAY,
            artifacts_gen_args: args,
        }
    }

    /// The remote's refs, `<oid>\t<ref>` sorted.
    fn remote_refs(&self) -> String {
        git(
            &self.remote,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
        )
    }

    /// A developer commits a change of `file` on `branch` and pushes it.
    fn dev_commit(&self, branch: &str, file: &str, text: &str) {
        git(&self.dev, &["checkout", "--quiet", branch]);
        git(
            &self.dev,
            &["pull", "--quiet", "--ff-only", "origin", branch],
        );
        std::fs::write(self.dev.join(file), text).unwrap();
        git(
            &self.dev,
            &[
                "commit",
                "--quiet",
                "-am",
                &format!("change {file} on {branch}"),
            ],
        );
        git(&self.dev, &["push", "--quiet", "origin", branch]);
    }

    /// Pushes a newer coil image than the pinned 2.8.0; returns it.
    fn newer_coil(&self) -> dctest::registry::PushedImage {
        self.mirror
            .registry
            .push_image("cybozu-go/coil", "2.8.1")
            .unwrap()
    }

    /// The CI clone is on main, clean, with no tag but the fetched ones.
    fn assert_ci_clean(&self) {
        assert_eq!(git(&self.ci, &["status", "--porcelain"]), "");
        assert_eq!(
            git(&self.ci, &["rev-parse", "--abbrev-ref", "HEAD"]),
            "main"
        );
        assert!(!git(&self.ci, &["tag"]).contains(NEXT_TAG));
    }
}

/// The candidate check: pulls every image of the candidate's release pins by digest.
fn pull_all(
    mirror: &Mirror,
) -> impl FnMut(&Path, &ReleaseTag, &mut Steps) -> anyhow::Result<()> + '_ {
    move |repo: &Path, _tag: &ReleaseTag, steps: &mut Steps| {
        steps.step("pull every image of the candidate", || {
            let set = artifacts_gen::generated::load(&repo.join(RELEASE_FILE))?
                .context("no release pins")?;
            for image in &set.images {
                let (_, path) = image.repository.split_once('/').context("no host")?;
                mirror.registry.pull(path, &image.digest).with_context(|| {
                    format!(
                        "image {} ({}:{}) cannot be pulled",
                        image.name, image.repository, image.tag
                    )
                })?;
            }
            Ok(())
        })
    }
}

#[test]
fn a_change_on_main_and_a_newer_image_are_merged_tested_tagged_and_pushed() {
    let f = Fixture::new();
    let release_before = git(&f.remote, &["rev-parse", "release"]);
    f.dev_commit(
        "main",
        "README.md",
        "neco-rs\n\nline two, changed on main\n",
    );
    let main = git(&f.remote, &["rev-parse", "main"]);
    let coil = f.newer_coil();

    let mut tested = Vec::new();
    let mut check = pull_all(&f.mirror);
    let mut candidate = |repo: &Path, tag: &ReleaseTag, steps: &mut Steps| {
        tested.push(tag.version.clone());
        // The candidate is the merged tree with the new pin.
        let readme = std::fs::read_to_string(repo.join("README.md"))?;
        assert!(readme.contains("changed on main"), "{readme}");
        check(repo, tag, steps)
    };
    let outcome = run(&f.options(), &mut candidate, &mut Steps::new()).unwrap();
    assert_eq!(tested, ["2026.11.26-8"]);
    let Outcome::Pushed { tag, commit } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(tag, NEXT_TAG);

    // The remote: release is a merge commit of the old release and main, carrying the new pin,
    // and the tag names it.
    assert_eq!(git(&f.remote, &["rev-parse", "release"]), commit);
    assert_eq!(
        git(&f.remote, &["rev-parse", &format!("{NEXT_TAG}^{{commit}}")]),
        commit
    );
    assert_eq!(
        git(&f.remote, &["log", "-1", "--format=%P", "release"]),
        format!("{release_before} {main}")
    );
    assert_eq!(
        git(&f.remote, &["log", "-1", "--format=%s", "release"]),
        "[ci skip] 2026.11.26-8"
    );
    let pins = git(&f.remote, &["show", &format!("release:{RELEASE_FILE}")]);
    assert!(pins.contains("ghcr.io/cybozu-go/coil:2.8.1"), "{pins}");
    assert!(pins.contains(&coil.manifest_digest));
    // main is untouched by the pipeline.
    assert_eq!(git(&f.remote, &["rev-parse", "main"]), main);
    // The CI clone is back on main, clean; its release branch and tag are the pushed ones.
    assert_eq!(git(&f.ci, &["status", "--porcelain"]), "");
    assert_eq!(git(&f.ci, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(&f.ci, &["rev-parse", "release"]), commit);

    // The next run finds nothing new.
    let refs = f.remote_refs();
    let outcome = run(&f.options(), &mut pull_all(&f.mirror), &mut Steps::new()).unwrap();
    assert_eq!(outcome, Outcome::NothingToRelease);
    assert_eq!(f.remote_refs(), refs);
}

#[test]
fn nothing_new_exits_successfully_and_pushes_nothing() {
    let f = Fixture::new();
    let refs = f.remote_refs();
    let mut called = false;
    let mut candidate = |_: &Path, _: &ReleaseTag, _: &mut Steps| {
        called = true;
        Ok(())
    };
    let outcome = run(&f.options(), &mut candidate, &mut Steps::new()).unwrap();
    assert_eq!(outcome, Outcome::NothingToRelease);
    assert!(!called, "nothing to test");
    assert_eq!(f.remote_refs(), refs);
    f.assert_ci_clean();
}

#[test]
fn a_merge_conflict_names_the_file_and_pushes_nothing() {
    let f = Fixture::new();
    f.dev_commit(
        "release",
        "README.md",
        "neco-rs\n\nline two, changed on release\n",
    );
    f.dev_commit(
        "main",
        "README.md",
        "neco-rs\n\nline two, changed on main\n",
    );
    let refs = f.remote_refs();
    let err = run(&f.options(), &mut pull_all(&f.mirror), &mut Steps::new()).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("conflicts in 1 file(s):\n  README.md"),
        "{message}"
    );
    assert!(
        message.contains("merge origin/main into release"),
        "{message}"
    );
    assert_eq!(f.remote_refs(), refs);
    f.assert_ci_clean();
    // The clone had no local release branch: it has none again.
    assert_eq!(git(&f.ci, &["branch", "--list", "release"]), "");
}

#[test]
fn a_candidate_whose_image_cannot_be_pulled_pushes_nothing() {
    let f = Fixture::new();
    f.dev_commit(
        "main",
        "README.md",
        "neco-rs\n\nline two, changed on main\n",
    );
    let coil = f.newer_coil();
    // The tag resolves, but its layer is gone.
    f.mirror
        .registry
        .delete_blob("cybozu-go/coil", &coil.layer_digests[0])
        .unwrap();
    let refs = f.remote_refs();
    let err = run(&f.options(), &mut pull_all(&f.mirror), &mut Steps::new()).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("candidate 2026.11.26-8 failed its tests"),
        "{message}"
    );
    assert!(
        message.contains("image coil (ghcr.io/cybozu-go/coil:2.8.1) cannot be pulled"),
        "{message}"
    );
    assert_eq!(f.remote_refs(), refs);
    f.assert_ci_clean();
    // The pins in the work tree are the old ones again.
    let pins = std::fs::read_to_string(f.ci.join(RELEASE_FILE)).unwrap();
    assert!(pins.contains("ghcr.io/cybozu-go/coil:2.8.0"));
}

#[test]
fn a_rejected_branch_push_pushes_no_tag() {
    let f = Fixture::new();
    f.dev_commit(
        "main",
        "README.md",
        "neco-rs\n\nline two, changed on main\n",
    );
    // While the candidate is tested, someone else moves the remote's release.
    let mut check = pull_all(&f.mirror);
    let mut candidate = |repo: &Path, tag: &ReleaseTag, steps: &mut Steps| {
        f.dev_commit("release", ".gitignore", "/target\n/other\n");
        check(repo, tag, steps)
    };
    let err = run(&f.options(), &mut candidate, &mut Steps::new()).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("refused refs/heads/release"), "{message}");
    assert!(
        message.contains("the tag test-2026.11.26-8 was not pushed"),
        "{message}"
    );
    let refs = f.remote_refs();
    assert!(!refs.contains("refs/tags/test-2026.11.26-8"), "{refs}");
    assert_eq!(
        git(&f.remote, &["log", "-1", "--format=%s", "release"]),
        "change .gitignore on release"
    );
    f.assert_ci_clean();
}

#[test]
fn a_dry_run_prints_the_plan_and_pushes_nothing() {
    let f = Fixture::new();
    f.dev_commit(
        "main",
        "README.md",
        "neco-rs\n\nline two, changed on main\n",
    );
    // A local release branch behind the remote's: put back where it was.
    git(&f.ci, &["branch", "release", "main"]);
    let refs = f.remote_refs();
    let release = git(&f.ci, &["rev-parse", "release"]);
    let options = Options {
        dry_run: true,
        build_num: Some(4321),
        ..f.options()
    };
    let outcome = run(&options, &mut pull_all(&f.mirror), &mut Steps::new()).unwrap();
    let Outcome::DryRun { tag, plan } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(tag, "test-2026.11.26-4321");
    assert!(plan.contains("would push to origin"), "{plan}");
    assert!(plan.contains("release -> "), "{plan}");
    assert!(plan.contains("tag test-2026.11.26-4321"), "{plan}");
    assert_eq!(f.remote_refs(), refs);
    f.assert_ci_clean();
    assert!(!git(&f.ci, &["tag"]).contains("4321"));
    assert_eq!(git(&f.ci, &["rev-parse", "release"]), release);
}

#[test]
fn a_dirty_work_tree_is_refused_before_anything_happens() {
    let f = Fixture::new();
    std::fs::write(f.ci.join("notes.txt"), "mine\n").unwrap();
    let err = run(&f.options(), &mut pull_all(&f.mirror), &mut Steps::new()).unwrap_err();
    assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
    assert_eq!(
        std::fs::read_to_string(f.ci.join("notes.txt")).unwrap(),
        "mine\n"
    );
}

#[test]
fn n_is_one_more_than_the_highest_of_any_date() {
    for (tags, n) in [
        (vec![], 1),
        (vec!["test-2026.11.25-7"], 8),
        (
            vec!["test-2026.11.25-7", "release-2026.11.20-9", "v1.2"],
            10,
        ),
        (vec!["test-2026.11.26-3", "test-2026.01.01-12"], 13),
        (vec!["debug-2026.11.26-99", "test-2026.11.26-01"], 1),
    ] {
        assert_eq!(next_number(tags.iter().copied()), n, "{tags:?}");
    }
}
