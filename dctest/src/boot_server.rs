//! A boot server of the virtual data center: a [`Machine`] with neco's configuration, an etcd
//! member on servers 0, 1 and 2 (Debian's `etcd.service`, as in neco), the neco package
//! installed by plain `dpkg -i`, and its daemons run by systemd from the package's own units.
//!
//! [`Daemon`] reads one of those units the way an operator would: its state, its journal, how
//! often systemd started it and how each run ended.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::datacenter::installed_version;
use crate::error::{Error, Result};
use crate::machine::{BaseImage, Machine, UnitState};
use crate::network::Lan;

/// The etcd client port on the boot servers.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// The etcd peer port on the boot servers.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The unit of `neco-updater` (the package's).
pub const UPDATER_UNIT: &str = "neco-updater.service";
/// The unit of `neco-worker` (the package's).
pub const WORKER_UNIT: &str = "neco-worker.service";
/// Debian's unit of the etcd member.
pub const ETCD_UNIT: &str = "etcd.service";
/// Where the package under test is copied inside a machine before `dpkg -i`.
const PACKAGE_DIR: &str = "var/cache/dctest";
/// How long `dpkg -i` of the neco package may take (postinst starts both daemons).
const DPKG_TIMEOUT: Duration = Duration::from_secs(120);

/// The name of boot server `lrn`'s machine (its hostname and etcd member name).
pub fn machine_name(lrn: u32) -> String {
    format!("boot-{lrn}")
}

/// The address of boot server `lrn` on the private network.
pub fn address(lrn: u32) -> Result<Ipv4Addr> {
    Ok(Lan::machine_address(index(lrn)?))
}

/// The etcd client URL of the member on boot server `lrn`.
pub fn etcd_endpoint(lrn: u32) -> Result<String> {
    Ok(format!("http://{}:{ETCD_CLIENT_PORT}", address(lrn)?))
}

fn index(lrn: u32) -> Result<u8> {
    u8::try_from(lrn)
        .ok()
        .filter(|i| *i < 200)
        .ok_or_else(|| Error::InvalidArgument(format!("boot server {lrn}: LRN out of range")))
}

/// What a boot server is set up with before it boots.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `/etc/neco/config.toml`.
    pub config_toml: String,
    /// The etcd members (`lrn`s) of the cluster, when this server runs one of them.
    pub etcd_members: Option<Vec<u32>>,
    /// `neco-updater --session-ttl`, through a drop-in of the package's unit.
    pub session_ttl: Duration,
}

/// One boot server.
#[derive(Debug)]
pub struct BootServer {
    lrn: u32,
    machine: Machine,
}

impl BootServer {
    /// Creates the machine of boot server `lrn` and writes its configuration (not booted).
    pub fn create(
        base: &BaseImage,
        lan: &Lan,
        dir: &Path,
        lrn: u32,
        setup: &Setup,
    ) -> Result<Self> {
        let machine = Machine::create(base, lan, dir, &machine_name(lrn), index(lrn)?)?;
        machine.write_file("etc/neco/config.toml", &setup.config_toml)?;
        machine.write_file("etc/neco/rack", &format!("{lrn}\n"))?;
        // An operator's drop-in: the leadership lease short enough for the tests, JSON logs.
        machine.write_file(
            "etc/systemd/system/neco-updater.service.d/dctest.conf",
            &format!(
                "[Service]\nExecStart=\nExecStart=/usr/sbin/neco-updater --session-ttl {}ms \
                 --log-format json\n",
                setup.session_ttl.as_millis()
            ),
        )?;
        machine.write_file(
            "etc/systemd/system/neco-worker.service.d/dctest.conf",
            "[Service]\nExecStart=\nExecStart=/usr/sbin/neco-worker --log-format json\n",
        )?;
        if let Some(members) = &setup.etcd_members {
            machine.write_file("etc/default/etcd", &etcd_defaults(lrn, members)?)?;
            let wants = machine
                .root()
                .join("etc/systemd/system/multi-user.target.wants");
            std::fs::create_dir_all(&wants)
                .map_err(Error::io(format!("create {}", wants.display())))?;
            let link = wants.join(ETCD_UNIT);
            if !link.exists() {
                std::os::unix::fs::symlink(format!("/lib/systemd/system/{ETCD_UNIT}"), &link)
                    .map_err(Error::io(format!("create {}", link.display())))?;
            }
        }
        Ok(Self { lrn, machine })
    }

