//! Leases kept alive in the background, and elections on top of them.
//!
//! A [`KeptLease`] is what binds a leader key or a liveness key to a living process: when the
//! process dies, its keep-alives stop and etcd deletes the keys after the TTL.

use crate::duration;
use crate::etcd::{classify, Etcd, Failure};
use crate::storage::{Storage, StorageError};
use etcd_client::{LeaderKey, LeaseKeepAliveStream, LeaseKeeper, ResignOptions};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The pause before a keep-alive is tried again after a failed one.
const KEEP_ALIVE_RETRY: Duration = Duration::from_millis(300);
/// How long [`Leadership::resign`] may take before it leaves the lease to expire by itself.
pub const RESIGN_TIMEOUT: Duration = Duration::from_secs(3);

/// A lease renewed by a background task every third of its TTL. A keep-alive that fails or
/// gets no answer within that third is tried again, on another member when the connection
/// moves. The lease counts as lost when etcd says it is gone, or when no keep-alive was
/// acknowledged for twice its TTL: a new raft leader extends every lease (by its election
/// timeout, from the moment it leads), so a lease outlives one TTL counted from its last
/// acknowledgement whenever an election is what kept the answers away, and a holder that gave
/// up after one TTL would abandon a lease the cluster still holds. Nothing depends on a lease
/// that is gone meanwhile: every write of a leader is guarded by its key, and the updater
/// judges liveness by the keys it sees.
///
/// Dropping it stops the renewal (the lease then expires); [`KeptLease::revoke`] ends it at
/// once.
pub struct KeptLease {
    id: i64,
    ttl: Duration,
    etcd: Etcd,
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
        let etcd = storage.etcd().clone();
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let ttl = Duration::from_secs(u64::try_from(secs).unwrap_or(1));
        // Counted from the start of the attempt that was granted (the call retries): the
        // deadline is never later than etcd's.
        let attempt = std::sync::Mutex::new(Instant::now());
        // A repeated grant leaves an unused lease behind, which expires after its TTL.
        let granted = etcd
            .call("lease grant", "", |mut client| {
                *attempt
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
                async move { client.lease_grant(secs, None).await }
            })
            .await?;
        let granted_at = *attempt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = granted.id();
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(etcd.clone(), id, ttl, granted_at + ttl, lost_tx));
        Ok(Self {
            id,
            ttl,
            etcd,
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

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
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
    pub async fn revoke(self) -> Result<(), StorageError> {
        self.task.abort();
        let id = self.id;
        self.etcd
            .call(
                "lease revoke",
                &format!("lease {id:x}"),
                |mut client| async move { client.lease_revoke(id).await },
            )
            .await
            .map(|_| ())
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one keep-alive failed.
enum Renewal {
    /// etcd says the lease does not exist any more.
    Gone,
    /// No answer, a broken stream, a member that cannot serve: try again.
    Failed(String),
}

/// The keep-alive stream of one member.
struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    generation: u64,
}

/// Renews `id` until it is lost; then says so on `lost`.
async fn keep_alive(
    etcd: Etcd,
    id: i64,
    ttl: Duration,
    mut deadline: Instant,
    lost: watch::Sender<bool>,
) {
    let lease = format!("{id:x}");
    let period = (ttl / 3).max(Duration::from_millis(200));
    let mut open: Option<KeepAlive> = None;
    let mut pause = period;
    loop {
        tokio::time::sleep(pause).await;
        let sent = Instant::now();
        let generation = open
            .as_ref()
            .map_or_else(|| etcd.client().1, |o| o.generation);
        // No attempt (nor reconnection) outlasts the moment of giving up.
        let give_up = deadline + ttl;
        let wait = period.min(give_up.saturating_duration_since(sent));
        let answer = match tokio::time::timeout(wait, renew(&etcd, id, ttl, &mut open)).await {
            Ok(answer) => answer,
            Err(_) => Err(Renewal::Failed(format!(
                "no answer within {}",
                crate::duration::format(wait)
            ))),
        };
        match answer {
            Ok(left) => {
                deadline = sent + left;
                pause = period;
            }
            Err(Renewal::Gone) => {
                tracing::warn!(%lease, "lost the lease: etcd says it is gone");
                let _ = lost.send(true);
                return;
            }
            Err(Renewal::Failed(reason)) => {
                open = None;
                let now = Instant::now();
                if now >= give_up {
                    tracing::warn!(%lease, %reason, ttl = ?ttl, "lost the lease: no keep-alive was acknowledged for twice its TTL");
                    let _ = lost.send(true);
                    return;
                }
                tracing::warn!(%lease, %reason, give_up_in = ?(give_up - now), "a keep-alive failed; trying again");
                let _ = tokio::time::timeout(give_up - now, etcd.failed(generation, &reason)).await;
                pause = KEEP_ALIVE_RETRY.min(give_up.saturating_duration_since(Instant::now()));
            }
        }
    }
}

/// One keep-alive on the open stream (opening one on the current member first): the time
/// the lease has left after it.
async fn renew(
    etcd: &Etcd,
    id: i64,
    ttl: Duration,
    open: &mut Option<KeepAlive>,
) -> Result<Duration, Renewal> {
    let failed = |e: etcd_client::Error| match classify(&e) {
        Failure::Answer => Renewal::Gone,
        Failure::Member => Renewal::Failed(e.to_string()),
    };
    let Some(alive) = open.as_mut() else {
        // Opening a stream sends a keep-alive and checks its answer: the full TTL again.
        let (mut client, generation) = etcd.client();
        let (keeper, stream) = client.lease_keep_alive(id).await.map_err(failed)?;
        *open = Some(KeepAlive {
            keeper,
            stream,
            generation,
        });
        return Ok(ttl);
    };
    alive.keeper.keep_alive().await.map_err(failed)?;
    match alive.stream.message().await.map_err(failed)? {
        Some(resp) if resp.ttl() > 0 => {
            Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)))
        }
        Some(_) => Err(Renewal::Gone),
        None => Err(Renewal::Failed("the keep-alive stream closed".into())),
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
        let etcd = storage.etcd();
        let election = storage.key(name);
        loop {
            let attempt = Instant::now();
            let (mut client, generation) = etcd.client();
            let resp = match client
                .campaign(election.as_bytes(), value, lease.id())
                .await
            {
                Ok(resp) => resp,
                // A campaign waits as long as another leader lives, longer than the client's
                // request timeout (30 s): campaign again with the same lease (at worst at the
                // end of the queue, if etcd dropped the key of the cancelled campaign).
                Err(e)
                    if is_request_timeout(&e)
                        && attempt.elapsed() >= Duration::from_secs(1)
                        && !lease.is_lost() =>
                {
                    tracing::debug!(election = %election, "still waiting for the leadership");
                    continue;
                }
                // The member failed: campaign again on the next one, while the lease lives.
                Err(e) if classify(&e) == Failure::Member && !lease.is_lost() => {
                    let reason = e.to_string();
                    tracing::warn!(election = %election, %reason, "the campaign failed; campaigning again");
                    etcd.failed(generation, &reason).await;
                    tokio::time::sleep(KEEP_ALIVE_RETRY).await;
                    continue;
                }
                Err(e) => {
                    return Err(StorageError::Etcd {
                        op: "campaign",
                        key: election,
                        source: Box::new(e),
                    })
                }
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
            let held = etcd
                .call("get", &key, |mut client| {
                    let key = key.clone();
                    async move { client.get(key, None).await }
                })
                .await?;
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

    /// Gives up the leadership and its lease, within [`RESIGN_TIMEOUT`].
    ///
    /// Resigning is a courtesy to the next leader (it need not wait for the lease's TTL): when
    /// etcd does not answer in time (no quorum, e.g. while the machine shuts down), this gives
    /// up and the lease expires by itself. It never keeps a process from stopping or from
    /// campaigning again for longer than that.
    pub async fn resign(self) -> Result<(), StorageError> {
        let key = self.key.clone();
        let endpoint = self.lease.etcd.endpoint();
        let resign = async move {
            let mut client = self.lease.etcd.client().0;
            // A failed resign leaves the key to the lease: revoking it deletes the key too.
            let _ = client
                .resign(Some(ResignOptions::new().with_leader(self.leader.clone())))
                .await;
            self.lease.revoke().await
        };
        match tokio::time::timeout(RESIGN_TIMEOUT, resign).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Unavailable {
                op: "resign",
                key,
                endpoint,
                retried: duration::format(RESIGN_TIMEOUT),
                message: "no answer; the lease expires by itself".into(),
            }),
        }
    }
}
