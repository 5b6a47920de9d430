//! Model-based test of watches: random batches of puts, deletes and txns,
//! compactions, watchers with random key ranges and start revisions
//! (created before, between and after the writes), and a consumer that
//! takes messages at random moments, with tiny memory bounds so that every
//! path (synced pushes, falling behind, catching up from the cache and from
//! disk, merging, compaction) is taken.
//!
//! For every watcher the events received must be exactly the committed
//! history of its range from its start revision on (type, key, value,
//! create/mod revision, version), or, for a watcher canceled by a
//! compaction, a prefix of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ballast_mvcc::{MessageKind, Store, StoreOptions, WatchLimits, WatchOptions, WatchStream};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use ballast_proto::mvccpb::event::EventType;
use proptest::collection::vec;
use proptest::prelude::*;

const KEYS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// (type, key, value, create revision, mod revision, version).
type Ev = (i32, String, String, i64, i64, i64);

#[derive(Clone, Debug)]
enum Write {
    Put(usize, u8),
    /// Delete `[KEYS[i], KEYS[j])` (or the single key when `j <= i`).
    Delete(usize, usize),
    /// A txn putting and deleting distinct keys.
    Txn(Vec<(usize, Option<u8>)>),
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Write>),
    /// Compact at `current - back` (if above the compaction point).
    Compact(i64),
    /// A watcher on `[KEYS[i], KEYS[j])` (single key when `j <= i`, from
    /// `i` on when `j == 6`), starting `back` revisions ago (0 = now,
    /// negative = in the future), asking for `prev_kv` or not.
    Watch(usize, usize, i64, bool),
    /// The consumer takes up to this many messages.
    Read(usize),
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0..6usize, any::<u8>()).prop_map(|(k, v)| Write::Put(k, v)),
        1 => (0..6usize, 0..7usize).prop_map(|(i, j)| Write::Delete(i, j)),
        1 => vec((0..6usize, proptest::option::of(any::<u8>())), 1..4).prop_map(|ops| {
            let mut seen = std::collections::HashSet::new();
            Write::Txn(ops.into_iter().filter(|(k, _)| seen.insert(*k)).collect())
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => vec(write(), 1..5).prop_map(Step::Batch),
        1 => (0..6i64).prop_map(Step::Compact),
        3 => (0..6usize, 0..7usize, -3..25i64, any::<bool>())
            .prop_map(|(i, j, b, p)| Step::Watch(i, j, b, p)),
        3 => (0..8usize).prop_map(Step::Read),
    ]
}

fn range_of(i: usize, j: usize) -> (String, String) {
    let key = KEYS[i].to_string();
    let end = if j == 6 {
        "\0".to_string()
    } else if j <= i {
        String::new()
    } else {
        KEYS[j].to_string()
    };
    (key, end)
}

fn in_range(k: &str, key: &str, end: &str) -> bool {
    match end {
        "" => k == key,
        "\0" => k >= key,
        e => k >= key && k < e,
    }
}

/// The model: live keys with (value, create revision, version), and every
/// event committed so far.
#[derive(Default)]
struct Model {
    rev: i64,
    live: BTreeMap<String, (String, i64, i64)>,
    history: Vec<Ev>,
}

impl Model {
    fn put(&mut self, rev: i64, k: &str, v: String) {
        let (create, version) = match self.live.get(k) {
            Some((_, c, ver)) => (*c, ver + 1),
            None => (rev, 1),
        };
        self.history.push((
            EventType::Put as i32,
            k.to_string(),
            v.clone(),
            create,
            rev,
            version,
        ));
        self.live.insert(k.to_string(), (v, create, version));
    }

    fn delete(&mut self, rev: i64, k: &str) -> bool {
        if self.live.remove(k).is_none() {
            return false;
        }
        self.history.push((
            EventType::Delete as i32,
            k.to_string(),
            String::new(),
            0,
            rev,
            0,
        ));
        true
    }

