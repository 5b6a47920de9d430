//! The write path: every state change is a command proposed through Raft,
//! answered once it is committed and applied on this member.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::CommandResponse;
use ballast_proto::ballastpb::Command;
use ballast_raft::{NodeError, RaftNode};

use crate::errors::EtcdError;
use crate::metrics::Metrics;

/// Proposes commands and waits for them, with etcd's request timeout.
///
/// # Guarantees
/// A command's response is sent only after the command is committed by a
/// quorum (durable in their logs) and applied here; a proposal that times
/// out may still commit later (`request timed out` is indeterminate, as in
/// etcd).
#[derive(Clone)]
pub struct Proposer {
    node: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// Counts a proposal as pending while it lives.
struct PendingGuard<'a>(&'a Metrics);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.proposals_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a Raft node error reaches a client, with etcd's messages.
pub fn node_error(e: NodeError) -> EtcdError {
    match e {
        NodeError::NoLeader => EtcdError::NoLeader,
        NodeError::NotLeader { .. } => EtcdError::LeaderChanged,
        NodeError::Unavailable(m) if m.contains("leader changed") => EtcdError::LeaderChanged,
        NodeError::Unavailable(m) if m.contains("no leader") => EtcdError::NoLeader,
        NodeError::Unavailable(m) if m.contains("stopped") => EtcdError::Stopped,
        NodeError::Unavailable(m) | NodeError::Rejected(m) => EtcdError::Unavailable(m),
    }
}

impl Proposer {
    /// Proposes through `node`; a proposal or read barrier that takes longer
    /// than `timeout` fails with `request timed out` (etcd: 5 s plus two
    /// election timeouts).
    pub fn new(node: Arc<RaftNode>, metrics: Arc<Metrics>, timeout: Duration) -> Proposer {
        Proposer {
            node,
            metrics,
            timeout,
        }
    }

    /// The Raft node.
    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Proposes `cmd` and returns the engine's answer.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the command: it may still apply.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, EtcdError> {
        self.metrics
            .proposals_pending
            .fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&self.metrics);
        let started = Instant::now();
        let res = match tokio::time::timeout(self.timeout, self.node.propose(cmd)).await {
            Err(_) => Err(EtcdError::Timeout),
            Ok(Err(e)) => Err(node_error(e)),
            Ok(Ok((result, _index))) => {
                // Commit (log fsync on a quorum) plus apply (engine write).
                let took = started.elapsed();
                self.metrics.wal_fsync.observe(took);
                self.metrics.backend_commit.observe(took);
                result.map_err(EtcdError::from)
            }
        };
        if matches!(
            res,
            Err(EtcdError::Stopped
                | EtcdError::Storage(_)
                | EtcdError::Timeout
                | EtcdError::NoLeader
                | EtcdError::LeaderChanged
                | EtcdError::Unavailable(_))
        ) {
            self.metrics
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Waits until a read served here afterwards is linearizable (ReadIndex
    /// confirmed by the leader, and applied here).
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        match tokio::time::timeout(self.timeout, self.node.read_barrier()).await {
            Err(_) => Err(EtcdError::Timeout),
            Ok(r) => r.map_err(node_error),
        }
    }
}
