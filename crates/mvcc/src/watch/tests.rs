//! Unit tests of the watch hub: delivery, the synced/unsynced hand-over,
//! slow consumers, compaction, progress and snapshot installs. Every wait
//! has a deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use ballast_proto::mvccpb::event::EventType;
use ballast_proto::mvccpb::Event;

use super::*;
use crate::{Store, StoreOptions};

const DEADLINE: Duration = Duration::from_secs(20);

fn put_cmd(k: &str, v: &str) -> Command {
    Command {
        op: Some(Op::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn del_cmd(k: &str, end: &str) -> Command {
    Command {
        op: Some(Op::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn txn_cmd(puts: &[(&str, &str)], dels: &[&str]) -> Command {
    let mut success: Vec<RequestOp> = puts
        .iter()
        .map(|(k, v)| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: (*k).into(),
                value: (*v).into(),
                ..Default::default()
            })),
        })
        .collect();
    success.extend(dels.iter().map(|k| RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: (*k).into(),
            ..Default::default()
        })),
    }));
    Command {
        op: Some(Op::Txn(TxnRequest {
            success,
            ..Default::default()
        })),
    }
}

fn compact_cmd(rev: i64) -> Command {
    Command {
        op: Some(Op::Compaction(CompactionRequest {
            revision: rev,
            physical: true,
        })),
    }
}

/// A store, the next log index, and a model of every event so far.
struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    index: u64,
    /// Every event ever committed, in order: (type, key, value, mod rev).
    history: Vec<Ev>,
    /// Live keys: key → value.
    live: BTreeMap<String, String>,
}

/// (type, key, value, revision) of an event.
type Ev = (EventType, String, String, i64);

