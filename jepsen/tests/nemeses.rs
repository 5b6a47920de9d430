//! The `member` and `compact` nemeses under load, on Ballast and (if
//! installed) etcd: short runs that must be valid and must have removed and
//! re-added a member and compacted at least once; and the watch workload's
//! handling of a watch canceled by a compaction, against a real member.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_jepsen::checker::watch::{check_watch, F_COMPACT};
use ballast_jepsen::checker::Verdict;
use ballast_jepsen::client;
use ballast_jepsen::db::DbKind;
use ballast_jepsen::history::{self, Event, EventType, Process, Recorder};
use ballast_jepsen::run::start_cluster;
use ballast_jepsen::workloads::watch::{final_history, watcher, Progress};
use serde_json::{json, Value};
use tokio::sync::watch as signal;

/// The harness runs take turns: two clusters under load at once on a
/// 2-core CI machine would slow each other into timeouts.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `register,watch` for 20 s under `member,compact` every ~3 s (seed
/// 7 draws member, compact, member) and checks the outcome.
fn member_and_compact_run(db: &str, binary: &Path) {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let binary = binary.to_string_lossy().into_owned();
    let (code, results) = common::run_harness(
        &[
            "run",
            "--db",
            db,
            "--nodes",
            "3",
            "--workload",
            "register,watch",
            "--nemesis",
            "member,compact",
            "--time-limit",
            "20",
            "--nemesis-interval",
            "3",
            "--seed",
            "7",
            "--binary",
            &binary,
        ],
        &[],
        &out,
    );
    assert_eq!(code, Some(0), "results:\n{results}");
    let r: Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["verdict"], "valid");
    let events = history::read_jsonl(&out.join("history.jsonl")).unwrap();
    let nemesis = |f: &str, kind: EventType| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.process == Process::named("nemesis") && e.f == f && e.kind == kind)
            .collect()
    };
    let added = nemesis("member-add", EventType::Ok);
    assert!(!added.is_empty(), "no member was added back");
    for a in &added {
        // A re-added member has a new ID.
        assert_ne!(a.value["id"], a.value["old_id"], "{a:?}");
        assert!(a.value["id"].is_string(), "{a:?}");
    }
    assert!(!nemesis("member-remove", EventType::Ok).is_empty());
    let compactions = nemesis(F_COMPACT, EventType::Ok);
    assert!(!compactions.is_empty(), "no compaction");
    assert!(!nemesis("defragment", EventType::Ok).is_empty());
    // The final histories start above the highest compaction.
    let highest = compactions
        .iter()
        .filter_map(|e| e.value["revision"].as_i64())
        .max()
        .unwrap();
    let finals: Vec<&Event> = events
        .iter()
        .filter(|e| e.f == "final-watch" && e.kind == EventType::Invoke)
        .collect();
    assert_eq!(finals.len(), 3);
    for f in finals {
        assert_eq!(f.value["from"], json!(highest + 1), "{f:?}");
    }
    let summary = |name: &str| -> String {
        r["checkers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["summary"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        summary("committed-writes").contains(&format!("compacted at revision {highest}")),
        "{results}"
    );
    assert!(
        summary("watch").contains(&format!("above the compaction at revision {highest}")),
        "{results}"
    );
    assert!(
        summary("convergence").contains("3 members agree"),
        "{results}"
    );
}

#[test]
fn member_and_compact_on_ballast() {
    member_and_compact_run("ballast", &common::ballast_bin());
}

#[test]
fn member_and_compact_on_etcd() {
    let Some(etcd) = common::etcd_bin() else {
        eprintln!("etcd is not installed; skipped");
        return;
    };
    member_and_compact_run("etcd", &etcd);
}

/// A watcher starting below a compaction is canceled with the compact
/// revision, records it, resumes there, and the checker accepts the gap
/// because the compaction was requested first; without that record of the
/// compaction, the same gap is a violation.
async fn watcher_resumes_after_a_compaction(db: DbKind, binary: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _proxy) = start_cluster(db, binary, 1, dir.path(), 100, 1000)
        .await
        .unwrap();
    let ep = cluster.endpoints()[0].clone();
    let mut c = client::connect(&ep, Duration::from_secs(5)).await.unwrap();
    for v in 1..=10 {
        c.put("w/0", v.to_string(), None).await.unwrap();
    }
    // Revisions 2..=11 written; compacted at 8.
    let recorder = Arc::new(Recorder::new());
    let compact = |kind| {
        Event::new(
            Process::named("nemesis"),
            kind,
            F_COMPACT,
            json!({ "revision": 8 }),
        )
    };
    recorder.record(compact(EventType::Invoke));
    c.compact(8, None).await.unwrap();
    recorder.record(compact(EventType::Ok));

    let progress = Arc::new(Progress::new(1));
    let (stop, stop_rx) = signal::channel(false);
    let task = tokio::spawn(watcher(
        recorder.clone(),
        ep.clone(),
        "n1".into(),
        0,
        progress.clone(),
        stop_rx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while progress.last(0) < 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not reach revision 11: {:?}",
            recorder.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(final_history(&recorder, &ep, "n1", 9, 11, Duration::from_secs(10)).await);
    cluster.stop_all();

    let events = recorder.snapshot();
    let cancel = events
        .iter()
        .find(|e| e.f == "watch" && e.kind == EventType::Info)
        .expect("a canceled session");
    let cr = cancel.value["compact_revision"].as_i64().unwrap();
    eprintln!("{db:?}: canceled with compact revision {cr}");
    // etcd says 8; Ballast 8, or 9 (the first it can serve).
    assert!((8..=9).contains(&cr), "{cancel:?}");
    let resumed = events
        .iter()
        .filter(|e| e.f == "watch" && e.kind == EventType::Invoke)
        .nth(1)
        .expect("a second session");
    assert_eq!(resumed.value["from"], json!(cr), "{events:?}");
    let r = check_watch(&events);
    assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
    assert_eq!(
        r.details["skipped_by_compaction"][0]["skipped"],
        json!([2, cr - 1])
    );
    // Had the compaction not been requested, the gap is the store's.
    let without: Vec<Event> = events.into_iter().filter(|e| e.f != F_COMPACT).collect();
    let r = check_watch(&without);
    assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballast_watcher_resumes_after_a_compaction() {
    watcher_resumes_after_a_compaction(DbKind::Ballast, &common::ballast_bin()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watcher_resumes_after_a_compaction() {
    let Some(etcd) = common::etcd_bin() else {
        eprintln!("etcd is not installed; skipped");
        return;
    };
    watcher_resumes_after_a_compaction(DbKind::Etcd, &etcd).await;
}
