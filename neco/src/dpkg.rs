//! dpkg operations on the package database under a root directory.
//!
//! The commands are built as data ([`Invocation`]) by pure functions, so that what runs is
//! unit-tested; [`install`] runs one synchronously, [`install_async`] and
//! [`install_self_update`] through `tokio::process`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Set to `1` in the environment of the dpkg that neco-worker runs to install neco's own
/// package (a self-update). The package's `postinst` then leaves neco-worker alone: the worker
/// exits after dpkg returned and systemd starts the new binary.
pub const SELF_UPDATE_ENV: &str = "NECO_SELF_UPDATE";

/// Exists exactly when systemd is the running init (sd_booted(3)).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// Where the output of the dpkg of a self-update goes under systemd (the transient unit's
/// journal), for error messages: systemd-run's own stderr is empty then.
const SELF_UPDATE_OUTPUT: &str =
    "dpkg's output is in the journal of its transient unit: journalctl -t dpkg";

#[derive(Debug, thiserror::Error)]
pub enum DpkgError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The dpkg database of a root.
pub fn admin_dir(root: &Path) -> PathBuf {
    root.join("var/lib/dpkg")
}

/// What the dpkg database under a root records of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageStatus {
    /// The `Status` field: the wanted action, the error flag and the state, such as
    /// `install ok installed` or `install ok half-configured` (dpkg-query(1)).
    pub status: String,
    /// The `Version` field, empty for a package that is not installed.
    pub version: String,
}

impl PackageStatus {
    /// The state: the last word of [`PackageStatus::status`] (`installed`, `unpacked`, …).
    pub fn state(&self) -> &str {
        self.status.split_whitespace().last().unwrap_or("")
    }
}

/// The record of `package` in the dpkg database under `root`, `None` when dpkg has never
/// heard of it.
pub fn status(root: &Path, package: &str) -> Result<Option<PackageStatus>, DpkgError> {
    let output = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin_dir(root).display()))
        .args(["-W", "-f=${Status}\t${Version}", package])
        .output()
        .map_err(|source| DpkgError::Spawn {
            program: "dpkg-query",
            source,
        })?;
    if !output.status.success() {
        // dpkg-query exits 1 for a package it has never heard of.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() == Some(1) && stderr.contains("no packages found") {
            return Ok(None);
        }
        return Err(DpkgError::Failed {
            command: format!("dpkg-query -W {package}"),
            status: output.status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let (status, version) = text.split_once('\t').unwrap_or((&text, ""));
    Ok(Some(PackageStatus {
        status: status.trim().to_owned(),
        version: version.trim().to_owned(),
    }))
}

/// The installed version of `package` in the dpkg database under `root`, `None` when it is not
/// installed (or not configured: unpacked, half-configured, …).
pub fn installed_version(root: &Path, package: &str) -> Result<Option<String>, DpkgError> {
    Ok(status(root, package)?
        .filter(|s| s.state() == "installed" && !s.version.is_empty())
        .map(|s| s.version))
}

/// A command as data: the program, its arguments and what it adds to the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: &'static str,
    pub args: Vec<OsString>,
    pub env: Vec<(&'static str, &'static str)>,
}

