//! Debian's real `docker-registry` (distribution 2.8) on a loopback port, with filesystem storage
//! in a temporary directory, and a seeder that pushes small real OCI images over its HTTP API
//! (runnable: [`crate::service_image`]).
//!
//! Note: distribution 2.8 answers `manifest unknown` for an OCI manifest unless the request's
//! `Accept` header lists `application/vnd.oci.image.manifest.v1+json`. Its `tags/list` ignores
//! `n`/`last` and is unsorted; test pagination against [`crate::RegistryStandIn`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::network::NetNs;
use crate::process::{free_port, ChildGuard};
use crate::service_image::{ImageBlobs, ServicePorts};
use crate::store::{references, Store};
use crate::token_auth::{TokenServer, ISSUER};
use crate::util::{lock, sha256_digest};
use crate::{Error, Result};
use std::net::SocketAddrV4;

/// Where Debian's package `docker-registry` installs the binary.
pub const DEFAULT_BINARY: &str = "/usr/bin/docker-registry";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How long the registry may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a start is retried when the chosen port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// Timeout of every request of the seeder.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An image pushed by [`Registry::push_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// Repository name, e.g. `cybozu/etcd`.
    pub repository: String,
    /// Tag it was pushed under.
    pub tag: String,
    /// `sha256:<hex>` of the manifest bytes; equals the registry's `Docker-Content-Digest`.
    pub manifest_digest: String,
    /// Bytes of the manifest.
    pub manifest_size: usize,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// `sha256:<hex>` of each layer blob, in manifest order.
    pub layer_digests: Vec<String>,
}

/// A second `docker-registry` serving a [`Registry`]'s storage in a network namespace
/// ([`Registry::serve_in`]) or behind token authentication
/// ([`Registry::serve_with_token_auth`]); killed on drop.
#[derive(Debug)]
pub struct RegistryView {
    child: ChildGuard,
    addr: SocketAddrV4,
    log_path: PathBuf,
}

impl RegistryView {
    /// `http://ADDRESS:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The file receiving its output.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The requests it answered (`METHOD /path`), from its access log, oldest first.
    pub fn requests(&self) -> Result<Vec<String>> {
        logged_requests(&self.log_path)
    }
}

/// A running `docker-registry`, killed on drop; its storage is removed with it.
#[derive(Debug)]
pub struct Registry {
    // Field order matters: the process is killed before its directory is removed.
    child: ChildGuard,
    port: u16,
    binary: PathBuf,
    agent: ureq::Agent,
    log_path: PathBuf,
    storage_dir: PathBuf,
    dir: TempDir,
    /// The port of each pushed repository's service, so that two never share one.
    service_ports: Mutex<ServicePorts>,
}

impl Registry {
    /// Starts [`DEFAULT_BINARY`] on a free loopback port and waits until it answers.
    pub fn start() -> Result<Self> {
        Self::start_with_binary(Path::new(DEFAULT_BINARY))
    }

