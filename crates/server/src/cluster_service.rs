//! The etcd v3 Cluster service over Raft membership.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_proto::etcdserverpb::cluster_server::Cluster;
use ballast_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use ballast_raft::{MemberNode, MembershipChange, NodeError, RaftNode};
use tonic::{Code, Request, Response, Status};

use crate::bootstrap::added_member_id;

/// MemberList/Add/Remove/Update/Promote, each a Raft membership change made
/// by the leader.
pub struct ClusterService {
    node: Arc<RaftNode>,
}

impl ClusterService {
    /// The service for `node`.
    pub fn new(node: Arc<RaftNode>) -> Self {
        ClusterService { node }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(header_of(&self.node))
    }

    fn members(&self) -> Vec<Member> {
        self.node
            .members()
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.node.name,
                peer_ur_ls: m.node.peer_urls,
                client_ur_ls: m.node.client_urls,
                is_learner: m.is_learner,
            })
            .collect()
    }

    async fn change(&self, change: MembershipChange) -> Result<(), Status> {
        self.node.change_members(change).await.map_err(node_status)
    }

    fn node_of(&self, id: u64) -> Result<MemberNode, Status> {
        self.node
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.node)
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))
    }
}

/// A response header from the node's current state.
pub fn header_of(node: &RaftNode) -> ResponseHeader {
    ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.id(),
        revision: node.store().current_revision(),
        raft_term: node.metrics().current_term,
    }
}

/// How a node error reaches a client, with etcd's codes and messages.
pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::NoLeader => Status::unavailable("etcdserver: no leader"),
        NodeError::NotLeader { .. } => Status::unavailable("etcdserver: leader changed"),
        NodeError::Unavailable(m) if m.starts_with("etcdserver:") => Status::unavailable(m),
        NodeError::Unavailable(m) => Status::unavailable(format!("etcdserver: {m}")),
        NodeError::Rejected(m) => {
            let code = if m.contains("not found") {
                Code::NotFound
            } else {
                Code::FailedPrecondition
            };
            Status::new(code, m)
        }
    }
}

fn check_urls(urls: &[String]) -> Result<(), Status> {
    let ok = !urls.is_empty()
        && urls.iter().all(|u| {
            u.strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_some_and(|hp| {
                    hp.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                })
        });
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "etcdserver: given member URLs are invalid",
        ))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = added_member_id(&req.peer_ur_ls, now);
        let node = MemberNode {
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
        };
        self.change(MembershipChange::Add {
            id,
            node,
            learner: req.is_learner,
        })
        .await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.node_of(id)?;
        self.change(MembershipChange::Remove { id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let mut node = self.node_of(req.id)?;
        node.peer_urls = req.peer_ur_ls;
        node.peer_urls.sort();
        self.change(MembershipChange::SetNode { id: req.id, node })
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await.map_err(node_status)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.node_of(id)?;
        self.change(MembershipChange::Promote { id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}
