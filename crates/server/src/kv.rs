//! The etcd v3 KV service.

use std::sync::Arc;

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::kv_server::Kv;
use ballast_proto::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    TxnRequest, TxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use ballast_raft::RaftNode;

use crate::errors::EtcdError;
use crate::proposer::Proposer;
use crate::quota::{self, Quota};
use crate::validate;

/// What every response header carries: the cluster and member IDs, and the
/// current Raft term.
#[derive(Clone)]
pub struct HeaderInfo {
    /// The cluster ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    node: Arc<RaftNode>,
}

impl HeaderInfo {
    /// Headers of the member running `node`.
    pub fn new(node: Arc<RaftNode>) -> Self {
        HeaderInfo {
            cluster_id: node.cluster_id(),
            member_id: node.id(),
            node,
        }
    }

    /// The current Raft term.
    pub fn raft_term(&self) -> u64 {
        self.node.term()
    }

    /// Completes a header the engine filled with its revision.
    pub fn fill(&self, header: &mut Option<ResponseHeader>, current_rev: i64) {
        let h = header.get_or_insert_with(Default::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.raft_term();
        if h.revision == 0 {
            h.revision = current_rev;
        }
    }
}

/// Limits from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
}

/// KV over the MVCC engine: reads go straight to the engine, writes through
/// the [`Proposer`].
pub struct KvService {
    store: Store,
    proposer: Proposer,
    header: HeaderInfo,
    limits: Limits,
    quota: Arc<Quota>,
}

impl KvService {
    /// A KV service over `store`, writing through `proposer`.
    /// There is no backend quota until [`KvService::with_quota`] sets one.
    pub fn new(store: Store, proposer: Proposer, header: HeaderInfo, limits: Limits) -> Self {
        KvService {
            quota: Arc::new(Quota::new(store.clone(), None)),
            store,
            proposer,
            header,
            limits,
        }
    }

    /// Checks writes against `quota` (`--quota-backend-bytes`).
    pub fn with_quota(mut self, quota: Arc<Quota>) -> Self {
        self.quota = quota;
        self
    }

    /// As etcd's `quotaKVServer`: a write that does not fit raises this
    /// member's NOSPACE alarm (through the log, like any state change) and
    /// fails with `database space exceeded`.
    async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        if self.quota.available(cost) {
            return Ok(());
        }
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.header.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self
            .proposer
            .propose(Command {
                op: Some(Op::Alarm(raise)),
            })
            .await
        {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        } else {
            tracing::warn!(
                quota = self.quota.limit().unwrap_or(0),
                db_size = self.store.db_size(),
                "database space exceeded; NOSPACE alarm raised"
            );
        }
        Err(EtcdError::NoSpace.into())
    }

    fn check_size(&self, req: &impl Message) -> Result<(), EtcdError> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    async fn write(&self, op: Op) -> Result<CommandResponse, Status> {
        Ok(self.proposer.propose(Command { op: Some(op) }).await?)
    }

    fn fill(&self, header: &mut Option<ResponseHeader>) {
        self.header.fill(header, self.store.current_revision());
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected response to {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::range(&req)?;
        if !req.serializable && !ballast_raft::faults().stale_reads {
            // Linearizable: confirm leadership and catch up first (ReadIndex).
            self.proposer.read_barrier().await?;
        }
        let store = self.store.clone();
        let mut resp = tokio::task::spawn_blocking(move || store.range(&req))
            .await
            .map_err(|_| EtcdError::Stopped)?
            .map_err(EtcdError::from)?;
        self.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::put(&req)?;
        self.check_size(&req)?;
        self.check_quota(quota::put_cost(&req)).await?;
        match self.write(Op::Put(req)).await? {
            CommandResponse::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::delete_range(&req)?;
        self.check_size(&req)?;
        match self.write(Op::DeleteRange(req)).await? {
            CommandResponse::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("delete range")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::txn(&req, self.limits.max_txn_ops)?;
        self.check_size(&req)?;
        self.check_quota(quota::txn_cost(&req)).await?;
        match self.write(Op::Txn(req)).await? {
            CommandResponse::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        let physical = req.physical;
        let rev = req.revision;
        match self.write(Op::Compaction(req)).await? {
            CommandResponse::Compaction(mut r) => {
                if physical {
                    let store = self.store.clone();
                    tokio::task::spawn_blocking(move || store.wait_compacted(rev))
                        .await
                        .map_err(|_| EtcdError::Stopped)?;
                }
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
