//! The command line: flags, and what each mode prints and writes.

use crate::generated::{self, Mode, PinnedSet};
use crate::manifest::{Kind, Manifest};
use crate::policy::Selection;
use crate::resolve::{self, Endpoints, ResolveError, Resolver, RuleBook, SourceError};
use anyhow::{bail, Context as _};
use fetch::http::{Http, HttpOptions};
use fetch::registry::Credentials;
use fetch::Secret;
use reqwest::Url;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Secrets come only from the environment and are never printed:
  GITHUB_TOKEN             GitHub token for the releases API (optional; raises rate limits)
  NECO_REGISTRY_USERNAME   registry user for images marked `private = true`
  NECO_REGISTRY_PASSWORD   its password or token

Exit status: 0 success (or up to date), 1 `--check` found drift or `--explain` found no
acceptable version, 2 error (nothing is written).";

/// Resolve the components of artifacts.toml to their newest acceptable versions and write the
/// generated pins of the artifacts crate.
#[derive(Debug, clap::Parser)]
#[command(name = "artifacts-gen", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The manifest of tracked components and their policies.
    #[arg(long, value_name = "FILE", default_value = "artifacts.toml")]
    pub manifest: PathBuf,

    /// Directory of the generated files (artifacts.rs, artifacts_release.rs).
    #[arg(long, value_name = "DIR", default_value = "artifacts/src/generated")]
    pub generated_dir: PathBuf,

    /// Release mode: write artifacts_release.rs, never choose a pre-release, and keep each
    /// image's major version as pinned in the current artifacts_release.rs.
    #[arg(long)]
    pub release: bool,

    /// Write nothing; exit 1 with an old→new table when upstream moved.
    #[arg(long, conflicts_with_all = ["dry_run", "explain", "json"])]
    pub check: bool,

    /// Print the diff of the generated file; write nothing.
    #[arg(long, conflicts_with_all = ["explain", "json"])]
    pub dry_run: bool,

    /// Print every candidate version of one component (image, deb, or the OS channel name)
    /// and the rule that kept or dropped it; write nothing.
    #[arg(long, value_name = "NAME", conflicts_with = "json")]
    pub explain: Option<String>,

    /// Print the pinned set of the generated file as JSON (no network).
    #[arg(long)]
    pub json: bool,

    /// Reach a registry host at another base URL, e.g. ghcr.io=http://127.0.0.1:5000.
    /// Repeatable; the recorded repository names keep the original host.
    #[arg(
        long = "registry",
        value_name = "HOST=URL",
        env = "ARTIFACTS_GEN_REGISTRIES",
        value_delimiter = ',',
        value_parser = parse_registry_override
    )]
    pub registries: Vec<(String, Url)>,

    /// Base URL of the GitHub REST API.
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_GITHUB_API")]
    pub github_api: Option<Url>,

    /// URL of the OS release feed, replacing the one in the manifest.
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_OS_FEED")]
    pub os_feed: Option<Url>,

    /// Base URL of the OS image's files (and their `.DIGESTS`), replacing the manifest's
    /// `base_url`; `{channel}` is replaced by the channel.
    #[arg(long, value_name = "URL", env = "ARTIFACTS_GEN_OS_IMAGE_BASE", value_parser = parse_os_image_base)]
    pub os_image_base: Option<String>,

    /// Most requests in flight to one host.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// The day recorded for changed pins (default: today, UTC).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub today: Option<time::Date>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

pub use clikit::LogFormat;

/// `HOST=URL` (`--registry`): the host and the base URL, with a trailing `/`.
pub fn parse_registry_override(value: &str) -> Result<(String, Url), String> {
    let (host, url) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: expected HOST=URL"))?;
    let mut url = Url::parse(url).map_err(|e| format!("{value:?}: {e}"))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok((host.to_owned(), url))
}

fn parse_os_image_base(value: &str) -> Result<String, String> {
    let url =
        Url::parse(&value.replace("{channel}", "stable")).map_err(|e| format!("{value:?}: {e}"))?;
    if !url.path().ends_with('/') {
        return Err(format!("{value:?}: the base URL must end with `/`"));
    }
    Ok(value.to_owned())
}

const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

fn parse_date(value: &str) -> Result<time::Date, String> {
    time::Date::parse(value, DATE_FORMAT).map_err(|e| format!("{value:?}: {e}"))
}

const USER_AGENT: &str = concat!("neco-rs-artifacts-gen/", env!("CARGO_PKG_VERSION"));

fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

impl Cli {
    fn mode(&self) -> Mode {
        if self.release {
            Mode::Release
        } else {
            Mode::Default
        }
    }

