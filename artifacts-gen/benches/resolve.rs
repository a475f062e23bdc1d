//! `cargo xtask bench resolve`: how artifacts-gen scales, in one process run.
//!
//! 1. Resolution of 40 repositories × 600 tags on the registry stand-in (6 pages of 100 tags
//!    per repository, 25 ms added to every request): concurrent with the CLI's default
//!    per-host limit, sequential (limit 1), and against the ideal bound.
//! 2. `policy::select` on 100,000 tags, against parsing them and against sorting them.
//! 3. Peak memory (VmHWM) of this process.
//! 4. The same 40 repositories on Debian's real `docker-registry`: artifacts-gen against
//!    `skopeo list-tags` run once per repository, as a shell script would.
//!
//! Only images are resolved, with [`Resolver::image`] for every `[[image]]` at once under
//! `join_all` — exactly what `resolve_all` does for images — so no GitHub or feed stand-in is
//! needed. Everything listens on 127.0.0.1. The report is a Markdown table on stdout; progress
//! goes to stderr.

use anyhow::{ensure, Context as _};
use artifacts::version::TagVersion;
use artifacts_gen::cli::Cli;
use artifacts_gen::generated::PinnedImage;
use artifacts_gen::manifest::{Kind, Manifest};
use artifacts_gen::policy::{select, Offer, Policy, Rules};
use artifacts_gen::resolve::{Endpoints, Resolution, Resolver, RuleBook};
use clap::Parser as _;
use dctest::{Registry, RegistryStandIn, RegistryStandInConfig};
use fetch::http::{Http, RetryPolicy};
use reqwest::Url;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Repositories resolved.
const REPOS: usize = 40;
/// Tags of each repository.
const TAGS_PER_REPO: usize = 600;
/// The stand-in's page size when the client does not ask for one.
const PAGE_SIZE: usize = 100;
/// Added by the stand-in to every request.
const LATENCY: Duration = Duration::from_millis(25);
/// The registry host of the benchmark's `artifacts.toml`.
const HOST: &str = "bench.local";
/// The tag every repository resolves to: the highest release (`1.19.9.1-rc.*` is higher but a
/// pre-release).
const EXPECTED_TAG: &str = "1.19.8.3";
/// Tags given to `select`.
const SELECT_TAGS: usize = 100_000;
/// Timed runs of each selection measurement.
const SELECT_RUNS: usize = 10;
/// A per-host limit that is measured too when the CLI's default is another one.
const ALTERNATIVE_LIMIT: usize = 16;
/// Threads seeding the real registry.
const SEED_THREADS: usize = 4;
/// Where Debian installs skopeo.
const SKOPEO: &str = "/usr/bin/skopeo";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); there is nothing to choose here.
    let hwm_start = vm_hwm_kib()?;
    let mut table = Table::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let default_limit = usize::from(
        Cli::try_parse_from(["artifacts-gen"])
            .context("cannot read the CLI defaults")?
            .concurrency,
    );
    let bench = Bench::new()?;

    resolution_scale(&runtime, &bench, default_limit, &mut table)?;
    selection(&mut table)?;
    let hwm_runs = vm_hwm_kib()?;
    table.row("peak RSS (VmHWM) at start", kib(hwm_start), "", "", "");
    table.row(
        "peak RSS (VmHWM) after resolution and selection",
        kib(hwm_runs),
        format!("{:.1}× start", ratio_u64(hwm_runs, hwm_start)),
        "",
        "",
    );
    real_registry(&runtime, &bench, default_limit, &mut table)?;

    println!();
    println!(
        "resolve benchmark: {REPOS} repositories × {TAGS_PER_REPO} tags, page size {PAGE_SIZE}, \
         latency {} ms per request; CLI default --concurrency {default_limit}",
        LATENCY.as_millis()
    );
    println!();
    table.print();
    Ok(())
}

/// The benchmark's `artifacts.toml`, its rules and the tags of every repository.
struct Bench {
    manifest: Manifest,
    rules: RuleBook,
    tags: Vec<String>,
}