    /// Applies one write to the model; returns its command.
    fn apply(&mut self, w: &Write) -> Command {
        let next = self.rev + 1;
        let mut changed = false;
        let op = match w {
            Write::Put(k, v) => {
                self.put(next, KEYS[*k], format!("v{v}"));
                changed = true;
                Op::Put(PutRequest {
                    key: KEYS[*k].into(),
                    value: format!("v{v}").into(),
                    ..Default::default()
                })
            }
            Write::Delete(i, j) => {
                let (key, end) = range_of(*i, *j);
                let keys: Vec<String> = self
                    .live
                    .keys()
                    .filter(|k| in_range(k, &key, &end))
                    .cloned()
                    .collect();
                for k in keys {
                    changed |= self.delete(next, &k);
                }
                Op::DeleteRange(DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..Default::default()
                })
            }
            Write::Txn(ops) => {
                let mut success = Vec::new();
                for (k, v) in ops {
                    let key = KEYS[*k];
                    success.push(RequestOp {
                        request: Some(match v {
                            Some(v) => {
                                self.put(next, key, format!("t{v}"));
                                changed = true;
                                Request::RequestPut(PutRequest {
                                    key: key.into(),
                                    value: format!("t{v}").into(),
                                    ..Default::default()
                                })
                            }
                            None => {
                                changed |= self.delete(next, key);
                                Request::RequestDeleteRange(DeleteRangeRequest {
                                    key: key.into(),
                                    ..Default::default()
                                })
                            }
                        }),
                    });
                }
                Op::Txn(TxnRequest {
                    success,
                    ..Default::default()
                })
            }
        };
        if changed {
            self.rev = next;
        }
        Command { op: Some(op) }
    }
}

struct Watched {
    id: i64,
    key: String,
    end: String,
    from: i64,
    events: Vec<Ev>,
    created: bool,
    canceled: Option<i64>,
    last_msg_rev: i64,
    prev_kv: bool,
    /// Each event's `prev_kv` as (value, mod revision).
    prevs: Vec<Option<(String, i64)>>,
}

fn take(
    st: &WatchStream,
    watched: &mut [Watched],
    msgs: Vec<ballast_mvcc::WatchMessage>,
) -> Option<i64> {
    let mut progress = None;
    for m in msgs {
        if m.watch_id == -1 {
            assert_eq!(m.kind, MessageKind::Progress);
            assert!(m.revision > 0);
            progress = Some(m.revision);
            continue;
        }
        let w = watched
            .iter_mut()
            .find(|w| w.id == m.watch_id && w.canceled.is_none())
            .expect("a message for a known watcher");
        match m.kind {
            MessageKind::Created => {
                assert!(!w.created);
                w.created = true;
            }
            MessageKind::Events(evs) => {
                assert!(w.created, "events before Created");
                assert!(m.revision > w.last_msg_rev, "message revisions go up");
                w.last_msg_rev = m.revision;
                for e in evs {
                    if !w.prev_kv {
                        assert!(e.prev_kv.is_none());
                    }
                    w.prevs.push(
                        e.prev_kv
                            .map(|p| (String::from_utf8(p.value).unwrap(), p.mod_revision)),
                    );
                    let kv = e.kv.unwrap();
                    assert!(kv.mod_revision <= m.revision);
                    w.events.push((
                        e.r#type,
                        String::from_utf8(kv.key).unwrap(),
                        String::from_utf8(kv.value).unwrap(),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    ));
                }
            }
            MessageKind::Canceled { compact_revision } => {
                assert!(compact_revision > 0, "only compactions cancel here");
                w.canceled = Some(compact_revision);
            }
            MessageKind::Progress => panic!("no per-watcher progress was asked for"),
            MessageKind::Refused(r) => panic!("no create is refused here: {r}"),
        }
    }
    let _ = st;
    progress
}

