//! Machines: Debian systems booted with systemd as PID 1 by `systemd-nspawn`, each from its own
//! copy-on-write layer over one cached root file system, each in its own network namespace
//! on the private [`Lan`].
//!
//! - [`BaseImage`]: the root file system (bookworm, systemd, podman, etcd and what the neco
//!   package depends on), built once by `mmdebstrap` and cached under
//!   `target/dctest/rootfs/<key>`, the key being a hash of its package list and set-up;
//! - [`Machine`]: an overlayfs layer over the base image, booted by `systemd-nspawn`
//!   (`--register=no --keep-unit`: the host's PID 1 need not be systemd and nothing is
//!   registered with the host), commands run inside with `nsenter` into the machine's PID 1,
//!   units and journals read with `systemctl` and `journalctl`, faults injected for real
//!   (power off, SIGKILL of the machine, `systemctl kill` of a unit, a cut link).
//!
//! On drop a machine is killed (SIGKILL to its PID 1, which ends every process in it;
//! `systemd-nspawn` then exits by itself, or is killed), its overlay is unmounted and its layer removed, and its namespace deleted; also when the test
//! panics. [`sweep_leftovers`] removes what a test process killed with SIGKILL left behind.
//! Nothing here writes to the host's `/etc`, touches its services or its interfaces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::network::{Lan, NetNs};
use crate::process::{output_with_timeout, run_ok, ChildGuard};
use crate::util::{tail, write_text as write_file};
use crate::{Error, Result};

/// The Debian release of the machines (the host's).
pub const SUITE: &str = "bookworm";
/// The packages of the base image besides `mmdebstrap --variant=apt`'s: systemd as PID 1,
/// podman for the services of the pins, Debian's etcd for the members on the boot servers,
/// and what the neco package depends on.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "podman",
    "etcd-server",
    "etcd-client",
    "libgcc-s1",
];
/// Files written into the base image after mmdebstrap, with their contents: podman runs
/// without cgroups of its own (crun cannot create them inside systemd-nspawn) and without a
/// session keyring per container (systemd-nspawn's seccomp filter refuses keyctl), on the vfs
/// storage driver (overlay on overlayfs is refused); the journal stays in memory; nothing
/// tries to reach the internet on a timer; etcd starts only on the machines that configure it.
const BASE_FILES: &[(&str, &str)] = &[
    (
        "etc/containers/containers.conf",
        "# dctest machines: crun cannot create cgroups inside systemd-nspawn, and its seccomp\n\
         # filter refuses the session keyring crun would create for each container.\n\
         [containers]\ncgroups = \"disabled\"\nkeyring = false\n",
    ),
    (
        "etc/containers/storage.conf",
        "# dctest machines: the root is an overlayfs, on which podman's overlay driver refuses\n\
         # to run.\n[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\n\
         graphroot = \"/var/lib/containers/storage\"\n",
    ),
    (
        "etc/systemd/journald.conf.d/dctest.conf",
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n",
    ),
];
/// Units masked in the base image (symlinks to /dev/null): timers that would try the
/// internet, podman's boot-time units, which nothing here uses, the gate of interactive
/// logins (nobody logs into these machines; commands enter them with nsenter), and the
/// remount of the root by `/etc/fstab` (the fixture mounts the root: an overlay, read-write,
/// and there is no fstab to apply). Two of them failed once each under load, degrading the
/// boot: "Permit User Sessions" on a cold CI host (stop 14), and "Remount Root and Kernel
/// File Systems" during a full `cargo xtask ci` (2026-12-03, no journal entries).
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "podman-auto-update.timer",
    "podman-auto-update.service",
    "podman-restart.service",
    "systemd-user-sessions.service",
    "systemd-remount-fs.service",
];
/// Units the base image does not start at boot (the data center enables them where needed).
const DISABLED_UNITS: &[&str] = &["etcd.service"];
/// Bumped whenever the set-up above changes in a way the key would not see.
const BASE_REVISION: u32 = 1;
/// How long mmdebstrap may take (about 20 to 40 s with a warm network).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a machine may take to boot (`systemctl is-system-running --wait`).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long systemd-nspawn may take to start the machine's systemd.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a machine may take to halt after SIGTERM before it is killed.
const HALT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long systemd-nspawn may take to exit after its machine's PID 1 was killed.
const NSPAWN_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command in a machine may run unless the caller says otherwise.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The PATH of commands run in a machine.
const MACHINE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Every directory of machine layers starts with this, followed by the test's PID.
const LAYER_DIR_PREFIX: &str = "dctest-machines-";

