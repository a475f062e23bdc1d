//! Helpers shared by the integration tests: manifest text builders, and running the
//! `artifacts-gen` binary in a temporary directory of its own.
//!
//! Every test file includes this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `[[image]]` table of `repository` (`host/path`), with extra `key = value` lines.
pub fn image(repository: &str, extra: &[&str]) -> String {
    let mut text = format!("[[image]]\nrepository = \"{repository}\"\n");
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    text
}

/// A `[[deb]]` table; `asset` is written as a TOML literal string (no escaping).
pub fn deb(name: &str, github: &str, asset: &str, extra: &[&str]) -> String {
    let mut text =
        format!("[[deb]]\nname = \"{name}\"\ngithub = \"{github}\"\nasset = '{asset}'\n");
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    text
}

/// The `[os_image]` table; the files' base URL is the one a [`dctest::FeedServer`] serving
/// `feed` has (`<origin>/{channel}/`).
pub fn os(channel: &str, feed: &str) -> String {
    let origin = feed.split("/releases-json/").next().unwrap_or(feed);
    format!(
        "[os_image]\nchannel = \"{channel}\"\nfeed = \"{feed}\"\nbase_url = \"{origin}/{{channel}}/\"\n"
    )
}

/// A feed URL nobody serves: the tests pass `--os-feed` (or `Endpoints::os_feed`) instead.
pub const UNUSED_FEED: &str = "https://feed.invalid/releases-json/releases-stable.json";

/// What the binary did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`-1` when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Environment variables the binary reads; removed from every run so the host cannot leak in.
const ENV_READ_BY_THE_TOOL: &[&str] = &[
    "GITHUB_TOKEN",
    "NECO_REGISTRY_USERNAME",
    "NECO_REGISTRY_PASSWORD",
    "ARTIFACTS_GEN_REGISTRIES",
    "ARTIFACTS_GEN_GITHUB_API",
    "ARTIFACTS_GEN_OS_FEED",
    "RUST_LOG",
];

/// Longest a run may take before the test fails (and the process is killed).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary directory holding `artifacts.toml` and the generated directory `gen/`.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(manifest: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("artifacts-gen-test-")
            .tempdir()
            .expect("create a temporary directory");
        let ws = Self { dir };
        ws.write_manifest(manifest);
        ws
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest(&self) -> PathBuf {
        self.root().join("artifacts.toml")
    }

    pub fn write_manifest(&self, text: &str) {
        std::fs::write(self.manifest(), text).expect("write artifacts.toml");
    }

    /// The generated directory (not created until the tool writes into it).
    pub fn gen_dir(&self) -> PathBuf {
        self.root().join("gen")
    }

    /// `gen/artifacts.rs`.
    pub fn default_file(&self) -> PathBuf {
        self.gen_dir().join("artifacts.rs")
    }

    /// `gen/artifacts_release.rs`.
    pub fn release_file(&self) -> PathBuf {
        self.gen_dir().join("artifacts_release.rs")
    }

    /// The bytes of a file, or `None` when it does not exist.
    pub fn read(path: &Path) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }

    /// The names in `gen/`, sorted (empty when it does not exist).
    pub fn gen_entries(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.gen_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| {
                e.expect("read gen/")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Runs `artifacts-gen --manifest artifacts.toml --generated-dir gen ARGS` in the
    /// workspace with exactly the environment variables `env` of those the tool reads.
    pub fn run(&self, args: &[String], env: &[(&str, &str)]) -> Run {
        let out_path = self.root().join(".stdout");
        let err_path = self.root().join(".stderr");
        let stdout = std::fs::File::create(&out_path).expect("create the stdout file");
        let stderr = std::fs::File::create(&err_path).expect("create the stderr file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_artifacts-gen"));
        command
            .current_dir(self.root())
            .arg("--manifest")
            .arg(self.manifest())
            .arg("--generated-dir")
            .arg(self.gen_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for name in ENV_READ_BY_THE_TOOL {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start artifacts-gen");
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            match child.try_wait().expect("wait for artifacts-gen") {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("artifacts-gen {args:?} ran longer than {RUN_TIMEOUT:?}");
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
            stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        run
    }
}

/// `["a", "b"]` → owned arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
