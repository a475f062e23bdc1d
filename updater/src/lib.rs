//! neco-updater: the leader-elected daemon that finds new neco releases and drives the
//! lock-step update of the boot servers through etcd.
//!
//! It owns leadership and the main loop ([`server`]), the release checker ([`checker`]), the
//! pure decision core [`action::next_action`] and the command line ([`cli`]). It depends on
//! `neco` (storage, config, notifier) and `fetch` (GitHub), never on the worker.

pub mod action;
pub mod checker;
pub mod cli;
pub mod server;
