//! Real Debian packages for tests, built with `dpkg-deb`.
//!
//! The packages are reproducible: file modes and owners are fixed, and `SOURCE_DATE_EPOCH`
//! clamps every timestamp, so the same name and version always give the same bytes (and so
//! the same sha256 in generated pins).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The timestamp written into every test package (2023-11-14T22:13:20Z).
pub const SOURCE_DATE_EPOCH: &str = "1700000000";

/// A package to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    /// The Debian `Version:`.
    pub version: String,
    pub architecture: String,
    /// `(path inside the package, content)`; paths are relative, e.g. `usr/share/doc/x/README`.
    pub files: Vec<(String, Vec<u8>)>,
}

impl DebPackage {
    /// An amd64 package holding one README under `usr/share/doc/<name>/`.
    pub fn simple(name: &str, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: "amd64".to_owned(),
            files: vec![(
                format!("usr/share/doc/{name}/README"),
                format!("{name} {version}: a package built by the neco-rs test fixtures\n")
                    .into_bytes(),
            )],
        }
    }

    /// The conventional file name `<name>_<version>_<arch>.deb`.
    pub fn file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version, self.architecture)
    }

    /// Builds the package with `dpkg-deb` in a temporary directory and returns its bytes.
    pub fn build(&self) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().map_err(Error::io("creating a directory for a deb"))?;
        let root = dir.path().join("root");
        let control_dir = root.join("DEBIAN");
        std::fs::create_dir_all(&control_dir).map_err(Error::io("creating DEBIAN/"))?;
        let control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: neco-rs tests <tests@neco-rs.invalid>\nSection: admin\nPriority: optional\nDescription: test package {}\n built by the neco-rs test fixtures.\n",
            self.name, self.version, self.architecture, self.name
        );
        write_file(&control_dir.join("control"), control.as_bytes())?;
        for (path, content) in &self.files {
            if path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(Error::InvalidArgument(format!(
                    "package file path {path:?} must be relative and stay inside the package"
                )));
            }
            write_file(&root.join(path), content)?;
        }
        let out = dir.path().join(self.file_name());
        let output = Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .arg("--root-owner-group")
            .arg("-Zxz")
            .arg("--build")
            .arg(&root)
            .arg(&out)
            .output()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => Error::MissingProgram {
                    program: "dpkg-deb".into(),
                    hint: "install the Debian package dpkg".into(),
                },
                _ => Error::Io {
                    context: "running dpkg-deb".into(),
                    source,
                },
            })?;
        if !output.status.success() {
            return Err(Error::ProcessExited {
                name: "dpkg-deb".into(),
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        std::fs::read(&out).map_err(Error::io(format!("reading {}", out.display())))
    }
}

/// A field of a package's control file (`dpkg-deb --field`), e.g. `Version`.
pub fn control_field(deb: &Path, field: &str) -> Result<String> {
    let mut command = Command::new("dpkg-deb");
    command.arg("--field").arg(deb).arg(field);
    let value = run_dpkg_deb(&mut command)?.trim().to_owned();
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} has no {field} field",
            deb.display()
        )));
    }
    Ok(value)
}

/// Builds a copy of the package `deb` whose `Version:` is `version`, everything else unchanged
/// (files, maintainer scripts; compressed with xz at level 1), into `out_dir` as
/// `<name>_<version>_<arch>.deb`; returns its path. This is how a test makes "the next
/// release" of a package it did not build: the programs of neco read their version from the
/// dpkg database, so for them the copy is a genuine new release.
pub fn repackage_with_version(deb: &Path, version: &str, out_dir: &Path) -> Result<PathBuf> {
    if version.is_empty() || version.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(Error::InvalidArgument(format!(
            "{version:?} is not a Debian version"
        )));
    }
    let dir = tempfile::tempdir().map_err(Error::io("creating a directory for a deb"))?;
    let tree = dir.path().join("tree");
    run_dpkg_deb(
        Command::new("dpkg-deb")
            .arg("--raw-extract")
            .arg(deb)
            .arg(&tree),
    )?;
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path)
        .map_err(Error::io(format!("reading {}", control_path.display())))?;
    let mut replaced = false;
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .ok_or_else(|| Error::InvalidArgument(format!("{} has no {name} field", deb.display())))
    };
    let package = field("Package:")?;
    let architecture = field("Architecture:")?;
    let edited = control
        .lines()
        .map(|line| {
            if line.starts_with("Version:") {
                replaced = true;
                format!("Version: {version}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    if !replaced {
        return Err(Error::InvalidArgument(format!(
            "{} has no Version field",
            deb.display()
        )));
    }
    std::fs::write(&control_path, edited)
        .map_err(Error::io(format!("writing {}", control_path.display())))?;
    std::fs::create_dir_all(out_dir)
        .map_err(Error::io(format!("creating {}", out_dir.display())))?;
    let out = out_dir.join(format!("{package}_{version}_{architecture}.deb"));
    run_dpkg_deb(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .arg("--root-owner-group")
            // xz like the release, at level 1: ~1 s instead of ~12 s for neco's 23 MB.
            .arg("-Zxz")
            .arg("-z1")
            .arg("--build")
            .arg(&tree)
            .arg(&out),
    )?;
    Ok(out)
}

/// Runs a `dpkg-deb` command and returns its stdout.
fn run_dpkg_deb(command: &mut Command) -> Result<String> {
    let output = command.output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::MissingProgram {
            program: "dpkg-deb".into(),
            hint: "install the Debian package dpkg".into(),
        },
        _ => Error::Io {
            context: "running dpkg-deb".into(),
            source,
        },
    })?;
    if !output.status.success() {
        return Err(Error::ProcessExited {
            name: format!("{command:?}"),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
        // Directories inside a package are 0755 whatever the umask says.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("chmod {}", parent.display())))?;
    }
    std::fs::write(path, content).map_err(Error::io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(Error::io(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repackaging_changes_only_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let package = DebPackage::simple("dctest-repack", "1.0");
        let original = dir.path().join(package.file_name());
        std::fs::write(&original, package.build().expect("build")).expect("write");
        let copy =
            repackage_with_version(&original, "1.1", &dir.path().join("out")).expect("repackage");
        assert_eq!(
            copy.file_name().and_then(|n| n.to_str()),
            Some("dctest-repack_1.1_amd64.deb")
        );
        assert_eq!(control_field(&copy, "Version").expect("Version"), "1.1");
        assert_eq!(
            control_field(&copy, "Package").expect("Package"),
            "dctest-repack"
        );
        let contents = |deb: &Path| {
            run_dpkg_deb(Command::new("dpkg-deb").arg("--contents").arg(deb)).expect("contents")
        };
        assert_eq!(contents(&original), contents(&copy));
        // Reproducible, like every package of this module.
        let again = repackage_with_version(&original, "1.1", &dir.path().join("again"))
            .expect("repackage again");
        assert_eq!(
            std::fs::read(&copy).expect("read"),
            std::fs::read(&again).expect("read")
        );
        assert!(repackage_with_version(&original, "1 1", dir.path()).is_err());
        assert!(control_field(&original, "No-Such-Field").is_err());
    }
}
