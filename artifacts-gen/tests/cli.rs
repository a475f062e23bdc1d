//! The `artifacts-gen` binary against real loopback servers of `dctest`, each run in a
//! temporary directory with its own artifacts.toml and generated directory.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use artifacts_gen::generated::{self, Mode, PinnedDeb, PinnedImage, PinnedOs, PinnedSet};
use artifacts_gen::resolve::Endpoints;
use common::{args, deb, image, os, Run, Workspace, UNUSED_FEED};
use dctest::{
    sha256_digest, AssetSpec, Auth, FeedServer, GitHubStandIn, RegistryStandIn,
    RegistryStandInConfig, ReleaseSpec,
};
use reqwest::Url;
use std::collections::BTreeMap;
use std::path::Path;

/// The stand-ins of one test and the flags that point the tool at them.
struct Servers {
    registry: RegistryStandIn,
    github: GitHubStandIn,
    feed: FeedServer,
}

impl Servers {
    fn start(registry: RegistryStandInConfig) -> Self {
        Self {
            registry: RegistryStandIn::start(registry).expect("start the registry stand-in"),
            github: GitHubStandIn::start(None).expect("start the GitHub stand-in"),
            feed: FeedServer::start("stable", &["3815.2.0", "3975.2.1", "3975.2.0"])
                .expect("start the feed"),
        }
    }

    /// `--registry ghcr.io=… --github-api … --os-feed …` followed by `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut list = args(&[
            "--registry",
            &format!("ghcr.io={}", self.registry.base_url()),
            "--github-api",
            &self.github.base_url(),
            "--os-feed",
            &self.feed.feed_url(),
            "--os-image-base",
            &self.feed.file_base_template(),
        ]);
        list.extend(args(extra));
        list
    }
}

fn etcd_digest(tag: &str) -> String {
    RegistryStandIn::manifest_digest_for("cybozu/etcd", tag)
}

/// What `RESOLVED_FROM` says when endpoints are overridden.
fn mirror_provenance() -> String {
    Endpoints {
        registries: BTreeMap::from([(
            "ghcr.io".to_owned(),
            Url::parse("http://127.0.0.1:1/").expect("a URL"),
        )]),
        github_api: None,
        os_feed: None,
        os_image_base: None,
    }
    .provenance()
}

fn parse_file(path: &Path) -> PinnedSet {
    let bytes = Workspace::read(path).unwrap_or_else(|| panic!("{} is missing", path.display()));
    let text = String::from_utf8(bytes).expect("UTF-8");
    generated::parse(path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "{run}");
}

/// etcd and coil images, one deb, the OS channel `stable`.
fn standard_manifest(etcd_extra: &[&str]) -> String {
    format!(
        "{}{}{}{}",
        image("ghcr.io/cybozu/etcd", etcd_extra),
        image("ghcr.io/cybozu-go/coil", &[]),
        deb(
            "etcdpasswd",
            "cybozu-go/etcdpasswd",
            r"^etcdpasswd_.*_amd64\.deb$",
            &[]
        ),
        os("stable", UNUSED_FEED)
    )
}

/// Servers for [`standard_manifest`]; returns them and the content of the chosen deb.
fn standard_servers() -> (Servers, Vec<u8>) {
    let servers = Servers::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["3.5.14.1", "3.5.15.1", "3.5", "latest"])
            .repo("cybozu-go/coil", ["2.7.2", "2.8.0", "2.8.1-rc.1"]),
    );
    let repo = "cybozu-go/etcdpasswd";
    servers.github.add_release(
        repo,
        ReleaseSpec::new("v1.4.8").asset(AssetSpec::new(
            "etcdpasswd_1.4.8_amd64.deb",
            b"etcdpasswd 1.4.8".to_vec(),
            true,
        )),
    );
    let content = b"etcdpasswd 1.4.9".to_vec();
    servers.github.add_release(
        repo,
        ReleaseSpec::new("v1.4.9").asset(AssetSpec::new(
            "etcdpasswd_1.4.9_amd64.deb",
            content.clone(),
            false,
        )),
    );
    (servers, content)
}

