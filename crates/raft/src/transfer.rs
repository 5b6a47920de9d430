//! Leadership transfer (etcd's MoveLeader). openraft 0.9 has none, and a
//! follower refuses to vote while its leader lease (the maximum election
//! timeout since it last heard from the leader) runs, so the leader makes
//! the cluster quiet instead:
//!
//! 1. it stops starting proposals and leader reads (each would reach the
//!    followers and renew their leases) and stops heartbeats;
//! 2. it waits until the transferee has every entry of its log;
//! 3. it waits out the lease, plus a heartbeat interval for messages in
//!    flight, then tells the transferee to campaign (`TimeoutNow`). The
//!    followers' own election timers run for the lease plus another
//!    election timeout, so the transferee campaigns first, and its log is
//!    as long as anyone's, so it wins;
//! 4. it waits to see the new leader, then resumes: held proposals and
//!    reads find they are on a follower and go to the new leader.
//!
//! Writes and linearizable reads pause for about the lease (2 election
//! timeouts) during a transfer; etcd pauses proposals during a transfer
//! too.

use std::time::Duration;

use ballast_proto::ballastpb::TimeoutNowRequest;
use tokio::time::{sleep, timeout_at, Instant};

use crate::node::{NodeError, RaftNode};
use crate::types::{NodeId, Raft};

/// etcd's answer when the transferee did not take over in time.
pub const TRANSFER_TIMEOUT_MESSAGE: &str =
    "etcdserver: request timed out, leader transfer took too long";

/// Marks a transfer in progress (this leader refuses pre-votes) until
/// dropped.
struct Transferring<'a>(&'a RaftNode);

impl<'a> Transferring<'a> {
    fn new(node: &'a RaftNode) -> Self {
        node.transferring
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Transferring(node)
    }
}

impl Drop for Transferring<'_> {
    fn drop(&mut self) {
        self.0
            .transferring
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Turns heartbeats back on when dropped, whatever way the transfer ends.
struct HeartbeatsOff<'a>(&'a Raft);

impl<'a> HeartbeatsOff<'a> {
    fn new(raft: &'a Raft) -> Self {
        raft.runtime_config().heartbeat(false);
        HeartbeatsOff(raft)
    }
}

impl Drop for HeartbeatsOff<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}

fn timed_out() -> NodeError {
    NodeError::Unavailable(TRANSFER_TIMEOUT_MESSAGE.into())
}

impl RaftNode {
    /// Hands leadership to voter `target`; returns once this member has
    /// seen a new leader. Only the leader can do it (others get
    /// [`NodeError::NotLeader`]); a transfer to itself returns at once.
    /// Fails with etcd's "leader transfer took too long" after about two
    /// maximum election timeouts plus an election timeout.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), NodeError> {
        if self.leader_id() != Some(self.id()) {
            return Err(NodeError::NotLeader {
                leader: self.leader(),
            });
        }
        if target == self.id() {
            return Ok(());
        }
        let node = self
            .members()
            .into_iter()
            .find(|m| m.id == target && !m.is_learner)
            .ok_or_else(|| NodeError::Rejected("etcdserver: bad leader transferee".into()))?;
        let config = self.raft.config();
        let lease = Duration::from_millis(config.election_timeout_max);
        let heartbeat = Duration::from_millis(config.heartbeat_interval);
        let election = Duration::from_millis(config.election_timeout_min);
        let deadline = Instant::now() + 2 * lease + 2 * election;

        let quiet = timeout_at(deadline, self.quiet.write())
            .await
            .map_err(|_| timed_out())?;
        let _transferring = Transferring::new(self);
        let heartbeats = HeartbeatsOff::new(&self.raft);
        let mut metrics = self.raft.metrics();
        let voters: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| !m.is_learner && m.id != self.id())
            .map(|m| m.id)
            .collect();
        // Every voter has every entry, so none of them hears from this
        // leader after the wait below begins (their leases run out
        // together) and the transferee's log is complete.
        timeout_at(
            deadline,
            metrics.wait_for(|m| {
                let last = m.last_log_index;
                m.current_leader == Some(self.id())
                    && voters.iter().all(|v| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(v).cloned().flatten())
                            .map(|l| l.index)
                            >= last
                    })
            }),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| NodeError::Unavailable("etcdserver: server stopped".into()))?;
        tracing::info!(target = %format!("{target:x}"), "log quiet and transferee caught up; waiting out the leader lease");
        sleep(lease + heartbeat).await;

        // The other voters hold off their own elections, so that the
        // transferee is first.
        for other in self.members() {
            if other.is_learner || other.id == target || other.id == self.id() {
                continue;
            }
            if let Ok(mut c) = self.peer_client(other.id, &other.node) {
                let mut req = tonic::Request::new(TimeoutNowRequest {
                    cluster_id: self.cluster_id(),
                    leader_id: self.id(),
                    campaign: false,
                });
                req.set_timeout(heartbeat * 2);
                let _ = c.timeout_now(req).await;
            }
        }
        // Tell the transferee to campaign; again after an election timeout
        // if it has not won (a vote can be lost to a message that was
        // still in flight), until the deadline.
        let mut client = self.peer_client(target, &node.node)?;
        let outcome = loop {
            let mut req = tonic::Request::new(TimeoutNowRequest {
                cluster_id: self.cluster_id(),
                leader_id: self.id(),
                campaign: true,
            });
            req.set_timeout(election);
            if let Err(s) = client.timeout_now(req).await {
                tracing::info!(status = %s, "TimeoutNow to the transferee failed");
            }
            let round = (Instant::now() + election).min(deadline);
            match timeout_at(
                round,
                metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != self.id())),
            )
            .await
            {
                Ok(Ok(m)) => break Ok(m.current_leader),
                Ok(Err(_)) => {
                    break Err(NodeError::Unavailable("etcdserver: server stopped".into()))
                }
                Err(_) if Instant::now() >= deadline => break Err(timed_out()),
                Err(_) => continue,
            }
        };
        drop(heartbeats);
        drop(quiet);
        match outcome? {
            Some(l) if l == target => {
                tracing::info!(target = %format!("{target:x}"), "leadership transferred");
                Ok(())
            }
            // Another member won: etcd's MoveLeader fails then too.
            _ => Err(timed_out()),
        }
    }

    /// Campaigns now, on the word of `leader` (a `TimeoutNow`), if it is
    /// the leader this member follows.
    pub(crate) async fn campaign_for(&self, leader: NodeId) -> Result<(), NodeError> {
        let known = self.raft.metrics().borrow().current_leader;
        // None: this member already campaigned on an earlier TimeoutNow.
        if known.is_some_and(|k| k != leader) {
            return Err(NodeError::Rejected(format!(
                "etcdserver: TimeoutNow from {leader:x}, which is not this member's leader"
            )));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))
    }
}
