//! The OS image release feed: a JSON object whose keys are versions, plus `current`; and the
//! checksum files published next to each release's files.

use fetch::http::{require_success, Http, HttpError};
use reqwest::Url;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: bad URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: expected a JSON object keyed by version")]
    NotAnObject { url: String },
    #[error("{url}: not a usable checksum file: {message}")]
    BadDigests { url: String, message: String },
}

/// The versions the feed lists, without the `current` key.
pub async fn versions(http: &Http, feed: &str) -> Result<Vec<String>, FeedError> {
    let url = Url::parse(feed).map_err(|e| FeedError::BadUrl {
        url: feed.to_owned(),
        message: e.to_string(),
    })?;
    let request = http
        .client()
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .build()
        .map_err(|e| FeedError::BadUrl {
            url: feed.to_owned(),
            message: e.to_string(),
        })?;
    let got = require_success("GET", http.fetch(request).await?)?;
    let value: serde_json::Value = got.json()?;
    let object = value.as_object().ok_or_else(|| FeedError::NotAnObject {
        url: url.to_string(),
    })?;
    Ok(object
        .keys()
        .filter(|key| key.as_str() != "current")
        .cloned()
        .collect())
}

/// The SHA-512 checksum that a `.DIGESTS` file gives for `file`, as `sha512:<hex>`.
///
/// Flatcar publishes one such file next to each release file (`<file>.DIGESTS`, and a
/// clear-signed copy `<file>.DIGESTS.asc`): sections headed `# MD5 HASH`, `# SHA1 HASH` and
/// `# SHA512 HASH`, each followed by `<hex>  <file name>` lines, as `sha512sum` prints them.
/// Only the SHA-512 section is used; a file without one, or without a line for `file` in it,
/// is refused (the message says which).
pub fn sha512_from_digests(text: &str, file: &str) -> Result<String, String> {
    let mut in_sha512 = false;
    let mut seen_section = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(header) = line.strip_prefix('#') {
            in_sha512 = header.trim().eq_ignore_ascii_case("SHA512 HASH");
            seen_section |= in_sha512;
            continue;
        }
        if !in_sha512 {
            continue;
        }
        let Some((hex, name)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        // `sha512sum` marks binary mode with `*` before the name.
        let name = name.trim_start().trim_start_matches('*');
        if name != file {
            continue;
        }
        let hex = hex.to_ascii_lowercase();
        let digest = format!("sha512:{hex}");
        return artifacts::check_file_digest(&digest)
            .map(|()| digest)
            .map_err(|_| format!("the SHA512 line for {file} holds {hex:?}, not 128 hex digits"));
    }
    Err(if seen_section {
        format!("its `# SHA512 HASH` section has no line for {file}")
    } else {
        "it has no `# SHA512 HASH` section".to_owned()
    })
}

/// Downloads `<file>.DIGESTS` at `url` and returns the SHA-512 it gives for `file`.
pub async fn file_sha512(http: &Http, url: &Url, file: &str) -> Result<String, FeedError> {
    let request = http
        .client()
        .get(url.clone())
        .build()
        .map_err(|e| FeedError::BadUrl {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    let got = require_success("GET", http.fetch(request).await?)?;
    let text = String::from_utf8_lossy(&got.body);
    sha512_from_digests(&text, file).map_err(|message| FeedError::BadDigests {
        url: url.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::sha512_from_digests;

    const KERNEL: &str = "flatcar_production_pxe.vmlinuz";

    fn flatcar_digests(sha512: &str) -> String {
        format!(
            "# MD5 HASH\n{md5}  {KERNEL}\n# SHA1 HASH\n{sha1}  {KERNEL}\n# SHA512 HASH\n{sha512}  {KERNEL}\n",
            md5 = "1".repeat(32),
            sha1 = "2".repeat(40),
        )
    }

    #[test]
    fn the_sha512_section_gives_the_checksum() {
        let hex = "ab".repeat(64);
        let table: Vec<(String, Result<String, &str>)> = vec![
            (flatcar_digests(&hex), Ok(format!("sha512:{hex}"))),
            // Upper-case hex, binary-mode marker, CRLF line ends.
            (
                format!("# SHA512 HASH\r\n{}  *{KERNEL}\r\n", hex.to_uppercase()),
                Ok(format!("sha512:{hex}")),
            ),
            // Several files in one section: the line naming ours.
            (
                format!(
                    "# SHA512 HASH\n{}  other.img\n{hex}  {KERNEL}\n",
                    "cd".repeat(64)
                ),
                Ok(format!("sha512:{hex}")),
            ),
            (
                format!("# MD5 HASH\n{}  {KERNEL}\n", "1".repeat(32)),
                Err("no `# SHA512 HASH` section"),
            ),
            (
                format!("# SHA512 HASH\n{hex}  other.img\n"),
                Err("no line for flatcar_production_pxe.vmlinuz"),
            ),
            (flatcar_digests("abc"), Err("not 128 hex digits")),
            (
                "<html>Not Found</html>".to_owned(),
                Err("no `# SHA512 HASH` section"),
            ),
        ];
        for (text, want) in table {
            let got = sha512_from_digests(&text, KERNEL);
            match (&got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, &want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got} / {text}"),
                _ => panic!("{text}: got {got:?}"),
            }
        }
    }
}
