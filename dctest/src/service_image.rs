//! The container images of the mirror: one function builds the blobs of the image of
//! `repository:tag` ([`ImageBlobs::build`]); the registry seeder pushes them
//! ([`crate::Registry::push_image`]) and [`write_oci_layout`] writes them as an OCI image
//! layout (what `podman run oci:DIR:TAG` runs), so both are the same bytes.
//!
//! The image has one uncompressed tar layer holding one file, `/serve` (mode 0755): the
//! program of [`crate::service_elf`], which answers `<repository>:<tag>\n` over HTTP on
//! [`crate::service_port`]`(repository)`. The config's `Entrypoint` runs it, so the arguments
//! after the image (`podman run … oci:DIR:TAG --name boot-0`) go to it, and it ignores them.
//! Nothing depends on the host or the time: the digests follow from repository and tag.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::registry::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::service_elf::{service_port, service_program};
use crate::util::sha256_digest;
use crate::{Error, Result};

/// Where the program is in the image.
pub const PROGRAM_PATH: &str = "/serve";
/// The annotation that names an image in an OCI layout's `index.json` (its tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The content of an OCI layout's `oci-layout` file.
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// The blobs of one image and their digests (`sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlobs {
    /// The image config (JSON).
    pub config: Vec<u8>,
    pub config_digest: String,
    /// The one layer (an uncompressed tar).
    pub layer: Vec<u8>,
    pub layer_digest: String,
    /// The OCI image manifest (JSON) naming config and layer.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

impl ImageBlobs {
    /// The image of `repository:tag` (`repository` as the registry names it, `cybozu/etcd`).
    pub fn build(repository: &str, tag: &str) -> Result<Self> {
        Self::build_as(repository, tag, None, "amd64")
    }

    /// [`ImageBlobs::build`] with the label `io.cybozu.neco-rs.origin=<origin>` in the config
    /// (the same program, other digests: an upstream's image is not a mirror's) and the
    /// config's `architecture` (the program is x86-64 whatever it says).
    pub fn build_as(
        repository: &str,
        tag: &str,
        origin: Option<&str>,
        architecture: &str,
    ) -> Result<Self> {
        let program = service_program(repository, tag)?;
        let layer = single_file_tar(PROGRAM_PATH.trim_start_matches('/'), &program, 0o755)?;
        let layer_digest = sha256_digest(&layer);
        let mut image_config = json!({
            "Entrypoint": [PROGRAM_PATH],
            "ExposedPorts": { format!("{}/tcp", service_port(repository)): {} },
        });
        if let Some(origin) = origin {
            image_config["Labels"] = json!({ "io.cybozu.neco-rs.origin": origin });
        }
        let config = serde_json::to_vec(&json!({
            "architecture": architecture,
            "os": "linux",
            "config": image_config,
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))?;
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": OCI_LAYER_TAR,
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        Ok(Self {
            manifest_digest: sha256_digest(&manifest),
            config,
            config_digest,
            layer,
            layer_digest,
            manifest,
        })
    }
}

/// Writes the image of `repository:tag` as an OCI image layout at `dir` (created when
/// missing): `oci-layout`, the blobs under `blobs/sha256/`, and an `index.json` listing this
/// one image named by `tag` (an earlier `index.json` is replaced), so that
/// `podman run oci:DIR:TAG` runs it. Returns the blobs written.
pub fn write_oci_layout(dir: &Path, repository: &str, tag: &str) -> Result<ImageBlobs> {
    let image = ImageBlobs::build(repository, tag)?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(Error::io(format!("create {}", blobs.display())))?;
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(Error::io(format!("write {}", path.display())))
    };
    for (digest, bytes) in [
        (&image.config_digest, &image.config),
        (&image.layer_digest, &image.layer),
        (&image.manifest_digest, &image.manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        write(&blobs.join(hex), bytes)?;
    }
    write(&dir.join("oci-layout"), OCI_LAYOUT.as_bytes())?;
    let annotations: BTreeMap<&str, &str> = [(REF_NAME, tag)].into_iter().collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": annotations,
        }],
    }))?;
    write(&dir.join("index.json"), &index)?;
    Ok(image)
}

/// Which repository's service has which port: a second repository on a port already taken
/// is refused, since their services could not run side by side on one machine.
#[derive(Debug, Default)]
pub(crate) struct ServicePorts {
    taken: BTreeMap<u16, String>,
}

