//! Ballast's multi-version key-value engine, with etcd v3 semantics, on
//! RocksDB.
//!
//! The engine applies an ordered stream of deterministic commands
//! ([`Store::apply`]: put, delete-range, txn, compaction, alarm, each
//! tagged with its log index) and answers reads at any retained revision
//! ([`Store::range`]). It knows nothing of gRPC or Raft: a single member
//! feeds it commands in arrival order, a replicated member in log order,
//! and both get the same revisions and data.
//!
//! # Principal types
//! - [`Store`]: the engine; open it with [`Store::open`].
//! - [`Revision`]: a `(main, sub)` point in history.
//! - [`KeyIndex`] and [`TreeIndex`]: the in-memory index from keys to
//!   their revision history (values stay on disk).
//! - [`CommandResponse`] and [`Error`]: what applying a command gives.
//! - [`KvHash`] ([`Store::hash_kv`]) and [`Crc32c`]: etcd's consistency
//!   hash of the key history.
//! - [`WatchHub`] ([`Store::watch_hub`]) and [`WatchStream`]: watchers of
//!   key ranges, fed the events of committed writes (module [`watch`]).
//!
//! # Design
//! Every change is stored under its revision, so history is append-only and
//! a read at revision `r` needs only the index to know which revisions it
//! sees. One write transaction is one main revision. Each batch of commands
//! is one synced RocksDB write that also records the applied log index and
//! the store revision, so a restart neither loses nor re-applies a command.
//! Compaction drops history from the index at once and removes the old
//! versions from disk in the background. See `docs/architecture.md`.
//!
//! # Example
//! ```
//! use ballast_mvcc::{CommandResponse, Store, StoreOptions};
//! use ballast_proto::ballastpb::{command::Op, Command};
//! use ballast_proto::etcdserverpb::{PutRequest, RangeRequest};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
//! let put = Command {
//!     op: Some(Op::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })),
//! };
//! let out = store.apply(&[(1, put)]).unwrap();
//! assert!(matches!(out[0], Ok(CommandResponse::Put(_))));
//! let got = store.range(&RangeRequest { key: b"k".to_vec(), ..Default::default() }).unwrap();
//! assert_eq!(got.kvs[0].value, b"v");
//! // A new store is at revision 1 (as etcd's), so the first write is 2.
//! assert_eq!(got.kvs[0].mod_revision, 2);
//! ```
#![deny(missing_docs)]

mod alarm;
mod apply;
mod compactor;
mod error;
mod hash;
mod index;
mod key_index;
mod lease;
mod maintenance;
mod range;
mod revision;
pub mod schema;
mod snapshot;
mod store;
mod txn;
pub mod watch;

pub use apply::CommandResponse;
pub use error::{Error, Result};
pub use hash::{Crc32c, KvHash};
pub use index::{KeyRange, TreeIndex};
pub use key_index::{KeyAt, KeyIndex};
pub use lease::LeaseInfo;
pub use revision::Revision;
pub use store::{Store, StoreOptions};
pub use watch::{
    MessageKind, WatchError, WatchHub, WatchLimits, WatchMessage, WatchOptions, WatchStream,
};
