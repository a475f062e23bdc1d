//! dpkg operations on the package database under a root directory.

use std::path::Path;
use std::process::Command;

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
pub fn admin_dir(root: &Path) -> std::path::PathBuf {
    root.join("var/lib/dpkg")
}

/// The installed version of `package` in the dpkg database under `root`, `None` when it is not
/// installed.
pub fn installed_version(root: &Path, package: &str) -> Result<Option<String>, DpkgError> {
    let output = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin_dir(root).display()))
        .args(["-W", "-f=${db:Status-Status} ${Version}", package])
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
    Ok(match text.split_once(' ') {
        Some(("installed", version)) if !version.is_empty() => Some(version.to_owned()),
        _ => None,
    })
}

/// Installs a package file with `dpkg -i` into the system under `root`. For a root other than
/// `/` (a simulated boot server), dpkg runs with `--root`, `--force-script-chrootless` and
/// `--force-not-root`; maintainer scripts then see `DPKG_ROOT` and must not touch the host.
pub fn install(root: &Path, deb: &Path) -> Result<(), DpkgError> {
    let mut command = Command::new("dpkg");
    if root != Path::new("/") {
        command
            .arg(format!("--root={}", root.display()))
            .arg("--force-script-chrootless")
            .arg("--force-not-root")
            .arg(format!("--log={}", root.join("var/log/dpkg.log").display()));
        std::fs::create_dir_all(root.join("var/log")).map_err(|source| DpkgError::Spawn {
            program: "dpkg",
            source,
        })?;
    }
    command
        .arg("--install")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let output = command.output().map_err(|source| DpkgError::Spawn {
        program: "dpkg",
        source,
    })?;
    if !output.status.success() {
        return Err(DpkgError::Failed {
            command: format!("dpkg --install {}", deb.display()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Installs neco's own package. On a real boot server (root `/` with systemd running), dpkg
/// runs in a transient unit (`systemd-run --wait`) outside the worker's cgroup, so that the
/// package's `prerm`, which stops the worker, does not kill dpkg with it. Elsewhere it is
/// [`install`].
pub fn install_detached(root: &Path, deb: &Path) -> Result<(), DpkgError> {
    if root != Path::new("/") || !Path::new("/run/systemd/system").exists() {
        return install(root, deb);
    }
    let output = Command::new("systemd-run")
        .args([
            "--quiet",
            "--wait",
            "--collect",
            "--setenv=DEBIAN_FRONTEND=noninteractive",
        ])
        .arg("dpkg")
        .arg("--install")
        .arg(deb)
        .output()
        .map_err(|source| DpkgError::Spawn {
            program: "systemd-run",
            source,
        })?;
    if !output.status.success() {
        return Err(DpkgError::Failed {
            command: format!("systemd-run --wait dpkg --install {}", deb.display()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
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
        assert!(root.path().join("usr/share/doc/etcdpasswd/README").exists());
        // Nothing was installed on the host.
        assert_eq!(
            installed_version(Path::new("/"), "etcdpasswd").unwrap(),
            None
        );
        let err = install(root.path(), &root.path().join("missing.deb")).unwrap_err();
        assert!(err.to_string().contains("missing.deb"), "{err}");
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
