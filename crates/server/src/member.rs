//! Starting a member's Raft node: its identity in the cluster, the peer
//! listener, bootstrapping a new cluster or joining an existing one, and
//! announcing the member's name and client URLs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ballast_mvcc::Store;
use ballast_proto::ballastpb::raft_peer_server::RaftPeerServer;
use ballast_raft::{
    fetch_cluster_info, MemberNode, MembershipChange, NodeConfig, RaftNode, MAX_PEER_MESSAGE,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::bootstrap::plan_new_cluster;
use crate::config::{split_urls, MemberConfig};
use crate::identity::{DataDir, Identity};

/// A running Raft member: the node and the tasks serving it.
pub struct RaftMember {
    /// The Raft node.
    pub node: Arc<RaftNode>,
    peer_servers: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
    announcer: JoinHandle<()>,
}

/// Whether `--initial-cluster-state` says to create or to join a cluster.
fn joins_existing(cfg: &MemberConfig) -> anyhow::Result<bool> {
    match cfg.initial_cluster_state.as_str() {
        "new" => Ok(false),
        "existing" => Ok(true),
        other => bail!("--initial-cluster-state must be new or existing, not {other:?}"),
    }
}

/// The `--initial-cluster` in effect: the flag, or this member alone.
pub fn initial_cluster(cfg: &MemberConfig) -> String {
    match &cfg.initial_cluster {
        Some(ic) if !ic.trim().is_empty() => ic.clone(),
        _ => split_urls(&cfg.initial_advertise_peer_urls)
            .iter()
            .map(|u| format!("{}={u}", cfg.name))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Starts the member's Raft node on `store`, serving peers on
/// `peer_listeners`.
///
/// # Errors
/// A wrong `--initial-cluster` (this member missing, URLs that disagree),
/// an existing cluster that cannot be reached or does not list this member,
/// or an unusable data directory.
pub async fn start(
    cfg: &MemberConfig,
    data_dir: &DataDir,
    store: Store,
    peer_listeners: Vec<TcpListener>,
) -> anyhow::Result<RaftMember> {
    let mut advertised_peers = split_urls(&cfg.initial_advertise_peer_urls);
    advertised_peers.sort();
    let (identity, bootstrap) = match data_dir.load_identity().map_err(anyhow::Error::msg)? {
        Some(id) => {
            if id.name != cfg.name {
                bail!(
                    "the data directory belongs to member {:?}, not {:?}",
                    id.name,
                    cfg.name
                );
            }
            // A member of a new cluster whose first start stopped before
            // Raft was initialized bootstraps now (a no-op once initialized).
            let plan = if joins_existing(cfg)? {
                None
            } else {
                plan_new_cluster(
                    &cfg.name,
                    &advertised_peers,
                    &initial_cluster(cfg),
                    &cfg.initial_cluster_token,
                )
                .ok()
                .filter(|p| p.member_id == id.member_id && p.cluster_id == id.cluster_id)
            };
            (id, plan.map(|p| p.members))
        }
        None if joins_existing(cfg)? => {
            let others: Vec<String> =
                crate::bootstrap::parse_initial_cluster(&initial_cluster(cfg))
                    .map_err(anyhow::Error::msg)?
                    .into_iter()
                    .filter(|(n, _)| *n != cfg.name)
                    .flat_map(|(_, urls)| urls)
                    .collect();
            let (cluster_id, members) = fetch_cluster_info(&others)
                .await
                .map_err(anyhow::Error::msg)?;
            let Some((member_id, _, _)) = members.iter().find(|(_, node, _)| {
                let mut urls = node.peer_urls.clone();
                urls.sort();
                urls == advertised_peers
            }) else {
                bail!(
                    "the existing cluster has no member with peer URLs {}; add it first (etcdctl member add {} --peer-urls={})",
                    advertised_peers.join(","),
                    cfg.name,
                    advertised_peers.join(",")
                );
            };
            let id = Identity {
                name: cfg.name.clone(),
                member_id: *member_id,
                cluster_id,
            };
            (id, None)
        }
        None => {
            let plan = plan_new_cluster(
                &cfg.name,
                &advertised_peers,
                &initial_cluster(cfg),
                &cfg.initial_cluster_token,
            )
            .map_err(anyhow::Error::msg)?;
            let id = Identity {
                name: cfg.name.clone(),
                member_id: plan.member_id,
                cluster_id: plan.cluster_id,
            };
            (id, Some(plan.members))
        }
    };
    data_dir
        .save_identity(&identity)
        .map_err(anyhow::Error::msg)?;

    let mut node_cfg = NodeConfig::new(
        identity.member_id,
        identity.cluster_id,
        data_dir.raft_log(),
        data_dir.snapshots(),
    );
    node_cfg.heartbeat = Duration::from_millis(cfg.heartbeat_interval);
    node_cfg.election_timeout = Duration::from_millis(cfg.election_timeout);
    node_cfg.snapshot_count = cfg.snapshot_count;
    node_cfg.catchup_entries = cfg.snapshot_catchup_entries;
    let node = RaftNode::start(node_cfg, store)
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot start raft")?;

    let mut peer_servers = Vec::new();
    for listener in peer_listeners {
        let local = listener.local_addr()?;
        let svc = RaftPeerServer::new(node.peer_service())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(addr = %local, error = %e, "peer listener failed");
            }
        });
        tracing::info!(addr = %local, "serving peer traffic (insecure)");
        peer_servers.push((stop, task));
    }

    match bootstrap {
        Some(members) => node.bootstrap(members).await.map_err(anyhow::Error::msg)?,
        None if !joins_existing(cfg)?
            && !node
                .raft
                .is_initialized()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))? =>
        {
            // A stored identity that --initial-cluster does not describe,
            // and no Raft state to go on: this member would wait forever.
            node.shutdown().await;
            bail!(
                "the data directory belongs to member {:x} of cluster {:x}, which --initial-cluster ({}) \
                 with --initial-cluster-token {:?} does not describe, and it holds no Raft state",
                identity.member_id,
                identity.cluster_id,
                initial_cluster(cfg),
                cfg.initial_cluster_token
            );
        }
        None => {}
    }
    tracing::info!(
        member_id = %format!("{:x}", identity.member_id),
        cluster_id = %format!("{:x}", identity.cluster_id),
        "raft started"
    );
    let me = MemberNode {
        name: cfg.name.clone(),
        peer_urls: advertised_peers,
        client_urls: split_urls(&cfg.advertise_client_urls),
    };
    let announcer = tokio::spawn(announce(node.clone(), me));
    Ok(RaftMember {
        node,
        peer_servers,
        announcer,
    })
}

/// Records this member's name and client URLs in the membership once a
/// leader exists (as etcd publishes member attributes), retrying until done.
async fn announce(node: Arc<RaftNode>, me: MemberNode) {
    let mut delay = Duration::from_millis(100);
    loop {
        let current = node.members().into_iter().find(|m| m.id == node.id());
        match current {
            Some(m) if m.node == me => return,
            Some(_) if node.leader().is_some() => {
                let change = MembershipChange::SetNode {
                    id: node.id(),
                    node: me.clone(),
                };
                match node.change_members(change).await {
                    Ok(()) => {
                        tracing::info!(name = %me.name, "published member attributes");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member attributes; will retry")
                    }
                }
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl RaftMember {
    /// Stops Raft and the peer listeners.
    pub async fn stop(self) {
        self.announcer.abort();
        self.node.shutdown().await;
        for (stop, task) in self.peer_servers {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