/// The cached root file system every machine boots from.
#[derive(Debug, Clone)]
pub struct BaseImage {
    root: PathBuf,
}

impl BaseImage {
    /// The cached image of [`BASE_PACKAGES`], built first when it is missing. Concurrent
    /// callers (tests of several processes) wait for one build under a file lock.
    pub fn ensure() -> Result<Self> {
        let cache = crate::util::target_dir().join("dctest/rootfs");
        std::fs::create_dir_all(&cache)
            .map_err(Error::io(format!("create {}", cache.display())))?;
        let lock_path = cache.join("lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(Error::io(format!("create {}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                context: format!("lock {}", lock_path.display()),
                source: e.into(),
            }
        })?;
        let key = Self::key();
        let dir = cache.join(&key);
        let image = Self {
            root: dir.join("root"),
        };
        if dir.join("complete").is_file() {
            return Ok(image);
        }
        // Earlier images (other keys) and interrupted builds are removed: the cache holds one.
        if let Ok(entries) = std::fs::read_dir(&cache) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    eprintln!(
                        "dctest: removing the old root file system {}",
                        path.display()
                    );
                    std::fs::remove_dir_all(&path)
                        .map_err(Error::io(format!("remove {}", path.display())))?;
                }
            }
        }
        let started = Instant::now();
        eprintln!(
            "dctest: building the machines' root file system ({SUITE}: {}) in {}",
            BASE_PACKAGES.join(", "),
            dir.display()
        );
        let building = cache.join(format!("{key}.building"));
        let root = building.join("root");
        std::fs::create_dir_all(&building)
            .map_err(Error::io(format!("create {}", building.display())))?;
        let mut mmdebstrap = Command::new("mmdebstrap");
        mmdebstrap
            .args(["--variant=apt", "--quiet", "--mode=root"])
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&root);
        run_ok(&mut mmdebstrap, BUILD_TIMEOUT)?;
        Self::customize(&root)?;
        std::fs::write(building.join("packages"), Self::description())
            .map_err(Error::io(format!("write {}", building.display())))?;
        std::fs::rename(&building, &dir).map_err(Error::io(format!(
            "rename {} to {}",
            building.display(),
            dir.display()
        )))?;
        std::fs::write(dir.join("complete"), "")
            .map_err(Error::io(format!("write {}/complete", dir.display())))?;
        eprintln!(
            "dctest: root file system built in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(image)
    }

    /// The root directory (the lower layer of every machine; never written to).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the image is made of, one item a line; its hash is the cache key.
    fn description() -> String {
        let mut text = format!("suite {SUITE}\nrevision {BASE_REVISION}\n");
        for package in BASE_PACKAGES {
            let _ = writeln!(text, "package {package}");
        }
        for (path, content) in BASE_FILES {
            let _ = writeln!(text, "file {path} {content:?}");
        }
        for unit in MASKED_UNITS {
            let _ = writeln!(text, "masked {unit}");
        }
        for unit in DISABLED_UNITS {
            let _ = writeln!(text, "disabled {unit}");
        }
        text
    }

    fn key() -> String {
        let digest = hex::encode(Sha256::digest(Self::description().as_bytes()));
        format!("{SUITE}-{}", &digest[..16])
    }

    fn customize(root: &Path) -> Result<()> {
        for (path, content) in BASE_FILES {
            write_file(&root.join(path), content)?;
        }
        let units = root.join("etc/systemd/system");
        for unit in MASKED_UNITS {
            let link = units.join(unit);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/dev/null", &link)
                .map_err(Error::io(format!("mask {}", link.display())))?;
        }
        for unit in DISABLED_UNITS {
            run_ok(
                Command::new("systemctl")
                    .arg(format!("--root={}", root.display()))
                    .args(["disable", unit]),
                Duration::from_secs(30),
            )?;
        }
        Ok(())
    }
}

