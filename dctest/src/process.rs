//! Processes started by tests: free loopback ports, a guard that kills a child by PID on drop,
//! and waiting for an HTTP server to answer.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::LoopbackUrl;
use crate::{Error, Result};

/// How often [`wait_for_http`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one connection attempt of [`wait_for_http`].
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and releasing it, so another process may take it
/// before the caller binds it: callers that start a server on it retry on "address in use".
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io("bind 127.0.0.1:0"))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("read the address of a bound socket"))?;
    Ok(addr.port())
}

/// Waits until an HTTP server at `url` (loopback only) answers with any status line.
///
/// Polls with a hand-written HTTP/1.0 `GET` over a plain TCP connection; any response whose first
/// line starts with `HTTP/` counts, whatever the status.
pub fn wait_for_http(url: &str, timeout: Duration) -> Result<()> {
    wait_for_http_while(url, timeout, || Ok(()))
}

/// Like [`wait_for_http`], but calls `check` before every attempt and stops with its error.
fn wait_for_http_while(
    url: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let target = LoopbackUrl::parse(url)?;
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        let last_error = match probe_http(&target) {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: url.to_owned(),
                timeout,
                last_error,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Sends one `GET` and reads the status line.
fn probe_http(target: &LoopbackUrl) -> std::io::Result<()> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in &target.addrs {
        match probe_addr(target, addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn probe_addr(target: &LoopbackUrl, addr: &std::net::SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: dctest\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while head.len() < 5 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    if head.starts_with(b"HTTP/") {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP status line: {:?}",
                String::from_utf8_lossy(&head)
            ),
        ))
    }
}

/// Runs `command` to completion like [`Command::output`] (stdin null, stdout and stderr
/// captured), but kills it by PID when it runs longer than `timeout`.
pub fn output_with_timeout(command: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("spawn {shown}")))?;
    // Read both pipes on their own threads, so a chatty child never blocks on a full pipe.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                // What was read before an error is still worth showing.
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(Error::io(format!("wait for {shown}")))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            // Ignore a kill error: the process may have exited in between.
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            return Err(Error::Timeout {
                what: shown,
                timeout,
                last_error: format!(
                    "killed; its stderr: {}",
                    String::from_utf8_lossy(&stderr).trim()
                ),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs `command` with [`output_with_timeout`]; a non-zero exit is an error carrying its
/// stderr. Returns the output.
pub fn run_ok(command: &mut Command, timeout: Duration) -> Result<Output> {
    let output = output_with_timeout(command, timeout)?;
    if !output.status.success() {
        return Err(Error::ProcessExited {
            name: format!("{command:?}"),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// A child process that is killed (SIGKILL, by its PID) and waited for when the guard is dropped,
/// also when the test that owns it panics.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Takes ownership of an already spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            status: None,
        }
    }

    /// Spawns `command` and guards the child.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self> {
        let name = name.into();
        let child = command
            .spawn()
            .map_err(Error::io(format!("spawn {name} ({command:?})")))?;
        Ok(Self::new(name, child))
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The guarded child, e.g. to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Returns the exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(Error::io(format!("check whether {} exited", self.name)))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Kills the process with SIGKILL (unless it already exited) and waits for it.
    ///
    /// Calling it again returns the same status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // Ignore a kill error: the process may have exited in between; wait tells.
        let kill_result = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(Error::io(format!("wait for {} after kill", self.name)))?;
        if let Err(e) = kill_result {
            eprintln!("dctest: kill {} (pid {}): {e}", self.name, self.child.id());
        }
        self.status = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit; then kills it (SIGKILL).
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // The process may have exited in between; waiting tells.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill(),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until `url` answers HTTP (see [`wait_for_http`]), failing early when the process
    /// exits.
    pub fn wait_for_http(&mut self, url: &str, timeout: Duration) -> Result<()> {
        wait_for_http_while(url, timeout, || match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(Error::ProcessExited {
                name: self.name.clone(),
                status: status.to_string(),
                output: String::new(),
            }),
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("dctest: stopping {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        // Another thread (a parallel test, or a child between fork and exec holding a copy of
        // the socket) may take the port in between: that race is documented, so allow retries.
        let bound = (0..5).any(|_| {
            let port = free_port().expect("free port");
            assert_ne!(port, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        assert!(bound, "no port from free_port could be bound in 5 tries");
    }

    #[test]
    fn guard_kills_on_drop() {
        let guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("60")).expect("spawn");
        let pid = guard.pid();
        drop(guard);
        // The process was waited for, so its PID no longer exists in /proc.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn guard_kills_when_the_owner_panics() {
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let outcome = std::thread::spawn(move || {
            let guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("60")).expect("spawn");
            pid_tx.send(guard.pid()).expect("send pid");
            panic!("a failing test (expected panic)");
        })
        .join();
        assert!(outcome.is_err());
        let pid = pid_rx.recv().expect("pid");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn guard_kill_is_idempotent() {
        let mut guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("60")).expect("spawn");
        assert!(guard.is_running());
        let first = guard.kill().expect("kill");
        let second = guard.kill().expect("kill again");
        assert_eq!(first, second);
        assert!(!guard.is_running());
    }

    #[test]
    fn output_with_timeout_captures_and_kills() {
        let output = output_with_timeout(
            Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect("run");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
        let started = Instant::now();
        let err = output_with_timeout(
            Command::new("/bin/sh").args(["-c", "echo waiting >&2; exec sleep 60"]),
            Duration::from_millis(300),
        )
        .expect_err("too slow");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("waiting"), "{err}");
    }

    #[test]
    fn wait_for_http_times_out_on_closed_port() {
        let port = free_port().expect("free port");
        let err = wait_for_http(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(200),
        )
        .expect_err("nothing listens");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn wait_for_http_refuses_other_hosts() {
        let err = wait_for_http("http://192.0.2.1/", Duration::from_millis(10))
            .expect_err("not loopback");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    }

    #[test]
    fn wait_for_http_accepts_any_status_line() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            stream
                .write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
                .expect("write");
        });
        wait_for_http(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5)).expect("up");
        server.join().expect("server thread");
    }
}
