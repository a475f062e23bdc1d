//! Watches that outlive their member and etcd's compaction.
//!
//! A [`Watch`] remembers the revision after the last one it saw. When its stream breaks, its
//! member stops answering or the connection moves to another member ([`Etcd::failed`]), it
//! reopens from that revision on the current member: no event is lost or seen twice. When
//! etcd has compacted that revision away (a long outage, or a first revision older than the
//! compaction), the events are gone: the watch reads its whole range instead and hands the
//! caller that state ([`Seen::State`]), then goes on after the revision of the read. Callers
//! decide from the state what they missed; none of them ends on a compaction.

use crate::etcd::{classify, Etcd, Failure};
use crate::storage::{Result, StorageError};
use etcd_client::{Event, GetOptions, KeyValue, WatchOptions};
use std::time::Instant;

/// What a watch saw next.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Events, in revision order.
    Events(Vec<Event>),
    /// The revisions since the last event seen were compacted: every key of the range as it
    /// is now (the watch goes on after the revision of that read).
    State { kvs: Vec<KeyValue> },
}

struct Open {
    _watcher: etcd_client::Watcher,
    stream: etcd_client::WatchStream,
    generation: u64,
}

/// A watch on one key or one prefix (physical), from a given revision on.
pub(crate) struct Watch {
    etcd: Etcd,
    key: String,
    prefix: bool,
    /// Filters and other options, without the start revision.
    options: WatchOptions,
    /// The first revision not seen yet.
    next: i64,
    open: Option<Open>,
    /// Since when reopening fails; a watch that cannot reopen for the retry time of its
    /// connection ([`crate::etcd::Patience`]) fails.
    failing_since: Option<Instant>,
}

impl Watch {
    /// A watch of `key` (with everything under it when `prefix`) from revision `from` on
    /// (`from` > 0: callers watch from the revision after a read).
    pub(crate) fn new(
        etcd: &Etcd,
        key: String,
        prefix: bool,
        options: WatchOptions,
        from: i64,
    ) -> Self {
        let options = if prefix {
            options.with_prefix()
        } else {
            options
        };
        Self {
            etcd: etcd.clone(),
            key,
            prefix,
            options,
            next: from.max(1),
            open: None,
            failing_since: None,
        }
    }

    /// The physical key, for errors.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The next events, or the state after a compaction.
    pub(crate) async fn next(&mut self) -> Result<Seen> {
        loop {
            let open = match self.open.as_mut() {
                Some(open) => open,
                None => {
                    let open = self.reopen().await?;
                    self.open.insert(open)
                }
            };
            let generation = open.generation;
            let message = tokio::select! {
                message = open.stream.message() => message,
                () = self.etcd.moved_past(generation) => {
                    // Another request found the member failed: follow the connection.
                    self.open = None;
                    continue;
                }
            };
            let reason = match message {
                Ok(Some(resp)) if resp.canceled() && resp.compact_revision() > 0 => {
                    tracing::info!(
                        key = %self.key,
                        from = self.next,
                        compacted = resp.compact_revision(),
                        "the revisions a watch had not seen were compacted; reading the current state"
                    );
                    self.open = None;
                    return self.read_state().await;
                }
                Ok(Some(resp)) if resp.canceled() => {
                    format!("the watch was canceled: {}", resp.cancel_reason())
                }
                Ok(Some(resp)) => {
                    self.failing_since = None;
                    let events = resp.events();
                    if let Some(last) = events
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| kv.mod_revision())
                        .max()
                    {
                        self.next = self.next.max(last + 1);
                        return Ok(Seen::Events(events.to_vec()));
                    }
                    // A progress notification: the member has sent everything up to its
                    // header's revision.
                    if let Some(header) = resp.header() {
                        self.next = self.next.max(header.revision() + 1);
                    }
                    continue;
                }
                Ok(None) => "the watch stream closed".to_owned(),
                Err(e) if classify(&e) == Failure::Answer => {
                    return Err(StorageError::WatchEnded {
                        key: self.key.clone(),
                        message: e.to_string(),
                    })
                }
                Err(e) => e.to_string(),
            };
            self.open = None;
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.etcd.patience().retry_for {
                return Err(StorageError::WatchEnded {
                    key: self.key.clone(),
                    message: reason,
                });
            }
            tracing::warn!(key = %self.key, from = self.next, %reason, "the watch broke; reopening it");
            self.etcd.failed(generation, &reason).await;
        }
    }

    async fn reopen(&mut self) -> Result<Open> {
        let options = self.options.clone().with_start_revision(self.next);
        let key = self.key.clone();
        // The generation before the call: if the call moved to another member on the way,
        // the watch reopens once more, which is harmless.
        let generation = self.etcd.client().1;
        let (watcher, stream) = self
            .etcd
            .call("watch", &self.key, |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.watch(key, Some(options)).await }
            })
            .await?;
        Ok(Open {
            _watcher: watcher,
            stream,
            generation,
        })
    }

    /// Reads the whole range and goes on after the read's revision.
    async fn read_state(&mut self) -> Result<Seen> {
        let options = if self.prefix {
            GetOptions::new().with_prefix()
        } else {
            GetOptions::new()
        };
        let key = self.key.clone();
        let resp = self
            .etcd
            .call("get", &self.key, |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.get(key, Some(options)).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        self.next = revision + 1;
        Ok(Seen::State {
            kvs: resp.kvs().to_vec(),
        })
    }
}
