// A pre-release tag with an empty identifier.
use artifacts::ImageTag;

pub const TAG: ImageTag = ImageTag::new("1.15.11.1-rc..1");

fn main() {}
