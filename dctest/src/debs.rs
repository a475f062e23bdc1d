//! Real Debian packages for tests, built with `dpkg-deb`.
//!
//! The packages are reproducible: file modes and owners are fixed, and `SOURCE_DATE_EPOCH`
//! clamps every timestamp, so the same name and version always give the same bytes (and so
//! the same sha256 in generated pins).

use crate::error::{Error, Result};
use std::path::Path;
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
