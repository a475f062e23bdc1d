//! The `neco` CLI as a process against a real etcd: config keys, status on values written as
//! neco (Go) writes them, recover, join/leave, setup and connection errors.

// Test code: a failed call is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, Root};
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "ghp_S3cr3tT0kenForTests0123456789";

// --- config ------------------------------------------------------------------------------------

#[tokio::test]
async fn config_env() {
    let env = Env::start().await;
    assert_eq!(
        env.neco(&["config", "get", "env"]).await.success(),
        "none\n"
    );
    for value in ["test", "staging", "prod"] {
        env.neco(&["config", "set", "env", value]).await.success();
        assert_eq!(env.raw.get("config/env").await.as_deref(), Some(value));
        assert_eq!(
            env.neco(&["config", "get", "env"]).await.success(),
            format!("{value}\n")
        );
    }
    // An unknown env is refused, naming it; nothing is written.
    let err = env.neco(&["config", "set", "env", "qa"]).await;
    assert!(err.failure().contains("\"qa\""), "{err:?}");
    assert_eq!(env.raw.get("config/env").await.as_deref(), Some("prod"));
    // none deletes the key.
    env.neco(&["config", "set", "env", "none"]).await.success();
    assert_eq!(env.raw.get("config/env").await, None);
    assert_eq!(
        env.neco(&["config", "get", "env"]).await.success(),
        "none\n"
    );
    // VALUE missing: refused.
    let missing = env.neco(&["config", "set", "env"]).await;
    missing.failure();
    assert_eq!(env.raw.get("config/env").await, None);
}

#[tokio::test]
async fn config_urls() {
    let env = Env::start().await;
    for (name, key) in [
        ("slack", "config/notification/slack"),
        ("proxy", "config/proxy"),
    ] {
        let unset = env.neco(&["config", "get", name]).await;
        assert!(unset.failure().contains(name), "{unset:?}");
        let url = "http://127.0.0.1:8080/hooks/neco";
        env.neco(&["config", "set", name, url]).await.success();
        assert_eq!(env.raw.get(key).await.as_deref(), Some(url));
        assert_eq!(
            env.neco(&["config", "get", name]).await.success(),
            format!("{url}\n")
        );
        for bad in [
            "not a url",
            "ftp://example.com/x",
            "/relative/path",
            "http://",
        ] {
            let err = env.neco(&["config", "set", name, bad]).await;
            assert!(err.failure().contains(name), "{bad}: {err:?}");
            assert_eq!(env.raw.get(key).await.as_deref(), Some(url), "{bad}");
        }
    }
}