    /// Starts the given `docker-registry` binary (distribution 2.x, `serve <config.yml>`).
    pub fn start_with_binary(binary: &Path) -> Result<Self> {
        if !binary.is_file() {
            return Err(Error::MissingProgram {
                program: binary.display().to_string(),
                hint: "install the Debian package docker-registry".to_owned(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("dctest-registry-")
            .tempdir()
            .map_err(Error::io("create the registry's temporary directory"))?;
        let mut attempt = 1;
        loop {
            match Self::try_start(binary, &dir) {
                Ok((child, port)) => {
                    return Ok(Self {
                        child,
                        port,
                        binary: binary.to_owned(),
                        agent: agent(),
                        log_path: dir.path().join("registry.log"),
                        storage_dir: dir.path().join("storage"),
                        dir,
                        service_ports: Mutex::default(),
                    })
                }
                // The port may have been taken between choosing and binding it.
                Err(Error::ProcessExited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(binary: &Path, dir: &TempDir) -> Result<(ChildGuard, u16)> {
        let port = free_port()?;
        let storage = dir.path().join("storage");
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        std::fs::create_dir_all(&storage).map_err(Error::io(format!(
            "create registry storage {}",
            storage.display()
        )))?;
        let mut command = Command::new(binary);
        serve_command(
            &mut command,
            dir.path(),
            &config_path,
            &config_yaml(format!("127.0.0.1:{port}"), &storage),
            &log_path,
        )?;
        let mut child = ChildGuard::spawn("docker-registry", &mut command)?;
        match child.wait_for_http(&format!("http://127.0.0.1:{port}/v2/"), START_TIMEOUT) {
            Ok(()) => Ok((child, port)),
            Err(Error::ProcessExited { name, status, .. }) => Err(Error::ProcessExited {
                name,
                status,
                output: log_tail(&log_path),
            }),
            Err(e) => Err(e),
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file receiving the registry's output.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The root directory of the filesystem storage.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The temporary directory holding config, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Starts a second `docker-registry` serving this registry's storage on `addr` inside
    /// `netns` (the bridge of the data center's network, where the machines reach it). Pushes
    /// and deletions stay on this loopback registry; the second one reads the same files (no
    /// blob descriptor cache is configured, so it sees every change at once).
    pub fn serve_in(&self, netns: &NetNs, addr: SocketAddrV4) -> Result<RegistryView> {
        let config_path = self.dir().join(format!("config-{}.yml", netns.name()));
        let log_path = self.dir().join(format!("registry-{}.log", netns.name()));
        let mut command = netns.command(&self.binary);
        serve_command(
            &mut command,
            self.dir(),
            &config_path,
            &config_yaml(addr, &self.storage_dir),
            &log_path,
        )?;
        let name = format!("docker-registry in {}", netns.name());
        let mut child = ChildGuard::spawn(name.clone(), &mut command)?;
        if let Err(e) = netns.wait_for_port(addr, START_TIMEOUT) {
            return Err(match child.try_wait()? {
                Some(status) => Error::ProcessExited {
                    name,
                    status: status.to_string(),
                    output: log_tail(&log_path),
                },
                None => e,
            });
        }
        Ok(RegistryView {
            child,
            addr,
            log_path,
        })
    }

    /// Pushes the small runnable image of `repository:tag` ([`ImageBlobs::build`]: one config
    /// blob, one uncompressed tar layer holding a program that answers `<repository>:<tag>\n`
    /// over HTTP on [`crate::service_port`]`(repository)`). The layer depends on repository
    /// and tag only, so every pushed image has its own digests and they are the same on every
    /// host. Two repositories whose services would share a port are refused, naming both.
    pub fn push_image(&self, repository: &str, tag: &str) -> Result<PushedImage> {
        validate_repository(repository)?;
        validate_tag(tag)?;
        let (image, manifest) = self.upload_image(repository, tag)?;
        self.put_manifest(repository, tag, &manifest, &image.manifest_digest)?;
        Ok(image)
    }

    /// [`Registry::push_image`] of [`ImageBlobs::build_as`]`(repository, tag, origin,
    /// architecture)`, as `repository:tag`.
    pub fn push_image_as(
        &self,
        repository: &str,
        tag: &str,
        origin: &str,
        architecture: &str,
    ) -> Result<PushedImage> {
        validate_repository(repository)?;
        validate_tag(tag)?;
        let blobs = ImageBlobs::build_as(repository, tag, Some(origin), architecture)?;
        let (image, manifest) = self.upload_blobs(repository, tag, blobs)?;
        self.put_manifest(repository, tag, &manifest, &image.manifest_digest)?;
        Ok(image)
    }

    /// Pushes one small image (as [`Registry::push_image`] does for `tags[0]`) and puts its
    /// manifest under every tag of `tags`: the blobs are uploaded once, then each tag costs one
    /// manifest `PUT`, so a repository can be seeded with hundreds of tags quickly.
    ///
    /// Returns the image as pushed under the first tag; every tag points to its
    /// `manifest_digest`. Every tag is checked before anything is sent.
    pub fn push_tags<S: AsRef<str>>(&self, repository: &str, tags: &[S]) -> Result<PushedImage> {
        validate_repository(repository)?;
        let Some(first) = tags.first() else {
            return Err(Error::InvalidArgument(format!(
                "no tags to push to {repository:?}"
            )));
        };
        for tag in tags {
            validate_tag(tag.as_ref())?;
        }
        let (image, manifest) = self.upload_image(repository, first.as_ref())?;
        for tag in tags {
            self.put_manifest(repository, tag.as_ref(), &manifest, &image.manifest_digest)?;
        }
        Ok(image)
    }

    /// Uploads the config and layer blobs of the image of `repository:tag` and returns the
    /// image (named by `tag`) with its manifest bytes, which are not pushed yet. Fails naming
    /// both repositories when another one pushed here has the same service port.
    fn upload_image(&self, repository: &str, tag: &str) -> Result<(PushedImage, Vec<u8>)> {
        self.upload_blobs(repository, tag, ImageBlobs::build(repository, tag)?)
    }

    fn upload_blobs(
        &self,
        repository: &str,
        tag: &str,
        blobs: ImageBlobs,
    ) -> Result<(PushedImage, Vec<u8>)> {
        lock(&self.service_ports).claim(repository)?;
        self.upload_blob(repository, &blobs.config, &blobs.config_digest)?;
        self.upload_blob(repository, &blobs.layer, &blobs.layer_digest)?;
        let image = PushedImage {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            manifest_digest: blobs.manifest_digest,
            manifest_size: blobs.manifest.len(),
            config_digest: blobs.config_digest,
            layer_digests: vec![blobs.layer_digest],
        };
        Ok((image, blobs.manifest))
    }

    /// Pushes the image `digest` of `store`'s OCI layout (an image manifest, or an index with
    /// every manifest it lists) as `repository:tag`: blobs first, manifests before the index
    /// naming them, every byte unchanged, so the registry serves it at the same digest. Blobs
    /// the repository has already are not sent again.
    pub fn push_stored(
        &self,
        store: &Store,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> Result<()> {
        validate_repository(repository)?;
        validate_tag(tag)?;
        self.push_stored_manifest(store, repository, digest, tag)
    }

    fn push_stored_manifest(
        &self,
        store: &Store,
        repository: &str,
        digest: &str,
        reference: &str,
    ) -> Result<()> {
        let bytes = store.blob(digest)?;
        let refs = references(&bytes);
        for child in &refs.manifests {
            self.push_stored_manifest(store, repository, child, child)?;
        }
        for blob in &refs.blobs {
            if !self.has_blob(repository, blob)? {
                self.upload_blob(repository, &store.blob(blob)?, blob)?;
            }
        }
        let media_type = match refs.media_type {
            Some(media_type) => media_type,
            None if !refs.manifests.is_empty() => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        };
        self.put_manifest_as(repository, reference, &bytes, digest, &media_type)
    }

    /// Pushes an image index as `repository:tag` listing `images` (pushed to `repository`
    /// before) with their platforms (`linux/<architecture>`); returns its digest.
    pub fn push_index(
        &self,
        repository: &str,
        tag: &str,
        images: &[(&PushedImage, &str)],
    ) -> Result<String> {
        validate_repository(repository)?;
        validate_tag(tag)?;
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|(image, architecture)| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": image.manifest_size,
                    "platform": { "os": "linux", "architecture": architecture },
                })
            })
            .collect();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))?;
        let digest = sha256_digest(&index);
        self.put_manifest_as(repository, tag, &index, &digest, OCI_INDEX)?;
        Ok(digest)
    }

    /// The requests the registry answered (`METHOD /path`), from its access log, oldest
    /// first.
    pub fn requests(&self) -> Result<Vec<String>> {
        logged_requests(&self.log_path)
    }

    /// Starts a second `docker-registry` on a free loopback port serving this registry's
    /// storage behind token authentication (`auth: token`, with `token`'s realm and service,
    /// [`ISSUER`] and its root certificate), as ghcr.io is: what the clients of a simulated
    /// upstream reach. Seeding goes on through this registry, which needs no token.
    pub fn serve_with_token_auth(&self, token: &TokenServer) -> Result<RegistryView> {
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, free_port()?);
        let config_path = self.dir().join("config-token.yml");
        let log_path = self.dir().join("registry-token.log");
        let config = format!(
            "{}auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    issuer: \"{ISSUER}\"\n    rootcertbundle: \"{}\"\n",
            config_yaml(addr, &self.storage_dir),
            token.realm(),
            token.service(),
            token.root_certificate().display()
        );
        let mut command = Command::new(&self.binary);
        serve_command(&mut command, self.dir(), &config_path, &config, &log_path)?;
        let name = "docker-registry with token auth".to_owned();
        let mut child = ChildGuard::spawn(name.clone(), &mut command)?;
        match child.wait_for_http(&format!("http://{addr}/v2/"), START_TIMEOUT) {
            Ok(()) => Ok(RegistryView {
                child,
                addr,
                log_path,
            }),
            Err(Error::ProcessExited { status, .. }) => Err(Error::ProcessExited {
                name,
                status,
                output: log_tail(&log_path),
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether `repository` has the blob `digest`.
    fn has_blob(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base_url());
        let response = send("HEAD", &url, self.agent.head(&url), None)?;
        match response.status() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(Error::UnexpectedResponse {
                method: "HEAD".to_owned(),
                url,
                message: format!("HTTP {status}"),
            }),
        }
    }

    /// Puts `manifest` (whose bytes hash to `manifest_digest`) as `repository:tag` and checks
    /// the digest the registry answers.
    fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &[u8],
        manifest_digest: &str,
    ) -> Result<()> {
        self.put_manifest_as(repository, tag, manifest, manifest_digest, OCI_MANIFEST)
    }

    /// [`Registry::put_manifest`] with the manifest's media type.
    fn put_manifest_as(
        &self,
        repository: &str,
        tag: &str,
        manifest: &[u8],
        manifest_digest: &str,
        media_type: &str,
    ) -> Result<()> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base_url());
        let response = send(
            "PUT",
            &url,
            self.agent.put(&url).set("Content-Type", media_type),
            Some(manifest),
        )?;
        let response = expect_status("PUT", &url, response, 201)?;
        match response.header("Docker-Content-Digest") {
            Some(answered) if answered == manifest_digest => Ok(()),
            other => Err(Error::UnexpectedResponse {
                method: "PUT".to_owned(),
                url,
                message: format!(
                    "Docker-Content-Digest is {other:?}, the pushed bytes hash to {manifest_digest}"
                ),
            }),
        }
    }

    /// Deletes the manifest `digest` (`sha256:<hex>`) of `repository`; its tags go with it.
    pub fn delete_manifest(&self, repository: &str, digest: &str) -> Result<()> {
        validate_repository(repository)?;
        if !is_digest(digest) {
            return Err(Error::InvalidArgument(format!(
                "{digest:?} is not a sha256 digest"
            )));
        }
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base_url());
        let response = send("DELETE", &url, self.agent.delete(&url), None)?;
        expect_status("DELETE", &url, response, 202).map(drop)
    }

    /// Deletes the blob `digest` from `repository`: manifests that name it can no longer be
    /// pulled (the tag still lists and resolves).
    pub fn delete_blob(&self, repository: &str, digest: &str) -> Result<()> {
        validate_repository(repository)?;
        if !is_digest(digest) {
            return Err(Error::InvalidArgument(format!(
                "{digest:?} is not a sha256 digest"
            )));
        }
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base_url());
        let response = send("DELETE", &url, self.agent.delete(&url), None)?;
        expect_status("DELETE", &url, response, 202).map(drop)
    }

    /// Pulls `repository@digest` as a client would: the manifest, then its config and every
    /// layer, each checked against its digest. Fails naming the first part that is missing or
    /// does not match.
    pub fn pull(&self, repository: &str, digest: &str) -> Result<()> {
        validate_repository(repository)?;
        if !is_digest(digest) {
            return Err(Error::InvalidArgument(format!(
                "{digest:?} is not a sha256 digest"
            )));
        }
        let fetch = |kind: &str, reference: &str, accept: &str| -> Result<Vec<u8>> {
            let url = format!("{}/v2/{repository}/{kind}/{reference}", self.base_url());
            let response = send(
                "GET",
                &url,
                self.agent.get(&url).set("Accept", accept),
                None,
            )?;
            let response = expect_status("GET", &url, response, 200)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).map_err(|e| {
                Error::Http {
                    method: "GET".to_owned(),
                    url: url.clone(),
                    message: e.to_string(),
                }
            })?;
            if sha256_digest(&bytes) != reference {
                return Err(Error::UnexpectedResponse {
                    method: "GET".to_owned(),
                    url,
                    message: format!("the body hashes to {}", sha256_digest(&bytes)),
                });
            }
            Ok(bytes)
        };
        let manifest = fetch("manifests", digest, OCI_MANIFEST)?;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
        let config = manifest.pointer("/config/digest").and_then(|d| d.as_str());
        let layers = manifest
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|layer| layer.get("digest").and_then(serde_json::Value::as_str));
        for blob in config.into_iter().chain(layers) {
            fetch("blobs", blob, "application/octet-stream")?;
        }
        Ok(())
    }

    /// The tags of `repository` as the registry lists them (unsorted).
    pub fn tags(&self, repository: &str) -> Result<Vec<String>> {
        validate_repository(repository)?;
        let url = format!("{}/v2/{repository}/tags/list", self.base_url());
        let response = send("GET", &url, self.agent.get(&url), None)?;
        let response = expect_status("GET", &url, response, 200)?;
        let body = read_body("GET", &url, response)?;
        let value: serde_json::Value = serde_json::from_str(&body)?;
        let tags = value
            .get("tags")
            .and_then(serde_json::Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(tags)
    }

    /// The manifest digest the registry answers to `HEAD /v2/<repository>/manifests/<reference>`.
    pub fn manifest_digest(&self, repository: &str, reference: &str) -> Result<String> {
        validate_repository(repository)?;
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base_url());
        let response = send(
            "HEAD",
            &url,
            self.agent
                .head(&url)
                .set("Accept", &format!("{OCI_MANIFEST}, {OCI_INDEX}")),
            None,
        )?;
        let response = expect_status("HEAD", &url, response, 200)?;
        response
            .header("Docker-Content-Digest")
            .map(str::to_owned)
            .ok_or_else(|| Error::UnexpectedResponse {
                method: "HEAD".to_owned(),
                url,
                message: "no Docker-Content-Digest header".to_owned(),
            })
    }

    /// Uploads a blob with a POST (start) and a monolithic PUT (finish).
    fn upload_blob(&self, repository: &str, bytes: &[u8], digest: &str) -> Result<()> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base_url());
        let response = send("POST", &url, self.agent.post(&url), Some(&[]))?;
        let response = expect_status("POST", &url, response, 202)?;
        let location = response
            .header("Location")
            .ok_or_else(|| Error::UnexpectedResponse {
                method: "POST".to_owned(),
                url: url.clone(),
                message: "no Location header".to_owned(),
            })?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base_url())
        } else {
            location.to_owned()
        };
        if !location.starts_with(&self.base_url()) {
            return Err(Error::UnexpectedResponse {
                method: "POST".to_owned(),
                url,
                message: format!("upload location {location} is not on the registry"),
            });
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let response = send(
            "PUT",
            &put_url,
            self.agent
                .put(&put_url)
                .set("Content-Type", "application/octet-stream"),
            Some(bytes),
        )?;
        expect_status("PUT", &put_url, response, 201).map(drop)
    }
}