#[test]
fn happy_path_writes_pins_that_parse_back_and_a_second_run_is_up_to_date() {
    let (servers, deb_content) = standard_servers();
    let ws = Workspace::new(&standard_manifest(&[]));

    let first = ws.run(&servers.args(&["--today", "2026-11-26"]), &[]);
    assert_code(&first, 0);
    assert!(first.stdout.contains("etcd"), "{first}");

    let want = PinnedSet {
        resolved_from: mirror_provenance(),
        images: vec![
            PinnedImage {
                name: "etcd".into(),
                repository: "ghcr.io/cybozu/etcd".into(),
                tag: "3.5.15.1".into(),
                digest: etcd_digest("3.5.15.1"),
                private: false,
                resolved: "2026-11-26".into(),
            },
            PinnedImage {
                name: "coil".into(),
                repository: "ghcr.io/cybozu-go/coil".into(),
                tag: "2.8.0".into(),
                digest: RegistryStandIn::manifest_digest_for("cybozu-go/coil", "2.8.0"),
                private: false,
                resolved: "2026-11-26".into(),
            },
        ],
        debs: vec![PinnedDeb {
            name: "etcdpasswd".into(),
            repository: "cybozu-go/etcdpasswd".into(),
            release: "v1.4.9".into(),
            asset: "etcdpasswd_1.4.9_amd64.deb".into(),
            sha256: sha256_digest(&deb_content),
            resolved: "2026-11-26".into(),
        }],
        os_image: PinnedOs {
            channel: "stable".into(),
            version: "3975.2.1".into(),
            kernel_sha512: FeedServer::file_sha512("stable", "3975.2.1", dctest::feed::KERNEL_FILE)
                .expect("the feed has a kernel"),
            initrd_sha512: FeedServer::file_sha512("stable", "3975.2.1", dctest::feed::INITRD_FILE)
                .expect("the feed has an initrd"),
            resolved: "2026-11-26".into(),
        },
    };
    assert_eq!(parse_file(&ws.default_file()), want);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ws.default_file())
            .expect("stat artifacts.rs")
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o644,
        "a source file, not a private temporary file"
    );
    assert!(
        !ws.release_file().exists(),
        "default mode writes artifacts.rs only"
    );
    let before = Workspace::read(&ws.default_file());

    // A later day: nothing moved, so nothing is rewritten (the pins keep their day).
    let second = ws.run(&servers.args(&["--today", "2026-12-24"]), &[]);
    assert_code(&second, 0);
    assert!(second.stdout.contains("up to date"), "{second}");
    assert_eq!(Workspace::read(&ws.default_file()), before);
    assert_eq!(ws.gen_entries(), ["artifacts.rs"]);
}

