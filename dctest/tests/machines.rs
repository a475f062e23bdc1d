//! The machine fixtures themselves: two machines booted with systemd as PID 1 on the private
//! network, reaching each other and the bridge's namespace; units, journals and faults; and
//! nothing left behind after drop. And the mirror's images run in a machine by podman, each
//! answering its own repository and tag.

use std::io::{Read as _, Write as _};
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dctest::machine::{layers_dir, sweep_leftovers};
use dctest::service_elf::{http_response, service_body};
use dctest::{service_port, write_oci_layout, BaseImage, Lan, Machine};

/// The tests boot machines one test at a time (a machine's boot takes a core for seconds).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `bash`'s /dev/tcp from inside a machine: connects to `addr`, sends a line, prints what
/// comes back; gives up after 3 s.
fn talk(machine: &Machine, addr: SocketAddrV4) -> dctest::Result<std::process::Output> {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && echo ping >&3 && cat <&3",
        addr.ip(),
        addr.port()
    );
    machine.exec(&["timeout", "3", "bash", "-c", &script])
}

/// Serves one line (`reply`) to every connection on `listener`, from a thread of its own.
fn serve(listener: std::net::TcpListener, reply: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply.as_bytes());
        }
    });
}

#[test]
fn machines_boot_talk_fail_and_vanish() -> dctest::Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    sweep_leftovers();
    let base = BaseImage::ensure()?;
    let layers = layers_dir()?;
    let lan = Lan::create()?;
    let prefix = lan.prefix().to_owned();
    let mut m0 = Machine::create(&base, &lan, layers.path(), "m0", 0)?;
    let mut m1 = Machine::create(&base, &lan, layers.path(), "m1", 1)?;
    let started = Instant::now();
    m0.start()?;
    m1.start()?;
    m0.wait_running(Duration::from_secs(60))?;
    m1.wait_running(Duration::from_secs(60))?;
    eprintln!(
        "two machines booted in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // systemd is PID 1, the hostname and the address are the machine's own.
    assert_eq!(m0.exec_ok(&["cat", "/proc/1/comm"])?.trim(), "systemd");
    assert_eq!(m1.exec_ok(&["hostname"])?.trim(), "m1");
    let addrs = m0.exec_ok(&["ip", "-4", "-brief", "addr", "show", "host0"])?;
    assert!(addrs.contains("10.123.0.10/24"), "{addrs}");
    let routes = m0.exec_ok(&["ip", "route"])?;
    assert!(!routes.contains("default"), "no route out: {routes}");

    // A listener in the bridge's namespace (as the stand-ins are) and one in m1's namespace.
    let (gateway, gateway_addr) = lan.bind("probe")?;
    serve(gateway, "from the bridge\n");
    let std::net::SocketAddr::V4(gateway_addr) = gateway_addr else {
        panic!("an IPv4 address: {gateway_addr}");
    };
    let m1_listener = m1.netns().bind(SocketAddrV4::new(m1.address(), 0))?;
    let m1_addr = match m1_listener.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => a,
        other => panic!("an IPv4 address: {other:?}"),
    };
    serve(m1_listener, "from m1\n");
    let out = talk(&m0, gateway_addr)?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the bridge\n");
    let out = talk(&m0, m1_addr)?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from m1\n");

    // A cut link: m0 reaches nothing; healed, it does again.
    lan.cut(0)?;
    let out = talk(&m0, gateway_addr)?;
    assert!(
        !out.status.success(),
        "m0 was cut off but reached the bridge"
    );
    assert!(
        talk(&m1, gateway_addr)?.status.success(),
        "m1 is still connected"
    );
    lan.heal(0)?;
    let healed = Instant::now();
    loop {
        if talk(&m0, gateway_addr)?.status.success() {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "m0 never reconnected"
        );
    }

    // Units: a transient service, its state, a kill through systemd and the journal of it.
    m0.exec_ok(&[
        "systemd-run",
        "--unit=dctest-probe",
        "--property=Restart=on-failure",
        "--property=RestartSec=100ms",
        "sleep",
        "infinity",
    ])?;
    let state = m0.unit_state("dctest-probe.service")?;
    assert!(state.is_running(), "{state:?}");
    let first_pid = state.main_pid;
    m0.kill_unit("dctest-probe.service", "SIGKILL")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        let state = m0.unit_state("dctest-probe.service")?;
        if state.is_running() && state.main_pid != first_pid {
            break state;
        }
        assert!(Instant::now() < deadline, "never restarted: {state:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(restarted.restarts, 1);
    let journal = m0.journal("dctest-probe.service")?;
    assert!(
        journal.contains("Main process exited, code=killed, status=9/KILL"),
        "{journal}"
    );

    // Power off (a clean halt) and boot again; kill (SIGKILL, no halt).
    let leader = m1.leader();
    m1.power_off()?;
    assert!(!m1.is_running());
    assert!(leader.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()));
    m1.boot()?;
    assert_eq!(m1.exec_ok(&["hostname"])?.trim(), "m1");
    let leader = m1.leader();
    m1.kill()?;
    assert!(!m1.is_running());
    // Its PID 1 (and so every process of the machine) is gone, not orphaned.
    let deadline = Instant::now() + Duration::from_secs(5);
    while leader.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leader.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
        "the killed machine's systemd {leader:?} still runs"
    );
    assert!(
        m1.exec(&["true"]).is_err(),
        "no commands in a killed machine"
    );

    // Everything is gone after drop.
    let layer_dir = layers.path().to_owned();
    drop(m0);
    drop(m1);
    drop(lan);
    drop(layers);
    let namespaces = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(namespaces.is_empty(), "left behind: {namespaces:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&*layer_dir.to_string_lossy()),
        "mounts left behind"
    );
    assert!(!layer_dir.exists());
    Ok(())
}