#[tokio::test]
async fn config_durations_are_nanoseconds_printed_go_style() {
    let env = Env::start().await;
    let get = |name: &'static str| {
        let env = &env;
        async move {
            env.neco(&["config", "get", name])
                .await
                .success()
                .to_owned()
        }
    };
    assert_eq!(get("check-update-interval").await, "1m0s\n");
    assert_eq!(get("worker-timeout").await, "1h0m0s\n");
    for (name, key, value, stored, shown) in [
        (
            "check-update-interval",
            "config/check-update-interval",
            "10m",
            "600000000000",
            "10m0s",
        ),
        (
            "check-update-interval",
            "config/check-update-interval",
            "90s",
            "90000000000",
            "1m30s",
        ),
        (
            "worker-timeout",
            "config/worker-timeout",
            "1h30m",
            "5400000000000",
            "1h30m0s",
        ),
        (
            "worker-timeout",
            "config/worker-timeout",
            "1500ms",
            "1500000000",
            "1.5s",
        ),
    ] {
        env.neco(&["config", "set", name, value]).await.success();
        assert_eq!(
            env.raw.get(key).await.as_deref(),
            Some(stored),
            "{name} {value}"
        );
        assert_eq!(get(name).await, format!("{shown}\n"), "{name} {value}");
    }
    // A value neco (Go) wrote reads the same.
    env.raw.put("config/worker-timeout", "3600000000000").await;
    assert_eq!(get("worker-timeout").await, "1h0m0s\n");
    for bad in ["10", "ten minutes", "-1m", "0s", ""] {
        let err = env
            .neco(&["config", "set", "worker-timeout", "--", bad])
            .await;
        assert!(err.failure().contains("worker-timeout"), "{bad}: {err:?}");
        assert_eq!(
            env.raw.get("config/worker-timeout").await.as_deref(),
            Some("3600000000000"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn config_github_token_is_read_from_stdin_and_masked() {
    let env = Env::start().await;
    let r = &env.root;
    let unset = env.neco(&["config", "get", "github-token"]).await;
    unset.failure();
    // VALUE omitted: read from standard input (trailing newline dropped).
    r.neco_stdin(
        &["config", "set", "github-token"],
        Some(&format!("{TOKEN}\n")),
        &[],
    )
    .await
    .success();
    assert_eq!(
        env.raw.get("config/github-token").await.as_deref(),
        Some(TOKEN)
    );
    let masked = env.neco(&["config", "get", "github-token"]).await;
    assert!(!masked.output().contains(TOKEN), "{masked:?}");
    assert!(!masked.success().trim().is_empty());
    let shown = env
        .neco(&["config", "get", "github-token", "--show-secret"])
        .await;
    assert_eq!(shown.success(), format!("{TOKEN}\n"));
    // `-` reads standard input as well.
    let other = "ghp_another0token";
    r.neco_stdin(&["config", "set", "github-token", "-"], Some(other), &[])
        .await
        .success();
    assert_eq!(
        env.raw.get("config/github-token").await.as_deref(),
        Some(other)
    );
    // Refused tokens are not echoed; nothing is written.
    let spaced = format!("{TOKEN} x");
    let err = r
        .neco_stdin(&["config", "set", "github-token"], Some(&spaced), &[])
        .await;
    err.failure();
    assert!(!err.output().contains(TOKEN), "{err:?}");
    // A token given as an argument is refused (it would be in `ps` and the shell history),
    // not echoed, and nothing is written.
    let err = env.neco(&["config", "set", "github-token", &spaced]).await;
    err.failure();
    assert!(!err.output().contains(TOKEN), "{err:?}");
    let err = env.neco(&["config", "set", "github-token", TOKEN]).await;
    let message = err.failure();
    assert!(message.contains("standard input only"), "{err:?}");
    assert!(!err.output().contains(TOKEN), "{err:?}");
    assert_eq!(
        env.raw.get("config/github-token").await.as_deref(),
        Some(other)
    );
    let err = r
        .neco_stdin(&["config", "set", "github-token"], Some("\n"), &[])
        .await;
    err.failure();
    assert_eq!(
        env.raw.get("config/github-token").await.as_deref(),
        Some(other)
    );
    // A usage error after the token does not echo it.
    let err = env
        .neco(&["config", "set", "github-token", TOKEN, "--bogus"])
        .await;
    assert!(!err.failure().contains(TOKEN), "{err:?}");
    // Nor does help, whatever the environment holds.
    for args in [
        &["--help"][..],
        &["config", "set", "--help"],
        &["config", "get", "--help"],
    ] {
        let help = r
            .neco_stdin(
                args,
                None,
                &[("GITHUB_TOKEN", TOKEN), ("NECO_GITHUB_TOKEN", TOKEN)],
            )
            .await;
        assert!(!help.success().contains(TOKEN), "{help:?}");
    }
    // An etcd that does not answer: the error names etcd, not the token.
    let dead = Root::new(&[format!("http://127.0.0.1:{}", dctest::free_port().unwrap())]);
    let err = dead.neco(&["config", "set", "github-token", TOKEN]).await;
    assert!(!err.failure().contains(TOKEN), "{err:?}");
}

#[tokio::test]
async fn config_unknown_key_lists_the_keys_and_writes_nothing() {
    let env = Env::start().await;
    for args in [
        &["config", "set", "github_token", "x"][..],
        &["config", "get", "release-time"],
    ] {
        let err = env.neco(args).await;
        let text = err.failure();
        for key in [
            "env",
            "slack",
            "proxy",
            "check-update-interval",
            "worker-timeout",
            "github-token",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }
    assert!(env.raw.list("").await.is_empty());
    // test-version (env test) is a release version.
    let err = env.neco(&["config", "set", "test-version", "1.2.3"]).await;
    err.failure();
    assert!(env.raw.list("").await.is_empty());
    env.neco(&["config", "set", "test-version", "2026.11.26-3"])
        .await
        .success();
    assert_eq!(
        env.raw.get("config/test-version").await.as_deref(),
        Some("2026.11.26-3")
    );
}

// --- status ------------------------------------------------------------------------------------

/// Keys as neco (Go) writes them: boot servers 0, 1, 2, 10 (etcd returns them as 0, 1, 10, 2),
/// a request whose server list came from such a snapshot, statuses of several versions.
async fn go_cluster(env: &Env) {
    for lrn in ["0", "1", "2", "10"] {
        env.raw.put(&format!("info/bootservers/{lrn}"), "").await;
    }
    env.raw.put("info/neco-release", "2025.03.04-12345").await;
    env.raw
        .put(
            "status/current",
            r#"{"version":"2025.03.04-12345","servers":[0,1,10,2],"stop":false,"started_at":"2025-03-04T01:02:03.4Z"}"#,
        )
        .await;
    env.raw
        .put(
            "status/bootservers/0",
            r#"{"version":"2025.03.04-12345","step":5,"cond":1,"message":""}"#,
        )
        .await;
    env.raw
        .put(
            "status/bootservers/1",
            r#"{"version":"2025.03.04-12345","step":5,"cond":1,"message":""}"#,
        )
        .await;
    // An old status of another version: not shown as progress.
    env.raw
        .put(
            "status/bootservers/2",
            r#"{"version":"2025.03.01-11111","step":13,"cond":3,"message":""}"#,
        )
        .await;
    env.raw
        .put(
            "status/bootservers/10",
            r#"{"version":"2025.03.04-12345","step":4,"cond":1,"message":""}"#,
        )
        .await;
}

async fn status_json(env: &Env) -> Value {
    let out = env.neco(&["status", "--json"]).await;
    serde_json::from_str(out.success()).unwrap()
}

fn lrns(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn status_reads_what_neco_writes() {
    let env = Env::start().await;
    // Nothing yet.
    let json = status_json(&env).await;
    assert_eq!(json["request"], Value::Null);
    assert!(env
        .neco(&["status"])
        .await
        .success()
        .contains("    status: clear"));

    go_cluster(&env).await;
    let json = status_json(&env).await;
    assert_eq!(lrns(&json["servers"]), vec![0, 1, 2, 10]);
    let req = &json["request"];
    assert_eq!(req["version"], "2025.03.04-12345");
    assert_eq!(lrns(&req["servers"]), vec![0, 1, 2, 10]);
    assert_eq!(req["stopped"], false);
    assert_eq!(req["state"], "running");
    assert_eq!(req["started_at"], "2025-03-04T01:02:03.4Z");
    let statuses = req["statuses"].as_array().unwrap();
    let order: Vec<u64> = statuses
        .iter()
        .map(|s| s["lrn"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![0, 1, 2, 10]);
    assert_eq!(statuses[0]["step"], 5);
    assert_eq!(statuses[0]["condition"], "running");
    // LRN 2 only has a status of another version.
    assert_eq!(statuses[2]["step"], Value::Null);
    assert_ne!(statuses[2]["condition"], "completed");
    assert_eq!(statuses[3]["step"], 4);

    let text = env.neco(&["status"]).await;
    let text = text.success();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
            .to_owned()
    };
    let numbers = |l: String| -> Vec<u64> {
        l.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect()
    };
    assert_eq!(numbers(line("Boot servers: ")), vec![0, 1, 2, 10]);
    assert_eq!(line("    status: "), "    status: running");
    assert_eq!(line("    version: "), "    version: 2025.03.04-12345");
    assert_eq!(numbers(line("    members: ")), vec![0, 1, 2, 10]);
    assert!(line("    started: ").contains("2025-03-04T01:02:03.4Z"));
    let boot: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Boot server "))
        .collect();
    assert_eq!(boot.len(), 4, "{text}");
    for (l, lrn) in boot.iter().zip(["0", "1", "2", "10"]) {
        assert!(
            l.strip_prefix("Boot server ").unwrap().starts_with(lrn),
            "{l} should be server {lrn}:\n{text}"
        );
    }
    assert!(
        text.contains("    step: 5\n    condition: running"),
        "{text}"
    );

    // One server aborts with a message.
    env.raw
        .put(
            "status/bootservers/10",
            r#"{"version":"2025.03.04-12345","step":4,"cond":2,"message":"pull failed: 404"}"#,
        )
        .await;
    assert_eq!(status_json(&env).await["request"]["state"], "aborted");
    let text = env.neco(&["status"]).await;
    assert!(text.success().contains("    status: aborted"), "{text:?}");
    assert!(text.stdout.contains("    condition: aborted"), "{text:?}");
    assert!(
        text.stdout.contains("    message: pull failed: 404"),
        "{text:?}"
    );

    // Every listed server completed.
    for lrn in [0, 1, 2, 10] {
        env.raw
            .put(
                &format!("status/bootservers/{lrn}"),
                r#"{"version":"2025.03.04-12345","step":13,"cond":3,"message":""}"#,
            )
            .await;
    }
    assert_eq!(status_json(&env).await["request"]["state"], "completed");
    assert!(env
        .neco(&["status"])
        .await
        .success()
        .contains("    status: completed"));

    // Stopped (by a timeout): shown.
    env.raw
        .put(
            "status/current",
            r#"{"version":"2025.03.04-12345","servers":[0,1,2,10],"stop":true,"started_at":"2025-03-04T10:02:03.123456789+09:00"}"#,
        )
        .await;
    let json = status_json(&env).await;
    assert_eq!(json["request"]["stopped"], true);
    assert!(env.neco(&["status"]).await.success().contains("stopped"));

    // A malformed value is reported with its key, and the rest still shows.
    env.raw.put("status/bootservers/1", "{oops").await;
    let json = status_json(&env).await;
    let malformed = json["malformed"].to_string();
    assert!(malformed.contains("/neco/status/bootservers/1"), "{json}");
    assert_eq!(lrns(&json["servers"]), vec![0, 1, 2, 10]);
    let text = env.neco(&["status"]).await;
    assert!(
        text.success().contains("/neco/status/bootservers/1"),
        "{text:?}"
    );
}

// --- recover, join, leave ----------------------------------------------------------------------

#[tokio::test]
async fn recover_only_clears_a_stopped_update() {
    let env = Env::start().await;
    let err = env.neco(&["recover"]).await;
    assert!(err.failure().contains("no update request"), "{err:?}");

    go_cluster(&env).await;
    env.raw
        .put(
            "contents/sabakan",
            r#"{"version":"2025.03.04-12345","success":true}"#,
        )
        .await;
    let before = env.raw.list("").await;
    let err = env.neco(&["recover"]).await;
    assert!(err.failure().contains("not stopped"), "{err:?}");
    assert_eq!(env.raw.list("").await, before, "nothing is deleted");

    env.raw
        .put(
            "status/current",
            r#"{"version":"2025.03.04-12345","servers":[0,1,10,2],"stop":true,"started_at":"2025-03-04T01:02:03.4Z"}"#,
        )
        .await;
    env.neco(&["recover"]).await.success();
    assert!(env.raw.list("status/").await.is_empty());
    assert!(env.raw.list("contents/").await.is_empty());
    // Membership and the release stay.
    assert_eq!(env.raw.keys("info/bootservers/").await.len(), 4);
    assert_eq!(
        env.raw.get("info/neco-release").await.as_deref(),
        Some("2025.03.04-12345")
    );
    assert_eq!(status_json(&env).await["request"], Value::Null);
}

#[tokio::test]
async fn join_and_leave() {
    let env = Env::start().await;
    env.neco(&["join", "3"]).await.success();
    assert_eq!(env.raw.get("info/bootservers/3").await.as_deref(), Some(""));
    env.neco(&["leave", "3"]).await.success();
    assert_eq!(env.raw.get("info/bootservers/3").await, None);
    let err = env.neco(&["leave", "3"]).await;
    assert!(err.failure().contains('3'), "{err:?}");
    let err = env.neco(&["join", "three"]).await;
    err.failure();

    // leave 1 removes what server 1 installed, never server 10's records.
    for lrn in ["1", "10"] {
        env.raw.put(&format!("info/bootservers/{lrn}"), "").await;
        env.raw
            .put(&format!("install/{lrn}/containers/etcd"), "3.5.15.1")
            .await;
        env.raw
            .put(&format!("install/{lrn}/debs/etcdpasswd"), "v1.4.0")
            .await;
    }
    env.raw.put("install/100/containers/etcd", "3.5.15.1").await;
    env.neco(&["leave", "1"]).await.success();
    assert_eq!(
        env.raw.keys("install/").await,
        vec![
            "install/10/containers/etcd",
            "install/10/debs/etcdpasswd",
            "install/100/containers/etcd",
        ]
    );
    assert_eq!(
        env.raw.keys("info/bootservers/").await,
        vec!["info/bootservers/10"]
    );
}

// --- setup -------------------------------------------------------------------------------------

#[tokio::test]
async fn setup_requests_the_installed_version_once() {
    let env = Env::start().await;
    // Without the package installed: refused, nothing written.
    let err = env.neco(&["setup", "0", "1", "2"]).await;
    assert!(err.failure().contains("neco"), "{err:?}");
    assert!(env.raw.list("").await.is_empty());

    // A package whose version is not a release version (a development build): refused,
    // naming it, nothing written.
    env.root.install_neco("0.1.0-dev");
    let err = env.neco(&["setup", "0", "1", "2"]).await;
    let message = err.failure();
    assert!(message.contains("\"0.1.0-dev\""), "{err:?}");
    assert!(message.contains("YYYY.MM.DD-N"), "{err:?}");
    assert!(env.raw.list("").await.is_empty());

    env.root.install_neco("2026.11.26-1");
    let out = env.neco(&["setup", "2", "0", "1"]).await;
    out.success();
    assert_eq!(
        env.raw.keys("info/bootservers/").await,
        vec![
            "info/bootservers/0",
            "info/bootservers/1",
            "info/bootservers/2"
        ]
    );
    assert_eq!(
        env.raw.get("info/neco-release").await.as_deref(),
        Some("2026.11.26-1")
    );
    let req: Value = serde_json::from_str(&env.raw.get("status/current").await.unwrap()).unwrap();
    assert_eq!(req["version"], "2026.11.26-1");
    assert_eq!(lrns(&req["servers"]), vec![0, 1, 2]);
    assert_eq!(req["stop"], false);
    let started = req["started_at"].as_str().unwrap();
    let started =
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!((time::OffsetDateTime::now_utc() - started).abs() < time::Duration::minutes(1));
    let json = status_json(&env).await;
    assert_eq!(json["request"]["state"], "running");

    // A second setup is refused and changes nothing.
    let before = env.raw.list("").await;
    let err = env.neco(&["setup", "0", "1", "2", "3"]).await;
    assert!(err.failure().contains("already set up"), "{err:?}");
    assert_eq!(env.raw.list("").await, before);

    // The workers complete (as neco-worker writes it): status shows it.
    for lrn in 0..3 {
        env.raw
            .put(
                &format!("status/bootservers/{lrn}"),
                r#"{"version":"2026.11.26-1","step":5,"cond":3,"message":""}"#,
            )
            .await;
    }
    assert_eq!(status_json(&env).await["request"]["state"], "completed");
}

// --- connection --------------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error_within_the_dial_timeout() {
    let endpoint = format!("http://127.0.0.1:{}", dctest::free_port().unwrap());
    let root = Root::new(std::slice::from_ref(&endpoint));
    for args in [&["status"][..], &["config", "get", "env"], &["recover"]] {
        let out = root.neco(args).await;
        let err = out.failure();
        assert!(
            err.contains("cannot reach etcd") && err.contains(&endpoint),
            "{out:?}"
        );
        assert!(out.took < Duration::from_secs(5), "{out:?}");
    }
    // No config file: the error names it.
    let empty = Root::empty();
    let out = empty.neco(&["status"]).await;
    assert!(out.failure().contains("etc/neco/config.toml"), "{out:?}");
}

#[tokio::test]
async fn a_dead_etcd_member_does_not_break_the_cli() {
    let mut etcd = dctest::EtcdCluster::start(3).unwrap();
    let endpoints = etcd.endpoints();
    let root = Root::new(&endpoints);
    root.neco(&["config", "set", "env", "staging"])
        .await
        .success();
    etcd.kill_member(0).unwrap();
    // The two others keep the quorum (maybe after electing a new leader).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !root.neco(&["config", "get", "env"]).await.ok() {
        assert!(std::time::Instant::now() < deadline, "etcd never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..5 {
        let out = root.neco(&["config", "get", "env"]).await;
        assert_eq!(out.success(), "staging\n");
        root.neco(&["status", "--json"]).await.success();
    }
}

#[tokio::test]
async fn a_secured_etcd_is_reached_with_tls_and_a_password_and_each_wrong_setting_is_a_configuration_error(
) {
    let etcd = dctest::EtcdCluster::secured().unwrap();
    let security = etcd.security().unwrap();
    let endpoints = etcd.endpoints();
    let good = security.neco_settings();
    let root = Root::empty();
    common::write_secured_config(root.path(), &endpoints, &good);
    root.neco(&["config", "set", "env", "staging"])
        .await
        .success();
    assert_eq!(
        root.neco(&["config", "get", "env"]).await.success(),
        "staging\n"
    );
    root.neco(&["status", "--json"]).await.success();
    assert_eq!(
        etcd.get("/neco/config/env").unwrap().map(|kv| kv.value),
        Some("staging".to_owned())
    );

    // Each wrong setting: exit 2 (configuration) at once, naming the file or the user, and
    // never the password.
    // (A client certificate that etcd refuses is not among them: after a TLS 1.3 handshake
    // the client only sees the connection closed, as when a member goes away; etcd's log
    // says why.)
    let other_pki = dctest::pki::Pki::new("another-ca").unwrap();
    let other_ca = other_pki.ca();
    let wrong_password = "not-the-password";
    let cases: Vec<(&str, dctest::NecoEtcdSettings<'_>, Vec<String>)> = vec![
        (
            "a CA that did not sign the server's certificate",
            dctest::NecoEtcdSettings {
                ca: other_ca,
                ..good.clone()
            },
            vec!["etcd.tls-ca".into(), "/etc/neco/ca.crt".into()],
        ),
        (
            "a key file that does not exist",
            dctest::NecoEtcdSettings {
                key: Err("missing.key"),
                ..good.clone()
            },
            vec!["etcd.tls-key".into(), "/etc/neco/missing.key".into()],
        ),
        (
            "a wrong password",
            dctest::NecoEtcdSettings {
                password: wrong_password,
                ..good.clone()
            },
            vec![
                format!("etcd user {:?}", security.user()),
                "password".into(),
            ],
        ),
    ];
    for (what, secured, named) in cases {
        let root = Root::empty();
        common::write_secured_config(root.path(), &endpoints, &secured);
        let out = root.neco(&["config", "get", "env"]).await;
        eprintln!("{what}: {}", out.stderr.trim());
        assert_eq!(out.code, Some(2), "{what}: {out:?}");
        for name in named {
            assert!(out.stderr.contains(&name), "{what}: no {name:?} in {out:?}");
        }
        assert!(!out.output().contains(wrong_password), "{what}: {out:?}");
        assert!(
            !out.output().contains(security.password()),
            "{what}: {out:?}"
        );
        assert!(out.took < Duration::from_secs(5), "{what}: {out:?}");
    }
}
