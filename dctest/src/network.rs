//! The private network of the machines: network namespaces made by the test, a bridge in a
//! namespace of the test's own, and one veth pair per machine.
//!
//! ```text
//!   namespace <prefix>-lan                          namespace <prefix>-m0 (machine 0)
//!   br0 10.123.0.1/24 ── vm0 ═══════ veth ═══════ host0 10.123.0.10/24
//!        │   └ the stand-ins listen here            namespace <prefix>-m1 (machine 1)
//!        └──────────── vm1 ═══════ veth ═══════ host0 10.123.0.11/24
//! ```
//!
//! The subnet exists only inside these namespaces: no namespace has a default route and
//! nothing is forwarded to the host's network, whose interfaces, routes and `/etc` are never
//! touched. Everything is created with `ip` under names that start with a prefix unique to
//! the process and the network ([`Lan::prefix`]) and deleted on drop, also when a test
//! panics.
//!
//! A thread enters a namespace with `setns(2)` ([`NetNs::run`]); a listening socket bound
//! there stays in that namespace when the thread returns, so the in-process stand-ins serve
//! the machines from the bridge's namespace ([`Lan::bind`]) while the host's own interfaces
//! stay untouched.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::run_ok;
use crate::{Error, Result};

/// The private /24 of every [`Lan`]: each lives in namespaces of its own, so two data centers
/// of two tests never see each other although they use the same addresses.
pub const SUBNET: [u8; 3] = [10, 123, 0];
/// The host part of the bridge's address (where the stand-ins listen).
pub const GATEWAY_HOST: u8 = 1;
/// The host part of machine 0's address; machine `i` has `FIRST_MACHINE_HOST + i`.
pub const FIRST_MACHINE_HOST: u8 = 10;
/// The name of the bridge inside the bridge's namespace.
const BRIDGE: &str = "br0";
/// The name of a machine's interface inside its namespace (systemd-nspawn's own convention).
const MACHINE_IF: &str = "host0";
/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add` and deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates the namespace `name` (`/run/netns/<name>`) with its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        run_ok(Command::new("ip").args(["netns", "add", name]), IP_TIMEOUT)?;
        let ns = Self {
            name: name.to_owned(),
            path: Path::new("/run/netns").join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns` and `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `systemd-nspawn --network-namespace-path` and `nsenter --net`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n <name> ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run_ok(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            IP_TIMEOUT,
        )
        .map(drop)
    }

    /// A command that runs `program` in this namespace (`nsenter --net=<path> -- program`);
    /// the process it starts is the program itself, so its PID is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.path, program)
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets
    /// made by `f` (and by threads it starts) belong to this namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| -> Result<T> {
                let file = std::fs::File::open(&self.path)
                    .map_err(Error::io(format!("open {}", self.path.display())))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| Error::Io {
                    context: format!("enter the network namespace {}", self.name),
                    source: e.into(),
                })?;
                Ok(f())
            });
            thread.join().map_err(|_| Error::Server {
                name: format!("thread in the network namespace {}", self.name),
                message: "panicked".into(),
            })?
        })
    }

    /// Binds a TCP listener on `addr` inside this namespace.
    pub fn bind(&self, addr: SocketAddrV4) -> Result<TcpListener> {
        self.run(|| TcpListener::bind(addr))?
            .map_err(Error::io(format!("bind {addr} in {}", self.name)))
    }

    /// `GET /` of `addr` from this namespace over HTTP/1.0, retried until it answers or
    /// `timeout` passed; returns the whole response (status line, headers and body).
    pub fn http_get(&self, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.run(|| -> std::io::Result<String> {
                let mut stream =
                    TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(b"GET / HTTP/1.0\r\nHost: dctest\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            })?;
            match attempt {
                Ok(answer) => return Ok(answer),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        what: format!("an answer of http://{addr}/ in {}", self.name),
                        timeout,
                        last_error: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits until something accepts TCP connections on `addr`, as seen from this namespace.
    pub fn wait_for_port(&self, addr: SocketAddrV4, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.run(|| {
                TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_millis(500))
            })?;
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        what: format!("{addr} in {}", self.name),
                        timeout,
                        last_error: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ok(
            Command::new("ip").args(["netns", "delete", &self.name]),
            IP_TIMEOUT,
        ) {
            eprintln!("dctest: deleting the network namespace {}: {e}", self.name);
        }
    }
}

/// A command that runs `program` in the network namespace at `path` (`nsenter --net=PATH --
/// program`), for holders of a namespace's path rather than of the [`NetNs`].
pub fn command_in(path: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", path.display()))
        .arg("--")
        .arg(program);
    command
}

