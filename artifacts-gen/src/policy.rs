//! Version policy: which candidate version a component is pinned to, and why the others were
//! not chosen. Pure: data in, data out.

use artifacts::version::TagVersion;
use std::fmt;
use std::sync::Arc;

/// The per-component policy of `artifacts.toml`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Requirement on the upstream `X.Y.Z`.
    pub versions: Option<semver::VersionReq>,
    /// Pre-releases may be chosen (outside release mode).
    pub prerelease: bool,
    pub ignore: Vec<IgnoreEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreEntry {
    /// The exact tag (or release tag) to skip.
    pub version: String,
    pub reason: String,
    /// The last day the entry applies.
    pub until: Option<time::Date>,
}

/// The rules for one selection: the policy plus what the mode adds.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub policy: Policy,
    /// Release mode: pre-releases are never chosen.
    pub release: bool,
    /// Release mode: keep the major version of the current release pin.
    pub keep_major: Option<u64>,
    /// Today (UTC), for ignore entries with an expiry.
    pub today: Option<time::Date>,
}

/// A version offered by a source, with what the source itself says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The text as the source spells it (`3.5.15.1`, `v1.4.9`).
    pub tag: String,
    /// Reason the source already rules it out (a draft release, no matching asset).
    pub unusable: Option<String>,
}

impl Offer {
    pub fn new(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            unusable: None,
        }
    }
}

/// Why a candidate was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drop {
    /// Fewer than two dots: a moving tag such as `1.2` or `latest`.
    MovingTag,
    /// Not a version.
    Unparsable,
    /// Ruled out by the source (draft, no asset, …).
    Unusable(String),
    Ignored(String),
    Prerelease,
    OutsideRequirement(Arc<str>),
    OtherMajor(u64),
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drop::MovingTag => f.write_str("moving tag (fewer than two dots)"),
            Drop::Unparsable => f.write_str("not a version"),
            Drop::Unusable(why) => f.write_str(why),
            Drop::Ignored(reason) => write!(f, "ignored in artifacts.toml: {reason}"),
            Drop::Prerelease => f.write_str("pre-release not allowed"),
            Drop::OutsideRequirement(req) => write!(f, "outside versions {req:?}"),
            Drop::OtherMajor(major) => {
                write!(f, "release mode keeps major version {major}")
            }
        }
    }
}

impl Drop {
    /// A short label for summaries.
    fn label(&self) -> String {
        match self {
            Drop::MovingTag => "moving tags".into(),
            Drop::Unparsable => "not versions".into(),
            Drop::Unusable(why) => why.clone(),
            Drop::Ignored(_) => "ignored".into(),
            Drop::Prerelease => "pre-releases".into(),
            Drop::OutsideRequirement(req) => format!("outside {req:?}"),
            Drop::OtherMajor(major) => format!("major version not {major}"),
        }
    }
}

/// What happened to one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Chosen,
    /// Acceptable, but a higher version was chosen.
    Older,
    Dropped(Drop),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Chosen => f.write_str("chosen (highest acceptable version)"),
            Verdict::Older => f.write_str("acceptable, lower than the chosen version"),
            Verdict::Dropped(why) => write!(f, "dropped: {why}"),
        }
    }
}

/// The result of a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The chosen tag, as the source spells it.
    pub chosen: Option<String>,
    /// Every candidate with its verdict, highest version first, then the unparsable ones.
    pub candidates: Vec<(String, Verdict)>,
    /// Ignore entries whose `until` has passed: they no longer apply.
    pub expired: Vec<IgnoreEntry>,
}

