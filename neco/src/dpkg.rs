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

#[cfg(test)]
mod tests {
    use super::*;

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
