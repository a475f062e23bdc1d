//! `cargo xtask bench rollout`: what the lock-step barrier costs, in one process run.
//!
//! N in-process workers (`worker::run::Worker`, each with its own etcd connection, as each boot
//! server has) run updates with no-op steps against a real 3-member etcd (`dctest`), for
//! N = 3, 10 and 30. What is timed is one rollout: from the moment the update request is
//! written to etcd until a watch on `status/` has seen every worker's `completed` status of the
//! final step. With no-op steps this is pure protocol: every worker writes its status for each
//! step and waits until every other worker has written the same step.
//!
//! The workers are set up as `neco setup 0 … N-1` does (`Storage::setup`: servers registered,
//! first request written); that first rollout also starts the workers and is a warm-up, not
//! timed. Each timed rollout then rewrites the request for the same version together with the
//! wipe of every status, in one transaction guarded by a leader key
//! (`Storage::put_reconfigure_request`, what the updater writes when a server joins or leaves),
//! so the workers run the whole update again.
//!
//! The baselines are measured on the same cluster in the same process: one status write
//! (`put`), and one status write until another connection's watch delivers it (put → watch,
//! the least one barrier step can cost). Everything listens on 127.0.0.1. The report is a
//! Markdown table on stdout; progress goes to stderr.

use anyhow::{bail, Context as _};
use dctest::EtcdCluster;
use neco::config::EtcdConfig;
use neco::storage::{StatusEvent, Storage};
use neco::types::{Lrn, NoticeEvent, PendingNotice, UpdateCondition, UpdateRequest, UpdateStatus};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use worker::run::{Exit, RunError, RunSteps, Worker};
use worker::steps::{final_step, Step, StepError};

