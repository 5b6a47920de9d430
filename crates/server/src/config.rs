//! Command-line configuration, in etcd's style: the same flag names,
//! defaults and `ETCD_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Default for `--max-request-bytes`: 1.5 MiB, as etcd.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 1536 * 1024;
/// Default for `--max-txn-ops`, as etcd.
pub const DEFAULT_MAX_TXN_OPS: u32 = 128;
/// etcd's default backend quota (`--quota-backend-bytes` 0): 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// What gRPC accepts beyond `--max-request-bytes` (etcd's allowance for
/// message framing), so that a request just over the limit gets etcd's
/// `request is too large` rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The flags of one member.
#[derive(Args, Clone, Debug)]
pub struct MemberConfig {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: `<name>.etcd`).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// Comma-separated client URLs of this member to advertise to the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: u32,

    /// Raise an alarm when the backend size exceeds this many bytes (0: the
    /// default, 2 GiB; negative: no quota), as etcd.
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// Log level: debug, info, warn, error (a tracing filter such as
    /// `ballast=debug` is accepted too; `RUST_LOG` overrides it).
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Initial cluster token; with the member's peer URLs it determines the
    /// member and cluster IDs, as in etcd.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// This member's peer URLs to advertise (used for its ID).
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping:
    /// `name=http://host:port,...` (default: this member alone).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to create a cluster with the members of `--initial-cluster`,
    /// `existing` to join a running one (after `etcdctl member add`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed entries between two snapshots.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Entries kept behind a snapshot for slow followers to catch up from.
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub snapshot_catchup_entries: u64,

    /// Interval of the progress notifications of watchers created with
    /// `progress_notify`, as a Go duration (`10m`, `5s`, `100ms`; at least
    /// 100ms).
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub watch_progress_notify_interval: String,
}

impl MemberConfig {
    /// The data directory, defaulting to `<name>.etcd` as etcd does.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// The backend quota in bytes, as etcd reads `--quota-backend-bytes`:
    /// 0 is the default (2 GiB), a negative value disables the quota.
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            q => Some(q as u64),
        }
    }
}

/// Splits a comma-separated URL list, dropping empty items.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolves an `http://host:port` URL to socket addresses to listen on.
///
/// # Errors
/// A message naming the URL if it is not plain `http` (TLS is not supported
/// yet), has no port, or does not resolve.
pub fn listen_addrs(url: &str) -> Result<Vec<SocketAddr>, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") || url.starts_with("unixs://") {
        return Err(format!(
            "{url}: TLS listeners are not supported yet; use http://"
        ));
    } else {
        return Err(format!(
            "{url}: expected a URL of the form http://host:port"
        ));
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("{url}: a listen URL must not have a path"));
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{url}: resolves to no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_urls() {
        assert_eq!(
            listen_addrs("http://127.0.0.1:2379").unwrap(),
            vec!["127.0.0.1:2379".parse().unwrap()]
        );
        assert!(listen_addrs("https://127.0.0.1:2379")
            .unwrap_err()
            .contains("TLS"));
        assert!(listen_addrs("127.0.0.1:2379").is_err());
        assert!(listen_addrs("http://127.0.0.1").is_err());
        assert_eq!(
            split_urls("http://a:1, http://b:2,"),
            vec!["http://a:1", "http://b:2"]
        );
    }
}
