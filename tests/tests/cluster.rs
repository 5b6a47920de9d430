//! Multi-member clusters of real `ballast` processes under faults: a leader
//! killed under write load, a majority paused, every member restarted,
//! members removed and added under load, a member catching up by snapshot,
//! `etcdctl endpoint status --cluster`, and bad flags and bad peer traffic.
//!
//! Each test starts its own cluster on free ports (see
//! `ballast_e2e::cluster`), bounds every wait and every request, and stops
//! every process it started, also when it fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ballast_e2e::cluster::{
    check_acked, check_acked_with, connect_many, expect_failure, random_bytes, timed, wait_until,
    Cluster, ClusterOpts, Writers, CLIENT_TIMEOUT, CLUSTER_TIMEOUT,
};
use ballast_e2e::etcd_client::GetOptions;
use ballast_e2e::{free_port, run_ballast_to_exit, serde_json, Target};

/// How long the surviving members may take to elect a new leader after
/// the old one was killed. With `--election-timeout 500` a follower waits
/// out the leader's lease (openraft: the maximum election timeout, 1 s)
/// plus its own election timeout (500–1000 ms), then one vote round: about
/// 1.5–3 s, measured 1.5–4 s. The bound is higher because openraft 0.9
/// draws each member's election timeout once per process, so two
/// candidates whose timeouts round to the same number of ticks can split
/// the vote for several rounds in a row (seen once: four rounds, over 5 s).
const FAILOVER: Duration = Duration::from_secs(10);
/// A bound for waits that only depend on the cluster doing work (writes,
/// catch-up), generous for debug builds on two busy cores.
const WORK: Duration = Duration::from_secs(30);
/// How long a request that cannot succeed is given before it counts as
/// failed.
const HOPELESS: Duration = Duration::from_secs(3);

fn others(all: &[usize], but: &[usize]) -> Vec<usize> {
    all.iter().copied().filter(|i| !but.contains(i)).collect()
}

fn serializable() -> GetOptions {
    GetOptions::new().with_serializable()
}

/// Puts `n` keys `<prefix>/<i>` one after another through `member` and
/// returns the revision of the last.
async fn put_keys(cluster: &Cluster, member: usize, prefix: &str, n: usize) -> i64 {
    let mut c = cluster.member(member).connect(false).await;
    let mut rev = 0;
    for i in 0..n {
        let key = format!("{prefix}/{i:04}");
        let r = timed(CLIENT_TIMEOUT, c.put(key.as_str(), key.as_str(), None))
            .await
            .unwrap_or_else(|e| panic!("put {key} through {}: {e}", cluster.member(member).name()));
        rev = r.header().expect("header").revision();
    }
    rev
}

/// The acknowledged revisions are all different (each put is one revision).
fn assert_distinct_revisions(acked: &[(String, i64)]) {
    let revs: BTreeSet<i64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revs.len(),
        acked.len(),
        "two acknowledged puts share a revision"
    );
}

// ---------------------------------------------------------------------------
// 1. The leader is killed under write load.

/// Stops `writers`, then checks that their acknowledged puts have distinct
/// revisions and are all there, at those revisions, through a
/// linearizable read on each of `members`; returns the puts.
async fn stop_and_check_acked(
    writers: Writers,
    cluster: &Cluster,
    members: &[usize],
    prefix: &str,
) -> Vec<ballast_e2e::cluster::Acked> {
    let failed = writers.failed();
    let errors = writers.errors();
    let acked = writers.stop().await;
    eprintln!(
        "{} puts acknowledged, {failed} failed: {errors:?}",
        acked.len()
    );
    assert_distinct_revisions(&acked);
    for &i in members {
        let mut c = cluster.member(i).connect(false).await;
        check_acked(&mut c, prefix, &acked)
            .await
            .unwrap_or_else(|e| panic!("through {}: {e}", cluster.member(i).name()));
    }
    acked
}

