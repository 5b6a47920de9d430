//! A member's Raft node: openraft wired to the log store, the state machine
//! over the engine and the peer transport.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::raft_peer_client::RaftPeerClient;
use ballast_proto::ballastpb::{Command, ProposeRequest, ReadIndexRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, RaftMetrics, SnapshotPolicy};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::transport::Channel;

use crate::log_store::LogStore;
use crate::network::{connect_lazy, PeerNetwork};
use crate::peer_service::PeerService;
use crate::state_machine::{StateMachine, MAX_COMMANDS_PER_ENTRY};
use crate::types::{from_proto, MemberNode, NodeId, Raft, Request};

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's ID.
    pub id: NodeId,
    /// The cluster's ID; peers of other clusters are refused.
    pub cluster_id: u64,
    /// Directory of the Raft log database.
    pub log_dir: PathBuf,
    /// Directory of snapshot files.
    pub snap_dir: PathBuf,
    /// Heartbeat interval (etcd's `--heartbeat-interval`, 100 ms).
    pub heartbeat: Duration,
    /// Election timeout (etcd's `--election-timeout`, 1000 ms); openraft
    /// picks each timeout at random between it and twice it.
    pub election_timeout: Duration,
    /// Entries applied between two snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, for slow followers
    /// (etcd's `--experimental-snapshot-catchup-entries`, 5000).
    pub catchup_entries: u64,
}

impl NodeConfig {
    /// etcd's defaults for a member with the given ID and directories.
    pub fn new(id: NodeId, cluster_id: u64, log_dir: PathBuf, snap_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            cluster_id,
            log_dir,
            snap_dir,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            catchup_entries: 5_000,
        }
    }
}

/// Why a write or read barrier could not be served here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// Another member leads: send the request there.
    #[error("not the leader")]
    NotLeader {
        /// The leader, if one is known.
        leader: Option<(NodeId, MemberNode)>,
    },
    /// No leader is known now.
    #[error("no leader")]
    NoLeader,
    /// The node stopped or failed, or the leader could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The request was refused (an etcd error message, e.g. `etcdserver:
    /// member not found`).
    #[error("{0}")]
    Rejected(String),
}

/// The answer to a proposal: the engine's result and the log index.
pub type WriteResult = Result<(Result<CommandResponse, ballast_mvcc::Error>, u64), NodeError>;

/// How forwarding a proposal to the leader failed.
enum Forwarded {
    /// The leader refused before appending it: it no longer leads.
    NotAppended,
    /// Anything else (the outcome may be unknown).
    Failed(NodeError),
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<WriteResult>,
}

/// Log entries being proposed at once; while they are in flight, new
/// proposals gather into the next entry. Few entries in flight make large
/// entries, so many writes share each log fsync: with 100 clients on a
/// three-member cluster, 2 gave 10.7k puts/s where 8 gave 7.4k (same run
/// conditions, `scripts/bench-compare.sh`).
const MAX_INFLIGHT_ENTRIES: usize = 2;
/// Most commands gathered into one entry.
const MAX_BATCH: usize = 1024;
/// An entry stops gathering commands once they add up to this many bytes,
/// so entries (and the messages carrying them) stay small next to the peer
/// message limit even with large values.
const MAX_BATCH_BYTES: usize = 4 << 20;

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(id) => NodeError::NotLeader {
                leader: Some((id, f.leader_node.unwrap_or_default())),
            },
            None => NodeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::Unavailable(e.to_string())
        }
        RaftError::Fatal(e) => NodeError::Unavailable(e.to_string()),
    }
}

/// Held (shared) by every proposal and leader read round while it talks to
/// the followers; a leadership transfer holds it exclusively so the log and
/// the followers' leader leases go quiet (see `transfer.rs`).
pub(crate) type QuietGate = Arc<tokio::sync::RwLock<()>>;

