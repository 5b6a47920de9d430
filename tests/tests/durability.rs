//! Durability and start-up: acknowledged writes survive `kill -9`, the
//! compaction point and key histories survive a restart, and a member
//! refuses data directories and ports it must not use, changing nothing.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_e2e::etcd_client::{Client, CompactionOptions, GetOptions};
use ballast_e2e::{
    assert_grpc_err, free_port, run_ballast_to_exit, snapshot_tree, within, EtcdOpts,
    EtcdReference, Member, Output, Target,
};

const WRITERS: usize = 8;

async fn current_revision(c: &mut Client) -> i64 {
    c.get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// Starts `WRITERS` tasks that put unique keys `w<round>/<task>/<n>` until
/// the member dies or `stop` is set; every acknowledged put is recorded
/// with its revision.
fn start_writers(
    client: &Client,
    round: usize,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<(String, i64)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|t| {
            let mut c = client.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{round}/{t}/{n:06}");
                    let res = tokio::time::timeout(
                        Duration::from_secs(5),
                        c.put(key.as_str(), key.as_str(), None),
                    )
                    .await;
                    match res {
                        Ok(Ok(r)) => {
                            let rev = r.header().expect("header").revision();
                            acked.lock().unwrap().push((key, rev));
                        }
                        // The member was killed: this put may or may not
                        // have been applied; it was not acknowledged.
                        _ => break,
                    }
                }
            })
        })
        .collect()
}

