//! The proxy's partitions really cut Raft traffic between the sides, in
//! both directions, and only between them: with the leader isolated, the
//! majority elects another leader and accepts writes, the old leader
//! cannot commit any, and after healing all members converge.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ballast_jepsen::client;
use ballast_jepsen::db::DbKind;
use ballast_jepsen::run::start_cluster;

async fn isolate_the_leader(db: DbKind, binary: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, proxy) = start_cluster(db, binary, 3, dir.path(), 100, 1000)
        .await
        .unwrap();
    let old = cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    let eps = cluster.endpoints().to_vec();
    let groups: Vec<usize> = (0..3).map(|i| usize::from(i == old)).collect();
    proxy.partition(groups);

    // The majority elects a new leader among themselves.
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_leader = loop {
        let mut seen = Vec::new();
        for &i in &majority {
            if let Ok(s) = client::status(&eps[i]).await {
                seen.push((s.id, s.leader));
            }
        }
        let ids: Vec<u64> = seen.iter().map(|s| s.0).collect();
        if seen.len() == 2 && seen[0].1 == seen[1].1 && ids.contains(&seen[0].1) {
            break seen[0].1;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader in the majority: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let old_id = client::status(&eps[old]).await.unwrap().id;
    assert_ne!(new_leader, old_id);

    // The majority commits; the isolated member cannot.
    let mut c = client::connect(&eps[majority[0]], Duration::from_secs(5))
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..10 {
        if c.put("majority", "1", None).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ok, "the majority does not accept writes");
    let mut iso = client::connect(&eps[old], Duration::from_secs(3))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(4), iso.put("minority", "1", None)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the isolated old leader committed a write"
    );
    let stats = proxy.stats();
    assert_eq!(stats.unknown_source, 0, "{stats:?}");
    assert!(stats.cut_live + stats.blackholed > 0, "{stats:?}");

    // Healed, everyone converges (the minority write may or may not have
    // been applied later: it is not checked).
    proxy.heal();
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut revs = Vec::new();
        for ep in &eps {
            revs.push(client::status(ep).await.map(|s| s.revision).unwrap_or(-1));
        }
        if revs.iter().all(|&r| r == revs[0] && r > 1) {
            let mut hashes = Vec::new();
            for ep in &eps {
                hashes.push(client::hash_kv(ep, revs[0]).await.unwrap().1);
            }
            assert!(hashes.iter().all(|&h| h == hashes[0]), "{hashes:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {revs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_isolation() {
    let Some(etcd) = common::etcd_bin() else {
        eprintln!("etcd is not installed; skipped");
        return;
    };
    isolate_the_leader(DbKind::Etcd, &etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballast_leader_isolation() {
    isolate_the_leader(DbKind::Ballast, &common::ballast_bin()).await;
}
