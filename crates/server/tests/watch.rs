//! The Watch service of a member run in this process
//! (`ballast_server::run`), driven with raw tonic clients, the
//! `etcd-client` crate and `etcdctl watch` (3.4). Each test has its own
//! ports (below 32768) and data directory; every wait has a deadline.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::request_op::Request as Op;
use ballast_proto::etcdserverpb::watch_client::WatchClient;
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use ballast_proto::mvccpb::event::EventType;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

mod common;
use common::{within, Member, DEADLINE};

/// What these tests need of a member beyond the shared harness.
trait WatchMember {
    async fn kv(&self) -> KvClient<Channel>;
    /// A raw watch stream: a sender of requests and the responses.
    async fn watch(&self) -> Stream;
    async fn watch_with(
        &self,
        f: impl FnOnce(WatchClient<Channel>) -> WatchClient<Channel>,
    ) -> Stream;
}

impl WatchMember for Member {
    async fn kv(&self) -> KvClient<Channel> {
        within("connect", KvClient::connect(self.url()))
            .await
            .expect("connect")
    }

    async fn watch(&self) -> Stream {
        self.watch_with(|c| c).await
    }

    async fn watch_with(
        &self,
        f: impl FnOnce(WatchClient<Channel>) -> WatchClient<Channel>,
    ) -> Stream {
        let client = within("connect", WatchClient::connect(self.url()))
            .await
            .expect("connect");
        let mut client = f(client);
        let (tx, rx) = mpsc::channel(16);
        let resp = within("watch", client.watch(ReceiverStream::new(rx)))
            .await
            .expect("watch stream")
            .into_inner();
        Stream { tx, resp }
    }
}

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    resp: Streaming<WatchResponse>,
}

