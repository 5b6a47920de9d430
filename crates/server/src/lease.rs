//! The etcd v3 Lease service.
//!
//! Grants and revokes are commands through Raft (the ID is chosen here,
//! before proposing, so applying is deterministic). Deadlines are the
//! leader's ([`RaftNode::expired_leases`]): keepalives and remaining TTLs
//! are answered by the leader, forwarded there from a follower, and
//! [`run_expiry`] on every member proposes the revoke of the leases that
//! expired while it leads.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::lease_server::Lease;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use ballast_raft::RaftNode;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::EtcdError;
use crate::kv::HeaderInfo;
use crate::proposer::{node_error, Proposer};

/// etcd's largest lease TTL in seconds (`lease.MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's smallest lease TTL: 1.5 election timeouts, rounded up to whole
/// seconds (2 s with the default 1000 ms).
pub fn min_lease_ttl(election_timeout_ms: u64) -> i64 {
    (3 * election_timeout_ms).div_ceil(2000).max(1) as i64
}

/// How often the leader looks for expired leases.
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);

/// Lease over the replicated lease table.
pub struct LeaseService {
    store: Store,
    proposer: Proposer,
    header: HeaderInfo,
    min_ttl: i64,
}

impl LeaseService {
    /// A Lease service; TTLs below `min_ttl` seconds are raised to it.
    pub fn new(store: Store, proposer: Proposer, header: HeaderInfo, min_ttl: i64) -> Self {
        LeaseService {
            store,
            proposer,
            header,
            min_ttl,
        }
    }

    fn node(&self) -> &Arc<RaftNode> {
        self.proposer.node()
    }

    fn header(&self) -> Option<ResponseHeader> {
        let mut h = None;
        self.header.fill(&mut h, self.store.current_revision());
        h
    }
}

/// A random positive, non-zero lease ID (etcd's ID generator gives
/// positive IDs too).
fn random_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let id = (h.finish() & (i64::MAX as u64)) as i64;
        if id != 0 {
            return id;
        }
    }
}

type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        if req.id == 0 {
            req.id = random_id();
        }
        req.ttl = req.ttl.max(self.min_ttl);
        let cmd = Command {
            op: Some(Op::LeaseGrant(req)),
        };
        match self.proposer.propose(cmd).await? {
            CommandResponse::LeaseGrant(mut r) => {
                self.node().lease_granted(r.id, r.ttl);
                self.header
                    .fill(&mut r.header, self.store.current_revision());
                Ok(Response::new(r))
            }
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let cmd = Command {
            op: Some(Op::LeaseRevoke(request.into_inner())),
        };
        match self.proposer.propose(cmd).await? {
            CommandResponse::LeaseRevoke(mut r) => {
                self.header
                    .fill(&mut r.header, self.store.current_revision());
                Ok(Response::new(r))
            }
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node().clone();
        let store = self.store.clone();
        let header = self.header.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(req) = msg else { break };
                // An unknown lease answers TTL 0, not an error (etcd).
                let resp = match node.lease_keep_alive(req.id).await {
                    Ok(ttl) => {
                        let mut h = None;
                        header.fill(&mut h, store.current_revision());
                        Ok(LeaseKeepAliveResponse {
                            header: h,
                            id: req.id,
                            ttl,
                        })
                    }
                    Err(e) => Err(Status::from(node_error(e))),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let ttl = self
            .node()
            .lease_remaining(req.id)
            .await
            .map_err(node_error)?;
        if ttl >= 0 {
            // The granted TTL and keys as of the leader's answer.
            self.proposer.read_barrier().await?;
        }
        let header = self.header();
        let Some(lease) = self.store.lease(req.id).filter(|_| ttl >= 0) else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl,
            granted_ttl: lease.ttl,
            keys: if req.keys { lease.keys } else { Vec::new() },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.proposer.read_barrier().await?;
        let leases = self
            .store
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(),
            leases,
        }))
    }
}

/// Proposes the revoke of every lease that expired while this member leads,
/// every [`EXPIRY_CHECK`], until `stop` turns true.
pub async fn run_expiry(proposer: Proposer, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for id in proposer.node().expired_leases() {
            let proposer = proposer.clone();
            tokio::spawn(async move {
                let cmd = Command {
                    op: Some(Op::LeaseRevoke(LeaseRevokeRequest { id })),
                };
                match proposer.propose(cmd).await {
                    Ok(_) | Err(EtcdError::LeaseNotFound) => {
                        tracing::debug!(lease = %format!("{id:x}"), "expired lease revoked")
                    }
                    Err(e) => {
                        tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease failed")
                    }
                }
            });
        }
    }
}
