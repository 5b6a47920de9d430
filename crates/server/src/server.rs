//! Starting and stopping a member.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::kv_server::KvServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{listen_addrs, split_urls, MemberConfig, GRPC_OVERHEAD_BYTES};
use crate::identity::DataDir;
use crate::kv::{HeaderInfo, KvService, Limits};
use crate::proposer::Proposer;

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
    let proposer = Proposer::start(store.clone());
    let kv = Arc::new(KvService::new(store.clone(), proposer, header, limits));
    let max_decode = cfg.max_request_bytes as usize + GRPC_OVERHEAD_BYTES;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for listener in listeners {
        let local = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stop = stop_rx.clone();
        let router = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(u32::MAX))
            .add_service(
                KvServer::from_arc(kv.clone())
                    .max_decoding_message_size(max_decode)
                    .max_encoding_message_size(usize::MAX),
            );
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
    drop(store);
    Ok(())
}
