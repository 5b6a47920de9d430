//! Membership changes as etcd's Cluster service asks for them, mapped onto
//! openraft's joint-consensus changes, always made by the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ballast_proto::ballastpb::ChangeMembersRequest;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::node::{NodeError, RaftNode};
use crate::types::{MemberNode, NodeId};

/// A change of the member set or of a member's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a member: a learner, or a voter (a learner promoted at once).
    Add {
        /// The new member's ID.
        id: NodeId,
        /// Its record (peer URLs; name and client URLs once it announces them).
        node: MemberNode,
        /// Whether it joins as a non-voting learner.
        learner: bool,
    },
    /// Makes a learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a member (voter or learner).
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Replaces a member's record (MemberUpdate, or a member announcing its
    /// name and client URLs at start).
    SetNode {
        /// The member.
        id: NodeId,
        /// Its new record.
        node: MemberNode,
    },
}

/// One member as the Cluster service lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member ID.
    pub id: NodeId,
    /// Its record.
    pub node: MemberNode,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// A learner is in sync when it is at most this many entries behind.
const PROMOTE_MAX_LAG: u64 = 1000;
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);

impl RaftNode {
    /// The members of the effective configuration.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                id: *id,
                node: node.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Applies `change` through the leader (here or forwarded to it).
    pub async fn change_members(&self, change: MembershipChange) -> Result<(), NodeError> {
        match self.change_members_local(change.clone()).await {
            Err(NodeError::NotLeader {
                leader: Some((id, node)),
            }) if id != self.id() => {
                let mut client = self.peer_client(id, &node)?;
                let req = ChangeMembersRequest {
                    cluster_id: self.cluster_id(),
                    change: bincode::serialize(&change)
                        .map_err(|e| NodeError::Unavailable(e.to_string()))?,
                };
                let mut req = tonic::Request::new(req);
                req.set_timeout(CHANGE_DEADLINE);
                let resp = client
                    .change_members(req)
                    .await
                    .map_err(|s| NodeError::Unavailable(s.message().to_string()))?
                    .into_inner();
                let result: Result<(), String> = bincode::deserialize(&resp.result)
                    .map_err(|e| NodeError::Unavailable(e.to_string()))?;
                result.map_err(NodeError::Rejected)
            }
            other => other,
        }
    }

    /// Applies `change` if this member leads; otherwise says who leads.
    pub async fn change_members_local(&self, change: MembershipChange) -> Result<(), NodeError> {
        let members = self.members();
        let find = |id: NodeId| members.iter().find(|m| m.id == id);
        match &change {
            MembershipChange::Add { id, node, .. } => {
                if find(*id).is_some() {
                    return Err(NodeError::Rejected(
                        "etcdserver: member ID already exist".into(),
                    ));
                }
                if members
                    .iter()
                    .any(|m| m.node.peer_urls.iter().any(|u| node.peer_urls.contains(u)))
                {
                    return Err(NodeError::Rejected(
                        "etcdserver: Peer URLs already exists".into(),
                    ));
                }
            }
            MembershipChange::Promote { id } => match find(*id) {
                None => return Err(NodeError::Rejected("etcdserver: member not found".into())),
                Some(m) if !m.is_learner => {
                    return Err(NodeError::Rejected(
                        "etcdserver: can only promote a learner member".into(),
                    ))
                }
                Some(_) => self.check_learner_in_sync(*id)?,
            },
            MembershipChange::Remove { id } | MembershipChange::SetNode { id, .. } => {
                if find(*id).is_none() {
                    return Err(NodeError::Rejected("etcdserver: member not found".into()));
                }
            }
        }
        match change {
            MembershipChange::Add { id, node, learner } => {
                self.retry(|| self.raft.add_learner(id, node.clone(), false))
                    .await?;
                if !learner {
                    self.retry(|| {
                        self.raft.change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                            false,
                        )
                    })
                    .await?;
                }
            }
            MembershipChange::Promote { id } => {
                self.retry(|| {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                })
                .await?;
            }
            MembershipChange::Remove { id } => {
                let learner = find(id).map(|m| m.is_learner).unwrap_or(false);
                let set = BTreeSet::from([id]);
                if learner {
                    self.retry(|| {
                        self.raft
                            .change_membership(ChangeMembers::RemoveNodes(set.clone()), false)
                    })
                    .await?;
                } else {
                    self.retry(|| {
                        self.raft
                            .change_membership(ChangeMembers::RemoveVoters(set.clone()), false)
                    })
                    .await?;
                }
            }
            MembershipChange::SetNode { id, node } => {
                let nodes = BTreeMap::from([(id, node)]);
                let start = Instant::now();
                loop {
                    // Checked at every attempt: a removal in progress may
                    // finish while this waits, and SetNodes on a removed
                    // member would add it back as a learner.
                    if !self.members().iter().any(|m| m.id == id) {
                        return Err(NodeError::Rejected("etcdserver: member not found".into()));
                    }
                    match self
                        .raft
                        .change_membership(ChangeMembers::SetNodes(nodes.clone()), false)
                        .await
                    {
                        Ok(_) => break,
                        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                            ChangeMembershipError::InProgress(_),
                        ))) if start.elapsed() < CHANGE_DEADLINE => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(change_error(e)),
                    }
                }
            }
        }
        Ok(())
    }

    fn check_learner_in_sync(&self, id: NodeId) -> Result<(), NodeError> {
        let m = self.metrics();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index);
        match matched {
            Some(i) if last.saturating_sub(i) <= PROMOTE_MAX_LAG => Ok(()),
            _ if m.current_leader != Some(self.id()) => Err(NodeError::NotLeader {
                leader: self.leader(),
            }),
            _ => Err(NodeError::Rejected(
                "etcdserver: can only promote a learner member which is in sync with leader".into(),
            )),
        }
    }

    /// Runs a membership call, retrying while another change is in
    /// progress, until a deadline.
    async fn retry<F, Fut, T>(&self, mut call: F) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>>,
        >,
    {
        let start = Instant::now();
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if start.elapsed() < CHANGE_DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(change_error(e)),
            }
        }
    }
}

/// The member-facing error of a failed membership change.
fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(id) => NodeError::NotLeader {
                leader: Some((id, f.leader_node.unwrap_or_default())),
            },
            None => NodeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::Rejected(format!("etcdserver: {e}"))
        }
        RaftError::Fatal(e) => NodeError::Unavailable(e.to_string()),
    }
}