impl Bench {
    fn new() -> anyhow::Result<Self> {
        let mut text = String::new();
        for i in 0..REPOS {
            text.push_str(&format!(
                "[[image]]\nrepository = \"{HOST}/{}\"\n\n",
                repo_path(i)
            ));
        }
        // Never fetched: only images are resolved.
        text.push_str(
            "[os_image]\nchannel = \"stable\"\nfeed = \"http://127.0.0.1:9/feed.json\"\nbase_url = \"http://127.0.0.1:9/{channel}/\"\n",
        );
        let manifest = Manifest::parse(Path::new("bench/artifacts.toml"), &text)?;
        let today = time::OffsetDateTime::now_utc().date();
        let rules = RuleBook::new(&manifest, false, &BTreeMap::new(), today)
            .map_err(|e| anyhow::anyhow!("bench/artifacts.toml: {e}"))?;
        let tags = repo_tags();
        ensure!(
            tags.len() == TAGS_PER_REPO,
            "generated {} tags, not {TAGS_PER_REPO}",
            tags.len()
        );
        Ok(Self {
            manifest,
            rules,
            tags,
        })
    }

    /// A resolver reaching [`HOST`] at `base` with `limit` requests in flight per host.
    fn resolver(base: &str, limit: usize) -> anyhow::Result<Resolver> {
        let base = Url::parse(base).with_context(|| format!("bad base URL {base:?}"))?;
        Ok(Resolver {
            http: Http::new(limit, RetryPolicy::default())?,
            endpoints: Endpoints {
                registries: BTreeMap::from([(HOST.to_owned(), base)]),
                ..Endpoints::upstream()
            },
            credentials: None,
            github_token: None,
        })
    }

    /// Resolves every image at once, as `resolve_all` does; fails on the first error.
    async fn resolve_images(
        &self,
        resolver: &Resolver,
    ) -> anyhow::Result<Vec<Resolution<PinnedImage>>> {
        let results =
            futures::future::join_all(self.manifest.image.iter().map(|spec| {
                resolver.image(spec, self.rules.for_component(Kind::Image, spec.name()))
            }))
            .await;
        Ok(results.into_iter().collect::<Result<Vec<_>, _>>()?)
    }

    /// Resolves every image and checks each pin: the expected tag, and the digest `digest`
    /// gives for the repository path.
    fn resolve_checked(
        &self,
        runtime: &tokio::runtime::Runtime,
        resolver: &Resolver,
        digest: impl Fn(&str) -> String,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let resolved = runtime.block_on(self.resolve_images(resolver))?;
        let elapsed = start.elapsed();
        ensure!(
            resolved.len() == REPOS,
            "resolved {} images",
            resolved.len()
        );
        for resolution in &resolved {
            let pin = &resolution.pin;
            let path = pin
                .repository
                .strip_prefix(&format!("{HOST}/"))
                .with_context(|| format!("unexpected repository {}", pin.repository))?;
            ensure!(
                pin.tag == EXPECTED_TAG,
                "{}: chose {}, expected {EXPECTED_TAG}",
                pin.repository,
                pin.tag
            );
            ensure!(
                pin.digest == digest(path),
                "{}: digest {} is not the registry's",
                pin.repository,
                pin.digest
            );
            ensure!(
                resolution.selection.candidates.len() == TAGS_PER_REPO,
                "{}: {} candidates, expected {TAGS_PER_REPO}",
                pin.repository,
                resolution.selection.candidates.len()
            );
        }
        Ok(elapsed)
    }
}

fn repo_path(i: usize) -> String {
    format!("r/img-{i:02}")
}

/// 600 tags as a real image has them: 540 releases `1.<minor>.<patch>.<build>`, 22 moving
/// tags (`1.<minor>`, `1`, `latest`) and 38 pre-releases `1.<minor>.9.1-rc.<n>`.
fn repo_tags() -> Vec<String> {
    let mut tags = Vec::with_capacity(TAGS_PER_REPO);
    for minor in 0..20 {
        for patch in 0..9 {
            for build in 1..=3 {
                tags.push(format!("1.{minor}.{patch}.{build}"));
            }
        }
        tags.push(format!("1.{minor}"));
        if minor > 0 {
            tags.extend((1..=2).map(|n| format!("1.{minor}.9.1-rc.{n}")));
        }
    }
    tags.push("1".to_owned());
    tags.push("latest".to_owned());
    tags
}