/// Kills the leader and `followers` followers of a `size`-member cluster
/// with `kill -9` under write load, checks the failover and every
/// acknowledged put, restarts them and waits for every member to converge.
async fn kill_under_load(size: usize, followers: usize) {
    let mut cluster = Cluster::start(ClusterOpts::size(size)).await;
    let all = cluster.all();
    let old = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let client = connect_many(&cluster.endpoints(&all)).await;
    let writers = Writers::start(&client, "load", 6);
    writers.wait_acked(150, WORK).await;

    let mut victims = vec![old.index];
    victims.extend(others(&all, &[old.index]).into_iter().take(followers));
    for &v in &victims {
        cluster.member_mut(v).kill9();
    }
    let killed = Instant::now();
    let at_kill = writers.acked();
    let rest = others(&all, &victims);
    let new = cluster.wait_leader(&rest, FAILOVER).await;
    eprintln!(
        "{size} members: new leader {} (term {}) {:?} after the kill of the leader {} (term {})",
        cluster.member(new.index).name(),
        new.term,
        killed.elapsed(),
        cluster.member(old.index).name(),
        old.term,
    );
    assert!(new.term > old.term, "{new:?} after {old:?}");

    // The cluster keeps taking writes from the same clients.
    writers.wait_acked(at_kill + 150, WORK).await;
    // Every acknowledged put is there, at the revision it was acknowledged
    // with (linearizable reads through every surviving member).
    let acked = stop_and_check_acked(writers, &cluster, &rest, "load").await;

    // The killed members come back and catch up.
    for &v in &victims {
        cluster.member_mut(v).restart().await;
    }
    let h = cluster.wait_converged(&all, WORK).await;
    let last = acked.iter().map(|(_, r)| *r).max().unwrap_or(0);
    assert!(
        h.revision >= last,
        "{h:?} is behind the last acknowledged revision {last}"
    );
    for &v in &victims {
        let mut c = cluster.member(v).connect(false).await;
        check_acked_with(&mut c, "load", &acked, serializable())
            .await
            .unwrap_or_else(|e| panic!("on the restarted {}: {e}", cluster.member(v).name()));
    }
    cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_write_load_loses_no_acknowledged_write() {
    kill_under_load(3, 0).await;
}

/// Five members: the leader and a follower killed at once leave a quorum
/// of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_follower_of_five_killed_under_write_load() {
    kill_under_load(5, 1).await;
}

// ---------------------------------------------------------------------------
// 2. A majority is paused: the remaining member cannot answer what needs a
// quorum, still answers serializable reads, and loses its leader.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_cut_off_from_the_majority_refuses_quorum_requests() {
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let rev = put_keys(&cluster, leader.index, "old", 20).await;
    let before = cluster.wait_converged(&all, WORK).await;
    assert_eq!(before.revision, rev);

    // Keep a follower; pause the leader and the other follower.
    let lone = others(&all, &[leader.index])[0];
    let paused = others(&all, &[lone]);
    for &i in &paused {
        cluster.member_mut(i).pause();
    }
    let paused_at = Instant::now();
    let m = cluster.member(lone);
    let mut c = m.connect(false).await;

    let r = timed(HOPELESS, c.get("old/0000", None)).await;
    let e = expect_failure(
        "a linearizable Get without a quorum",
        r.map(|r| r.kvs().len()),
    );
    eprintln!("linearizable Get: {e}");
    let r = timed(HOPELESS, c.put("new", "x", None)).await;
    let e = expect_failure("a Put without a quorum", r.map(|_| ()));
    eprintln!("Put: {e}");

    let r = timed(HOPELESS, c.get("old/", Some(serializable().with_prefix())))
        .await
        .expect("a serializable Get is served locally");
    assert_eq!(r.kvs().len(), 20);
    assert_eq!(r.header().expect("header").revision(), rev);
    assert_eq!(r.kvs()[7].value(), b"old/0007");

    // With `hasleader: true` the member refuses once it has lost its
    // leader (after an election timeout without heartbeats).
    let mut strict = m.connect(true).await;
    let e = wait_until("`hasleader` refused with no leader", WORK, || {
        let mut strict = strict.clone();
        async move {
            match timed(HOPELESS, strict.get("old/0000", Some(serializable()))).await {
                Err(e) if e.contains("etcdserver: no leader") => Ok(e),
                Err(e) => Err(format!("failed otherwise: {e}")),
                Ok(_) => Err("still answered".into()),
            }
        }
    })
    .await;
    eprintln!(
        "`hasleader` refused {:?} after the pause: {e}",
        paused_at.elapsed()
    );
    let s = m.status().await.expect("status of the lone member");
    assert_eq!(s.leader(), 0, "the lone member still names a leader");

    for &i in &paused {
        cluster.member_mut(i).resume();
    }
    cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    // The cut-off member works again and catches up. (Right after the
    // resume an election may still happen: the resumed follower, which
    // heard from no leader while paused, may grant the lone member's
    // queued PreVote; a put then meets "no leader" for a moment.)
    wait_until("a put through the cut-off member", WORK, || {
        let mut c = c.clone();
        async move { timed(CLIENT_TIMEOUT, c.put("after", "resume", None)).await }
    })
    .await;
    let r = timed(CLIENT_TIMEOUT, strict.get("after", None))
        .await
        .expect("linearizable get with hasleader after the majority is back");
    assert_eq!(r.kvs()[0].value(), b"resume");
    let after = cluster.wait_converged(&all, WORK).await;
    assert!(after.revision > rev);
}