/// The requests in a registry's access log (`METHOD /v2/…`), oldest first.
fn logged_requests(path: &Path) -> Result<Vec<String>> {
    let log =
        std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
    Ok(log
        .lines()
        .filter_map(|line| {
            let start = line.find('"')? + 1;
            let (method, rest) = line[start..].split_once(' ')?;
            let (path, _) = rest.split_once(' ')?;
            let known = matches!(method, "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE");
            (known && path.starts_with("/v2/")).then(|| format!("{method} {path}"))
        })
        .collect())
}

/// A blocking HTTP client for loopback requests: no redirects, no proxy.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .redirects(0)
        .build()
}

/// Sends a request, turning error statuses into responses and transport errors into [`Error`].
fn send(
    method: &str,
    url: &str,
    request: ureq::Request,
    body: Option<&[u8]>,
) -> Result<ureq::Response> {
    let result = match body {
        Some(body) => request.send_bytes(body),
        None => request.call(),
    };
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(ureq::Error::Transport(transport)) => Err(Error::Http {
            method: method.to_owned(),
            url: url.to_owned(),
            message: transport.to_string(),
        }),
    }
}

/// Passes `response` on when it has `status`; otherwise fails with the start of its body.
fn expect_status(
    method: &str,
    url: &str,
    response: ureq::Response,
    status: u16,
) -> Result<ureq::Response> {
    if response.status() == status {
        return Ok(response);
    }
    let actual = response.status();
    let body: String = response
        .into_string()
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    Err(Error::HttpStatus {
        method: method.to_owned(),
        url: url.to_owned(),
        status: actual,
        body,
    })
}

