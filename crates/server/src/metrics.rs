//! The member's Prometheus metrics, under etcd 3.5's names, rendered in the
//! Prometheus text format for `/metrics`.
//!
//! Counters and histograms are plain atomics updated on the request and
//! write paths; gauges that describe the store (sizes, revisions, indexes)
//! are read from it when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use ballast_mvcc::Store;
use parking_lot::Mutex;

/// etcd's buckets for disk latencies: `prometheus.ExponentialBuckets(0.001, 2, 14)`.
const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Labels of one gRPC method: type (`unary`, `server_stream`, ...),
/// service (`etcdserverpb.KV`) and method (`Range`).
type Method = (&'static str, String, String);

/// Everything the member counts.
#[derive(Debug)]
pub struct Metrics {
    /// Proposals waiting for their command to be applied.
    pub proposals_pending: AtomicI64,
    /// Proposals that failed (the write pipeline stopped or a disk write
    /// failed), not commands the engine refused.
    pub proposals_failed: AtomicU64,
    /// Durations of the synced write of each apply batch (Ballast has no
    /// separate WAL: the engine's synced batch is the log write).
    pub wal_fsync: Histogram,
    /// Durations of applying and committing each batch to the engine.
    pub backend_commit: Histogram,
    /// Leader changes this member has seen.
    pub leader_changes: AtomicU64,
    /// `/health` answers that said true.
    pub health_success: AtomicU64,
    /// `/health` answers that said false.
    pub health_failures: AtomicU64,
    grpc_started: Mutex<BTreeMap<Method, u64>>,
    grpc_handled: Mutex<BTreeMap<(Method, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            proposals_pending: AtomicI64::new(0),
            proposals_failed: AtomicU64::new(0),
            wal_fsync: Histogram::new(&DISK_BUCKETS),
            backend_commit: Histogram::new(&DISK_BUCKETS),
            leader_changes: AtomicU64::new(0),
            health_success: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
            grpc_started: Mutex::new(BTreeMap::new()),
            grpc_handled: Mutex::new(BTreeMap::new()),
        }
    }
}

/// What `/metrics` reports besides the counters: who the member is and
/// how its store stands.
#[derive(Clone)]
pub struct MemberFacts {
    /// This member's ID.
    pub member_id: u64,
    /// The Raft node: leader, indexes.
    pub node: std::sync::Arc<ballast_raft::RaftNode>,
    /// The backend quota in bytes (`None`: no quota).
    pub quota_bytes: Option<u64>,
}

/// The `grpc_type` label of a method, as go-grpc-prometheus names it.
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        _ => "unary",
    }
}

/// Go's name of a gRPC status code (the `grpc_code` label).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Counts the start of a gRPC call of `path` (`/service/method`).
    pub fn grpc_started(&self, service: &str, method: &str) {
        let key = (
            grpc_type(service, method),
            service.to_string(),
            method.to_string(),
        );
        *self.grpc_started.lock().entry(key).or_default() += 1;
    }

    /// Counts the end of a gRPC call with its status code.
    pub fn grpc_handled(&self, service: &str, method: &str, code: tonic::Code) {
        let key = (
            grpc_type(service, method),
            service.to_string(),
            method.to_string(),
        );
        *self
            .grpc_handled
            .lock()
            .entry((key, code_name(code)))
            .or_default() += 1;
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self, store: &Store, facts: &MemberFacts) -> String {
        let mut out = String::with_capacity(8192);
        let raft = facts.node.metrics();
        let applied = raft.last_applied.map(|l| l.index).unwrap_or(0);
        let committed = raft.last_log_index.unwrap_or(0).max(applied);
        single(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            u64::from(raft.current_leader.is_some()),
        );
        single(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            "gauge",
            u64::from(raft.current_leader == Some(facts.member_id)),
        );
        single(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            self.leader_changes.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            committed,
        );
        single(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            applied,
        );
        single(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            self.proposals_pending.load(Ordering::Relaxed).max(0),
        );
        single(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            self.proposals_failed.load(Ordering::Relaxed),
        );
        let quota = facts.quota_bytes.map_or(-1.0, |q| q as f64);
        single(
            &mut out,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            "gauge",
            quota,
        );
        header(
            &mut out,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "etcd_server_version{{server_version=\"{}\"}} 1",
            crate::ETCD_VERSION
        );
        header(
            &mut out,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "gauge",
        );
        let cluster_minor = crate::ETCD_CLUSTER_VERSION
            .rsplit_once('.')
            .map_or(crate::ETCD_CLUSTER_VERSION, |(major_minor, _)| major_minor);
        let _ = writeln!(
            out,
            "etcd_cluster_version{{cluster_version=\"{cluster_minor}\"}} 1"
        );
        header(
            &mut out,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "etcd_server_id{{server_id=\"{:x}\"}} 1",
            facts.member_id
        );
        single(
            &mut out,
            "etcd_server_health_success",
            "The total number of successful health checks",
            "counter",
            self.health_success.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "etcd_server_health_failures",
            "The total number of failed health checks",
            "counter",
            self.health_failures.load(Ordering::Relaxed),
        );
        self.wal_fsync.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        self.backend_commit.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        let size = store.db_size();
        let in_use = store.db_size_in_use();
        single(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            size,
        );
        single(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            in_use,
        );
        single(
            &mut out,
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            size,
        );
        single(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "gauge",
            store.current_revision(),
        );
        single(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            "gauge",
            store.compact_revision(),
        );
        header(
            &mut out,
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            "counter",
        );
        for ((ty, service, method), n) in self.grpc_started.lock().iter() {
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{ty}\"}} {n}",
                escape(method),
                escape(service)
            );
        }
        header(
            &mut out,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for (((ty, service, method), code), n) in self.grpc_handled.lock().iter() {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{ty}\"}} {n}",
                escape(method),
                escape(service)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&DISK_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("# TYPE x histogram\n"), "{out}");
    }
}
