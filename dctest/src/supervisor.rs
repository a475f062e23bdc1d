//! A process supervisor for the daemons of the simulated boot servers, like systemd's
//! `Restart=always`: the command is started again after every exit (after a short delay,
//! systemd's `RestartSec=`), each exit is recorded with its code, and stdout and stderr of every
//! run are appended to one log file. [`Supervisor::stop`] (also on drop, so also when the test
//! panics) kills the running process by its PID and starts nothing again.
//!
//! The command is rebuilt for every start from what the given [`Command`] holds (program,
//! arguments, environment changes, working directory), so a binary that was replaced on disk
//! (`dpkg -i` of a new release) is the one that runs after the next exit.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// systemd's `RestartSec=` of the supervised daemons, shortened for tests.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(200);
/// How often the monitor looks at a running child (a stop or kill request wakes it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One finished run of the supervised command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The PID the run had.
    pub pid: u32,
    /// The exit code, `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Whether the supervisor killed it ([`Supervisor::kill`] or [`Supervisor::stop`]).
    pub killed: bool,
    /// How long the run lasted.
    pub ran_for: Duration,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "pid {} exited with code {code}", self.pid)?,
            (None, Some(signal)) => write!(f, "pid {} was killed by signal {signal}", self.pid)?,
            (None, None) => write!(f, "pid {} ended", self.pid)?,
        }
        if self.killed {
            f.write_str(" (killed by the supervisor)")?;
        }
        Ok(())
    }
}

/// What the supervisor starts, captured from a [`Command`] so it can be rebuilt for every run.
#[derive(Debug, Clone)]
struct Spec {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
}

impl Spec {
    fn capture(command: &Command) -> Self {
        Self {
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
            current_dir: command.get_current_dir().map(Path::to_path_buf),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
    }

    fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Default)]
struct State {
    /// PID of the running child.
    running: Option<u32>,
    /// How many times the command was started.
    starts: u32,
    exits: Vec<Exit>,
    /// Spawn errors, in order (the command is tried again after the restart delay).
    spawn_errors: Vec<String>,
    /// Set by `stop`: kill the child and start nothing again.
    stopping: bool,
    /// Set by `kill`: kill the running child (it is restarted as after any exit).
    kill_requested: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits on the condition variable for at most `timeout`.
    fn wait<'a>(&self, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

/// A supervised command. Dropping it stops the command (kills the process by PID).
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    command_line: String,
    log_path: PathBuf,
    shared: Arc<Shared>,
    monitor: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts `command` under supervision with [`DEFAULT_RESTART_DELAY`]; its stdout and stderr
    /// are appended to `log_path` (created with its directory when missing). Stdin is null.
    pub fn start(name: impl Into<String>, command: &Command, log_path: &Path) -> Result<Self> {
        Self::start_with_delay(name, command, log_path, DEFAULT_RESTART_DELAY)
    }

