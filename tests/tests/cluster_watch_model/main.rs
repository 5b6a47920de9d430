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

mod check;
mod load;
mod model;
mod watcher;

use load::*;
use model::*;
use watcher::*;

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

    // ---- The committed history, checked against the model; then every
    // watcher against it.
    let committed = check::committed_history(seed, &ws.list[0], &ops, final_rev, &final_state);
    let tally = check::watchers(&ws.list, &committed, final_rev, compact_at);
    let (applied_unknown, multi_event_revs, history) = (
        committed.applied_unknown,
        committed.multi_event_revs,
        &committed.history,
    );
    let check::WatchTally {
        checked,
        streams,
        progress,
        compaction_cancels,
        members_used,
        problems,
    } = tally;
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
