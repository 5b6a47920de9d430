//! The gRPC service a member serves to its peers on the peer URLs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ballast_proto::ballastpb::raft_peer_server::RaftPeer;
use ballast_proto::ballastpb::{
    ChangeMembersRequest, ChangeMembersResponse, ClusterInfoRequest, ClusterInfoResponse,
    LeaseForwardRequest, LeaseForwardResponse, PreVoteRequest, PreVoteResponse, ProposeRequest,
    ProposeResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse, TimeoutNowRequest,
    TimeoutNowResponse,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::membership::MembershipChange;
use crate::node::{NodeError, RaftNode};
use crate::types::{to_proto, MemberNode, NodeId, TypeConfig};

/// Hands peers' messages to the local node: Raft traffic, read-index
/// requests, forwarded proposals and membership changes.
pub struct PeerService {
    node: Arc<RaftNode>,
    started: Instant,
    /// When a refusal was last logged: milliseconds after `started`, plus
    /// one (0: never).
    last_refusal_logged: AtomicU64,
}

impl PeerService {
    /// Serves `node` to the members of its cluster.
    pub fn new(node: Arc<RaftNode>) -> Self {
        PeerService {
            node,
            started: Instant::now(),
            last_refusal_logged: AtomicU64::new(0),
        }
    }

    fn check(&self, cluster_id: u64) -> Result<(), Status> {
        let mine = self.node.cluster_id();
        if cluster_id != mine {
            self.log_refusal(cluster_id);
            return Err(Status::failed_precondition(format!(
                "request from cluster {cluster_id:x}, this member belongs to cluster {mine:x}"
            )));
        }
        Ok(())
    }

    /// Logs a refused request from another cluster, at most once a second
    /// (a stray member sends several a second).
    fn log_refusal(&self, theirs: u64) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_refusal_logged.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_refusal_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                request_cluster = %format!("{theirs:x}"),
                local_cluster = %format!("{:x}", self.node.cluster_id()),
                "refused a peer request from another cluster (a member with another --initial-cluster-token?)"
            );
        }
    }

    fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = bincode::serialize(result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage {
            cluster_id: 0,
            payload,
        }))
    }
}

/// Metadata on a forwarded proposal's refusal: the command was not
/// appended to the log, so it may be sent to another leader.
pub(crate) const NOT_APPENDED: &str = "ballast-not-appended";

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

/// How a node error reaches a forwarding peer.
pub(crate) fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } => Status::unavailable("etcdserver: leader changed"),
        NodeError::NoLeader => Status::unavailable("etcdserver: no leader"),
        NodeError::Unavailable(m) => Status::unavailable(m),
        NodeError::Rejected(m) => Status::failed_precondition(m),
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check(msg.cluster_id)?;
        let req: AppendEntriesRequest<TypeConfig> =
            bincode::deserialize(&msg.payload).map_err(bad_payload)?;
        self.node.note_leader_contact();
        Self::reply(&self.node.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check(msg.cluster_id)?;
        let req: VoteRequest<NodeId> = bincode::deserialize(&msg.payload).map_err(bad_payload)?;
        Self::reply(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg = request.into_inner();
        self.check(msg.cluster_id)?;
        let req: InstallSnapshotRequest<TypeConfig> =
            bincode::deserialize(&msg.payload).map_err(bad_payload)?;
        self.node.note_leader_contact();
        Self::reply(&self.node.raft.install_snapshot(req).await)
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.check(request.into_inner().cluster_id)?;
        let pass = self.node.quiet.read().await;
        let read = self.node.raft.get_read_log_id().await;
        drop(pass);
        match read {
            Ok((read_log_id, _applied)) => Ok(Response::new(ReadIndexResponse {
                read_index: read_log_id.map(|l| l.index).unwrap_or(0),
            })),
            Err(_) => Err(Status::unavailable("etcdserver: leader changed")),
        }
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        let command = ballast_proto::ballastpb::Command::decode(req.command.as_slice())
            .map_err(bad_payload)?;
        // A forwarded proposal is not forwarded again. A refusal because
        // this member no longer leads (nothing was appended) is marked, so
        // the forwarding member may try the new leader.
        let (result, index) = self.node.write_local(command).await.map_err(|e| {
            let refused = matches!(e, NodeError::NotLeader { .. });
            let mut status = node_status(e);
            if refused {
                status.metadata_mut().insert(
                    NOT_APPENDED,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
            }
            status
        })?;
        Ok(Response::new(ProposeResponse {
            result: Some(to_proto(&result)),
            index,
        }))
    }

    async fn timeout_now(
        &self,
        request: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        if req.campaign {
            self.node
                .campaign_for(req.leader_id)
                .await
                .map_err(node_status)?;
        } else {
            self.node.note_leader_contact();
        }
        Ok(Response::new(TimeoutNowResponse {}))
    }

    async fn pre_vote(
        &self,
        request: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        Ok(Response::new(PreVoteResponse {
            granted: self.node.pre_vote_granted(req.candidate, &req.last_log_id),
        }))
    }

    async fn change_members(
        &self,
        request: Request<ChangeMembersRequest>,
    ) -> Result<Response<ChangeMembersResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        let change: MembershipChange = bincode::deserialize(&req.change).map_err(bad_payload)?;
        let result: Result<(), String> = match self.node.change_members_local(change).await {
            Ok(()) => Ok(()),
            Err(NodeError::Rejected(m)) => Err(m),
            Err(e) => return Err(node_status(e)),
        };
        let result = bincode::serialize(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ChangeMembersResponse { result }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseForwardRequest>,
    ) -> Result<Response<LeaseForwardResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        // Not forwarded again: only the leader keeps deadlines.
        let ttl = self
            .node
            .lease_keep_alive_local(req.id)
            .await
            .map_err(node_status)?;
        Ok(Response::new(LeaseForwardResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseForwardRequest>,
    ) -> Result<Response<LeaseForwardResponse>, Status> {
        let req = request.into_inner();
        self.check(req.cluster_id)?;
        let ttl = self
            .node
            .lease_remaining_local(req.id)
            .await
            .map_err(node_status)?;
        Ok(Response::new(LeaseForwardResponse { ttl }))
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        let members: Vec<(NodeId, MemberNode, bool)> = self
            .node
            .members()
            .into_iter()
            .map(|m| (m.id, m.node, m.is_learner))
            .collect();
        let members = bincode::serialize(&members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.node.cluster_id(),
            members,
        }))
    }
}

/// Asks the members at `peer_urls` for the cluster's ID and members; the
/// first that answers wins.
pub async fn fetch_cluster_info(
    peer_urls: &[String],
) -> Result<(u64, Vec<(NodeId, MemberNode, bool)>), String> {
    let mut errors = Vec::new();
    for url in peer_urls {
        let Some((_, ch)) = crate::network::connect_lazy(std::slice::from_ref(url)) else {
            errors.push(format!("{url}: not a valid URL"));
            continue;
        };
        let mut client = ballast_proto::ballastpb::raft_peer_client::RaftPeerClient::new(ch);
        let mut req = Request::new(ClusterInfoRequest {});
        req.set_timeout(std::time::Duration::from_secs(2));
        match client.cluster_info(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let members = bincode::deserialize(&r.members).map_err(|e| e.to_string())?;
                return Ok((r.cluster_id, members));
            }
            Err(s) => errors.push(format!("{url}: {}", s.message())),
        }
    }
    Err(format!(
        "no member of the existing cluster answered ({})",
        errors.join("; ")
    ))
}