/// `GET /` of `addr` from the bridge's namespace (a client on the network).
fn http_get(lan: &Lan, addr: SocketAddrV4) -> dctest::Result<String> {
    lan.bridge().http_get(addr, Duration::from_secs(20))
}

#[test]
fn mirror_images_run_in_podman_and_answer_their_repository_and_tag() -> dctest::Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    sweep_leftovers();
    let base = BaseImage::ensure()?;
    let layers = layers_dir()?;
    let lan = Lan::create()?;
    let mut machine = Machine::create(&base, &lan, layers.path(), "images", 0)?;
    // Three images as OCI layouts, as the worker's step 1 leaves them: two tags of one
    // repository and another repository.
    let images = [
        ("etcd-old", "cybozu/etcd", "3.5.15.1"),
        ("etcd-new", "cybozu/etcd", "3.5.16.1"),
        ("vault", "cybozu/vault", "1.18.1.1"),
    ];
    for (dir, repository, tag) in images {
        write_oci_layout(
            &machine.root().join("var/lib/dctest/images").join(dir),
            repository,
            tag,
        )?;
    }
    machine.boot()?;
    // Under the machine's systemd, as step 3's units run them (not from `nsenter`, which
    // would miss what systemd-nspawn imposes on the machine's services, such as its seccomp
    // filter).
    let run = |name: &str, dir: &str, tag: &str| {
        machine.exec_ok(&[
            "systemd-run",
            "--quiet",
            "--collect",
            &format!("--unit=dctest-{dir}"),
            "podman",
            "run",
            "--rm",
            &format!("--name={name}"),
            "--network=host",
            "--pull=never",
            &format!("oci:/var/lib/dctest/images/{dir}:{tag}"),
            // What the units pass after the image: the program ignores it.
            "--name",
            "boot-0",
        ])
    };
    let etcd = SocketAddrV4::new(machine.address(), service_port("cybozu/etcd"));
    let vault = SocketAddrV4::new(machine.address(), service_port("cybozu/vault"));
    assert_ne!(etcd.port(), vault.port());

    // The answer at `addr` of the service run by the transient unit of `dir`; without one,
    // the failure shows that unit's state and journal.
    let answer = |addr: SocketAddrV4, dir: &str| -> String {
        http_get(&lan, addr).unwrap_or_else(|e| {
            let unit = format!("dctest-{dir}.service");
            panic!(
                "{e}\n{unit}: {:?}\n{}",
                machine.unit_state(&unit),
                machine.journal(&unit).unwrap_or_else(|e| e.to_string())
            )
        })
    };

    // One after the other, as a first podman run initialises the machine's storage.
    run("etcd", "etcd-old", "3.5.15.1")?;
    assert_eq!(
        answer(etcd, "etcd-old"),
        http_response(&service_body("cybozu/etcd", "3.5.15.1"))
    );
    run("vault", "vault", "1.18.1.1")?;
    assert!(answer(etcd, "etcd-old").ends_with("\r\n\r\ncybozu/etcd:3.5.15.1\n"));
    assert!(answer(vault, "vault").ends_with("\r\n\r\ncybozu/vault:1.18.1.1\n"));

    // podman stop's SIGTERM ends the program at once (it is PID 1 of its container).
    let stopping = Instant::now();
    machine.exec_ok(&["podman", "stop", "etcd"])?;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "podman stop took {:?}",
        stopping.elapsed()
    );

    // `--rm` removes the stopped container, after `podman stop` returned (podman's cleanup
    // process does it): until then its name is taken. (Step 3's units run `podman rm
    // --force` before they start for this reason.)
    let removing = Instant::now();
    while machine
        .exec(&["podman", "container", "exists", "etcd"])?
        .status
        .success()
    {
        assert!(
            removing.elapsed() < Duration::from_secs(20),
            "podman run --rm did not remove the stopped container etcd"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The other tag of the repository, on the same port, answers its own tag.
    run("etcd", "etcd-new", "3.5.16.1")?;
    let new = answer(etcd, "etcd-new");
    assert!(new.ends_with("\r\n\r\ncybozu/etcd:3.5.16.1\n"), "{new}");
    assert!(!new.contains("3.5.15.1"), "{new}");
    assert!(answer(vault, "vault").ends_with("\r\n\r\ncybozu/vault:1.18.1.1\n"));
    Ok(())
}