/// Gathers proposals into log entries.
async fn batch_proposals(raft: Raft, gate: QuietGate, mut rx: mpsc::Receiver<Proposal>) {
    let permits = Arc::new(Semaphore::new(MAX_INFLIGHT_ENTRIES));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH.min(MAX_COMMANDS_PER_ENTRY) && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.command.encoded_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let pass = gate.read().await;
            let written = raft.client_write(Request { commands }).await;
            drop(pass);
            match written {
                Ok(resp) => {
                    let index = resp.log_id.index;
                    let mut results = resp.data.results.into_iter();
                    for reply in replies {
                        let r = results
                            .next()
                            .ok_or_else(|| {
                                NodeError::Unavailable("entry applied without a result".into())
                            })
                            .map(|r| (r, index));
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let err = client_write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;

/// A random number of milliseconds below `bound` (no cryptographic need).
pub(crate) fn jitter_ms(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % bound.max(1)
}

/// Serves read barriers in rounds: every request waiting when a round
/// starts shares its read index, so concurrent linearizable reads cost one
/// quorum round, not one each. A request arriving during a round waits for
/// the next one (whose confirmation starts after it arrived).
async fn read_index_rounds(node: std::sync::Weak<RaftNode>, mut rx: mpsc::Receiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(node) = node.upgrade() else { return };
        let r = node.read_index_once().await;
        drop(node);
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

/// A running Raft node.
pub struct RaftNode {
    /// The openraft instance.
    pub raft: Raft,
    id: NodeId,
    cluster_id: u64,
    sm: StateMachine,
    applied: watch::Receiver<u64>,
    leader_clients: Mutex<HashMap<NodeId, RaftPeerClient<Channel>>>,
    proposals: mpsc::Sender<Proposal>,
    read_rounds: mpsc::Sender<ReadWaiter>,
    /// Proposals and leader reads pass it; MoveLeader closes it.
    pub(crate) quiet: QuietGate,
    /// When `started` was, and when a leader's AppendEntries or
    /// InstallSnapshot last arrived (milliseconds after `started`, plus one;
    /// 0: never).
    started: std::time::Instant,
    leader_contact: std::sync::atomic::AtomicU64,
    /// Set while this leader hands leadership over (MoveLeader).
    pub(crate) transferring: std::sync::atomic::AtomicBool,
    /// The leader's lease deadlines (`lease.rs`).
    pub(crate) lessor: crate::lease::Lessor,
}

impl RaftNode {
    /// Opens the log and state machine and starts Raft (it joins or leads
    /// once initialized, see [`RaftNode::bootstrap`]).
    pub async fn start(cfg: NodeConfig, store: Store) -> Result<Arc<RaftNode>, String> {
        let log = LogStore::open(&cfg.log_dir)?;
        let sm = StateMachine::new(store, cfg.snap_dir.clone())?;
        let election_ms = cfg.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: format!("{:x}", cfg.cluster_id),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            // openraft's own election timer is off (`election.rs` decides
            // when to campaign); its leader lease is `election_timeout_max`:
            // a follower refuses votes for that long after hearing from
            // the leader.
            election_timeout_min: election_ms,
            election_timeout_max: election_ms + 1,
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 4 << 20,
            max_payload_entries: 1000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: cfg.catchup_entries,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| format!("raft config: {e}"))?);
        let raft = Raft::new(
            cfg.id,
            config,
            PeerNetwork::new(cfg.cluster_id),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| format!("cannot start raft: {e}"))?;
        let quiet = QuietGate::default();
        let (proposals, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(batch_proposals(raft.clone(), quiet.clone(), rx));
        let (read_rounds, read_rx) = mpsc::channel(4 * MAX_BATCH);
        let node = Arc::new(RaftNode {
            proposals,
            read_rounds,
            quiet,
            started: std::time::Instant::now(),
            leader_contact: Default::default(),
            transferring: Default::default(),
            raft,
            id: cfg.id,
            cluster_id: cfg.cluster_id,
            applied: sm.applied_index(),
            sm,
            leader_clients: Mutex::new(HashMap::new()),
            lessor: Default::default(),
        });
        tokio::spawn(read_index_rounds(Arc::downgrade(&node), read_rx));
        node.raft.runtime_config().elect(false);
        tokio::spawn(crate::election::drive_elections(
            Arc::downgrade(&node),
            cfg.election_timeout,
        ));
        Ok(node)
    }

    /// Records that a leader's AppendEntries or InstallSnapshot arrived.
    pub(crate) fn note_leader_contact(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.leader_contact
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since a leader's AppendEntries or InstallSnapshot last arrived
    /// (since the node started, if none has).
    pub(crate) fn since_leader_contact(&self) -> Duration {
        let last = self
            .leader_contact
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        Duration::from_millis(now.saturating_sub(last.max(1)))
    }

    /// The gRPC service to serve on the peer URLs.
    pub fn peer_service(self: &Arc<Self>) -> PeerService {
        PeerService::new(self.clone())
    }

    /// The cluster's ID.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// A client to a peer's service (cached per member).
    pub(crate) fn peer_client(
        &self,
        id: NodeId,
        node: &MemberNode,
    ) -> Result<RaftPeerClient<Channel>, NodeError> {
        let mut clients = self.leader_clients.lock();
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let (_, ch) = connect_lazy(&node.peer_urls).ok_or_else(|| {
            NodeError::Unavailable(format!("member {id:x} has no usable peer URL"))
        })?;
        let c = RaftPeerClient::new(ch)
            .max_decoding_message_size(crate::network::MAX_PEER_MESSAGE)
            .max_encoding_message_size(crate::network::MAX_PEER_MESSAGE);
        clients.insert(id, c.clone());
        Ok(c)
    }

    /// Proposes `command` through the leader (here, or forwarded to it) and
    /// returns the engine's answer and the log index it was applied at,
    /// once this member has applied it too. A leader that refuses because
    /// it just lost leadership (nothing appended, e.g. after MoveLeader)
    /// is followed to its successor once.
    pub async fn propose(&self, command: Command) -> WriteResult {
        let mut tried = None;
        for attempt in 0..2 {
            let (id, node) = match self.write_local(command.clone()).await {
                Err(NodeError::NotLeader {
                    leader: Some((id, node)),
                }) if id != self.id => (id, node),
                other => return other,
            };
            if tried == Some(id) {
                return Err(NodeError::Unavailable("etcdserver: leader changed".into()));
            }
            tried = Some(id);
            match self.forward(id, &node, &command).await {
                Err(Forwarded::NotAppended) if attempt == 0 => {
                    // Wait (briefly) to learn the leader's successor.
                    let mut m = self.raft.metrics();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(self.raft.config().election_timeout_max),
                        m.wait_for(|m| m.current_leader.is_some_and(|l| l != id)),
                    )
                    .await;
                }
                Err(Forwarded::NotAppended) => {
                    return Err(NodeError::Unavailable("etcdserver: leader changed".into()))
                }
                Err(Forwarded::Failed(e)) => return Err(e),
                Ok(done) => return Ok(done),
            }
        }
        Err(NodeError::Unavailable("etcdserver: leader changed".into()))
    }

    /// Sends `command` to leader `id` and waits to apply its entry here.
    async fn forward(
        &self,
        id: NodeId,
        node: &MemberNode,
        command: &Command,
    ) -> Result<(Result<CommandResponse, ballast_mvcc::Error>, u64), Forwarded> {
        let mut client = self.peer_client(id, node).map_err(Forwarded::Failed)?;
        let mut req = tonic::Request::new(ProposeRequest {
            cluster_id: self.cluster_id,
            command: command.encode_to_vec(),
        });
        req.set_timeout(Duration::from_secs(10));
        let resp = client.propose(req).await.map_err(|s| match s.code() {
            _ if s.metadata().contains_key(crate::peer_service::NOT_APPENDED) => {
                Forwarded::NotAppended
            }
            tonic::Code::Unavailable if s.message().contains("no leader") => {
                Forwarded::Failed(NodeError::NoLeader)
            }
            // The leader's own answer.
            _ if s.message().starts_with("etcdserver:") => {
                Forwarded::Failed(NodeError::Unavailable(s.message().to_string()))
            }
            // The leader could not be reached (or the connection broke):
            // etcd's client sees the leader as changed.
            _ => {
                tracing::debug!(status = %s, "forwarding to the leader failed");
                Forwarded::Failed(NodeError::Unavailable("etcdserver: leader changed".into()))
            }
        })?;
        let resp = resp.into_inner();
        let result = resp
            .result
            .ok_or_else(|| NodeError::Unavailable("empty answer from the leader".into()))
            .and_then(|r| from_proto(r).map_err(NodeError::Unavailable))
            .map_err(Forwarded::Failed)?;
        self.wait_applied(resp.index)
            .await
            .map_err(Forwarded::Failed)?;
        Ok((result, resp.index))
    }

    /// Waits until this member has applied log index `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|a| *a >= index)
            .await
            .map_err(|_| NodeError::Unavailable("state machine stopped".into()))?;
        Ok(())
    }

    /// The index of the last entry applied here.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// This member's ID.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The engine.
    pub fn store(&self) -> &Store {
        self.sm.store()
    }

    /// Creates the cluster with `members` as voters, if this node's log is
    /// empty; every founding member may call it with the same members.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, MemberNode>) -> Result<(), String> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "already initialized");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, MemberNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The current leader's ID, if one is known. A leader that has not
    /// heard from a quorum for an election timeout knows of no leader: etcd
    /// (CheckQuorum) steps down then, so `hasleader` requests, `/health` and
    /// `Status` on a leader cut off from the majority say "no leader"; so
    /// does a follower that has not heard from its leader for an election
    /// timeout.
    pub fn leader_id(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let limit = self.raft.config().election_timeout_min;
        if leader == self.id {
            match m.millis_since_quorum_ack {
                Some(ms) if ms <= limit => {}
                _ => return None,
            }
        } else if self.since_leader_contact() > Duration::from_millis(limit) {
            // A follower that has not heard from its leader for an
            // election timeout knows of none (etcd's follower becomes a
            // pre-candidate then and forgets its leader).
            return None;
        }
        Some(leader)
    }

    /// The current leader and its node record, if known.
    pub fn leader(&self) -> Option<(NodeId, MemberNode)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
            .unwrap_or_default();
        Some((id, node))
    }

    /// Proposes `command` here; only the leader accepts proposals.
    /// Commands proposed concurrently share log entries (and fsyncs).
    pub async fn write_local(&self, command: Command) -> WriteResult {
        let (reply, wait) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| NodeError::Unavailable("etcdserver: server stopped".into()))?;
        wait.await
            .map_err(|_| NodeError::Unavailable("etcdserver: server stopped".into()))?
    }

    /// Waits until this member has applied everything committed when the
    /// call began, as confirmed by the leader (ReadIndex): a read served
    /// afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.read_rounds
            .send(tx)
            .await
            .map_err(|_| NodeError::Unavailable("etcdserver: server stopped".into()))?;
        let index = rx
            .await
            .map_err(|_| NodeError::Unavailable("etcdserver: server stopped".into()))??;
        self.wait_applied(index).await
    }

    /// One read-index round: the leader confirms its leadership with a
    /// quorum and returns its commit index (asked of the leader when this
    /// member follows).
    async fn read_index_once(&self) -> Result<u64, NodeError> {
        let pass = self.quiet.read().await;
        let read = self.raft.get_read_log_id().await;
        drop(pass);
        match read {
            Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(_)) => self.remote_read_index().await,
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    async fn remote_read_index(&self) -> Result<u64, NodeError> {
        let Some((leader, node)) = self.leader() else {
            return Err(NodeError::NoLeader);
        };
        if leader == self.id {
            return Err(NodeError::NoLeader);
        }
        let mut client = self.peer_client(leader, &node)?;
        let mut req = tonic::Request::new(ReadIndexRequest {
            cluster_id: self.cluster_id,
        });
        req.set_timeout(Duration::from_secs(5));
        match client.read_index(req).await {
            Ok(r) => Ok(r.into_inner().read_index),
            Err(s) => Err(NodeError::Unavailable(s.message().to_string())),
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
