//! Starting and stopping a member.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::cluster_server::ClusterServer;
use ballast_proto::etcdserverpb::kv_server::KvServer;
use ballast_proto::etcdserverpb::lease_server::LeaseServer;
use ballast_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use ballast_proto::etcdserverpb::watch_server::WatchServer;
use ballast_raft::RaftNode;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::authority_rewrite::AuthorityRewrite;
use crate::cluster_service::ClusterService;
use crate::config::{listen_addrs, split_urls, MemberConfig, GRPC_OVERHEAD_BYTES};
use crate::errors::EtcdError;
use crate::http::{with_http, HttpState};
use crate::identity::DataDir;
use crate::kv::{HeaderInfo, KvService, Limits};
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::member;
use crate::metrics::{MemberFacts, Metrics};
use crate::proposer::Proposer;
use crate::quota::Quota;
use crate::watch::WatchService;

/// Runs a member until `shutdown` completes, then stops serving and closes
/// the store.
///
/// # Errors
/// Bad flags, an unusable data directory, or a listen address in use: the
/// member does not start, and nothing on disk is changed.
pub async fn run(cfg: MemberConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let progress_interval =
        crate::watch::progress_notify_interval(&cfg.watch_progress_notify_interval)
            .map_err(|e| anyhow::anyhow!("--experimental-watch-progress-notify-interval: {e}"))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let urls = split_urls(&cfg.listen_client_urls);
    if urls.is_empty() {
        bail!("--listen-client-urls is empty");
    }
    for url in &urls {
        addrs.extend(listen_addrs(url).map_err(anyhow::Error::msg)?);
    }
    let mut listeners = Vec::new();
    for addr in &addrs {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for clients on {addr}"))?;
        listeners.push(l);
    }

    let mut peer_listeners = Vec::new();
    let peer_urls = split_urls(&cfg.listen_peer_urls);
    if peer_urls.is_empty() {
        bail!("--listen-peer-urls is empty");
    }
    for url in &peer_urls {
        for addr in listen_addrs(url).map_err(anyhow::Error::msg)? {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for peers on {addr}"))?;
            peer_listeners.push(l);
        }
    }

    let data_dir = DataDir::new(cfg.data_dir());
    data_dir.check().map_err(anyhow::Error::msg)?;
    // Held until the member stops: a second member on this directory is
    // refused before it opens (or touches) anything in it.
    Store::check_path(data_dir.kv()).with_context(|| {
        format!(
            "cannot open the data directory {}",
            cfg.data_dir().display()
        )
    })?;
    let _lock = data_dir.lock().map_err(anyhow::Error::msg)?;
    let kv_path = data_dir.kv();
    // Unsynced engine writes: the Raft log is synced before anything is
    // acknowledged, and openraft re-applies committed entries after a crash.
    let store = tokio::task::spawn_blocking(move || {
        Store::open(kv_path, StoreOptions { sync_writes: false })
    })
    .await?
    .with_context(|| {
        format!(
            "cannot open the data directory {}",
            cfg.data_dir().display()
        )
    })?;
    tracing::info!(
        name = %cfg.name,
        revision = store.current_revision(),
        compact_revision = store.compact_revision(),
        data_dir = %cfg.data_dir().display(),
        "opened the store"
    );
    let raft_member = member::start(&cfg, &data_dir, store.clone(), peer_listeners).await?;
    let node = raft_member.node.clone();
    let header = HeaderInfo::new(node.clone());
    let limits = Limits {
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
    };
    let snapshot_dir = data_dir.snapshot_tmp();
    // Leftovers of snapshots that were being sent when the member stopped.
    match std::fs::remove_dir_all(&snapshot_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot clear {}", snapshot_dir.display()));
        }
        _ => {}
    }
    let quota_bytes = cfg.quota_bytes();
    match quota_bytes {
        Some(q) => tracing::info!(quota_backend_bytes = q, "backend quota"),
        None => tracing::info!("backend quota disabled"),
    }
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(count_leader_changes(node.clone(), metrics.clone()));
    // etcd's request timeout: 5 s plus two election timeouts.
    let timeout = Duration::from_millis(5000 + 2 * cfg.election_timeout);
    let proposer = Proposer::new(node.clone(), metrics.clone(), timeout);
    let quota = Arc::new(Quota::new(store.clone(), quota_bytes));
    let kv = Arc::new(
        KvService::new(store.clone(), proposer.clone(), header.clone(), limits).with_quota(quota),
    );
    let lease = Arc::new(LeaseService::new(
        store.clone(),
        proposer.clone(),
        header.clone(),
        crate::lease::min_lease_ttl(cfg.election_timeout),
    ));
    let maintenance = Arc::new(MaintenanceService::new(
        store.clone(),
        proposer.clone(),
        header,
        snapshot_dir,
    ));
    let cluster = Arc::new(ClusterService::new(node.clone()));
    let http_state = Arc::new(HttpState {
        store: store.clone(),
        proposer: proposer.clone(),
        metrics,
        facts: MemberFacts {
            member_id: node.id(),
            node: node.clone(),
            quota_bytes,
        },
    });
    let max_decode = cfg.max_request_bytes as usize + GRPC_OVERHEAD_BYTES;

    let (stop_tx, stop_rx) = watch::channel(false);
    let expiry = tokio::spawn(crate::lease::run_expiry(proposer.clone(), stop_rx.clone()));
    let watch_service = Arc::new(WatchService::new(
        store.watch_hub(),
        node.clone(),
        progress_interval,
        max_decode,
        Duration::from_millis(cfg.election_timeout),
        stop_rx.clone(),
    ));
    let mut servers = Vec::new();
    for listener in listeners {
        let local = listener.local_addr()?;
        // etcd 3.4 clients may send `:authority` as a URL (see
        // `authority_rewrite.rs`).
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|conn| conn.map(AuthorityRewrite::new));
        let mut stop = stop_rx.clone();
        let grpc = Routes::new(InterceptedService::new(
            KvServer::from_arc(kv.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
            require_leader(node.clone()),
        ))
        .add_service(InterceptedService::new(
            MaintenanceServer::from_arc(maintenance.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
            require_leader(node.clone()),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::from_arc(cluster.clone()),
            require_leader(node.clone()),
        ))
        .add_service(InterceptedService::new(
            LeaseServer::from_arc(lease.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
            require_leader(node.clone()),
        ))
        .add_service(InterceptedService::new(
            WatchServer::from_arc(watch_service.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
            require_leader(node.clone()),
        ));
        // gRPC (HTTP/2) and etcd's HTTP/1 endpoints on the same listener.
        let router = Server::builder()
            // grpc-go's code and message for requests over the size limit.
            .layer(crate::grpc_limits::GrpcLimitsLayer)
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(u32::MAX))
            .add_routes(with_http(grpc, http_state.clone()));
        servers.push(tokio::spawn(async move {
            let res = router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(addr = %local, error = %e, "client listener failed");
            }
        }));
        tracing::info!(addr = %local, "serving client traffic (insecure)");
    }
    tracing::info!(
        advertise_client_urls = %cfg.advertise_client_urls,
        "ready to serve client requests"
    );

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for s in servers {
        // Streams that do not end in time are cut off.
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    let _ = expiry.await;
    drop(kv);
    drop(lease);
    drop(proposer);
    drop(maintenance);
    drop(cluster);
    drop(watch_service);
    drop(http_state);
    raft_member.stop().await;
    drop(node);
    drop(store);
    Ok(())
}

/// etcd's `hasleader` metadata: a request carrying `hasleader: true` fails
/// with `no leader` when this member knows of none.
fn require_leader(
    node: Arc<RaftNode>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        let wants = req
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if wants && node.leader_id().is_none() {
            return Err(EtcdError::NoLeader.into());
        }
        Ok(req)
    }
}

/// Counts the leader changes this member sees, for `/metrics`.
async fn count_leader_changes(node: Arc<RaftNode>, metrics: Arc<Metrics>) {
    let mut rx = node.raft.metrics();
    let mut last = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now.is_some() && now != last {
            metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        last = now;
    }
}