// --- 1. resolution scale ------------------------------------------------------------------

/// One resolution run on a fresh stand-in (so its peak concurrency is this run's).
struct StandInRun {
    elapsed: Duration,
    requests: u64,
    max_in_flight: usize,
}

fn standin_run(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    limit: usize,
) -> anyhow::Result<StandInRun> {
    let config = (0..REPOS)
        .fold(RegistryStandInConfig::new(), |config, i| {
            config.repo(&repo_path(i), bench.tags.iter().cloned())
        })
        .default_page_size(Some(PAGE_SIZE))
        .latency(LATENCY);
    let standin = RegistryStandIn::start(config)?;
    let resolver = Bench::resolver(&standin.base_url(), limit)?;
    eprintln!("resolving {REPOS} images on the stand-in with limit {limit}…");
    let elapsed = bench.resolve_checked(runtime, &resolver, |path| {
        RegistryStandIn::manifest_digest_for(path, EXPECTED_TAG)
    })?;
    Ok(StandInRun {
        elapsed,
        requests: standin.requests(),
        max_in_flight: standin.max_in_flight(),
    })
}

fn resolution_scale(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    default_limit: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    let pages = TAGS_PER_REPO.div_ceil(PAGE_SIZE);
    let ideal = |limit: usize, per_repo: usize| {
        LATENCY * u32::try_from(REPOS.div_ceil(limit) * per_repo).unwrap_or(u32::MAX)
    };
    let concurrent = standin_run(runtime, bench, default_limit)?;
    let sequential = standin_run(runtime, bench, 1)?;
    let what = |run: &StandInRun, limit: usize| {
        format!(
            "resolve {REPOS}×{TAGS_PER_REPO} tags, limit {limit} ({} requests, max in flight {})",
            run.requests, run.max_in_flight
        )
    };
    table.row(
        what(&concurrent, default_limit),
        secs(concurrent.elapsed),
        "",
        "",
        "",
    );
    table.row(what(&sequential, 1), secs(sequential.elapsed), "", "", "");
    for (per_repo, note) in [
        (pages, "pages, the issue's formula"),
        (pages + 1, "pages + manifest HEAD"),
    ] {
        let bound = ideal(default_limit, per_repo);
        let r = ratio(concurrent.elapsed, bound);
        table.row(
            format!(
                "ideal ⌈{REPOS}/{default_limit}⌉ × {per_repo} requests × {} ms ({note})",
                LATENCY.as_millis()
            ),
            secs(bound),
            format!("concurrent {r:.2}× ideal"),
            "≤ 1.5×",
            met(r <= 1.5),
        );
    }
    let speedup = ratio(sequential.elapsed, concurrent.elapsed);
    table.row(
        format!("speed-up of limit {default_limit} over limit 1"),
        "",
        format!("{speedup:.2}×"),
        "≥ 8×",
        met(speedup >= 8.0),
    );
    table.row(
        format!("max in flight at limit {default_limit} / at limit 1"),
        format!(
            "{} / {}",
            concurrent.max_in_flight, sequential.max_in_flight
        ),
        "",
        "≤ limit",
        met(concurrent.max_in_flight <= default_limit && sequential.max_in_flight <= 1),
    );
    if default_limit != ALTERNATIVE_LIMIT {
        let alternative = standin_run(runtime, bench, ALTERNATIVE_LIMIT)?;
        let speedup = ratio(sequential.elapsed, alternative.elapsed);
        let r = ratio(alternative.elapsed, ideal(ALTERNATIVE_LIMIT, pages + 1));
        table.row(
            what(&alternative, ALTERNATIVE_LIMIT),
            secs(alternative.elapsed),
            format!("{speedup:.2}× limit 1; {r:.2}× ideal (pages + HEAD)"),
            "≥ 8×, ≤ 1.5×",
            met(speedup >= 8.0 && r <= 1.5 && alternative.max_in_flight <= ALTERNATIVE_LIMIT),
        );
    }
    Ok(())
}