impl ServicePorts {
    /// Takes the port of `repository` (a repository may take its own port again).
    pub(crate) fn claim(&mut self, repository: &str) -> Result<u16> {
        let port = service_port(repository);
        match self.taken.get(&port) {
            Some(other) if other != repository => Err(Error::InvalidArgument(format!(
                "the services of {other:?} and {repository:?} would both listen on port \
                 {port} (dctest::service_port): rename one of the repositories"
            ))),
            Some(_) => Ok(port),
            None => {
                self.taken.insert(port, repository.to_owned());
                Ok(port)
            }
        }
    }
}

/// Builds a POSIX ustar archive holding one regular file (`mode`, mtime 0, owner root).
pub(crate) fn single_file_tar(path: &str, content: &[u8], mode: u32) -> Result<Vec<u8>> {
    const BLOCK: usize = 512;
    if path.is_empty() || path.len() > 100 {
        return Err(Error::InvalidArgument(format!(
            "tar member name {path:?} must have 1 to 100 bytes"
        )));
    }
    if mode > 0o7777 {
        return Err(Error::InvalidArgument(format!(
            "tar member mode {mode:o} has more than 12 bits"
        )));
    }
    let mut header = [0u8; BLOCK];
    let mut put = |offset: usize, field: &[u8]| {
        header[offset..offset + field.len()].copy_from_slice(field);
    };
    put(0, path.as_bytes()); // name
    put(100, format!("{mode:07o}\0").as_bytes()); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", content.len()).as_bytes()); // size
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // checksum, counted as spaces
    put(156, b"0"); // typeflag: regular file
    put(257, b"ustar\0"); // magic
    put(263, b"00"); // version
    put(265, b"root"); // uname
    put(297, b"root"); // gname
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());

    let padded = content.len().div_ceil(BLOCK) * BLOCK;
    let mut tar = Vec::with_capacity(BLOCK + padded + 2 * BLOCK);
    tar.extend_from_slice(&header);
    tar.extend_from_slice(content);
    tar.resize(BLOCK + padded + 2 * BLOCK, 0);
    Ok(tar)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// `tar` with `args` reading `archive` on stdin; returns stdout.
    fn gnu_tar(args: &[&str], archive: &[u8]) -> Vec<u8> {
        let mut child = Command::new("tar")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tar");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(archive)
            .expect("write tar");
        let output = child.wait_with_output().expect("tar output");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn tar_is_read_by_gnu_tar() {
        let tar = single_file_tar("etc/dctest-image", b"hello\n", 0o644).expect("tar");
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(gnu_tar(&["-xOf", "-"], &tar), b"hello\n");
        let listing = gnu_tar(&["-tvf", "-", "--numeric-owner"], &tar);
        let listing = String::from_utf8_lossy(&listing);
        assert!(listing.starts_with("-rw-r--r-- 0/0"), "{listing}");
        assert!(single_file_tar("", b"", 0o644).is_err());
        assert!(single_file_tar("x", b"", 0o17777).is_err());
    }

    #[test]
    fn the_layer_holds_the_executable_program() {
        let image = ImageBlobs::build("cybozu/etcd", "3.5.15.1").unwrap();
        let listing = gnu_tar(&["-tvf", "-", "--numeric-owner"], &image.layer);
        let listing = String::from_utf8_lossy(&listing);
        assert!(listing.starts_with("-rwxr-xr-x 0/0"), "{listing}");
        assert!(listing.trim_end().ends_with(" serve"), "{listing}");
        assert_eq!(
            gnu_tar(&["-xOf", "-"], &image.layer),
            service_program("cybozu/etcd", "3.5.15.1").unwrap()
        );
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/serve"]));
        assert_eq!(config["rootfs"]["diff_ids"], json!([image.layer_digest]));
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["config"]["digest"], json!(image.config_digest));
        assert_eq!(manifest["layers"][0]["digest"], json!(image.layer_digest));
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest));
    }

    #[test]
    fn images_are_deterministic_and_differ_by_tag() {
        let a = ImageBlobs::build("cybozu/etcd", "3.5.15.1").unwrap();
        assert_eq!(a, ImageBlobs::build("cybozu/etcd", "3.5.15.1").unwrap());
        let b = ImageBlobs::build("cybozu/etcd", "3.5.16.1").unwrap();
        assert_ne!(a.manifest_digest, b.manifest_digest);
        assert_ne!(a.layer_digest, b.layer_digest);
    }

    /// The pin files resolved against the mirror name the digests of these images: what the
    /// suites check against the running mirror (tests/common), checked here without one. A
    /// change of the images needs `cargo xtask codegen --mirror`.
    #[test]
    fn mirror_resolved_pins_name_the_digests_of_these_images() {
        for (name, pins) in [
            (
                "artifacts.rs",
                include_str!("../../artifacts/src/generated/artifacts.rs"),
            ),
            (
                "artifacts_release.rs",
                include_str!("../../artifacts/src/generated/artifacts_release.rs"),
            ),
        ] {
            if !pins.contains("RESOLVED_FROM: &str = \"a local mirror") {
                continue;
            }
            let mut checked = 0;
            for block in pins.split(": ContainerImage = ContainerImage {").skip(1) {
                let field = |key: &str| {
                    let rest = &block[block.find(&format!("{key}: ")).unwrap()..];
                    let open = rest.find('"').unwrap() + 1;
                    let close = open + rest[open..].find('"').unwrap();
                    rest[open..close].to_owned()
                };
                let repository = field("repository");
                let (_, path) = repository.split_once('/').unwrap();
                let tag = field("tag");
                assert_eq!(
                    ImageBlobs::build(path, &tag).unwrap().manifest_digest,
                    field("digest"),
                    "{name} pins {repository}:{tag} at another digest than the mirror's image \
                     has: run `cargo xtask codegen --mirror`"
                );
                checked += 1;
            }
            assert!(checked >= 10, "{name}: {checked} images");
        }
    }

    #[test]
    fn a_layout_lists_the_image_by_tag() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("etcd");
        let image = write_oci_layout(&layout, "cybozu/etcd", "3.5.15.1").unwrap();
        assert_eq!(
            std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
            OCI_LAYOUT
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"],
            json!(image.manifest_digest)
        );
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME],
            json!("3.5.15.1")
        );
        for (digest, bytes) in [
            (&image.config_digest, &image.config),
            (&image.layer_digest, &image.layer),
            (&image.manifest_digest, &image.manifest),
        ] {
            let path = layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            assert_eq!(&std::fs::read(path).unwrap(), bytes);
        }
    }

    #[test]
    fn two_repositories_on_one_port_are_refused_naming_both() {
        // Find two names whose ports collide.
        let mut seen = BTreeMap::new();
        let (first, second) = (0..)
            .map(|i| format!("collide/{i}"))
            .find_map(|name| {
                let port = service_port(&name);
                match seen.get(&port) {
                    Some(other) => Some((String::clone(other), name)),
                    None => {
                        seen.insert(port, name);
                        None
                    }
                }
            })
            .unwrap();
        let mut ports = ServicePorts::default();
        let port = ports.claim(&first).unwrap();
        assert_eq!(ports.claim(&first).unwrap(), port);
        let err = ports.claim(&second).unwrap_err().to_string();
        assert!(
            err.contains(&first) && err.contains(&second) && err.contains(&port.to_string()),
            "{err}"
        );
    }

    /// The repositories of the mirror's seed and of both pin files: none shares a port with
    /// another, so every pinned service can run on one boot server.
    #[test]
    fn no_two_seeded_or_pinned_repositories_share_a_port() {
        let seed = crate::mirror::MirrorSeed::neco_2025().unwrap();
        let mut repositories: Vec<String> =
            seed.image.iter().map(|i| i.repository.clone()).collect();
        for pins in [
            include_str!("../../artifacts/src/generated/artifacts.rs"),
            include_str!("../../artifacts/src/generated/artifacts_release.rs"),
        ] {
            for rest in pins.split("Repository::new(\"").skip(1) {
                let end = rest.find('"').unwrap();
                repositories.push(rest[..end].to_owned());
            }
        }
        repositories.sort();
        repositories.dedup();
        assert!(repositories.len() >= 10, "{repositories:?}");
        let mut ports = ServicePorts::default();
        for repository in &repositories {
            let (_, path) = repository.split_once('/').unwrap();
            ports.claim(path).unwrap();
        }
    }
}