#[test]
fn check_reports_drift_and_writes_nothing() {
    let (servers, _) = standard_servers();
    let ws = Workspace::new(&standard_manifest(&[]));
    assert_code(&ws.run(&servers.args(&["--today", "2026-11-26"]), &[]), 0);
    let before = Workspace::read(&ws.default_file());

    let clean = ws.run(&servers.args(&["--check", "--today", "2026-12-01"]), &[]);
    assert_code(&clean, 0);
    assert!(clean.stdout.contains("up to date"), "{clean}");

    servers
        .registry
        .set_tags("cybozu/etcd", ["3.5.14.1", "3.5.15.1", "3.5.16.1", "3.5"]);
    let drift = ws.run(&servers.args(&["--check", "--today", "2026-12-01"]), &[]);
    assert_code(&drift, 1);
    let row = drift
        .stdout
        .lines()
        .find(|l| l.contains("etcd"))
        .unwrap_or_else(|| panic!("no row names etcd: {drift}"));
    let (old, new) = row
        .split_once("->")
        .unwrap_or_else(|| panic!("not an old -> new row: {row}"));
    assert!(old.contains("image") && old.contains("3.5.15.1"), "{row}");
    assert!(new.contains("3.5.16.1"), "{row}");
    assert!(
        !drift.stdout.contains("coil"),
        "only what moved is listed: {drift}"
    );
    assert_eq!(Workspace::read(&ws.default_file()), before);
    assert_eq!(ws.gen_entries(), ["artifacts.rs"]);
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let (servers, _) = standard_servers();
    let ws = Workspace::new(&standard_manifest(&[]));

    // No file yet: the whole file is the diff, and it is not created.
    let fresh = ws.run(&servers.args(&["--dry-run", "--today", "2026-11-26"]), &[]);
    assert_code(&fresh, 0);
    assert!(
        fresh
            .stdout
            .lines()
            .any(|l| l.starts_with('+') && l.contains("ImageTag::new(\"3.5.15.1\")")),
        "{fresh}"
    );
    assert!(!ws.default_file().exists(), "--dry-run created the file");
    assert!(ws.gen_entries().is_empty());

    assert_code(&ws.run(&servers.args(&["--today", "2026-11-26"]), &[]), 0);
    let before = Workspace::read(&ws.default_file());
    servers
        .registry
        .set_tags("cybozu/etcd", ["3.5.15.1", "3.5.16.1"]);

    let diff = ws.run(&servers.args(&["--dry-run", "--today", "2026-12-01"]), &[]);
    assert_code(&diff, 0);
    let lines: Vec<&str> = diff.stdout.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("--- ")), "{diff}");
    assert!(lines.iter().any(|l| l.starts_with("+++ ")), "{diff}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && l.contains("ImageTag::new(\"3.5.15.1\")")),
        "{diff}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('+') && l.contains("ImageTag::new(\"3.5.16.1\")")),
        "{diff}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('+') && l.contains("2026-12-01")),
        "the changed pin gets today's date: {diff}"
    );
    assert_eq!(Workspace::read(&ws.default_file()), before);
    assert_eq!(ws.gen_entries(), ["artifacts.rs"]);
}

/// The line of `--explain` output describing `tag`.
fn explain_line<'a>(run: &'a Run, tag: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag))
        .unwrap_or_else(|| panic!("no line for {tag}: {run}"))
}