/// The leader itself cut off from the majority: etcd's leader steps down
/// after an election timeout without hearing from a quorum (CheckQuorum),
/// so it stops naming a leader and `hasleader` requests fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_the_majority_stops_claiming_leadership() {
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    put_keys(&cluster, leader.index, "old", 5).await;
    let paused = others(&all, &[leader.index]);
    for &i in &paused {
        cluster.member_mut(i).pause();
    }
    let paused_at = Instant::now();
    let m = cluster.member(leader.index);
    let mut strict = m.connect(true).await;
    let e = wait_until("`hasleader` refused with no leader", WORK, || {
        let mut strict = strict.clone();
        async move {
            match timed(HOPELESS, strict.get("old/0000", Some(serializable()))).await {
                Err(e) if e.contains("etcdserver: no leader") => Ok(e),
                Err(e) => Err(format!("failed otherwise: {e}")),
                Ok(_) => Err("still answered".into()),
            }
        }
    })
    .await;
    eprintln!(
        "cut-off leader: `hasleader` refused {:?} after the pause: {e}",
        paused_at.elapsed()
    );

    let mut c = m.connect(false).await;
    let r = timed(HOPELESS, c.get("old/0000", None)).await;
    expect_failure(
        "a linearizable Get without a quorum",
        r.map(|r| r.kvs().len()),
    );
    let r = timed(HOPELESS, c.put("new", "x", None)).await;
    expect_failure("a Put without a quorum", r.map(|_| ()));
    let r = timed(HOPELESS, c.get("old/", Some(serializable().with_prefix())))
        .await
        .expect("a serializable Get is served locally");
    assert_eq!(r.kvs().len(), 5);

    let s = m.status().await.expect("status of the cut-off leader");
    assert_eq!(s.leader(), 0, "the cut-off leader still names a leader");
    let out = ballast_e2e::etcdctl_at(&m.endpoint(), &["endpoint", "health"], None);
    assert!(
        !out.success(),
        "a leader without a quorum is healthy: {}",
        out.stdout
    );

    for &i in &paused {
        cluster.member_mut(i).resume();
    }
    cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    timed(CLIENT_TIMEOUT, strict.put("after", "resume", None))
        .await
        .expect("put after the majority is back");
    cluster.wait_converged(&all, WORK).await;
}

// ---------------------------------------------------------------------------
// 3. Every member restarted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_restarted_keep_data_and_revision() {
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    put_keys(&cluster, leader.index, "keep", 50).await;
    let mut c = cluster.member(leader.index).connect(false).await;
    timed(
        CLIENT_TIMEOUT,
        c.delete(
            "keep/001",
            Some(ballast_e2e::etcd_client::DeleteOptions::new().with_prefix()),
        ),
    )
    .await
    .expect("delete");
    let before = cluster.wait_converged(&all, WORK).await;

    for &i in &all {
        let status = cluster.member_mut(i).terminate();
        assert!(
            status.success(),
            "{} exited with {status}",
            cluster.member(i).name()
        );
    }
    for &i in &all {
        cluster.member_mut(i).spawn();
    }
    for &i in &all {
        if let Err(f) = cluster.member_mut(i).wait_serving().await {
            panic!("{} did not restart: {f:?}", cluster.member(i).name());
        }
    }
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let after = cluster.wait_converged(&all, WORK).await;
    assert_eq!(after, before, "HashKV changed across the restart");

    for &i in &all {
        let mut c = cluster.member(i).connect(false).await;
        let r = timed(
            CLIENT_TIMEOUT,
            c.get("keep/", Some(GetOptions::new().with_prefix())),
        )
        .await
        .expect("get after restart");
        assert_eq!(r.kvs().len(), 40, "on {}", cluster.member(i).name());
        assert_eq!(r.header().expect("header").revision(), before.revision);
    }
    // Writes continue, at the next revision.
    let mut c = cluster.member(leader.index).connect(false).await;
    let r = timed(CLIENT_TIMEOUT, c.put("after-restart", "1", None))
        .await
        .expect("put after restart");
    assert_eq!(r.header().expect("header").revision(), before.revision + 1);
    cluster.wait_converged(&all, WORK).await;
}

