//! What `neco status` reports: the boot servers, which are alive, the update request and each
//! server's progress. Shared by the CLI and the tests that watch an update move through its
//! states.

use crate::storage::{Storage, StorageError};
use crate::types::{update_completed, Lrn, UpdateCondition};
use serde::Serialize;
use std::fmt::Write as _;

/// The whole report (`neco status --json` prints it as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub servers: Vec<Lrn>,
    pub alive: Vec<Lrn>,
    /// `info/neco-release`, empty when absent.
    pub latest: String,
    pub request: Option<RequestReport>,
    /// Values that could not be read: `(key, error)`.
    pub malformed: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestReport {
    pub version: String,
    pub servers: Vec<Lrn>,
    pub stopped: bool,
    pub started_at: String,
    /// `running`, `aborted` or `completed`.
    pub state: &'static str,
    pub statuses: Vec<ServerReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerReport {
    pub lrn: Lrn,
    pub alive: bool,
    pub step: Option<u32>,
    pub condition: String,
    pub message: String,
}

impl Report {
    /// Reads the report from one snapshot.
    pub async fn read(storage: &Storage) -> Result<Self, StorageError> {
        let snapshot = storage.snapshot().await?;
        let alive = storage.alive_servers().await?;
        let request = snapshot.request.as_ref().map(|req| {
            let aborted = snapshot
                .statuses
                .values()
                .any(|st| st.version == req.version && st.cond == UpdateCondition::Aborted);
            let state = if aborted {
                "aborted"
            } else if update_completed(&req.version, &req.servers, &snapshot.statuses) {
                "completed"
            } else {
                "running"
            };
            let statuses = req
                .servers
                .iter()
                .map(|lrn| {
                    let st = snapshot
                        .statuses
                        .get(lrn)
                        .filter(|st| st.version == req.version);
                    ServerReport {
                        lrn: *lrn,
                        alive: alive.contains(lrn),
                        step: st.map(|s| s.step),
                        condition: st.map_or_else(|| "not started".into(), |s| s.cond.to_string()),
                        message: st.map(|s| s.message.clone()).unwrap_or_default(),
                    }
                })
                .collect();
            RequestReport {
                version: req.version.clone(),
                servers: req.servers.clone(),
                stopped: req.stop,
                started_at: req
                    .started_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                state,
                statuses,
            }
        });
        Ok(Self {
            servers: snapshot.servers,
            alive,
            latest: snapshot.latest,
            request,
            malformed: snapshot.malformed,
        })
    }

    /// The text of `neco status`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Boot servers: {:?}", self.servers);
        let _ = writeln!(out, "Alive: {:?}", self.alive);
        let latest = if self.latest.is_empty() {
            "-"
        } else {
            &self.latest
        };
        let _ = writeln!(out, "Latest release: {latest}");
        let _ = writeln!(out, "Update process");
        match &self.request {
            None => {
                let _ = writeln!(out, "    status: clear");
            }
            Some(req) => {
                let stopped = if req.stopped {
                    " (stopped: run `neco recover` after fixing the cause)"
                } else {
                    ""
                };
                let _ = writeln!(out, "    status: {}{stopped}", req.state);
                let _ = writeln!(out, "    version: {}", req.version);
                let _ = writeln!(out, "    members: {:?}", req.servers);
                let _ = writeln!(out, "    started: {}", req.started_at);
                for st in &req.statuses {
                    let alive = if st.alive { "" } else { " (not alive)" };
                    let _ = writeln!(out, "Boot server {}{alive}", st.lrn);
                    if let Some(step) = st.step {
                        let _ = writeln!(out, "    step: {step}");
                    }
                    let _ = writeln!(out, "    condition: {}", st.condition);
                    if !st.message.is_empty() {
                        let _ = writeln!(out, "    message: {}", st.message);
                    }
                }
            }
        }
        for (key, error) in &self.malformed {
            let _ = writeln!(out, "malformed value at {key}: {error}");
        }
        out
    }
}