impl Stream {
    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .expect("send a watch request");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        within("watch response", self.resp.message())
            .await
            .expect("watch stream error")
            .expect("watch stream ended")
    }

    /// Expects no response within `d`.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.resp.message()).await {
            panic!("unexpected response {r:?}");
        }
    }
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    within(
        "put",
        kv.put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("put")
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn delete(kv: &mut KvClient<Channel>, key: &str, end: &str) -> i64 {
    within(
        "delete",
        kv.delete_range(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("delete")
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn compact(kv: &mut KvClient<Channel>, revision: i64) {
    within(
        "compact",
        kv.compact(CompactionRequest {
            revision,
            physical: true,
        }),
    )
    .await
    .expect("compact");
}

/// (type, key, value, mod revision) of a response's events.
fn events(r: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    r.events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn ev(t: EventType, k: &str, v: &str, rev: i64) -> (EventType, String, String, i64) {
    (t, k.into(), v.into(), rev)
}

#[tokio::test]
async fn watch_a_prefix_puts_deletes_and_txns_in_order() {
    let m = Member::start("w1", &[]).await;
    let mut kv = m.kv().await;
    let mut w = m.watch().await;
    w.create(create("/w/", "/w0", 0)).await;
    let created = w.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 0);
    let h = created.header.unwrap();
    assert!(h.cluster_id != 0 && h.member_id != 0 && h.raft_term > 0 && h.revision >= 1);

    let r1 = put(&mut kv, "/w/a", "1").await;
    put(&mut kv, "/x", "outside").await;
    let r = w.next().await;
    assert_eq!(events(&r), vec![ev(EventType::Put, "/w/a", "1", r1)]);
    let hdr = r.header.unwrap();
    assert_eq!(
        (hdr.revision, hdr.cluster_id, hdr.member_id),
        (r1, h.cluster_id, h.member_id)
    );

    // A txn's events arrive together.
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: "/w/b".into(),
                    value: "2".into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: "/w/a".into(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let r2 = within("txn", kv.txn(txn))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let r = w.next().await;
    assert_eq!(
        events(&r),
        vec![
            ev(EventType::Put, "/w/b", "2", r2),
            ev(EventType::Delete, "/w/a", "", r2)
        ]
    );
    let r3 = delete(&mut kv, "/w/", "/w0").await;
    let r = w.next().await;
    assert_eq!(events(&r), vec![ev(EventType::Delete, "/w/b", "", r3)]);
    // Ending the stream ends the watchers; a new stream starts at ID 0.
    drop(w);
    let mut w = m.watch().await;
    w.create(create("/w/", "/w0", 0)).await;
    assert_eq!(w.next().await.watch_id, 0);
}

#[tokio::test]
async fn old_revisions_replay_and_compacted_ones_cancel() {
    let m = Member::start("w1", &[]).await;
    let mut kv = m.kv().await;
    let mut revs = vec![];
    for i in 0..5 {
        revs.push(put(&mut kv, "k", &format!("v{i}")).await);
    }
    let mut w = m.watch().await;
    w.create(create("k", "", revs[1])).await;
    assert!(w.next().await.created);
    let mut got = vec![];
    while got.len() < 4 {
        got.extend(events(&w.next().await));
    }
    let want: Vec<_> = (1..5)
        .map(|i| ev(EventType::Put, "k", &format!("v{i}"), revs[i]))
        .collect();
    assert_eq!(got, want);

    compact(&mut kv, revs[3]).await;
    w.create(create("k", "", revs[2])).await;
    let c = w.next().await;
    assert!(c.created && !c.canceled);
    let c2 = w.next().await;
    assert_eq!(c2.watch_id, c.watch_id);
    assert!(c2.canceled);
    assert_eq!(c2.compact_revision, revs[3]);
    // Exactly at the compaction point still works.
    w.create(create("k", "", revs[3])).await;
    let c = w.next().await;
    assert!(c.created && !c.canceled);
    let mut got = vec![];
    while got.len() < 2 {
        got.extend(events(&w.next().await));
    }
    assert_eq!(got, want[2..]);
    // A negative start revision: refused as compacted, watch ID -1.
    w.create(create("k", "", -1)).await;
    let r = w.next().await;
    assert!(r.created && r.canceled);
    assert_eq!(r.watch_id, -1);
    assert_eq!(
        r.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test]
async fn progress_requests_and_notifications() {
    let m = Member::start(
        "w1",
        &["--experimental-watch-progress-notify-interval", "200ms"],
    )
    .await;
    let mut kv = m.kv().await;
    let rev = put(&mut kv, "p", "1").await;
    let mut w = m.watch().await;
    w.create(WatchCreateRequest {
        progress_notify: true,
        ..create("p", "", 0)
    })
    .await;
    let id = w.next().await.watch_id;
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    // The stream's progress (-1) or the watcher's periodic one may come first.
    let mut stream_progress = false;
    let mut periodic = 0;
    let start = Instant::now();
    while !stream_progress || periodic < 2 {
        let r = w.next().await;
        assert!(r.events.is_empty() && !r.created && !r.canceled);
        assert_eq!(r.header.as_ref().unwrap().revision, rev);
        match r.watch_id {
            -1 => stream_progress = true,
            x if x == id => periodic += 1,
            x => panic!("progress for watch {x}"),
        }
    }
    assert!(start.elapsed() >= Duration::from_millis(200));
    // After events, the next periodic notification is skipped once, and the
    // revision moves on.
    let rev2 = put(&mut kv, "p", "2").await;
    let mut saw_event = false;
    loop {
        let r = w.next().await;
        if !r.events.is_empty() {
            saw_event = true;
            continue;
        }
        if r.header.as_ref().unwrap().revision == rev2 {
            assert!(saw_event);
            break;
        }
    }
    // A watcher in the past: the stream's progress comes after its events.
    let mut w2 = m.watch().await;
    w2.create(create("p", "", 1)).await;
    w2.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    assert!(w2.next().await.created);
    let mut seen = vec![];
    loop {
        let r = w2.next().await;
        if r.watch_id == -1 {
            assert_eq!(r.header.unwrap().revision, rev2);
            break;
        }
        seen.extend(events(&r));
    }
    assert_eq!(
        seen,
        vec![
            ev(EventType::Put, "p", "1", rev),
            ev(EventType::Put, "p", "2", rev2)
        ]
    );
}

#[tokio::test]
async fn prev_kv_filters_ids_and_cancel() {
    let m = Member::start("w1", &[]).await;
    let mut kv = m.kv().await;
    let mut w = m.watch().await;
    w.create(WatchCreateRequest {
        prev_kv: true,
        watch_id: 5,
        ..create("f", "", 0)
    })
    .await;
    w.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        watch_id: 6,
        ..create("f", "", 0)
    })
    .await;
    w.create(WatchCreateRequest {
        filters: vec![FilterType::Nodelete as i32],
        ..create("f", "", 0)
    })
    .await;
    for want in [5, 6, 0] {
        let r = w.next().await;
        assert!(r.created && !r.canceled);
        assert_eq!(r.watch_id, want);
    }
    // A duplicate ID on the stream: refused (etcd 3.5's message); create
    // requests are answered in order, refused or not.
    w.create(WatchCreateRequest {
        watch_id: 6,
        ..create("f", "", 0)
    })
    .await;
    w.create(WatchCreateRequest {
        watch_id: 8,
        ..create("zz", "", 0)
    })
    .await;
    w.create(create("b", "a", 0)).await;
    let r = w.next().await;
    assert!(r.created && r.canceled);
    assert_eq!(r.watch_id, -1);
    assert_eq!(
        r.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let r = w.next().await;
    assert!(r.created && !r.canceled);
    assert_eq!(r.watch_id, 8);
    let r = w.next().await;
    assert!(r.created && r.canceled);
    assert_eq!(
        (r.watch_id, r.cancel_reason.as_str()),
        (-1, "mvcc: watcher range is empty")
    );
    let r1 = put(&mut kv, "f", "1").await;
    let r2 = put(&mut kv, "f", "2").await;
    let r3 = delete(&mut kv, "f", "").await;
    let mut by_id: std::collections::BTreeMap<i64, Vec<WatchResponse>> = Default::default();
    while by_id
        .values()
        .map(|v| v.iter().map(|r| r.events.len()).sum::<usize>())
        .sum::<usize>()
        < 3 + 1 + 2
    {
        let r = w.next().await;
        by_id.entry(r.watch_id).or_default().push(r);
    }
    let evs = |id: i64| -> Vec<_> { by_id[&id].iter().flat_map(events).collect() };
    assert_eq!(evs(6), vec![ev(EventType::Delete, "f", "", r3)]);
    assert_eq!(
        evs(0),
        vec![
            ev(EventType::Put, "f", "1", r1),
            ev(EventType::Put, "f", "2", r2)
        ]
    );
    let prevs: Vec<Option<String>> = by_id[&5]
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            e.prev_kv
                .as_ref()
                .map(|p| String::from_utf8(p.value.clone()).unwrap())
        })
        .collect();
    assert_eq!(prevs, vec![None, Some("1".into()), Some("2".into())]);
    // Cancel: answered, then nothing more for that watcher.
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 5,
    }))
    .await;
    let r = w.next().await;
    assert!(r.canceled && !r.created);
    assert_eq!((r.watch_id, r.compact_revision), (5, 0));
    // An unknown ID gets no answer (as etcd).
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 77,
    }))
    .await;
    w.quiet(Duration::from_millis(300)).await;
    put(&mut kv, "f", "3").await;
    let r = w.next().await;
    assert_eq!(r.watch_id, 0);
}

