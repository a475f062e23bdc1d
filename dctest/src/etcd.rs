//! A real etcd (Debian `etcd-server`) on loopback: one member or a cluster of several, each
//! with its own ports and data directory, killed by PID on drop.
//!
//! [`EtcdCluster::secured`] starts a member as production runs it: clients need a certificate
//! of the test's own CA ([`crate::pki`]), and etcd's authentication is on, with a user and
//! password for the daemons.
//!
//! Election settings are fast (heartbeat 100 ms, election timeout 1 s) so that a cluster
//! elects a new leader quickly after a member is killed, yet stable on a loaded machine.

use crate::error::{Error, Result};
use crate::pki::{CertPair, Pki};
use crate::process::{free_port, ChildGuard};
use crate::util::base64_decode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The etcd server binary of Debian's `etcd-server`.
pub const DEFAULT_BINARY: &str = "/usr/bin/etcd";
/// The client of Debian's `etcd-client`, used to read what the daemons wrote (this crate
/// links no etcd client library, so that `xtask` builds without `protoc`).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// How long a start waits for every member to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts to start when a chosen port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<ChildGuard>,
}

/// The user a secured cluster has for the daemons (role `neco`: read and write under
/// `/neco/`).
pub const SECURED_USER: &str = "neco";

/// TLS and authentication of a [`EtcdCluster::secured`] member.
#[derive(Debug)]
pub struct EtcdSecurity {
    pki: Pki,
    server: CertPair,
    /// `CN=root`: etcd takes a client certificate's CN as the user of a request without a
    /// password token, so the fixture's own `etcdctl` is root without a password.
    admin: CertPair,
    /// `CN=neco`, the certificate of the daemons (who also give [`SECURED_USER`]'s password).
    client: CertPair,
    password: String,
}

impl EtcdSecurity {
    fn new() -> Result<Self> {
        let pki = Pki::new("dctest-etcd-ca")?;
        let server = pki.server("etcd", "127.0.0.1")?;
        let admin = pki.client("root")?;
        let client = pki.client(SECURED_USER)?;
        // Not a secret worth guarding (a test's own etcd), but not a constant either.
        let password = format!(
            "pw-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
                ^ std::process::id()
        );
        Ok(Self {
            pki,
            server,
            admin,
            client,
            password,
        })
    }

    /// The CA that signed the server's and the clients' certificates.
    pub fn ca(&self) -> PathBuf {
        self.pki.ca()
    }

    /// The daemons' client certificate and key (`CN=neco`).
    pub fn client(&self) -> &CertPair {
        &self.client
    }

    /// The user of the daemons.
    pub fn user(&self) -> &str {
        SECURED_USER
    }

    /// Its password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// What a boot server's config needs to reach this member (see [`NecoEtcdSettings`]).
    pub fn neco_settings(&self) -> NecoEtcdSettings<'_> {
        NecoEtcdSettings {
            ca: self.pki.ca(),
            cert: &self.client.cert,
            key: Ok(&self.client.key),
            user: SECURED_USER,
            password: &self.password,
        }
    }
}

/// The TLS and authentication settings of neco's `etc/neco/config.toml`, each of which a test
/// may make wrong.
#[derive(Debug, Clone)]
pub struct NecoEtcdSettings<'a> {
    pub ca: PathBuf,
    pub cert: &'a Path,
    /// The key file, or a file name under `etc/neco/` that does not exist.
    pub key: std::result::Result<&'a Path, &'a str>,
    pub user: &'a str,
    pub password: &'a str,
}

