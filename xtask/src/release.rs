//! `cargo xtask release [TAG]`: check the tag and the working tree, build the release
//! binaries, package them ([`crate::deb`]), publish the package as a GitHub pre-release
//! ([`crate::publish`]) and print a summary.

use crate::deb::{self, Meta};
use crate::progress::{human_size, Progress};
use crate::publish::{self, LocalFile, Target};
use crate::tag::ReleaseTag;
use anyhow::{bail, Context as _};
use fetch::github::GitHub;
use fetch::http::{Http, HttpOptions, RetryPolicy};
use fetch::Secret;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The GitHub API of github.com.
pub const GITHUB_API: &str = "https://api.github.com/";

/// The options of `cargo xtask release`.
#[derive(Debug, Clone)]
pub struct Options {
    pub tag: Option<String>,
    pub version: Option<String>,
    pub out: Option<PathBuf>,
    pub no_publish: bool,
    pub dry_run: bool,
    pub allow_dirty: bool,
    pub repository: String,
    pub github_api: String,
}

/// `owner/name` of the workspace's repository URL (`https://github.com/owner/name`).
pub fn default_repository() -> String {
    let url = env!("CARGO_PKG_REPOSITORY");
    url.trim_start_matches("https://github.com/")
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .to_owned()
}

/// The commit being built, as git sees it.
#[derive(Debug, Clone)]
pub struct Commit {
    pub hash: String,
    /// Committer time, unix seconds: `SOURCE_DATE_EPOCH`.
    pub time: i64,
    /// `git status --porcelain` lines: uncommitted changes and untracked files.
    pub changes: Vec<String>,
}

impl Commit {
    pub fn read(root: &Path) -> anyhow::Result<Self> {
        let git = |args: &[&str]| deb::output_of(Command::new("git").args(args).current_dir(root));
        let hash = git(&["rev-parse", "HEAD"])?.trim().to_owned();
        let time = git(&["log", "-1", "--format=%ct", "HEAD"])?;
        let time = time
            .trim()
            .parse()
            .with_context(|| format!("git gave a commit time {time:?}"))?;
        let changes = git(&["status", "--porcelain"])?
            .lines()
            .map(str::to_owned)
            .collect();
        Ok(Self {
            hash,
            time,
            changes,
        })
    }

    /// The commit `tag` points at, `None` when there is no such tag here.
    pub fn of_tag(root: &Path, tag: &str) -> anyhow::Result<Option<String>> {
        let output = Command::new("git")
            .args(["rev-parse", "-q", "--verify"])
            .arg(format!("refs/tags/{tag}^{{commit}}"))
            .current_dir(root)
            .output()
            .context("cannot run git")?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
    }
}