#[tokio::test]
async fn large_responses_are_fragmented_on_request() {
    let m = Member::start("w1", &[]).await;
    let mut kv = m.kv().await;
    let value = "x".repeat(100 * 1024);
    for i in 0..30 {
        put(&mut kv, &format!("big/{i:02}"), &value).await;
    }
    // Deleting all 30 in one revision, with prev_kv: about 3 MiB of events,
    // above the 2 MiB limit (--max-request-bytes + 512 KiB).
    let big = |c: WatchClient<Channel>| c.max_decoding_message_size(64 << 20);
    let mut frag = m.watch_with(big).await;
    frag.create(WatchCreateRequest {
        prev_kv: true,
        fragment: true,
        ..create("big/", "big0", 0)
    })
    .await;
    let mut whole = m.watch_with(big).await;
    whole
        .create(WatchCreateRequest {
            prev_kv: true,
            ..create("big/", "big0", 0)
        })
        .await;
    assert!(frag.next().await.created);
    assert!(whole.next().await.created);
    let rev = delete(&mut kv, "big/", "big0").await;
    let r = whole.next().await;
    assert!(!r.fragment);
    assert_eq!(r.events.len(), 30);
    let mut parts = vec![];
    loop {
        let r = frag.next().await;
        let last = !r.fragment;
        parts.push(r);
        if last {
            break;
        }
    }
    assert!(parts.len() >= 2, "{} parts", parts.len());
    let joined: Vec<_> = parts.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(joined, r.events);
    for p in &parts {
        assert_eq!(p.header.as_ref().unwrap().revision, rev);
        assert!(prost::Message::encoded_len(p) < 2 * 1024 * 1024 + 512 * 1024);
    }
}

#[tokio::test]
async fn etcd_client_watch_api() {
    let m = Member::start("w1", &[]).await;
    let mut client = within(
        "connect",
        etcd_client::Client::connect([m.endpoint()], None),
    )
    .await
    .expect("connect");
    let first = within("put", client.put("c/a", "1", None))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(first);
    let mut stream = within("watch", client.watch("c/", Some(opts)))
        .await
        .expect("watch");
    let created = within("created", stream.message()).await.unwrap().unwrap();
    assert!(created.created());
    within("put", client.put("c/a", "2", None)).await.unwrap();
    within("delete", client.delete("c/a", None)).await.unwrap();
    let mut seen = vec![];
    while seen.len() < 3 {
        let r = within("events", stream.message()).await.unwrap().unwrap();
        for e in r.events() {
            let kv = e.kv().unwrap();
            seen.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            ));
        }
    }
    use etcd_client::EventType as E;
    assert_eq!(
        seen,
        vec![
            (E::Put, "c/a".into(), "1".into(), None),
            (E::Put, "c/a".into(), "2".into(), Some("1".into())),
            (E::Delete, "c/a".into(), "".into(), Some("2".into())),
        ]
    );
    stream.request_progress().await.unwrap();
    let p = within("progress", stream.message()).await.unwrap().unwrap();
    assert_eq!(p.watch_id(), -1);
    assert!(p.events().is_empty());
    assert_eq!(p.header().unwrap().revision(), first + 2);
    stream.cancel(created.watch_id()).await.unwrap();
    let c = within("cancel", stream.message()).await.unwrap().unwrap();
    assert!(c.canceled());
}