fn read_body(method: &str, url: &str, response: ureq::Response) -> Result<String> {
    response.into_string().map_err(|e| Error::Http {
        method: method.to_owned(),
        url: url.to_owned(),
        message: format!("read the body: {e}"),
    })
}

/// The registry configuration: loopback address, filesystem storage, deletes enabled.
/// Completes `command` (docker-registry, directly or through nsenter) into
/// `docker-registry serve CONFIG` with `config` written to `config_path`, run in `dir`, its
/// output appended to `log_path`, and no `REGISTRY_*` variable of ours (they override the
/// config file).
fn serve_command(
    command: &mut Command,
    dir: &Path,
    config_path: &Path,
    config: &str,
    log_path: &Path,
) -> Result<()> {
    std::fs::write(config_path, config).map_err(Error::io(format!(
        "write registry config {}",
        config_path.display()
    )))?;
    let log =
        File::create(log_path).map_err(Error::io(format!("create {}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(Error::io(format!("duplicate {}", log_path.display())))?;
    command
        .arg("serve")
        .arg(config_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(key);
        }
    }
    Ok(())
}

fn config_yaml(addr: impl std::fmt::Display, storage: &Path) -> String {
    format!(
        "version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: \"{}\"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
",
        storage.display()
    )
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Checks a repository name against the distribution grammar (lowercase path components).
fn validate_repository(name: &str) -> Result<()> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if name.len() <= 255 && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name:?} is not a valid repository name"
        )))
    }
}

/// Checks a tag against the distribution grammar `[\w][\w.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{tag:?} is not a valid tag"
        )))
    }
}

fn is_digest(digest: &str) -> bool {
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
    fn names_follow_the_distribution_grammar() {
        assert!(validate_repository("cybozu/etcd").is_ok());
        assert!(validate_repository("a/b-c/d_e.f").is_ok());
        assert!(validate_repository("Cybozu/etcd").is_err());
        assert!(validate_repository("a//b").is_err());
        assert!(validate_repository("-a").is_err());
        assert!(validate_tag("3.5.15.1").is_ok());
        assert!(validate_tag("1.0-rc.1").is_ok());
        assert!(validate_tag(".x").is_err());
        assert!(validate_tag("a:b").is_err());
        assert!(is_digest(&sha256_digest(b"")));
        assert!(!is_digest("sha256:XYZ"));
    }
}