fn run(steps: &[Step], limits: WatchLimits) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions { sync_writes: false }).unwrap();
    let mut m = Model {
        rev: 1,
        ..Default::default()
    };
    let mut index = 0u64;
    let mut compactions = vec![];
    let hub = store.watch_hub_with_limits(limits);
    let st = hub.stream();
    let mut watched: Vec<Watched> = Vec::new();
    for step in steps {
        match step {
            Step::Batch(ws) => {
                let mut entries = vec![];
                for w in ws {
                    index += 1;
                    entries.push((index, m.apply(w)));
                }
                for r in store.apply(&entries).unwrap() {
                    r.unwrap();
                }
                prop_assert_eq!(store.current_revision(), m.rev);
            }
            Step::Compact(back) => {
                let at = m.rev - back;
                if at > store.compact_revision() && at >= 1 {
                    index += 1;
                    let c = Command {
                        op: Some(Op::Compaction(CompactionRequest {
                            revision: at,
                            physical: false,
                        })),
                    };
                    store.apply(&[(index, c)]).unwrap()[0].clone().unwrap();
                    compactions.push(at);
                }
            }
            Step::Watch(i, j, back, prev_kv) => {
                let (key, end) = range_of(*i, *j);
                let start = if *back == 0 { 0 } else { (m.rev - back).max(1) };
                let id = st
                    .watch(WatchOptions {
                        key: key.clone().into(),
                        range_end: end.clone().into(),
                        start_revision: start,
                        prev_kv: *prev_kv,
                        ..Default::default()
                    })
                    .unwrap();
                watched.push(Watched {
                    id,
                    key,
                    end,
                    from: if start == 0 { m.rev + 1 } else { start },
                    events: vec![],
                    created: false,
                    canceled: None,
                    last_msg_rev: 0,
                    prev_kv: *prev_kv,
                    prevs: vec![],
                });
            }
            Step::Read(n) => {
                let msgs = st.try_recv_many(*n);
                take(&st, &mut watched, msgs);
            }
        }
    }
    // Everything up to the last revision, then a progress notification.
    let deadline = Instant::now() + Duration::from_secs(20);
    st.request_progress();
    loop {
        prop_assert!(Instant::now() < deadline, "no final progress in time");
        let msgs = st.try_recv_many(16);
        if msgs.is_empty() {
            if let Some(msg) = st.recv_timeout(Duration::from_millis(100)) {
                if let Some(p) = take(&st, &mut watched, vec![msg]) {
                    if p >= m.rev {
                        break;
                    }
                    st.request_progress();
                }
            } else {
                st.request_progress();
            }
            continue;
        }
        if let Some(p) = take(&st, &mut watched, msgs) {
            if p >= m.rev {
                break;
            }
            st.request_progress();
        }
    }
    // Nothing but what a removal may have queued after the progress.
    let rest = st.try_recv_many(usize::MAX);
    take(&st, &mut watched, rest);
    for w in &watched {
        let want: Vec<Ev> = m
            .history
            .iter()
            .filter(|e| e.4 >= w.from && in_range(&e.1, &w.key, &w.end))
            .cloned()
            .collect();
        prop_assert!(w.created);
        if w.prev_kv {
            let last_compact = compactions.last().copied().unwrap_or(-1);
            for (e, got) in w.events.iter().zip(&w.prevs) {
                // The key's previous version: its last event before this one,
                // if that was a put (none for a creation).
                let prev = m
                    .history
                    .iter()
                    .rfind(|h| h.1 == e.1 && h.4 < e.4)
                    .filter(|h| h.0 == EventType::Put as i32)
                    .map(|h| (h.2.clone(), h.4));
                if got.is_none() && e.4 - 1 < last_compact {
                    continue; // compacted away before it was read, as etcd
                }
                prop_assert_eq!(got, &prev, "prev_kv of {:?}", e);
            }
        }
        match w.canceled {
            None => prop_assert_eq!(
                &w.events,
                &want,
                "watch {} {:?}..{:?} from {}",
                w.id,
                w.key,
                w.end,
                w.from
            ),
            Some(c) => {
                prop_assert!(compactions.contains(&c));
                prop_assert!(
                    w.from <= c,
                    "canceled though it started after the compaction"
                );
                prop_assert_eq!(&w.events[..], &want[..w.events.len().min(want.len())]);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Tiny bounds: watchers fall behind and catch up all the time.
    #[test]
    fn every_watcher_sees_its_slice_of_history(steps in vec(step(), 1..60)) {
        run(&steps, WatchLimits {
            pending_bytes: 300,
            pending_messages: 2,
            message_bytes: 150,
            cache_revisions: 3,
            cache_bytes: 1000,
            sync_revisions: 4,
            sync_bytes: 200,
            compact_capture_bytes: 1 << 20,
        })?;
    }

    /// Default bounds: mostly synced pushes and merged messages.
    #[test]
    fn every_watcher_sees_its_slice_of_history_default_limits(steps in vec(step(), 1..60)) {
        run(&steps, WatchLimits::default())?;
    }
}
