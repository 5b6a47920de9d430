//! A randomized model test of Watch on a 3-member cluster of real
//! processes.
//!
//! Writers issue random puts, deletes, range deletes and multi-op txns on a
//! small key space through random members. Watchers on every member watch
//! random keys, ranges, prefixes and from-keys, from random start revisions
//! (now, the past, the future), some with `prev_kv`, filters or
//! `progress_notify`, and ask for progress now and then. Meanwhile the
//! leader is SIGKILLed and restarted, a follower is stopped (SIGTERM) and
//! restarted, the history is compacted while watchers replay it, and
//! watchers drop their stream or cancel their watch at random. A watcher
//! whose stream ends for any reason resumes, on a random member, from the
//! revision after the last one it knows it has (its last event, or its
//! last progress notification); one canceled by the compaction resumes from
//! `compact_revision`.
//!
//! At the end the committed history (recorded by a watcher of every key
//! from revision 1, started before the compaction) is checked against the
//! model: revisions contiguous, versions and create revisions consistent,
//! every revision the effect of exactly one issued write, every
//! acknowledged write at its acknowledged revision with the txn branch the
//! model predicts, the final state equal to a linearizable read. Every
//! watcher must have received exactly its slice of that history: no gap, no
//! duplicate, no reorder, each revision in one response, `prev_kv` as the
//! model says; the only holes allowed are those a compaction cancel
//! announced. Progress notifications never carry revision 0, and every
//! later event of the stream is newer.
//!
//! (It found that a member restarted after a compaction canceled a watch
//! from the compaction point with that same `compact_revision`, so a client
//! resuming from it looped forever: see `HubState::cancel_compacted`.)
//!
//! The seed is printed; `BALLAST_TEST_SEED=<n>` replays its choices (the
//! interleaving with the cluster still varies).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_e2e::cluster::{
    connect_one, hash_kv_of, timed, wait_until, Cluster, ClusterOpts, CLIENT_TIMEOUT,
    CLUSTER_TIMEOUT, POLL_INTERVAL,
};
use ballast_e2e::etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};

/// How long the survivors may take to elect a new leader.
const FAILOVER: Duration = Duration::from_secs(10);
/// A bound for waits that only depend on the cluster doing work.
const WORK: Duration = Duration::from_secs(20);
/// Timeout of one write; a write without an answer by then is "unknown".
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys written: `m/0` .. `m/7`.
const KEYS: usize = 8;
/// Concurrent writers.
const WRITERS: usize = 3;

// ---------------------------------------------------------------------------
// Seeded randomness

/// SplitMix64: small, seedable, good enough for choices.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.between(lo as i64, hi as i64) as u64)
    }

    /// An independent generator.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// `$BALLAST_TEST_SEED` (decimal or `0x` hex), else a fresh one.
