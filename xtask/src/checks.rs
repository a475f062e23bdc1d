//! Checks of a built neco package, run by `cargo xtask ci` after building it (and by
//! `cargo xtask check-deb`): its metadata and files, lintian, an install into a temporary root
//! with the real dpkg (nothing outside the root may change, no service may be touched),
//! `systemd-analyze verify` on the installed units, and byte-identical rebuilds.
//!
//! The maintainer scripts' logic is unit-tested here too, with stand-ins for `systemctl`,
//! `deb-systemd-helper` and `deb-systemd-invoke` that only record how they were called.

use crate::deb::{self, output_of, Meta, BINARIES, UNITS, UNIT_DIR};
use anyhow::{bail, ensure, Context as _};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files every package must hold, with their modes as `dpkg-deb --contents` shows them.
const EXPECTED_FILES: [(&str, &str); 11] = [
    ("./usr/bin/neco", "-rwxr-xr-x"),
    ("./usr/sbin/neco-updater", "-rwxr-xr-x"),
    ("./usr/sbin/neco-worker", "-rwxr-xr-x"),
    ("./lib/systemd/system/neco-updater.service", "-rw-r--r--"),
    ("./lib/systemd/system/neco-worker.service", "-rw-r--r--"),
    ("./usr/share/doc/neco/copyright", "-rw-r--r--"),
    ("./usr/share/doc/neco/changelog.Debian.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/neco.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man8/neco-updater.8.gz", "-rw-r--r--"),
    ("./usr/share/man/man8/neco-worker.8.gz", "-rw-r--r--"),
    ("./usr/share/lintian/overrides/neco", "-rw-r--r--"),
];

/// Every check on `deb`.
pub fn run_all(deb: &Path, meta: &Meta) -> anyhow::Result<()> {
    check("dpkg-deb --info: metadata", || info(deb, meta))?;
    check("dpkg-deb --contents: files, modes, owners, times", || {
        contents(deb, meta.epoch)
    })?;
    check("lintian: no error, no warning", || lintian(deb))?;
    check(
        "dpkg --root: install, dpkg-query, systemd-analyze verify, remove; the host unchanged",
        || install_into_root(deb, &meta.version),
    )?;
    Ok(())
}

/// Byte-identical packaging: the staged tree packed twice, and staged again from the same
/// binaries and packed, give the sha256 of `digest`.
pub fn reproducible(
    root: &Path,
    binaries: &Path,
    meta: &Meta,
    tree: &Path,
    digest: &str,
) -> anyhow::Result<()> {
    check("reproducible: the same tree packed twice", || {
        let dir = tempfile::tempdir()?;
        for n in 1..=2 {
            let out = dir.path().join(format!("again-{n}.deb"));
            deb::build_deb(tree, &out, meta.epoch)?;
            same_digest(&out, digest)?;
        }
        Ok(())
    })?;
    check(
        "reproducible: staged again from the binaries and packed",
        || {
            let work = tempfile::Builder::new()
                .prefix("neco-deb-again-")
                .tempdir_in(deb::target_dir(root))?;
            let again = deb::stage(root, binaries, meta, work.path())?;
            let out = work.path().join("again.deb");
            deb::build_deb(&again, &out, meta.epoch)?;
            same_digest(&out, digest)
        },
    )
}

fn same_digest(file: &Path, expected: &str) -> anyhow::Result<()> {
    let bytes = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let got = fetch::sha256_digest(&bytes);
    ensure!(
        got == expected,
        "{} has {got}, the first build {expected}: the package is not reproducible",
        file.display()
    );
    Ok(())
}

fn check(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    f().with_context(|| format!("check failed: {name}"))?;
    eprintln!("  ✓ {name}");
    Ok(())
}

