//! The nightly end to end, as `cargo xtask ci` runs it: `cargo xtask nightly` without
//! `--mirror`, pointed through its endpoint flags at the simulated upstream
//! (`dctest::upstream`: docker-registry behind token authentication, a private image, a
//! multi-platform index, a tag newer than the mirror's, debs and OS files that are not the
//! mirror's), pushing to a bare repository on disk.
//!
//! 1. An upstream blob whose bytes do not match its digest: the nightly fails before any
//!    build, naming the image, and pushes nothing (a fresh store, so nothing is reused).
//! 2. The blob repaired: the candidate pins the new tag with upstream's digest, the release
//!    profile of dctest passes on a data center serving upstream's bytes from the store, and
//!    the remote gets the candidate commit (merging main into the old release branch) on its
//!    release branch and the `test-` tag.
//!
//! It runs the real command in this checkout (the candidate's release build then reuses the
//! build of the checkout), so the work tree must be clean. The checkout gets a remote, a
//! branch and a tag of its own for the run ([`E2E_REMOTE`], [`E2E_RELEASE`], the new `test-`
//! tag); they are removed afterwards, also when the run fails.

use crate::git::git_output;
use anyhow::{bail, Context as _};
use dctest::mirror::MirrorSeed;
use dctest::upstream::{Upstream, UpstreamOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The remote the run pushes to.
const E2E_REMOTE: &str = "dctest-e2e";
/// The release branch of the run (never the checkout's own `release`).
const E2E_RELEASE: &str = "dctest-e2e-release";
/// The image whose tag is new upstream, and the tag.
pub const NEW_IMAGE: (&str, &str) = ("ghcr.io/cybozu/etcd", "3.5.16.1");
/// The image whose blob is broken in the first run.
const BROKEN_IMAGE: (&str, &str) = ("ghcr.io/cybozu/vault", "1.18.1.1");

/// Removes what the run added to the checkout.
struct Cleanup {
    root: PathBuf,
    tags_before: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Each may have nothing to remove: the run may have stopped before adding it.
        let _ = git_output(&self.root, &["remote", "remove", E2E_REMOTE]);
        let _ = git_output(&self.root, &["branch", "-D", E2E_RELEASE]);
        for tag in tags(&self.root).unwrap_or_default() {
            if !self.tags_before.contains(&tag) {
                let _ = git_output(&self.root, &["tag", "-d", &tag]);
            }
        }
    }
}

