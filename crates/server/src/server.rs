//! Starting and stopping a member.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::kv_server::KvServer;
use ballast_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{listen_addrs, split_urls, MemberConfig, GRPC_OVERHEAD_BYTES};
use crate::http::{with_http, HttpState};
use crate::identity::DataDir;
use crate::kv::{HeaderInfo, KvService, Limits};
use crate::maintenance::MaintenanceService;
use crate::metrics::{MemberFacts, Metrics};
use crate::proposer::Proposer;
use crate::quota::Quota;

/// Runs a member until `shutdown` completes, then stops serving and closes
/// the store.
///
/// # Errors
/// Bad flags, an unusable data directory, or a listen address in use: the
/// member does not start, and nothing on disk is changed.
pub async fn run(cfg: MemberConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
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

    let data_dir = DataDir::new(cfg.data_dir());
    data_dir.check().map_err(anyhow::Error::msg)?;
    let kv_path = data_dir.kv();
    let store = tokio::task::spawn_blocking(move || Store::open(kv_path, StoreOptions::default()))
        .await?
        .with_context(|| {
            format!(
                "cannot open the data directory {}",
                cfg.data_dir().display()
            )
        })?;
    let peer_urls = split_urls(&cfg.initial_advertise_peer_urls);
    let identity = data_dir
        .load_or_create_identity(&cfg.name, &peer_urls, &cfg.initial_cluster_token)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        name = %identity.name,
        member_id = %format!("{:x}", identity.member_id),
        cluster_id = %format!("{:x}", identity.cluster_id),
        revision = store.current_revision(),
        compact_revision = store.compact_revision(),
        data_dir = %cfg.data_dir().display(),
        "opened the store"
    );

    let header = HeaderInfo {
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
        raft_term: 1,
    };
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
    let proposer = Proposer::start_with_metrics(store.clone(), metrics.clone());
    let apply_stopped = proposer.stopped();
    let quota = Arc::new(Quota::new(store.clone(), quota_bytes));
    let kv =
        Arc::new(KvService::new(store.clone(), proposer.clone(), header, limits).with_quota(quota));
    let maintenance = Arc::new(MaintenanceService::new(
        store.clone(),
        proposer,
        header,
        snapshot_dir,
    ));
    let http_state = Arc::new(HttpState {
        store: store.clone(),
        metrics,
        facts: MemberFacts {
            member_id: identity.member_id,
            quota_bytes,
        },
    });
    let max_decode = cfg.max_request_bytes as usize + GRPC_OVERHEAD_BYTES;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for listener in listeners {
        let local = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stop = stop_rx.clone();
        let grpc = Routes::new(
            KvServer::from_arc(kv.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            MaintenanceServer::from_arc(maintenance.clone())
                .max_decoding_message_size(max_decode)
                .max_encoding_message_size(usize::MAX),
        );
        // gRPC (HTTP/2) and etcd's HTTP/1 endpoints on the same listener.
        let router = Server::builder()
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
    drop(kv);
    drop(maintenance);
    drop(http_state);
    drop(store);
    // The apply thread holds the last store handle; once it is gone the
    // database is closed and the directory can be opened again.
    if tokio::time::timeout(Duration::from_secs(10), apply_stopped)
        .await
        .is_err()
    {
        tracing::warn!("the apply thread did not stop in time");
    }
    Ok(())
}
