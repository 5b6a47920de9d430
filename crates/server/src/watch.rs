//! The etcd v3 Watch service: one bidirectional stream carries any number
//! of watchers, created, canceled and asked for progress by the client.
//!
//! Each gRPC stream owns one engine [`WatchStream`], whose ordered queue
//! holds everything the engine produces for it (created, events, progress,
//! canceled); two tasks serve it, as etcd's `recvLoop`/`sendLoop`:
//! - the receiving task turns requests into engine calls; the answers to
//!   refused create requests (a negative start revision, a duplicate watch
//!   ID, an empty range) go through the same queue, so every create request
//!   is answered in order (etcd's Go client matches them by order);
//! - the sending task drains the engine queue (filling `prev_kv` on a
//!   blocking thread), splits large responses into fragments for watchers
//!   that asked for it, sends etcd's periodic per-watcher progress
//!   notifications, and with `hasleader: true` ends the stream with `no
//!   leader` after three election timeouts without one (etcd's
//!   `monitorLeader`).
//!
//! A slow client never blocks writers: when it does not read, the sending
//! task waits, the engine queue fills to its bounds, and the watchers fall
//! back to catching up from history later. When the stream ends, its
//! watchers are removed.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast_mvcc::{MessageKind, WatchHub, WatchMessage, WatchOptions, WatchStream};
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::watch_server::Watch;
use ballast_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ballast_proto::mvccpb::Event;
use ballast_raft::RaftNode;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::EtcdError;
use crate::kv::HeaderInfo;

