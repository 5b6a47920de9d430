//! The Lease service of a member run in this process
//! (`ballast_server::run`), driven with the `etcd-client` crate and
//! `etcdctl lease` / `etcdctl lock` (3.4). Each test has its own ports
//! (below 32768) and data directory; every wait has a deadline.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::LeaseKeepAliveRequest;
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;
use common::{within, Member};

/// What these tests need of a member beyond the shared harness.
trait LeaseMember {
    async fn client(&self) -> Client;
}

impl LeaseMember for Member {
    async fn client(&self) -> Client {
        within("connect", Client::connect([self.endpoint()], None))
            .await
            .expect("connect")
    }
}

fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

async fn get(c: &mut Client, key: &str) -> Option<(String, i64)> {
    let r = within("get", c.get(key, None)).await.expect("get");
    r.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap().to_string(), kv.lease()))
}

#[tokio::test]
async fn grant_keepalive_ttl_leases_revoke_and_errors() {
    let mut m = Member::start("l1", &[]).await;
    let mut c = m.client().await;

    // A TTL below the minimum (2 s with a 1000 ms election timeout) is
    // raised; ID 0 gets a random positive ID.
    let short = within("grant", c.lease_grant(1, None)).await.unwrap();
    assert_eq!(short.ttl(), 2);
    assert!(short.id() > 0);
    let id = 0x1234;
    let g = within(
        "grant",
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(id))),
    )
    .await
    .unwrap();
    assert_eq!((g.id(), g.ttl()), (id, 30));

    // Errors, as etcd's.
    let e = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    let e = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL".into()
        )
    );
    let e = c
        .put("nolease", "v", Some(PutOptions::new().with_lease(777)))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );

    within(
        "put",
        c.put("k1", "v", Some(PutOptions::new().with_lease(id))),
    )
    .await
    .unwrap();
    within(
        "put",
        c.put("k2", "v", Some(PutOptions::new().with_lease(id))),
    )
    .await
    .unwrap();
    assert_eq!(get(&mut c, "k1").await, Some(("v".into(), id)));

    let t = within(
        "ttl",
        c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .unwrap();
    assert_eq!(t.granted_ttl(), 30);
    assert!((25..=30).contains(&t.ttl()), "remaining {}", t.ttl());
    assert_eq!(t.keys(), [b"k1".to_vec(), b"k2".to_vec()]);
    // Unknown lease: TTL -1, no error.
    let t = within("ttl", c.lease_time_to_live(999, None))
        .await
        .unwrap();
    assert_eq!(t.ttl(), -1);

    let mut ids: Vec<i64> = within("leases", c.leases())
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut want = vec![id, short.id()];
    want.sort();
    assert_eq!(ids, want);

    let (mut keeper, mut stream) = within("keepalive", c.lease_keep_alive(id)).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = within("keepalive answer", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.id(), r.ttl()), (id, 30));
    // Unknown lease: TTL 0, the stream goes on (a raw stream: etcd-client
    // turns TTL 0 into an error).
    let mut raw = within(
        "connect",
        LeaseClient::connect(format!("http://{}", m.endpoint())),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut s2 = within(
        "keepalive",
        raw.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    for lease in [4242, id, 4242] {
        tx.send(LeaseKeepAliveRequest { id: lease }).await.unwrap();
        let r = within("keepalive answer", s2.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.id, r.ttl), (lease, if lease == id { 30 } else { 0 }));
    }

    // Revoke deletes the keys in one revision.
    let before = within("get", c.get("k1", None))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = within("revoke", c.lease_revoke(id)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);
    assert_eq!(get(&mut c, "k1").await, None);
    assert_eq!(get(&mut c, "k2").await, None);
    let e = c.lease_revoke(id).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let t = within("ttl", c.lease_time_to_live(id, None)).await.unwrap();
    assert_eq!(t.ttl(), -1);
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let r = within("keepalive answer", s2.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl, 0);
    drop((keeper, stream));
    m.stop().await;
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_and_watchers_see_it_unless_kept_alive() {
    let m = Member::start("l1", &[]).await;
    let mut c = m.client().await;
    let dying = within("grant", c.lease_grant(2, None)).await.unwrap().id();
    let kept = within("grant", c.lease_grant(2, None)).await.unwrap().id();
    for (k, l) in [("x/a", dying), ("x/b", dying), ("x/kept", kept)] {
        within("put", c.put(k, "v", Some(PutOptions::new().with_lease(l))))
            .await
            .unwrap();
    }
    let mut events = within(
        "watch",
        c.watch("x/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (mut keeper, mut acks) = within("keepalive", c.lease_keep_alive(kept)).await.unwrap();
    let keep = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match acks.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                other => panic!("keepalive failed: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // The two keys go in one DELETE revision, within TTL + checks + slack.
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let resp = within("expiry events", events.message())
            .await
            .unwrap()
            .unwrap();
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Delete, "{e:?}");
            let kv = e.kv().unwrap();
            deleted.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "expired early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "expired late: {took:?}");
    assert_eq!(deleted[0].0, "x/a");
    assert_eq!(deleted[1].0, "x/b");
    assert_eq!(deleted[0].1, deleted[1].1);
    let t = within("ttl", c.lease_time_to_live(dying, None))
        .await
        .unwrap();
    assert_eq!(t.ttl(), -1);

    // The kept-alive lease outlives its TTL twice over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(get(&mut c, "x/kept").await.is_some());
    let left = within("get", c.get("x/", Some(GetOptions::new().with_prefix())))
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 1);
    keep.abort();
}

fn have_etcdctl() -> bool {
    let ok = std::process::Command::new("etcdctl")
        .arg("version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("etcdctl not installed; skipping");
    }
    ok
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

async fn run(m: &Member, args: &[&str]) -> String {
    let out = within("etcdctl", etcdctl(m, args).output()).await.unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn etcdctl_lease_commands() {
    if !have_etcdctl() {
        return;
    }
    let m = Member::start("l1", &[]).await;
    let out = run(&m, &["lease", "grant", "30"]).await;
    // "lease 694d77aa9e38260f granted with TTL(30s)"
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], "lease", "{out}");
    assert!(out.contains("granted with TTL(30s)"), "{out}");
    let id = words[1].to_string();
    run(&m, &["put", "--lease", &id, "lk", "v"]).await;
    let out = run(&m, &["lease", "keep-alive", "--once", &id]).await;
    assert!(
        out.contains(&format!("lease {id} keepalived with TTL(30)")),
        "{out}"
    );
    let out = run(&m, &["lease", "timetolive", "--keys", &id]).await;
    assert!(out.contains("granted with TTL(30s)"), "{out}");
    assert!(out.contains("attached keys([lk])"), "{out}");
    let out = run(&m, &["lease", "list"]).await;
    assert!(out.contains(&id), "{out}");
    let out = run(&m, &["lease", "revoke", &id]).await;
    assert!(out.contains(&format!("lease {id} revoked")), "{out}");
    assert_eq!(run(&m, &["get", "lk"]).await, "");
    let out = run(&m, &["lease", "timetolive", &id]).await;
    assert!(out.contains("already expired"), "{out}");
}

#[tokio::test]
async fn etcdctl_lock_passes_when_the_holder_dies() {
    if !have_etcdctl() {
        return;
    }
    let m = Member::start("l1", &[]).await;
    let mut first = etcdctl(&m, &["lock", "--ttl", "2", "mylock"])
        .spawn()
        .expect("etcdctl");
    let mut out1 = BufReader::new(first.stdout.take().unwrap()).lines();
    let held = within("first lock", out1.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(held.starts_with("mylock/"), "{held}");

    let mut second = etcdctl(&m, &["lock", "--ttl", "2", "mylock"])
        .spawn()
        .expect("etcdctl");
    let mut out2 = BufReader::new(second.stdout.take().unwrap()).lines();
    // Still held (the first process keeps its session alive).
    let waited = tokio::time::timeout(Duration::from_secs(3), out2.next_line()).await;
    assert!(
        waited.is_err(),
        "second got the lock while the first held it: {waited:?}"
    );

    // The holder dies without unlocking: its session lease expires.
    first.kill().await.unwrap();
    let killed = Instant::now();
    let got = within("second lock", out2.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(got.starts_with("mylock/"), "{got}");
    assert_ne!(got, held);
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    second.kill().await.unwrap();
}
