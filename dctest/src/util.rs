//! Small helpers shared by the fixtures: digests, URL pieces, basic auth, locks.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The workspace's target directory: `$CARGO_TARGET_DIR`, else `target/` beside this crate.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Writes a text file, creating its directories.
pub(crate) fn write_text(path: &std::path::Path, content: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    std::fs::write(path, content).map_err(Error::io(format!("writing {}", path.display())))
}

/// The last `lines` lines of a text, after a line saying how many were left out.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    use std::fmt::Write as _;
    let all: Vec<&str> = text.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skipped > 0 {
        let _ = writeln!(out, "[… {skipped} earlier lines]");
    }
    out.push_str(&all[skipped..].join("\n"));
    out
}

/// Returns the OCI digest string `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha512:<hex>` of `bytes` (the form of OS image checksums).
pub fn sha512_digest(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

/// Returns the value of an `Authorization` header for HTTP basic auth.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

/// Standard base64 with padding (RFC 4648 §4).
pub(crate) fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on a character outside the alphabet.
pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let digits = input.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in digits {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`); invalid escapes stay as-is.
pub(crate) fn percent_decode(input: &str, plus_is_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hi = char::from(bytes[i + 1]).to_digit(16);
                let lo = char::from(bytes[i + 2]).to_digit(16);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    // Both digits are < 16, so the value fits in a byte.
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but RFC 3986 unreserved characters as `%XX`.
pub(crate) fn percent_encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a query string into decoded key/value pairs, keeping repeated keys.
pub(crate) fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

/// Returns the first value of `key` in parsed query pairs.
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Locks a mutex, ignoring poisoning: fixture state stays usable after a panicking test thread.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An `http://` URL whose host is a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoopbackUrl {
    /// `host:port` as written in the URL (for the `Host` header).
    pub(crate) authority: String,
    /// Resolved loopback socket addresses.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
}

impl LoopbackUrl {
    /// Parses `http://host[:port][/path]`, refusing hosts that are not loopback addresses.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host:port"))?;
        let addrs: Vec<SocketAddr> = if host.eq_ignore_ascii_case("localhost") {
            (host, port)
                .to_socket_addrs()
                .map_err(|e| invalid(&format!("cannot resolve localhost: {e}")))?
                .filter(|a| a.ip().is_loopback())
                .collect()
        } else {
            let ip: IpAddr = host
                .parse()
                .map_err(|_| invalid("host must be a loopback IP address or localhost"))?;
            vec![SocketAddr::new(ip, port)]
        };
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(invalid("host is not a loopback address"));
        }
        Ok(Self {
            authority: authority.to_owned(),
            addrs,
            path: path.to_owned(),
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the default port is 80.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "[… 1 earlier lines]\nb\nc");
        assert_eq!(tail("a\n", 5), "a");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input}");
            assert_eq!(
                base64_decode(expected).as_deref(),
                Some(input.as_bytes()),
                "{expected}"
            );
        }
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(
            basic_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn percent_round_trip() {
        assert_eq!(percent_encode("a b/c:d"), "a%20b%2Fc%3Ad");
        assert_eq!(percent_decode("a%20b%2Fc%3Ad", false), "a b/c:d");
        assert_eq!(percent_decode("a+b%zz%4", true), "a b%zz%4");
        assert_eq!(percent_decode("%41", false), "A");
    }

    #[test]
    fn query_pairs_keep_repeats() {
        let pairs = parse_query(Some("scope=repository%3Aa%2Fb%3Apull&scope=x&n=2&flag"));
        assert_eq!(query_value(&pairs, "n"), Some("2"));
        assert_eq!(query_value(&pairs, "flag"), Some(""));
        let scopes: Vec<_> = pairs.iter().filter(|(k, _)| k == "scope").collect();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].1, "repository:a/b:pull");
    }

    #[test]
    fn loopback_urls_only() {
        let url = LoopbackUrl::parse("http://127.0.0.1:8080/v2/").expect("valid");
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.path, "/v2/");
        assert_eq!(LoopbackUrl::parse("http://[::1]:9").expect("v6").path, "/");
        assert!(LoopbackUrl::parse("http://localhost:1/x").is_ok());
        assert!(LoopbackUrl::parse("http://10.0.0.1:80/").is_err());
        assert!(LoopbackUrl::parse("http://example.com/").is_err());
        assert!(LoopbackUrl::parse("https://127.0.0.1/").is_err());
    }
}
