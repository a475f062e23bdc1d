//! Leases kept alive in the background, and elections on top of them.
//!
//! A [`KeptLease`] is what binds a leader key or a liveness key to a living process: when the
//! process dies, its keep-alives stop and etcd deletes the keys after the TTL.

use crate::storage::{etcd_err, Storage, StorageError};
use etcd_client::{Client, LeaderKey, ResignOptions};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A lease renewed by a background task every third of its TTL. Dropping it stops the renewal
/// (the lease then expires); [`KeptLease::revoke`] ends it at once.
pub struct KeptLease {
    id: i64,
    ttl: Duration,
    client: Client,
    task: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl std::fmt::Debug for KeptLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptLease")
            .field("id", &format_args!("{:x}", self.id))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl KeptLease {
    /// Grants a lease of `ttl` (at least one second) and starts renewing it.
    pub async fn grant(storage: &Storage, ttl: Duration) -> Result<Self, StorageError> {
        let mut client = storage.client();
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = client
            .lease_grant(secs, None)
            .await
            .map_err(etcd_err("lease grant", ""))?;
        let id = granted.id();
        let (keeper, mut stream) = client
            .lease_keep_alive(id)
            .await
            .map_err(etcd_err("lease keep-alive", &format!("lease {id:x}")))?;
        let (lost_tx, lost) = watch::channel(false);
        let period = Duration::from_secs(u64::try_from(secs).unwrap_or(1)) / 3;
        let task = tokio::spawn(async move {
            let mut keeper = keeper;
            loop {
                tokio::time::sleep(period.max(Duration::from_millis(200))).await;
                let alive = match keeper.keep_alive().await {
                    Ok(()) => matches!(stream.message().await, Ok(Some(resp)) if resp.ttl() > 0),
                    Err(_) => false,
                };
                if !alive {
                    tracing::warn!(lease = format!("{id:x}"), "lost the lease");
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        });
        Ok(Self {
            id,
            ttl: Duration::from_secs(u64::try_from(secs).unwrap_or(1)),
            client,
            task,
            lost,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Resolves when the lease could not be renewed (expired or revoked).
    pub async fn lost(&mut self) {
        while !*self.lost.borrow() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops renewing and revokes the lease, deleting every key bound to it.
    pub async fn revoke(mut self) -> Result<(), StorageError> {
        self.task.abort();
        self.client
            .lease_revoke(self.id)
            .await
            .map(|_| ())
            .map_err(etcd_err("lease revoke", &format!("lease {:x}", self.id)))
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a request ended because the client's request timeout expired (gRPC `CANCELLED`
/// "Timeout expired", or `DEADLINE_EXCEEDED`), as a long campaign does.
fn is_request_timeout(error: &etcd_client::Error) -> bool {
    const CANCELLED: i32 = 1;
    const DEADLINE_EXCEEDED: i32 = 4;
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(i32::from(status.code()), CANCELLED | DEADLINE_EXCEEDED)
        }
        _ => false,
    }
}

/// Leadership of an election, held while its lease lives.
#[derive(Debug)]
pub struct Leadership {
    leader: LeaderKey,
    key: String,
    lease: KeptLease,
}

impl Leadership {
    /// Campaigns on the election `name` (relative, e.g. `leader/updater/`) and returns once
    /// this process is the leader. The leader key is `<prefix><name>/<lease hex>`, the layout of
    /// neco's Go election.
    pub async fn campaign(
        storage: &Storage,
        name: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Self, StorageError> {
        let lease = KeptLease::grant(storage, ttl).await?;
        let election = storage.key(name);
        loop {
            let attempt = std::time::Instant::now();
            let resp = match storage
                .client()
                .campaign(election.as_bytes(), value, lease.id())
                .await
            {
                Ok(resp) => resp,
                // A campaign waits as long as another leader lives, longer than the client's
                // request timeout (30 s): campaign again with the same lease (at worst at the
                // end of the queue, if etcd dropped the key of the cancelled campaign). Only a
                // lost lease, or a "timeout" too quick to be the request timeout, ends it.
                Err(e)
                    if is_request_timeout(&e)
                        && attempt.elapsed() >= Duration::from_secs(1)
                        && !*lease.lost.borrow() =>
                {
                    tracing::debug!(election = %election, "still waiting for the leadership");
                    continue;
                }
                Err(e) => return Err(etcd_err("campaign", &election)(e)),
            };
            let leader = resp
                .leader()
                .cloned()
                .ok_or_else(|| StorageError::WatchEnded {
                    key: election.clone(),
                    message: "the campaign returned no leader key".into(),
                })?;
            let key = String::from_utf8_lossy(leader.key()).into_owned();
            // A cancelled campaign's clean-up on the server may delete the key a resumed
            // campaign with the same lease shares: a leadership without its key guards nothing,
            // so campaign again.
            let held = storage
                .client()
                .get(key.as_bytes(), None)
                .await
                .map_err(etcd_err("get", &key))?;
            if held.kvs().is_empty() {
                tracing::debug!(%key, "the leader key is gone; campaigning again");
                continue;
            }
            return Ok(Self { leader, key, lease });
        }
    }

    /// The physical leader key: the guard of every write of the leader.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Resolves when the leadership's lease is lost.
    pub async fn lost(&mut self) {
        self.lease.lost().await;
    }

    /// Gives up the leadership and its lease.
    pub async fn resign(self) -> Result<(), StorageError> {
        let mut client = self.lease.client.clone();
        let resign = client.resign(Some(ResignOptions::new().with_leader(self.leader.clone())));
        // A hung resign must not keep the process from re-campaigning.
        let _ = tokio::time::timeout(Duration::from_secs(5), resign).await;
        self.lease.revoke().await
    }
}