impl Selection {
    /// "5 moving tags, 3 pre-releases" — why nothing was acceptable.
    pub fn drop_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for (_, verdict) in &self.candidates {
            if let Verdict::Dropped(why) = verdict {
                let label = why.label();
                match counts.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((label, 1)),
                }
            }
        }
        if counts.is_empty() {
            return "no candidates at all".into();
        }
        counts
            .iter()
            .map(|(label, n)| format!("{n} {label}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses a source's version text: image tags as they are, release tags with a leading `v`.
pub fn parse_version(tag: &str) -> Option<TagVersion> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    TagVersion::parse(bare).ok()
}

/// Applies the rules to every offer and picks the highest acceptable version.
pub fn select(offers: Vec<Offer>, rules: &Rules) -> Selection {
    let (active_ignores, expired): (Vec<&IgnoreEntry>, Vec<&IgnoreEntry>) = rules
        .policy
        .ignore
        .iter()
        .partition(|entry| match (entry.until, rules.today) {
            (Some(until), Some(today)) => today <= until,
            _ => true,
        });
    let allow_pre = rules.policy.prerelease && !rules.release;
    // Rendered once: many candidates may fall outside the requirement.
    let requirement: Option<(&semver::VersionReq, Arc<str>)> = rules
        .policy
        .versions
        .as_ref()
        .map(|req| (req, Arc::from(req.to_string())));

    // Candidates carry a compact sort key (the first four numbers); ties, rare, fall back to
    // the full order of their `TagVersion`. Sorting these small entries in place is several
    // times faster than sorting the parsed versions themselves.
    struct Entry {
        key: [u64; 4],
        index: usize,
        tag: String,
        drop: Option<Drop>,
    }
    let mut versions: Vec<TagVersion> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut unversioned: Vec<(String, Verdict)> = Vec::new();
    for offer in offers {
        let bare = offer.tag.strip_prefix('v').unwrap_or(&offer.tag);
        if bare.matches('.').count() < 2 {
            unversioned.push((offer.tag, Verdict::Dropped(Drop::MovingTag)));
            continue;
        }
        let Some(version) = parse_version(&offer.tag) else {
            unversioned.push((offer.tag, Verdict::Dropped(Drop::Unparsable)));
            continue;
        };
        let drop = if let Some(why) = offer.unusable {
            Some(Drop::Unusable(why))
        } else if let Some(entry) = active_ignores.iter().find(|e| e.version == offer.tag) {
            Some(Drop::Ignored(entry.reason.clone()))
        } else if version.is_prerelease() && !allow_pre {
            Some(Drop::Prerelease)
        } else if let Some((_, text)) = requirement
            .as_ref()
            .filter(|(req, _)| !req.matches(&upstream_semver(&version)))
        {
            Some(Drop::OutsideRequirement(Arc::clone(text)))
        } else {
            rules
                .keep_major
                .filter(|major| version.major() != *major)
                .map(Drop::OtherMajor)
        };
        let n = version.numbers();
        let part = |i: usize| n.get(i).copied().unwrap_or(0);
        entries.push(Entry {
            key: [part(0), part(1), part(2), part(3)],
            index: versions.len(),
            tag: offer.tag,
            drop,
        });
        versions.push(version);
    }
    // Highest first.
    entries.sort_unstable_by(|a, b| {
        b.key
            .cmp(&a.key)
            .then_with(|| versions[b.index].cmp(&versions[a.index]))
    });

    let mut chosen = None;
    let mut candidates = Vec::with_capacity(entries.len() + unversioned.len());
    for Entry { tag, drop, .. } in entries {
        let verdict = match drop {
            Some(drop) => Verdict::Dropped(drop),
            None if chosen.is_none() => {
                chosen = Some(tag.clone());
                Verdict::Chosen
            }
            None => Verdict::Older,
        };
        candidates.push((tag, verdict));
    }
    candidates.extend(unversioned);
    Selection {
        chosen,
        candidates,
        expired: expired.into_iter().cloned().collect(),
    }
}

/// The upstream `X.Y.Z` of a tag as a semver version (pre-releases are judged separately).
fn upstream_semver(version: &TagVersion) -> semver::Version {
    let (x, y, z) = version.upstream();
    semver::Version::new(x, y, z)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(tags: &[&str]) -> Vec<Offer> {
        tags.iter().map(|t| Offer::new(*t)).collect()
    }

    fn date(s: &str) -> time::Date {
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
    }

    fn ignore(version: &str, until: Option<&str>) -> IgnoreEntry {
        IgnoreEntry {
            version: version.into(),
            reason: "broken build".into(),
            until: until.map(date),
        }
    }

    /// One row: tags offered, rules, the expected choice.
    struct Row {
        name: &'static str,
        tags: &'static [&'static str],
        rules: Rules,
        chosen: Option<&'static str>,
    }

    #[test]
    fn selection_table() {
        let req = |r: &str| Policy {
            versions: Some(semver::VersionReq::parse(r).unwrap()),
            ..Policy::default()
        };
        let rows = vec![
            Row {
                name: "numeric, not lexical, order",
                tags: &["3.5.9.1", "3.5.15.1", "3.5.10.2"],
                rules: Rules::default(),
                chosen: Some("3.5.15.1"),
            },
            Row {
                name: "build number counts",
                tags: &["3.5.15.1", "3.5.15.2", "3.5.15"],
                rules: Rules::default(),
                chosen: Some("3.5.15.2"),
            },
            Row {
                name: "moving tags and garbage skipped",
                tags: &["latest", "1.2", "3", "1.2.3", "main", "1.2.x.4"],
                rules: Rules::default(),
                chosen: Some("1.2.3"),
            },
            Row {
                name: "pre-release not chosen by default",
                tags: &["1.15.11.1-rc.1", "1.14.14.2"],
                rules: Rules::default(),
                chosen: Some("1.14.14.2"),
            },
            Row {
                name: "pre-release allowed by policy",
                tags: &["1.15.11.1-rc.1", "1.14.14.2"],
                rules: Rules {
                    policy: Policy {
                        prerelease: true,
                        ..Policy::default()
                    },
                    ..Rules::default()
                },
                chosen: Some("1.15.11.1-rc.1"),
            },
            Row {
                name: "pre-release sorts below its release",
                tags: &["1.15.11.1-rc.1", "1.15.11.1"],
                rules: Rules {
                    policy: Policy {
                        prerelease: true,
                        ..Policy::default()
                    },
                    ..Rules::default()
                },
                chosen: Some("1.15.11.1"),
            },
            Row {
                name: "release mode never picks a pre-release",
                tags: &["1.15.11.1-rc.1", "1.14.14.2"],
                rules: Rules {
                    policy: Policy {
                        prerelease: true,
                        ..Policy::default()
                    },
                    release: true,
                    ..Rules::default()
                },
                chosen: Some("1.14.14.2"),
            },
            Row {
                name: "release mode keeps the major",
                tags: &["2.0.0.1", "1.9.3.1", "1.10.0.1"],
                rules: Rules {
                    release: true,
                    keep_major: Some(1),
                    ..Rules::default()
                },
                chosen: Some("1.10.0.1"),
            },
            Row {
                name: "requirement on upstream X.Y.Z",
                tags: &["3.6.0.1", "3.5.18.1", "3.5.17.3"],
                rules: Rules {
                    policy: req(">=3.5, <3.6"),
                    ..Rules::default()
                },
                chosen: Some("3.5.18.1"),
            },
            Row {
                name: "ignored exact tag",
                tags: &["3.5.18.1", "3.5.17.3"],
                rules: Rules {
                    policy: Policy {
                        ignore: vec![ignore("3.5.18.1", None)],
                        ..Policy::default()
                    },
                    ..Rules::default()
                },
                chosen: Some("3.5.17.3"),
            },
            Row {
                name: "ignore applies through its last day",
                tags: &["3.5.18.1", "3.5.17.3"],
                rules: Rules {
                    policy: Policy {
                        ignore: vec![ignore("3.5.18.1", Some("2026-11-26"))],
                        ..Policy::default()
                    },
                    today: Some(date("2026-11-26")),
                    ..Rules::default()
                },
                chosen: Some("3.5.17.3"),
            },
            Row {
                name: "expired ignore no longer applies",
                tags: &["3.5.18.1", "3.5.17.3"],
                rules: Rules {
                    policy: Policy {
                        ignore: vec![ignore("3.5.18.1", Some("2026-11-25"))],
                        ..Policy::default()
                    },
                    today: Some(date("2026-11-26")),
                    ..Rules::default()
                },
                chosen: Some("3.5.18.1"),
            },
            Row {
                name: "release tags with a v",
                tags: &["v1.4.9", "v1.4.10", "v1.5"],
                rules: Rules::default(),
                chosen: Some("v1.4.10"),
            },
            Row {
                name: "nothing acceptable",
                tags: &["latest", "1.2", "2.0.0-rc.1"],
                rules: Rules::default(),
                chosen: None,
            },
            Row {
                name: "no tags at all",
                tags: &[],
                rules: Rules::default(),
                chosen: None,
            },
        ];
        for row in rows {
            let got = select(offers(row.tags), &row.rules);
            assert_eq!(got.chosen.as_deref(), row.chosen, "{}", row.name);
            assert_eq!(got.candidates.len(), row.tags.len(), "{}", row.name);
        }
    }

    #[test]
    fn verdicts_explain_every_candidate() {
        let rules = Rules {
            policy: Policy {
                versions: Some(semver::VersionReq::parse("<3.6").unwrap()),
                ignore: vec![
                    ignore("3.5.18.1", None),
                    ignore("3.5.1.1", Some("2020-01-01")),
                ],
                ..Policy::default()
            },
            release: true,
            keep_major: Some(3),
            today: Some(date("2026-11-26")),
        };
        let mut offers = offers(&["latest", "3.6.0.1", "3.5.18.1", "3.5.17.3", "3.5.17.4-rc.1"]);
        offers.push(Offer {
            tag: "3.5.19.1".into(),
            unusable: Some("draft release".into()),
        });
        offers.extend(self::offers(&["2.9.9.9", "3.5.17.2", "x.y.z"]));
        let got = select(offers, &rules);
        let verdicts: Vec<(&str, String)> = got
            .candidates
            .iter()
            .map(|(t, v)| (t.as_str(), v.to_string()))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("3.6.0.1", "dropped: outside versions \"<3.6\"".to_string()),
                ("3.5.19.1", "dropped: draft release".into()),
                (
                    "3.5.18.1",
                    "dropped: ignored in artifacts.toml: broken build".into()
                ),
                ("3.5.17.4-rc.1", "dropped: pre-release not allowed".into()),
                ("3.5.17.3", "chosen (highest acceptable version)".into()),
                (
                    "3.5.17.2",
                    "acceptable, lower than the chosen version".into()
                ),
                (
                    "2.9.9.9",
                    "dropped: release mode keeps major version 3".into()
                ),
                ("latest", "dropped: moving tag (fewer than two dots)".into()),
                ("x.y.z", "dropped: not a version".into()),
            ]
        );
        assert_eq!(got.expired.len(), 1);
        assert_eq!(got.expired[0].version, "3.5.1.1");
    }

    #[test]
    fn drop_summary_counts_reasons() {
        let got = select(offers(&["latest", "1.2", "2.0.0-rc.1"]), &Rules::default());
        assert_eq!(got.drop_summary(), "1 pre-releases, 2 moving tags");
        let none = select(Vec::new(), &Rules::default());
        assert_eq!(none.drop_summary(), "no candidates at all");
    }
}
