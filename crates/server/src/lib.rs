//! The Ballast member: etcd v3 gRPC services over the MVCC engine.
//!
//! [`run`] starts a member from a [`MemberConfig`] (etcd's flags): the KV,
//! Watch ([`watch`]), Lease ([`lease`]), Cluster and Maintenance gRPC services, and etcd's
//! `/health`, `/version` and `/metrics` on the same client URLs
//! ([`http`]). Reads are answered by the engine directly; writes go
//! through a [`Proposer`], which applies them in order and batches
//! concurrent ones into one synced write. Requests are
//! checked as etcd's gRPC layer checks them ([`validate`], the backend
//! [`quota`]) and errors carry etcd's codes and messages ([`EtcdError`]).
//! [`restore`] makes a data directory from a snapshot file.
#![deny(missing_docs)]

pub mod authority_rewrite;
pub mod bootstrap;
pub mod cluster_service;
pub mod config;
pub mod errors;
pub mod grpc_limits;
pub mod http;
pub mod identity;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod member;
pub mod metrics;
pub mod proposer;
pub mod quota;
pub mod restore;
mod server;
pub mod up;
pub mod validate;
pub mod watch;

pub use config::MemberConfig;
pub use errors::EtcdError;
pub use proposer::Proposer;
pub use server::run;

/// The etcd version Ballast reports to clients (`Status.version`,
/// `/version`); kube-apiserver enables features by it.
pub const ETCD_VERSION: &str = "3.5.17";
/// The etcd cluster version Ballast reports.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