    /// Installs `deb` with plain `dpkg -i` inside the running machine: the package's postinst
    /// enables and starts both daemons through systemd.
    pub fn install(&self, deb: &Path) -> Result<()> {
        let name = deb
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::InvalidArgument(format!("{}: no file name", deb.display())))?;
        let target = self.machine.root().join(PACKAGE_DIR).join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("create {}", parent.display())))?;
        }
        std::fs::copy(deb, &target).map_err(Error::io(format!(
            "copy {} to {}",
            deb.display(),
            target.display()
        )))?;
        let inside = format!("/{PACKAGE_DIR}/{name}");
        let output = self
            .machine
            .exec_with_timeout(&["dpkg", "-i", &inside], DPKG_TIMEOUT)?;
        if !output.status.success() {
            return Err(Error::ProcessExited {
                name: format!("dpkg -i {inside} on {}", self.machine.name()),
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(())
    }

    /// The server's LRN (its `/etc/neco/rack`).
    pub fn lrn(&self) -> u32 {
        self.lrn
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The machine, to power it off or kill it.
    pub fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// Its root directory as the host sees it.
    pub fn root(&self) -> &Path {
        self.machine.root()
    }

    /// `neco-updater`.
    pub fn updater(&self) -> Daemon<'_> {
        self.unit(UPDATER_UNIT)
    }

    /// `neco-worker`.
    pub fn worker(&self) -> Daemon<'_> {
        self.unit(WORKER_UNIT)
    }

    /// Any unit of the machine (a service of step 3, etcd).
    pub fn unit(&self, unit: &str) -> Daemon<'_> {
        Daemon {
            server: self,
            unit: unit.to_owned(),
        }
    }

    /// The installed version of `package` in the machine's dpkg database.
    pub fn installed_version(&self, package: &str) -> Result<Option<String>> {
        installed_version(self.machine.root(), package)
    }

    /// The unit files under `/etc/systemd/system` (step 3 writes them), by name.
    pub fn unit_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.machine.root().join("etc/systemd/system");
        let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("read {}", dir.display())))?
            .flatten()
            // Regular files only: aliases and enablement links are symlinks.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "service"))
            .collect();
        units.sort();
        Ok(units)
    }

    /// Both daemons' journals, each under a header.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for daemon in [self.updater(), self.worker()] {
            out.push_str(&format!(
                "===== {} =====\n{}\n",
                daemon.name(),
                daemon.journal()
            ));
        }
        out
    }
}

/// How one run of a unit's main process ended, from systemd's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
}

/// One daemon of a boot server: a unit of its systemd.
#[derive(Debug, Clone)]
pub struct Daemon<'a> {
    server: &'a BootServer,
    unit: String,
}

