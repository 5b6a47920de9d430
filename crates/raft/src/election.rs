//! When a member campaigns: Raft's PreVote on top of openraft 0.9, which
//! has none. openraft's own election timer is turned off; this driver
//! watches for the leader's messages instead. A voter that has heard no
//! AppendEntries or InstallSnapshot for a random time between one and two
//! election timeouts asks the voters whether they would vote for it
//! (`PreVote`): a voter says yes only if it has not heard from a leader
//! for a leader lease itself, is not a leader with a fresh quorum, and the
//! candidate's log is at least as up to date as its own. Only with a
//! majority of yeses (in every configuration of a joint membership) does
//! the member start a real election, at a new term.
//!
//! So a member cut off from the others (a partition, a pause) does not
//! raise its term while it is away, and when it comes back it neither
//! deposes the leader nor stops the cluster; and a dead leader is replaced
//! after one to two election timeouts (openraft's own timer waited a lease
//! plus a timeout: three to four).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ballast_proto::ballastpb::PreVoteRequest;
use openraft::ServerState;

use crate::node::{jitter_ms, RaftNode};
use crate::types::{LogId, NodeId};

/// How often the driver looks.
fn tick(election: Duration) -> Duration {
    (election / 10).max(Duration::from_millis(10))
}

/// Runs for the life of the node: starts elections when they are due.
pub(crate) async fn drive_elections(node: Weak<RaftNode>, election: Duration) {
    let election_ms = election.as_millis() as u64;
    let mut patience = Duration::from_millis(election_ms + jitter_ms(election_ms));
    let mut last_try = Instant::now();
    loop {
        tokio::time::sleep(tick(election)).await;
        let Some(n) = node.upgrade() else { return };
        let (state, voters) = {
            let m = n.raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state, voters)
        };
        if state == ServerState::Leader || !voters.contains(&n.id()) {
            last_try = Instant::now();
            continue;
        }
        if voters.len() == 1 {
            // The only voter: nobody to ask, nobody to disturb.
            if state == ServerState::Follower {
                let _ = n.raft.trigger().elect().await;
            }
            continue;
        }
        let quiet_for = n.since_leader_contact().min(last_try.elapsed());
        if quiet_for < patience {
            continue;
        }
        last_try = Instant::now();
        patience = Duration::from_millis(election_ms + jitter_ms(election_ms));
        if !n.pre_vote_round(election).await {
            tracing::debug!("pre-vote lost: not campaigning");
            continue;
        }
        tracing::info!(
            "no leader heard from for {:?} and a majority would vote: campaigning",
            quiet_for
        );
        let _ = n.raft.trigger().elect().await;
    }
}

impl RaftNode {
    /// One PreVote round; true if a majority of every configuration would
    /// vote for this member.
    async fn pre_vote_round(self: &Arc<Self>, election: Duration) -> bool {
        let last = self.raft.data_metrics().borrow().last_log;
        let Ok(last_log_id) = bincode::serialize(&last) else {
            return false;
        };
        let (configs, nodes) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().to_vec();
            let nodes: Vec<_> = membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect();
            (configs, nodes)
        };
        let mut asks = tokio::task::JoinSet::new();
        for (id, node) in nodes {
            if id == self.id() || !configs.iter().any(|c| c.contains(&id)) {
                continue;
            }
            let me = self.clone();
            let req = PreVoteRequest {
                cluster_id: self.cluster_id(),
                candidate: self.id(),
                last_log_id: last_log_id.clone(),
            };
            asks.spawn(async move {
                let Ok(mut client) = me.peer_client(id, &node) else {
                    return (id, false);
                };
                let mut req = tonic::Request::new(req);
                req.set_timeout(election / 2);
                let granted = client
                    .pre_vote(req)
                    .await
                    .map(|r| r.into_inner().granted)
                    .unwrap_or(false);
                (id, granted)
            });
        }
        let answers = asks.join_all().await;
        let mut yes: BTreeSet<NodeId> = answers
            .into_iter()
            .filter(|(_, granted)| *granted)
            .map(|(id, _)| id)
            .collect();
        yes.insert(self.id());
        configs
            .iter()
            .all(|c| c.iter().filter(|id| yes.contains(id)).count() * 2 > c.len())
    }

    /// Whether this member would vote for a candidate whose last log ID is
    /// `candidate_last` (bincode), were it to campaign now.
    pub(crate) fn pre_vote_granted(&self, candidate: NodeId, candidate_last: &[u8]) -> bool {
        let Ok(theirs) = bincode::deserialize::<Option<LogId>>(candidate_last) else {
            return false;
        };
        if self.transferring.load(Ordering::Relaxed) || self.leader_id() == Some(self.id()) {
            return false;
        }
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        if self.since_leader_contact() < lease {
            return false;
        }
        let mine = self.raft.data_metrics().borrow().last_log;
        let granted = theirs >= mine;
        tracing::debug!(candidate = %format!("{candidate:x}"), granted, "pre-vote");
        granted
    }
}