fn ev_of(e: &Event) -> Ev {
    let kv = e.kv.as_ref().expect("event kv");
    (
        EventType::try_from(e.r#type).unwrap(),
        String::from_utf8(kv.key.clone()).unwrap(),
        String::from_utf8(kv.value.clone()).unwrap(),
        kv.mod_revision,
    )
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions { sync_writes: false }).unwrap();
        Fx {
            _dir: dir,
            store,
            index: 0,
            history: Vec::new(),
            live: BTreeMap::new(),
        }
    }

    fn hub(&self, limits: WatchLimits) -> WatchHub {
        self.store.watch_hub_with_limits(limits)
    }

    fn rev(&self) -> i64 {
        self.store.current_revision()
    }

    /// Applies commands as one batch, updating the model.
    fn apply(&mut self, cmds: Vec<Command>) {
        let mut entries = Vec::new();
        for c in cmds {
            self.index += 1;
            entries.push((self.index, c));
        }
        let mut rev = self.rev();
        let out = self.store.apply(&entries).unwrap();
        for ((_, cmd), res) in entries.iter().zip(out) {
            res.expect("command applies");
            let mut changed = false;
            match cmd.op.as_ref().unwrap() {
                Op::Put(p) => {
                    let (k, v) = (s(&p.key), s(&p.value));
                    self.history
                        .push((EventType::Put, k.clone(), v.clone(), rev + 1));
                    self.live.insert(k, v);
                    changed = true;
                }
                Op::DeleteRange(d) => {
                    let keys = self.keys_in(&s(&d.key), &s(&d.range_end));
                    for k in keys {
                        self.history
                            .push((EventType::Delete, k.clone(), String::new(), rev + 1));
                        self.live.remove(&k);
                        changed = true;
                    }
                }
                Op::Txn(t) => {
                    for op in &t.success {
                        match op.request.as_ref().unwrap() {
                            Request::RequestPut(p) => {
                                let (k, v) = (s(&p.key), s(&p.value));
                                self.history
                                    .push((EventType::Put, k.clone(), v.clone(), rev + 1));
                                self.live.insert(k, v);
                                changed = true;
                            }
                            Request::RequestDeleteRange(d) => {
                                if self.live.remove(&s(&d.key)).is_some() {
                                    self.history.push((
                                        EventType::Delete,
                                        s(&d.key),
                                        String::new(),
                                        rev + 1,
                                    ));
                                    changed = true;
                                }
                            }
                            _ => unreachable!(),
                        }
                    }
                }
                Op::Compaction(_) | Op::Alarm(_) | Op::LeaseGrant(_) | Op::LeaseRevoke(_) => {}
            }
            if changed {
                rev += 1;
            }
        }
        assert_eq!(rev, self.rev());
    }

    fn put(&mut self, k: &str, v: &str) -> i64 {
        self.apply(vec![put_cmd(k, v)]);
        self.rev()
    }

    fn keys_in(&self, key: &str, end: &str) -> Vec<String> {
        self.live
            .keys()
            .filter(|k| {
                if end.is_empty() {
                    *k == key
                } else if end == "\0" {
                    k.as_str() >= key
                } else {
                    k.as_str() >= key && k.as_str() < end
                }
            })
            .cloned()
            .collect()
    }

    /// The model's events of `[key, end)` from revision `from` on.
    fn expected(&self, key: &str, end: &str, from: i64) -> Vec<Ev> {
        self.history
            .iter()
            .filter(|e| e.3 >= from && in_range(&e.1, key, end))
            .cloned()
            .collect()
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn in_range(k: &str, key: &str, end: &str) -> bool {
    if end.is_empty() {
        k == key
    } else if end == "\0" {
        k >= key
    } else {
        k >= key && k < end
    }
}

fn opts(key: &str, end: &str, start: i64) -> WatchOptions {
    WatchOptions {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

fn next(st: &WatchStream) -> WatchMessage {
    st.recv_timeout(DEADLINE).expect("a watch message in time")
}

/// Receives until a stream-wide progress notification at `rev` or later
/// (requested repeatedly), returning every events message per watch ID and
/// the other messages.
fn drain_until(st: &WatchStream, rev: i64) -> (BTreeMap<i64, Vec<Ev>>, Vec<WatchMessage>) {
    let deadline = Instant::now() + DEADLINE;
    let mut events: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    let mut other = Vec::new();
    st.request_progress();
    loop {
        assert!(Instant::now() < deadline, "no progress at {rev} in time");
        let Some(m) = st.recv_timeout(Duration::from_millis(200)) else {
            st.request_progress();
            continue;
        };
        match &m.kind {
            MessageKind::Events(evs) => {
                let list = events.entry(m.watch_id).or_default();
                for e in evs {
                    let e = ev_of(e);
                    assert!(e.3 <= m.revision, "event newer than its message");
                    list.push(e);
                }
            }
            MessageKind::Progress if m.watch_id == -1 => {
                assert_ne!(m.revision, 0, "progress at revision 0");
                if m.revision >= rev {
                    return (events, other);
                }
                st.request_progress();
            }
            _ => other.push(m),
        }
    }
}

#[test]
fn events_in_order_with_txns_together() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits::default());
    let st = hub.stream();
    let id = st.watch(opts("a", "b", 0)).unwrap();
    assert_eq!(id, 0);
    let m = next(&st);
    assert_eq!(
        (m.watch_id, m.kind, m.revision),
        (0, MessageKind::Created, 1)
    );
    fx.put("a1", "x"); // 2
    let m = next(&st);
    let MessageKind::Events(evs) = &m.kind else {
        panic!("{m:?}")
    };
    assert_eq!(m.revision, 2);
    assert_eq!(evs.len(), 1);
    let kv = evs[0].kv.as_ref().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    // The txn's two events in range arrive in one message, in change order.
    fx.apply(vec![txn_cmd(&[("a2", "y"), ("zz", "no")], &["a1"])]); // 3
    let m = next(&st);
    assert_eq!(m.revision, 3);
    let MessageKind::Events(evs) = &m.kind else {
        panic!("{m:?}")
    };
    assert_eq!(
        evs.iter().map(ev_of).collect::<Vec<_>>(),
        vec![
            (EventType::Put, "a2".into(), "y".into(), 3),
            (EventType::Delete, "a1".into(), String::new(), 3),
        ]
    );
    // A DELETE carries only the key and the deletion's revision.
    let del = evs[1].kv.as_ref().unwrap();
    assert_eq!((del.create_revision, del.version, del.lease), (0, 0, 0));
    fx.apply(vec![del_cmd("a", "b")]); // 4: deletes a2
    fx.put("b", "outside"); // 5
                            // Queued messages of one watcher merge, whole revisions at a time.
    fx.put("a3", "z"); // 6
    let (got, _) = drain_until(&st, fx.rev());
    assert_eq!(got[&0], fx.expected("a", "b", 4));
    assert_eq!(got[&0].len(), 2);
}

#[test]
fn filters_prev_kv_and_ids() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits::default());
    let st = hub.stream();
    let no_put = st
        .watch(WatchOptions {
            no_put: true,
            prev_kv: true,
            ..opts("k", "", 0)
        })
        .unwrap();
    let no_del = st
        .watch(WatchOptions {
            no_delete: true,
            prev_kv: true,
            ..opts("k", "", 0)
        })
        .unwrap();
    assert_eq!((no_put, no_del), (0, 1));
    assert_eq!(
        st.watch(WatchOptions {
            watch_id: 1,
            ..opts("k", "", 0)
        }),
        Err(WatchError::DuplicateId)
    );
    assert_eq!(
        st.watch(WatchOptions {
            watch_id: 7,
            ..opts("k", "", 0)
        }),
        Ok(7)
    );
    assert_eq!(st.watch(opts("k", "", 0)), Ok(2));
    // A refusal is queued in order with the other messages.
    st.refuse("no");
    let kinds: Vec<(i64, MessageKind)> = st
        .try_recv_many(10)
        .into_iter()
        .map(|m| (m.watch_id, m.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, MessageKind::Created),
            (1, MessageKind::Created),
            (7, MessageKind::Created),
            (2, MessageKind::Created),
            (-1, MessageKind::Refused("no".into())),
        ]
    );
    assert_eq!(st.watch(opts("b", "a", 0)), Err(WatchError::EmptyRange));
    assert_eq!(st.watch(opts("k", "", -1)), Err(WatchError::Compacted));
    fx.put("k", "v1"); // 2
    fx.put("k", "v2"); // 3
    fx.apply(vec![del_cmd("k", "")]); // 4
    let (got, other) = drain_until(&st, 4);
    assert!(other.is_empty());
    assert_eq!(
        got[&no_put],
        vec![(EventType::Delete, "k".into(), "".into(), 4)]
    );
    assert_eq!(got[&no_del].len(), 2);
    // prev_kv: none for a creation, the previous version otherwise.
    let st2 = hub.stream();
    st2.watch(WatchOptions {
        prev_kv: true,
        ..opts("k", "", 2)
    })
    .unwrap();
    let mut prevs = Vec::new();
    while prevs.len() < 3 {
        if let MessageKind::Events(evs) = next(&st2).kind {
            prevs.extend(evs.iter().map(|e| e.prev_kv.as_ref().map(|p| s(&p.value))));
        }
    }
    assert_eq!(prevs, vec![None, Some("v1".into()), Some("v2".into())]);
}