impl Daemon<'_> {
    /// `boot-N neco-worker.service`.
    pub fn name(&self) -> String {
        format!("{} {}", self.server.machine.name(), self.unit)
    }

    /// The unit's name.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// The unit's state.
    pub fn state(&self) -> Result<UnitState> {
        self.server.machine.unit_state(&self.unit)
    }

    /// The PID of its main process inside the machine, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.state().ok().map(|s| s.main_pid).filter(|p| *p != 0)
    }

    /// The unit's journal (the daemon's own lines and systemd's about it), message text only;
    /// empty when the machine cannot be asked.
    pub fn journal(&self) -> String {
        self.server
            .machine
            .exec_ok(&[
                "journalctl",
                "--no-pager",
                "--output=cat",
                "--unit",
                &self.unit,
            ])
            .unwrap_or_default()
    }

    /// How often systemd started it (`Started <unit>` in the journal).
    pub fn starts(&self) -> u32 {
        count_starts(&self.journal(), &self.unit)
    }

    /// How its runs ended, oldest first: systemd's `Main process exited` lines, and a clean
    /// stop (`Deactivated successfully`) after a run that logged none.
    pub fn exits(&self) -> Vec<Exit> {
        parse_exits(&self.journal(), &self.unit)
    }

    /// Waits until systemd started it at least `starts` times and it runs; returns its main
    /// PID.
    pub fn wait_for_start(&self, starts: u32, timeout: Duration) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state()?;
            let started = self.starts();
            if started >= starts && state.active == "active" && state.main_pid != 0 {
                return Ok(state.main_pid);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("start #{starts} of {}", self.name()),
                    timeout,
                    last_error: format!(
                        "started {started} times, {}/{} result {}, exits {:?}; journal:\n{}",
                        state.active,
                        state.sub,
                        state.result,
                        self.exits(),
                        crate::util::tail(&self.journal(), 30)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit codes of [`Daemon::exits`] (`None` for a signal).
    pub fn exit_codes(&self) -> Vec<Option<i32>> {
        self.exits().into_iter().map(|e| e.code).collect()
    }

    /// The program its main process runs (`/proc/PID/exe` inside the machine); a replaced
    /// binary shows as `… (deleted)`.
    pub fn executable(&self) -> Result<String> {
        let pid = self.pid().ok_or_else(|| {
            Error::InvalidArgument(format!("{} has no main process", self.name()))
        })?;
        Ok(self
            .server
            .machine
            .exec_ok(&["readlink", &format!("/proc/{pid}/exe")])?
            .trim()
            .to_owned())
    }

    /// Sends `signal` to its processes (`systemctl kill`); systemd restarts it as the unit
    /// says. Returns the main PID it had.
    pub fn kill(&self, signal: &str) -> Result<Option<u32>> {
        let pid = self.pid();
        self.server.machine.kill_unit(&self.unit, signal)?;
        Ok(pid)
    }

    /// Stops it for good (`systemctl stop`), as an operator would. Returns the main PID it had.
    pub fn stop(&self) -> Result<Option<u32>> {
        let pid = self.pid();
        self.server
            .machine
            .exec_ok(&["systemctl", "stop", &self.unit])?;
        Ok(pid)
    }
}

/// `Started <unit>` lines of a journal (`--output=cat`).
fn count_starts(journal: &str, unit: &str) -> u32 {
    let started = format!("Started {unit}");
    let count = journal.lines().filter(|l| l.starts_with(&started)).count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The runs' ends of a journal (`--output=cat`).
fn parse_exits(journal: &str, unit: &str) -> Vec<Exit> {
    let exited = format!("{unit}: Main process exited, ");
    let deactivated = format!("{unit}: Deactivated successfully.");
    let started = format!("Started {unit}");
    let mut exits = Vec::new();
    let mut logged = false;
    for line in journal.lines() {
        if line.starts_with(&started) {
            logged = false;
        } else if let Some(rest) = line.strip_prefix(&exited) {
            // code=exited, status=10/n/a | code=killed, status=9/KILL
            let mut code = None;
            let mut status = None;
            for part in rest.trim_end_matches('.').split(", ") {
                if let Some(c) = part.strip_prefix("code=") {
                    code = Some(c.to_owned());
                } else if let Some(s) = part.strip_prefix("status=") {
                    status = s.split('/').next().and_then(|n| n.parse::<i32>().ok());
                }
            }
            let exit = match code.as_deref() {
                Some("exited") => Exit {
                    code: status,
                    signal: None,
                },
                _ => Exit {
                    code: None,
                    signal: status,
                },
            };
            exits.push(exit);
            logged = true;
        } else if line.starts_with(&deactivated) && !logged {
            exits.push(Exit {
                code: Some(0),
                signal: None,
            });
            logged = true;
        }
    }
    exits
}

/// `/etc/default/etcd` of the member on boot server `lrn` of the cluster of `members`.
fn etcd_defaults(lrn: u32, members: &[u32]) -> Result<String> {
    let own = address(lrn)?;
    let cluster = members
        .iter()
        .map(|m| {
            Ok(format!(
                "{}=http://{}:{ETCD_PEER_PORT}",
                machine_name(*m),
                address(*m)?
            ))
        })
        .collect::<Result<Vec<_>>>()?
        .join(",");
    Ok(format!(
        "# The etcd member of boot server {lrn} (dctest).\n\
         ETCD_NAME={name}\n\
         ETCD_DATA_DIR=/var/lib/etcd/default\n\
         ETCD_LISTEN_PEER_URLS=http://{own}:{ETCD_PEER_PORT}\n\
         ETCD_LISTEN_CLIENT_URLS=http://{own}:{ETCD_CLIENT_PORT},http://127.0.0.1:{ETCD_CLIENT_PORT}\n\
         ETCD_ADVERTISE_CLIENT_URLS=http://{own}:{ETCD_CLIENT_PORT}\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{own}:{ETCD_PEER_PORT}\n\
         ETCD_INITIAL_CLUSTER={cluster}\n\
         ETCD_INITIAL_CLUSTER_STATE=new\n\
         ETCD_INITIAL_CLUSTER_TOKEN=dctest\n\
         ETCD_HEARTBEAT_INTERVAL=100\n\
         ETCD_ELECTION_TIMEOUT=1000\n",
        name = machine_name(lrn),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_starts_from_a_journal() {
        let journal = "\
Started neco-worker.service - neco-worker: installs.
{\"level\":\"INFO\"}
neco-worker.service: Main process exited, code=exited, status=10/n/a
neco-worker.service: Failed with result 'exit-code'.
neco-worker.service: Scheduled restart job, restart counter is at 1.
Started neco-worker.service - neco-worker: installs.
neco-worker.service: Main process exited, code=killed, status=9/KILL
Started neco-worker.service - neco-worker: installs.
Stopping neco-worker.service - neco-worker: installs...
neco-worker.service: Deactivated successfully.
Stopped neco-worker.service - neco-worker: installs.
";
        assert_eq!(count_starts(journal, WORKER_UNIT), 3);
        assert_eq!(count_starts(journal, UPDATER_UNIT), 0);
        assert_eq!(
            parse_exits(journal, WORKER_UNIT),
            vec![
                Exit {
                    code: Some(10),
                    signal: None
                },
                Exit {
                    code: None,
                    signal: Some(9)
                },
                Exit {
                    code: Some(0),
                    signal: None
                },
            ]
        );
        // A failed run logs both lines; it is one exit.
        let failed = "Started neco-worker.service - x\n\
            neco-worker.service: Main process exited, code=exited, status=1/FAILURE\n\
            neco-worker.service: Deactivated successfully.\n";
        assert_eq!(parse_exits(failed, WORKER_UNIT).len(), 1);
    }

    #[test]
    fn the_etcd_member_lists_the_cluster() {
        let text = etcd_defaults(1, &[0, 1, 2]).unwrap_or_default();
        assert!(text.contains("ETCD_NAME=boot-1\n"), "{text}");
        assert!(text.contains(
            "ETCD_INITIAL_CLUSTER=boot-0=http://10.123.0.10:2380,boot-1=http://10.123.0.11:2380,\
             boot-2=http://10.123.0.12:2380\n"
        ));
        assert!(text.contains("ETCD_LISTEN_CLIENT_URLS=http://10.123.0.11:2379,"));
        assert!(address(300).is_err());
    }
}