/// The state of a unit, as `systemctl show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: active, inactive, failed, activating, deactivating.
    pub active: String,
    /// `SubState`: running, exited, dead, auto-restart, ….
    pub sub: String,
    /// `Result`: success, exit-code, signal, ….
    pub result: String,
    /// `NRestarts`: automatic restarts since the unit was last started by a person or a job.
    pub restarts: u32,
    /// `MainPID` (0 when none).
    pub main_pid: u32,
    /// `ExecMainStatus`: the exit status of the last main process.
    pub exit_status: i32,
}

impl UnitState {
    /// Parses `systemctl show -p …` output (`Key=value` lines).
    pub fn parse(text: &str) -> Self {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let text = |key: &str| fields.get(key).copied().unwrap_or("").to_owned();
        let number = |key: &str| fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            active: text("ActiveState"),
            sub: text("SubState"),
            result: text("Result"),
            restarts: number("NRestarts"),
            main_pid: number("MainPID"),
            exit_status: fields
                .get("ExecMainStatus")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }

    /// Whether the unit is active and running.
    pub fn is_running(&self) -> bool {
        self.active == "active" && self.sub == "running"
    }
}

/// One machine: its layer, its namespace and, while it runs, its `systemd-nspawn`.
#[derive(Debug)]
pub struct Machine {
    name: String,
    index: u8,
    dir: PathBuf,
    root: PathBuf,
    mounted: bool,
    nspawn: Option<ChildGuard>,
    leader: Option<u32>,
    // Dropped last: the namespace outlives the machine in it.
    netns: NetNs,
}