#[test]
fn replay_from_the_past_from_disk_and_cache() {
    let mut fx = Fx::new();
    for i in 0..50 {
        fx.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    // A tiny cache: most of the replay comes from disk, in small steps.
    let hub = fx.hub(WatchLimits {
        cache_revisions: 4,
        sync_revisions: 7,
        message_bytes: 200,
        ..Default::default()
    });
    for i in 50..60 {
        fx.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    let st = hub.stream();
    for (i, start) in [1i64, 2, 5, 33, 55, 58, 61, 100].iter().enumerate() {
        st.watch(WatchOptions {
            watch_id: i as i64 + 1,
            ..opts("k", "\0", *start)
        })
        .unwrap();
    }
    st.watch(WatchOptions {
        watch_id: 20,
        ..opts("k3", "", 1)
    })
    .unwrap();
    for i in 60..70 {
        fx.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    fx.put("zz", "x");
    let (got, _) = drain_until(&st, fx.rev());
    for (i, start) in [1i64, 2, 5, 33, 55, 58, 61, 100].iter().enumerate() {
        let want = fx.expected("k", "\0", *start);
        assert_eq!(
            got.get(&(i as i64 + 1)).cloned().unwrap_or_default(),
            want,
            "from {start}"
        );
    }
    assert_eq!(got[&20], fx.expected("k3", "", 1));
}

/// Watchers created at random past and future revisions while a writer
/// commits: each sees exactly its slice of history.
#[test]
fn hand_over_under_concurrent_writes_has_no_gap_or_duplicate() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits {
        cache_revisions: 16,
        sync_revisions: 5,
        pending_messages: 3,
        message_bytes: 300,
        ..Default::default()
    });
    for i in 0..20 {
        fx.put(&format!("p{}", i % 5), &format!("v{i}"));
    }
    let st = Arc::new(hub.stream());
    let store = fx.store.clone();
    let reader = {
        let st = st.clone();
        std::thread::spawn(move || {
            // A consumer that keeps up only slowly.
            let mut got: BTreeMap<i64, Vec<WatchMessage>> = BTreeMap::new();
            let deadline = Instant::now() + DEADLINE;
            while Instant::now() < deadline {
                for m in st.try_recv_many(2) {
                    if m.watch_id == -1 {
                        return got;
                    }
                    got.entry(m.watch_id).or_default().push(m);
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            panic!("the reader did not finish in time");
        })
    };
    let mut starts = Vec::new();
    let mut seed = 7u64;
    let mut rnd = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for round in 0..60 {
        let mut batch = Vec::new();
        for j in 0..1 + rnd(4) {
            let k = format!("p{}", rnd(6));
            if rnd(5) == 0 {
                batch.push(del_cmd(&k, ""));
            } else if rnd(4) == 0 {
                batch.push(txn_cmd(&[(&k, "t"), ("q", "t")], &[]));
            } else {
                batch.push(put_cmd(&k, &format!("r{round}.{j}")));
            }
        }
        fx.apply(batch);
        if round % 3 == 0 {
            let cur = store.current_revision() as u64;
            let start = match rnd(4) {
                0 => 0,
                1 => 1 + rnd(cur),
                2 => cur - rnd(3),
                _ => cur + 1 + rnd(5),
            } as i64;
            let id = st.watch(opts("p", "q", start)).unwrap();
            let from = if start == 0 {
                store.current_revision() + 1
            } else {
                start
            };
            starts.push((id, from));
        }
    }
    let end = fx.rev();
    let deadline = Instant::now() + DEADLINE;
    while hub.watcher_counts().1 > 0 {
        assert!(Instant::now() < deadline, "watchers did not catch up");
        std::thread::sleep(Duration::from_millis(5));
    }
    st.request_progress();
    let got = reader.join().unwrap();
    for (id, from) in starts {
        let msgs = got.get(&id).cloned().unwrap_or_default();
        assert_eq!(msgs[0].kind, MessageKind::Created);
        let mut evs = Vec::new();
        let mut last_rev = 0;
        for m in &msgs[1..] {
            let MessageKind::Events(e) = &m.kind else {
                panic!("{m:?}")
            };
            assert!(m.revision > last_rev, "message revisions increase");
            last_rev = m.revision;
            evs.extend(e.iter().map(ev_of));
        }
        assert_eq!(evs, fx.expected("p", "q", from), "watch {id} from {from}");
        assert!(last_rev <= end);
    }
}

#[test]
fn slow_consumer_falls_behind_and_catches_up() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits {
        pending_messages: 2,
        pending_bytes: 1 << 20,
        message_bytes: 64,
        cache_revisions: 8,
        ..Default::default()
    });
    let st = hub.stream();
    st.watch(opts("k", "", 0)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    for i in 0..100 {
        fx.put("k", &format!("{i:0>40}"));
    }
    // Two messages fit; the watcher fell behind instead of blocking writes.
    assert_eq!(st.pending(), 2);
    assert_eq!(hub.watcher_counts(), (0, 1));
    let (got, _) = drain_until(&st, fx.rev());
    assert_eq!(got[&0], fx.expected("k", "", 2));
    assert_eq!(hub.watcher_counts(), (1, 0));
    // Synced again: new events are pushed.
    fx.put("k", "after");
    let (got, _) = drain_until(&st, fx.rev());
    assert_eq!(got[&0], fx.expected("k", "", fx.rev()));
}

#[test]
fn compaction_cancels_watchers_behind_it() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits::default());
    fx.put("a", "1"); // 2
    fx.put("b", "1"); // 3
    fx.apply(vec![del_cmd("b", "")]); // 4
    fx.put("a", "2"); // 5
    fx.apply(vec![compact_cmd(4)]);
    fx.store.wait_compacted(4);
    let st = hub.stream();
    st.watch(opts("a", "\0", 3)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    let m = next(&st);
    assert_eq!(
        m.kind,
        MessageKind::Canceled {
            compact_revision: 4
        }
    );
    assert_eq!((m.watch_id, m.revision), (0, 5));
    // Exactly at the compaction point: the deletion at 4 is still seen
    // (etcd bug #18089 lost it), then everything after.
    st.watch(opts("a", "\0", 4)).unwrap();
    let (got, other) = drain_until(&st, 5);
    assert!(other.iter().all(|m| m.kind == MessageKind::Created));
    assert_eq!(
        got[&1],
        vec![
            (EventType::Delete, "b".into(), "".into(), 4),
            (EventType::Put, "a".into(), "2".into(), 5)
        ]
    );
    // A watcher that falls behind the compaction point is canceled too.
    let slow = hub.stream();
    slow.watch(opts("a", "", 2)).unwrap();
    let m = next(&slow);
    assert_eq!(m.kind, MessageKind::Created);
    let m = next(&slow);
    assert_eq!(
        m.kind,
        MessageKind::Canceled {
            compact_revision: 4
        }
    );
}

#[test]
fn at_the_compaction_point_after_a_restart_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .apply(&[(1, put_cmd("a", "1")), (2, del_cmd("a", ""))])
        .unwrap(); // 2, 3
    store.apply(&[(3, compact_cmd(3))]).unwrap();
    store.wait_compacted(3);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let hub = store.watch_hub();
    let st = hub.stream();
    st.watch(opts("a", "", 3)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    // The deletion at 3 is gone from disk and the hub has no copy: the
    // cancel names 4, the first revision it can serve (naming 3 made a
    // client that resumes from `compact_revision` loop forever).
    assert_eq!(
        next(&st).kind,
        MessageKind::Canceled {
            compact_revision: 4
        }
    );
    // From below the compaction point: the same.
    st.watch(opts("a", "", 2)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    assert_eq!(
        next(&st).kind,
        MessageKind::Canceled {
            compact_revision: 4
        }
    );
    st.watch(opts("a", "", 4)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    assert!(st.recv_timeout(Duration::from_millis(300)).is_none());
}

/// A client that resumes from `compact_revision`, as etcd advises, gets
/// every later event, before and after a restart of the store.
#[test]
fn resuming_from_compact_revision_makes_progress() {
    let dir = tempfile::tempdir().unwrap();
    for (restarted, index) in [(false, 0), (true, 10)] {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        // The hub exists when the compaction is applied, as in a member.
        let hub = store.watch_hub();
        let base = store.current_revision();
        store
            .apply(&[
                (index + 1, put_cmd("k", "1")),
                (index + 2, del_cmd("k", "")),
                (index + 3, put_cmd("k", "2")),
            ])
            .unwrap(); // base+1 ..= base+3
        let compact = base + 2;
        store.apply(&[(index + 4, compact_cmd(compact))]).unwrap();
        store.wait_compacted(compact);
        let (_store, hub) = if restarted {
            drop((hub, store));
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let hub = store.watch_hub();
            (store, hub)
        } else {
            (store, hub)
        };
        let st = hub.stream();
        let mut from = 1;
        let mut got = Vec::new();
        for _ in 0..3 {
            st.watch(opts("k", "", from)).unwrap();
            assert_eq!(next(&st).kind, MessageKind::Created);
            match next(&st).kind {
                MessageKind::Canceled { compact_revision } => {
                    assert!(
                        compact_revision > from,
                        "restarted {restarted}: from {from}, canceled at {compact_revision}"
                    );
                    from = compact_revision;
                }
                MessageKind::Events(evs) => {
                    // The rest may come in further messages.
                    got.extend(evs.iter().map(ev_of));
                    let (rest, _) = drain_until(&st, base + 3);
                    got.extend(rest.into_values().flatten());
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let put2 = (EventType::Put, "k".to_string(), "2".to_string(), base + 3);
        let want = if restarted {
            // The deletion at the compaction point is gone from disk.
            vec![put2]
        } else {
            vec![
                (EventType::Delete, "k".to_string(), String::new(), base + 2),
                put2,
            ]
        };
        assert_eq!(got, want, "restarted {restarted}");
    }
}

#[test]
fn progress_waits_for_unsynced_watchers() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits {
        pending_messages: 1,
        message_bytes: 10,
        ..Default::default()
    });
    let st = hub.stream();
    // No watchers: answered at once with the current revision.
    st.request_progress();
    let m = next(&st);
    assert_eq!(
        (m.watch_id, m.kind, m.revision),
        (-1, MessageKind::Progress, 1)
    );
    st.watch(opts("k", "", 0)).unwrap();
    assert_eq!(next(&st).kind, MessageKind::Created);
    for i in 0..5 {
        fx.put("k", &i.to_string());
    }
    // The watcher is behind (one message fits): no progress yet.
    assert_eq!(hub.watcher_counts(), (0, 1));
    st.request_progress();
    st.request_watcher_progress(0);
    let mut seen = Vec::new();
    loop {
        let m = next(&st);
        match m.kind {
            MessageKind::Events(evs) => seen.extend(evs.iter().map(ev_of)),
            MessageKind::Progress => {
                // Only after every event up to its revision.
                assert_eq!(m.watch_id, -1);
                assert_eq!(m.revision, 6);
                assert_eq!(seen, fx.expected("k", "", 2));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // Synced: the per-watcher progress is answered now.
    st.request_watcher_progress(0);
    let m = next(&st);
    assert_eq!(
        (m.watch_id, m.kind, m.revision),
        (0, MessageKind::Progress, 6)
    );
    assert!(st.try_recv_many(10).is_empty());
}

#[test]
fn cancel_and_drop_remove_watchers() {
    let mut fx = Fx::new();
    let hub = fx.hub(WatchLimits::default());
    let st = hub.stream();
    st.watch(opts("k", "", 0)).unwrap();
    fx.put("k", "1");
    assert!(st.cancel(0));
    assert!(!st.cancel(0));
    assert!(!st.cancel(42));
    fx.put("k", "2");
    let kinds: Vec<MessageKind> = st.try_recv_many(10).into_iter().map(|m| m.kind).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0], MessageKind::Created);
    assert!(matches!(kinds[1], MessageKind::Events(_)));
    assert_eq!(
        kinds[2],
        MessageKind::Canceled {
            compact_revision: 0
        }
    );
    // Automatic IDs go on from the stream's counter; a canceled client ID
    // can be used again.
    assert_eq!(st.watch(opts("k", "", 0)), Ok(1));
    let nine = WatchOptions {
        watch_id: 9,
        ..opts("k", "", 0)
    };
    assert_eq!(st.watch(nine.clone()), Ok(9));
    assert!(st.cancel(9));
    assert_eq!(st.watch(nine), Ok(9));
    let other = hub.stream();
    other.watch(opts("k", "", 1)).unwrap();
    assert_eq!(hub.watcher_counts().0 + hub.watcher_counts().1, 3);
    drop(st);
    drop(other);
    assert_eq!(hub.watcher_counts(), (0, 0));
}

#[test]
fn install_snapshot_resyncs_every_watcher() {
    // `a` has the longer history; `b` the same prefix.
    let mut a = Fx::new();
    let mut b = Fx::new();
    for i in 0..10 {
        let cmd = put_cmd(&format!("k{}", i % 3), &format!("v{i}"));
        a.apply(vec![cmd.clone()]);
        b.apply(vec![cmd]);
    }
    for i in 10..30 {
        a.put(&format!("k{}", i % 3), &format!("v{i}"));
    }
    a.apply(vec![compact_cmd(11)]);
    let hub = b.hub(WatchLimits {
        pending_messages: 1,
        message_bytes: 10,
        ..Default::default()
    });
    // A watcher that stays behind: one message fits and nobody reads it.
    let lagging = hub.stream();
    lagging.watch(opts("k", "\0", 3)).unwrap();
    let st = hub.stream();
    st.watch(opts("k", "\0", 0)).unwrap(); // synced, next 12
    st.watch(opts("k1", "", 5)).unwrap(); // caught up to 11 below
    st.watch(opts("k", "\0", 33)).unwrap(); // in the future
    let (got, _) = drain_until(&st, b.rev());
    assert_eq!(got[&1], b.expected("k1", "", 5));
    assert_eq!(hub.watcher_counts(), (3, 1));

    let mut image = Vec::new();
    a.store.write_snapshot(&mut image, &[]).unwrap();
    b.store.install_snapshot(&mut image.as_slice()).unwrap();
    assert_eq!(b.rev(), 31);
    b.index = a.index;
    for i in 30..35 {
        a.put(&format!("k{}", i % 3), &format!("v{i}"));
        b.apply(vec![put_cmd(&format!("k{}", i % 3), &format!("v{i}"))]);
    }
    let (got, _) = drain_until(&st, b.rev());
    // The watchers resume exactly where they were, from the new content.
    assert_eq!(got[&0], a.expected("k", "\0", 12));
    assert_eq!(got[&1], a.expected("k1", "", 12));
    assert_eq!(got[&2], a.expected("k", "\0", 33));
    // The lagging one is behind the new compaction point: after the event
    // it had queued, it is canceled. The hub holds no copy of the
    // compaction point's events (they came with the image), so it can serve
    // from the next revision on.
    assert_eq!(next(&lagging).kind, MessageKind::Created);
    let m = next(&lagging);
    let MessageKind::Events(evs) = &m.kind else {
        panic!("{m:?}")
    };
    assert_eq!(
        evs.iter().map(ev_of).collect::<Vec<_>>(),
        b.expected("k", "\0", 3)[..1]
    );
    assert_eq!(
        next(&lagging).kind,
        MessageKind::Canceled {
            compact_revision: 12
        }
    );
}
