//! The peer transport: openraft messages over gRPC (tonic) between members.

use std::time::Duration;

use ballast_proto::ballastpb::raft_peer_client::RaftPeerClient;
use ballast_proto::ballastpb::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::types::{Entry, MemberNode, NodeId, TypeConfig};

/// Largest peer message accepted (snapshot chunks and entry batches).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Largest sum of entry sizes sent in one AppendEntries message; more
/// entries go in further messages (an entry larger than this goes alone).
pub const APPEND_PIECE_BYTES: u64 = 8 << 20;

/// Splits `entries` into runs of at most `limit` encoded bytes (an entry
/// larger than `limit` makes a run of its own).
fn split_entries(entries: Vec<Entry>, limit: u64) -> Vec<Vec<Entry>> {
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    let mut size = 0u64;
    for e in entries {
        let n = bincode::serialized_size(&e).unwrap_or(limit);
        if !current.is_empty() && size + n > limit {
            pieces.push(std::mem::take(&mut current));
            size = 0;
        }
        size += n;
        current.push(e);
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Creates connections to peers.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: u64,
}

impl PeerNetwork {
    /// Connections that name cluster `cluster_id` in every message.
    pub fn new(cluster_id: u64) -> Self {
        PeerNetwork { cluster_id }
    }
}

/// A connection to one peer (connects lazily, reconnects on failure).
pub struct PeerClient {
    target: NodeId,
    cluster_id: u64,
    client: Option<RaftPeerClient<Channel>>,
    url: Option<String>,
}

/// Opens a lazy gRPC channel to the first usable URL.
pub fn connect_lazy(urls: &[String]) -> Option<(String, Channel)> {
    for url in urls {
        if let Ok(ep) = Endpoint::from_shared(url.clone()) {
            let ep = ep
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            return Some((url.clone(), ep.connect_lazy()));
        }
    }
    None
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        let (url, client) = match connect_lazy(&node.peer_urls) {
            Some((u, ch)) => (
                Some(u),
                Some(
                    RaftPeerClient::new(ch)
                        .max_decoding_message_size(MAX_PEER_MESSAGE)
                        .max_encoding_message_size(MAX_PEER_MESSAGE),
                ),
            ),
            None => (None, None),
        };
        PeerClient {
            target,
            cluster_id: self.cluster_id,
            client,
            url,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, NetworkError> {
    bincode::serialize(v).map_err(|e| NetworkError::new(&e))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, NetworkError> {
    bincode::deserialize(b).map_err(|e| NetworkError::new(&e))
}

impl PeerClient {
    /// Sends one message; transport failures are `Unreachable` (openraft
    /// backs off), undecodable answers are `Network` errors.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("member {:x} has no usable peer URL", self.target)),
            )));
        };
        let msg = RaftMessage {
            cluster_id: self.cluster_id,
            payload: encode(req).map_err(RPCError::Network)?,
        };
        let mut request = Request::new(msg);
        request.set_timeout(option.hard_ttl());
        let res = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match res {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(target_member = %format!("{:x}", self.target), url = ?self.url, %status, kind, "peer RPC failed");
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(status.message().to_string()),
                )));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(RPCError::Network)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        // Entries can be large (values up to --max-request-bytes, many
        // commands per entry): send at most `APPEND_PIECE_BYTES` per message,
        // each piece a valid AppendEntries continuing the previous one.
        let pieces = split_entries(rpc.entries, APPEND_PIECE_BYTES);
        if pieces.len() <= 1 {
            let entries = pieces.into_iter().next().unwrap_or_default();
            let rpc = AppendEntriesRequest { entries, ..rpc };
            return self.call("append", &rpc, &option).await;
        }
        let mut prev_log_id = rpc.prev_log_id;
        let mut accepted = None;
        for entries in pieces {
            let last = entries.last().map(|e| e.log_id);
            let piece = AppendEntriesRequest::<TypeConfig> {
                vote: rpc.vote,
                prev_log_id,
                leader_commit: rpc.leader_commit,
                entries,
            };
            match self.call("append", &piece, &option).await {
                Ok(AppendEntriesResponse::Success) => {
                    prev_log_id = last;
                    accepted = last;
                }
                Ok(AppendEntriesResponse::HigherVote(v)) => {
                    return Ok(AppendEntriesResponse::HigherVote(v));
                }
                // A later piece failed: report what the earlier ones placed.
                _ if accepted.is_some() => {
                    return Ok(AppendEntriesResponse::PartialSuccess(accepted));
                }
                other => return other,
            }
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_proto::ballastpb::Command;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, bytes: usize) -> Entry {
        let command = Command {
            op: Some(ballast_proto::ballastpb::command::Op::Put(
                ballast_proto::etcdserverpb::PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7; bytes],
                    ..Default::default()
                },
            )),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::Request {
                commands: vec![command],
            }),
        }
    }

    #[test]
    fn entries_are_split_by_size_in_order() {
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1000)).collect();
        let pieces = split_entries(entries, 3500);
        let indexes: Vec<Vec<u64>> = pieces
            .iter()
            .map(|p| p.iter().map(|e| e.log_id.index).collect())
            .collect();
        assert_eq!(
            indexes,
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]
        );

        // An entry over the limit goes alone; nothing is lost or reordered.
        let entries = vec![entry(1, 10), entry(2, 10_000), entry(3, 10)];
        let pieces = split_entries(entries, 3500);
        assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(split_entries(Vec::new(), 10).len(), 1);
    }
}