impl NecoEtcdSettings<'_> {
    /// Copies the files into `<root>/etc/neco/` and adds the settings to the `[etcd]` table of
    /// `<root>/etc/neco/config.toml`, naming the files `/etc/neco/ca.crt`, `etcd.crt` and
    /// `etcd.key` (neco takes the config's paths under its root).
    pub fn write_into(&self, root: &Path) -> Result<()> {
        let etc = root.join("etc/neco");
        let copy = |from: &Path, name: &str| {
            std::fs::copy(from, etc.join(name)).map_err(Error::io(format!(
                "copy {} into {}",
                from.display(),
                etc.display()
            )))?;
            Ok::<_, Error>(format!("/etc/neco/{name}"))
        };
        let ca = copy(&self.ca, "ca.crt")?;
        let cert = copy(self.cert, "etcd.crt")?;
        let key = match self.key {
            Ok(path) => copy(path, "etcd.key")?,
            Err(missing) => format!("/etc/neco/{missing}"),
        };
        let path = etc.join("config.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("read {}", path.display())))?;
        if !text.contains("[etcd]\n") {
            return Err(Error::InvalidArgument(format!(
                "{} has no [etcd] table",
                path.display()
            )));
        }
        let settings = format!(
            "[etcd]\nusername = {:?}\npassword = {:?}\ntls-ca = {ca:?}\ntls-cert = {cert:?}\n\
             tls-key = {key:?}\n",
            self.user, self.password
        );
        std::fs::write(&path, text.replacen("[etcd]\n", &settings, 1))
            .map_err(Error::io(format!("write {}", path.display())))
    }
}

/// A running etcd cluster. Dropping it kills every member and removes the data.
#[derive(Debug)]
pub struct EtcdCluster {
    // Field order matters: the processes die before their directory is removed.
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    security: Option<EtcdSecurity>,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts a single-member etcd.
    pub fn single() -> Result<Self> {
        Self::start(1)
    }

    /// Starts a cluster of `size` members and waits until each is healthy.
    pub fn start(size: usize) -> Result<Self> {
        Self::start_with(size, false)
    }

    /// Starts a single member reached over mutual TLS only (client certificates of the
    /// test's CA required) with authentication enabled: users `root` (the fixture's, by
    /// certificate) and [`SECURED_USER`] with a password, whose role may read and write under
    /// `/neco/`. See [`EtcdCluster::security`].
    pub fn secured() -> Result<Self> {
        Self::start_with(1, true)
    }