/// The tag to release: TAG, or `release-<VERSION>`, or the one release tag at HEAD.
pub fn resolve_tag(root: &Path, options: &Options) -> anyhow::Result<ReleaseTag> {
    match (&options.tag, &options.version) {
        (Some(_), Some(_)) => bail!("give a TAG or --version, not both"),
        (Some(tag), None) => Ok(ReleaseTag::parse(tag)?),
        (None, Some(version)) => Ok(ReleaseTag::from_version(version)?),
        (None, None) => {
            let tags = deb::output_of(
                Command::new("git")
                    .args(["tag", "--points-at", "HEAD"])
                    .current_dir(root),
            )?;
            let found: Vec<ReleaseTag> = tags
                .lines()
                .filter_map(|t| ReleaseTag::parse(t.trim()).ok())
                .collect();
            match found.as_slice() {
                [one] => Ok(one.clone()),
                [] => bail!("HEAD has no release-YYYY.MM.DD-N or test-YYYY.MM.DD-N tag: give a TAG or --version"),
                _ => bail!(
                    "HEAD has several release tags ({}): give the TAG to release",
                    found.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    }
}

/// Refuses a dirty tree (unless allowed) and a tag that names another commit.
pub fn check_source(
    root: &Path,
    tag: &ReleaseTag,
    commit: &Commit,
    allow_dirty: bool,
) -> anyhow::Result<()> {
    if !commit.changes.is_empty() {
        let shown: Vec<&str> = commit.changes.iter().take(10).map(String::as_str).collect();
        let more = commit.changes.len().saturating_sub(shown.len());
        let list = format!(
            "{}{}",
            shown.join("\n  "),
            if more > 0 {
                format!("\n  … and {more} more")
            } else {
                String::new()
            }
        );
        if !allow_dirty {
            bail!(
                "the working tree has changes that are not committed, so the package would not be what commit {} is:\n  {list}\ncommit them, or pass --allow-dirty",
                short(&commit.hash)
            );
        }
        eprintln!("warning: building with uncommitted changes (--allow-dirty):\n  {list}");
    }
    if let Some(tagged) = Commit::of_tag(root, &tag.tag)? {
        if tagged != commit.hash {
            bail!(
                "tag {} is commit {}, but HEAD is {}: check out the tag to release it",
                tag.tag,
                short(&tagged),
                short(&commit.hash)
            );
        }
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A built package and its checksum file.
#[derive(Debug)]
pub struct Built {
    pub deb: PathBuf,
    pub sums: PathBuf,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    /// The staged tree the package was built from (kept while `_work` lives).
    pub tree: PathBuf,
    pub _work: tempfile::TempDir,
}

impl Built {
    /// The files to publish: the checksum first, so that it is there when the package
    /// appears on a release that is already published.
    pub fn local_files(&self) -> anyhow::Result<Vec<LocalFile>> {
        Ok(vec![
            local_file(&self.sums, "text/plain")?,
            LocalFile {
                name: deb::file_name_of_path(&self.deb)?,
                path: self.deb.clone(),
                content_type: deb::content_type().to_owned(),
                digest: Some(self.digest.clone()),
                size: self.size,
            },
        ])
    }
}

fn local_file(path: &Path, content_type: &str) -> anyhow::Result<LocalFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(LocalFile {
        name: deb::file_name_of_path(path)?,
        path: path.to_path_buf(),
        content_type: content_type.to_owned(),
        digest: Some(fetch::sha256_digest(&bytes)),
        size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
    })
}

/// Stages and packages already-built binaries into `out/neco_<version>_amd64.deb` and its
/// `.sha256` file.
pub fn package(root: &Path, binaries: &Path, meta: &Meta, out: &Path) -> anyhow::Result<Built> {
    let target = deb::target_dir(root);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let work = tempfile::Builder::new()
        .prefix("neco-deb-")
        .tempdir_in(&target)
        .with_context(|| format!("cannot create a directory in {}", target.display()))?;
    let progress = Progress::start("stage the package tree (strip, man pages, Depends)");
    let tree = deb::stage(root, binaries, meta, work.path())?;
    progress.finish("staged");
    let deb_path = out.join(deb::file_name(&meta.version));
    let progress = Progress::start(format!("dpkg-deb -Zxz {}", deb_path.display()));
    deb::build_deb(&tree, &deb_path, meta.epoch)?;
    let bytes =
        std::fs::read(&deb_path).with_context(|| format!("cannot read {}", deb_path.display()))?;
    let digest = fetch::sha256_digest(&bytes);
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    progress.finish(&human_size(size));
    let sums = out.join(format!("{}.sha256", deb::file_name(&meta.version)));
    let line = format!(
        "{}  {}\n",
        digest.trim_start_matches("sha256:"),
        deb::file_name(&meta.version)
    );
    std::fs::write(&sums, line).with_context(|| format!("cannot write {}", sums.display()))?;
    Ok(Built {
        deb: deb_path,
        sums,
        digest,
        size,
        tree,
        _work: work,
    })
}

/// `cargo xtask release`.
pub fn run(root: &Path, cargo: &str, options: &Options) -> anyhow::Result<()> {
    let tag = resolve_tag(root, options)?;
    let commit = Commit::read(root)?;
    check_source(root, &tag, &commit, options.allow_dirty)?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| deb::target_dir(root).join("debian"));
    let meta = Meta {
        version: tag.version.clone(),
        tag: tag.tag.clone(),
        commit: commit.hash.clone(),
        epoch: commit.time,
        homepage: env!("CARGO_PKG_REPOSITORY").to_owned(),
    };
    let publishing = !options.no_publish;
    let token = github_token();
    if publishing && !options.dry_run && token.is_none() {
        bail!("publishing needs a GitHub token in GITHUB_TOKEN (or pass --no-publish)");
    }
    let deb_path = out.join(deb::file_name(&meta.version));
    let body = format!(
        "neco {}, built from commit {} by `cargo xtask release`.",
        meta.version, commit.hash
    );
    eprintln!(
        "neco {} from {} (commit {}, SOURCE_DATE_EPOCH={})",
        meta.version,
        tag.tag,
        short(&commit.hash),
        commit.time
    );
    if options.dry_run {
        eprintln!("dry run: nothing is built, written or published. The plan:");
        eprintln!("  1. cargo {}", deb::BUILD_ARGS.join(" "));
        eprintln!(
            "  2. stage debian/ and the binaries; dpkg-deb --root-owner-group -Zxz → {}",
            deb_path.display()
        );
        eprintln!("  3. check it: dpkg-deb --info/--contents, lintian, dpkg --root install");
        if publishing {
            eprintln!(
                "  4. publish to {} through {}:",
                options.repository, options.github_api
            );
            let local = dry_run_files(&deb_path)?;
            let target = target(options, &tag, &meta, &body);
            let outcome = publish_with(options, token.as_ref(), target, &local, true)?;
            if !outcome.url.is_empty() {
                eprintln!("     release page: {}", outcome.url);
            }
        } else {
            eprintln!("  4. no publishing (--no-publish)");
        }
        return Ok(());
    }

    ensure_release_packages()?;
    eprintln!("\n==> [1/4] build the release binaries");
    let started = std::time::Instant::now();
    let binaries = deb::build_binaries(root, cargo, &meta.version)?;
    eprintln!("  ✓ built in {:.1}s", started.elapsed().as_secs_f64());
    eprintln!("\n==> [2/4] package");
    let built = package(root, &binaries, &meta, &out)?;
    eprintln!("\n==> [3/4] check the package");
    crate::checks::run_all(&built.deb, &meta)?;
    let release_line = if publishing {
        eprintln!("\n==> [4/4] publish to {}", options.repository);
        let local = built.local_files()?;
        let target = target(options, &tag, &meta, &body);
        let outcome = publish_with(options, token.as_ref(), target, &local, false)?;
        format!(
            "{} ({})",
            outcome.url,
            if outcome.prerelease {
                "pre-release: staging installs it; untick \"pre-release\" on GitHub to promote it to production"
            } else {
                "full release: production installs it"
            }
        )
    } else {
        eprintln!("\n==> [4/4] publish: skipped (--no-publish)");
        "not published (--no-publish)".to_owned()
    };
    eprintln!();
    println!("neco {}", meta.version);
    println!("  tag      {}", tag.tag);
    println!("  commit   {}", commit.hash);
    println!("  file     {}", built.deb.display());
    println!(
        "  size     {} ({} bytes)",
        human_size(built.size),
        built.size
    );
    println!("  sha256   {}", built.digest.trim_start_matches("sha256:"));
    println!("  release  {release_line}");
    Ok(())
}

fn target<'a>(
    options: &'a Options,
    tag: &'a ReleaseTag,
    meta: &'a Meta,
    body: &'a str,
) -> Target<'a> {
    Target {
        repo: &options.repository,
        tag: &tag.tag,
        commit: &meta.commit,
        body,
    }
}

/// In a dry run, the package built before (if any) stands for the one to build.
fn dry_run_files(deb_path: &Path) -> anyhow::Result<Vec<LocalFile>> {
    let name = deb::file_name_of_path(deb_path)?;
    let sums = deb_path.with_file_name(format!("{name}.sha256"));
    if deb_path.is_file() && sums.is_file() {
        eprintln!("     (comparing with {}, built before)", deb_path.display());
        return Ok(vec![
            local_file(&sums, "text/plain")?,
            local_file(deb_path, deb::content_type())?,
        ]);
    }
    Ok([format!("{name}.sha256"), name]
        .into_iter()
        .map(|name| LocalFile {
            path: deb_path.with_file_name(&name),
            name,
            content_type: String::new(),
            digest: None,
            size: 0,
        })
        .collect())
}

/// Runs a GitHub job on a fresh runtime, with a client whose whole-request timeout (30
/// minutes) leaves room for uploads.
fn publish_with(
    options: &Options,
    token: Option<&Secret>,
    target: Target<'_>,
    local: &[LocalFile],
    dry_run: bool,
) -> anyhow::Result<publish::Outcome> {
    let api = reqwest::Url::parse(&options.github_api)
        .with_context(|| format!("--github-api {:?}", options.github_api))?;
    let http = github_http()?;
    let github = GitHub::new(&http, api, token);
    block_on(publish::publish(&github, target, local, dry_run))?
}

/// The GitHub token of the environment (`GITHUB_TOKEN`), if any.
pub fn github_token() -> Option<Secret> {
    std::env::var("GITHUB_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Secret::new(t.trim()))
}

/// xtask's HTTP client for GitHub: two connections per host, three attempts, and a timeout
/// long enough for a package upload.
pub fn github_http() -> anyhow::Result<Http> {
    Ok(Http::with_options(HttpOptions {
        per_host: 2,
        retry: RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        },
        timeout: Duration::from_secs(30 * 60),
        user_agent: concat!("neco-rs-xtask/", env!("CARGO_PKG_VERSION")).to_owned(),
        ..HttpOptions::default()
    })?)
}

/// Runs one async call from a synchronous command.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

/// Debian packages the release build and its checks need.
pub const RELEASE_PACKAGES: &[&str] = &[
    // dpkg-deb, dpkg-shlibdeps
    "dpkg-dev",
    // strip
    "binutils",
    // etcd-client (the crate) generates its gRPC code with protoc at build time.
    "protobuf-compiler",
    "lintian",
    // systemd-analyze verify
    "systemd",
    // A dependency of the package: its checks copy the host's dpkg status of each one.
    "podman",
];

fn ensure_release_packages() -> anyhow::Result<()> {
    crate::ensure_packages(RELEASE_PACKAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_comes_from_cargo_toml() {
        assert_eq!(default_repository(), "cybozu-go/neco-rs");
    }

    /// A git repository with one commit.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Self {
            let repo = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            repo.git(&["init", "-q"]);
            std::fs::write(repo.path().join("README"), "one\n").unwrap();
            repo.commit("first");
            repo
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn git(&self, args: &[&str]) -> String {
            deb::output_of(
                Command::new("git")
                    .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                    .args(["-c", "tag.gpgSign=false", "-c", "commit.gpgSign=false"])
                    .args(args)
                    .current_dir(self.path()),
            )
            .unwrap()
        }

        fn commit(&self, message: &str) {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "-m", message]);
        }
    }

    fn options(tag: Option<&str>, version: Option<&str>) -> Options {
        Options {
            tag: tag.map(str::to_owned),
            version: version.map(str::to_owned),
            out: None,
            no_publish: true,
            dry_run: false,
            allow_dirty: false,
            repository: "o/r".to_owned(),
            github_api: GITHUB_API.to_owned(),
        }
    }

    #[test]
    fn tags_come_from_the_argument_the_version_or_head() {
        let repo = Repo::new();
        let tag = |o: &Options| resolve_tag(repo.path(), o).map(|t| t.tag);
        assert_eq!(
            tag(&options(Some("test-2026.11.26-3"), None)).unwrap(),
            "test-2026.11.26-3"
        );
        assert_eq!(
            tag(&options(None, Some("2026.11.26-4"))).unwrap(),
            "release-2026.11.26-4"
        );
        let err = tag(&options(Some("v1.0"), None)).unwrap_err();
        assert!(err.to_string().contains("release-YYYY.MM.DD-N"), "{err}");
        let err = tag(&options(None, None)).unwrap_err();
        assert!(err.to_string().contains("give a TAG"), "{err}");
        repo.git(&["tag", "release-2026.11.26-5"]);
        repo.git(&["tag", "v9"]);
        assert_eq!(tag(&options(None, None)).unwrap(), "release-2026.11.26-5");
        repo.git(&["tag", "test-2026.11.26-5"]);
        let err = tag(&options(None, None)).unwrap_err();
        assert!(err.to_string().contains("several"), "{err}");
    }

    #[test]
    fn dirty_trees_and_tags_of_other_commits_are_refused() {
        let repo = Repo::new();
        let tag = ReleaseTag::parse("release-2026.11.26-1").unwrap();
        let commit = Commit::read(repo.path()).unwrap();
        assert!(commit.changes.is_empty());
        assert!(commit.time > 1_600_000_000);
        check_source(repo.path(), &tag, &commit, false).unwrap();

        std::fs::write(repo.path().join("README"), "changed\n").unwrap();
        let dirty = Commit::read(repo.path()).unwrap();
        let err = check_source(repo.path(), &tag, &dirty, false).unwrap_err();
        assert!(err.to_string().contains("--allow-dirty"), "{err}");
        assert!(err.to_string().contains("README"), "{err}");
        check_source(repo.path(), &tag, &dirty, true).unwrap();
        std::fs::write(repo.path().join("untracked"), "x").unwrap();
        assert_eq!(Commit::read(repo.path()).unwrap().changes.len(), 2);

        repo.git(&["tag", "release-2026.11.26-1"]);
        repo.commit("second");
        let moved = Commit::read(repo.path()).unwrap();
        let err = check_source(repo.path(), &tag, &moved, true).unwrap_err();
        assert!(err.to_string().contains("check out the tag"), "{err}");
        repo.git(&["checkout", "-q", "release-2026.11.26-1"]);
        let at_tag = Commit::read(repo.path()).unwrap();
        check_source(repo.path(), &tag, &at_tag, false).unwrap();
    }

    #[test]
    fn publishing_through_the_command_s_client() {
        let server = dctest::GitHubStandIn::start(Some("t0ken".to_owned())).unwrap();
        server.add_repo("o/r");
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("neco_2026.11.26-1_amd64.deb");
        std::fs::write(&deb, b"package").unwrap();
        let local = vec![local_file(&deb, deb::content_type()).unwrap()];
        let mut options = options(Some("release-2026.11.26-1"), None);
        options.github_api = format!("{}/", server.base_url());
        let token = Secret::new("t0ken");
        let target = Target {
            repo: "o/r",
            tag: "release-2026.11.26-1",
            commit: "c0ffee",
            body: "neco 2026.11.26-1",
        };
        let outcome = publish_with(&options, Some(&token), target, &local, false).unwrap();
        assert!(outcome.prerelease);
        let releases = server.releases("o/r");
        assert_eq!(releases[0].assets[0].content_type, deb::content_type());
        assert_eq!(releases[0].body, "neco 2026.11.26-1");
        // Without the token the stand-in refuses, and the error does not show any token.
        let err = publish_with(&options, None, target, &local, false).unwrap_err();
        assert!(format!("{err:#}").contains("401"), "{err:#}");
    }
}
