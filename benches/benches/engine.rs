//! Criterion benchmarks of the MVCC engine (`ballast-mvcc`) on its own, with
//! no gRPC or replication: puts, ranges, and compaction. See `../README.md`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use ballast_mvcc::{CommandResponse, Store, StoreOptions};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};

/// Keys in the stores the put and range benchmarks use.
const KEYS: u64 = 100_000;
/// Value size of every put.
const VALUE_LEN: usize = 100;
/// Commands per `apply` while loading data (not measured).
const LOAD_BATCH: u64 = 10_000;

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:06}").into_bytes()
}

fn put(key: Vec<u8>) -> Command {
    Command {
        op: Some(Op::Put(PutRequest {
            key,
            value: vec![b'x'; VALUE_LEN],
            ..Default::default()
        })),
    }
}

fn open(dir: &Path, sync_writes: bool) -> Store {
    Store::open(dir, StoreOptions { sync_writes }).expect("open")
}

/// Applies `cmds` (not measured), `LOAD_BATCH` per call, from log index
/// `*next_index` on, and checks that every one succeeded.
fn load(store: &Store, next_index: &mut u64, cmds: impl Iterator<Item = Command>) {
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<(u64, Command)>| {
        for r in store.apply(batch).expect("apply") {
            r.expect("command");
        }
        batch.clear();
    };
    for cmd in cmds {
        batch.push((*next_index, cmd));
        *next_index += 1;
        if batch.len() as u64 == LOAD_BATCH {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}

/// Single puts and batches of 100 puts per `apply`, each `apply` a synced
/// write, into a store holding `KEYS` keys. Every put overwrites one of the
/// keys, spread over the key space.
fn bench_put(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), true);
    let mut next_index = 1;
    load(&store, &mut next_index, (0..KEYS).map(|i| put(key(i))));
    let mut n: u64 = 0;
    let mut next_key = move || {
        n += 1;
        key(n.wrapping_mul(7919) % KEYS)
    };

    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_put_per_apply", |b| {
        b.iter_batched(
            || {
                next_index += 1;
                vec![(next_index - 1, put(next_key()))]
            },
            |e| store.apply(&e).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_of_100_puts_per_apply", |b| {
        b.iter_batched(
            || {
                (0..100)
                    .map(|_| {
                        next_index += 1;
                        (next_index - 1, put(next_key()))
                    })
                    .collect::<Vec<_>>()
            },
            |e| store.apply(&e).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Reads over `KEYS` keys: one key, a 100-key prefix, and both at an old
/// revision, after every key of the prefix was overwritten 10 times.
fn bench_range(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), false);
    let mut next_index = 1;
    load(&store, &mut next_index, (0..KEYS).map(|i| put(key(i))));
    let old = store.current_revision();
    // The prefix "key/0123" holds key/012300 ..= key/012399.
    let prefix_keys = (0..10).flat_map(|_| (12_300..12_400).map(|i| put(key(i))));
    load(&store, &mut next_index, prefix_keys);

    let one = RangeRequest {
        key: key(12_345),
        ..Default::default()
    };
    let prefix = RangeRequest {
        key: b"key/0123".to_vec(),
        range_end: b"key/0124".to_vec(),
        ..Default::default()
    };
    let at_old = |r: &RangeRequest| RangeRequest {
        revision: old,
        ..r.clone()
    };
    let cases = [
        ("one_key", one.clone(), 1),
        ("prefix_100_keys", prefix.clone(), 100),
        ("one_key_old_revision", at_old(&one), 1),
        ("prefix_100_keys_old_revision", at_old(&prefix), 100),
    ];
    let mut g = c.benchmark_group("range");
    for (name, req, n) in cases {
        let got = store.range(&req).expect("range");
        assert_eq!(got.kvs.len(), n, "{name}");
        if req.revision == old {
            assert!(got
                .kvs
                .iter()
                .all(|kv| kv.mod_revision <= old && kv.version == 1));
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name, |b| b.iter(|| store.range(&req).expect("range")));
    }
    g.finish();
}

/// Copies a closed store: SST files are never changed in place, so they are
/// hard-linked (copied if that fails); everything else is copied.
fn copy_store(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().expect("file type").is_dir() {
            copy_store(&src, &dst);
        } else if src.extension().is_some_and(|e| e == "sst") {
            if fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst).expect("copy");
            }
        } else {
            fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// A compaction at the newest revision of a store holding 1,000,000
/// revisions (100,000 keys written 10 times): `apply(Compaction)` plus
/// `wait_compacted`, i.e. until the 900,000 old versions are deleted.
/// Each iteration works on a fresh copy of one prepared store; the copy and
/// the opening (which rebuilds the index) are not measured.
fn bench_compaction(c: &mut Criterion) {
    let template = tempfile::tempdir().expect("tempdir");
    let setup = Instant::now();
    let rev = {
        let store = open(template.path(), false);
        let puts = (0..10).flat_map(|_| (0..KEYS).map(|i| put(key(i))));
        load(&store, &mut 1, puts);
        store.current_revision()
    };
    // A new store is at revision 1: the millionth write is revision 1,000,001.
    assert_eq!(rev, 1_000_001);
    // Reopening once replays the write-ahead log into table files, so that
    // the copies do not each replay it.
    drop(open(template.path(), true));
    eprintln!("compaction: prepared 1M revisions in {:?}", setup.elapsed());

    let mut g = c.benchmark_group("compaction");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(rev as u64 - 1));
    g.bench_function("1M_revisions_100k_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let copy = tempfile::tempdir().expect("tempdir");
                copy_store(template.path(), copy.path());
                let store = open(copy.path(), true);
                let index = store.applied_index() + 1;
                let compact = Command {
                    op: Some(Op::Compaction(CompactionRequest {
                        revision: rev,
                        physical: true,
                    })),
                };
                let start = Instant::now();
                let out = store.apply(&[(index, compact)]).expect("apply");
                assert!(matches!(out[0], Ok(CommandResponse::Compaction(_))));
                store.wait_compacted(rev);
                total += start.elapsed();
                drop(store);
            }
            total
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = engine;
    config = config();
    targets = bench_put, bench_range, bench_compaction
}
criterion_main!(engine);
