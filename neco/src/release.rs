//! The neco release version `YYYY.MM.DD-N`: the UTC date of the build and a number that only
//! grows. Tags carry a prefix (`release-2026.11.26-42`, `test-2026.11.26-42`) that is cut at
//! the first `-`; the deb `Version:` and every etcd value hold the bare version.

use std::fmt;
use std::str::FromStr;

/// A release version. Ordered by date, then by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseVersion {
    year: u16,
    month: u8,
    day: u8,
    number: u64,
}

/// Why a text is not a release version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a neco release version YYYY.MM.DD-N: {reason}")]
pub struct ReleaseVersionError {
    pub text: String,
    pub reason: &'static str,
}

impl ReleaseVersion {
    /// The version of a tag: everything after the first `-` when there is a prefix
    /// (`release-2026.11.26-1` → `2026.11.26-1`); a bare version is accepted as it is.
    pub fn from_tag(tag: &str) -> Result<Self, ReleaseVersionError> {
        tag.parse().or_else(|first| match tag.split_once('-') {
            Some((_, rest)) => rest.parse(),
            None => Err(first),
        })
    }

    pub fn date(&self) -> (u16, u8, u8) {
        (self.year, self.month, self.day)
    }

    pub fn number(&self) -> u64 {
        self.number
    }
}

impl FromStr for ReleaseVersion {
    type Err = ReleaseVersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| ReleaseVersionError {
            text: text.to_owned(),
            reason,
        };
        let (date, number) = text
            .split_once('-')
            .ok_or_else(|| err("no `-N` after the date"))?;
        let parts: Vec<&str> = date.split('.').collect();
        let [year, month, day] = parts.as_slice() else {
            return Err(err("the date must be YYYY.MM.DD"));
        };
        if year.len() != 4 || month.len() != 2 || day.len() != 2 {
            return Err(err("the date must be YYYY.MM.DD"));
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
        };
        let (Some(y), Some(m), Some(d)) = (num(year), num(month), num(day)) else {
            return Err(err("the date must be YYYY.MM.DD"));
        };
        let month = u8::try_from(m).ok().filter(|m| (1..=12).contains(m));
        let day = u8::try_from(d).ok().filter(|d| (1..=31).contains(d));
        let (Some(month), Some(day)) = (month, day) else {
            return Err(err("month or day out of range"));
        };
        let number = num(number).ok_or_else(|| err("N must be a decimal number"))?;
        Ok(Self {
            year: u16::try_from(y).map_err(|_| err("year out of range"))?,
            month,
            day,
            number,
        })
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}.{:02}.{:02}-{}",
            self.year, self.month, self.day, self.number
        )
    }
}

impl serde::Serialize for ReleaseVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let v: ReleaseVersion = "2021.04.19-13965".parse().unwrap();
        assert_eq!(v.to_string(), "2021.04.19-13965");
        assert_eq!(v.date(), (2021, 4, 19));
        assert_eq!(v.number(), 13965);
    }

    #[test]
    fn bad_versions() {
        for bad in [
            "2021.04.19",
            "20210419-13965",
            "2021.04.19-abc",
            "2021.4.19-1",
            "2021.13.01-1",
            "2021.04.19-+1",
            "",
            "release-2021.04.19-1",
        ] {
            let err = bad.parse::<ReleaseVersion>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn order_is_date_then_number() {
        let v = |s: &str| s.parse::<ReleaseVersion>().unwrap();
        // Numbers compare numerically, not as text.
        assert!(v("2026.11.26-9") < v("2026.11.26-10"));
        assert!(v("2026.11.25-99") < v("2026.11.26-1"));
        assert!(v("2025.12.31-5") < v("2026.01.01-1"));
        assert_eq!(v("2026.11.26-1"), v("2026.11.26-1"));
    }

    #[test]
    fn tags() {
        assert_eq!(
            ReleaseVersion::from_tag("release-2018.11.07-1")
                .unwrap()
                .to_string(),
            "2018.11.07-1"
        );
        assert_eq!(
            ReleaseVersion::from_tag("test-2026.11.26-3")
                .unwrap()
                .to_string(),
            "2026.11.26-3"
        );
        assert_eq!(
            ReleaseVersion::from_tag("2026.11.26-3")
                .unwrap()
                .to_string(),
            "2026.11.26-3"
        );
        assert!(ReleaseVersion::from_tag("v1.2.3").is_err());
        assert!(ReleaseVersion::from_tag("release-").is_err());
    }
}
