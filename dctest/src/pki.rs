//! Certificates for a test's TLS, made in the test with `openssl` (Debian's `openssl`) in a
//! temporary directory, never checked in: a CA of its own, and server and client certificates
//! signed by it (EC P-256 keys, valid for a day).

use crate::error::{Error, Result};
use crate::process::run_ok;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// The `openssl` program.
pub const OPENSSL: &str = "/usr/bin/openssl";
/// How long one `openssl` command may run.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority of one test; its directory (keys included) goes on drop.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
    name: String,
}

impl Pki {
    /// A new CA whose certificate says `CN=<name>`.
    pub fn new(name: &str) -> Result<Self> {
        if !Path::new(OPENSSL).exists() {
            return Err(Error::MissingProgram {
                program: OPENSSL.into(),
                hint: "install the Debian package openssl".into(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("dctest-pki-")
            .tempdir()
            .map_err(Error::io("create the directory of the certificates"))?;
        let pki = Self {
            dir,
            name: name.to_owned(),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &path_arg(&pki.ca_key()),
            "-out",
            &path_arg(&pki.ca()),
        ])?;
        Ok(pki)
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// A server certificate for `ip` (its subject alternative name), `CN=<name>`.
    pub fn server(&self, name: &str, ip: &str) -> Result<CertPair> {
        self.issue(
            name,
            &format!(
                "subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n"
            ),
        )
    }

    /// A client certificate with `CN=<common_name>` (etcd takes it as the user name when a
    /// request carries no password token).
    pub fn client(&self, common_name: &str) -> Result<CertPair> {
        self.issue(
            common_name,
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
        )
    }

    fn issue(&self, common_name: &str, extensions: &str) -> Result<CertPair> {
        let base = self.dir.path().join(common_name);
        let pair = CertPair {
            cert: base.with_extension("crt"),
            key: base.with_extension("key"),
        };
        let csr = base.with_extension("csr");
        let ext = base.with_extension("ext");
        std::fs::write(&ext, extensions).map_err(Error::io(format!("write {}", ext.display())))?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &path_arg(&pair.key),
            "-out",
            &path_arg(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path_arg(&csr),
            "-CA",
            &path_arg(&self.ca()),
            "-CAkey",
            &path_arg(&self.ca_key()),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &path_arg(&ext),
            "-out",
            &path_arg(&pair.cert),
        ])?;
        Ok(pair)
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn openssl(args: &[&str]) -> Result<()> {
    run_ok(Command::new(OPENSSL).args(args), OPENSSL_TIMEOUT).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_that_its_ca_verifies_and_another_does_not() {
        let pki = Pki::new("dctest-ca").unwrap();
        let server = pki.server("etcd", "127.0.0.1").unwrap();
        let client = pki.client("neco").unwrap();
        let verify = |ca: &Path, cert: &Path| {
            Command::new(OPENSSL)
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .arg(cert)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(&pki.ca(), &server.cert));
        assert!(verify(&pki.ca(), &client.cert));
        let other = Pki::new("another-ca").unwrap();
        assert!(!verify(&other.ca(), &server.cert));
        let text = std::fs::read_to_string(&server.key).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    }
}
