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

use crate::types::{MemberNode, NodeId, TypeConfig};

/// Largest peer message accepted (snapshot chunks and entry batches).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

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
        self.call("append", &rpc, &option).await
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
