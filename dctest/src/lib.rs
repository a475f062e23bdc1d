//! Test fixtures of the neco-rs virtual data center.
//!
//! This crate owns the reusable fixtures that the tests of every crate use:
//!
//! - [`process`]: processes started for a test ([`ChildGuard`] kills them by PID and waits for
//!   them on drop, also when the test panics), free loopback ports, waiting for HTTP servers;
//! - [`registry`]: Debian's real `docker-registry` (distribution 2.8) with an image seeder;
//! - [`service_image`] and [`service_elf`]: the seeder's images, runnable (`podman run`): a
//!   generated static program answering `<repository>:<tag>\n` over HTTP on
//!   [`service_port`]`(repository)`, also written as an OCI image layout;
//! - [`etcd`]: Debian's real etcd, one member or a cluster, with members that can be killed
//!   and restarted, or one member with mutual TLS and authentication (certificates from
//!   [`pki`], made with `openssl` in the test);
//! - [`debs`]: reproducible Debian packages built with `dpkg-deb`;
//! - [`mirror`]: a local mirror of upstream (registry, GitHub, feed) seeded from a TOML file;
//! - [`store`]: a nightly candidate's upstream artifacts on disk, served by the data center;
//! - [`machine`] and [`network`]: Debian machines booted with systemd as PID 1 by
//!   systemd-nspawn, each in its own network namespace on a private network of the test's own;
//! - [`datacenter`] and [`boot_server`]: the whole virtual data center of the suites (boot
//!   servers as machines, etcd members on three of them, the neco package installed with
//!   `dpkg -i` and its daemons run by systemd; the mirror and the stand-ins on the private
//!   network);
//! - loopback stand-ins, each on its own background thread with its own tokio runtime, so they
//!   work from sync tests and from `#[tokio::test]`s alike: an OCI distribution registry that
//!   follows the spec where Debian's registry does not ([`registry_standin`]), the GitHub
//!   releases API ([`github`]), the OS release feed ([`feed`]), sabakan's image and asset
//!   endpoints ([`sabakan`]) and a webhook sink ([`webhook`]).
//!
//! It must depend on no crate of this workspace, so any crate can use it as a dev-dependency
//! without a dependency cycle. Every server listens on 127.0.0.1 or on the private network of
//! the machines, and every request goes to one of those; nothing here reaches another host.

pub mod boot_server;
pub mod datacenter;
pub mod debs;
mod error;
pub mod etcd;
pub mod feed;
pub mod github;
mod http_server;
pub mod machine;
pub mod mirror;
pub mod network;
pub mod pki;
pub mod process;
pub mod registry;
pub mod registry_standin;
pub mod sabakan;
pub mod service_elf;
pub mod service_image;
pub mod store;
pub mod token_auth;
pub mod upstream;
mod util;
pub mod webhook;

pub use boot_server::{BootServer, Daemon};
pub use datacenter::{DataCenter, PublishedRelease};
pub use error::{Error, Result};
pub use etcd::{EtcdClient, EtcdCluster, EtcdSecurity, KeyValue, NecoEtcdSettings};
pub use feed::FeedServer;
pub use github::{AssetSpec, GitHubStandIn, ReleaseSpec, UploadFault};
pub use machine::{BaseImage, Machine, UnitState};
pub use network::{Lan, NetNs};
pub use process::{free_port, wait_for_http, ChildGuard};
pub use registry::{PushedImage, Registry, RegistryView};
pub use registry_standin::{Auth, Fault, RegistryStandIn, RegistryStandInConfig};
pub use sabakan::SabakanStandIn;
pub use service_elf::service_port;
pub use service_image::{write_oci_layout, ImageBlobs};
pub use util::{basic_authorization, sha256_digest, sha512_digest, target_dir};
pub use webhook::{Notification, WebhookSink};