// ---------------------------------------------------------------------------
// 4. A member removed and another added under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_removed_and_added_under_load() {
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let gone = others(&all, &[leader.index])[0];
    let gone_id = cluster.member_id(gone).await;
    let stay = others(&all, &[gone]);
    let client = connect_many(&cluster.endpoints(&stay)).await;
    let writers = Writers::start(&client, "churn", 4);
    writers.wait_acked(50, WORK).await;

    let c = cluster.member(leader.index).connect(false).await;
    let r = timed(CLIENT_TIMEOUT, c.cluster_client().member_remove(gone_id))
        .await
        .expect("member remove");
    assert!(r.members().iter().all(|m| m.id() != gone_id));
    assert_eq!(r.members().len(), 2);
    cluster.member_mut(gone).mark_removed();
    // The cluster keeps serving, with the removed member still running.
    let n = writers.acked();
    writers.wait_acked(n + 100, WORK).await;
    cluster.wait_leader(&stay, CLUSTER_TIMEOUT).await;
    cluster.member_mut(gone).kill9();

    let (added, added_id) = cluster.add_member("n4", leader.index).await;
    let n = writers.acked();
    writers.wait_acked(n + 100, WORK).await;
    let acked = writers.stop().await;
    assert_distinct_revisions(&acked);

    let now = cluster.all();
    assert_eq!(now.len(), 3);
    cluster.wait_leader(&now, CLUSTER_TIMEOUT).await;
    cluster.wait_converged(&now, WORK).await;
    let mut c = cluster.member(added).connect(false).await;
    check_acked_with(&mut c, "churn", &acked, serializable())
        .await
        .unwrap_or_else(|e| panic!("on the added member: {e}"));
    check_acked(&mut c, "churn", &acked)
        .await
        .expect("linearizable");

    // `member list` names the new member with its client URL once it has
    // announced itself.
    let client_url = cluster.member(added).client_url();
    let peer_url = cluster.member(added).peer_url();
    wait_until("n4 listed with its name and client URL", WORK, || async {
        let c = cluster.member(stay[0]).connect(false).await;
        let r = timed(CLIENT_TIMEOUT, c.cluster_client().member_list()).await?;
        let listed: Vec<_> = r
            .members()
            .iter()
            .map(|m| {
                (
                    m.id(),
                    m.name().to_string(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect();
        let ok = r.members().len() == 3
            && r.members().iter().all(|m| m.id() != gone_id)
            && r.members().iter().any(|m| {
                m.id() == added_id
                    && m.name() == "n4"
                    && m.client_urls() == [client_url.clone()]
                    && m.peer_urls() == [peer_url.clone()]
                    && !m.is_learner()
            });
        if ok {
            Ok(())
        } else {
            Err(format!("{listed:x?}"))
        }
    })
    .await;
    let out = cluster
        .member(added)
        .etcdctl(&["member", "list", "-w", "json"]);
    let json = out.json();
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{json}");
    assert!(members
        .iter()
        .any(|m| m["name"] == "n4" && m["clientURLs"][0].as_str() == Some(client_url.as_str())));
}

// ---------------------------------------------------------------------------
// 5. A member that was down while the log was compacted catches up by
// snapshot.

/// MoveLeader (`etcdctl move-leader`) under write load: leadership goes to
/// each follower in turn, the term grows by one each time, no acknowledged
/// write is lost, and the refusals are etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_under_write_load() {
    let cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let client = connect_many(&cluster.endpoints(&all)).await;
    let writers = Writers::start(&client, "moved", 4);
    writers.wait_acked(50, WORK).await;

    let mut leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    for round in 0..2 {
        let target = others(&all, &[leader.index])[round % 2];
        let target_id = cluster.member_id(target).await;
        let mut m = cluster.member(leader.index).connect(false).await;
        let asked = Instant::now();
        // Under load a transfer may time out (etcd's answer then: "leader
        // transfer took too long"), as etcd's can; it must succeed within
        // three tries.
        let mut tries = 0;
        while let Err(e) = timed(WORK, m.move_leader(target_id)).await {
            tries += 1;
            eprintln!("move-leader to {}: {e}", cluster.member(target).name());
            assert!(
                e.contains("leader transfer took too long") && tries < 3,
                "move-leader to {}: {e}",
                cluster.member(target).name()
            );
            let now = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
            m = cluster.member(now.index).connect(false).await;
        }
        let took = asked.elapsed();
        let new = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
        eprintln!(
            "leadership moved from {} to {} (term {} -> {}) in {took:?}",
            cluster.member(leader.index).name(),
            cluster.member(new.index).name(),
            leader.term,
            new.term
        );
        assert_eq!(new.index, target, "{new:?}");
        assert!(new.term > leader.term, "{new:?} after {leader:?}");
        let before = writers.acked();
        writers.wait_acked(before + 50, WORK).await;
        leader = new;
    }

    // Only the leader moves leadership; the target must be a voter.
    let follower = others(&all, &[leader.index])[0];
    let mut f = cluster.member(follower).connect(false).await;
    let err = timed(WORK, f.move_leader(leader.id))
        .await
        .expect_err("move-leader on a follower");
    assert!(err.contains("etcdserver: not leader"), "{err}");
    let mut l = cluster.member(leader.index).connect(false).await;
    let err = timed(WORK, l.move_leader(0x1234))
        .await
        .expect_err("move-leader to an unknown member");
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    timed(WORK, l.move_leader(leader.id))
        .await
        .expect("move-leader to the leader itself is a no-op");

    stop_and_check_acked(writers, &cluster, &all, "moved").await;
    cluster.wait_converged(&all, WORK).await;
}

fn snapshot_index(data_dir: &std::path::Path) -> Option<(String, u64)> {
    let path = data_dir.join("member/raft-snapshots/current.json");
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v["file"].as_str()?.to_string(),
        v["meta"]["last_log_id"]["index"].as_u64()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_down_while_log_compacted_catches_up_by_snapshot() {
    let opts = ClusterOpts::size(3).args(&[
        "--snapshot-count",
        "100",
        "--experimental-snapshot-catchup-entries",
        "10",
    ]);
    let mut cluster = Cluster::start(opts).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let down = others(&all, &[leader.index])[0];
    put_keys(&cluster, leader.index, "early", 5).await;
    cluster.wait_converged(&all, WORK).await;
    let down_index = cluster
        .member(down)
        .status()
        .await
        .expect("status")
        .raft_index();
    cluster.member_mut(down).kill9();

    // A few hundred keys, four writers at a time: hundreds of log entries.
    let up = others(&all, &[down]);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let ep = cluster.member(up[w % 2]).endpoint();
        tasks.push(tokio::spawn(async move {
            let c = ballast_e2e::cluster::connect_one(&ep, false)
                .await
                .expect("connect");
            for i in 0..75 {
                // Retried on failure (e.g. a leader change): the same key
                // and value again.
                let key = format!("bulk/{w}/{i:03}");
                wait_until(&format!("put {key}"), WORK, || {
                    let (mut c, key) = (c.clone(), key.clone());
                    async move {
                        timed(CLIENT_TIMEOUT, c.put(key.as_str(), key.as_str(), None))
                            .await
                            .map(|_| ())
                    }
                })
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    // The leader has taken a snapshot past what the stopped member has
    // plus the entries kept for catching up: its log no longer holds
    // what that member misses.
    let leader = cluster.wait_leader(&up, CLUSTER_TIMEOUT).await;
    let leader_dir = cluster.member(leader.index).data_dir().to_path_buf();
    let snap = wait_until("a snapshot on the leader", WORK, || async {
        match snapshot_index(&leader_dir) {
            Some((f, i)) if i > down_index + 10 => Ok((f, i)),
            other => Err(format!("{other:?}, stopped member at {down_index}")),
        }
    })
    .await;
    eprintln!("leader snapshot {snap:?}, stopped member's log ends at {down_index}");

    cluster.member_mut(down).restart().await;
    let h = cluster.wait_converged(&all, WORK).await;
    let m = cluster.member(down);
    let mut c = m.connect(false).await;
    let r = timed(
        CLIENT_TIMEOUT,
        c.get("bulk/", Some(serializable().with_prefix())),
    )
    .await
    .expect("serializable get on the caught-up member");
    assert_eq!(r.kvs().len(), 300);
    assert!(r.kvs().iter().all(|kv| kv.key() == kv.value()));
    assert_eq!(r.header().expect("header").revision(), h.revision);
    let r = timed(
        CLIENT_TIMEOUT,
        c.get("early/", Some(serializable().with_prefix())),
    )
    .await
    .expect("serializable get");
    assert_eq!(r.kvs().len(), 5);
    // Its current snapshot is the image it received from the leader (the
    // state machine keeps an installed image as `installed-*.snap`).
    let (file, index) = snapshot_index(m.data_dir()).expect("a snapshot on the caught-up member");
    eprintln!("caught-up member's snapshot: {file} at {index}");
    assert!(
        file.starts_with("installed-") && index > down_index + 10,
        "the member caught up without installing a snapshot: {file} at {index}"
    );
}

// ---------------------------------------------------------------------------
// 6. etcdctl endpoint status --cluster.

/// Checks `etcdctl endpoint status -w json` output: the expected endpoints,
/// exactly one leader that all name, one term, one raft index.
fn one_leader_one_term(
    out: &ballast_e2e::Output,
    expected: &[String],
) -> Result<Vec<serde_json::Value>, String> {
    if !out.success() {
        return Err(format!("etcdctl failed: {}", out.stderr));
    }
    let v = out.json();
    let list = v.as_array().ok_or("not a list")?.clone();
    let mut eps: Vec<String> = list
        .iter()
        .map(|e| e["Endpoint"].as_str().unwrap_or("").to_string())
        .collect();
    eps.sort();
    if eps != expected {
        return Err(format!("endpoints {eps:?}, expected {expected:?}"));
    }
    let st = |e: &serde_json::Value, f: &str| e["Status"][f].as_u64().unwrap_or(0);
    let leaders: BTreeSet<u64> = list.iter().map(|e| st(e, "leader")).collect();
    let terms: BTreeSet<u64> = list.iter().map(|e| st(e, "raftTerm")).collect();
    let header_terms: BTreeSet<u64> = list
        .iter()
        .map(|e| e["Status"]["header"]["raft_term"].as_u64().unwrap_or(0))
        .collect();
    let indexes: BTreeSet<u64> = list.iter().map(|e| st(e, "raftIndex")).collect();
    let clusters: BTreeSet<u64> = list
        .iter()
        .map(|e| e["Status"]["header"]["cluster_id"].as_u64().unwrap_or(0))
        .collect();
    let leading = list
        .iter()
        .filter(|e| e["Status"]["header"]["member_id"].as_u64() == Some(st(e, "leader")))
        .count();
    if leaders.len() == 1
        && !leaders.contains(&0)
        && leading == 1
        && terms.len() == 1
        && terms == header_terms
        && indexes.len() == 1
        && clusters.len() == 1
    {
        Ok(list)
    } else {
        Err(format!(
            "leaders {leaders:x?}, {leading} leading, terms {terms:?} (headers {header_terms:?}), \
             raft indexes {indexes:?}, clusters {clusters:x?}"
        ))
    }
}

/// The client URLs `etcdctl member list` gives, as etcdctl's
/// `--cluster` finds them.
fn listed_client_urls(m: &impl Target) -> Vec<String> {
    let v = m.etcdctl(&["member", "list", "-w", "json"]).json();
    let mut urls: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|m| m["clientURLs"].as_array().cloned().unwrap_or_default())
        .map(|u| u.as_str().unwrap_or("").to_string())
        .collect();
    urls.sort();
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_shows_one_leader_and_equal_terms() {
    let cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let leader = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    put_keys(&cluster, leader.index, "status", 10).await;
    let mut expected: Vec<String> = all
        .iter()
        .map(|&i| cluster.member(i).client_url())
        .collect();
    expected.sort();
    let m = cluster.member(all[0]);
    // Every member has announced its client URL (what `--cluster` uses).
    wait_until("every client URL in member list", WORK, || async {
        let urls = listed_client_urls(m);
        if urls == expected {
            Ok(())
        } else {
            Err(format!("{urls:?}"))
        }
    })
    .await;
    // The members' endpoints as `host:port` (see the `--cluster` test
    // below for the URLs themselves).
    let eps: Vec<String> = expected
        .iter()
        .map(|u| u.trim_start_matches("http://").to_string())
        .collect();
    let list = wait_until("one leader, one term, one raft index", WORK, || async {
        let out =
            ballast_e2e::etcdctl_at(&eps.join(","), &["endpoint", "status", "-w", "json"], None);
        one_leader_one_term(&out, &eps)
    })
    .await;
    assert_eq!(list.len(), 3);
    // The table form agrees: one row per member.
    let out = ballast_e2e::etcdctl_at(&eps.join(","), &["endpoint", "status", "-w", "table"], None);
    let rows: Vec<&str> = out
        .ok()
        .lines()
        .filter(|l| l.contains("127.0.0.1:"))
        .collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    let leading = rows
        .iter()
        .filter(|r| r.split('|').nth(5).map(str::trim) == Some("true"))
        .count();
    assert_eq!(leading, 1, "{}", out.stdout);
}

/// `etcdctl endpoint status --cluster` asks every member at the client
/// URL `member list` gives (`http://127.0.0.1:PORT`). etcdctl 3.4 sends
/// that URL, scheme included, as the HTTP/2 `:authority` (as it does for
/// `--endpoints=http://HOST:PORT`); Ballast accepts it as etcd does (see
/// `authority_rewrite.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_cluster_flag() {
    let cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let mut expected: Vec<String> = all
        .iter()
        .map(|&i| cluster.member(i).client_url())
        .collect();
    expected.sort();
    let m = cluster.member(all[0]);
    wait_until("every client URL in member list", WORK, || async {
        let urls = listed_client_urls(m);
        if urls == expected {
            Ok(())
        } else {
            Err(format!("{urls:?}"))
        }
    })
    .await;
    wait_until("one leader, one term, one raft index", WORK, || async {
        let out = m.etcdctl(&["endpoint", "status", "--cluster", "-w", "json"]);
        one_leader_one_term(&out, &expected)
    })
    .await;
    let out = m.etcdctl(&["endpoint", "hashkv", "--cluster"]);
    let hashes: BTreeSet<&str> = out
        .ok()
        .lines()
        .filter_map(|l| l.split(", ").nth(1))
        .collect();
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert_eq!(hashes.len(), 1, "{}", out.stdout);
    let health = m.etcdctl(&["endpoint", "health", "--cluster"]);
    assert_eq!(health.stderr.matches("is healthy").count(), 3, "{health:?}");

    // Reads and writes through URL endpoints.
    let urls = expected.join(",");
    let put = ballast_e2e::etcdctl_at(&urls, &["put", "url-key", "v1"], None);
    assert_eq!(put.ok().trim(), "OK");
    let get = ballast_e2e::etcdctl_at(
        &expected[1],
        &["get", "url-key", "--print-value-only"],
        None,
    );
    assert_eq!(get.ok().trim(), "v1");
}

// ---------------------------------------------------------------------------
// 7. Bad flags and bad peers.

#[test]
fn initial_cluster_without_own_name_is_refused() {
    let (p1, p2, c) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = run_ballast_to_exit(&[
        "--name",
        "n3",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{c}"),
        "--advertise-client-urls",
        &format!("http://127.0.0.1:{c}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{p1}"),
        "--initial-advertise-peer-urls",
        &format!("http://127.0.0.1:{p1}"),
        "--initial-cluster",
        &format!("n1=http://127.0.0.1:{p1},n2=http://127.0.0.1:{p2}"),
        "--initial-cluster-token",
        "t",
        "--initial-cluster-state",
        "new",
    ]);
    assert!(
        !out.success(),
        "started without its name in --initial-cluster"
    );
    assert!(
        out.stderr.contains("couldn't find local name"),
        "{}",
        out.stderr
    );
    // Nothing of a member was left behind.
    assert!(!data.join("member/identity.json").exists());
}

/// Sends `bytes` on a new connection to `port` and returns what comes back
/// until the server closes the connection or is silent for half a second.
fn send_garbage(port: u16, bytes: &[u8]) -> Vec<u8> {
    send_until(port, bytes, |_| false)
}

/// As [`send_garbage`], stopping early once `done` holds for the answer.
fn send_until(port: u16, bytes: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        panic!("cannot connect to port {port}");
    };
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // The server may close the connection before reading it all.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || got.len() > 1 << 20 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if done(&got) {
            break;
        }
    }
    got
}

/// Whether HTTP/2 frames from the server end stream 1 with a HEADERS frame
/// (gRPC's answer with a status), rather than resetting it.
fn grpc_answered(frames: &[u8]) -> bool {
    let mut rest = frames;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        if kind == 1 && stream == 1 && flags & 1 == 1 {
            return true;
        }
        rest = &rest[(9 + len).min(rest.len())..];
    }
    false
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(u8::try_from(name.len()).unwrap());
    out.extend(name.bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend(value.bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One HTTP/2 gRPC request to `path` whose message is `cluster_id` (field 1)
/// and `payload` (field 2), written by hand: a well-formed request whose
/// content is nonsense.
fn grpc_request(path: &str, port: u16, cluster_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut msg = vec![0x08];
    varint(&mut msg, cluster_id);
    msg.push(0x12);
    varint(&mut msg, payload.len() as u64);
    msg.extend_from_slice(payload);
    let mut body = vec![0u8];
    body.extend(u32::try_from(msg.len()).unwrap().to_be_bytes());
    body.extend(msg);
    let mut headers = Vec::new();
    hpack_literal(&mut headers, ":method", "POST");
    hpack_literal(&mut headers, ":scheme", "http");
    hpack_literal(&mut headers, ":path", path);
    hpack_literal(&mut headers, ":authority", &format!("127.0.0.1:{port}"));
    hpack_literal(&mut headers, "content-type", "application/grpc");
    hpack_literal(&mut headers, "te", "trailers");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 4, 1, &headers));
    out.extend(frame(0, 1, 1, &body));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_token_and_garbage_on_the_peer_port_harm_no_one() {
    // n3 has another --initial-cluster-token: other member and cluster IDs.
    let mut opts = ClusterOpts::size(3);
    opts.tokens.insert(2, "some-other-cluster".into());
    let mut cluster = Cluster::launch(opts).await;
    let good = vec![0, 1];
    let leader = cluster.wait_leader(&good, CLUSTER_TIMEOUT).await;
    put_keys(&cluster, leader.index, "good", 10).await;

    // n3 never sees a leader, its peers refuse it, and it does not crash.
    let stranger = 2;
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(3) {
        let s = cluster
            .member(stranger)
            .status()
            .await
            .expect("status of n3");
        assert_eq!(s.leader(), 0, "n3 found a leader across cluster tokens");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: BTreeSet<u64> = [
        cluster
            .member(0)
            .status()
            .await
            .unwrap()
            .header()
            .unwrap()
            .cluster_id(),
        cluster
            .member(stranger)
            .status()
            .await
            .unwrap()
            .header()
            .unwrap()
            .cluster_id(),
    ]
    .into();
    assert_eq!(ids.len(), 2, "n3 computed the same cluster ID");
    let mut c = cluster.member(stranger).connect(false).await;
    let r = timed(HOPELESS, c.put("stranger", "x", None)).await;
    expect_failure("a put on a member with no leader", r.map(|_| ()));
    let mut c = cluster.member(stranger).connect(true).await;
    let r = timed(HOPELESS, c.get("good/", Some(serializable()))).await;
    let e = expect_failure("hasleader on a member with no leader", r.map(|_| ()));
    assert!(e.contains("etcdserver: no leader"), "{e}");
    // The others keep working and say why they refuse n3.
    wait_until("a logged refusal of the other cluster", WORK, || async {
        let silent: Vec<&str> = [0, 1, stranger]
            .iter()
            .map(|&i| cluster.member(i))
            .filter(|m| {
                !m.log()
                    .contains("refused a peer request from another cluster")
            })
            .map(|m| m.name())
            .collect();
        if silent.is_empty() {
            Ok(())
        } else {
            Err(format!("no refusal logged by {silent:?}"))
        }
    })
    .await;

    // Garbage on the peer ports of the leader and a follower: raw bytes, an
    // HTTP/2 preface followed by noise, an HTTP/1 request, and well-formed
    // gRPC requests with undecodable content (right and wrong cluster IDs),
    // each of which gets a gRPC answer.
    let follower = others(&good, &[leader.index])[0];
    let cluster_id = cluster
        .member(follower)
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .cluster_id();
    for target in [leader.index, follower] {
        let port = cluster.member(target).peer_port();
        send_garbage(port, &random_bytes(64 * 1024));
        send_garbage(port, &[]);
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend(random_bytes(4096));
        send_garbage(port, &h2);
        send_garbage(
            port,
            b"POST /ballastpb.RaftPeer/AppendEntries HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n\xff\xff\xff\xff\xff",
        );
        // A frame length far past what follows.
        let mut huge = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        huge.extend(frame(4, 0, 0, &[]));
        huge.extend([0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
        send_garbage(port, &huge);
        for method in [
            "AppendEntries",
            "Vote",
            "InstallSnapshot",
            "Propose",
            "ChangeMembers",
            "ReadIndex",
            "ClusterInfo",
            "NoSuchMethod",
        ] {
            let path = format!("/ballastpb.RaftPeer/{method}");
            for (cid, payload) in [
                (cluster_id, vec![0xff; 64]),
                (cluster_id, vec![]),
                (cluster_id, vec![1, 2, 3]),
                (cluster_id ^ 1, random_bytes(256)),
            ] {
                let answer = send_until(
                    port,
                    &grpc_request(&path, port, cid, &payload),
                    grpc_answered,
                );
                assert!(
                    grpc_answered(&answer),
                    "no gRPC answer to {path} with {} bytes: {answer:?}",
                    payload.len()
                );
            }
        }
        // The client port too.
        send_garbage(
            cluster.member(target).client_port(),
            &random_bytes(64 * 1024),
        );
    }
    let target = follower;

    for i in 0..3 {
        assert!(
            cluster.member_mut(i).is_running(),
            "{} exited; log:\n{}",
            cluster.member(i).name(),
            cluster.member(i).log_tail(30)
        );
    }
    cluster.wait_leader(&good, CLUSTER_TIMEOUT).await;
    let mut c = cluster.member(target).connect(true).await;
    timed(CLIENT_TIMEOUT, c.put("after-garbage", "ok", None))
        .await
        .expect("put through the member that got garbage");
    let r = timed(
        CLIENT_TIMEOUT,
        c.get("good/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("get");
    assert_eq!(r.kvs().len(), 10);
    cluster.wait_converged(&good, WORK).await;
    let s = cluster
        .member(stranger)
        .status()
        .await
        .expect("n3 still answers");
    assert_eq!(s.leader(), 0);
}