/// The private network: the bridge's namespace and the machines' namespaces attached to it.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    bridge: NetNs,
}

impl Lan {
    /// Creates the bridge's namespace with `br0` at [`Lan::gateway`].
    pub fn create() -> Result<Self> {
        let prefix = format!(
            "dct{}-{}",
            std::process::id(),
            NEXT_LAN.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = NetNs::create(&format!("{prefix}-lan"))?;
        bridge.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        bridge.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::address(GATEWAY_HOST)),
            "dev",
            BRIDGE,
        ])?;
        bridge.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Self { prefix, bridge })
    }

    /// `10.123.0.<host>`.
    pub fn address(host: u8) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
    }

    /// The address of machine `index` (`10.123.0.10 + index`).
    pub fn machine_address(index: u8) -> Ipv4Addr {
        Self::address(FIRST_MACHINE_HOST.saturating_add(index))
    }

    /// The bridge's address, where the stand-ins listen.
    pub fn gateway(&self) -> Ipv4Addr {
        Self::address(GATEWAY_HOST)
    }

    /// The prefix of every name this network created (`dct<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's namespace.
    pub fn bridge(&self) -> &NetNs {
        &self.bridge
    }

    /// Binds a listener on the gateway address with a port chosen by the kernel.
    pub fn bind(&self, name: &str) -> Result<(TcpListener, SocketAddr)> {
        let listener = self
            .bridge
            .bind(SocketAddrV4::new(self.gateway(), 0))
            .map_err(|e| Error::Server {
                name: name.to_owned(),
                message: e.to_string(),
            })?;
        let addr = listener
            .local_addr()
            .map_err(Error::io(format!("read the address of {name}")))?;
        Ok((listener, addr))
    }

    /// Creates the namespace of machine `index`, joined to the bridge by a veth pair, with
    /// the address [`Lan::machine_address`] on its `host0`.
    pub fn attach(&self, index: u8) -> Result<NetNs> {
        let ns = NetNs::create(&format!("{}-m{index}", self.prefix))?;
        let port = Self::port_name(index);
        // Created inside the bridge's namespace and moved into the machine's at once: no
        // interface ever appears in the host's namespace.
        self.bridge.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            MACHINE_IF,
            "netns",
            ns.name(),
        ])?;
        self.bridge.ip(&["link", "set", &port, "master", BRIDGE])?;
        self.bridge.ip(&["link", "set", &port, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::machine_address(index)),
            "dev",
            MACHINE_IF,
        ])?;
        ns.ip(&["link", "set", MACHINE_IF, "up"])?;
        Ok(ns)
    }

    /// Cuts machine `index` off the network (its bridge port goes down).
    pub fn cut(&self, index: u8) -> Result<()> {
        self.bridge
            .ip(&["link", "set", &Self::port_name(index), "down"])
    }

    /// Reconnects machine `index`.
    pub fn heal(&self, index: u8) -> Result<()> {
        self.bridge
            .ip(&["link", "set", &Self::port_name(index), "up"])
    }

    fn port_name(index: u8) -> String {
        format!("vm{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(Lan::machine_address(0), Ipv4Addr::new(10, 123, 0, 10));
        assert_eq!(Lan::machine_address(3), Ipv4Addr::new(10, 123, 0, 13));
        assert_eq!(Lan::address(GATEWAY_HOST), Ipv4Addr::new(10, 123, 0, 1));
    }
}