fn tags(root: &Path) -> anyhow::Result<Vec<String>> {
    Ok(git_output(root, &["tag", "--list"])?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The simulated upstream of the nightly: the mirror's seed, `setup-hw` private, `cilium` a
/// multi-platform index, [`NEW_IMAGE`] pushed besides (its digest is returned), and neco's
/// repository without a release (the candidate is upgraded to itself).
pub fn start_upstream() -> anyhow::Result<(Upstream, String)> {
    let upstream = Upstream::start(
        &MirrorSeed::neco_2025()?,
        UpstreamOptions {
            private: vec!["ghcr.io/cybozu-go/setup-hw".to_owned()],
            multi_platform: vec!["ghcr.io/cybozu/cilium".to_owned()],
        },
    )?;
    let new_digest = upstream.push(NEW_IMAGE.0, NEW_IMAGE.1)?;
    upstream
        .github
        .add_repo(&crate::release::default_repository());
    Ok((upstream, new_digest))
}

/// The nightly's endpoint flags for `upstream`, as flag and value pairs.
pub fn endpoint_args(upstream: &Upstream) -> Vec<String> {
    let mut args = Vec::new();
    for o in upstream.registry_overrides() {
        args.extend(["--registry".to_owned(), o]);
    }
    args.extend([
        "--github-api".to_owned(),
        format!("{}/", upstream.github.base_url()),
        "--os-feed".to_owned(),
        upstream.feed.feed_url(),
        "--os-image-base".to_owned(),
        upstream.feed.file_base_template(),
    ]);
    args
}

/// Fails unless the work tree at `root` is clean, naming what is not.
pub fn require_clean(root: &Path) -> anyhow::Result<()> {
    let changes = git_output(root, &["status", "--porcelain"])?;
    if !changes.is_empty() {
        bail!(
            "the nightly end to end runs `cargo xtask nightly` in this checkout, which needs a \
             clean work tree (CI runs on a clean clone); commit or stash:\n{changes}"
        );
    }
    Ok(())
}

/// Runs both nightlies; fails naming what was wrong.
pub fn run(root: &Path, cargo: &str) -> anyhow::Result<()> {
    require_clean(root)?;
    let (upstream, new_digest) = start_upstream()?;

    let work = tempfile::Builder::new()
        .prefix("nightly-e2e-")
        .tempdir_in(crate::deb::target_dir(root))
        .context("cannot create the directory of the remote")?;
    let remote = work.path().join("remote.git");
    git_output(
        work.path(),
        &["init", "--quiet", "--bare", &path_text(&remote)],
    )?;
    let _cleanup = Cleanup {
        root: root.to_owned(),
        tags_before: tags(root)?,
    };
    git_output(root, &["remote", "add", E2E_REMOTE, &path_text(&remote)])?;
    git_output(
        root,
        &["push", "--quiet", E2E_REMOTE, "HEAD:refs/heads/main"],
    )?;
    // The remote's release branch is one commit behind main: the nightly merges main into it.
    let release_before = git_output(root, &["rev-parse", "HEAD~1"])?;
    let main = git_output(root, &["rev-parse", "HEAD"])?;
    git_output(
        root,
        &[
            "push",
            "--quiet",
            E2E_REMOTE,
            &format!("HEAD~1:refs/heads/{E2E_RELEASE}"),
        ],
    )?;

    // 1. A broken blob upstream: nothing is built or pushed.
    let blob = config_file(&upstream, BROKEN_IMAGE.0, BROKEN_IMAGE.1)?;
    let original = std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let mut broken = original.clone();
    broken[0] ^= 0xff;
    std::fs::write(&blob, &broken).with_context(|| format!("writing {}", blob.display()))?;
    let store = work.path().join("store");
    let (ok, output) = nightly(root, cargo, &upstream, &store)?;
    std::fs::write(&blob, &original).with_context(|| format!("writing {}", blob.display()))?;
    let image = format!("{}:{}", BROKEN_IMAGE.0, BROKEN_IMAGE.1);
    if ok || !output.contains(&image) || output.contains("==> release build") {
        bail!("with a broken blob of {image} upstream, the nightly should have failed naming it before any build:\n{output}");
    }
    let pushed = git_output(
        &remote,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    )?;
    let expected = format!("refs/heads/{E2E_RELEASE} {release_before}\nrefs/heads/main {main}");
    if pushed != expected {
        bail!("the failed nightly pushed; the remote has:\n{pushed}");
    }
    eprintln!("the nightly with a broken upstream blob failed naming {image}, pushed nothing");

    // 2. The candidate of upstream's artifacts, tested and pushed.
    let (ok, output) = nightly(root, cargo, &upstream, &store)?;
    if !ok {
        bail!("the nightly against the simulated upstream failed:\n{output}");
    }
    let tag = git_output(&remote, &["tag", "--list", "test-*"])?;
    if tag.lines().count() != 1 {
        bail!("the remote has the tags {tag:?}, expected one test- tag");
    }
    let tagged = git_output(&remote, &["rev-parse", &format!("{tag}^{{commit}}")])?;
    let release = git_output(
        &remote,
        &["rev-parse", &format!("refs/heads/{E2E_RELEASE}")],
    )?;
    if tagged != release {
        bail!("{tag} names {tagged}, the remote's {E2E_RELEASE} {release}");
    }
    // The candidate commit merges main into the old release branch.
    let parents = git_output(&remote, &["rev-list", "--parents", "-n", "1", &release])?;
    let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
    if parents != [release_before.as_str(), main.as_str()] {
        bail!(
            "the candidate {release} has the parents {parents:?}, expected the old \
             {E2E_RELEASE} {release_before} and main {main}"
        );
    }
    let pins = git_output(
        &remote,
        &[
            "show",
            &format!("{release}:{}", crate::nightly::RELEASE_FILE),
        ],
    )?;
    let pinned = format!("tag: ImageTag::new(\"{}\")", NEW_IMAGE.1);
    if !pins.contains(&pinned) || !pins.contains(&new_digest) {
        bail!(
            "the candidate {release} does not pin {}:{} at upstream's {new_digest}",
            NEW_IMAGE.0,
            NEW_IMAGE.1
        );
    }
    eprintln!(
        "the nightly against the simulated upstream pushed {E2E_RELEASE} and {tag} ({release}), \
         pinning {}:{} at {new_digest}",
        NEW_IMAGE.0, NEW_IMAGE.1
    );
    Ok(())
}

/// Runs `cargo xtask nightly` against `upstream`; returns whether it succeeded and its output
/// (also copied to stderr).
fn nightly(
    root: &Path,
    cargo: &str,
    upstream: &Upstream,
    store: &Path,
) -> anyhow::Result<(bool, String)> {
    let mut args = vec![
        "xtask".to_owned(),
        "nightly".to_owned(),
        "--remote".to_owned(),
        E2E_REMOTE.to_owned(),
        "--release".to_owned(),
        E2E_RELEASE.to_owned(),
        "--store".to_owned(),
        path_text(store),
    ];
    args.extend(endpoint_args(upstream));
    let (user, password) = upstream.credentials();
    eprintln!(
        "$ NECO_REGISTRY_USERNAME={user} NECO_REGISTRY_PASSWORD=<set> cargo {}",
        args.join(" ")
    );
    let output = Command::new(cargo)
        .args(&args)
        .current_dir(root)
        // The upstream's own credentials; nothing of CI's reaches the stand-ins.
        .env("NECO_REGISTRY_USERNAME", user)
        .env("NECO_REGISTRY_PASSWORD", password)
        .env_remove("GITHUB_TOKEN")
        .env_remove("CIRCLE_BUILD_NUM")
        .env_remove("ARTIFACTS_GEN_REGISTRIES")
        .env_remove("ARTIFACTS_GEN_GITHUB_API")
        .env_remove("ARTIFACTS_GEN_OS_FEED")
        .env_remove("ARTIFACTS_GEN_OS_IMAGE_BASE")
        .output()
        .context("cannot run cargo xtask nightly")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    Ok((output.status.success(), text))
}

/// The file of the config blob of `repository:tag` in the upstream registry's storage (its
/// layer is the mirror's, its config is upstream's own).
fn config_file(upstream: &Upstream, repository: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let (_, path) = repository
        .split_once('/')
        .with_context(|| format!("{repository}: expected host/path"))?;
    let config = dctest::ImageBlobs::build_as(path, tag, Some(dctest::upstream::ORIGIN), "amd64")?
        .config_digest;
    let hex = config.trim_start_matches("sha256:");
    let file = upstream
        .seeder()
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(hex.get(..2).unwrap_or(hex))
        .join(hex)
        .join("data");
    if !file.is_file() {
        bail!("{}: no such blob file", file.display());
    }
    Ok(file)
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
