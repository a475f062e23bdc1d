// A deb whose sha256 lacks the algorithm prefix.
use artifacts::{AssetName, Date, DebianPackage, Digest, GitHubRepo, Name, ReleaseTag};

pub const ETCDPASSWD: DebianPackage = DebianPackage {
    name: Name::new("etcdpasswd"),
    repository: GitHubRepo::new("cybozu-go/etcdpasswd"),
    release: ReleaseTag::new("v1.4.9"),
    asset: AssetName::new("etcdpasswd_1.4.9_amd64.deb"),
    sha256: Digest::new("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    resolved: Date::new("2026-11-26"),
};

fn main() {}
