//! `const fn` checks of every value a generated file may hold.
//!
//! They run at compile time (through the constructors of the model types) and at run time
//! (artifacts-gen checks what it is about to write, and what it reads back).

use std::fmt;

/// Why a value was refused. The message is a `&'static str` so that it can be the panic
/// message of a constant evaluation, which is what the compiler prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidValue {
    Empty,
    TooLong,
    TagTooFewParts,
    TagBadNumber,
    TagBadPrerelease,
    DigestNotSha256,
    DigestBadHex,
    FileDigestNotSha512,
    FileDigestBadHex,
    NameBadChar,
    RepositoryBad,
    GitHubRepoBad,
    ReleaseTagBad,
    AssetNameBad,
    OsVersionBad,
    DateBad,
}

impl InvalidValue {
    /// A sentence saying what is wrong and what the value must look like.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Empty => "the value is empty",
            Self::TooLong => "the value is too long (image tags: at most 128 bytes, others: 255)",
            Self::TagTooFewParts => {
                "invalid image tag: a pinned tag needs at least three dot-separated numbers \
                 (1.2.3 or 3.5.15.1); moving tags such as `1.2` or `latest` cannot be pinned"
            }
            Self::TagBadNumber => {
                "invalid image tag: every dot-separated part before an optional `-pre-release` \
                 must be a decimal number without leading zeros (at most 19 digits)"
            }
            Self::TagBadPrerelease => {
                "invalid image tag: the pre-release after `-` must be non-empty dot-separated \
                 identifiers of ASCII letters, digits and `-`"
            }
            Self::DigestNotSha256 => "invalid digest: it must start with `sha256:`",
            Self::DigestBadHex => {
                "invalid digest: `sha256:` must be followed by exactly 64 lowercase hex digits"
            }
            Self::FileDigestNotSha512 => "invalid file digest: it must start with `sha512:`",
            Self::FileDigestBadHex => {
                "invalid file digest: `sha512:` must be followed by exactly 128 lowercase hex \
                 digits"
            }
            Self::NameBadChar => {
                "invalid name: use lowercase ASCII letters, digits and inner `-` (at most 63)"
            }
            Self::RepositoryBad => {
                "invalid repository: expected `host/path` with a lowercase path of letters, \
                 digits, `.`, `_`, `-` and `/`"
            }
            Self::GitHubRepoBad => {
                "invalid GitHub repository: expected `owner/name` of letters, digits, `.`, `_`, `-`"
            }
            Self::ReleaseTagBad => {
                "invalid release tag: no whitespace, control characters, `/` or `..`"
            }
            Self::AssetNameBad => "invalid asset name: no whitespace, control characters or `/`",
            Self::OsVersionBad => {
                "invalid OS image version: expected three dot-separated numbers such as 4152.2.1"
            }
            Self::DateBad => "invalid date: expected YYYY-MM-DD",
        }
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for InvalidValue {}

const fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

const fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Checks the dot-separated decimal numbers of `bytes[start..end]`; returns how many there were.
const fn check_numbers(bytes: &[u8], end: usize) -> Result<usize, InvalidValue> {
    let mut count = 0;
    let mut i = 0;
    while i < end {
        let start = i;
        while i < end && bytes[i] != b'.' {
            if !is_digit(bytes[i]) {
                return Err(InvalidValue::TagBadNumber);
            }
            i += 1;
        }
        let len = i - start;
        if len == 0 || len > 19 || (len > 1 && bytes[start] == b'0') {
            return Err(InvalidValue::TagBadNumber);
        }
        count += 1;
        if i < end {
            // Skip the dot; a trailing dot leaves an empty part.
            i += 1;
            if i == end {
                return Err(InvalidValue::TagBadNumber);
            }
        }
    }
    Ok(count)
}

/// A version-shaped image tag: `N.N.N[.N…][-pre.release]`.
pub const fn check_image_tag(tag: &str) -> Result<(), InvalidValue> {
    let bytes = tag.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if bytes.len() > 128 {
        return Err(InvalidValue::TooLong);
    }
    let mut dash = bytes.len();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' {
            dash = i;
            break;
        }
        i += 1;
    }
    let parts = match check_numbers(bytes, dash) {
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    if parts < 3 {
        return Err(InvalidValue::TagTooFewParts);
    }
    if dash == bytes.len() {
        return Ok(());
    }
    // Pre-release identifiers after the dash.
    let mut i = dash + 1;
    if i == bytes.len() {
        return Err(InvalidValue::TagBadPrerelease);
    }
    let mut ident_len = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'.' {
            if ident_len == 0 {
                return Err(InvalidValue::TagBadPrerelease);
            }
            ident_len = 0;
        } else if is_alnum(b) || b == b'-' {
            ident_len += 1;
        } else {
            return Err(InvalidValue::TagBadPrerelease);
        }
        i += 1;
    }
    if ident_len == 0 {
        return Err(InvalidValue::TagBadPrerelease);
    }
    Ok(())
}

