// A generated image whose digest is truncated.
use artifacts::{ContainerImage, Date, Digest, ImageTag, Name, Repository};

pub const ETCD: ContainerImage = ContainerImage {
    name: Name::new("etcd"),
    repository: Repository::new("ghcr.io/cybozu/etcd"),
    tag: ImageTag::new("3.5.15.1"),
    digest: Digest::new("sha256:0123456789abcdef"),
    private: false,
    resolved: Date::new("2026-11-26"),
};

fn main() {}