fn seed() -> u64 {
    match std::env::var("BALLAST_TEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| s.parse())
                .unwrap_or_else(|e| panic!("BALLAST_TEST_SEED={s:?}: {e}"))
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

fn key(i: usize) -> String {
    format!("m/{i}")
}

// ---------------------------------------------------------------------------
// The model

/// A key-value as the model and the watchers compare it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

impl Kv {
    fn of(kv: &KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create: kv.create_revision(),
            modr: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    put: bool,
    kv: Kv,
}

/// One change a write makes: PUT with its value, or DELETE.
type Effect = (bool, String, Option<String>);

/// One operation of a txn branch.
#[derive(Clone, Debug)]
enum Sub {
    Put(String, String),
    Del(String),
}

/// One write.
#[derive(Clone, Debug)]
enum Op {
    Put(String, String),
    Del(String),
    /// Deletes `[from, to)`.
    DelRange(String, String),
    /// `if exists(key) == exists { then } else { els }`.
    Txn {
        key: String,
        exists: bool,
        then: Vec<Sub>,
        els: Vec<Sub>,
    },
}

type State = BTreeMap<String, Kv>;

impl Op {
    /// The branch taken (true for non-txns) and the changes, on `state`.
    fn effects(&self, state: &State) -> (bool, Vec<Effect>) {
        let del = |k: &String, out: &mut Vec<Effect>| {
            if state.contains_key(k) {
                out.push((false, k.clone(), None));
            }
        };
        let mut out = Vec::new();
        match self {
            Op::Put(k, v) => out.push((true, k.clone(), Some(v.clone()))),
            Op::Del(k) => del(k, &mut out),
            Op::DelRange(a, b) => {
                for k in state.range(a.clone()..b.clone()).map(|(k, _)| k) {
                    out.push((false, k.clone(), None));
                }
            }
            Op::Txn {
                key,
                exists,
                then,
                els,
            } => {
                let ok = state.contains_key(key) == *exists;
                // The keys of a branch are distinct: order does not matter
                // for what each op sees.
                for s in if ok { then } else { els } {
                    match s {
                        Sub::Put(k, v) => out.push((true, k.clone(), Some(v.clone()))),
                        Sub::Del(k) => del(k, &mut out),
                    }
                }
                return (ok, out);
            }
        }
        (true, out)
    }
}

/// What became of a write.
#[derive(Clone, Debug)]
enum Outcome {
    /// Answered: the header revision, whether it changed anything (a put,
    /// or something deleted), and the txn branch.
    Acked {
        rev: i64,
        changed: bool,
        succeeded: bool,
    },
    /// An error or no answer: it may or may not have been applied.
    Unknown(String),
}

#[derive(Clone, Debug)]
struct OpRec {
    writer: usize,
    member: usize,
    op: Op,
    outcome: Outcome,
}

fn gen_op(rng: &mut Rng, writer: usize, seq: u64) -> Op {
    let value = |i: usize| format!("{writer}.{seq}.{i}");
    let subs = |rng: &mut Rng, tag: usize| {
        let n = rng.between(1, 3) as usize;
        let mut keys: Vec<usize> = (0..KEYS).collect();
        (0..n)
            .map(|i| {
                let k = keys.swap_remove(rng.below(keys.len()));
                if rng.percent(70) {
                    Sub::Put(key(k), value(tag * 10 + i))
                } else {
                    Sub::Del(key(k))
                }
            })
            .collect::<Vec<_>>()
    };
    match rng.below(100) {
        0..=34 => Op::Put(key(rng.below(KEYS)), value(0)),
        35..=44 => Op::Del(key(rng.below(KEYS))),
        45..=49 => {
            let a = rng.below(KEYS - 1);
            let b = rng.between(a as i64 + 1, KEYS as i64) as usize;
            Op::DelRange(key(a), key(b))
        }
        _ => Op::Txn {
            key: key(rng.below(KEYS)),
            exists: rng.percent(50),
            then: subs(rng, 1),
            els: subs(rng, 2),
        },
    }
}

fn txn_ops(subs: &[Sub]) -> Vec<TxnOp> {
    subs.iter()
        .map(|s| match s {
            Sub::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
            Sub::Del(k) => TxnOp::delete(k.as_str(), None),
        })
        .collect()
}

async fn execute(c: &mut Client, op: &Op) -> Outcome {
    let rev_of =
        |h: Option<&ballast_e2e::etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    let r = match op {
        Op::Put(k, v) => timed(OP_TIMEOUT, c.put(k.as_str(), v.as_str(), None))
            .await
            .map(|r| (rev_of(r.header()), true, true)),
        Op::Del(k) => timed(OP_TIMEOUT, c.delete(k.as_str(), None))
            .await
            .map(|r| (rev_of(r.header()), r.deleted() > 0, true)),
        Op::DelRange(a, b) => timed(
            OP_TIMEOUT,
            c.delete(
                a.as_str(),
                Some(DeleteOptions::new().with_range(b.as_str())),
            ),
        )
        .await
        .map(|r| (rev_of(r.header()), r.deleted() > 0, true)),
        Op::Txn {
            key,
            exists,
            then,
            els,
        } => {
            let cmp = if *exists {
                CompareOp::Greater
            } else {
                CompareOp::Equal
            };
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), cmp, 0)])
                .and_then(txn_ops(then))
                .or_else(txn_ops(els));
            timed(OP_TIMEOUT, c.txn(txn)).await.map(|r| {
                let changed = r.op_responses().iter().any(|o| match o {
                    TxnOpResponse::Put(_) => true,
                    TxnOpResponse::Delete(d) => d.deleted() > 0,
                    _ => false,
                });
                (rev_of(r.header()), changed, r.succeeded())
            })
        }
    };
    match r {
        Ok((rev, changed, succeeded)) => Outcome::Acked {
            rev,
            changed,
            succeeded,
        },
        Err(e) => Outcome::Unknown(e),
    }
}

// ---------------------------------------------------------------------------
// Writers

