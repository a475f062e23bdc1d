//! Release tags: `release-YYYY.MM.DD-N` (production and staging follow these) and
//! `test-YYYY.MM.DD-N` (candidates). The package version is the part after the prefix, and it
//! must be exactly what the updater writes back (`neco::release::ReleaseVersion`'s display):
//! `N` without leading zeros, a real calendar date. Otherwise the worker would compare
//! `2026.11.26-01` with `2026.11.26-1` and reinstall the package forever.
//!
//! xtask cannot depend on the `neco` crate (it needs `protoc` to build), so the small parser
//! lives here, table-tested against the same rules.

use std::fmt;

/// The tag prefixes a release may carry.
pub const PREFIXES: [&str; 2] = ["release-", "test-"];

/// What a refused tag or version is told to look like.
const EXPECTED: &str =
    "expected release-YYYY.MM.DD-N or test-YYYY.MM.DD-N (for example release-2026.11.26-1)";

/// A checked release tag and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTag {
    /// `release-2026.11.26-1`.
    pub tag: String,
    /// `2026.11.26-1`: the Debian `Version:` and what the daemons compare.
    pub version: String,
}

impl fmt::Display for ReleaseTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag)
    }
}

/// Why a tag or version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a release tag: {reason}; {EXPECTED}")]
pub struct TagError {
    pub text: String,
    pub reason: &'static str,
}

impl ReleaseTag {
    /// A tag: a prefix of [`PREFIXES`] and a version.
    pub fn parse(text: &str) -> Result<Self, TagError> {
        let err = |reason| TagError {
            text: text.to_owned(),
            reason,
        };
        let version = PREFIXES
            .iter()
            .find_map(|prefix| text.strip_prefix(prefix))
            .ok_or_else(|| err("it does not start with release- or test-"))?;
        check_version(version).map_err(err)?;
        Ok(Self {
            tag: text.to_owned(),
            version: version.to_owned(),
        })
    }

    /// A bare version (`--version 2026.11.26-1`), released under the tag `release-<version>`.
    pub fn from_version(version: &str) -> Result<Self, TagError> {
        check_version(version).map_err(|reason| TagError {
            text: version.to_owned(),
            reason,
        })?;
        Ok(Self {
            tag: format!("release-{version}"),
            version: version.to_owned(),
        })
    }
}

/// Checks `YYYY.MM.DD-N` in its one canonical spelling.
fn check_version(version: &str) -> Result<(), &'static str> {
    let (date, number) = version
        .split_once('-')
        .ok_or("the version has no -N after the date")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = date.split('.').collect();
    let [year, month, day] = parts.as_slice() else {
        return Err("the date must be YYYY.MM.DD");
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err("the date must be YYYY.MM.DD");
    }
    if !digits(year) || !digits(month) || !digits(day) {
        return Err("the date must be YYYY.MM.DD");
    }
    let (Ok(year), Ok(month), Ok(day)) = (year.parse::<i32>(), month.parse::<u8>(), day.parse())
    else {
        return Err("the date must be YYYY.MM.DD");
    };
    let month = time::Month::try_from(month).map_err(|_| "the month does not exist")?;
    time::Date::from_calendar_date(year, month, day).map_err(|_| "the day does not exist")?;
    if !digits(number) {
        return Err("N must be a decimal number");
    }
    if number.len() > 1 && number.starts_with('0') {
        return Err("N must not have leading zeros");
    }
    number
        .parse::<u64>()
        .map_err(|_| "N is larger than the updater can compare")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_tags() {
        for (tag, version) in [
            ("release-2026.11.26-1", "2026.11.26-1"),
            ("test-2026.11.26-1", "2026.11.26-1"),
            ("release-2019.01.18-1346", "2019.01.18-1346"),
            ("release-2024.02.29-0", "2024.02.29-0"),
            // dctest's version, newer than any real release.
            ("release-9999.12.31-99999", "9999.12.31-99999"),
        ] {
            let parsed = ReleaseTag::parse(tag).unwrap();
            assert_eq!(parsed.tag, tag);
            assert_eq!(parsed.version, version);
        }
    }

    #[test]
    fn refused_tags_name_the_expected_form() {
        for (bad, reason) in [
            ("v1.2.3", "does not start"),
            ("2026.11.26-1", "does not start"),
            ("debug-2026.11.26-1", "does not start"),
            ("Release-2026.11.26-1", "does not start"),
            ("release-", "no -N"),
            ("release-2026.11.26", "no -N"),
            ("release-2026.11.26-", "decimal"),
            ("release-2026.11.26-1a", "decimal"),
            ("release-2026.11.26-+1", "decimal"),
            ("release-2026.11.26-01", "leading zeros"),
            ("release-2026.11.26-99999999999999999999", "larger"),
            ("release-2026.1.26-1", "YYYY.MM.DD"),
            ("release-26.11.26-1", "YYYY.MM.DD"),
            ("release-2026-11-26-1", "YYYY.MM.DD"),
            ("release-2026.11.26.1-1", "YYYY.MM.DD"),
            ("release-2026.+1.26-1", "YYYY.MM.DD"),
            ("release-2026.13.01-1", "month"),
            ("release-2026.00.01-1", "month"),
            ("release-2026.02.30-1", "day"),
            ("release-2025.02.29-1", "day"),
            ("release-2026.11.00-1", "day"),
            ("release-2026.11.26-1 ", "decimal"),
            ("", "does not start"),
        ] {
            let err = ReleaseTag::parse(bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason), "{bad:?}: {text}");
            assert!(
                text.contains("expected release-YYYY.MM.DD-N or test-YYYY.MM.DD-N"),
                "{text}"
            );
        }
    }

    #[test]
    fn versions_are_released_under_release_tags() {
        let tag = ReleaseTag::from_version("2026.11.26-7").unwrap();
        assert_eq!(tag.tag, "release-2026.11.26-7");
        assert_eq!(tag.version, "2026.11.26-7");
        for bad in [
            "release-2026.11.26-7",
            "2026.11.26",
            "2026.11.26-07",
            "1.2.3",
        ] {
            assert!(ReleaseTag::from_version(bad).is_err(), "{bad}");
        }
    }
}