/// The control fields.
fn info(deb: &Path, meta: &Meta) -> anyhow::Result<()> {
    let text = output_of(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    let fields = control_fields(&text);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    ensure!(
        field("Package") == "neco",
        "Package: {:?}",
        field("Package")
    );
    ensure!(
        field("Version") == meta.version,
        "Version: {:?}, expected {:?}",
        field("Version"),
        meta.version
    );
    ensure!(
        field("Architecture") == "amd64",
        "Architecture: {:?}",
        field("Architecture")
    );
    ensure!(
        field("Maintainer") == "Cybozu <oss@cybozu.com>",
        "Maintainer: {:?}",
        field("Maintainer")
    );
    let depends = depended_packages(field("Depends"));
    ensure!(
        field("Depends").contains("libc6 (>= ")
            && depends.iter().any(|p| p == "libgcc-s1")
            && depends.iter().any(|p| p == "podman"),
        "Depends: {:?}",
        field("Depends")
    );
    ensure!(
        field("Installed-Size")
            .parse::<u64>()
            .is_ok_and(|kib| kib > 1000),
        "Installed-Size: {:?}",
        field("Installed-Size")
    );
    for member in ["postinst", "prerm", "md5sums"] {
        ensure!(
            text.lines()
                .any(|l| l.contains(" bytes,") && l.split_whitespace().any(|w| w == member)),
            "{member} is not in the control archive:\n{text}"
        );
    }
    Ok(())
}

/// `Key: value` lines of `dpkg-deb --info` (indented by one space there).
fn control_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(' '))
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// One line of `dpkg-deb --contents`.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: String,
    owner: String,
    time: String,
    path: String,
}

fn parse_contents(text: &str) -> anyhow::Result<Vec<Entry>> {
    text.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [mode, owner, _size, date, time, path] => Ok(Entry {
                    mode: (*mode).to_owned(),
                    owner: (*owner).to_owned(),
                    time: format!("{date} {time}"),
                    path: (*path).to_owned(),
                }),
                _ => bail!("unexpected dpkg-deb --contents line {line:?}"),
            }
        })
        .collect()
}

/// The files, their modes, owners and times; nothing else in the package.
fn contents(deb: &Path, epoch: i64) -> anyhow::Result<()> {
    let text = output_of(
        Command::new("dpkg-deb")
            .arg("--contents")
            .arg(deb)
            .env("TZ", "UTC"),
    )?;
    let entries = parse_contents(&text)?;
    let when = time::OffsetDateTime::from_unix_timestamp(epoch)?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let expected_time = when.format(&format)?;
    for entry in &entries {
        ensure!(entry.owner == "root/root", "{entry:?} is not owned by root");
        ensure!(
            entry.time == expected_time,
            "{entry:?}: time is not SOURCE_DATE_EPOCH ({expected_time})"
        );
        if entry.mode.starts_with('d') {
            ensure!(entry.mode == "drwxr-xr-x", "{entry:?}");
            continue;
        }
        let expected = EXPECTED_FILES.iter().find(|(p, _)| *p == entry.path);
        let subcommand_page =
            entry.path.starts_with("./usr/share/man/man1/neco-") && entry.path.ends_with(".1.gz");
        match expected {
            Some((_, mode)) => ensure!(&entry.mode == mode, "{entry:?}: expected mode {mode}"),
            None if subcommand_page => ensure!(entry.mode == "-rw-r--r--", "{entry:?}"),
            None => bail!("unexpected file in the package: {entry:?}"),
        }
    }
    for (path, _) in EXPECTED_FILES {
        ensure!(
            entries.iter().any(|e| e.path == path),
            "{path} is missing from the package"
        );
    }
    Ok(())
}

fn lintian(deb: &Path) -> anyhow::Result<()> {
    let output = Command::new("lintian")
        .args(["--display-info", "--fail-on", "error,warning"])
        .arg(deb)
        .output()
        .context("cannot run lintian")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in text.lines() {
        eprintln!("    lintian: {line}");
    }
    ensure!(
        output.status.success(),
        "lintian failed ({}): see its tags above",
        output.status
    );
    ensure!(
        !text
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "lintian reported errors or warnings"
    );
    Ok(())
}

/// Stand-ins for the service tools that log their arguments to `$NECO_FAKE_LOG`.
struct FakeServiceTools {
    dir: tempfile::TempDir,
}