impl Machine {
    /// Creates machine `index` named `name` (its hostname) under `dir`: an overlay of `base`
    /// mounted at `<dir>/<name>/root` and a namespace attached to `lan`. It is not booted:
    /// write its configuration with [`Machine::write_file`], then [`Machine::boot`].
    pub fn create(base: &BaseImage, lan: &Lan, dir: &Path, name: &str, index: u8) -> Result<Self> {
        let dir = dir.join(name);
        let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &root] {
            std::fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        let netns = lan.attach(index)?;
        let mut machine = Self {
            name: name.to_owned(),
            index,
            dir,
            root,
            mounted: false,
            nspawn: None,
            leader: None,
            netns,
        };
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    base.root().display(),
                    upper.display(),
                    work.display()
                ))
                .arg(&machine.root),
            Duration::from_secs(10),
        )?;
        machine.mounted = true;
        machine.write_file("etc/hostname", &format!("{name}\n"))?;
        Ok(machine)
    }

    /// Its name (hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its index on the network.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Its address on the private network.
    pub fn address(&self) -> std::net::Ipv4Addr {
        Lan::machine_address(self.index)
    }

    /// Its root directory as the host sees it (the mounted overlay).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The host's PID of the machine's PID 1 (systemd), while it runs.
    pub fn leader(&self) -> Option<u32> {
        self.leader
    }

    /// The file that receives the machine's console.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Writes a file into the machine's root (`path` relative to `/`), creating directories.
    pub fn write_file(&self, path: &str, content: &str) -> Result<()> {
        write_file(&self.root.join(path.trim_start_matches('/')), content)
    }

    /// Boots the machine (again, after a power-off) and waits until systemd reports the boot
    /// finished and every unit started (`running`). A `degraded` system is an error naming the
    /// failed units.
    pub fn boot(&mut self) -> Result<()> {
        self.start()?;
        self.wait_running(BOOT_TIMEOUT)
    }

    /// Starts `systemd-nspawn` and returns once the machine's PID 1 exists, without waiting
    /// for its boot to finish (see [`Machine::wait_running`]): machines whose units wait for
    /// each other (etcd members) are started together.
    pub fn start(&mut self) -> Result<()> {
        if self.nspawn.as_mut().is_some_and(ChildGuard::is_running) {
            return Err(Error::InvalidArgument(format!(
                "machine {} is running already",
                self.name
            )));
        }
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_path())
            .map_err(Error::io(format!("open {}", self.console_path().display())))?;
        let console_err = console
            .try_clone()
            .map_err(Error::io("duplicate the console file"))?;
        let mut command = Command::new("systemd-nspawn");
        command
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
                "--console=read-only",
            ])
            .arg(format!("--machine={}", self.name))
            .arg(format!("--directory={}", self.root.display()))
            .arg(format!(
                "--network-namespace-path={}",
                self.netns.path().display()
            ))
            .arg("--boot")
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(console_err));
        let mut nspawn = ChildGuard::spawn(format!("systemd-nspawn {}", self.name), &mut command)?;
        let deadline = Instant::now() + INIT_TIMEOUT;
        let leader = loop {
            if let Some(pid) = machine_init_of(nspawn.pid()) {
                break pid;
            }
            if let Some(status) = nspawn.try_wait()? {
                return Err(Error::ProcessExited {
                    name: format!("systemd-nspawn {}", self.name),
                    status: status.to_string(),
                    output: tail_of_file(&self.console_path(), 20),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the PID 1 of machine {}", self.name),
                    timeout: INIT_TIMEOUT,
                    last_error: tail_of_file(&self.console_path(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.nspawn = Some(nspawn);
        self.leader = Some(leader);
        Ok(())
    }

    /// Waits until `systemctl is-system-running` says `running`. Before systemd's manager is
    /// up it says `offline` (or cannot be asked); that is retried until `timeout`.
    pub fn wait_running(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let state = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let output = self.exec_with_timeout(
                &["systemctl", "is-system-running", "--wait"],
                left + Duration::from_secs(1),
            )?;
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return Ok(()),
                "" | "offline" | "initializing" | "starting" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    break (
                        state,
                        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    )
                }
            }
        };
        Err(Error::InvalidArgument(format!(
            "machine {} booted into state {:?}{}; {}",
            self.name,
            state.0,
            if state.1.is_empty() {
                String::new()
            } else {
                format!(" ({})", state.1)
            },
            self.boot_diagnostics()
        )))
    }

    /// What tells why a boot did not reach `running`: the failed units with the end of their
    /// journals, the mount of the root, and the end of the console.
    fn boot_diagnostics(&self) -> String {
        let failed = self
            .exec(&["systemctl", "--failed", "--no-legend", "--plain"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut text = format!("failed units: [{failed}]");
        for unit in failed.lines().filter_map(|l| l.split_whitespace().next()) {
            let journal = self
                .exec(&["journalctl", "--no-pager", "-n", "15", "-u", unit])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            let _ = write!(text, "\n--- journal of {unit}:\n{journal}");
        }
        let mount = self
            .exec(&[
                "findmnt",
                "--noheadings",
                "--output",
                "SOURCE,FSTYPE,OPTIONS",
                "/",
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = write!(
            text,
            "\n--- root mount: {mount}\n--- console ({}):\n{}",
            self.console_path().display(),
            tail_of_file(&self.console_path(), 30)
        );
        text
    }

    /// Whether its `systemd-nspawn` runs.
    pub fn is_running(&mut self) -> bool {
        self.nspawn.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// A command that runs `args` inside the machine (all its namespaces, a clean
    /// environment). Fails when the machine is not running.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Command> {
        let leader = self.leader.ok_or_else(|| {
            Error::InvalidArgument(format!("machine {} is not running", self.name))
        })?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={leader}"))
            .args(["--all", "--", "env", "-i"])
            .arg(format!("PATH={MACHINE_PATH}"))
            .args(["LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER="])
            .args(args);
        Ok(command)
    }

    /// Runs `args` in the machine with [`EXEC_TIMEOUT`], whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        self.exec_with_timeout(args, EXEC_TIMEOUT)
    }

    /// Runs `args` in the machine, killed after `timeout`, whatever its exit status.
    pub fn exec_with_timeout<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        output_with_timeout(&mut self.command(args)?, timeout)
    }

    /// Runs `args` in the machine; a non-zero exit is an error naming the machine and
    /// carrying stderr. Returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let output = self.exec(args)?;
        if !output.status.success() {
            let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            return Err(Error::ProcessExited {
                name: format!("`{}` on machine {}", shown.join(" "), self.name),
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
                .trim()
                .to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The state of `unit`.
    pub fn unit_state(&self, unit: &str) -> Result<UnitState> {
        let text = self.exec_ok(&[
            "systemctl",
            "show",
            "--property=ActiveState,SubState,Result,NRestarts,MainPID,ExecMainStatus",
            unit,
        ])?;
        Ok(UnitState::parse(&text))
    }

    /// The journal of `unit` (systemd's own messages about it included), oldest first, with
    /// precise timestamps.
    pub fn journal(&self, unit: &str) -> Result<String> {
        self.exec_ok(&[
            "journalctl",
            "--no-pager",
            "--output=short-precise",
            "--unit",
            unit,
        ])
    }

    /// The whole journal of the machine since boot.
    pub fn full_journal(&self) -> Result<String> {
        self.exec_ok(&["journalctl", "--no-pager", "--output=short-precise"])
    }

    /// Sends `signal` (e.g. `SIGKILL`) to the main process of `unit` (`systemctl kill
    /// --kill-who=main`): a daemon that dies, which systemd then handles as its unit says.
    /// (Inside systemd-nspawn, signalling a whole control group fails with "Input/output
    /// error" from `cgroup.kill`, so every process of a unit cannot be signalled at once.)
    pub fn kill_unit(&self, unit: &str, signal: &str) -> Result<()> {
        self.exec_ok(&[
            "systemctl",
            "kill",
            "--kill-who=main",
            "--signal",
            signal,
            unit,
        ])
        .map(drop)
    }

    /// The memory its processes use: the sum of their proportional set sizes (`Pss` of
    /// `/proc/PID/smaps_rollup`) over every process in its PID namespace, in bytes.
    pub fn memory(&self) -> Result<u64> {
        let leader = self.leader.ok_or_else(|| {
            Error::InvalidArgument(format!("machine {} is not running", self.name))
        })?;
        let namespace = std::fs::read_link(format!("/proc/{leader}/ns/pid")).map_err(Error::io(
            format!("read the PID namespace of {}", self.name),
        ))?;
        let mut total = 0;
        let entries = std::fs::read_dir("/proc").map_err(Error::io("read /proc"))?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes come and go: one that ended meanwhile counts nothing.
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != Some(namespace.clone()) {
                continue;
            }
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            total += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        Ok(total)
    }

    /// Powers the machine off: SIGTERM to `systemd-nspawn`, which halts it cleanly (units
    /// stopped), waiting up to 20 s before SIGKILL. Its layer stays: [`Machine::boot`] starts
    /// it again.
    pub fn power_off(&mut self) -> Result<()> {
        if let Some(mut nspawn) = self.nspawn.take() {
            nspawn.terminate(HALT_TIMEOUT)?;
        }
        self.leader = None;
        Ok(())
    }

    /// Kills the machine at once (SIGKILL to `systemd-nspawn`): every process in it dies
    /// without a chance to stop cleanly, as on a power cut.
    ///
    /// The machine's PID 1 is killed too: systemd-nspawn's death alone does not end it (it is
    /// reparented and the machine runs on, out of reach). Killing the init of a PID namespace
    /// ends every process in it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(leader) = self.leader.take() {
            let pid = rustix::process::Pid::from_raw(i32::try_from(leader).unwrap_or(0));
            if let Some(pid) = pid {
                // ESRCH: it ended already.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(mut nspawn) = self.nspawn.take() {
            // Its container gone, systemd-nspawn exits by itself and removes what it set up.
            if nspawn.wait_timeout(NSPAWN_EXIT_TIMEOUT)?.is_none() {
                nspawn.kill()?;
            }
        }
        Ok(())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Killed, not halted: a clean halt proves nothing at the end of a test and takes
        // seconds (etcd waits for its peers before it stops).
        if let Err(e) = self.kill() {
            eprintln!("dctest: killing machine {}: {e}", self.name);
        }
        if self.mounted {
            if let Err(e) = unmount(&self.root) {
                eprintln!("dctest: {e}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("dctest: removing {}: {e}", self.dir.display());
        }
    }
}

/// A directory for the layers of the machines of one test, named after the test's PID so
/// that [`sweep_leftovers`] recognizes it; removed on drop (after the machines).
pub fn layers_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{LAYER_DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(Error::io("create the directory of the machines' layers"))
}

/// Removes what the machine fixtures of test processes that no longer exist left behind (a
/// test killed with SIGKILL cannot clean up): their `systemd-nspawn` processes, overlay
/// mounts and network namespaces (names starting `dct<pid>-`).
pub fn sweep_leftovers() {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    // systemd-nspawn processes whose --directory lies in a dead test's layers.
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first().is_some_and(|a| a.ends_with("systemd-nspawn")) {
                continue;
            }
            let owner = args.iter().find_map(|a| layer_owner(a));
            if owner.is_some_and(|o| dead(&o)) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    eprintln!("dctest: killing a left-over systemd-nspawn ({pid:?})");
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
    // Overlay mounts in a dead test's layers.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines() {
            let Some(point) = line.split(' ').nth(4) else {
                continue;
            };
            if layer_owner(point).is_some_and(|o| dead(&o)) {
                eprintln!("dctest: unmounting a left-over {point}");
                let _ = unmount(Path::new(point));
            }
        }
    }
    // Network namespaces of dead tests.
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("dct")
                .and_then(|rest| rest.split('-').next());
            if owner.is_some_and(dead) {
                eprintln!("dctest: deleting a left-over network namespace {name}");
                let _ = run_ok(
                    Command::new("ip").args(["netns", "delete", &name]),
                    Duration::from_secs(10),
                );
            }
        }
    }
}

/// The PID in a path inside a layers directory (`…/dctest-machines-<pid>-…/…`).
fn layer_owner(text: &str) -> Option<String> {
    let rest = &text[text.find(LAYER_DIR_PREFIX)? + LAYER_DIR_PREFIX.len()..];
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!pid.is_empty()).then_some(pid)
}

/// Unmounts `path`, lazily when it is busy.
fn unmount(path: &Path) -> Result<()> {
    let timeout = Duration::from_secs(20);
    if run_ok(Command::new("umount").arg(path), timeout).is_ok() {
        return Ok(());
    }
    run_ok(Command::new("umount").arg("--lazy").arg(path), timeout).map(drop)
}

/// The machine's PID 1 under `nspawn`, once it runs systemd: a descendant that is PID 1 of
/// its own PID namespace (`NSpid` ends in 1) and whose program is systemd. systemd-nspawn's
/// first child is an intermediate process that sets up the mounts and exits; the PID 1 exists
/// before it execs systemd, with its namespaces still being set up.
fn machine_init_of(nspawn: u32) -> Option<u32> {
    let mut pending = vec![nspawn];
    while let Some(parent) = pending.pop() {
        let Ok(children) =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if is_systemd_init(pid) {
                return Some(pid);
            }
            pending.push(pid);
        }
    }
    None
}

/// Whether `pid` is PID 1 of its own PID namespace and runs systemd.
fn is_systemd_init(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let pid_one = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        });
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    pid_one && comm.trim() == "systemd"
}

/// The last `lines` lines of a file (empty when it cannot be read).
fn tail_of_file(path: &Path, lines: usize) -> String {
    tail(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_state_parses_systemctl_show() {
        let state = UnitState::parse(
            "ActiveState=active\nSubState=running\nResult=success\nNRestarts=2\nMainPID=42\nExecMainStatus=0\n",
        );
        assert!(state.is_running());
        assert_eq!(state.restarts, 2);
        assert_eq!(state.main_pid, 42);
        let failed = UnitState::parse(
            "ActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=2\n",
        );
        assert!(!failed.is_running());
        assert_eq!(failed.exit_status, 2);
    }

    #[test]
    fn layer_owners() {
        assert_eq!(
            layer_owner("--directory=/tmp/dctest-machines-4242-abc/boot-0/root").as_deref(),
            Some("4242")
        );
        assert_eq!(layer_owner("/tmp/other/root"), None);
    }

    #[test]
    fn the_key_follows_the_package_list() {
        assert!(BaseImage::description().contains("package podman\n"));
        assert_eq!(BaseImage::key(), BaseImage::key());
        assert!(BaseImage::key().starts_with("bookworm-"));
    }
}
