//! Raft replication for Ballast, on openraft 0.9.
//!
//! A member's writes become entries of a Raft log ([`LogStore`], its own
//! RocksDB database, synced before an append is acknowledged); committed
//! entries are applied in log order to the MVCC engine ([`StateMachine`]),
//! which records the applied log position in the same atomic write as the
//! data. Lagging or new members catch up from snapshot files: whole-engine
//! images streamed in chunks over the peer transport ([`PeerNetwork`],
//! [`PeerService`]: gRPC on the peer URLs). [`RaftNode`] ties them together
//! and offers what the server needs: proposing a command, a ReadIndex
//! barrier for linearizable reads, leader and term.
//!
//! Design choices and the reasons for them are in `docs/architecture.md`.
#![deny(missing_docs)]
// openraft's `StorageError` is large and is what its traits return.
#![allow(clippy::result_large_err)]

mod election;
mod faults;
mod lease;
mod log_store;
mod membership;
mod network;
mod node;
mod peer_service;
mod state_machine;
mod transfer;
mod types;

pub use faults::{check_faults_env, faults, Faults, FAULTS_ENV};
pub use log_store::LogStore;
pub use membership::{MemberInfo, MembershipChange};
pub use network::{PeerNetwork, MAX_PEER_MESSAGE};
pub use node::{NodeConfig, NodeError, RaftNode, WriteResult};
pub use peer_service::{fetch_cluster_info, PeerService};
pub use state_machine::{StateMachine, META_APPLIED_LOG, META_MEMBERSHIP};
pub use types::{Entry, LogId, MemberNode, NodeId, Raft, Request, Response, TypeConfig};
