//! The artifact model: what a pinned component is.

use crate::validate::{
    check_asset_name, check_date, check_digest, check_file_digest, check_github_repo,
    check_image_tag, check_name, check_os_version, check_release_tag, check_repository,
    InvalidValue,
};
use std::fmt;

macro_rules! checked_str {
    ($(#[$doc:meta])* $ty:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(&'static str);

        impl $ty {
            /// Checks the value; in a `const` item an invalid value is a compile error that
            /// prints what is wrong.
            pub const fn new(value: &'static str) -> Self {
                match $check(value) {
                    Ok(()) => Self(value),
                    Err(e) => panic!("{}", e.message()),
                }
            }

            /// Checks a value at run time.
            pub const fn try_new(value: &'static str) -> Result<Self, InvalidValue> {
                match $check(value) {
                    Ok(()) => Ok(Self(value)),
                    Err(e) => Err(e),
                }
            }

            pub const fn as_str(&self) -> &'static str {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
    };
}

checked_str!(
    /// A component or channel name, e.g. `etcd`, `stable`.
    Name, check_name
);
checked_str!(
    /// An image repository including its registry host, e.g. `ghcr.io/cybozu/etcd`.
    Repository, check_repository
);
checked_str!(
    /// A version-shaped image tag, e.g. `3.5.15.1` or `1.15.11.1-rc.1`.
    ImageTag, check_image_tag
);
checked_str!(
    /// A content digest `sha256:<64 hex>`.
    Digest, check_digest
);
checked_str!(
    /// The checksum of an OS image file, `sha512:<128 hex>`, as the OS feed publishes it.
    FileDigest, check_file_digest
);
checked_str!(
    /// A GitHub repository `owner/name`.
    GitHubRepo, check_github_repo
);
checked_str!(
    /// A GitHub release tag, e.g. `v1.4.9`.
    ReleaseTag, check_release_tag
);
checked_str!(
    /// A release asset file name, e.g. `etcdpasswd_1.4.9_amd64.deb`.
    AssetName, check_asset_name
);
checked_str!(
    /// An OS image version, e.g. `4152.2.1`.
    OsVersion, check_os_version
);
checked_str!(
    /// The day (UTC) a pin was first resolved to its current value, `YYYY-MM-DD`.
    Date, check_date
);

/// A container image pinned by tag and manifest digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerImage {
    pub name: Name,
    pub repository: Repository,
    pub tag: ImageTag,
    /// The digest of the image manifest the tag pointed to when it was resolved.
    pub digest: Digest,
    /// Pulling needs registry credentials.
    pub private: bool,
    pub resolved: Date,
}

impl ContainerImage {
    /// `repository:tag@digest`: the reference that pulls exactly the pinned content.
    pub fn reference(&self) -> String {
        format!("{}:{}@{}", self.repository, self.tag, self.digest)
    }

    /// The registry host, e.g. `ghcr.io`.
    pub fn registry(&self) -> &'static str {
        let repo = self.repository.as_str();
        repo.split_once('/').map_or(repo, |(host, _)| host)
    }

    /// The repository path within its registry, e.g. `cybozu/etcd`.
    pub fn path(&self) -> &'static str {
        let repo = self.repository.as_str();
        repo.split_once('/').map_or("", |(_, path)| path)
    }
}

/// A Debian package pinned to one asset of a GitHub release, by sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DebianPackage {
    pub name: Name,
    pub repository: GitHubRepo,
    pub release: ReleaseTag,
    pub asset: AssetName,
    pub sha256: Digest,
    pub resolved: Date,
}

impl DebianPackage {
    /// The asset's download URL on github.com.
    pub fn download_url(&self) -> String {
        format!(
            "https://github.com/{}/releases/download/{}/{}",
            self.repository, self.release, self.asset
        )
    }
}

/// The OS image served to machines by sabakan: a PXE kernel and initrd, each pinned by the
/// checksum the feed published for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OsImage {
    pub channel: Name,
    pub version: OsVersion,
    /// The checksum of [`OsImage::KERNEL_FILE`].
    pub kernel_sha512: FileDigest,
    /// The checksum of [`OsImage::INITRD_FILE`].
    pub initrd_sha512: FileDigest,
    pub resolved: Date,
}

impl OsImage {
    /// The file name of the PXE kernel in a release's directory.
    pub const KERNEL_FILE: &'static str = "flatcar_production_pxe.vmlinuz";
    /// The file name of the PXE initrd in a release's directory.
    pub const INITRD_FILE: &'static str = "flatcar_production_pxe_image.cpio.gz";
    /// The URL of `file` of a release: `<base>amd64-usr/<version>/<file>`, where `base` is the
    /// feed's file base URL with `{channel}` replaced by `channel` (e.g.
    /// `https://{channel}.release.flatcar-linux.net/`).
    pub fn file_url(base_template: &str, channel: &str, version: &str, file: &str) -> String {
        let base = base_template.replace("{channel}", channel);
        format!("{base}amd64-usr/{version}/{file}")
    }

    /// The kernel and the initrd, with their checksums.
    pub fn files(&self) -> [(&'static str, FileDigest); 2] {
        [
            (Self::KERNEL_FILE, self.kernel_sha512),
            (Self::INITRD_FILE, self.initrd_sha512),
        ]
    }
}

/// Everything one neco release pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactSet {
    pub images: &'static [ContainerImage],
    pub debs: &'static [DebianPackage],
    pub os_image: OsImage,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: Digest =
        Digest::new("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");

    #[test]
    fn image_reference_and_parts() {
        let image = ContainerImage {
            name: Name::new("etcd"),
            repository: Repository::new("ghcr.io/cybozu/etcd"),
            tag: ImageTag::new("3.5.15.1"),
            digest: DIGEST,
            private: false,
            resolved: Date::new("2026-11-26"),
        };
        assert_eq!(image.registry(), "ghcr.io");
        assert_eq!(image.path(), "cybozu/etcd");
        assert_eq!(
            image.reference(),
            format!("ghcr.io/cybozu/etcd:3.5.15.1@{}", DIGEST.as_str())
        );
    }

    #[test]
    fn try_new_reports_the_error() {
        assert_eq!(ImageTag::try_new("1.2"), Err(InvalidValue::TagTooFewParts));
        assert!(Digest::try_new("sha256:00").is_err());
    }

    #[test]
    fn deb_download_url() {
        let deb = DebianPackage {
            name: Name::new("etcdpasswd"),
            repository: GitHubRepo::new("cybozu-go/etcdpasswd"),
            release: ReleaseTag::new("v1.4.9"),
            asset: AssetName::new("etcdpasswd_1.4.9_amd64.deb"),
            sha256: DIGEST,
            resolved: Date::new("2026-11-26"),
        };
        assert_eq!(
            deb.download_url(),
            "https://github.com/cybozu-go/etcdpasswd/releases/download/v1.4.9/etcdpasswd_1.4.9_amd64.deb"
        );
    }
}
