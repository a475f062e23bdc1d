//! The pinned upstream components of neco-rs.
//!
//! This crate owns the **artifact model** ([`ArtifactSet`], [`ContainerImage`],
//! [`DebianPackage`], [`OsImage`] and the validated value types they are made of) and the
//! **generated data**: `src/generated/artifacts.rs` (default, development pins) or, with the
//! cargo feature `release`, `src/generated/artifacts_release.rs` (pins of the nightly release
//! pipeline). Both files are written by `artifacts-gen` and define the same items:
//! [`images`], [`debs`], [`OS_IMAGE`], [`ARTIFACTS`] and [`RESOLVED_FROM`].
//!
//! Every value is checked by a `const fn` while the constants are evaluated, so a malformed
//! tag, digest or name in a generated file is a compile error with a readable message.
//!
//! Dependency rule: this crate depends on nothing (no tokio, no HTTP, no serde). Daemons refer
//! to components by typed constants (`artifacts::images::ETCD`), never by string lookup.
//! Without the default feature `data`, only the model is built; `artifacts-gen` uses it that
//! way so that it can repair a broken generated file.

mod model;
mod validate;
pub mod version;

pub use model::{
    ArtifactSet, AssetName, ContainerImage, Date, DebianPackage, Digest, FileDigest, GitHubRepo,
    ImageTag, Name, OsImage, OsVersion, ReleaseTag, Repository,
};
pub use validate::{
    check_asset_name, check_date, check_digest, check_file_digest, check_github_repo,
    check_image_tag, check_name, check_os_version, check_release_tag, check_repository,
    InvalidValue,
};

#[cfg(all(feature = "data", not(feature = "release")))]
#[path = "generated/artifacts.rs"]
mod generated;

#[cfg(feature = "release")]
#[path = "generated/artifacts_release.rs"]
mod generated;

#[cfg(feature = "data")]
pub use generated::{debs, images, ARTIFACTS, OS_IMAGE, RESOLVED_FROM};