/// Reads `etcdctl` output lines until `n` lines are collected.
async fn lines(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    n: usize,
) -> Vec<String> {
    let mut got = vec![];
    while got.len() < n {
        match within("etcdctl output", out.next_line()).await.unwrap() {
            Some(l) => got.push(l),
            None => panic!("etcdctl ended after {got:?}"),
        }
    }
    got
}

fn etcdctl(m: &Member, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.endpoint()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn etcdctl_watch() {
    if std::process::Command::new("etcdctl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("etcdctl not installed; skipping");
        return;
    }
    let m = Member::start("w1", &[]).await;
    let mut kv = m.kv().await;
    let r1 = put(&mut kv, "e/a", "1").await;
    let mut child = etcdctl(&m, &["watch", "--prefix", "e/"])
        .spawn()
        .expect("etcdctl");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    // etcdctl prints nothing on creation: put until the first event shows.
    let deadline = Instant::now() + DEADLINE;
    let mut n = 0;
    let first = loop {
        assert!(Instant::now() < deadline, "no event from etcdctl in time");
        n += 1;
        put(&mut kv, "e/b", &format!("w{n}")).await;
        if let Ok(l) = tokio::time::timeout(Duration::from_millis(300), out.next_line()).await {
            break l.unwrap().expect("a line");
        }
    };
    // Each event is three lines: type, key, value. Puts made before the
    // watcher existed are not reported; the others are, in order.
    let mut event = vec![first];
    event.extend(lines(&mut out, 2).await);
    let mut k = event[2][1..].parse::<usize>().unwrap();
    loop {
        assert_eq!(
            event,
            vec!["PUT".to_string(), "e/b".into(), format!("w{k}")]
        );
        if k == n {
            break;
        }
        k += 1;
        event = lines(&mut out, 3).await;
    }
    delete(&mut kv, "e/a", "").await;
    assert_eq!(lines(&mut out, 3).await, vec!["DELETE", "e/a", ""]);
    drop(child);

    // From an old revision, with previous values: the history is replayed.
    let rev = r1.to_string();
    let mut child = etcdctl(&m, &["watch", "--rev", &rev, "--prev-kv", "e/a"])
        .spawn()
        .expect("etcdctl");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    // A creation has no previous value; the deletion shows it first.
    assert_eq!(lines(&mut out, 3).await, vec!["PUT", "e/a", "1"]);
    assert_eq!(
        lines(&mut out, 5).await,
        vec!["DELETE", "e/a", "1", "e/a", ""]
    );
    drop(child);

    // From a compacted revision: canceled with the compaction error.
    let now = put(&mut kv, "e/c", "x").await;
    compact(&mut kv, now).await;
    let out = within(
        "etcdctl",
        etcdctl(&m, &["watch", "--rev", &r1.to_string(), "e/a"]).output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn streams_end_when_the_member_stops() {
    let mut m = Member::start("w1", &[]).await;
    let mut w = m.watch().await;
    w.create(create("s", "", 0)).await;
    assert!(w.next().await.created);
    m.stop().await;
    // The stream ends (an error or the end), promptly.
    let end = within("stream end", w.resp.message()).await;
    assert!(matches!(end, Err(_) | Ok(None)), "{end:?}");
}

#[tokio::test]
async fn hasleader_streams_work_with_a_leader() {
    let m = Member::start("w1", &[]).await;
    let mut client = within("connect", WatchClient::connect(m.url()))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create("h", "", 0))),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let mut resp = within("watch", client.watch(req))
        .await
        .expect("a member with a leader accepts hasleader watches")
        .into_inner();
    let created = within("created", resp.message()).await.unwrap().unwrap();
    assert!(created.created);
    let mut kv = m.kv().await;
    let rev = put(&mut kv, "h", "1").await;
    let r = within("event", resp.message()).await.unwrap().unwrap();
    assert_eq!(events(&r), vec![ev(EventType::Put, "h", "1", rev)]);
}