    fn target(&self) -> PathBuf {
        self.generated_dir.join(self.mode().file_name())
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            registries: self.registries.iter().cloned().collect(),
            github_api: self.github_api.clone().map(|mut url| {
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                url
            }),
            os_feed: self.os_feed.clone(),
            os_image_base: self.os_image_base.clone(),
        }
    }

    fn resolver(&self) -> anyhow::Result<Resolver> {
        let credentials = registry_credentials()?;
        Ok(Resolver {
            http: Http::with_options(HttpOptions {
                per_host: usize::from(self.concurrency),
                user_agent: USER_AGENT.to_owned(),
                ..HttpOptions::default()
            })?,
            endpoints: self.endpoints(),
            credentials,
            github_token: env_secret("GITHUB_TOKEN"),
        })
    }
}

/// The credentials for private images, from `NECO_REGISTRY_USERNAME` and
/// `NECO_REGISTRY_PASSWORD` (both or neither).
pub fn registry_credentials() -> anyhow::Result<Option<Credentials>> {
    match (
        env_secret("NECO_REGISTRY_USERNAME"),
        env_secret("NECO_REGISTRY_PASSWORD"),
    ) {
        (Some(user), Some(password)) => Ok(Some(Credentials {
            username: user.expose().to_owned(),
            password,
        })),
        (None, None) => Ok(None),
        _ => bail!("set both NECO_REGISTRY_USERNAME and NECO_REGISTRY_PASSWORD, or neither"),
    }
}

/// Reads a generated file, treating a broken one as absent (this tool repairs them).
fn load_lenient(path: &Path) -> Option<PinnedSet> {
    match generated::load(path) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!("ignoring the current pins: {e:#}");
            None
        }
    }
}