    /// Like [`Self::start`], with another delay between an exit and the next start.
    pub fn start_with_delay(
        name: impl Into<String>,
        command: &Command,
        log_path: &Path,
        restart_delay: Duration,
    ) -> Result<Self> {
        let name = name.into();
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let spec = Spec::capture(command);
        let shared = Arc::new(Shared::default());
        let mut monitor = Monitor {
            name: name.clone(),
            spec: spec.clone(),
            log,
            restart_delay,
            shared: Arc::clone(&shared),
        };
        // The first start happens here, so that a command that cannot be spawned at all is an
        // error of `start` instead of an endless retry.
        let first = monitor.spawn()?;
        let handle = std::thread::Builder::new()
            .name(format!("supervise {name}"))
            .spawn(move || monitor.run(first))
            .map_err(Error::io(format!(
                "starting the supervisor thread of {name}"
            )))?;
        Ok(Self {
            name,
            command_line: spec.display(),
            log_path: log_path.to_owned(),
            shared,
            monitor: Some(handle),
        })
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The log file holding the output of every run (and a line per start and exit).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (empty when it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The PID of the running process, `None` between runs and after [`Self::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().running
    }

    /// How many times the command was started.
    pub fn starts(&self) -> u32 {
        self.shared.lock().starts
    }

    /// How many times the command was started again after an exit.
    pub fn restarts(&self) -> u32 {
        self.starts().saturating_sub(1)
    }

    /// Every finished run, oldest first.
    pub fn exits(&self) -> Vec<Exit> {
        self.shared.lock().exits.clone()
    }

    /// The exit codes of the finished runs, oldest first (`None`: ended by a signal).
    pub fn exit_codes(&self) -> Vec<Option<i32>> {
        self.shared.lock().exits.iter().map(|e| e.code).collect()
    }

    /// Errors of starts that failed after the first one (the command is tried again).
    pub fn spawn_errors(&self) -> Vec<String> {
        self.shared.lock().spawn_errors.clone()
    }

    /// Whether [`Self::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().stopping
    }

    /// Kills the running process (SIGKILL, by PID) as a crash would end it; the supervisor
    /// starts it again after the restart delay. Returns the killed PID, `None` when no process
    /// was running. Returns once the kill is recorded in [`Self::exits`].
    pub fn kill(&self) -> Result<Option<u32>> {
        let mut state = self.shared.lock();
        if state.stopping {
            return Ok(None);
        }
        let Some(pid) = state.running else {
            return Ok(None);
        };
        let recorded = state.exits.len();
        state.kill_requested = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.exits.len() == recorded {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("killing {} (pid {pid})", self.name),
                    timeout: Duration::from_secs(10),
                    last_error: "the process was not reaped".into(),
                });
            }
            state = self.shared.wait(state, deadline - now);
        }
        Ok(Some(pid))
    }

    /// Waits until the command was started at least `starts` times and is running.
    pub fn wait_for_start(&self, starts: u32, timeout: Duration) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let (true, Some(pid)) = (state.starts >= starts, state.running) {
                return Ok(pid);
            }
            let now = Instant::now();
            if state.stopping || now >= deadline {
                return Err(Error::Timeout {
                    what: format!("start #{starts} of {}", self.name),
                    timeout,
                    last_error: format!("started {} times, exits: {:?}", state.starts, state.exits),
                });
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// Kills the running process by its PID and starts nothing again. Idempotent; also done on
    /// drop.
    pub fn stop(&mut self) -> Result<()> {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            self.shared.changed.notify_all();
        }
        if let Some(handle) = self.monitor.take() {
            handle.join().map_err(|_| Error::Server {
                name: self.name.clone(),
                message: "the supervisor thread panicked".into(),
            })?;
        }
        Ok(())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("dctest: stopping {}: {e}", self.name);
        }
    }
}

/// The thread that owns the child: starts, watches, records, restarts.
struct Monitor {
    name: String,
    spec: Spec,
    log: File,
    restart_delay: Duration,
    shared: Arc<Shared>,
}

impl Monitor {
    /// Starts one run and records it.
    fn spawn(&mut self) -> Result<(Child, Instant)> {
        let stdout = self
            .log
            .try_clone()
            .map_err(Error::io(format!("duplicating the log of {}", self.name)))?;
        let stderr = self
            .log
            .try_clone()
            .map_err(Error::io(format!("duplicating the log of {}", self.name)))?;
        let child = self
            .spec
            .command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(Error::io(format!(
                "spawn {} ({})",
                self.name,
                self.spec.display()
            )))?;
        let pid = child.id();
        let starts = {
            let mut state = self.shared.lock();
            state.running = Some(pid);
            state.starts += 1;
            self.shared.changed.notify_all();
            state.starts
        };
        self.note(&format!("started pid {pid} (start #{starts})"));
        Ok((child, Instant::now()))
    }

    /// A line of the supervisor itself in the log.
    fn note(&mut self, message: &str) {
        // The log is best effort: a full disk must not stop the supervision.
        let _ = writeln!(self.log, "dctest supervisor [{}]: {message}", self.name);
    }