/// `sha256:` followed by 64 lowercase hex digits.
pub const fn check_digest(digest: &str) -> Result<(), InvalidValue> {
    check_prefixed_hex(
        digest,
        b"sha256:",
        64,
        InvalidValue::DigestNotSha256,
        InvalidValue::DigestBadHex,
    )
}

/// `sha512:` followed by 128 lowercase hex digits: the checksum of an OS image file, as its
/// feed publishes it (Flatcar's `.DIGESTS` files carry MD5, SHA-1 and SHA-512).
pub const fn check_file_digest(digest: &str) -> Result<(), InvalidValue> {
    check_prefixed_hex(
        digest,
        b"sha512:",
        128,
        InvalidValue::FileDigestNotSha512,
        InvalidValue::FileDigestBadHex,
    )
}

/// `prefix` followed by exactly `digits` lowercase hex digits.
const fn check_prefixed_hex(
    value: &str,
    prefix: &[u8],
    digits: usize,
    bad_prefix: InvalidValue,
    bad_hex: InvalidValue,
) -> Result<(), InvalidValue> {
    let bytes = value.as_bytes();
    if bytes.len() < prefix.len() {
        return Err(bad_prefix);
    }
    let mut i = 0;
    while i < prefix.len() {
        if bytes[i] != prefix[i] {
            return Err(bad_prefix);
        }
        i += 1;
    }
    if bytes.len() != prefix.len() + digits {
        return Err(bad_hex);
    }
    while i < bytes.len() {
        let b = bytes[i];
        if !(is_digit(b) || (b >= b'a' && b <= b'f')) {
            return Err(bad_hex);
        }
        i += 1;
    }
    Ok(())
}

/// A component or channel name: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes.
pub const fn check_name(name: &str) -> Result<(), InvalidValue> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if bytes.len() > 63 {
        return Err(InvalidValue::NameBadChar);
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(InvalidValue::NameBadChar);
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || is_digit(b) || b == b'-') {
            return Err(InvalidValue::NameBadChar);
        }
        i += 1;
    }
    Ok(())
}

/// An image repository `host[:port]/path/…`.
pub const fn check_repository(repo: &str) -> Result<(), InvalidValue> {
    let bytes = repo.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if bytes.len() > 255 {
        return Err(InvalidValue::TooLong);
    }
    let mut slash = 0;
    while slash < bytes.len() && bytes[slash] != b'/' {
        let b = bytes[slash];
        if !(is_alnum(b) || b == b'.' || b == b'-' || b == b':') {
            return Err(InvalidValue::RepositoryBad);
        }
        slash += 1;
    }
    if slash == 0 || slash + 1 >= bytes.len() {
        return Err(InvalidValue::RepositoryBad);
    }
    let mut i = slash + 1;
    let mut prev = b'/';
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_lowercase() || is_digit(b) || b == b'.' || b == b'_' || b == b'-';
        if b == b'/' {
            if prev == b'/' {
                return Err(InvalidValue::RepositoryBad);
            }
        } else if !ok {
            return Err(InvalidValue::RepositoryBad);
        }
        prev = b;
        i += 1;
    }
    if prev == b'/' {
        return Err(InvalidValue::RepositoryBad);
    }
    Ok(())
}

const fn is_github_char(b: u8) -> bool {
    is_alnum(b) || b == b'.' || b == b'_' || b == b'-'
}

/// A GitHub repository `owner/name`.
pub const fn check_github_repo(repo: &str) -> Result<(), InvalidValue> {
    let bytes = repo.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    let mut slashes = 0;
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' {
            if segment == 0 {
                return Err(InvalidValue::GitHubRepoBad);
            }
            slashes += 1;
            segment = 0;
        } else if is_github_char(b) {
            segment += 1;
        } else {
            return Err(InvalidValue::GitHubRepoBad);
        }
        i += 1;
    }
    if slashes != 1 || segment == 0 {
        return Err(InvalidValue::GitHubRepoBad);
    }
    Ok(())
}

const fn check_printable(
    s: &str,
    allow_slash: bool,
    err: InvalidValue,
) -> Result<(), InvalidValue> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    if bytes.len() > 255 {
        return Err(InvalidValue::TooLong);
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b <= b' ' || b == 0x7f || (b == b'/' && !allow_slash) {
            return Err(err);
        }
        if b == b'.' && i + 1 < bytes.len() && bytes[i + 1] == b'.' {
            return Err(err);
        }
        i += 1;
    }
    Ok(())
}

/// A GitHub release tag such as `v1.4.9`.
pub const fn check_release_tag(tag: &str) -> Result<(), InvalidValue> {
    check_printable(tag, false, InvalidValue::ReleaseTagBad)
}

/// A release asset file name such as `etcdpasswd_1.4.9_amd64.deb`.
pub const fn check_asset_name(name: &str) -> Result<(), InvalidValue> {
    check_printable(name, false, InvalidValue::AssetNameBad)
}

/// An OS image version: exactly three dot-separated numbers.
pub const fn check_os_version(version: &str) -> Result<(), InvalidValue> {
    let bytes = version.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidValue::Empty);
    }
    match check_numbers(bytes, bytes.len()) {
        Ok(3) => Ok(()),
        _ => Err(InvalidValue::OsVersionBad),
    }
}