impl Invocation {
    fn command(&self) -> Command {
        let mut command = Command::new(self.program);
        command.args(&self.args);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Turns the output of a run into the result: an error with its stderr unless it exited 0.
    fn check(&self, output: std::io::Result<Output>) -> Result<(), DpkgError> {
        let output = output.map_err(|source| DpkgError::Spawn {
            program: self.program,
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(DpkgError::Failed {
            command: self.to_string(),
            status: output.status.to_string(),
            stderr: if stderr.is_empty() && self.program == "systemd-run" {
                SELF_UPDATE_OUTPUT.to_owned()
            } else {
                stderr
            },
        })
    }
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// The log file of dpkg for a root other than `/` (the host's dpkg writes its own).
fn log_file(root: &Path) -> Option<PathBuf> {
    (root != Path::new("/")).then(|| root.join("var/log/dpkg.log"))
}

/// `dpkg --install DEB` into the system under `root`. For a root other than `/` (a simulated
/// boot server), dpkg runs with `--root`, `--force-script-chrootless` and `--force-not-root`;
/// maintainer scripts then see `DPKG_ROOT` and must not touch the host.
pub fn install_invocation(root: &Path, deb: &Path) -> Invocation {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(log) = log_file(root) {
        args.push(format!("--root={}", root.display()).into());
        args.push("--force-script-chrootless".into());
        args.push("--force-not-root".into());
        args.push(format!("--log={}", log.display()).into());
    }
    args.push("--install".into());
    args.push(deb.into());
    Invocation {
        program: "dpkg",
        args,
        env: vec![("DEBIAN_FRONTEND", "noninteractive")],
    }
}

/// How neco-worker installs neco's own package, with [`SELF_UPDATE_ENV`] set for the
/// maintainer scripts. On a real boot server (root `/`, systemd running) dpkg runs in a
/// transient unit of its own, `systemd-run --wait --collect`, outside the worker's cgroup, so
/// that nothing the package does to neco-worker.service stops dpkg; systemd-run exits with
/// dpkg's status. Elsewhere it is [`install_invocation`].
pub fn self_update_invocation(root: &Path, deb: &Path, systemd_running: bool) -> Invocation {
    if root != Path::new("/") || !systemd_running {
        let mut plain = install_invocation(root, deb);
        plain.env.push((SELF_UPDATE_ENV, "1"));
        return plain;
    }
    let mut args: Vec<OsString> = [
        "--quiet",
        "--wait",
        "--collect",
        "--setenv=DEBIAN_FRONTEND=noninteractive",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(format!("--setenv={SELF_UPDATE_ENV}=1").into());
    args.push("dpkg".into());
    args.push("--install".into());
    args.push(deb.into());
    Invocation {
        program: "systemd-run",
        args,
        env: Vec::new(),
    }
}

/// The directory of dpkg's log under a root other than `/`, which must exist.
fn log_dir(root: &Path) -> Option<PathBuf> {
    log_file(root).and_then(|file| file.parent().map(Path::to_path_buf))
}

fn log_dir_error(source: std::io::Error) -> DpkgError {
    DpkgError::Spawn {
        program: "dpkg",
        source,
    }
}

/// Creates [`log_dir`], blocking.
fn prepare_log(root: &Path) -> Result<(), DpkgError> {
    match log_dir(root) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(log_dir_error),
        None => Ok(()),
    }
}

/// Creates [`log_dir`], async.
async fn prepare_log_async(root: &Path) -> Result<(), DpkgError> {
    match log_dir(root) {
        Some(dir) => tokio::fs::create_dir_all(dir).await.map_err(log_dir_error),
        None => Ok(()),
    }
}

/// Installs a package file with `dpkg --install` into the system under `root`
/// ([`install_invocation`]), blocking the calling thread: not for async code, which uses
/// [`install_async`].
pub fn install(root: &Path, deb: &Path) -> Result<(), DpkgError> {
    prepare_log(root)?;
    let invocation = install_invocation(root, deb);
    invocation.check(invocation.command().output())
}

/// [`install`] for async code: dpkg runs as a child process the runtime waits for.
pub async fn install_async(root: &Path, deb: &Path) -> Result<(), DpkgError> {
    prepare_log_async(root).await?;
    run(install_invocation(root, deb)).await
}

/// Installs neco's own package ([`self_update_invocation`]) and waits for dpkg to return.
/// Dropping the future does not stop dpkg.
pub async fn install_self_update(root: &Path, deb: &Path) -> Result<(), DpkgError> {
    prepare_log_async(root).await?;
    let systemd_running = tokio::fs::try_exists(SYSTEMD_RUNNING)
        .await
        .unwrap_or(false);
    run(self_update_invocation(root, deb, systemd_running)).await
}

async fn run(invocation: Invocation) -> Result<(), DpkgError> {
    let output = tokio::process::Command::from(invocation.command())
        .output()
        .await;
    invocation.check(output)
}

/// Prepares an empty dpkg database under `root` (for a simulated boot server).
pub fn init_root(root: &Path) -> std::io::Result<()> {
    let admin = admin_dir(root);
    std::fs::create_dir_all(admin.join("info"))?;
    std::fs::create_dir_all(admin.join("updates"))?;
    for file in ["status", "available"] {
        let path = admin.join(file);
        if !path.exists() {
            std::fs::write(path, "")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(invocation: &Invocation) -> Vec<String> {
        invocation
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn install_into_a_root() {
        let root = tempfile::tempdir().unwrap();
        init_root(root.path()).unwrap();
        assert_eq!(installed_version(root.path(), "etcdpasswd").unwrap(), None);
        let package = dctest::debs::DebPackage::simple("etcdpasswd", "1.4.9");
        let file = root.path().join(package.file_name());
        std::fs::write(&file, package.build().unwrap()).unwrap();
        install(root.path(), &file).unwrap();
        assert_eq!(
            installed_version(root.path(), "etcdpasswd")
                .unwrap()
                .as_deref(),
            Some("1.4.9")
        );
        assert_eq!(
            status(root.path(), "etcdpasswd").unwrap(),
            Some(PackageStatus {
                status: "install ok installed".into(),
                version: "1.4.9".into(),
            })
        );
        assert!(root.path().join("usr/share/doc/etcdpasswd/README").exists());
        // Nothing was installed on the host.
        assert_eq!(
            installed_version(Path::new("/"), "etcdpasswd").unwrap(),
            None
        );
        let err = install(root.path(), &root.path().join("missing.deb")).unwrap_err();
        assert!(err.to_string().contains("missing.deb"), "{err}");
    }

    #[tokio::test]
    async fn async_installs_into_a_root() {
        let root = tempfile::tempdir().unwrap();
        init_root(root.path()).unwrap();
        let package = dctest::debs::DebPackage::simple("neco", "2026.11.27-2");
        let file = root.path().join(package.file_name());
        std::fs::write(&file, package.build().unwrap()).unwrap();
        // Under a root, the self-update is plain dpkg --root, systemd or not.
        install_self_update(root.path(), &file).await.unwrap();
        assert_eq!(
            installed_version(root.path(), "neco").unwrap().as_deref(),
            Some("2026.11.27-2")
        );
        let package = dctest::debs::DebPackage::simple("etcdpasswd", "1.4.9");
        let file = root.path().join(package.file_name());
        std::fs::write(&file, package.build().unwrap()).unwrap();
        install_async(root.path(), &file).await.unwrap();
        assert_eq!(
            installed_version(root.path(), "etcdpasswd")
                .unwrap()
                .as_deref(),
            Some("1.4.9")
        );
        let err = install_self_update(root.path(), &root.path().join("missing.deb"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing.deb"), "{err}");
    }

    #[test]
    fn states_of_a_hand_written_database() {
        let root = tempfile::tempdir().unwrap();
        init_root(root.path()).unwrap();
        std::fs::write(
            admin_dir(root.path()).join("status"),
            "Package: neco\nStatus: install ok half-configured\nMaintainer: m <m@example.com>\n\
             Architecture: amd64\nVersion: 2026.11.27-2\nDescription: d\n\n\
             Package: gone\nStatus: purge ok not-installed\nMaintainer: m <m@example.com>\n\
             Architecture: amd64\nDescription: d\n",
        )
        .unwrap();
        let neco = status(root.path(), "neco").unwrap().unwrap();
        assert_eq!(neco.status, "install ok half-configured");
        assert_eq!(neco.version, "2026.11.27-2");
        assert_eq!(neco.state(), "half-configured");
        assert_eq!(installed_version(root.path(), "neco").unwrap(), None);
        let gone = status(root.path(), "gone").unwrap().unwrap();
        assert_eq!(gone.state(), "not-installed");
        assert_eq!(gone.version, "");
        assert_eq!(status(root.path(), "never-heard-of").unwrap(), None);
    }

    #[test]
    fn plain_install_arguments() {
        let host = install_invocation(Path::new("/"), Path::new("/var/lib/neco/debs/x.deb"));
        assert_eq!(host.program, "dpkg");
        assert_eq!(args(&host), ["--install", "/var/lib/neco/debs/x.deb"]);
        assert_eq!(host.env, [("DEBIAN_FRONTEND", "noninteractive")]);
        let rooted = install_invocation(Path::new("/srv/boot-0"), Path::new("/tmp/x.deb"));
        assert_eq!(
            args(&rooted),
            [
                "--root=/srv/boot-0",
                "--force-script-chrootless",
                "--force-not-root",
                "--log=/srv/boot-0/var/log/dpkg.log",
                "--install",
                "/tmp/x.deb",
            ]
        );
    }

    #[test]
    fn self_update_arguments() {
        let deb = Path::new("/var/lib/neco/debs/neco_2026.11.27-2_amd64.deb");
        // A real boot server: a transient unit of its own, the variables set inside it.
        let unit = self_update_invocation(Path::new("/"), deb, true);
        assert_eq!(unit.program, "systemd-run");
        assert_eq!(
            args(&unit),
            [
                "--quiet",
                "--wait",
                "--collect",
                "--setenv=DEBIAN_FRONTEND=noninteractive",
                "--setenv=NECO_SELF_UPDATE=1",
                "dpkg",
                "--install",
                "/var/lib/neco/debs/neco_2026.11.27-2_amd64.deb",
            ]
        );
        assert!(unit.env.is_empty());
        assert_eq!(
            unit.to_string(),
            "systemd-run --quiet --wait --collect --setenv=DEBIAN_FRONTEND=noninteractive \
             --setenv=NECO_SELF_UPDATE=1 dpkg --install \
             /var/lib/neco/debs/neco_2026.11.27-2_amd64.deb"
        );
        // No systemd, or another root: plain dpkg, with the same variables.
        for (root, systemd) in [("/", false), ("/srv/boot-0", true), ("/srv/boot-0", false)] {
            let plain = self_update_invocation(Path::new(root), deb, systemd);
            let mut expected = install_invocation(Path::new(root), deb);
            expected.env.push(("NECO_SELF_UPDATE", "1"));
            assert_eq!(plain, expected, "{root} {systemd}");
        }
    }

    #[test]
    fn a_failed_transient_unit_points_to_the_journal() {
        let unit = self_update_invocation(Path::new("/"), Path::new("/x.deb"), true);
        let output = Command::new("sh").args(["-c", "exit 1"]).output();
        let err = unit.check(output).unwrap_err().to_string();
        assert!(err.starts_with("systemd-run --quiet"), "{err}");
        assert!(err.contains("journalctl -t dpkg"), "{err}");
        let plain = install_invocation(Path::new("/"), Path::new("/x.deb"));
        let output = Command::new("sh")
            .args(["-c", "echo broken >&2; exit 2"])
            .output();
        let err = plain.check(output).unwrap_err().to_string();
        assert!(err.ends_with(": broken"), "{err}");
    }

    #[test]
    fn host_packages() {
        // dpkg itself is installed on every Debian machine.
        let version = installed_version(Path::new("/"), "dpkg").unwrap();
        assert!(version.is_some_and(|v| !v.is_empty()));
        assert_eq!(
            installed_version(Path::new("/"), "no-such-package-neco-rs").unwrap(),
            None
        );
    }
}
