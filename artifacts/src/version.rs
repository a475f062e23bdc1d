//! Version-shaped tags and their order.
//!
//! A tag is `N.N.N[.N…][-pre.release]`: the upstream `X.Y.Z` and optionally a build number
//! (`3.5.15.1` is upstream 3.5.15, build 1). Parts compare numerically; a missing part counts
//! as 0 (`1.2.3` < `1.2.3.1`); a pre-release sorts below its release, and pre-release
//! identifiers compare as in semver (numbers numerically and below words).

use crate::validate::{check_image_tag, InvalidValue};
use std::cmp::Ordering;
use std::fmt;

/// One identifier of a pre-release.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PreId {
    Number(u64),
    Word(String),
}

impl Ord for PreId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Number(a), Self::Number(b)) => a.cmp(b),
            (Self::Number(_), Self::Word(_)) => Ordering::Less,
            (Self::Word(_), Self::Number(_)) => Ordering::Greater,
            (Self::Word(a), Self::Word(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for PreId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A parsed version-shaped tag. Its `Display` gives back the original text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagVersion {
    numbers: Vec<u64>,
    pre: Vec<PreId>,
    original: String,
}

impl TagVersion {
    /// Parses a tag; the grammar is [`check_image_tag`]'s.
    pub fn parse(tag: &str) -> Result<Self, InvalidValue> {
        check_image_tag(tag)?;
        let (release, pre) = match tag.split_once('-') {
            Some((release, pre)) => (release, Some(pre)),
            None => (tag, None),
        };
        let numbers = release
            .split('.')
            .map(|n| n.parse::<u64>().map_err(|_| InvalidValue::TagBadNumber))
            .collect::<Result<Vec<_>, _>>()?;
        let pre = pre
            .map(|pre| {
                pre.split('.')
                    .map(|id| match id.parse::<u64>() {
                        Ok(n) if !id.starts_with('0') || id == "0" => PreId::Number(n),
                        _ => PreId::Word(id.to_owned()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            numbers,
            pre,
            original: tag.to_owned(),
        })
    }

    /// The dot-separated numbers (at least three).
    pub fn numbers(&self) -> &[u64] {
        &self.numbers
    }

    /// The first number.
    pub fn major(&self) -> u64 {
        self.numbers.first().copied().unwrap_or(0)
    }

    /// The upstream `(X, Y, Z)`: the first three numbers.
    pub fn upstream(&self) -> (u64, u64, u64) {
        let n = |i: usize| self.numbers.get(i).copied().unwrap_or(0);
        (n(0), n(1), n(2))
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// The pre-release text after `-`, if any.
    pub fn prerelease(&self) -> Option<&str> {
        self.original.split_once('-').map(|(_, pre)| pre)
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl Ord for TagVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        let part = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| part(&self.numbers, i).cmp(&part(&other.numbers, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
            // Equal by value but spelled differently (`1.2.3` and `1.2.3.0`): keep the order
            // total and consistent with `Eq`.
            .then_with(|| self.numbers.len().cmp(&other.numbers.len()))
            .then_with(|| self.original.cmp(&other.original))
    }
}

impl PartialOrd for TagVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for TagVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> TagVersion {
        TagVersion::parse(s).unwrap()
    }

    #[test]
    fn ordering_table() {
        // Each row: a < b.
        let rows = [
            ("3.5.15.1", "3.5.15.2"),
            ("3.5.9.1", "3.5.15.1"),
            ("1.2.3", "1.2.3.1"),
            ("1.15.11.1-rc.1", "1.15.11.1"),
            ("1.15.11.1-rc.1", "1.15.11.1-rc.2"),
            ("1.15.11.1-rc.2", "1.15.11.1-rc.10"),
            ("1.0.0-alpha", "1.0.0-alpha.1"),
            ("1.0.0-1", "1.0.0-alpha"),
            ("1.14.14.2", "1.15.11.1-rc.1"),
            ("0.10.1.7", "0.10.2.1"),
            ("1.2.3", "1.2.3.0"),
        ];
        for (a, b) in rows {
            assert!(v(a) < v(b), "{a} < {b}");
            assert!(v(b) > v(a), "{b} > {a}");
        }
    }

    #[test]
    fn parts() {
        let t = v("1.15.11.1-rc.1");
        assert_eq!(t.numbers(), &[1, 15, 11, 1]);
        assert_eq!(t.upstream(), (1, 15, 11));
        assert_eq!(t.major(), 1);
        assert!(t.is_prerelease());
        assert_eq!(t.prerelease(), Some("rc.1"));
        assert_eq!(t.to_string(), "1.15.11.1-rc.1");
        assert!(!v("3.5.15.1").is_prerelease());
    }

    #[test]
    fn refuses_moving_and_odd_tags() {
        for bad in ["latest", "1.2", "main", "1.2.3_4", ""] {
            assert!(TagVersion::parse(bad).is_err(), "{bad}");
        }
    }
}