/// Members of the etcd cluster.
const ETCD_MEMBERS: usize = 3;
/// Workers per measurement.
const SIZES: [u32; 3] = [3, 10, 30];
/// Timed rollouts per size.
const RUNS: usize = 5;
/// Timed operations of each baseline (after as many untimed ones as a warm-up).
const BASELINE_RUNS: usize = 200;
/// The version every worker has installed and every request asks for.
const VERSION: &str = "2026.11.26-1";
/// The goal of the issue: the barrier overhead of one step at the largest size.
const GOAL_PER_STEP: Duration = Duration::from_millis(50);
/// How long one rollout may take before the benchmark gives up.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);
/// Workers are idle between rollouts for this long, as they are between real requests (they
/// have set up their watch for the next request by then).
const SETTLE: Duration = Duration::from_millis(300);
/// The leader key that guards the request writes (as the updater's election key does).
const LEADER_KEY: &str = "leader/updater/bench";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); there is nothing to choose here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!("starting a {ETCD_MEMBERS}-member etcd on 127.0.0.1…");
    // Dropped at the end of `main`, also on error: every member is killed by PID.
    let etcd = EtcdCluster::start(ETCD_MEMBERS).context("cannot start etcd")?;
    let mut table = Table::default();
    runtime.block_on(async {
        let baseline = baselines(&etcd, &mut table).await?;
        for n in SIZES {
            rollouts(&etcd, n, &baseline, &mut table).await?;
        }
        anyhow::Ok(())
    })?;

    println!();
    println!(
        "rollout benchmark: {ETCD_MEMBERS}-member etcd on 127.0.0.1, no-op steps, {} steps per \
         rollout, {RUNS} timed rollouts per size after one warm-up; {} logical CPUs",
        final_step(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!();
    table.print();
    Ok(())
}

/// The steps of the benchmark: each returns at once, so only the protocol is measured.
struct NoSteps;

impl RunSteps for NoSteps {
    async fn run_step(&self, _step: Step, _version: &str) -> Result<(), StepError> {
        Ok(())
    }
}

async fn connect(etcd: &EtcdCluster, prefix: &str) -> anyhow::Result<Storage> {
    Storage::connect(&EtcdConfig::plain(
        etcd.endpoints(),
        prefix.to_owned(),
        Duration::from_secs(5),
    ))
    .await
    .with_context(|| format!("cannot connect to etcd under {prefix}"))
}

fn status(step: u32) -> UpdateStatus {
    UpdateStatus {
        version: VERSION.to_owned(),
        step,
        cond: UpdateCondition::Running,
        message: String::new(),
    }
}

// --- baselines -------------------------------------------------------------------------------

/// The medians the rollouts are compared with.
struct Baseline {
    put: Duration,
    put_watch: Duration,
}

async fn baselines(etcd: &EtcdCluster, table: &mut Table) -> anyhow::Result<Baseline> {
    const PREFIX: &str = "/bench/baseline/";
    let writer = connect(etcd, PREFIX).await?;
    let watcher = connect(etcd, PREFIX).await?;

    eprintln!("baseline: {BASELINE_RUNS} status writes…");
    let mut puts = Vec::with_capacity(BASELINE_RUNS);
    for i in 0..2 * BASELINE_RUNS {
        let step = u32::try_from(i).context("too many runs")?;
        let start = Instant::now();
        // No request exists: revision 0 is the request's.
        writer.put_status(0, &status(step), 0).await?;
        if i >= BASELINE_RUNS {
            puts.push(start.elapsed());
        }
    }

    eprintln!("baseline: {BASELINE_RUNS} status writes seen through another connection's watch…");
    let revision = watcher.snapshot().await?.revision;
    let mut events = watcher.status_events(revision);
    let mut put_watches = Vec::with_capacity(BASELINE_RUNS);
    for i in 0..2 * BASELINE_RUNS {
        let step = u32::try_from(i).context("too many runs")?;
        let written = status(step);
        let start = Instant::now();
        let seen = async {
            loop {
                if let StatusEvent::Status(1, st) = events.next().await? {
                    if st.step == step {
                        return anyhow::Ok(start.elapsed());
                    }
                }
            }
        };
        let (put, seen) = tokio::time::timeout(ROLLOUT_TIMEOUT, async {
            tokio::join!(writer.put_status(1, &written, 0), seen)
        })
        .await
        .context("a status write was not seen by the watch")?;
        put?;
        if i >= BASELINE_RUNS {
            put_watches.push(seen?);
        }
    }

    let put = MinMedian::of(puts)?;
    let put_watch = MinMedian::of(put_watches)?;
    table.row(
        format!("baseline: one status write (put), min / median of {BASELINE_RUNS}"),
        put.to_string(),
        "",
        "",
        "",
    );
    table.row(
        format!(
            "baseline: put → seen by another connection's watch (one etcd round trip), \
             min / median of {BASELINE_RUNS}"
        ),
        put_watch.to_string(),
        format!("{:.1}× put", ratio(put_watch.median, put.median)),
        "",
        "",
    );
    Ok(Baseline {
        put: put.median,
        put_watch: put_watch.median,
    })
}

// --- rollouts --------------------------------------------------------------------------------

/// Running workers; dropping the fleet stops them.
struct Fleet {
    workers: Vec<JoinHandle<Result<Exit, RunError>>>,
}

impl Fleet {
    /// Connects `n` workers, each with its own etcd connection, and runs them.
    async fn start(etcd: &EtcdCluster, prefix: &str, n: u32) -> anyhow::Result<Self> {
        let mut workers = Vec::new();
        for lrn in 0..n {
            let storage = connect(etcd, prefix).await?;
            workers.push(tokio::spawn(async move {
                Worker {
                    storage: &storage,
                    lrn,
                    version: VERSION.to_owned(),
                    steps: NoSteps,
                }
                .run()
                .await
            }));
        }
        Ok(Self { workers })
    }

    /// Why workers stopped (they never should).
    async fn ended(&mut self) -> Vec<String> {
        let mut ended = Vec::new();
        for (lrn, worker) in self.workers.iter_mut().enumerate() {
            if worker.is_finished() {
                let why = match worker.await {
                    Ok(Ok(exit)) => format!("{exit:?}"),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                ended.push(format!("worker {lrn} ended: {why}"));
            }
        }
        ended
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

/// Writes a request with `write` and waits until every server in `servers` has completed the
/// final step; returns the time from the write to the last completion seen.
async fn rollout<T>(
    admin: &Storage,
    fleet: &mut Fleet,
    servers: &[Lrn],
    write: impl std::future::Future<Output = Result<T, neco::storage::StorageError>>,
) -> anyhow::Result<Duration> {
    let revision = admin.snapshot().await?.revision;
    let mut events = admin.status_events(revision);
    let start = Instant::now();
    let wait = async {
        write.await?;
        let mut done = BTreeSet::new();
        while done.len() < servers.len() {
            if let StatusEvent::Status(lrn, st) = events.next().await? {
                if st.version != VERSION {
                    continue;
                }
                match st.cond {
                    UpdateCondition::Completed if st.step == final_step() => {
                        done.insert(lrn);
                    }
                    UpdateCondition::Aborted => bail!(
                        "boot server {lrn} aborted the update at step {}: {}",
                        st.step,
                        st.message
                    ),
                    _ => {}
                }
            }
        }
        Ok(start.elapsed())
    };
    match tokio::time::timeout(ROLLOUT_TIMEOUT, wait).await {
        Ok(result) => result,
        Err(_) => bail!(
            "the rollout did not complete within {ROLLOUT_TIMEOUT:?}; {:?}",
            fleet.ended().await
        ),
    }
}

async fn rollouts(
    etcd: &EtcdCluster,
    n: u32,
    baseline: &Baseline,
    table: &mut Table,
) -> anyhow::Result<()> {
    let prefix = format!("/bench/rollout-{n}/");
    let admin = connect(etcd, &prefix).await?;
    let servers: Vec<Lrn> = (0..n).collect();
    eprintln!("{n} workers: connecting and starting…");
    let mut fleet = Fleet::start(etcd, &prefix, n).await?;
    tokio::time::sleep(SETTLE).await;

    // `neco setup 0 … n-1`: registers the servers and writes the first request.
    let warm_up = rollout(
        &admin,
        &mut fleet,
        &servers,
        admin.setup(&servers, VERSION, time::OffsetDateTime::now_utc()),
    )
    .await
    .context("the first rollout (neco setup)")?;
    eprintln!(
        "{n} workers: first rollout after setup (warm-up) {}",
        ms(warm_up)
    );

    let leader = admin.key(LEADER_KEY);
    admin
        .client()
        .put(leader.as_bytes(), "", None)
        .await
        .context("cannot write the leader key")?;
    let mut totals = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        tokio::time::sleep(SETTLE).await;
        let request = UpdateRequest {
            version: VERSION.to_owned(),
            servers: servers.clone(),
            stop: false,
            started_at: time::OffsetDateTime::now_utc(),
        };
        // The begin notice the updater records with it (no updater runs to send it).
        let notice = PendingNotice {
            event: NoticeEvent::Begin,
            text: "start boot servers reconfiguration.".into(),
            request: request.clone(),
        };
        let took = rollout(
            &admin,
            &mut fleet,
            &servers,
            admin.put_reconfigure_request(&request, &notice, &leader),
        )
        .await
        .with_context(|| format!("rollout {run} of {n} workers"))?;
        eprintln!("{n} workers: rollout {run}/{RUNS} {}", ms(took));
        totals.push(took);
    }
    drop(fleet);

    let steps = final_step();
    let total = MinMedian::of(totals)?;
    let per_step = total.div(steps);
    let per_worker = per_step.div(n);
    let writes = n * (steps + 1) + 1;
    table.row(
        format!(
            "{n} workers: rollout of {steps} steps ({writes} etcd writes), min / median of {RUNS}"
        ),
        total.to_string(),
        format!("{:.0}× put→watch", ratio(total.median, baseline.put_watch)),
        "",
        "",
    );
    let (goal, met_goal) = if n == SIZES[SIZES.len() - 1] {
        (
            format!("median ≤ {} ms", GOAL_PER_STEP.as_millis()),
            met(per_step.median <= GOAL_PER_STEP).to_owned(),
        )
    } else {
        (String::new(), String::new())
    };
    table.row(
        format!("{n} workers: barrier overhead per step (rollout / {steps})"),
        per_step.to_string(),
        format!(
            "{:.1} put→watch round trips, {:.1}× put",
            ratio(per_step.median, baseline.put_watch),
            ratio(per_step.median, baseline.put)
        ),
        goal,
        met_goal,
    );
    table.row(
        format!("{n} workers: per step per worker (rollout / {steps} / {n})"),
        per_worker.to_string(),
        format!(
            "{:.2}× put→watch",
            ratio(per_worker.median, baseline.put_watch)
        ),
        "",
        "",
    );
    Ok(())
}

// --- the report ------------------------------------------------------------------------------

/// The minimum and the median of some timings.
#[derive(Debug, Clone, Copy)]
struct MinMedian {
    min: Duration,
    median: Duration,
}

impl MinMedian {
    fn of(mut times: Vec<Duration>) -> anyhow::Result<Self> {
        times.sort_unstable();
        match (times.first(), times.get(times.len() / 2)) {
            (Some(&min), Some(&median)) => Ok(Self { min, median }),
            _ => bail!("nothing was measured"),
        }
    }

    fn div(self, n: u32) -> Self {
        Self {
            min: self.min / n.max(1),
            median: self.median / n.max(1),
        }
    }
}

impl std::fmt::Display for MinMedian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", ms(self.min), ms(self.median))
    }
}

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

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