/// etcd's default `--experimental-watch-progress-notify-interval`.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// etcd's smallest progress notify interval; shorter ones are raised to it.
pub const MIN_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);
/// Responses buffered towards the gRPC stream.
const SEND_BUFFER: usize = 16;
/// Engine messages taken per blocking call.
const DRAIN_BATCH: usize = 64;
/// Election timeouts without a leader after which a `hasleader` stream ends.
const NO_LEADER_CHECKS: u32 = 3;
/// With the `drop-watch-event` fault on (`BALLAST_FAULTS`, builds with
/// the `fault-injection` feature only), the ordinal, counted from 1 over
/// every watch stream of the process, of the one event that is never sent:
/// late enough that a test's watchers are open, early enough that any run
/// with a few writes reaches it. A response left empty is not sent.
pub const DROPPED_WATCH_EVENT: u64 = 50;
/// Events counted towards [`DROPPED_WATCH_EVENT`] (only with the fault on).
static WATCH_EVENTS_SENT: AtomicU64 = AtomicU64::new(0);

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal
/// numbers, each with an optional fraction and a unit among `ns`, `us`
/// (`µs`), `ms`, `s`, `m`, `h`, e.g. `10m`, `1.5s`, `1h30m`, `100ms`; `0`
/// alone is allowed. Returns nanoseconds (negative for a leading `-`).
///
/// # Errors
/// A message naming the input if it is not a Go duration.
pub fn parse_go_duration(input: &str) -> Result<i128, String> {
    let bad = || format!("invalid duration {input:?}");
    let (neg, mut s) = match input.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, input.strip_prefix('+').unwrap_or(input)),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        let n = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, rest) = s.split_at(n);
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(u);
        s = rest;
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {input:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {input:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let int: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        total = total
            .checked_add(int.checked_mul(scale).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        // The fraction, truncated to whole nanoseconds as Go does.
        let mut f: i128 = 0;
        let mut div: i128 = 1;
        for d in frac.bytes().take(30) {
            f = f * 10 + i128::from(d - b'0');
            div *= 10;
        }
        total += f * scale / div;
        if total > i128::from(i64::MAX) {
            return Err(bad());
        }
    }
    Ok(if neg { -total } else { total })
}

/// The progress notify interval from the flag's value, as etcd applies
/// it: zero or negative keeps the default (10 minutes), less than 100 ms
/// is raised to 100 ms.
///
/// # Errors
/// The value is not a Go duration.
pub fn progress_notify_interval(flag: &str) -> Result<Duration, String> {
    let ns = parse_go_duration(flag)?;
    if ns <= 0 {
        return Ok(DEFAULT_PROGRESS_NOTIFY_INTERVAL);
    }
    let d = Duration::from_nanos(ns as u64);
    if d < MIN_PROGRESS_NOTIFY_INTERVAL {
        tracing::warn!(
            requested = ?d,
            minimum = ?MIN_PROGRESS_NOTIFY_INTERVAL,
            "adjusting the watch progress notify interval to the minimum"
        );
        return Ok(MIN_PROGRESS_NOTIFY_INTERVAL);
    }
    Ok(d)
}

/// The Watch service over the engine's [`WatchHub`].
pub struct WatchService {
    hub: WatchHub,
    header: HeaderInfo,
    node: Arc<RaftNode>,
    progress_interval: Duration,
    /// Responses of fragmenting watchers are split below this size
    /// (`--max-request-bytes` plus gRPC overhead, as etcd).
    fragment_bytes: usize,
    election_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl WatchService {
    /// A Watch service; every stream ends when `stop` becomes true.
    pub fn new(
        hub: WatchHub,
        node: Arc<RaftNode>,
        progress_interval: Duration,
        fragment_bytes: usize,
        election_timeout: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        WatchService {
            hub,
            header: HeaderInfo::new(node.clone()),
            node,
            progress_interval,
            fragment_bytes,
            election_timeout,
            stop,
        }
    }
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        let session = Session {
            stream: Arc::new(self.hub.stream_with_waker(move || waker.notify_one())),
            header: self.header.clone(),
            node: self.node.clone(),
            progress: Arc::new(Mutex::new(HashMap::new())),
            progress_interval: self.progress_interval,
            fragment_bytes: self.fragment_bytes,
            election_timeout: self.election_timeout,
            require_leader,
        };
        tokio::spawn(session.run(inbound, tx, wake, self.stop.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One client stream.
struct Session {
    stream: Arc<WatchStream>,
    header: HeaderInfo,
    node: Arc<RaftNode>,
    /// etcd's `progress` map: watch ID → whether a progress notification
    /// is due at the next tick (false once events were sent meanwhile).
    progress: Arc<Mutex<HashMap<i64, bool>>>,
    progress_interval: Duration,
    fragment_bytes: usize,
    election_timeout: Duration,
    require_leader: bool,
}

type Outbound = mpsc::Sender<Result<WatchResponse, Status>>;

fn header(info: &HeaderInfo, revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: info.cluster_id,
        member_id: info.member_id,
        revision,
        raft_term: info.raft_term(),
    })
}

impl Session {
    async fn run(
        self,
        inbound: Streaming<WatchRequest>,
        tx: Outbound,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let recv = tokio::spawn(receive(inbound, self.stream.clone(), self.progress.clone()));
        let res = self.send_loop(&tx, &wake, recv, &mut stop).await;
        if let Err(status) = res {
            let _ = tx.send(Err(status)).await;
        }
        // Dropping the last handle of the engine stream removes its watchers.
    }

    async fn send_loop(
        &self,
        tx: &Outbound,
        wake: &Notify,
        mut recv: tokio::task::JoinHandle<Result<(), Status>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Status> {
        let mut recv_done = false;
        let period = jittered(self.progress_interval);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check = self.election_timeout.max(Duration::from_millis(10));
        let mut leader_ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + check, check);
        let mut no_leader = 0;
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        let result = loop {
            tokio::select! {
                _ = &mut stopped => break Err(EtcdError::Stopped.into()),
                _ = tx.closed() => break Ok(()),
                r = &mut recv, if !recv_done => {
                    recv_done = true;
                    match r {
                        // The client closed its side: keep sending, as etcd.
                        Ok(Ok(())) => {}
                        Ok(Err(status)) => break Err(status),
                        Err(_) => break Ok(()),
                    }
                }
                _ = wake.notified() => {
                    if !self.drain(tx).await? {
                        break Ok(());
                    }
                }
                _ = ticker.tick() => self.progress_tick(),
                _ = leader_ticker.tick(), if self.require_leader => {
                    if self.node.leader_id().is_none() {
                        no_leader += 1;
                        if no_leader >= NO_LEADER_CHECKS {
                            break Err(EtcdError::NoLeader.into());
                        }
                    } else {
                        no_leader = 0;
                    }
                }
            }
        };
        recv.abort();
        result
    }

    /// Sends everything the engine has queued; false if the client is gone.
    async fn drain(&self, tx: &Outbound) -> Result<bool, Status> {
        loop {
            let stream = self.stream.clone();
            let msgs = tokio::task::spawn_blocking(move || stream.try_recv_many(DRAIN_BATCH))
                .await
                .map_err(|_| Status::from(EtcdError::Stopped))?;
            if msgs.is_empty() {
                return Ok(true);
            }
            for m in msgs {
                let (watch_id, had_events) = (
                    m.watch_id,
                    matches!(&m.kind, MessageKind::Events(e) if !e.is_empty()),
                );
                for resp in self.responses(m) {
                    if tx.send(Ok(resp)).await.is_err() {
                        return Ok(false);
                    }
                }
                if had_events {
                    // etcd elides the next progress notification.
                    if let Some(due) = self.progress.lock().get_mut(&watch_id) {
                        *due = false;
                    }
                }
            }
        }
    }

    /// etcd's progress ticker: a notification for every `progress_notify`
    /// watcher that got no events since the last tick (sent by the engine
    /// only if the watcher is synced).
    fn progress_tick(&self) {
        let due: Vec<i64> = {
            let mut p = self.progress.lock();
            let mut due = Vec::new();
            for (id, ok) in p.iter_mut() {
                if *ok {
                    due.push(*id);
                }
                *ok = true;
            }
            due
        };
        for id in due {
            self.stream.request_watcher_progress(id);
        }
    }

    fn responses(&self, m: WatchMessage) -> Vec<WatchResponse> {
        let mut resp = WatchResponse {
            header: header(&self.header, m.revision),
            watch_id: m.watch_id,
            ..Default::default()
        };
        match m.kind {
            MessageKind::Created => resp.created = true,
            MessageKind::Canceled { compact_revision } => {
                resp.canceled = true;
                resp.compact_revision = compact_revision;
            }
            MessageKind::Progress => {}
            MessageKind::Refused(reason) => {
                resp.created = true;
                resp.canceled = true;
                resp.cancel_reason = reason;
            }
            MessageKind::Events(mut events) => {
                if ballast_raft::faults().drop_watch_event {
                    if let Some(gone) =
                        drop_nth_event(&mut events, &WATCH_EVENTS_SENT, DROPPED_WATCH_EVENT)
                    {
                        tracing::warn!(
                            watch_id = m.watch_id,
                            revision = gone.kv.as_ref().map_or(0, |kv| kv.mod_revision),
                            "drop-watch-event fault: a watch event is not sent"
                        );
                        if events.is_empty() {
                            return Vec::new();
                        }
                    }
                }
                resp.events = events;
                if m.fragment {
                    return fragments(resp, self.fragment_bytes);
                }
            }
        }
        vec![resp]
    }
}

/// The receiving half: requests become engine calls.
async fn receive(
    mut inbound: Streaming<WatchRequest>,
    stream: Arc<WatchStream>,
    progress: Arc<Mutex<HashMap<i64, bool>>>,
) -> Result<(), Status> {
    loop {
        let req = match inbound.message().await {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(status) => return Err(status),
        };
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let progress_notify = c.progress_notify;
                match create(&stream, c) {
                    Ok(id) => {
                        if progress_notify {
                            progress.lock().insert(id, true);
                        }
                    }
                    Err(reason) => stream.refuse(reason),
                }
            }
            Some(RequestUnion::CancelRequest(c)) => {
                // An unknown ID gets no answer, as in etcd.
                if stream.cancel(c.watch_id) {
                    progress.lock().remove(&c.watch_id);
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => stream.request_progress(),
            None => tracing::debug!("ignoring an empty watch request"),
        }
    }
}

/// Creates a watcher as etcd's `recvLoop` does; the error is the cancel
/// reason of the refusal.
fn create(stream: &WatchStream, c: WatchCreateRequest) -> Result<i64, String> {
    if c.start_revision < 0 {
        return Err(EtcdError::Compacted.to_string());
    }
    let key = if c.key.is_empty() {
        // \x00 is the smallest key.
        vec![0]
    } else {
        c.key
    };
    let opts = WatchOptions {
        watch_id: c.watch_id,
        key,
        range_end: c.range_end,
        start_revision: c.start_revision,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: c.prev_kv,
        fragment: c.fragment,
    };
    stream.watch(opts).map_err(|e| e.to_string())
}

/// etcd's `sendFragments`: a response over `max` bytes with several events
/// is split into responses with `fragment = true`, the last one false.
pub fn fragments(resp: WatchResponse, max: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < max || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut base = resp;
    let events = std::mem::take(&mut base.events);
    base.fragment = true;
    let base_len = base.encoded_len();
    let mut out = Vec::new();
    let mut events = events.into_iter().peekable();
    loop {
        let mut cur = base.clone();
        let mut size = base_len;
        while let Some(ev) = events.peek() {
            let len = ev.encoded_len();
            // Field 11, length-delimited: a one-byte tag, the length, the event.
            let add = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if !cur.events.is_empty() && size + add >= max {
                break;
            }
            size += add;
            cur.events.push(events.next().expect("peeked"));
        }
        if events.peek().is_none() {
            cur.fragment = false;
            out.push(cur);
            return out;
        }
        out.push(cur);
    }
}

/// Counts `events` as sent after the `sent` before them and removes the
/// one whose ordinal (from 1) is `nth`, if it is among them.
fn drop_nth_event(events: &mut Vec<Event>, sent: &AtomicU64, nth: u64) -> Option<Event> {
    if events.is_empty() {
        return None;
    }
    let before = sent.fetch_add(events.len() as u64, Ordering::Relaxed);
    let index = nth.checked_sub(before)?.checked_sub(1)?;
    (index < events.len() as u64).then(|| events.remove(index as usize))
}

/// `interval` plus up to a tenth of it, so that streams created together
/// do not all tick together (as etcd).
fn jittered(interval: Duration) -> Duration {
    let tenth = (interval.as_nanos() / 10).max(1) as u64;
    let mut h = RandomState::new().build_hasher();
    h.write_u64(tenth);
    interval + Duration::from_nanos(h.finish() % tenth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_proto::mvccpb::KeyValue;

    #[test]
    fn go_durations() {
        let ms = 1_000_000i128;
        assert_eq!(parse_go_duration("10m"), Ok(600_000 * ms));
        assert_eq!(parse_go_duration("5s"), Ok(5_000 * ms));
        assert_eq!(parse_go_duration("100ms"), Ok(100 * ms));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000 * ms));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500 * ms));
        assert_eq!(parse_go_duration(".5s"), Ok(500 * ms));
        assert_eq!(parse_go_duration("300us"), Ok(300_000));
        assert_eq!(parse_go_duration("2µs"), Ok(2_000));
        assert_eq!(parse_go_duration("7ns"), Ok(7));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000 * ms));
        for bad in ["", "10", "1x", "s", "1..5s", ".s", "-", "1s2"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            progress_notify_interval("10m"),
            Ok(DEFAULT_PROGRESS_NOTIFY_INTERVAL)
        );
        assert_eq!(
            progress_notify_interval("0"),
            Ok(DEFAULT_PROGRESS_NOTIFY_INTERVAL)
        );
        assert_eq!(
            progress_notify_interval("10ms"),
            Ok(MIN_PROGRESS_NOTIFY_INTERVAL)
        );
        assert_eq!(
            progress_notify_interval("250ms"),
            Ok(Duration::from_millis(250))
        );
    }

    fn event(key: &str, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; value_len],
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_as_etcd() {
        let resp = WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 3,
            events: (0..10).map(|i| event(&format!("k{i}"), 100)).collect(),
            ..Default::default()
        };
        // Under the limit, or a single event: unchanged.
        assert_eq!(fragments(resp.clone(), 1 << 20), vec![resp.clone()]);
        let one = WatchResponse {
            events: vec![event("big", 5000)],
            ..resp.clone()
        };
        assert_eq!(fragments(one.clone(), 100), vec![one]);
        let parts = fragments(resp.clone(), 400);
        assert!(parts.len() > 2);
        let (last, rest) = parts.split_last().unwrap();
        assert!(rest.iter().all(|p| p.fragment) && !last.fragment);
        for p in &parts {
            assert!(!p.events.is_empty());
            assert!(
                p.events.len() == 1 || p.encoded_len() < 400,
                "{}",
                p.encoded_len()
            );
            assert_eq!((p.watch_id, p.header), (3, resp.header));
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, resp.events);
    }

    #[test]
    fn exactly_the_nth_event_is_dropped() {
        let sent = AtomicU64::new(0);
        let keys = |evs: &[Event]| -> Vec<Vec<u8>> {
            evs.iter()
                .map(|e| e.kv.as_ref().unwrap().key.clone())
                .collect()
        };
        let mut kept = Vec::new();
        // Responses of 3, 0, 4 and 1 events: the 5th overall is the 2nd
        // of the third response.
        for (r, n) in [3, 0, 4, 1].into_iter().enumerate() {
            let mut evs: Vec<Event> = (0..n).map(|i| event(&format!("r{r}e{i}"), 1)).collect();
            let gone = drop_nth_event(&mut evs, &sent, 5);
            assert_eq!(gone.is_some(), r == 2, "response {r}");
            if let Some(g) = gone {
                assert_eq!(g.kv.unwrap().key, b"r2e1");
            }
            kept.extend(keys(&evs));
        }
        assert_eq!(kept.len(), 7);
        assert!(!kept.contains(&b"r2e1".to_vec()));
        // Past it, nothing more is dropped; a lone nth event empties its
        // response.
        let mut evs = vec![event("late", 1)];
        assert!(drop_nth_event(&mut evs, &sent, 5).is_none() && evs.len() == 1);
        let sent = AtomicU64::new(4);
        let mut evs = vec![event("only", 1)];
        assert!(drop_nth_event(&mut evs, &sent, 5).is_some() && evs.is_empty());
    }
}
