//! Kubernetes-style API facade over the etcd v3 protocol.
//!
//! `ballast-apiserver` serves a slice of the Kubernetes REST API (core/v1,
//! apps/v1, batch/v1, coordination.k8s.io/v1) as HTTP/JSON, storing
//! objects in any etcd v3 store (Ballast or etcd) the way kube-apiserver
//! does: keys `/registry/<resource>/[<namespace>/]<name>`, optimistic
//! concurrency on `mod_revision`, resourceVersions that are etcd revisions,
//! paged lists at one revision, watches from a revision.
//!
//! Layout, by job:
//! * [`storage`] — the etcd v3 calls (Txn create/update/delete, ranges,
//!   watches, compaction);
//! * [`registry`] — one generic store plus per-kind strategies;
//! * [`body`], [`yaml`] — request bodies: size limit, JSON/YAML/protobuf
//!   decoding with kube's errors, the checks made before anything is stored;
//! * [`selectors`], [`paging`], [`patch`], [`validation`] — request semantics;
//! * [`watch`] — watch streams; [`table`] — server-side printing;
//! * [`discovery`] — `/version`, `/api`, `/apis`, `/openapi/v3`;
//! * [`server`] — routing and rendering; [`status`] — `metav1.Status` errors.
//!
//! Entry point: [`serve`] with an [`ApiServerConfig`].

#![warn(missing_docs)]

pub mod body;
pub mod discovery;
pub mod lifecycle;
pub mod object;
pub mod paging;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod selectors;
pub mod server;
pub mod status;
pub mod storage;
pub mod table;
pub mod validation;
pub mod watch;
pub mod watchcache;
pub mod yaml;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Command-line configuration of the facade (`ballast apiserver ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiServerConfig {
    /// etcd v3 endpoints of the store, comma-separated.
    #[arg(
        long = "etcd-servers",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_servers: Vec<String>,
    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Key prefix of all objects in the store.
    #[arg(long = "etcd-prefix", default_value = "/registry")]
    pub etcd_prefix: String,
    /// Seconds between compactions of the store (kube's protocol; 0 disables).
    #[arg(long = "etcd-compaction-interval", default_value_t = 300)]
    pub compaction_interval_secs: u64,
}

impl ApiServerConfig {
    /// A configuration for `etcd_servers`, listening on `listen`, with
    /// defaults for everything else.
    pub fn new(etcd_servers: Vec<String>, listen: SocketAddr) -> Self {
        ApiServerConfig {
            etcd_servers,
            listen,
            etcd_prefix: "/registry".into(),
            compaction_interval_secs: 300,
        }
    }
}

/// A facade bound to its socket, ready to [`ApiServer::run`].
pub struct ApiServer {
    listener: tokio::net::TcpListener,
    state: Arc<server::AppState>,
    config: ApiServerConfig,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

impl ApiServer {
    /// Connects to the store, creates the system namespaces and binds the
    /// listen address.
    pub async fn bind(config: ApiServerConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(!config.etcd_servers.is_empty(), "--etcd-servers is empty");
        anyhow::ensure!(
            config.etcd_prefix.starts_with('/'),
            "--etcd-prefix must start with '/'"
        );
        let storage = storage::Storage::connect(&config.etcd_servers)
            .await
            .with_context(|| format!("connecting to etcd at {:?}", config.etcd_servers))?;
        let registry = Arc::new(registry::generic::Registry::new(
            storage,
            &config.etcd_prefix,
            registry::all_kinds(),
        ));
        let mut attempt = 0;
        loop {
            match lifecycle::ensure_system_namespaces(&registry).await {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "store not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => anyhow::bail!("creating system namespaces: {e}"),
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let watch_cache = watchcache::WatchCaches::new(
            registry.storage().clone(),
            watch::BOOKMARK_EVERY,
            stop_rx.clone(),
        );
        let state = Arc::new(server::AppState {
            registry,
            watch_cache,
            shutdown: stop_rx,
        });
        Ok(ApiServer {
            listener,
            state,
            config,
            stop_tx,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; open watches are ended then.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ApiServer {
            listener,
            state,
            config,
            stop_tx,
        } = self;
        if config.compaction_interval_secs > 0 {
            let storage = state.registry.storage().clone();
            tokio::spawn(storage.run_compactor(
                Duration::from_secs(config.compaction_interval_secs),
                state.shutdown.clone(),
            ));
        }
        tracing::info!(addr = %listener.local_addr()?, etcd = ?config.etcd_servers, "ballast apiserver listening");
        let stop = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        axum::serve(listener, server::router(state))
            .with_graceful_shutdown(stop)
            .await?;
        Ok(())
    }
}

/// Binds and serves the facade until `shutdown` resolves.
pub async fn serve(
    config: ApiServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    ApiServer::bind(config).await?.run(shutdown).await
}
