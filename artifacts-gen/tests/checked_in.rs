//! The generated files checked in to the `artifacts` crate are exactly what artifacts-gen
//! renders for the pins they hold, and they agree with each other.
// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use artifacts_gen::generated::{self, Mode, PinnedSet};
use artifacts_gen::resolve::Endpoints;
use reqwest::Url;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn path(mode: Mode) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../artifacts/src/generated")
        .join(mode.file_name())
}

fn load(mode: Mode) -> (String, PinnedSet) {
    let path = path(mode);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let set = generated::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    (text, set)
}

#[test]
fn render_of_parse_is_the_file_byte_for_byte() {
    for mode in [Mode::Default, Mode::Release] {
        let (text, set) = load(mode);
        let rendered = generated::render(&set, mode).unwrap_or_else(|e| panic!("{e}"));
        if rendered != text {
            let diff = similar::TextDiff::from_lines(&text, &rendered)
                .unified_diff()
                .header("checked in", "rendered")
                .to_string();
            panic!(
                "{} is not what artifacts-gen renders for its pins; run `cargo xtask codegen`:\n{diff}",
                path(mode).display()
            );
        }
    }
}

/// `(kind, name)` of every component, in file order.
fn names(set: &PinnedSet) -> Vec<(&'static str, String)> {
    let mut list: Vec<(&'static str, String)> = Vec::new();
    list.extend(set.images.iter().map(|i| ("image", i.name.clone())));
    list.extend(set.debs.iter().map(|d| ("deb", d.name.clone())));
    list.push(("os image", set.os_image.channel.clone()));
    list
}

#[test]
fn both_files_define_the_same_components_in_the_same_order() {
    let (_, default) = load(Mode::Default);
    let (_, release) = load(Mode::Release);
    assert!(!default.images.is_empty(), "no images are pinned");
    assert_eq!(names(&default), names(&release));
}

#[test]
fn both_files_say_they_come_from_the_local_mirror() {
    let mirror = Endpoints {
        registries: BTreeMap::from([(
            "ghcr.io".to_owned(),
            Url::parse("http://127.0.0.1:1/").expect("a URL"),
        )]),
        github_api: None,
        os_feed: None,
        os_image_base: None,
    }
    .provenance();
    assert_ne!(mirror, Endpoints::upstream().provenance());
    for mode in [Mode::Default, Mode::Release] {
        let (_, set) = load(mode);
        assert_eq!(
            set.resolved_from,
            mirror,
            "{}: the digests are the local mirror's, and RESOLVED_FROM must say so",
            path(mode).display()
        );
        assert!(set.resolved_from.contains("local mirror"));
    }
}
