//! artifacts-gen: resolves the upstream components listed in `artifacts.toml` to their newest
//! acceptable versions and writes them as the generated Rust pins of the `artifacts` crate.
//!
//! It owns the pipeline resolve (network: OCI registries, GitHub releases, the OS feed) →
//! policy (pure: [`policy::select`]) → render (pure: [`generated::render`], `quote` +
//! `prettyplease`) → write atomically; it reads generated files back with `syn`
//! ([`generated::parse`]), so `render(parse(file)) == file` and there is no second lock file.
//!
//! The HTTP edge (retries, per-host limits, `Secret`), the OCI registry client
//! (`fetch::registry`) and the GitHub client are the `fetch` crate's, shared with the daemons.
//!
//! Dependency rule: it uses only the model of the `artifacts` crate (`default-features =
//! false`), never its generated data, so it builds and runs when a generated file is missing
//! or broken: it is the tool that repairs them.

pub mod cli;
pub mod feed;
pub mod generated;
pub mod manifest;
pub mod policy;
pub mod resolve;