    fn run(mut self, first: (Child, Instant)) {
        let mut current = Some(first);
        loop {
            if let Some((child, started)) = current.take() {
                let exit = self.watch(child, started);
                self.note(&exit.to_string());
                let mut state = self.shared.lock();
                state.running = None;
                state.exits.push(exit);
                self.shared.changed.notify_all();
            }
            // RestartSec: wait, unless stopped meanwhile.
            let deadline = Instant::now() + self.restart_delay;
            {
                let mut state = self.shared.lock();
                loop {
                    if state.stopping {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = self.shared.wait(state, deadline - now);
                }
            }
            match self.spawn() {
                Ok(run) => current = Some(run),
                Err(e) => {
                    let message = e.to_string();
                    self.note(&format!("cannot start: {message}"));
                    self.shared.lock().spawn_errors.push(message);
                }
            }
        }
    }

    /// Waits until the child exits or the supervisor is asked to kill it.
    fn watch(&mut self, mut child: Child, started: Instant) -> Exit {
        let pid = child.id();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return exit_of(pid, status, false, started),
                Ok(None) => {}
                Err(e) => self.note(&format!("cannot check pid {pid}: {e}")),
            }
            let kill = {
                let mut state = self.shared.lock();
                if !(state.stopping || state.kill_requested) {
                    state = self.shared.wait(state, POLL_INTERVAL);
                }
                let kill = state.stopping || state.kill_requested;
                state.kill_requested = false;
                kill
            };
            if kill {
                // The child is not reaped before `wait`, so its PID cannot have been reused.
                if let Err(e) = child.kill() {
                    self.note(&format!("kill pid {pid}: {e}"));
                }
                return match child.wait() {
                    Ok(status) => exit_of(pid, status, true, started),
                    Err(e) => {
                        self.note(&format!("wait for pid {pid}: {e}"));
                        Exit {
                            pid,
                            code: None,
                            signal: None,
                            killed: true,
                            ran_for: started.elapsed(),
                        }
                    }
                };
            }
        }
    }
}

