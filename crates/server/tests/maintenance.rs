//! The Maintenance service and the HTTP endpoints of a member run in this
//! process (`ballast_server::run`), driven with tonic clients and plain
//! HTTP/1 requests. Each test has its own port and data directory; every
//! wait has a deadline.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_proto::etcdserverpb::request_op::Request as Op;
use ballast_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest,
    DowngradeRequest, HashKvRequest, HashRequest, MoveLeaderRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, SnapshotRequest, StatusRequest, StatusResponse, TxnRequest,
};
use ballast_server::MemberConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

/// Fails the test if `fut` does not finish in time.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {DEADLINE:?}"),
    }
}

/// A port on 127.0.0.1 in 10000..32000 (below the ephemeral range) that
/// was free a moment ago.
fn free_port() -> u16 {
    for _ in 0..1000 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        let port = 10000 + (h.finish() % 22000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// A member running in this process.
struct Member {
    port: u16,
    peer_port: u16,
    dir: PathBuf,
    quota: i64,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    member: MemberConfig,
}

/// The member's flags, parsed as the binary parses them (every other flag
/// keeps its default). Peer URLs, where the build has them, are on
/// 127.0.0.1 too, so that tests running side by side do not meet.
fn config(dir: &Path, port: u16, peer_port: u16, quota: i64, name: &str) -> MemberConfig {
    use clap::{CommandFactory, Parser};
    let url = format!("http://127.0.0.1:{port}");
    let peer = peer_url(peer_port);
    let mut args: Vec<String> = [
        "ballast",
        "--name",
        name,
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
        "--quota-backend-bytes",
        &quota.to_string(),
        "--log-level",
        "warn",
        "--initial-advertise-peer-urls",
        &peer,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--data-dir".to_string(), dir.display().to_string()]);
    let known = |flag: &str| {
        Flags::command()
            .get_arguments()
            .any(|a| a.get_long() == Some(flag))
    };
    if known("listen-peer-urls") {
        args.extend(["--listen-peer-urls".to_string(), peer.clone()]);
    }
    if known("initial-cluster") {
        args.extend(["--initial-cluster".to_string(), format!("{name}={peer}")]);
    }
    Flags::try_parse_from(args).expect("flags").member
}

fn peer_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Member {
    /// Starts a member named `name` on `dir`, on free ports.
    async fn start(dir: &Path, quota: i64, name: &str) -> Member {
        Self::start_with_peer_port(dir, quota, name, free_port()).await
    }

    /// Starts a member with the given peer port (part of its identity).
    async fn start_with_peer_port(dir: &Path, quota: i64, name: &str, peer_port: u16) -> Member {
        for _ in 0..5 {
            let port = free_port();
            let mut m = Member {
                port,
                peer_port,
                dir: dir.to_path_buf(),
                quota,
                stop: None,
                task: None,
            };
            match m.run(name).await {
                Ok(()) => return m,
                Err(e) if e.contains("cannot listen") => continue,
                Err(e) => panic!("member did not start: {e}"),
            }
        }
        panic!("no port to start a member on");
    }

    async fn run(&mut self, name: &str) -> Result<(), String> {
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = config(&self.dir, self.port, self.peer_port, self.quota, name);
        let mut task = tokio::spawn(ballast_server::run(cfg, async move {
            let _ = rx.await;
        }));
        let started = Instant::now();
        loop {
            if task.is_finished() {
                let res = (&mut task).await.expect("member task");
                return Err(match res {
                    Ok(()) => "stopped by itself".to_string(),
                    Err(e) => format!("{e:#}"),
                });
            }
            if let Ok(mut c) = MaintenanceClient::connect(self.url()).await {
                if c.status(StatusRequest {}).await.is_ok() {
                    break;
                }
            }
            assert!(started.elapsed() < DEADLINE, "member not serving in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop = Some(tx);
        self.task = Some(task);
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn maintenance(&self) -> MaintenanceClient<Channel> {
        within("connect", MaintenanceClient::connect(self.url()))
            .await
            .expect("connect")
    }

    async fn kv(&self) -> KvClient<Channel> {
        within("connect", KvClient::connect(self.url()))
            .await
            .expect("connect")
    }

    /// Stops the member and waits until it has closed its store.
    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            within("stop", task)
                .await
                .expect("member task")
                .expect("member stopped cleanly");
        }
    }

    /// Stops and starts the member again on its directory and port.
    async fn restart(&mut self, name: &str) {
        self.stop().await;
        self.run(name).await.expect("restart");
    }

    async fn status(&self) -> StatusResponse {
        within("status", self.maintenance().await.status(StatusRequest {}))
            .await
            .expect("status")
            .into_inner()
    }

    /// GET `path` over HTTP/1.0: (status code, content type, body).
    async fn http_get(&self, method: &str, path: &str) -> (u16, String, String) {
        let port = self.port;
        let req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        within("http", async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            s.write_all(req.as_bytes()).await.expect("send");
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.expect("read");
            let raw = String::from_utf8(raw).expect("utf-8 answer");
            let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .expect("status line");
            let ctype = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-type")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            (code, ctype, body.to_string())
        })
        .await
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: Vec<u8>) -> Result<i64, tonic::Status> {
    within(
        "put",
        kv.put(PutRequest {
            key: key.into(),
            value,
            ..Default::default()
        }),
    )
    .await
    .map(|r| r.into_inner().header.unwrap().revision)
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
    .deleted
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

async fn range_all(
    kv: &mut KvClient<Channel>,
    revision: i64,
) -> Result<RangeResponse, tonic::Status> {
    within(
        "range",
        kv.range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        }),
    )
    .await
    .map(|r| r.into_inner())
}

async fn hash_kv(m: &Member, revision: i64) -> Result<(u32, i64, i64), tonic::Status> {
    within(
        "hashkv",
        m.maintenance().await.hash_kv(HashKvRequest { revision }),
    )
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.hash, r.compact_revision, r.hash_revision)
    })
}