// --- 2. selection -------------------------------------------------------------------------

/// 100,000 tags in a scrambled order: 2% moving tags, 3% pre-releases, the rest releases of
/// majors 1 to 4.
fn selection_tags() -> Vec<String> {
    (0..SELECT_TAGS)
        // 7919 is prime and does not divide 100,000: a permutation of the indices.
        .map(|i| (i * 7_919) % SELECT_TAGS)
        .map(|i| {
            let (major, minor, patch, build) =
                (1 + i / 25_000, (i / 250) % 100, (i / 10) % 25, i % 10 + 1);
            match i % 100 {
                0 | 1 => format!("{major}.{minor}"),
                2..=4 => format!("{major}.{minor}.{patch}.{build}-rc.{}", i % 7),
                _ => format!("{major}.{minor}.{patch}.{build}"),
            }
        })
        .collect()
}

/// Minimum and median of `runs` timings of `measure`, which times its own critical part.
fn min_median(runs: usize, mut measure: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs).map(|_| measure()).collect();
    times.sort_unstable();
    (times[0], times[times.len() / 2])
}

fn selection(table: &mut Table) -> anyhow::Result<()> {
    eprintln!("selecting among {SELECT_TAGS} tags…");
    let tags = selection_tags();
    let rules = Rules {
        policy: Policy {
            versions: Some(semver::VersionReq::parse(">=1.0.0, <4.0.0")?),
            ..Policy::default()
        },
        ..Rules::default()
    };
    let chosen = select(tags.iter().cloned().map(Offer::new).collect(), &rules).chosen;
    ensure!(
        chosen.as_deref() == Some("3.99.24.10"),
        "select chose {chosen:?}"
    );

    let (select_min, select_median) = min_median(SELECT_RUNS, || {
        let offers: Vec<Offer> = tags.iter().cloned().map(Offer::new).collect();
        let start = Instant::now();
        let selection = black_box(select(black_box(offers), &rules));
        let elapsed = start.elapsed();
        drop(selection);
        elapsed
    });
    let (parse_min, parse_median) = min_median(SELECT_RUNS, || {
        let start = Instant::now();
        let parsed: Vec<TagVersion> = black_box(&tags)
            .iter()
            .filter_map(|t| TagVersion::parse(t).ok())
            .collect();
        let elapsed = start.elapsed();
        drop(black_box(parsed));
        elapsed
    });
    let (sort_min, sort_median) = min_median(SELECT_RUNS, || {
        let mut copy = tags.clone();
        let start = Instant::now();
        black_box(&mut copy).sort_unstable();
        start.elapsed()
    });
    let min_med = |min: Duration, median: Duration| format!("{} / {}", ms(min), ms(median));
    table.row(
        format!("select() on {SELECT_TAGS} tags, min / median of {SELECT_RUNS}"),
        min_med(select_min, select_median),
        format!(
            "{:.1}× parse, {:.1}× sort (medians)",
            ratio(select_median, parse_median),
            ratio(select_median, sort_median)
        ),
        "median < 50 ms",
        met(select_median < Duration::from_millis(50)),
    );
    table.row(
        format!("baseline: TagVersion::parse of {SELECT_TAGS} tags"),
        min_med(parse_min, parse_median),
        "",
        "",
        "",
    );
    table.row(
        format!("baseline: sort {SELECT_TAGS} tag strings"),
        min_med(sort_min, sort_median),
        "",
        "",
        "",
    );
    Ok(())
}

// --- 3. memory ----------------------------------------------------------------------------

/// The peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .context("no VmHWM line in /proc/self/status")
}

// --- 4. the real registry -----------------------------------------------------------------

