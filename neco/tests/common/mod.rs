//! Shared set-up of the `neco` CLI tests: a real etcd, a boot-server root whose config points at
//! it, the CLI binary run as a process, and a raw etcd client to write and read keys exactly as
//! neco (Go) does.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use dctest::EtcdCluster;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;

/// The output of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics unless the run succeeded; returns stdout.
    #[track_caller]
    pub fn success(&self) -> &str {
        assert!(self.ok(), "neco failed: {self:?}");
        &self.stdout
    }

    /// Panics unless the run failed; returns stderr.
    #[track_caller]
    pub fn failure(&self) -> &str {
        assert!(
            !self.ok() && self.code.is_some(),
            "neco should have failed: {self:?}"
        );
        &self.stderr
    }

    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A boot-server root for the CLI.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new(endpoints: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), endpoints);
        Self { dir }
    }

    /// A root without any config file.
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `neco --root ROOT ARGS…`.
    pub async fn neco(&self, args: &[&str]) -> Run {
        self.neco_stdin(args, None, &[]).await
    }

    /// Runs the CLI with `stdin` (closed when `None`) and extra environment variables.
    pub async fn neco_stdin(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_neco"));
        command
            .arg("--root")
            .arg(self.path())
            .args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let start = Instant::now();
        let mut child = command.spawn().unwrap();
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("neco hung for 30 s")
            .unwrap();
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            took: start.elapsed(),
        }
    }

    /// Installs a package named `neco` of `version` into the root's dpkg database.
    pub fn install_neco(&self, version: &str) {
        let admin = self.path().join("var/lib/dpkg");
        std::fs::create_dir_all(admin.join("info")).unwrap();
        std::fs::create_dir_all(admin.join("updates")).unwrap();
        std::fs::write(admin.join("status"), "").unwrap();
        let deb_dir = tempfile::tempdir().unwrap();
        let deb: PathBuf = deb_dir.path().join(format!("neco_{version}_amd64.deb"));
        std::fs::write(
            &deb,
            dctest::debs::DebPackage::simple("neco", version)
                .build()
                .unwrap(),
        )
        .unwrap();
        let out = std::process::Command::new("dpkg")
            .arg(format!("--root={}", self.path().display()))
            .args([
                "--force-script-chrootless",
                "--force-not-root",
                "--log=/dev/null",
                "-i",
            ])
            .arg(&deb)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg -i: {out:?}");
    }
}

pub fn write_config(root: &Path, endpoints: &[String]) {
    let etc = root.join("etc/neco");
    std::fs::create_dir_all(&etc).unwrap();
    let endpoints = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        etc.join("config.toml"),
        format!(
            "[etcd]\nendpoints = [{endpoints}]\nprefix = \"/neco/\"\n\n[github]\napi-url = \"http://127.0.0.1:1/\"\nrepository = \"cybozu-go/neco\"\n"
        ),
    )
    .unwrap();
    std::fs::write(etc.join("rack"), "0\n").unwrap();
}

/// A real etcd, a root pointing at it and a raw client.
pub struct Env {
    pub root: Root,
    pub raw: Raw,
    pub etcd: EtcdCluster,
}

impl Env {
    pub async fn start() -> Self {
        let etcd = EtcdCluster::single().expect("start etcd");
        let root = Root::new(&etcd.endpoints());
        let raw = Raw::connect(&etcd.endpoints()).await;
        Self { root, raw, etcd }
    }

    pub async fn neco(&self, args: &[&str]) -> Run {
        self.root.neco(args).await
    }
}

/// etcd without a prefix: keys are written and read as given (relative to `/neco/`).
#[derive(Clone)]
pub struct Raw {
    pub client: etcd_client::Client,
}

impl Raw {
    pub async fn connect(endpoints: &[String]) -> Self {
        Self {
            client: etcd_client::Client::connect(endpoints, None).await.unwrap(),
        }
    }

    fn full(key: &str) -> String {
        format!("/neco/{key}")
    }

    pub async fn put(&self, key: &str, value: &str) {
        self.client
            .clone()
            .put(Self::full(key), value, None)
            .await
            .unwrap();
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.client
            .clone()
            .get(Self::full(key), None)
            .await
            .unwrap()
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    /// `(relative key, value)` of every key under `prefix`, in etcd (byte) order.
    pub async fn list(&self, prefix: &str) -> Vec<(String, String)> {
        self.client
            .clone()
            .get(
                Self::full(prefix),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key())
                        .trim_start_matches("/neco/")
                        .to_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.list(prefix)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

/// Writes `etc/neco/config.toml` for a secured etcd, with `settings`.
pub fn write_secured_config(
    root: &Path,
    endpoints: &[String],
    settings: &dctest::NecoEtcdSettings<'_>,
) {
    write_config(root, endpoints);
    settings.write_into(root).unwrap();
}
