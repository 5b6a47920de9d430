//! Lease expiry on the leader (etcd's lessor).
//!
//! The lease table itself is replicated engine state; when each lease
//! expires is not. Only the leader keeps deadlines, in memory. When a member
//! becomes leader (a new term) it gives every lease its full TTL again
//! (etcd's `Promote`), so no lease expires early because leadership moved;
//! a member that stops leading forgets its deadlines (etcd's `Demote`).
//! Keepalives renew a deadline on the leader (followers forward them);
//! the server polls [`RaftNode::expired_leases`] and proposes a
//! `LeaseRevoke` for each, so every member deletes the keys at the same
//! revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ballast_proto::ballastpb::LeaseForwardRequest;
use openraft::ServerState;
use parking_lot::Mutex;

use crate::node::{NodeError, RaftNode};

/// How long an expired lease waits before its revoke is proposed again
/// (when the first proposal was lost).
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// The leader's lease deadlines.
#[derive(Default)]
pub(crate) struct Lessor {
    state: Mutex<LessorState>,
}

#[derive(Default)]
struct LessorState {
    /// The term this member was leader in when it last promoted.
    promoted_term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
    /// Expired leases whose revoke was proposed, and when.
    revoking: HashMap<i64, Instant>,
}

impl RaftNode {
    /// The term, if this member is the leader now.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id()))
            .then_some(m.current_term)
    }

    /// Promotes (full TTL for every lease) when this member leads in a new
    /// term, demotes when it no longer leads; true if it leads.
    fn lessor_sync(&self, st: &mut LessorState) -> bool {
        let Some(term) = self.leading_term() else {
            if st.promoted_term.take().is_some() {
                tracing::info!("no longer leader: lease deadlines dropped");
            }
            st.deadlines.clear();
            st.revoking.clear();
            return false;
        };
        if st.promoted_term != Some(term) {
            let now = Instant::now();
            st.deadlines = self
                .store()
                .leases()
                .into_iter()
                .map(|(id, ttl)| (id, now + ttl_duration(ttl)))
                .collect();
            st.revoking.clear();
            st.promoted_term = Some(term);
            tracing::info!(
                term,
                leases = st.deadlines.len(),
                "leader: every lease gets its full TTL"
            );
        }
        true
    }

    /// On the leader: the leases whose deadline passed and whose revoke is
    /// not in flight (marked in flight now). Elsewhere: none. Also starts
    /// deadlines for leases granted since (full TTL from now) and forgets
    /// revoked ones.
    pub fn expired_leases(&self) -> Vec<i64> {
        let mut st = self.lessor.state.lock();
        if !self.lessor_sync(&mut st) {
            return Vec::new();
        }
        let now = Instant::now();
        let leases = self.store().leases();
        let st = &mut *st;
        let mut live = HashMap::with_capacity(leases.len());
        for (id, ttl) in leases {
            let deadline = st
                .deadlines
                .get(&id)
                .copied()
                .unwrap_or_else(|| now + ttl_duration(ttl));
            live.insert(id, deadline);
        }
        st.deadlines = live;
        st.revoking.retain(|id, _| st.deadlines.contains_key(id));
        let mut out = Vec::new();
        for (id, deadline) in &st.deadlines {
            if *deadline > now {
                continue;
            }
            match st.revoking.get(id) {
                Some(at) if now.duration_since(*at) < REVOKE_RETRY => {}
                _ => {
                    st.revoking.insert(*id, now);
                    out.push(*id);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Starts lease `id`'s deadline on the leader right after its grant.
    pub fn lease_granted(&self, id: i64, ttl: i64) {
        let mut st = self.lessor.state.lock();
        if self.lessor_sync(&mut st) {
            st.deadlines.insert(id, Instant::now() + ttl_duration(ttl));
        }
    }

    /// Renews lease `id` here, if this member leads: its granted TTL, 0
    /// when it does not exist or already expired.
    pub(crate) async fn lease_keep_alive_local(&self, id: i64) -> Result<i64, NodeError> {
        if self.leading_term().is_none() {
            return Err(NodeError::NotLeader { leader: None });
        }
        if self.store().lease(id).is_none() {
            // A lease granted in an earlier term may not be applied here yet.
            self.read_barrier().await?;
        }
        let mut st = self.lessor.state.lock();
        if !self.lessor_sync(&mut st) {
            return Err(NodeError::NotLeader { leader: None });
        }
        let Some(lease) = self.store().lease(id) else {
            return Ok(0);
        };
        let now = Instant::now();
        match st.deadlines.get(&id) {
            Some(d) if *d <= now => Ok(0),
            _ => {
                st.deadlines.insert(id, now + ttl_duration(lease.ttl));
                Ok(lease.ttl)
            }
        }
    }

    /// The remaining TTL of lease `id` in whole seconds by this leader's
    /// deadline, -1 when it does not exist.
    pub(crate) async fn lease_remaining_local(&self, id: i64) -> Result<i64, NodeError> {
        if self.leading_term().is_none() {
            return Err(NodeError::NotLeader { leader: None });
        }
        if self.store().lease(id).is_none() {
            self.read_barrier().await?;
        }
        let mut st = self.lessor.state.lock();
        if !self.lessor_sync(&mut st) {
            return Err(NodeError::NotLeader { leader: None });
        }
        let Some(lease) = self.store().lease(id) else {
            return Ok(-1);
        };
        let now = Instant::now();
        let deadline = *st
            .deadlines
            .entry(id)
            .or_insert_with(|| now + ttl_duration(lease.ttl));
        Ok(deadline.saturating_duration_since(now).as_secs() as i64)
    }

    /// Renews lease `id` on the leader (here or forwarded): its granted
    /// TTL, or 0 if it does not exist (etcd's `LeaseRenew`).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, NodeError> {
        match self.lease_keep_alive_local(id).await {
            Err(NodeError::NotLeader { .. }) => self.lease_forward(id, true).await,
            other => other,
        }
    }

    /// The remaining TTL of lease `id` by the leader's deadlines (asked of
    /// the leader if this member follows), -1 if it does not exist.
    pub async fn lease_remaining(&self, id: i64) -> Result<i64, NodeError> {
        match self.lease_remaining_local(id).await {
            Err(NodeError::NotLeader { .. }) => self.lease_forward(id, false).await,
            other => other,
        }
    }

    async fn lease_forward(&self, id: i64, keep_alive: bool) -> Result<i64, NodeError> {
        let Some((leader, node)) = self.leader() else {
            return Err(NodeError::NoLeader);
        };
        if leader == self.id() {
            // Leading by openraft's view, but not yet by ours: retry later.
            return Err(NodeError::Unavailable("etcdserver: leader changed".into()));
        }
        let mut client = self.peer_client(leader, &node)?;
        let mut req = tonic::Request::new(LeaseForwardRequest {
            cluster_id: self.cluster_id(),
            id,
        });
        req.set_timeout(Duration::from_secs(5));
        let resp = if keep_alive {
            client.lease_keep_alive(req).await
        } else {
            client.lease_time_to_live(req).await
        };
        match resp {
            Ok(r) => Ok(r.into_inner().ttl),
            Err(s) if s.message().contains("no leader") => Err(NodeError::NoLeader),
            Err(s) => Err(NodeError::Unavailable(s.message().to_string())),
        }
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    if crate::faults().early_lease_expiry {
        return Duration::from_millis(ttl.max(0) as u64 * 1000 / 3);
    }
    Duration::from_secs(ttl.max(0) as u64)
}