#[test]
fn explain_lists_every_candidate_with_its_verdict() {
    let servers = Servers::start(
        RegistryStandInConfig::new()
            .repo(
                "cybozu/etcd",
                [
                    "3.5.13.1",
                    "3.5.14.1",
                    "3.5.15.1",
                    "3.5.16.1-rc.1",
                    "3.5",
                    "latest",
                ],
            )
            .repo("cybozu/squid", ["6", "latest"]),
    );
    let ws = Workspace::new(&format!(
        "{}{}{}",
        image(
            "ghcr.io/cybozu/etcd",
            &[r#"ignore = [{ version = "3.5.15.1", reason = "breaks the cluster" }]"#]
        ),
        image("ghcr.io/cybozu/squid", &[]),
        os("stable", UNUSED_FEED)
    ));

    let run = ws.run(&servers.args(&["--explain", "etcd"]), &[]);
    assert_code(&run, 0);
    assert!(run.stdout.contains("6 candidates"), "{run}");
    assert!(explain_line(&run, "3.5.14.1").contains("chosen"), "{run}");
    assert!(
        explain_line(&run, "3.5.13.1").contains("acceptable, lower"),
        "{run}"
    );
    assert!(
        explain_line(&run, "3.5.15.1").contains("ignored in artifacts.toml: breaks the cluster"),
        "{run}"
    );
    assert!(
        explain_line(&run, "3.5.16.1-rc.1").contains("pre-release"),
        "{run}"
    );
    assert!(explain_line(&run, "3.5").contains("moving tag"), "{run}");
    assert!(explain_line(&run, "latest").contains("moving tag"), "{run}");
    assert!(
        run.stdout
            .contains(&format!("pin: 3.5.14.1 {}", etcd_digest("3.5.14.1"))),
        "{run}"
    );
    assert!(ws.gen_entries().is_empty(), "--explain writes nothing");

    let unknown = ws.run(&servers.args(&["--explain", "etdc"]), &[]);
    assert_code(&unknown, 2);
    assert!(unknown.stderr.contains("\"etdc\""), "{unknown}");

    let none = ws.run(&servers.args(&["--explain", "squid"]), &[]);
    assert_code(&none, 1);
    assert!(explain_line(&none, "6").contains("moving tag"), "{none}");
    assert!(
        none.stdout.contains("no acceptable version: 2 moving tags"),
        "{none}"
    );
}

#[test]
fn json_prints_the_pinned_set_without_network() {
    let set = PinnedSet {
        resolved_from: "a test".into(),
        images: vec![PinnedImage {
            name: "etcd".into(),
            repository: "ghcr.io/cybozu/etcd".into(),
            tag: "3.5.15.1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            private: false,
            resolved: "2026-11-26".into(),
        }],
        debs: Vec::new(),
        os_image: PinnedOs {
            channel: "stable".into(),
            version: "3975.2.1".into(),
            kernel_sha512: format!("sha512:{}", "d".repeat(128)),
            initrd_sha512: format!("sha512:{}", "e".repeat(128)),
            resolved: "2026-11-25".into(),
        },
    };
    // The manifest names upstream hosts, which this machine cannot reach.
    let ws = Workspace::new(&format!(
        "{}{}",
        image("ghcr.io/cybozu/etcd", &[]),
        os("stable", UNUSED_FEED)
    ));
    std::fs::create_dir_all(ws.gen_dir()).expect("create gen/");
    let text = generated::render(&set, Mode::Default).expect("render");
    std::fs::write(ws.default_file(), &text).expect("write artifacts.rs");

    let run = ws.run(&args(&["--json"]), &[]);
    assert_code(&run, 0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(json["images"][0]["tag"], "3.5.15.1");
    assert_eq!(json["os_image"]["version"], "3975.2.1");
    assert_eq!(json, serde_json::to_value(&set).expect("to JSON"));
    assert_eq!(Workspace::read(&ws.default_file()), Some(text.into_bytes()));

    // The release file does not exist: an error naming it.
    let missing = ws.run(&args(&["--json", "--release"]), &[]);
    assert_code(&missing, 2);
    assert!(missing.stderr.contains("artifacts_release.rs"), "{missing}");
}

#[test]
fn release_mode_keeps_the_major_version_and_never_picks_a_prerelease() {
    let servers = Servers::start(
        RegistryStandInConfig::new()
            .repo("cybozu/etcd", ["1.0.0.1", "1.2.3.1"])
            .repo("cybozu/cilium", ["1.14.14.1", "1.15.0.1-rc.1"]),
    );
    let ws = Workspace::new(&format!(
        "{}{}{}",
        image("ghcr.io/cybozu/etcd", &[]),
        image("ghcr.io/cybozu/cilium", &["prerelease = true"]),
        os("stable", UNUSED_FEED)
    ));
    let tag_of = |set: &PinnedSet, name: &str| {
        set.images
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.tag.clone())
            .unwrap_or_else(|| panic!("{name} is not pinned"))
    };

    let first = ws.run(&servers.args(&["--release", "--today", "2026-11-26"]), &[]);
    assert_code(&first, 0);
    assert!(
        !ws.default_file().exists(),
        "--release writes only artifacts_release.rs"
    );
    let release = parse_file(&ws.release_file());
    assert_eq!(tag_of(&release, "etcd"), "1.2.3.1");
    assert_eq!(
        tag_of(&release, "cilium"),
        "1.14.14.1",
        "release mode never picks a pre-release, even with `prerelease = true`"
    );
    let release_bytes = Workspace::read(&ws.release_file());

    servers
        .registry
        .set_tags("cybozu/etcd", ["1.0.0.1", "1.2.3.1", "2.0.0.1"]);

    let dev = ws.run(&servers.args(&["--today", "2026-12-01"]), &[]);
    assert_code(&dev, 0);
    let dev_set = parse_file(&ws.default_file());
    assert_eq!(tag_of(&dev_set, "etcd"), "2.0.0.1");
    assert_eq!(tag_of(&dev_set, "cilium"), "1.15.0.1-rc.1");

    // The release file pins major 1; the development file's major 2 does not win.
    let again = ws.run(&servers.args(&["--release", "--today", "2026-12-01"]), &[]);
    assert_code(&again, 0);
    assert!(again.stdout.contains("up to date"), "{again}");
    assert_eq!(Workspace::read(&ws.release_file()), release_bytes);

    let why = ws.run(&servers.args(&["--release", "--explain", "etcd"]), &[]);
    assert_code(&why, 0);
    assert!(
        explain_line(&why, "2.0.0.1").contains("release mode keeps major version 1"),
        "{why}"
    );
    assert!(explain_line(&why, "1.2.3.1").contains("chosen"), "{why}");
}

#[test]
fn malformed_manifest_names_line_and_column() {
    let ws = Workspace::new(&format!(
        "[[image]]\nrepository = \"ghcr.io/cybozu/etcd\"\nprivate = yes\n\n{}",
        os("stable", UNUSED_FEED)
    ));
    let run = ws.run(&args(&[]), &[]);
    assert_code(&run, 2);
    assert!(run.stderr.contains("artifacts.toml:3:11:"), "{run}");
    assert!(ws.gen_entries().is_empty());
}

#[test]
fn unknown_manifest_key_is_named() {
    let ws = Workspace::new(&format!(
        "{}{}",
        image("ghcr.io/cybozu/etcd", &[r#"verions = ">=3.5""#]),
        os("stable", UNUSED_FEED)
    ));
    let run = ws.run(&args(&[]), &[]);
    assert_code(&run, 2);
    assert!(run.stderr.contains("verions"), "{run}");
    assert!(run.stderr.contains("artifacts.toml"), "{run}");
    assert!(ws.gen_entries().is_empty());
}

#[test]
fn failing_source_leaves_the_generated_file_alone() {
    let (servers, _) = standard_servers();
    let ws = Workspace::new(&standard_manifest(&[]));
    assert_code(&ws.run(&servers.args(&["--today", "2026-11-26"]), &[]), 0);
    let before = Workspace::read(&ws.default_file());
    // Something else moved too, so a successful run would rewrite the file.
    servers
        .registry
        .set_tags("cybozu/etcd", ["3.5.15.1", "3.5.16.1"]);

    ws.write_manifest(&format!(
        "{}{}",
        image("ghcr.io/cybozu/missing", &[]),
        standard_manifest(&[])
    ));
    let run = ws.run(&servers.args(&["--today", "2026-12-01"]), &[]);
    assert_code(&run, 2);
    assert!(run.stderr.contains("image missing"), "{run}");
    let url = format!(
        "{}/v2/cybozu/missing/tags/list",
        servers.registry.base_url()
    );
    assert!(run.stderr.contains(&url), "stderr should name {url}: {run}");
    assert_eq!(Workspace::read(&ws.default_file()), before);
    assert_eq!(
        ws.gen_entries(),
        ["artifacts.rs"],
        "no temporary file is left behind"
    );
}

#[test]
fn expired_ignore_entry_is_reported_and_no_longer_applies() {
    let servers =
        Servers::start(RegistryStandInConfig::new().repo("cybozu/etcd", ["3.5.15.1", "3.5.16.1"]));
    let ws = Workspace::new(&format!(
        "{}{}",
        image(
            "ghcr.io/cybozu/etcd",
            &[r#"ignore = [{ version = "3.5.16.1", reason = "bad build", until = 2026-06-30 }]"#]
        ),
        os("stable", UNUSED_FEED)
    ));

    // On the last day the entry applies.
    let within = ws.run(&servers.args(&["--today", "2026-06-30"]), &[]);
    assert_code(&within, 0);
    assert!(!within.stderr.contains("expired"), "{within}");
    let set = parse_file(&ws.default_file());
    assert_eq!(set.images[0].tag, "3.5.15.1");

    // The day after, it no longer does, and the tool says which entry to remove.
    let after = ws.run(&servers.args(&["--today", "2026-07-01"]), &[]);
    assert_code(&after, 0);
    let warning = after
        .stderr
        .lines()
        .find(|l| l.contains("expired"))
        .unwrap_or_else(|| panic!("no warning about the expired entry: {after}"));
    assert!(warning.contains("image etcd"), "{warning}");
    assert!(warning.contains("3.5.16.1"), "{warning}");
    assert!(warning.contains("2026-06-30"), "{warning}");
    let set = parse_file(&ws.default_file());
    assert_eq!(set.images[0].tag, "3.5.16.1");
    assert_eq!(set.images[0].resolved, "2026-07-01");
}

#[test]
fn secrets_never_appear_in_the_output() {
    const PASSWORD: &str = "sup3r-secret";
    const TOKEN: &str = "tok-secret-123";
    let registry = RegistryStandIn::start(
        RegistryStandInConfig::new()
            .repo("cybozu-go/setup-hw", ["1.20.1"])
            .auth(Auth::basic(
                "robot",
                "the-real-password",
                ["cybozu-go/setup-hw"],
            )),
    )
    .expect("start the registry stand-in");
    let github =
        GitHubStandIn::start(Some("the-real-token".into())).expect("start the GitHub stand-in");
    github.add_release(
        "cybozu-go/etcdpasswd",
        ReleaseSpec::new("v1.4.9").asset(AssetSpec::new(
            "etcdpasswd_1.4.9_amd64.deb",
            b"x".to_vec(),
            false,
        )),
    );
    let feed = FeedServer::start("stable", &["3975.2.1"]).expect("start the feed");
    let ws = Workspace::new(&format!(
        "{}{}{}",
        image("ghcr.io/cybozu-go/setup-hw", &["private = true"]),
        deb(
            "etcdpasswd",
            "cybozu-go/etcdpasswd",
            r"^etcdpasswd_.*_amd64\.deb$",
            &[]
        ),
        os("stable", UNUSED_FEED)
    ));
    let flags = args(&[
        "--registry",
        &format!("ghcr.io={}", registry.base_url()),
        "--github-api",
        &github.base_url(),
        "--os-feed",
        &feed.feed_url(),
        "--os-image-base",
        &feed.file_base_template(),
    ]);
    let env = [
        ("NECO_REGISTRY_USERNAME", "robot"),
        ("NECO_REGISTRY_PASSWORD", PASSWORD),
        ("GITHUB_TOKEN", TOKEN),
    ];
    let assert_no_secret = |run: &Run| {
        for secret in [PASSWORD, TOKEN] {
            assert!(!run.stdout.contains(secret), "stdout has {secret}: {run}");
            assert!(!run.stderr.contains(secret), "stderr has {secret}: {run}");
        }
    };

    let run = ws.run(&flags, &env);
    assert_code(&run, 2);
    assert!(run.stderr.contains("image setup-hw"), "{run}");
    assert!(run.stderr.contains("deb etcdpasswd"), "{run}");
    assert!(run.stderr.contains("401"), "{run}");
    assert_no_secret(&run);

    // Every log line, too.
    let mut verbose_env = env.to_vec();
    verbose_env.push(("RUST_LOG", "trace"));
    let verbose = ws.run(&flags, &verbose_env);
    assert_code(&verbose, 2);
    assert_no_secret(&verbose);

    let help = ws.run(&args(&["--help"]), &env);
    assert_code(&help, 0);
    assert!(help.stdout.contains("NECO_REGISTRY_PASSWORD"), "{help}");
    assert_no_secret(&help);
    assert!(ws.gen_entries().is_empty());
}
