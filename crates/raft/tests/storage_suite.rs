//! openraft's storage conformance suite, run against Ballast's log store and
//! state machine (each case on fresh RocksDB directories).

#![allow(clippy::result_large_err)] // openraft's StorageError is what the suite returns.

use ballast_mvcc::{Store, StoreOptions};
use ballast_raft::{LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft")).expect("log store");
        let store =
            Store::open(dir.path().join("kv"), StoreOptions { sync_writes: false }).expect("store");
        let sm = StateMachine::new(store, dir.path().join("snap")).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::task::spawn_blocking(|| Suite::test_all(Builder))
            .await
            .unwrap()
            .unwrap();
    });
}