fn exit_of(pid: u32, status: ExitStatus, killed: bool, started: Instant) -> Exit {
    Exit {
        pid,
        code: status.code(),
        signal: status.signal(),
        killed,
        ran_for: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        command
    }

    fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn restarts_after_every_exit_and_records_the_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("logs/exit10.log");
        let started = Instant::now();
        let mut sup = Supervisor::start("exit10", &sh("echo run; exit 10"), &log).expect("start");
        wait_for("three exits", Duration::from_secs(10), || {
            sup.exits().len() >= 3
        });
        // RestartSec: two restarts took at least two delays.
        assert!(started.elapsed() >= 2 * DEFAULT_RESTART_DELAY);
        sup.stop().expect("stop");
        let exits = sup.exits();
        assert!(
            exits.iter().all(|e| e.code == Some(10) && !e.killed),
            "{exits:?}"
        );
        assert_eq!(sup.starts() as usize, exits.len(), "{exits:?}");
        assert_eq!(sup.restarts(), sup.starts() - 1);
        assert_eq!(sup.pid(), None);
        let text = sup.log();
        assert!(text.matches("run\n").count() >= 3, "{text}");
        assert!(text.contains("exited with code 10"), "{text}");
    }

    #[test]
    fn exit_codes_of_successive_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = dir.path().join("runs");
        // Exits 10 the first time (a self-update), then runs until killed.
        let script = format!(
            "if [ -e {c} ]; then echo second; exec sleep 60; else touch {c}; echo first >&2; exit 10; fi",
            c = counter.display()
        );
        let log = dir.path().join("selfupdate.log");
        let mut sup =
            Supervisor::start_with_delay("selfupdate", &sh(&script), &log, Duration::ZERO)
                .expect("start");
        let pid = sup
            .wait_for_start(2, Duration::from_secs(10))
            .expect("restarted");
        assert_eq!(sup.exit_codes(), vec![Some(10)]);
        assert_eq!(sup.restarts(), 1);
        // The second run has started; let it write before it is stopped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sup.log().contains("second\n") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        sup.stop().expect("stop");
        assert!(gone(pid), "pid {pid} still exists");
        let exits = sup.exits();
        assert_eq!(exits.len(), 2, "{exits:?}");
        assert!(exits[1].killed && exits[1].signal == Some(9), "{exits:?}");
        let text = sup.log();
        // stdout and stderr both go to the log.
        assert!(
            text.contains("first\n") && text.contains("second\n"),
            "{text}"
        );
    }

    #[test]
    fn kill_is_a_crash_and_the_process_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        let mut sup = Supervisor::start("sleep", &sh("exec sleep 60"), &log).expect("start");
        let first = sup
            .wait_for_start(1, Duration::from_secs(5))
            .expect("running");
        assert_eq!(sup.kill().expect("kill"), Some(first));
        assert!(gone(first));
        let second = sup
            .wait_for_start(2, Duration::from_secs(5))
            .expect("restarted");
        assert_ne!(first, second);
        let exits = sup.exits();
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!((exits[0].code, exits[0].signal), (None, Some(9)));
        assert!(exits[0].killed);
        sup.stop().expect("stop");
        assert!(gone(second));
        assert!(sup.is_stopped());
        // Nothing is started after a stop.
        std::thread::sleep(3 * DEFAULT_RESTART_DELAY);
        assert_eq!(sup.starts(), 2);
        assert_eq!(sup.kill().expect("kill after stop"), None);
        sup.stop().expect("stop is idempotent");
    }

    #[test]
    fn stop_interrupts_the_restart_delay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("slow.log");
        let mut sup =
            Supervisor::start_with_delay("slow", &sh("exit 3"), &log, Duration::from_secs(60))
                .expect("start");
        wait_for("the first exit", Duration::from_secs(5), || {
            !sup.exits().is_empty()
        });
        let asked = Instant::now();
        sup.stop().expect("stop");
        assert!(asked.elapsed() < Duration::from_secs(5));
        assert_eq!(sup.exit_codes(), vec![Some(3)]);
        assert_eq!(sup.starts(), 1);
    }

    #[test]
    fn drop_kills_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start("sleep", &sh("exec sleep 60"), &dir.path().join("log"))
            .expect("start");
        let pid = sup
            .wait_for_start(1, Duration::from_secs(5))
            .expect("running");
        drop(sup);
        assert!(gone(pid));
    }

    #[test]
    fn a_panicking_owner_kills_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let (tx, rx) = std::sync::mpsc::channel();
        let outcome = std::thread::spawn(move || {
            let sup = Supervisor::start("sleep", &sh("exec sleep 60"), &log).expect("start");
            let pid = sup
                .wait_for_start(1, Duration::from_secs(5))
                .expect("running");
            tx.send(pid).expect("send");
            panic!("a failing test (expected panic)");
        })
        .join();
        assert!(outcome.is_err());
        let pid = rx.recv().expect("pid");
        assert!(gone(pid));
    }

    #[test]
    fn the_environment_and_directory_are_kept_for_every_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = sh("echo \"$DCTEST_SUPERVISOR_VALUE $(pwd)\"; exit 1");
        command
            .env("DCTEST_SUPERVISOR_VALUE", "kept")
            .current_dir(dir.path());
        let mut sup = Supervisor::start_with_delay(
            "env",
            &command,
            &dir.path().join("env.log"),
            Duration::ZERO,
        )
        .expect("start");
        wait_for("two exits", Duration::from_secs(5), || {
            sup.exits().len() >= 2
        });
        sup.stop().expect("stop");
        let expected = format!("kept {}\n", dir.path().display());
        assert!(sup.log().matches(&expected).count() >= 2, "{}", sup.log());
    }

    #[test]
    fn a_command_that_cannot_start_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Supervisor::start(
            "missing",
            &Command::new("/nonexistent/dctest-binary"),
            &dir.path().join("log"),
        )
        .expect_err("no such program");
        assert!(
            err.to_string().contains("/nonexistent/dctest-binary"),
            "{err}"
        );
    }
}
