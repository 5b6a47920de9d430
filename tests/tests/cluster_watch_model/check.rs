//! The checks at the end of the run: the committed history against the
//! model of the writes, then every watcher against that history.

use super::*;

/// The committed history and what the model derived from it.
pub(crate) struct Committed {
    /// The events of each revision, 2 to the final one.
    pub(crate) history: BTreeMap<i64, Vec<Ev>>,
    /// The `prev_kv` the model expects for each (revision, key).
    pub(crate) prev_of: HashMap<(i64, String), Option<Kv>>,
    /// Writes of unknown outcome that turned out applied.
    pub(crate) applied_unknown: usize,
    /// Revisions with several events (transactions).
    pub(crate) multi_event_revs: usize,
}

/// Checks the history that the `reference` watcher (every key, from the
/// first revision) received against the writes `ops`: every revision is
/// the effect of exactly one write, acknowledged writes sit at their
/// revision with the branch the model predicts, versions and create
/// revisions are consistent, and the replayed state equals `final_state`.
/// Panics on a violation.
pub(crate) fn committed_history(
    seed: u64,
    reference: &WatcherHandle,
    ops: &[OpRec],
    final_rev: i64,
    final_state: &State,
) -> Committed {
    let mut history: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    {
        let reference = reference.state.lock().unwrap();
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
        &state, final_state,
        "seed {seed}: the replayed history differs from the final read"
    );
    Committed {
        history,
        prev_of,
        applied_unknown,
        multi_event_revs,
    }
}

/// What the watchers did, and what was wrong with it.
pub(crate) struct WatchTally {
    /// Events checked.
    pub(crate) checked: usize,
    /// Streams opened.
    pub(crate) streams: u64,
    /// Progress notifications received.
    pub(crate) progress: u64,
    /// Watches canceled by the compaction.
    pub(crate) compaction_cancels: usize,
    /// Members that served a stream.
    pub(crate) members_used: BTreeSet<usize>,
    /// Violations, one line each.
    pub(crate) problems: Vec<String>,
}

/// Checks every watcher in `list` against the committed history `c`:
/// exactly its slice (holes only where a compaction cancel said so), each
/// revision in one response, `prev_kv` as the model says.
pub(crate) fn watchers(
    list: &[WatcherHandle],
    c: &Committed,
    final_rev: i64,
    compact_at: i64,
) -> WatchTally {
    let mut checked = 0usize;
    let mut streams = 0;
    let mut progress = 0;
    let mut compaction_cancels = 0;
    let mut members_used = BTreeSet::new();
    let mut problems = Vec::new();
    for w in list {
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
        let want: Vec<&Ev> = c
            .history
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
                let want = &c.prev_of[&(g.ev.kv.modr, g.ev.kv.key.clone())];
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
    WatchTally {
        checked,
        streams,
        progress,
        compaction_cancels,
        members_used,
        problems,
    }
}