/// Some history: puts, overwrites, a delete, a compaction, more puts.
/// Returns the compaction point.
async fn make_history(kv: &mut KvClient<Channel>) -> i64 {
    for i in 0..10 {
        put(kv, &format!("key{i}"), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
    put(kv, "key3", b"again".to_vec()).await.unwrap();
    assert_eq!(delete(kv, "key5", "").await, 1);
    let rev = put(kv, "key7", b"later".to_vec()).await.unwrap();
    compact(kv, rev - 1).await;
    put(kv, "key8", b"after compaction".to_vec()).await.unwrap();
    delete(kv, "key9", "").await;
    rev - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_move_leader_and_downgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(dir.path(), 0, "m1").await;
    let mut kv = m.kv().await;
    let rev = put(&mut kv, "a", b"1".to_vec()).await.unwrap();

    let s = m.status().await;
    let h = s.header.unwrap();
    // IDs derived as etcd derives them.
    let peer = [peer_url(m.peer_port)];
    let member_id = ballast_server::identity::member_id(&peer, "etcd-cluster");
    assert_eq!(h.member_id, member_id);
    assert_eq!(
        h.cluster_id,
        ballast_server::identity::cluster_id(&[member_id])
    );
    assert_eq!(h.revision, rev);
    assert_eq!(s.version, ballast_server::ETCD_VERSION);
    assert_eq!(s.leader, h.member_id);
    assert_eq!(s.raft_term, h.raft_term);
    assert!(s.raft_term >= 1);
    assert!(s.raft_index >= 1);
    assert_eq!(s.raft_applied_index, s.raft_index);
    assert!(s.db_size > 0);
    assert!(s.db_size_in_use > 0 && s.db_size_in_use <= s.db_size);
    assert!(!s.is_learner);
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // Every write moves the applied index.
    put(&mut kv, "b", b"2".to_vec()).await.unwrap();
    assert_eq!(
        m.status().await.raft_applied_index,
        s.raft_applied_index + 1
    );

    let mut mc = m.maintenance().await;
    let moved = within(
        "move-leader",
        mc.move_leader(MoveLeaderRequest {
            target_id: h.member_id,
        }),
    )
    .await
    .expect("moving leadership to itself is a no-op");
    assert_eq!(moved.into_inner().header.unwrap().member_id, h.member_id);
    let err = within(
        "move-leader",
        mc.move_leader(MoveLeaderRequest { target_id: 1234 }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "etcdserver: bad leader transferee");
    let err = within("downgrade", mc.downgrade(DowngradeRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "etcdserver: downgrade is not supported");
    drop((kv, mc));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_is_stable_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(dir.path(), 0, "m1").await;
    let mut kv = m.kv().await;
    let first = put(&mut kv, "first", b"x".to_vec()).await.unwrap();
    // A new store is at revision 1, as etcd's: the first write is 2.
    assert_eq!(first, 2);
    // Before any compaction etcd reports compact_revision -1.
    let (_, compact_rev, hash_rev) = hash_kv(&m, 0).await.unwrap();
    assert_eq!((compact_rev, hash_rev), (-1, first));

    let compacted = make_history(&mut kv).await;
    let current = m.status().await.header.unwrap().revision;
    let latest = hash_kv(&m, 0).await.unwrap();
    assert_eq!(latest.1, compacted);
    assert_eq!(latest.2, current);
    assert_eq!(hash_kv(&m, current).await.unwrap(), latest);
    let at_compaction = hash_kv(&m, compacted).await.unwrap();
    assert_ne!(at_compaction.0, latest.0);
    let whole = within("hash", m.maintenance().await.hash(HashRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.header.unwrap().revision, current);

    let err = hash_kv(&m, compacted - 1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let err = hash_kv(&m, current + 1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    drop(kv);
    m.restart("m1").await;
    assert_eq!(hash_kv(&m, 0).await.unwrap(), latest);
    assert_eq!(hash_kv(&m, compacted).await.unwrap(), at_compaction);
    let again = within("hash", m.maintenance().await.hash(HashRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.hash, whole.hash);

    // New content, new hash.
    let mut kv = m.kv().await;
    put(&mut kv, "key0", b"changed".to_vec()).await.unwrap();
    assert_ne!(hash_kv(&m, 0).await.unwrap().0, latest.0);
    drop(kv);
    m.stop().await;
}

fn nospace(member_id: u64) -> AlarmMember {
    AlarmMember {
        member_id,
        alarm: AlarmType::Nospace as i32,
    }
}

async fn alarms(m: &Member) -> Vec<AlarmMember> {
    within(
        "alarm list",
        m.maintenance().await.alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        }),
    )
    .await
    .expect("alarm list")
    .into_inner()
    .alarms
}

fn assert_nospace(res: Result<i64, tonic::Status>) {
    let err = res.expect_err("write must be refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_until_compacted_defragmented_and_disarmed() {
    const QUOTA: i64 = 300 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(dir.path(), QUOTA, "m1").await;
    let member_id = m.status().await.header.unwrap().member_id;
    let mut kv = m.kv().await;
    let big = vec![b'x'; 100 * 1024];

    // Puts succeed until the database would pass the quota.
    let mut stored = 0;
    let refused = loop {
        assert!(stored < 10, "10 puts of 100 KiB fit a 300 KiB quota");
        match put(&mut kv, &format!("big{stored}"), big.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
    };
    assert!(stored >= 1, "the first put fits");
    assert_nospace(Err(refused));
    assert_eq!(alarms(&m).await, vec![nospace(member_id)]);
    let s = m.status().await;
    assert_eq!(
        s.errors,
        vec![format!("memberID:{member_id} alarm:NOSPACE ")]
    );
    let (code, _, body) = m.http_get("GET", "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n")
    );
    let (code, _, _) = m.http_get("GET", "/health?exclude=NOSPACE").await;
    assert_eq!(code, 200);

    // While the alarm is on: every put and every txn with a put is
    // refused, even tiny ones; reads, deletes and compactions work.
    assert_nospace(put(&mut kv, "small", b"v".to_vec()).await);
    let txn_put = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: b"t".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let err = within("txn", kv.txn(txn_put.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let all = range_all(&mut kv, 0).await.unwrap();
    assert_eq!(all.count, stored);

    // The alarm is replicated state: it survives a restart.
    drop(kv);
    m.restart("m1").await;
    assert_eq!(alarms(&m).await, vec![nospace(member_id)]);
    let mut kv = m.kv().await;
    assert_nospace(put(&mut kv, "small", b"v".to_vec()).await);

    assert_eq!(delete(&mut kv, "big", "bih").await, stored);
    let rev = m.status().await.header.unwrap().revision;
    compact(&mut kv, rev).await;
    let before = m.status().await.db_size;
    within(
        "defrag",
        m.maintenance().await.defragment(DefragmentRequest {}),
    )
    .await
    .expect("defragment");
    let started = Instant::now();
    loop {
        let size = m.status().await.db_size;
        if size < QUOTA / 2 && size < before {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "db size {size} (before defragment {before}) did not shrink"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still refused: the alarm stays until disarmed.
    assert_nospace(put(&mut kv, "small", b"v".to_vec()).await);

    let disarmed = within(
        "disarm",
        m.maintenance().await.alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id,
            alarm: AlarmType::Nospace as i32,
        }),
    )
    .await
    .expect("disarm")
    .into_inner();
    assert_eq!(disarmed.alarms, vec![nospace(member_id)]);
    assert!(alarms(&m).await.is_empty());
    assert!(m.status().await.errors.is_empty());
    put(&mut kv, "small", b"v".to_vec())
        .await
        .expect("writes work again");
    within("txn", kv.txn(txn_put))
        .await
        .expect("txn with a put works again");
    let (code, _, body) = m.http_get("GET", "/health").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "{\"health\":\"true\",\"reason\":\"\"}")
    );
    drop(kv);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restore_and_start() {
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(&dir.path().join("original"), 0, "m1").await;
    let mut kv = m.kv().await;
    let compacted = make_history(&mut kv).await;
    // Values larger than a snapshot message, so the stream has many.
    for i in 0..4 {
        put(&mut kv, &format!("large{i}"), vec![b'0' + i as u8; 50_000])
            .await
            .unwrap();
    }
    let current = m.status().await.header.unwrap().revision;
    let original = range_all(&mut kv, 0).await.unwrap();
    let original_hash = hash_kv(&m, 0).await.unwrap();

    // Save as etcdctl does: every blob, the last one being the checksum.
    let mut stream = within(
        "snapshot",
        m.maintenance().await.snapshot(SnapshotRequest {}),
    )
    .await
    .expect("snapshot")
    .into_inner();
    let mut file = Vec::new();
    let mut messages = Vec::new();
    while let Some(msg) = within("snapshot chunk", stream.next()).await {
        let msg = msg.expect("snapshot chunk");
        messages.push((msg.remaining_bytes, msg.blob.len()));
        file.extend_from_slice(&msg.blob);
    }
    assert!(messages.len() > 3, "{messages:?}");
    assert!(messages.iter().all(|(_, n)| *n <= 32 * 1024));
    let (last_remaining, last_len) = messages[messages.len() - 1];
    assert_eq!(
        (last_remaining, last_len),
        (0, 32),
        "the checksum comes last"
    );
    let image_len = file.len() as u64 - 32;
    // remaining_bytes counts down to 0 over the image.
    assert_eq!(
        messages[0].0,
        image_len - messages[0].1 as u64,
        "{messages:?}"
    );
    assert_eq!(messages[messages.len() - 2].0, 0);
    // etcdctl 3.4 only keeps files whose size is 512·n + 32.
    assert_eq!(file.len() % 512, 32);
    let snap = dir.path().join("snapshot.db");
    std::fs::write(&snap, &file).unwrap();

    // A damaged file is refused and leaves nothing behind.
    let mut bad = file.clone();
    bad[100] ^= 1;
    let bad_path = dir.path().join("bad.db");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["snapshot", "restore"])
        .arg(&bad_path)
        .arg("--data-dir")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("bad").exists());

    let restored_dir = dir.path().join("restored");
    let restored_peer = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&restored_dir)
        .args(["--name", "m2", "--initial-advertise-peer-urls"])
        .arg(peer_url(restored_peer))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same directory is not overwritten.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&restored_dir)
        .args(["--name", "m2"])
        .output()
        .unwrap();
    assert!(!again.status.success());

    drop(kv);
    m.stop().await;
    let mut r = Member::start_with_peer_port(&restored_dir, 0, "m2", restored_peer).await;
    let mut kv = r.kv().await;
    let restored = range_all(&mut kv, 0).await.unwrap();
    assert_eq!(restored.kvs, original.kvs);
    assert_eq!(restored.header.unwrap().revision, current);
    assert_eq!(hash_kv(&r, 0).await.unwrap(), original_hash);
    // The compaction point came along: older revisions are gone, the
    // compaction point itself is readable.
    let err = range_all(&mut kv, compacted - 1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    range_all(&mut kv, compacted).await.unwrap();
    // The restored member starts a new log and takes writes.
    let status = r.status().await;
    assert!(status.raft_applied_index < 5, "{status:?}");
    assert_eq!(
        put(&mut kv, "new", b"v".to_vec()).await.unwrap(),
        current + 1
    );
    drop(kv);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_beside_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::start(dir.path(), 0, "m1").await;
    let member_id = m.status().await.header.unwrap().member_id;
    let mut kv = m.kv().await;
    let rev = put(&mut kv, "a", b"1".to_vec()).await.unwrap();
    range_all(&mut kv, 0).await.unwrap();
    let err = within("range", kv.range(RangeRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let (code, ctype, body) = m.http_get("GET", "/health").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (code, ctype, body) = m.http_get("GET", "/version").await;
    assert_eq!((code, ctype.as_str()), (200, "application/json"));
    assert_eq!(body, r#"{"etcdserver":"3.5.17","etcdcluster":"3.5.0"}"#);

    let (code, ctype, body) = m.http_get("GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for line in [
        "etcd_server_has_leader 1",
        "etcd_server_is_leader 1",
        "etcd_server_proposals_pending 0",
        "etcd_server_proposals_failed_total 0",
        "etcd_server_version{server_version=\"3.5.17\"} 1",
        "etcd_disk_wal_fsync_duration_seconds_count 1",
        "etcd_disk_backend_commit_duration_seconds_count 1",
        // Never compacted: -1, as etcd 3.4.23 reports.
        "etcd_debugging_mvcc_compact_revision -1",
        "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
        "# TYPE etcd_server_proposals_committed_total gauge",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    for name in [
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_disk_backend_commit_duration_seconds_bucket",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_server_quota_backend_bytes",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(name)),
            "no {name} in\n{body}"
        );
    }
    assert!(body
        .lines()
        .any(|l| l == format!("etcd_server_id{{server_id=\"{member_id:x}\"}} 1")));
    assert!(body
        .lines()
        .any(|l| l == format!("etcd_debugging_mvcc_current_revision {rev}")));
    let status = m.status().await;
    assert!(body.lines().any(|l| l
        == format!(
            "etcd_server_proposals_applied_total {}",
            status.raft_applied_index
        )));

    // Only GET; unknown paths are 404 as in etcd.
    let (code, _, _) = m.http_get("POST", "/health").await;
    assert_eq!(code, 405);
    let (code, _, body) = m.http_get("GET", "/nothing").await;
    assert_eq!((code, body.as_str()), (404, "404 page not found\n"));
    // gRPC still works on the same port after HTTP/1 traffic.
    assert_eq!(range_all(&mut kv, 0).await.unwrap().count, 1);
    drop(kv);
    m.stop().await;
}