/// Writer tasks issuing random writes through random members.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<OpRec>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(endpoints: &[String], rng: &mut Rng) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..WRITERS)
            .map(|w| {
                let (stop, acked, ops) = (stop.clone(), acked.clone(), ops.clone());
                let endpoints = endpoints.to_vec();
                let mut rng = rng.fork();
                tokio::spawn(async move {
                    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
                    for seq in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let m = rng.below(endpoints.len());
                        if clients[m].is_none() {
                            clients[m] = connect_one(&endpoints[m], false).await.ok();
                        }
                        let Some(c) = clients[m].as_mut() else {
                            tokio::time::sleep(POLL_INTERVAL).await;
                            continue;
                        };
                        let op = gen_op(&mut rng, w, seq);
                        let outcome = execute(c, &op).await;
                        match outcome {
                            Outcome::Acked { .. } => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Unknown(_) => clients[m] = None,
                        }
                        let failed = clients[m].is_none();
                        ops.lock().unwrap().push(OpRec {
                            writer: w,
                            member: m,
                            op,
                            outcome,
                        });
                        // Pacing; longer after a failure (do not spin on a
                        // dead member).
                        let pause = if failed {
                            POLL_INTERVAL
                        } else {
                            rng.millis(5, 25)
                        };
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            ops,
            tasks,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits for `n` more acknowledged writes.
    async fn more(&self, n: u64) {
        let target = self.acked() + n;
        wait_until(&format!("{target} acknowledged writes"), WORK, || async {
            let a = self.acked();
            if a >= target {
                Ok(())
            } else {
                Err(format!("{a} acknowledged"))
            }
        })
        .await;
    }

    /// Stops the writers (each finishes its current write) and returns
    /// every write issued.
    async fn stop(mut self) -> Vec<OpRec> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(2), t).await;
        }
        let ops = self.ops.lock().unwrap().clone();
        ops
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Watchers

#[derive(Clone, Debug)]
enum Range {
    All,
    Key(String),
    Prefix(String),
    /// `[from, to)`.
    Between(String, String),
    From(String),
}

#[derive(Clone, Debug)]
struct Spec {
    name: String,
    /// The member of the first stream.
    home: usize,
    range: Range,
    /// 0 = now.
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Created after every member compacted at this revision, from before
    /// it: its first stream must be canceled as compacted.
    must_cancel: Option<i64>,
}

impl Spec {
    fn contains(&self, k: &str) -> bool {
        match &self.range {
            Range::All => true,
            Range::Key(x) => k == x,
            Range::Prefix(p) => k.starts_with(p.as_str()),
            Range::Between(a, b) => a.as_str() <= k && k < b.as_str(),
            Range::From(a) => a.as_str() <= k,
        }
    }

    fn wants(&self, ev: &Ev) -> bool {
        self.contains(&ev.kv.key) && !(ev.put && self.no_put || !ev.put && self.no_delete)
    }

    fn key(&self) -> String {
        match &self.range {
            Range::All => String::new(),
            Range::Key(k) | Range::Prefix(k) | Range::Between(k, _) | Range::From(k) => k.clone(),
        }
    }

    fn options(&self, start: i64) -> WatchOptions {
        let mut o = WatchOptions::new().with_start_revision(start);
        o = match &self.range {
            Range::All => o.with_all_keys(),
            Range::Key(_) => o,
            Range::Prefix(_) => o.with_prefix(),
            Range::Between(_, b) => o.with_range(b.as_str()),
            Range::From(_) => o.with_from_key(),
        };
        if self.prev_kv {
            o = o.with_prev_key();
        }
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(WatchFilterType::NoPut);
        }
        if self.no_delete {
            filters.push(WatchFilterType::NoDelete);
        }
        if !filters.is_empty() {
            o = o.with_filters(filters);
        }
        if self.progress_notify {
            o = o.with_progress_notify();
        }
        o
    }

    fn random(rng: &mut Rng, name: String, home: usize, start: i64) -> Spec {
        let range = match rng.below(10) {
            0..=2 => Range::Key(key(rng.below(KEYS))),
            3..=4 => Range::Prefix("m/".into()),
            5..=7 => {
                let a = rng.below(KEYS - 1);
                let b = rng.between(a as i64 + 1, KEYS as i64) as usize;
                Range::Between(key(a), key(b))
            }
            8 => Range::From(key(rng.below(KEYS))),
            _ => Range::All,
        };
        let filter = rng.below(10);
        Spec {
            name,
            home,
            range,
            start,
            prev_kv: rng.percent(50),
            no_put: filter == 0,
            no_delete: filter == 1,
            progress_notify: rng.percent(30),
            must_cancel: None,
        }
    }
}

/// One received event.
#[derive(Clone, Debug)]
struct Got {
    ev: Ev,
    prev: Option<Kv>,
    /// Which response (per watcher) carried it.
    response: u64,
}

/// What a watcher task recorded.
#[derive(Debug, Default)]
struct WState {
    /// The first revision it watches: its start, or for start 0 the
    /// created response's header revision + 1.
    effective_start: Option<i64>,
    /// The revision to resume from.
    resume_at: Option<i64>,
    events: Vec<Got>,
    responses: u64,
    /// Holes announced by compaction cancels: `[from, to)`.
    gaps: Vec<(i64, i64)>,
    /// Compaction cancels: (revision asked for, `compact_revision`).
    compacted: Vec<(i64, i64)>,
    /// Highest progress notification revision.
    max_progress: i64,
    progress: u64,
    streams: u64,
    members: BTreeSet<usize>,
    drops: u64,
    cancels: u64,
    violations: Vec<String>,
    /// Stopped after a violation that would otherwise loop.
    stuck: bool,
}

/// Requests to a watcher task.
#[derive(Default)]
struct Ctl {
    stop: AtomicBool,
    /// 1: drop the stream; 2: cancel the watch.
    disrupt: AtomicU8,
}

struct WatcherHandle {
    spec: Spec,
    state: Arc<Mutex<WState>>,
    ctl: Arc<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WatcherHandle {
    fn start(spec: Spec, endpoints: Vec<String>, rng: Rng) -> WatcherHandle {
        let state = Arc::new(Mutex::new(WState::default()));
        let ctl = Arc::new(Ctl::default());
        let task = tokio::spawn(run_watcher(
            spec.clone(),
            endpoints,
            state.clone(),
            ctl.clone(),
            rng,
        ));
        WatcherHandle {
            spec,
            state,
            ctl,
            task,
        }
    }

    fn resume_at(&self) -> Option<i64> {
        self.state.lock().unwrap().resume_at
    }
}

enum Next {
    Continue,
    Reconnect,
    Stop,
}

/// One watcher: opens a stream (first on its home member, then on random
/// ones), records what arrives, asks for progress, obeys disruptions, and
/// resumes after any end of the stream.
async fn run_watcher(
    spec: Spec,
    endpoints: Vec<String>,
    st: Arc<Mutex<WState>>,
    ctl: Arc<Ctl>,
    mut rng: Rng,
) {
    let mut member = spec.home;
    loop {
        if ctl.stop.load(Ordering::Relaxed) {
            return;
        }
        let next = st.lock().unwrap().resume_at.unwrap_or(spec.start);
        let attempt = member;
        member = rng.below(endpoints.len());
        let Ok(mut c) = connect_one(&endpoints[attempt], false).await else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        let Ok(ws) = timed(
            CLIENT_TIMEOUT,
            c.watch(spec.key(), Some(spec.options(next))),
        )
        .await
        else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        {
            let mut s = st.lock().unwrap();
            s.streams += 1;
            s.members.insert(attempt);
        }
        let mut stream = StreamState {
            next,
            watch_id: None,
            floor: 0,
            last_event: 0,
            cancel_sent: false,
        };
        let mut tick = tokio::time::Instant::now() + rng.millis(50, 300);
        let outcome = loop {
            tokio::select! {
                m = rx.message() => match m {
                    Ok(Some(resp)) => match stream.handle(&spec, &st, resp) {
                        Next::Continue => {}
                        other => break other,
                    },
                    // An error or the end: resume elsewhere.
                    _ => break Next::Reconnect,
                },
                _ = tokio::time::sleep_until(tick) => {
                    tick = tokio::time::Instant::now() + rng.millis(100, 400);
                    if ctl.stop.load(Ordering::Relaxed) {
                        break Next::Stop;
                    }
                    match ctl.disrupt.swap(0, Ordering::Relaxed) {
                        1 => {
                            st.lock().unwrap().drops += 1;
                            break Next::Reconnect;
                        }
                        2 => {
                            if let Some(id) = stream.watch_id.filter(|_| !stream.cancel_sent) {
                                if tx.cancel(id).await.is_err() {
                                    break Next::Reconnect;
                                }
                                stream.cancel_sent = true;
                                st.lock().unwrap().cancels += 1;
                            }
                        }
                        _ => {}
                    }
                    if stream.watch_id.is_some()
                        && !stream.cancel_sent
                        && tx.request_progress().await.is_err()
                    {
                        break Next::Reconnect;
                    }
                }
            }
        };
        drop((tx, rx, c));
        match outcome {
            Next::Stop => return,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The state of one stream of a watcher.
struct StreamState {
    /// The start revision asked for.
    next: i64,
    watch_id: Option<i64>,
    /// Highest progress revision on this stream: later events are newer.
    floor: i64,
    /// Highest event revision on this stream.
    last_event: i64,
    cancel_sent: bool,
}

impl StreamState {
    fn handle(
        &mut self,
        spec: &Spec,
        st: &Mutex<WState>,
        resp: ballast_e2e::etcd_client::WatchResponse,
    ) -> Next {
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut s = st.lock().unwrap();
        if resp.created() && !resp.canceled() {
            self.watch_id = Some(resp.watch_id());
            if rev <= 0 {
                s.violations
                    .push(format!("created response with header revision {rev}"));
            }
            if s.resume_at.is_none() {
                let eff = if self.next == 0 { rev + 1 } else { self.next };
                s.effective_start = Some(eff);
                s.resume_at = Some(eff);
            }
            return Next::Continue;
        }
        if resp.canceled() {
            let cr = resp.compact_revision();
            if cr > 0 {
                let at = s.resume_at.unwrap_or(self.next);
                s.compacted.push((at, cr));
                if cr <= at {
                    s.violations.push(format!(
                        "a watch from {at} was canceled with compact_revision {cr}: \
                         restarting from compact_revision cannot make progress"
                    ));
                    s.stuck = true;
                    return Next::Stop;
                }
                s.gaps.push((at, cr));
                s.resume_at = Some(cr);
            } else if resp.created() {
                s.violations.push(format!(
                    "watch from {} refused: {:?}",
                    self.next,
                    resp.cancel_reason()
                ));
            } else if !self.cancel_sent {
                s.violations.push(format!(
                    "canceled without being asked: {:?}",
                    resp.cancel_reason()
                ));
            }
            return Next::Reconnect;
        }
        if resp.events().is_empty() {
            s.progress += 1;
            if rev <= 0 {
                s.violations
                    .push(format!("progress notification with revision {rev}"));
            }
            if rev < self.last_event {
                s.violations.push(format!(
                    "progress notification at {rev} after an event at {}",
                    self.last_event
                ));
            }
            self.floor = self.floor.max(rev);
            s.max_progress = s.max_progress.max(rev);
            if let Some(r) = s.resume_at {
                s.resume_at = Some(r.max(rev + 1));
            }
            return Next::Continue;
        }
        s.responses += 1;
        let response = s.responses;
        let mut max = 0;
        for e in resp.events() {
            let Some(kv) = e.kv() else {
                s.violations.push("an event without kv".into());
                continue;
            };
            let ev = Ev {
                put: e.event_type() == EventType::Put,
                kv: Kv::of(kv),
            };
            let r = ev.kv.modr;
            if r <= self.floor {
                s.violations.push(format!(
                    "event at {r} after a progress notification at {}",
                    self.floor
                ));
            }
            if !spec.prev_kv && e.prev_kv().is_some() {
                s.violations.push(format!("prev_kv not asked for at {r}"));
            }
            max = max.max(r);
            s.events.push(Got {
                ev,
                prev: e.prev_kv().map(Kv::of),
                response,
            });
        }
        self.last_event = self.last_event.max(max);
        if let Some(r) = s.resume_at {
            s.resume_at = Some(r.max(max + 1));
        }
        Next::Continue
    }
}

// ---------------------------------------------------------------------------
// The test

/// The store revision as `endpoint` reports it (serializable read).
async fn revision_of(endpoint: &str) -> Result<i64, String> {
    let mut c = connect_one(endpoint, false).await?;
    let r = timed(
        CLIENT_TIMEOUT,
        c.get("m/", Some(GetOptions::new().with_serializable())),
    )
    .await?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// The run's watchers and what starts them.
struct Watchers {
    endpoints: Vec<String>,
    rng: Rng,
    list: Vec<WatcherHandle>,
    ctls: Arc<Mutex<Vec<Arc<Ctl>>>>,
}

impl Watchers {
    fn add(&mut self, spec: Spec) {
        let w = WatcherHandle::start(spec, self.endpoints.clone(), self.rng.fork());
        self.ctls.lock().unwrap().push(w.ctl.clone());
        self.list.push(w);
    }

    /// A random watcher on `home` from `start`.
    fn random(&mut self, home: usize, start: i64, why: &str) {
        let name = format!("w{}-{why}", self.list.len());
        let spec = Spec::random(&mut self.rng, name, home, start);
        self.add(spec);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_every_member_see_exactly_the_committed_history() {
    let seed = seed();
    eprintln!("BALLAST_TEST_SEED={seed}");
    let t0 = Instant::now();
    let mut rng = Rng(seed);
    let mut cluster = Cluster::start(
        ClusterOpts::size(3).args(&["--experimental-watch-progress-notify-interval=300ms"]),
    )
    .await;
    let all = cluster.all();
    let n = all.len();
    let endpoints = cluster.endpoints(&all);
    let mut ws = Watchers {
        endpoints: endpoints.clone(),
        rng: rng.fork(),
        list: Vec::new(),
        ctls: Arc::new(Mutex::new(Vec::new())),
    };

    // The reference: every key from revision 1, before any compaction.
    ws.add(Spec {
        name: "reference".into(),
        home: rng.below(n),
        range: Range::All,
        start: 1,
        prev_kv: false,
        no_put: false,
        no_delete: false,
        progress_notify: false,
        must_cancel: None,
    });
    // Two watchers per member: from now, from revision 1, or the future.
    for m in 0..n {
        for _ in 0..2 {
            let start = match rng.below(3) {
                0 => 0,
                1 => 1,
                _ => rng.between(5, 60),
            };
            ws.random(m, start, "initial");
        }
    }

    let load = Load::start(&endpoints, &mut rng);
    load.more(100).await;

    // Watchers replaying recent history (from the hubs' caches).
    for (m, e) in endpoints.iter().enumerate() {
        let cur = revision_of(e).await.expect("revision");
        ws.random(m, rng.between(1, cur), "past");
    }

    // Disruptions: now and then a watcher drops its stream or cancels its
    // watch, and resumes.
    let disrupting = Arc::new(AtomicBool::new(true));
    let disruptor = {
        let (ctls, on, mut rng) = (ws.ctls.clone(), disrupting.clone(), rng.fork());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(100, 300)).await;
                let ctls = ctls.lock().unwrap().clone();
                let c = &ctls[rng.below(ctls.len())];
                c.disrupt.store(1 + rng.below(2) as u8, Ordering::Relaxed);
            }
        })
    };

    // Fault 1: SIGKILL the leader, then restart it.
    let old = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    cluster.member_mut(old.index).kill9();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != old.index).collect();
    let new = cluster.wait_leader(&rest, FAILOVER).await;
    eprintln!(
        "leader {} killed; {} leads (term {}) after {:?}",
        cluster.member(old.index).name(),
        cluster.member(new.index).name(),
        new.term,
        t0.elapsed()
    );
    load.more(80).await;
    cluster.member_mut(old.index).restart().await;
    load.more(80).await;
    // Replays from disk on the restarted member (its cache is empty).
    let cur = revision_of(&endpoints[old.index]).await.expect("revision");
    ws.random(old.index, 1, "disk");
    ws.random(old.index, rng.between(1, cur), "disk");

    // Fault 2: compact while watchers replay. The compaction point is a
    // revision the reference has already received, so it is not canceled.
    let compact_at = ws.list[0].resume_at().expect("reference created") - 1;
    assert!(compact_at > 10, "too little history: {compact_at}");
    for m in 0..n {
        ws.random(m, 1, "replaying");
    }
    let via = endpoints[rng.below(n)].clone();
    wait_until("the compaction", WORK, || async {
        let mut c = connect_one(&via, false).await?;
        match timed(CLIENT_TIMEOUT, c.compact(compact_at, None)).await {
            // An earlier attempt that got no answer may have done it.
            Err(e) if !e.contains("required revision has been compacted") => Err(e),
            _ => Ok(()),
        }
    })
    .await;
    wait_until("every member compacted", WORK, || async {
        for e in &endpoints {
            let h = hash_kv_of(e).await?;
            if h.compact_revision != compact_at {
                return Err(format!("{e}: compaction point {}", h.compact_revision));
            }
        }
        Ok(())
    })
    .await;
    eprintln!("compacted at {compact_at} after {:?}", t0.elapsed());
    // From before the compaction point: canceled, then resumed from
    // compact_revision. Exactly at it: served.
    for m in 0..n {
        let start = rng.between(1, compact_at - 1);
        let mut spec = Spec::random(&mut rng, format!("w{}-compacted", ws.list.len()), m, start);
        spec.must_cancel = Some(compact_at);
        ws.add(spec);
    }
    ws.random(rng.below(n), compact_at, "at-compaction");
    load.more(80).await;

    // Fault 3: stop a follower with SIGTERM and start it again.
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let follower = *all
        .iter()
        .filter(|&&i| i != leader.index)
        .nth(rng.below(n - 1))
        .expect("a follower");
    let status = cluster.member_mut(follower).terminate();
    eprintln!(
        "follower {} stopped ({status}) after {:?}",
        cluster.member(follower).name(),
        t0.elapsed()
    );
    load.more(60).await;
    cluster.member_mut(follower).restart().await;
    // On the restarted member: exactly at the compaction point (its
    // capture of that revision is gone), and right after it.
    ws.random(follower, compact_at, "restarted-at-compaction");
    ws.random(follower, compact_at + 1, "restarted");
    load.more(100).await;

    disrupting.store(false, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), disruptor).await;
    let ops = load.stop().await;
    cluster.wait_converged(&all, CLUSTER_TIMEOUT).await;
    let mut c = cluster.member(rng.below(n)).connect(false).await;
    let fin = timed(
        CLIENT_TIMEOUT,
        c.get("m/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("final read");
    let final_rev = fin.header().expect("header").revision();
    let final_state: State = fin
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), Kv::of(kv)))
        .collect();

    // Every watcher confirms, by a progress notification, that it has
    // everything up to the final revision.
    wait_until(
        &format!("every watcher reaches revision {final_rev}"),
        WORK,
        || async {
            for w in &ws.list {
                let s = w.state.lock().unwrap();
                if s.max_progress < final_rev && !s.stuck {
                    return Err(format!(
                        "{}: progress {}, resume at {:?}, {} streams",
                        w.spec.name, s.max_progress, s.resume_at, s.streams
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    for w in &ws.list {
        w.ctl.stop.store(true, Ordering::Relaxed);
    }
    let run_time = t0.elapsed();

    // ---- The committed history, checked against the model.
    let mut history: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    {
        let reference = ws.list[0].state.lock().unwrap();
        for g in reference
            .events
            .iter()
            .filter(|g| g.ev.kv.modr <= final_rev)
        {
            history.entry(g.ev.kv.modr).or_default().push(g.ev.clone());
        }
        assert!(
            reference.violations.is_empty() && reference.compacted.is_empty(),
            "seed {seed}: reference watcher: {:?}, compacted {:?}",
            reference.violations,
            reference.compacted
        );
    }
    let missing: Vec<i64> = (2..=final_rev)
        .filter(|r| !history.contains_key(r))
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: the reference history lacks revisions {missing:?} of 2..={final_rev}"
    );

    let mut acked_at: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut unknown: BTreeSet<usize> = BTreeSet::new();
    for (i, o) in ops.iter().enumerate() {
        match &o.outcome {
            Outcome::Acked { rev, .. } => acked_at.entry(*rev).or_default().push(i),
            Outcome::Unknown(_) => {
                unknown.insert(i);
            }
        }
    }
    let mut state = State::new();
    // prev_kv the model expects for each (revision, key).
    let mut prev_of: HashMap<(i64, String), Option<Kv>> = HashMap::new();
    let mut applied_unknown = 0;
    let mut multi_event_revs = 0;
    let empty = Vec::new();
    for (&rev, evs) in &history {
        let got: Vec<Effect> = evs
            .iter()
            .map(|e| (e.put, e.kv.key.clone(), e.put.then(|| e.kv.value.clone())))
            .collect();
        // Exactly one write made this revision: the acknowledged one that
        // changed something, else one with an unknown outcome.
        let claims: Vec<usize> = acked_at
            .get(&rev)
            .unwrap_or(&empty)
            .iter()
            .copied()
            .filter(|&i| matches!(ops[i].outcome, Outcome::Acked { changed: true, .. }))
            .collect();
        assert!(
            claims.len() <= 1,
            "seed {seed}: revision {rev} acknowledged to several writes: {:?}",
            claims.iter().map(|&i| &ops[i]).collect::<Vec<_>>()
        );
        if let Some(&i) = claims.first() {
            let (ok, want) = ops[i].op.effects(&state);
            let Outcome::Acked { succeeded, .. } = ops[i].outcome else {
                unreachable!()
            };
            assert_eq!(
                (got.clone(), succeeded),
                (want, ok),
                "seed {seed}: revision {rev} vs the write acknowledged with it: {:?}",
                ops[i]
            );
        } else {
            let found = unknown
                .iter()
                .copied()
                .find(|&i| ops[i].op.effects(&state).1 == got);
            let Some(i) = found else {
                panic!(
                    "seed {seed}: revision {rev} {got:?} is no write's effect (state {state:?})"
                );
            };
            unknown.remove(&i);
            applied_unknown += 1;
        }
        if evs.len() > 1 {
            multi_event_revs += 1;
        }
        // Versions and create revisions follow from the previous state.
        for e in evs {
            let k = &e.kv.key;
            prev_of.insert((rev, k.clone()), state.get(k).cloned());
            assert_eq!(e.kv.modr, rev, "seed {seed}: {e:?}");
            if e.put {
                let (create, version) =
                    state.get(k).map_or((rev, 1), |p| (p.create, p.version + 1));
                assert_eq!(
                    (e.kv.create, e.kv.version, e.kv.lease),
                    (create, version, 0),
                    "seed {seed}: create revision/version/lease of {e:?}"
                );
                state.insert(k.clone(), e.kv.clone());
            } else {
                assert!(
                    state.remove(k).is_some(),
                    "seed {seed}: DELETE of absent {k} at {rev}"
                );
            }
        }
        // Acknowledged writes that changed nothing read this state.
        for &i in acked_at.get(&rev).unwrap_or(&empty) {
            if let Outcome::Acked {
                changed: false,
                succeeded,
                ..
            } = ops[i].outcome
            {
                let (ok, want) = ops[i].op.effects(&state);
                assert!(
                    want.is_empty() && ok == succeeded,
                    "seed {seed}: {:?} changed nothing at {rev}, but the model says {want:?} (branch {ok})",
                    ops[i]
                );
            }
        }
    }
    for (rev, is) in acked_at.range(final_rev + 1..) {
        for &i in is {
            if matches!(ops[i].outcome, Outcome::Acked { changed: true, .. }) {
                panic!(
                    "seed {seed}: {:?} acknowledged at {rev}, after the final revision {final_rev}",
                    ops[i]
                );
            }
        }
    }
    assert_eq!(
        state, final_state,
        "seed {seed}: the replayed history differs from the final read"
    );

    // ---- Every watcher against the history.
    let mut checked = 0usize;
    let mut streams = 0;
    let mut progress = 0;
    let mut compaction_cancels = 0;
    let mut members_used = BTreeSet::new();
    let mut problems = Vec::new();
    for w in &ws.list {
        let s = w.state.lock().unwrap();
        let name = &w.spec.name;
        streams += s.streams;
        progress += s.progress;
        compaction_cancels += s.compacted.len();
        members_used.extend(s.members.iter().copied());
        for v in &s.violations {
            problems.push(format!("{name}: {v}"));
        }
        if let Some(c) = w.spec.must_cancel {
            if s.compacted.first().map(|(at, _)| *at) != Some(w.spec.start) {
                problems.push(format!(
                    "{name}: from {} after the compaction at {c}, not canceled first: {:?}",
                    w.spec.start, s.compacted
                ));
            }
        }
        // The compaction point, or the revision after it on a member that
        // no longer holds the compaction point's events (restarted).
        for &(at, cr) in &s.compacted {
            if cr != compact_at && cr != compact_at + 1 {
                problems.push(format!(
                    "{name}: canceled at {at} with compact_revision {cr} (compacted at {compact_at})"
                ));
            }
        }
        let Some(start) = s.effective_start else {
            problems.push(format!("{name}: never created"));
            continue;
        };
        let in_gap = |r: i64| s.gaps.iter().any(|&(a, b)| a <= r && r < b);
        let want: Vec<&Ev> = history
            .range(start..)
            .filter(|(r, _)| !in_gap(**r))
            .flat_map(|(_, evs)| evs.iter())
            .filter(|e| w.spec.wants(e))
            .collect();
        let got: Vec<&Got> = s
            .events
            .iter()
            .filter(|g| g.ev.kv.modr <= final_rev)
            .collect();
        let got_evs: Vec<&Ev> = got.iter().map(|g| &g.ev).collect();
        if got_evs != want {
            let i = got_evs
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got_evs.len().min(want.len()));
            problems.push(format!(
                "{name} ({:?}, from {start}, gaps {:?}): {} events received, {} expected; \
                 first difference at #{i}: received {:?}, expected {:?}",
                w.spec,
                s.gaps,
                got_evs.len(),
                want.len(),
                got_evs.get(i),
                want.get(i)
            ));
            continue;
        }
        checked += got.len();
        // One response per revision.
        let mut response_of: BTreeMap<i64, u64> = BTreeMap::new();
        for g in &got {
            let r = *response_of.entry(g.ev.kv.modr).or_insert(g.response);
            if r != g.response {
                problems.push(format!(
                    "{name}: the events of revision {} came in several responses",
                    g.ev.kv.modr
                ));
                break;
            }
        }
        if w.spec.prev_kv {
            for g in &got {
                let want = &prev_of[&(g.ev.kv.modr, g.ev.kv.key.clone())];
                let ok = match (&g.prev, want) {
                    (Some(p), Some(w)) => p == w,
                    (None, None) => true,
                    // Its version was compacted away.
                    (None, Some(_)) => g.ev.kv.modr - 1 < compact_at,
                    (Some(_), None) => false,
                };
                if !ok {
                    problems.push(format!(
                        "{name}: prev_kv of {:?} is {:?}, expected {want:?}",
                        g.ev, g.prev
                    ));
                    break;
                }
            }
        }
    }
    let unknown_ops = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
        .count();
    let mut per_member = vec![0usize; n];
    let mut per_writer = vec![0usize; WRITERS];
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &ops {
        per_member[o.member] += 1;
        per_writer[o.writer] += 1;
        if let Outcome::Unknown(e) = &o.outcome {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    eprintln!("write errors: {errors:?}");
    eprintln!(
        "seed {seed}: {} writes (per member {per_member:?}, per writer {per_writer:?}; \
         {unknown_ops} unknown, {applied_unknown} of them applied), \
         {} revisions ({multi_event_revs} with several events), {} watchers, {checked} events \
         checked, {streams} streams on members {members_used:?}, {compaction_cancels} \
         compaction cancels, {progress} progress notifications; run {run_time:?}, total {:?}",
        ops.len(),
        history.len(),
        ws.list.len(),
        t0.elapsed()
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The run exercised what it is meant to.
    assert_eq!(members_used.len(), n, "streams on every member");
    assert!(
        compaction_cancels >= n,
        "compaction cancels: {compaction_cancels}"
    );
    assert!(multi_event_revs > 0, "no revision with several events");
    assert!(progress > 0, "no progress notification");
    assert!(
        ws.list
            .iter()
            .map(|w| w.state.lock().unwrap().streams)
            .sum::<u64>()
            > ws.list.len() as u64 * 2,
        "too few resumptions"
    );
}