fn real_registry(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    default_limit: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    let registry = match Registry::start() {
        Ok(registry) => registry,
        Err(e @ dctest::Error::MissingProgram { .. }) => {
            table.row(
                format!("real registry: skipped ({e}); install it with `sudo apt-get install -y docker-registry`"),
                "",
                "",
                "",
                "",
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };

    eprintln!("seeding docker-registry with {REPOS} × {TAGS_PER_REPO} tags…");
    let start = Instant::now();
    let pushed = seed(&registry, &bench.tags)?;
    let seeding = start.elapsed();
    table.row(
        format!(
            "seed docker-registry: {REPOS}×{TAGS_PER_REPO} tags, {SEED_THREADS} threads (setup, not compared)"
        ),
        secs(seeding),
        "",
        "",
        "",
    );

    let resolver = Bench::resolver(&registry.base_url(), default_limit)?;
    let digest = |path: &str| pushed.get(path).cloned().unwrap_or_default();
    eprintln!("resolving {REPOS} images on docker-registry…");
    // The first pass warms the registry's caches for both contenders.
    bench.resolve_checked(runtime, &resolver, digest)?;
    let ours = bench.resolve_checked(runtime, &resolver, digest)?;
    table.row(
        format!(
            "docker-registry: artifacts-gen, {REPOS} images at once, limit {default_limit} (tags + HEAD + select)"
        ),
        secs(ours),
        "",
        "",
        "",
    );

    if !Path::new(SKOPEO).is_file() {
        table.row(
            format!(
                "docker-registry: skopeo comparison skipped: {SKOPEO} is not installed \
                 (`sudo apt-get install -y --no-install-recommends skopeo`)"
            ),
            "",
            "",
            "",
            "",
        );
        return Ok(());
    }
    eprintln!("listing {REPOS} repositories with skopeo, one after the other…");
    let start = Instant::now();
    for i in 0..REPOS {
        skopeo_list_tags(&registry.host(), &repo_path(i))?;
    }
    let skopeo = start.elapsed();
    table.row(
        format!("docker-registry: skopeo list-tags × {REPOS}, sequential (tags only)"),
        secs(skopeo),
        format!("{:.1}× artifacts-gen", ratio(skopeo, ours)),
        "",
        "",
    );
    Ok(())
}

/// Pushes the tags to every repository; returns repository path → manifest digest.
fn seed(registry: &Registry, tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let paths: Vec<String> = (0..REPOS).map(repo_path).collect();
    let chunk = paths.len().div_ceil(SEED_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|paths| {
                scope.spawn(move || {
                    paths
                        .iter()
                        .map(|path| {
                            let image = registry.push_tags(path, tags)?;
                            Ok((path.clone(), image.manifest_digest))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut pushed = BTreeMap::new();
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a seeding thread panicked"))??;
            pushed.extend(done);
        }
        Ok(pushed)
    })
}

/// `skopeo list-tags` of one repository; checks it lists every tag.
fn skopeo_list_tags(host: &str, path: &str) -> anyhow::Result<()> {
    let reference = format!("docker://{host}/{path}");
    let output = Command::new(SKOPEO)
        .args(["list-tags", "--tls-verify=false", &reference])
        .output()
        .with_context(|| format!("cannot run {SKOPEO}"))?;
    ensure!(
        output.status.success(),
        "skopeo list-tags {reference}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("skopeo list-tags {reference}: output is not JSON"))?;
    let count = listed["Tags"].as_array().map_or(0, Vec::len);
    ensure!(
        count == TAGS_PER_REPO,
        "skopeo list-tags {reference}: {count} tags, expected {TAGS_PER_REPO}"
    );
    Ok(())
}

// --- the report ---------------------------------------------------------------------------

/// The rows of the report: what, time, ratio, goal, met?
#[derive(Default)]
struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn row(
        &mut self,
        what: impl Into<String>,
        time: impl Into<String>,
        ratio: impl Into<String>,
        goal: impl Into<String>,
        met: impl Into<String>,
    ) {
        self.rows.push([
            what.into(),
            time.into(),
            ratio.into(),
            goal.into(),
            met.into(),
        ]);
    }

    /// Prints a Markdown table with aligned columns.
    fn print(&self) {
        print!(
            "{}",
            clikit::markdown_table(["what", "time", "ratio", "goal", "met?"], &self.rows)
        );
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn ratio_u64(a: u64, b: u64) -> f64 {
    // Memory sizes in KiB: far below 2^52, exact as f64.
    a as f64 / b.max(1) as f64
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn kib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