    fn start_with(size: usize, secured: bool) -> Result<Self> {
        if size == 0 {
            return Err(Error::InvalidArgument(
                "an etcd cluster needs at least one member".into(),
            ));
        }
        if !Path::new(DEFAULT_BINARY).exists() {
            return Err(Error::MissingProgram {
                program: DEFAULT_BINARY.into(),
                hint: "install the Debian package etcd-server".into(),
            });
        }
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size, secured) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no start attempt was made".into())))
    }

    fn try_start(size: usize, secured: bool) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(Error::io("creating the etcd directory"))?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("m{i}");
            members.push(Member {
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.path().join(format!("{name}.etcd")),
                log_path: dir.path().join(format!("{name}.log")),
                name,
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "dctest-{}",
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let security = secured.then(EtcdSecurity::new).transpose()?;
        let mut cluster = Self {
            members,
            initial_cluster,
            token,
            security,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i)?;
        }
        if cluster.security.is_some() {
            cluster.enable_auth()?;
        }
        Ok(cluster)
    }

    /// The TLS and authentication of a [`EtcdCluster::secured`] cluster.
    pub fn security(&self) -> Option<&EtcdSecurity> {
        self.security.as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Sets [`SECURED_USER`]'s password again (to the same one). etcd then drops every auth
    /// token it handed out to that user, as when a token expires: a client must authenticate
    /// again.
    pub fn renew_user_password(&self) -> Result<()> {
        let Some(security) = &self.security else {
            return Err(Error::InvalidArgument(
                "this etcd has no authentication".into(),
            ));
        };
        self.client()
            .etcdctl_with_input(
                &["user", "passwd", SECURED_USER, "--interactive=false"],
                &format!("{}\n", security.password),
            )
            .map(drop)
    }

    /// Users `root` and [`SECURED_USER`], the role of the latter, then `auth enable`.
    fn enable_auth(&self) -> Result<()> {
        let Some(security) = &self.security else {
            return Ok(());
        };
        let client = self.client();
        // The passwords go in on stdin, not in arguments (`--interactive=false` reads it).
        client.etcdctl_with_input(
            &["user", "add", "root", "--interactive=false"],
            &format!("root-{}\n", security.password),
        )?;
        client.etcdctl_with_input(
            &["user", "add", SECURED_USER, "--interactive=false"],
            &format!("{}\n", security.password),
        )?;
        client.etcdctl_output(&["role", "add", SECURED_USER])?;
        client.etcdctl_output(&[
            "role",
            "grant-permission",
            SECURED_USER,
            "--prefix=true",
            "readwrite",
            "/neco/",
        ])?;
        client.etcdctl_output(&["user", "grant-role", SECURED_USER, SECURED_USER])?;
        client.etcdctl_output(&["auth", "enable"])?;
        Ok(())
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let scheme = self.scheme();
        let security = self.security.as_ref();
        let member = self
            .members
            .get_mut(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no etcd member {index}")))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(Error::io(format!("opening {}", member.log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("duplicating the etcd log handle"))?;
        let client = format!("{}://127.0.0.1:{}", scheme, member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new(DEFAULT_BINARY);
        if let Some(security) = security {
            command
                .arg("--cert-file")
                .arg(&security.server.cert)
                .arg("--key-file")
                .arg(&security.server.key)
                .arg("--trusted-ca-file")
                .arg(security.pki.ca())
                .arg("--client-cert-auth");
        }
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg("100")
            .arg("--election-timeout")
            .arg("1000")
            .arg("--enable-v2=false")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        member.process = Some(ChildGuard::spawn(
            format!("etcd {}", member.name),
            &mut command,
        )?);
        Ok(())
    }

    fn wait_healthy(&mut self, index: usize) -> Result<()> {
        if self.security.is_some() {
            return self.wait_healthy_secured(index);
        }
        let member = self
            .members
            .get_mut(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no etcd member {index}")))?;
        let url = format!("http://127.0.0.1:{}/health", member.client_port);
        let log_path = member.log_path.clone();
        let Some(process) = member.process.as_mut() else {
            return Err(Error::InvalidArgument(format!(
                "etcd member {index} is not running"
            )));
        };
        process
            .wait_for_http(&url, START_TIMEOUT)
            .map_err(|e| match e {
                Error::ProcessExited { name, status, .. } => Error::ProcessExited {
                    name,
                    status,
                    output: tail(&log_path),
                },
                other => other,
            })
    }

    /// `/health` needs a client certificate here: asked with `etcdctl endpoint health`.
    fn wait_healthy_secured(&mut self, index: usize) -> Result<()> {
        let endpoint = self
            .endpoints()
            .get(index)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument(format!("no etcd member {index}")))?;
        let client = self.client().only(&endpoint);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last_error = match client.etcdctl_output(&["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            let member = &mut self.members[index];
            if let Some(process) = member.process.as_mut() {
                if let Some(status) = process.try_wait()? {
                    return Err(Error::ProcessExited {
                        name: process.name().to_owned(),
                        status: status.to_string(),
                        output: tail(&member.log_path),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("etcd {endpoint}"),
                    timeout: START_TIMEOUT,
                    last_error,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Client URLs of the members, e.g. `http://127.0.0.1:23790` (`https://` when secured).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    /// The number of members (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Kills one member by PID (SIGKILL), keeping its data for [`Self::restart_member`].
    pub fn kill_member(&mut self, index: usize) -> Result<()> {
        let member = self
            .members
            .get_mut(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no etcd member {index}")))?;
        if let Some(mut process) = member.process.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Starts a killed member again from its data directory and waits until it is healthy.
    pub fn restart_member(&mut self, index: usize) -> Result<()> {
        self.kill_member(index)?;
        self.spawn(index)?;
        self.wait_healthy(index)
    }

    /// Stops one member with SIGSTOP (a stall: it holds its connections but answers nothing)
    /// until [`Self::resume_member`]. A member still paused when the cluster drops is killed
    /// with it (SIGKILL ends a stopped process).
    pub fn pause_member(&self, index: usize) -> Result<()> {
        self.signal_member(index, rustix::process::Signal::STOP)
    }

    /// Resumes a member paused by [`Self::pause_member`] (SIGCONT).
    pub fn resume_member(&self, index: usize) -> Result<()> {
        self.signal_member(index, rustix::process::Signal::CONT)
    }

    fn signal_member(&self, index: usize, signal: rustix::process::Signal) -> Result<()> {
        let pid = self
            .pid(index)
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| Error::InvalidArgument(format!("etcd member {index} is not running")))?;
        rustix::process::kill_process(pid, signal).map_err(|e| {
            Error::InvalidArgument(format!("signal {signal:?} to etcd member {index}: {e}"))
        })
    }

    /// The PID of a running member.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members
            .get(index)
            .and_then(|m| m.process.as_ref())
            .map(ChildGuard::pid)
    }

    /// The log file of a member.
    pub fn log_path(&self, index: usize) -> Option<&Path> {
        self.members.get(index).map(|m| m.log_path.as_path())
    }

    /// The directory holding every member's data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One key as `etcdctl get -w json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// The value as text (lossy for non-UTF-8 bytes).
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is bound to, 0 for none.
    pub lease: i64,
}

#[derive(Deserialize)]
struct RawEndpointStatus {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: RawStatus,
}

#[derive(Deserialize)]
struct RawStatus {
    header: RawHeader,
    leader: u64,
}

#[derive(Deserialize)]
struct RawHeader {
    member_id: u64,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
}

#[derive(Deserialize)]
struct RawKeyValue {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: i64,
    #[serde(default)]
    mod_revision: i64,
    #[serde(default)]
    lease: i64,
}

/// `etcdctl` (API v3) against a set of endpoints, run inside a network namespace when they
/// are on the data center's private network: what tests use to read what the daemons wrote.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    netns: Option<PathBuf>,
    /// The CA and the client certificate of a TLS cluster.
    tls: Option<(PathBuf, CertPair)>,
}

impl EtcdClient {
    /// A client of `endpoints` (`http://HOST:PORT`), from the namespace at `netns` if given.
    pub fn new(endpoints: Vec<String>, netns: Option<&Path>) -> Self {
        Self {
            endpoints,
            netns: netns.map(Path::to_owned),
            tls: None,
        }
    }

    /// The same client, over TLS: the server's certificate checked against `ca`, `client` as
    /// the client's certificate.
    pub fn with_tls(mut self, ca: &Path, client: &CertPair) -> Self {
        self.tls = Some((ca.to_owned(), client.clone()));
        self
    }

    /// The endpoints it talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// An `etcdctl` command against the endpoints, with short timeouts.
    pub fn etcdctl(&self) -> Command {
        let mut command = match &self.netns {
            Some(path) => crate::network::command_in(path, ETCDCTL),
            None => Command::new(ETCDCTL),
        };
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        if let Some((ca, client)) = &self.tls {
            command
                .arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
        }
        command
    }

    /// Runs `etcdctl` with `args` and `input` on its stdin; a failure carries its stderr.
    fn etcdctl_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        self.run_etcdctl(args, Some(input))
    }

    /// Runs `etcdctl` with `args` and returns its stdout; a failure carries its stderr.
    pub fn etcdctl_output(&self, args: &[&str]) -> Result<String> {
        self.run_etcdctl(args, None)
    }

    fn run_etcdctl(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        if !Path::new(ETCDCTL).exists() {
            return Err(Error::MissingProgram {
                program: ETCDCTL.into(),
                hint: "install the Debian package etcd-client".into(),
            });
        }
        let shown = format!("etcdctl {}", args.join(" "));
        let mut child = self
            .etcdctl()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io(format!("running {shown}")))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(Error::io(format!("writing to {shown}")))?;
        }
        let output = child
            .wait_with_output()
            .map_err(Error::io(format!("waiting for {shown}")))?;
        if !output.status.success() {
            return Err(Error::ProcessExited {
                name: shown,
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The same client for one of its endpoints only.
    fn only(&self, endpoint: &str) -> Self {
        Self {
            endpoints: vec![endpoint.to_owned()],
            ..self.clone()
        }
    }

    /// The endpoint of the member that is the raft leader now, and each answering endpoint's
    /// member id. Each member is asked on its own, so that a dead one does not hide the
    /// others' answers; the leader must be a member that answers.
    pub fn leader(&self) -> Result<(String, BTreeMap<String, u64>)> {
        // All at once, with a short timeout: a powered-off member costs one timeout, not one
        // per member asked after it.
        let answers: Vec<(String, Result<String>)> = std::thread::scope(|scope| {
            let asks: Vec<_> = self
                .endpoints
                .iter()
                .map(|endpoint| {
                    let one = self.only(endpoint);
                    let ask = scope.spawn(move || {
                        one.etcdctl_output(&[
                            "--command-timeout=1s",
                            "endpoint",
                            "status",
                            "-w",
                            "json",
                        ])
                    });
                    (endpoint.clone(), ask)
                })
                .collect();
            asks.into_iter()
                .map(|(endpoint, ask)| {
                    let answer = ask.join().unwrap_or_else(|_| {
                        Err(Error::InvalidArgument("etcdctl's thread panicked".into()))
                    });
                    (endpoint, answer)
                })
                .collect()
        });
        let mut statuses = Vec::new();
        let mut failures = Vec::new();
        for (endpoint, answer) in answers {
            match answer {
                Ok(text) => {
                    let answered: Vec<RawEndpointStatus> = serde_json::from_str(&text)?;
                    statuses.extend(answered);
                }
                Err(e) => failures.push(format!("{endpoint}: {e}")),
            }
        }
        let ids: BTreeMap<String, u64> = statuses
            .iter()
            .map(|s| (s.endpoint.clone(), s.status.header.member_id))
            .collect();
        let leader_id = statuses
            .iter()
            .map(|s| s.status.leader)
            .find(|id| *id != 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "etcdctl endpoint status: no member knows a leader ({failures:?})"
                ))
            })?;
        let leader = ids
            .iter()
            .find(|(_, id)| **id == leader_id)
            .map(|(endpoint, _)| endpoint.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the leader {leader_id:x} is none of the answering {ids:x?} ({failures:?})"
                ))
            })?;
        Ok((leader, ids))
    }

    /// Makes the member at `endpoint` the raft leader (`etcdctl move-leader`, sent to the
    /// leader); nothing when it leads already.
    pub fn move_leader_to(&self, endpoint: &str) -> Result<()> {
        let (leader, ids) = self.leader()?;
        if leader == endpoint {
            return Ok(());
        }
        let target = ids.get(endpoint).ok_or_else(|| {
            Error::InvalidArgument(format!("{endpoint} is not one of {:?}", self.endpoints))
        })?;
        self.only(&leader)
            .etcdctl_output(&["move-leader", &format!("{target:x}")])
            .map(drop)
    }

    /// Every key under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.range(&["get", "--prefix", "-w", "json", prefix])
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.range(&["get", "-w", "json", key])?.into_iter().next())
    }

    fn range(&self, args: &[&str]) -> Result<Vec<KeyValue>> {
        let text = self.etcdctl_output(args)?;
        let raw: RawRange = serde_json::from_str(&text)?;
        let decode = |field: &str, text: &str| {
            base64_decode(text)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "etcdctl printed a {field} that is not base64: {text:?}"
                    ))
                })
        };
        raw.kvs
            .into_iter()
            .map(|kv| {
                Ok(KeyValue {
                    key: decode("key", &kv.key)?,
                    value: decode("value", &kv.value)?,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                })
            })
            .collect()
    }
}

impl EtcdCluster {
    /// A client of the members that run.
    pub fn client(&self) -> EtcdClient {
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect();
        let client = EtcdClient::new(endpoints, None);
        match &self.security {
            Some(security) => client.with_tls(&security.pki.ca(), &security.admin),
            None => client,
        }
    }

    /// An `etcdctl` (API v3) command against the members that run, with short timeouts.
    pub fn etcdctl(&self) -> Command {
        self.client().etcdctl()
    }

    /// Runs `etcdctl` with `args` and returns its stdout; a failure carries its stderr.
    pub fn etcdctl_output(&self, args: &[&str]) -> Result<String> {
        self.client().etcdctl_output(args)
    }

    /// Every key under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.client().get_prefix(prefix)
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.client().get(key)
    }
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