/// A calendar date `YYYY-MM-DD` (month 01–12, day 01–31).
pub const fn check_date(date: &str) -> Result<(), InvalidValue> {
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(InvalidValue::DateBad);
    }
    let mut i = 0;
    while i < 10 {
        if i != 4 && i != 7 && !is_digit(b[i]) {
            return Err(InvalidValue::DateBad);
        }
        i += 1;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    if month < 1 || month > 12 || day < 1 || day > 31 {
        return Err(InvalidValue::DateBad);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        let table: &[(&str, Result<(), InvalidValue>)] = &[
            ("3.5.15.1", Ok(())),
            ("1.2.3", Ok(())),
            ("0.10.1.7", Ok(())),
            ("1.15.11.1-rc.1", Ok(())),
            ("1.0.0-alpha-1.x", Ok(())),
            ("", Err(InvalidValue::Empty)),
            ("1.2", Err(InvalidValue::TagTooFewParts)),
            ("latest", Err(InvalidValue::TagBadNumber)),
            ("1.2.x", Err(InvalidValue::TagBadNumber)),
            ("1.02.3", Err(InvalidValue::TagBadNumber)),
            ("1..3", Err(InvalidValue::TagBadNumber)),
            ("1.2.3.", Err(InvalidValue::TagBadNumber)),
            ("1.2.3-", Err(InvalidValue::TagBadPrerelease)),
            ("1.2.3-rc..1", Err(InvalidValue::TagBadPrerelease)),
            ("1.2.3-rc_1", Err(InvalidValue::TagBadPrerelease)),
            ("v1.2.3", Err(InvalidValue::TagBadNumber)),
            ("99999999999999999999.1.1", Err(InvalidValue::TagBadNumber)),
        ];
        for (tag, want) in table {
            assert_eq!(check_image_tag(tag), *want, "tag {tag:?}");
        }
    }

    #[test]
    fn digests() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(check_digest(&good), Ok(()));
        assert_eq!(check_digest("md5:00"), Err(InvalidValue::DigestNotSha256));
        assert_eq!(check_digest("sha256:abc"), Err(InvalidValue::DigestBadHex));
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(check_digest(&upper), Err(InvalidValue::DigestBadHex));
        let good = format!("sha512:{}", "cd".repeat(64));
        assert_eq!(check_file_digest(&good), Ok(()));
        assert_eq!(
            check_file_digest(&format!("sha256:{}", "ab".repeat(32))),
            Err(InvalidValue::FileDigestNotSha512)
        );
        assert_eq!(
            check_file_digest(&format!("sha512:{}", "ab".repeat(32))),
            Err(InvalidValue::FileDigestBadHex)
        );
    }

    #[test]
    fn names_and_repositories() {
        assert_eq!(check_name("cilium-operator-generic"), Ok(()));
        assert_eq!(check_name("Etcd"), Err(InvalidValue::NameBadChar));
        assert_eq!(check_name("-etcd"), Err(InvalidValue::NameBadChar));
        assert_eq!(check_repository("ghcr.io/cybozu/etcd"), Ok(()));
        assert_eq!(check_repository("127.0.0.1:5000/cybozu/etcd"), Ok(()));
        assert_eq!(
            check_repository("ghcr.io"),
            Err(InvalidValue::RepositoryBad)
        );
        assert_eq!(
            check_repository("ghcr.io/Cybozu/etcd"),
            Err(InvalidValue::RepositoryBad)
        );
        assert_eq!(
            check_repository("ghcr.io/a//b"),
            Err(InvalidValue::RepositoryBad)
        );
        assert_eq!(check_github_repo("cybozu-go/etcdpasswd"), Ok(()));
        assert_eq!(
            check_github_repo("cybozu-go"),
            Err(InvalidValue::GitHubRepoBad)
        );
        assert_eq!(check_github_repo("a/b/c"), Err(InvalidValue::GitHubRepoBad));
    }

    #[test]
    fn release_assets_versions_dates() {
        assert_eq!(check_release_tag("v1.4.9"), Ok(()));
        assert_eq!(check_release_tag("v1 4"), Err(InvalidValue::ReleaseTagBad));
        assert_eq!(check_release_tag("../x"), Err(InvalidValue::ReleaseTagBad));
        assert_eq!(check_asset_name("etcdpasswd_1.4.9_amd64.deb"), Ok(()));
        assert_eq!(check_asset_name("a/b.deb"), Err(InvalidValue::AssetNameBad));
        assert_eq!(check_os_version("4152.2.1"), Ok(()));
        assert_eq!(check_os_version("4152.2"), Err(InvalidValue::OsVersionBad));
        assert_eq!(check_date("2026-11-26"), Ok(()));
        assert_eq!(check_date("2026-13-01"), Err(InvalidValue::DateBad));
        assert_eq!(check_date("26-11-2026"), Err(InvalidValue::DateBad));
    }
}
