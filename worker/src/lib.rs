//! neco-worker: runs on every boot server. It owns the worker's outer loop and the lock-step
//! barrier ([`run`], [`barrier`]), self-update by deb and the pinned debs ([`debs`]), and the
//! step table ([`steps`]): images (copied by `fetch::oci`), services ([`services`]) and
//! sabakan contents ([`contents`]). It depends on `neco` (lib), `fetch` and `artifacts`; never
//! on the updater.
//!
//! - [`barrier`]: the pure decisions of the lock-step protocol;
//! - [`run`]: the outer loop and the update of one request;
//! - [`steps`]: the step table; [`services`]: unit files and service managers;
//!   [`debs`]: pinned debs and neco's self-update; [`contents`]: sabakan uploads;
//! - [`online`]: the HTTP client and GitHub token as `config/` says at each use;
//! - [`cli`]: the command line (also rendered into the man page).

pub mod barrier;
pub mod cli;
pub mod contents;
pub mod debs;
pub mod online;
pub mod run;
pub mod services;
pub mod steps;
