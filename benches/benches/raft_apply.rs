//! Criterion benchmarks of the Raft apply path: committed log entries
//! applied to the engine by `ballast_raft::StateMachine`, the engine call it
//! makes (`Store::apply_with_meta`) on its own, and the whole write path of
//! a one-member `RaftNode` (propose, log append and fsync, commit, apply).
//! See `../README.md`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{CommandResponse, Store, StoreOptions};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::PutRequest;
use ballast_raft::{Entry, LogId, MemberNode, NodeConfig, RaftNode, Request, StateMachine};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use tokio::runtime::Runtime;

/// Keys the state machine's store holds before measuring, and the key space
/// of every write.
const KEYS: u64 = 100_000;
/// Value size of every put (as `scripts/bench-compare.sh`).
const VALUE_LEN: usize = 256;
/// Commands per log entry while loading (not measured).
const LOAD_BATCH: usize = 1024;

fn put(i: u64) -> Command {
    Command {
        op: Some(Op::Put(PutRequest {
            key: format!("key/{:06}", i % KEYS).into_bytes(),
            value: vec![b'x'; VALUE_LEN],
            ..Default::default()
        })),
    }
}

/// Puts spread over the key space, each call the next one.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> Command {
        self.0 += 1;
        put(self.0.wrapping_mul(7919))
    }
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request { commands }),
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn check(out: &[ballast_raft::Response], entries: usize, commands: usize) {
    assert_eq!(out.len(), entries);
    for r in out {
        assert_eq!(r.results.len(), commands);
        assert!(r
            .results
            .iter()
            .all(|x| matches!(x, Ok(CommandResponse::Put(_)))));
    }
}

/// `StateMachine::apply` (openraft's `RaftStateMachine` trait) of committed
/// entries of puts into a synced store holding `KEYS` keys: one entry of 1,
/// 64 or 1024 commands, and 16 entries of 64 commands at once. Each call is
/// one synced engine write that also records the applied log ID. Building
/// the entries is not measured.
fn bench_state_machine(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("kv"), StoreOptions::default()).expect("open");
    let mut sm = StateMachine::new(store, dir.path().join("snap")).expect("state machine");
    let mut index = 0;
    let mut keys = Keys(0);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(LOAD_BATCH) {
        index += 1;
        let e = entry(index, chunk.iter().map(|i| put(*i)).collect());
        let out = rt.block_on(sm.apply([e])).expect("apply");
        check(&out, 1, chunk.len());
    }

    let mut g = c.benchmark_group("state_machine_apply");
    for (entries, per_entry) in [(1, 1), (1, 64), (1, 1024), (16, 64)] {
        let name = format!("{entries}_entries_of_{per_entry}_puts");
        g.throughput(Throughput::Elements((entries * per_entry) as u64));
        g.bench_function(&name, |b| {
            b.iter_batched(
                || {
                    (0..entries)
                        .map(|_| {
                            index += 1;
                            entry(index, (0..per_entry).map(|_| keys.next()).collect())
                        })
                        .collect::<Vec<_>>()
                },
                |batch| {
                    let out = rt.block_on(sm.apply(batch)).expect("apply");
                    check(&out, entries, per_entry);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// What the state machine asks of the engine, without openraft's types or
/// the hop to a blocking thread: `Store::apply_with_meta` of 1, 64 or 1024
/// puts plus one meta record (the applied log position), one synced write.
fn bench_store_apply_with_meta(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    let mut index = 0;
    let mut keys = Keys(0);
    let meta_value = [7u8; 24];
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(LOAD_BATCH) {
        let cmds: Vec<(u64, Command)> = chunk
            .iter()
            .map(|i| {
                index += 1;
                (index, put(*i))
            })
            .collect();
        for r in store
            .apply_with_meta(&cmds, &[(b"bench_applied", &meta_value)])
            .expect("apply")
        {
            r.expect("put");
        }
    }

    let mut g = c.benchmark_group("store_apply_with_meta");
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_puts"), |b| {
            b.iter_batched(
                || {
                    (0..n)
                        .map(|_| {
                            index += 1;
                            (index, keys.next())
                        })
                        .collect::<Vec<_>>()
                },
                |cmds| {
                    store
                        .apply_with_meta(&cmds, &[(b"bench_applied", &meta_value)])
                        .expect("apply")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The write path of a one-member `RaftNode`: `propose` of single puts by
/// 1 or 64 concurrent clients (tokio tasks, each one proposal at a time),
/// each answered once its entry is in the synced Raft log and applied to
/// the synced engine. Concurrent proposals share log entries (the node's
/// batching). Time per iteration is the time for one proposal per client.
fn bench_node_propose(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt.block_on(async {
        let mut cfg = NodeConfig::new(
            1,
            0xba11a57,
            dir.path().join("log"),
            dir.path().join("snap"),
        );
        // The server's default (etcd's --snapshot-count).
        cfg.snapshot_count = 100_000;
        let store = Store::open(dir.path().join("kv"), StoreOptions::default()).expect("open");
        let node = RaftNode::start(cfg, store).await.expect("start");
        let me = MemberNode {
            name: "m1".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
            client_urls: vec![],
        };
        node.bootstrap(BTreeMap::from([(1, me)]))
            .await
            .expect("bootstrap");
        let start = Instant::now();
        while node.metrics().current_leader != Some(1) {
            assert!(start.elapsed() < Duration::from_secs(30), "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node
    });
    let next = Arc::new(AtomicU64::new(0));

    let mut g = c.benchmark_group("node_propose");
    for clients in [1u64, 64] {
        g.throughput(Throughput::Elements(clients));
        g.bench_function(format!("{clients}_clients"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..clients)
                        .map(|_| {
                            let (node, next) = (node.clone(), next.clone());
                            tokio::spawn(async move {
                                for _ in 0..iters {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    let cmd = put(i.wrapping_mul(7919));
                                    let (r, _index) = node.propose(cmd).await.expect("propose");
                                    assert!(matches!(r, Ok(CommandResponse::Put(_))));
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("client task");
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    rt.block_on(node.shutdown());
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = raft_apply;
    config = config();
    targets = bench_state_machine, bench_store_apply_with_meta, bench_node_propose
}
criterion_main!(raft_apply);