/// Runs the command; the exit code follows `--help`.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = cli.target();
    if cli.json {
        let set = generated::load(&target)?
            .with_context(|| format!("{} does not exist", target.display()))?;
        println!("{}", serde_json::to_string_pretty(&set)?);
        return Ok(ExitCode::SUCCESS);
    }
    let manifest = Manifest::load(&cli.manifest)?;
    let today = cli
        .today
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
    let current_text = match std::fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", target.display())),
    };
    let current = load_lenient(&target);
    let majors = if cli.release {
        release_majors(&cli.generated_dir, current.as_ref(), &manifest)
    } else {
        BTreeMap::new()
    };
    let rules = RuleBook::new(&manifest, cli.release, &majors, today)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cli.manifest.display()))?;
    let resolver = cli.resolver()?;

    if let Some(name) = &cli.explain {
        return explain(&resolver, &manifest, &rules, name).await;
    }

    let resolved = match resolver.resolve_all(&manifest, &rules).await {
        Ok(resolved) => resolved,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!(
                "{} component(s) could not be resolved; {} is unchanged",
                errors.len(),
                target.display()
            );
        }
    };
    report_expired(&resolved);
    let today_text = today
        .format(DATE_FORMAT)
        .context("cannot format today's date")?;
    let set = resolve::date_pins(
        &resolved,
        current.as_ref(),
        resolver.endpoints.provenance(),
        &today_text,
    );
    let text = generated::render(&set, cli.mode())?;
    let changed = current_text.as_deref() != Some(text.as_str());
    let table = change_table(current.as_ref(), &set);

    if cli.check {
        if !changed {
            println!("{} is up to date", target.display());
            return Ok(ExitCode::SUCCESS);
        }
        print_table(&target, &table);
        return Ok(ExitCode::from(1));
    }
    if cli.dry_run {
        if changed {
            let old = current_text.unwrap_or_default();
            let diff = similar::TextDiff::from_lines(&old, &text);
            let name = target.display().to_string();
            print!("{}", diff.unified_diff().header(&name, &name));
        } else {
            println!("{} is up to date", target.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !changed {
        println!("{} is up to date", target.display());
        return Ok(ExitCode::SUCCESS);
    }
    write_atomically(&target, &text)?;
    print_table(&target, &table);
    Ok(ExitCode::SUCCESS)
}

/// Release mode keeps the major version of each image as pinned in the current release file;
/// an image new to it keeps the major of the development file; one in neither is free.
fn release_majors(
    dir: &Path,
    release: Option<&PinnedSet>,
    manifest: &Manifest,
) -> BTreeMap<String, u64> {
    let mut majors = load_lenient(&dir.join(Mode::Default.file_name()))
        .map(|set| resolve::majors(&set))
        .unwrap_or_default();
    if let Some(release) = release {
        majors.extend(resolve::majors(release));
    }
    for spec in &manifest.image {
        if !majors.contains_key(spec.name()) {
            tracing::info!(
                image = spec.name(),
                "no current pin: release mode does not restrict its major version"
            );
        }
    }
    majors
}

fn report_expired(resolved: &resolve::Resolved) {
    let mut all: Vec<(Kind, &str, &Selection)> = Vec::new();
    all.extend(
        resolved
            .images
            .iter()
            .map(|r| (Kind::Image, r.pin.name.as_str(), &r.selection)),
    );
    all.extend(
        resolved
            .debs
            .iter()
            .map(|r| (Kind::Deb, r.pin.name.as_str(), &r.selection)),
    );
    all.push((
        Kind::Os,
        resolved.os_image.pin.channel.as_str(),
        &resolved.os_image.selection,
    ));
    for (kind, name, selection) in all {
        for entry in &selection.expired {
            eprintln!(
                "warning: {kind} {name}: ignore entry {:?} expired on {} and no longer applies \
                 (reason was: {}); remove it from artifacts.toml or extend `until`",
                entry.version,
                entry.until.map(|d| d.to_string()).unwrap_or_default(),
                entry.reason
            );
        }
    }
}

async fn explain(
    resolver: &Resolver,
    manifest: &Manifest,
    rules: &RuleBook,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let kind = manifest.kind_of(name).with_context(|| {
        format!("no component named {name:?} in the manifest (use an image or deb name, or the OS channel)")
    })?;
    let outcome: Result<(Selection, String), ResolveError> = match kind {
        Kind::Image => {
            let spec = manifest.image.iter().find(|i| i.name() == name);
            match spec {
                Some(spec) => resolver
                    .image(spec, rules.for_component(kind, name))
                    .await
                    .map(|r| (r.selection, format!("{} {}", r.pin.tag, r.pin.digest))),
                None => bail!("no image named {name:?}"),
            }
        }
        Kind::Deb => {
            let spec = manifest.deb.iter().find(|d| d.name == name);
            match spec {
                Some(spec) => resolver
                    .deb(spec, rules.for_component(kind, name))
                    .await
                    .map(|r| {
                        (
                            r.selection,
                            format!("{} {} {}", r.pin.release, r.pin.asset, r.pin.sha256),
                        )
                    }),
                None => bail!("no deb named {name:?}"),
            }
        }
        Kind::Os => {
            let channel = &manifest.os_image.channel;
            resolver
                .os_image(&manifest.os_image, rules.for_component(kind, channel))
                .await
                .map(|r| (r.selection, r.pin.version))
        }
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok((selection, pin)) => {
            print_candidates(&mut out, kind, name, &selection)?;
            writeln!(out, "pin: {pin}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(ResolveError {
            source: SourceError::NoAcceptable { selection, .. },
            ..
        }) => {
            print_candidates(&mut out, kind, name, &selection)?;
            writeln!(out, "no acceptable version: {}", selection.drop_summary())?;
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_candidates(
    out: &mut impl std::io::Write,
    kind: Kind,
    name: &str,
    selection: &Selection,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{kind} {name}: {} candidates, highest first",
        selection.candidates.len()
    )?;
    let width = selection
        .candidates
        .iter()
        .map(|(t, _)| t.len())
        .max()
        .unwrap_or(0);
    for (tag, verdict) in &selection.candidates {
        writeln!(out, "  {tag:<width$}  {verdict}")?;
    }
    for entry in &selection.expired {
        writeln!(
            out,
            "  (ignore entry {:?} expired on {}; it no longer applies)",
            entry.version,
            entry.until.map(|d| d.to_string()).unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `(kind, name, old, new)` for every component whose pin changed.
pub fn change_table(
    old: Option<&PinnedSet>,
    new: &PinnedSet,
) -> Vec<(String, String, String, String)> {
    let before = old.map(PinnedSet::summary).unwrap_or_default();
    let after = new.summary();
    let mut keys: Vec<&(String, String)> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (o, n) = (before.get(key), after.get(key));
            (o != n).then(|| {
                (
                    key.0.clone(),
                    key.1.clone(),
                    o.cloned().unwrap_or_else(|| "-".into()),
                    n.cloned().unwrap_or_else(|| "-".into()),
                )
            })
        })
        .collect()
}

fn print_table(target: &Path, rows: &[(String, String, String, String)]) {
    if rows.is_empty() {
        println!(
            "{}: no pin changed (the file differs only in form or provenance)",
            target.display()
        );
        return;
    }
    println!("{}:", target.display());
    let w =
        |f: fn(&(String, String, String, String)) -> usize| rows.iter().map(f).max().unwrap_or(0);
    let (wk, wn, wo) = (w(|r| r.0.len()), w(|r| r.1.len()), w(|r| r.2.len()));
    for (kind, name, old, new) in rows {
        println!("  {kind:<wk$}  {name:<wn$}  {old:<wo$}  ->  {new}");
    }
}

/// Writes a file so that readers see the old or the new content, never a part.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // A temporary file is private (0600); give the result the usual mode of a source file,
    // or the mode of the file it replaces.
    let permissions = std::fs::metadata(path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().set_permissions(permissions))
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