impl FakeServiceTools {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        for tool in ["systemctl", "deb-systemd-helper", "deb-systemd-invoke"] {
            let path = dir.path().join(tool);
            fs::write(
                &path,
                format!("#!/bin/sh\necho \"{tool} $*\" >> \"$NECO_FAKE_LOG\"\n"),
            )?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        Ok(Self { dir })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Every call so far, one per line.
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// `PATH` with the stand-ins first.
    fn path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
        format!("{}:{rest}:/usr/sbin:/sbin", self.dir.path().display())
    }

    fn apply(&self, command: &mut Command) {
        command
            .env("PATH", self.path())
            .env("NECO_FAKE_LOG", self.log_path());
    }
}

/// What on the host an install of neco would change, to compare before and after.
fn host_state() -> anyhow::Result<Vec<String>> {
    let mut state = Vec::new();
    let status = fs::read("/var/lib/dpkg/status").context("cannot read the host's dpkg status")?;
    state.push(format!("dpkg status {}", fetch::sha256_digest(&status)));
    let mut paths = vec![
        "/etc/systemd/system/multi-user.target.wants/neco-updater.service".to_owned(),
        "/etc/systemd/system/multi-user.target.wants/neco-worker.service".to_owned(),
        "/var/lib/systemd/deb-systemd-helper-enabled/neco-worker.service.dsh-also".to_owned(),
        "/var/lib/systemd/deb-systemd-helper-enabled/neco-updater.service.dsh-also".to_owned(),
        "/var/lib/dpkg/info/neco.list".to_owned(),
        "/etc/neco".to_owned(),
    ];
    for (name, dir) in BINARIES {
        paths.push(format!("/{dir}/{name}"));
    }
    for unit in UNITS {
        paths.push(format!("/{UNIT_DIR}/{unit}"));
    }
    for path in paths {
        state.push(format!(
            "{path} {}",
            if Path::new(&path).exists() {
                "exists"
            } else {
                "absent"
            }
        ));
    }
    Ok(state)
}

