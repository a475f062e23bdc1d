//! artifacts-gen: resolves the upstream components listed in `artifacts.toml` to their newest
//! acceptable versions and writes them as the generated Rust pins of the `artifacts` crate.
//!
//! It owns the pipeline resolve (network: OCI registries, GitHub releases, the OS feed) →
//! policy (pure: [`policy::select`]) → render (pure: [`generated::render`], `quote` +
//! `prettyplease`) → write atomically; it reads generated files back with `syn`
//! ([`generated::parse`]), so `render(parse(file)) == file` and there is no second lock file.
//!
//! Dependency rule: it uses only the model of the `artifacts` crate (`default-features =
//! false`), never its generated data, so it builds and runs when a generated file is missing
//! or broken: it is the tool that repairs them.

pub mod cli;
pub mod feed;
pub mod generated;
pub mod github;
pub mod http;
pub mod manifest;
pub mod policy;
pub mod registry;
pub mod resolve;

/// A secret string (token, password): never printed by `Debug` or `Display`.
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

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_not_printed() {
        let s = super::Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
