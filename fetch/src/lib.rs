//! fetch: the HTTP edge shared by artifacts-gen and the daemons.
//!
//! It owns everything that talks HTTP to the outside world, so each idea lives in one place:
//! - [`http`]: a client with a per-host concurrency limit, retries with backoff on 429 and
//!   5xx honouring `Retry-After`, an optional proxy, and errors that name method and URL;
//! - [`registry`]: the OCI distribution client (tag lists with `Link` pagination, bearer-token
//!   challenges, basic credentials, manifest digests, manifests and blobs verified by digest);
//! - [`oci`]: pinned images copied by digest, verified, into an OCI image layout;
//! - [`github`]: the GitHub REST client (releases with `Link` pagination, latest release,
//!   release by tag or id, asset download, asset sha256, rate limits as a distinct error; and
//!   for publishing: create and edit a release, upload and delete an asset);
//! - [`Secret`]: tokens and passwords, never printed.
//!
//! Dependency rule: it depends on no crate of this workspace (not even `artifacts`; the one
//! digest check it needs is [`is_sha256_digest`]), so every crate can use it.

pub mod github;
pub mod http;
pub mod oci;
pub mod registry;

use sha2::{Digest as _, Sha256};

/// A secret string (token, password): never printed by `Debug`, and no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `sha256:<64 lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn digests() {
        let empty = sha256_digest(b"");
        assert_eq!(
            empty,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_sha256_digest(&empty));
        assert!(!is_sha256_digest(&empty.to_uppercase()));
        assert!(!is_sha256_digest(&empty.replace("sha256:", "sha512:")));
        assert!(!is_sha256_digest(&empty[..empty.len() - 1]));
        assert!(!is_sha256_digest(&format!("{empty}0")));
        assert!(!is_sha256_digest(&empty.replace('e', "g")));
    }
}