/// The packages of a `Depends:` value (first alternative of each).
fn depended_packages(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A dpkg database under `root` in which the package's dependencies are installed (copied
/// from the host's), as on a boot server.
fn prepare_root(root: &Path, deb: &Path) -> anyhow::Result<()> {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::create_dir_all(root.join("var/log"))?;
    let depends = output_of(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg("Depends"),
    )?;
    let mut status = String::new();
    for package in depended_packages(&depends) {
        let stanza = output_of(Command::new("dpkg-query").args(["--status", &package]))
            .with_context(|| format!("the host has no {package} to copy into the test root"))?;
        status.push_str(stanza.trim_end());
        status.push_str("\n\n");
    }
    fs::write(admin.join("status"), status)?;
    fs::write(admin.join("available"), "")?;
    Ok(())
}

fn dpkg(root: &Path, fakes: &FakeServiceTools, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root"])
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    fakes.apply(&mut command);
    output_of(&mut command).map(drop)
}

fn install_into_root(deb: &Path, version: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    prepare_root(root, deb)?;
    let fakes = FakeServiceTools::new()?;
    let before = host_state()?;

    dpkg(root, &fakes, &["--install".as_ref(), deb.as_os_str()])?;

    let query = output_of(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${db:Status-Status} ${Version}", "neco"]),
    )?;
    ensure!(
        query == format!("installed {version}"),
        "dpkg-query under the root: {query:?}, expected installed {version}"
    );
    for (name, dir) in BINARIES {
        let path = root.join(dir).join(name);
        let version_output = output_of(Command::new(&path).arg("--version"))?;
        ensure!(
            version_output.trim() == format!("{name} {version}"),
            "{} --version: {version_output:?}",
            path.display()
        );
    }
    ensure!(
        fakes.calls().is_empty(),
        "the maintainer scripts touched services although DPKG_ROOT was set: {:?}",
        fakes.calls()
    );
    verify_units(root)?;

    dpkg(root, &fakes, &["--remove".as_ref(), "neco".as_ref()])?;
    ensure!(
        !root.join("usr/bin/neco").exists(),
        "usr/bin/neco is still there after dpkg --remove"
    );
    ensure!(
        fakes.calls().is_empty(),
        "prerm touched services although DPKG_ROOT was set: {:?}",
        fakes.calls()
    );
    let after = host_state()?;
    ensure!(
        before == after,
        "the host changed: before {before:?}, after {after:?}"
    );
    Ok(())
}

/// `systemd-analyze verify` on the installed units, resolved inside the root (their
/// `ExecStart` binaries are there). The targets and slices units depend on are copied from the
/// host into the root, which is thrown away afterwards.
fn verify_units(root: &Path) -> anyhow::Result<()> {
    let units = root.join(UNIT_DIR);
    for host_dir in ["/lib/systemd/system", "/usr/lib/systemd/system"] {
        let Ok(entries) = fs::read_dir(host_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_text = name.to_string_lossy();
            let wanted = name_text.ends_with(".target") || name_text.ends_with(".slice");
            let dest = units.join(&name);
            if wanted && !dest.exists() && entry.path().is_file() {
                fs::copy(entry.path(), &dest)?;
            }
        }
    }
    let mut command = Command::new("systemd-analyze");
    command
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()));
    for unit in UNITS {
        command.arg(format!("/{UNIT_DIR}/{unit}"));
    }
    let output = command.output().context("cannot run systemd-analyze")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && !stderr.contains("neco-"),
        "systemd-analyze verify ({}): {}",
        output.status,
        stderr.trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../debian")
            .join(name);
        fs::read_to_string(path).unwrap()
    }

    /// Runs a maintainer script with the stand-in tools; `systemd_running` decides whether
    /// the directory the script tests for systemd exists (the script is run from a copy that
    /// looks for it in a temporary directory instead of /run/systemd/system).
    fn run_script(
        name: &str,
        args: &[&str],
        systemd_running: bool,
        dpkg_root: Option<&str>,
    ) -> (bool, Vec<String>) {
        run_script_with(name, args, systemd_running, dpkg_root, &[])
    }

    fn run_script_with(
        name: &str,
        args: &[&str],
        systemd_running: bool,
        dpkg_root: Option<&str>,
        env: &[(&str, &str)],
    ) -> (bool, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run-systemd-system");
        if systemd_running {
            fs::create_dir(&run_dir).unwrap();
        }
        let text = script(name);
        assert!(text.contains("/run/systemd/system"));
        let copy = dir.path().join(name);
        fs::write(
            &copy,
            text.replace("/run/systemd/system", &run_dir.display().to_string()),
        )
        .unwrap();
        let fakes = FakeServiceTools::new().unwrap();
        let mut command = Command::new("sh");
        command
            .arg(&copy)
            .args(args)
            .env_remove("DPKG_ROOT")
            .env_remove("NECO_SELF_UPDATE")
            .envs(env.iter().copied());
        if let Some(root) = dpkg_root {
            command.env("DPKG_ROOT", root);
        }
        fakes.apply(&mut command);
        let status = command.status().unwrap();
        (status.success(), fakes.calls())
    }

    #[test]
    fn postinst_enables_and_restarts_only_on_a_running_systemd_without_dpkg_root() {
        let expected = [
            "systemctl --system daemon-reload",
            "deb-systemd-helper unmask neco-updater.service",
            "deb-systemd-helper enable neco-updater.service",
            "deb-systemd-helper unmask neco-worker.service",
            "deb-systemd-helper enable neco-worker.service",
            "deb-systemd-invoke restart neco-updater.service neco-worker.service",
        ];
        for args in [
            &["configure", "2026.11.25-1"][..],
            &["configure"],
            &["abort-upgrade", "1"],
        ] {
            assert_eq!(
                run_script("postinst", args, true, None),
                (true, expected.iter().map(|s| (*s).to_owned()).collect()),
                "{args:?}"
            );
        }
        assert_eq!(
            run_script("postinst", &["configure"], true, Some("/srv/boot-0")),
            (true, vec![])
        );
        assert_eq!(
            run_script("postinst", &["configure"], false, None),
            (true, vec![])
        );
        // An empty DPKG_ROOT is the host itself.
        assert!(!run_script("postinst", &["configure"], true, Some(""))
            .1
            .is_empty());
        assert!(!run_script("postinst", &["bogus"], true, None).0);
        // A self-update: the worker waiting for dpkg is left alone (started if it was not
        // running), the updater restarted.
        assert_eq!(
            run_script_with(
                "postinst",
                &["configure", "2026.11.25-1"],
                true,
                None,
                &[("NECO_SELF_UPDATE", "1")]
            ),
            (
                true,
                expected[..5]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain([
                        "deb-systemd-invoke restart neco-updater.service".to_owned(),
                        "deb-systemd-invoke start neco-worker.service".to_owned(),
                    ])
                    .collect()
            )
        );
    }

    #[test]
    fn prerm_stops_on_remove_and_deconfigure_only_on_a_running_systemd_without_dpkg_root() {
        let stop = "deb-systemd-invoke stop neco-worker.service neco-updater.service".to_owned();
        // An upgrade leaves the services alone: the new postinst restarts them, and a worker
        // that self-updates must not be stopped while it waits for dpkg.
        assert_eq!(
            run_script("prerm", &["upgrade", "2026.11.27-1"], true, None),
            (true, vec![])
        );
        assert_eq!(
            run_script("prerm", &["deconfigure"], true, None),
            (true, vec![stop.clone()])
        );
        assert_eq!(
            run_script("prerm", &["remove"], true, None),
            (
                true,
                vec![
                    stop,
                    "deb-systemd-helper disable neco-worker.service".to_owned(),
                    "deb-systemd-helper disable neco-updater.service".to_owned(),
                ]
            )
        );
        for (running, root) in [(true, Some("/srv/boot-0")), (false, None)] {
            for args in [&["remove"][..], &["upgrade", "1"]] {
                assert_eq!(
                    run_script("prerm", args, running, root),
                    (true, vec![]),
                    "{args:?}"
                );
            }
        }
        assert_eq!(
            run_script("prerm", &["failed-upgrade", "1"], true, None),
            (true, vec![])
        );
        assert!(!run_script("prerm", &["bogus"], true, None).0);
    }

    #[test]
    fn maintainer_scripts_are_strict_posix_shell() {
        for name in ["postinst", "prerm"] {
            let text = script(name);
            assert!(text.starts_with("#!/bin/sh\n"), "{name}");
            assert!(text.contains("\nset -e\n"), "{name}");
            let status = Command::new("sh")
                .arg("-n")
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../debian")
                        .join(name),
                )
                .status()
                .unwrap();
            assert!(status.success(), "{name}: sh -n");
        }
    }

    #[test]
    fn units_restart_as_the_daemons_exit() {
        let worker = script("neco-worker.service");
        for line in [
            "ConditionPathExists=/etc/neco/config.toml",
            "ExecStart=/usr/sbin/neco-worker",
            "Restart=on-failure",
            "RestartForceExitStatus=10",
            "RestartPreventExitStatus=2",
            "StartLimitBurst=30",
        ] {
            assert!(
                worker.lines().any(|l| l == line),
                "neco-worker.service: {line}"
            );
        }
        let updater = script("neco-updater.service");
        for line in [
            "ConditionPathExists=/etc/neco/config.toml",
            "ExecStart=/usr/sbin/neco-updater",
            "Restart=on-failure",
            "RestartPreventExitStatus=2",
        ] {
            assert!(
                updater.lines().any(|l| l == line),
                "neco-updater.service: {line}"
            );
        }
    }

    #[test]
    fn contents_lines_and_dependencies_parse() {
        let entries = parse_contents(
            "drwxr-xr-x root/root         0 2026-11-26 08:01 ./\n-rwxr-xr-x root/root  15000000 2026-11-26 08:01 ./usr/bin/neco\n",
        )
        .unwrap();
        assert_eq!(entries[1].path, "./usr/bin/neco");
        assert_eq!(entries[1].time, "2026-11-26 08:01");
        assert!(parse_contents("garbage\n").is_err());
        assert_eq!(
            depended_packages("libc6 (>= 2.34), libgcc-s1 (>= 4.2) | libgcc1, foo:any"),
            vec!["libc6", "libgcc-s1", "foo"]
        );
        let fields = control_fields(" new Debian package, version 2.0.\n Package: neco\n Version: 1-1\n Description: x\n  more\n");
        assert_eq!(fields.get("Package").map(String::as_str), Some("neco"));
        assert_eq!(fields.get("Version").map(String::as_str), Some("1-1"));
    }
}
