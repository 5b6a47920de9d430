//! The watchers: their specs, streams, resumption and what they received.

use super::*;

#[derive(Clone, Debug)]
pub(crate) enum Range {
    All,
    Key(String),
    Prefix(String),
    /// `[from, to)`.
    Between(String, String),
    From(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) name: String,
    /// The member of the first stream.
    pub(crate) home: usize,
    pub(crate) range: Range,
    /// 0 = now.
    pub(crate) start: i64,
    pub(crate) prev_kv: bool,
    pub(crate) no_put: bool,
    pub(crate) no_delete: bool,
    pub(crate) progress_notify: bool,
    /// Created after every member compacted at this revision, from before
    /// it: its first stream must be canceled as compacted.
    pub(crate) must_cancel: Option<i64>,
}

impl Spec {
    pub(crate) fn contains(&self, k: &str) -> bool {
        match &self.range {
            Range::All => true,
            Range::Key(x) => k == x,
            Range::Prefix(p) => k.starts_with(p.as_str()),
            Range::Between(a, b) => a.as_str() <= k && k < b.as_str(),
            Range::From(a) => a.as_str() <= k,
        }
    }

    pub(crate) fn wants(&self, ev: &Ev) -> bool {
        self.contains(&ev.kv.key) && !(ev.put && self.no_put || !ev.put && self.no_delete)
    }

    pub(crate) fn key(&self) -> String {
        match &self.range {
            Range::All => String::new(),
            Range::Key(k) | Range::Prefix(k) | Range::Between(k, _) | Range::From(k) => k.clone(),
        }
    }

    pub(crate) fn options(&self, start: i64) -> WatchOptions {
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

    pub(crate) fn random(rng: &mut Rng, name: String, home: usize, start: i64) -> Spec {
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
pub(crate) struct Got {
    pub(crate) ev: Ev,
    pub(crate) prev: Option<Kv>,
    /// Which response (per watcher) carried it.
    pub(crate) response: u64,
}

/// What a watcher task recorded.
#[derive(Debug, Default)]
pub(crate) struct WState {
    /// The first revision it watches: its start, or for start 0 the
    /// created response's header revision + 1.
    pub(crate) effective_start: Option<i64>,
    /// The revision to resume from.
    pub(crate) resume_at: Option<i64>,
    pub(crate) events: Vec<Got>,
    pub(crate) responses: u64,
    /// Holes announced by compaction cancels: `[from, to)`.
    pub(crate) gaps: Vec<(i64, i64)>,
    /// Compaction cancels: (revision asked for, `compact_revision`).
    pub(crate) compacted: Vec<(i64, i64)>,
    /// Highest progress notification revision.
    pub(crate) max_progress: i64,
    pub(crate) progress: u64,
    pub(crate) streams: u64,
    pub(crate) members: BTreeSet<usize>,
    pub(crate) drops: u64,
    pub(crate) cancels: u64,
    pub(crate) violations: Vec<String>,
    /// Stopped after a violation that would otherwise loop.
    pub(crate) stuck: bool,
}

/// Requests to a watcher task.
#[derive(Default)]
pub(crate) struct Ctl {
    pub(crate) stop: AtomicBool,
    /// 1: drop the stream; 2: cancel the watch.
    pub(crate) disrupt: AtomicU8,
}

pub(crate) struct WatcherHandle {
    pub(crate) spec: Spec,
    pub(crate) state: Arc<Mutex<WState>>,
    pub(crate) ctl: Arc<Ctl>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WatcherHandle {
    pub(crate) fn start(spec: Spec, endpoints: Vec<String>, rng: Rng) -> WatcherHandle {
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

    pub(crate) fn resume_at(&self) -> Option<i64> {
        self.state.lock().unwrap().resume_at
    }
}

pub(crate) enum Next {
    Continue,
    Reconnect,
    Stop,
}

/// One watcher: opens a stream (first on its home member, then on random
/// ones), records what arrives, asks for progress, obeys disruptions, and
/// resumes after any end of the stream.
pub(crate) async fn run_watcher(
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
pub(crate) struct StreamState {
    /// The start revision asked for.
    pub(crate) next: i64,
    pub(crate) watch_id: Option<i64>,
    /// Highest progress revision on this stream: later events are newer.
    pub(crate) floor: i64,
    /// Highest event revision on this stream.
    pub(crate) last_event: i64,
    pub(crate) cancel_sent: bool,
}

impl StreamState {
    pub(crate) fn handle(
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