/// Checks every acknowledged put against the restarted member.
async fn check_acked(c: &mut Client, acked: &[(String, i64)]) -> i64 {
    let r = c
        .get("w", Some(GetOptions::new().with_prefix()))
        .await
        .expect("range of written keys");
    let current = r.header().unwrap().revision();
    let present: BTreeMap<String, (i64, i64, i64, Vec<u8>)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (
                    kv.mod_revision(),
                    kv.create_revision(),
                    kv.version(),
                    kv.value().to_vec(),
                ),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (key, rev) in acked {
        match present.get(key) {
            None => lost.push(format!("{key} (acknowledged at revision {rev}) is missing")),
            Some((m, cr, v, val)) => {
                if (*m, *cr, *v) != (*rev, *rev, 1) || val != key.as_bytes() {
                    lost.push(format!(
                        "{key}: acknowledged at revision {rev}, found mod {m} create {cr} version {v}"
                    ));
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged writes lost or changed:\n{}",
        lost.join("\n")
    );
    // Each put is its own revision; unacknowledged ones that did apply are
    // fine, but they too have distinct revisions, all <= current.
    let mut revs = HashSet::new();
    for (k, (m, ..)) in &present {
        assert!(revs.insert(*m), "two keys share revision {m} ({k})");
        assert!(
            *m <= current,
            "{k} has revision {m} above the current {current}"
        );
    }
    let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap_or(0);
    assert!(
        current >= max_acked,
        "revision went back: current {current} < acknowledged {max_acked}"
    );
    current
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9() {
    let mut m = Member::start_default().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..2 {
        let client = m.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().unwrap().len();
        let writers = start_writers(&client, round, &stop, &acked);
        // Let them write for a while, then kill the member under load.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() < before + 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            within("a writer", Duration::from_secs(20), w)
                .await
                .expect("writer task");
        }
        let n = acked.lock().unwrap().len() - before;
        assert!(n > 0, "no write was acknowledged in round {round}");
        eprintln!("round {round}: {n} puts acknowledged before kill -9");

        m.restart().await;
        let mut c = m.client().await;
        let acked_now = acked.lock().unwrap().clone();
        let current = within(
            "check",
            Duration::from_secs(20),
            check_acked(&mut c, &acked_now),
        )
        .await;
        // New writes continue from there.
        let r = c
            .put("after-restart", "x", None)
            .await
            .expect("put after restart");
        assert_eq!(r.header().unwrap().revision(), current + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_versions_survive_kill9() {
    let mut m = Member::start_default().await;
    let mut c = m.client().await;
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    let (r_first, r_compact, r_phys, r_end) = within("writes", Duration::from_secs(30), async {
        let r_first = c
            .put("v", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        for i in 2..=6 {
            c.put("v", i.to_string(), None).await.unwrap();
        }
        c.put("gone", "x", None).await.unwrap();
        c.delete("gone", None).await.unwrap();
        c.put("reborn", "1", None).await.unwrap();
        c.delete("reborn", None).await.unwrap();
        c.put("reborn", "2", None).await.unwrap();
        let r_compact = current_revision(&mut c).await;
        c.put("v", "7", None).await.unwrap();
        // Logical compaction only: the kill may come before old versions
        // are removed from disk; the compaction point must hold anyway.
        c.compact(r_compact, None).await.unwrap();
        c.put("w", "1", None).await.unwrap();
        c.put("v", "8", None).await.unwrap();
        let r_phys = current_revision(&mut c).await;
        c.put("w", "2", None).await.unwrap();
        (r_first, r_compact, r_phys, current_revision(&mut c).await)
    })
    .await;

    let check = |phase: &'static str, c: Client, compact_rev: i64| async move {
        let mut c = c;
        assert_eq!(current_revision(&mut c).await, r_end, "{phase}: revision");
        assert_grpc_err(
            c.get("v", Some(GetOptions::new().with_revision(compact_rev - 1)))
                .await,
            "OutOfRange",
            compacted,
        );
        assert_grpc_err(c.compact(compact_rev, None).await, "OutOfRange", compacted);
        let at = c
            .get("v", Some(GetOptions::new().with_revision(compact_rev)))
            .await
            .unwrap_or_else(|e| panic!("{phase}: read at the compaction point: {e}"));
        assert_eq!(at.kvs().len(), 1, "{phase}");
        let kv = c.get("v", None).await.unwrap().kvs()[0].clone();
        assert_eq!(kv.value(), b"8", "{phase}");
        assert_eq!(kv.version(), 8, "{phase}");
        assert_eq!(kv.create_revision(), r_first, "{phase}");
        let kv = c.get("reborn", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.value(), kv.version()), (&b"2"[..], 1), "{phase}");
        assert_eq!(kv.create_revision(), kv.mod_revision(), "{phase}");
        assert!(
            c.get("gone", None).await.unwrap().kvs().is_empty(),
            "{phase}"
        );
        let w = c.get("w", None).await.unwrap().kvs()[0].clone();
        assert_eq!((w.version(), w.mod_revision()), (2, r_end), "{phase}");
    };

    within(
        "before kill",
        Duration::from_secs(20),
        check("before kill", c.clone(), r_compact),
    )
    .await;
    m.kill9();
    m.restart().await;
    let c = m.client().await;
    within(
        "after kill",
        Duration::from_secs(20),
        check("after kill -9", c.clone(), r_compact),
    )
    .await;

    // Physical compaction, then kill -9 again.
    let mut c2 = c.clone();
    c2.compact(r_phys, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("physical compaction");
    m.kill9();
    m.restart().await;
    let c = m.client().await;
    within(
        "after physical",
        Duration::from_secs(20),
        check("after physical compaction and kill -9", c.clone(), r_phys),
    )
    .await;
    // Writes go on from the same revision.
    let mut c3 = c.clone();
    let r = c3.put("next", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), r_end + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_member_and_data_survives() {
    let mut m = Member::start_default().await;
    let mut c = m.client().await;
    let r = c
        .put("k", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    drop(c);
    let started = Instant::now();
    let status = m.terminate();
    eprintln!("exit after SIGTERM: {status} in {:?}", started.elapsed());
    // (Not asserted: the exit status; see the report of the intermittent
    // abort at shutdown, "terminate called without an active exception".)
    assert!(m.log_tail(100).contains("ready to serve client requests"));
    m.restart().await;
    let mut c = m.client().await;
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.mod_revision()), (&b"v"[..], r));
}

// ---------------------------------------------------------------------------
// Start-up refusals

fn args_for(data_dir: &Path, port: u16) -> Vec<String> {
    let url = format!("http://127.0.0.1:{port}");
    vec![
        "--name".into(),
        "e2e".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        url.clone(),
        "--advertise-client-urls".into(),
        url,
    ]
}

/// Runs ballast on `data_dir` and expects it to refuse to start.
#[track_caller]
fn expect_refusal(data_dir: &Path, port: u16) -> Output {
    let args = args_for(data_dir, port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_ballast_to_exit(&args);
    assert!(
        !out.success(),
        "ballast started on {} but should have refused; stderr:\n{}",
        data_dir.display(),
        out.stderr
    );
    // It did not get as far as serving.
    assert!(
        !out.stderr.contains("ready to serve client requests"),
        "{}",
        out.stderr
    );
    out
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// RocksDB's diagnostic log, which a refused open rotates (see
/// `second_member_on_a_locked_data_dir_is_refused`).
fn is_rocksdb_info_log(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "LOG" || n.starts_with("LOG.old."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_member_on_a_locked_data_dir_is_refused() {
    let m = Member::start_default().await;
    let mut c = m.client().await;
    let r = c
        .put("k", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let before = snapshot_tree(m.data_dir());

    let out = tokio::task::block_in_place(|| expect_refusal(m.data_dir(), free_port()));
    assert!(
        out.stderr.contains("locked"),
        "the refusal should say the data dir is locked:\n{}",
        out.stderr
    );
    // The first member is unharmed and its data unchanged. (Known issue:
    // RocksDB's info log is rotated by the refused open — LOG is renamed to
    // LOG.old.<time> and a new LOG created — so those files are left out
    // of the comparison.)
    let after = snapshot_tree(m.data_dir());
    let data = |s: &Vec<(PathBuf, Option<Vec<u8>>)>| -> Vec<(PathBuf, Option<Vec<u8>>)> {
        s.iter()
            .filter(|(p, _)| !is_rocksdb_info_log(p))
            .cloned()
            .collect()
    };
    assert!(data(&before) == data(&after), "the data dir changed");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.mod_revision()), (&b"v"[..], r));
    c.put("k2", "v2", None)
        .await
        .expect("first member still takes writes");
}

#[test]
fn etcd_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(
        &data.join("member/wal/0000000000000000-0000000000000000.wal"),
        b"etcd wal bytes",
    );
    write(&data.join("member/snap/db"), b"bbolt bytes");
    let before = snapshot_tree(&data);
    let out = expect_refusal(&data, free_port());
    assert!(
        out.stderr.contains("etcd data directory") && out.stderr.contains("member/wal"),
        "the refusal should name the etcd data dir:\n{}",
        out.stderr
    );
    assert!(before == snapshot_tree(&data), "the data dir changed");

    // Only member/snap (etcd with its WAL elsewhere, --wal-dir).
    let data2 = dir.path().join("data2");
    write(&data2.join("member/snap/db"), b"bbolt bytes");
    let before = snapshot_tree(&data2);
    let out = expect_refusal(&data2, free_port());
    assert!(out.stderr.contains("etcd data directory"), "{}", out.stderr);
    assert!(before == snapshot_tree(&data2), "the data dir changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_etcd_data_dir_is_refused() {
    let Some(mut etcd) =
        EtcdReference::start("real_etcd_data_dir_is_refused", EtcdOpts::default()).await
    else {
        return;
    };
    etcd.etcdctl(&["put", "from-etcd", "x"]).ok();
    etcd.stop();
    let data = etcd.data_dir();
    let before = snapshot_tree(&data);
    assert!(data.join("member/wal").is_dir());
    let out = tokio::task::block_in_place(|| expect_refusal(&data, free_port()));
    assert!(out.stderr.contains("etcd data directory"), "{}", out.stderr);
    assert!(before == snapshot_tree(&data), "the etcd data dir changed");
}

#[test]
fn foreign_content_at_the_kv_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write(&data.join("member/kv/notes.txt"), b"not a database");
    write(&data.join("member/kv/sub/more.bin"), &[0u8, 1, 2, 255]);
    let before = snapshot_tree(&data);
    let out = expect_refusal(&data, free_port());
    assert!(
        out.stderr.contains("holds no Ballast database"),
        "the refusal should say what is wrong:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("member/kv"), "{}", out.stderr);
    assert!(before == snapshot_tree(&data), "the data dir changed");

    // A file where the kv directory should be.
    let data2 = dir.path().join("data2");
    write(&data2.join("member/kv"), b"a file");
    let before = snapshot_tree(&data2);
    expect_refusal(&data2, free_port());
    assert!(before == snapshot_tree(&data2), "the data dir changed");
}

#[test]
fn port_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Hold a port; retry if another test grabs it first.
    let (holder, port) = (0..20)
        .find_map(|_| {
            let p = free_port();
            TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (l, p))
        })
        .expect("a port to hold");
    let out = expect_refusal(&data, port);
    let addr = format!("127.0.0.1:{port}");
    assert!(
        out.stderr.contains("cannot listen") && out.stderr.contains(&addr),
        "the refusal should name the address:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.to_lowercase().contains("address already in use"),
        "{}",
        out.stderr
    );
    // Nothing was created.
    assert!(
        !data.exists(),
        "the data dir was created: {:?}",
        snapshot_tree(&data)
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_of_a_running_member_is_refused() {
    let m = Member::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = tokio::task::block_in_place(|| expect_refusal(&data, m.port()));
    assert!(out.stderr.contains("cannot listen"), "{}", out.stderr);
    assert!(!data.exists());
    let mut c = m.client().await;
    c.put("still", "serving", None)
        .await
        .expect("first member unharmed");
}
