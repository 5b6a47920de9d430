//! Watch and Lease across a leader failover, driven only through a
//! follower: a prefix watcher keeps delivering exactly the committed
//! history while the leader is SIGKILLed; a lease kept alive through a
//! follower survives, and a lease left without keepalives is revoked by the
//! new leader after its full TTL (counted from the new leader), with the
//! DELETE seen by a watcher. `etcdctl elect` through three members keeps
//! one leader when the holder crashes, until its session lease expires.
//!
//! Every wait polls a condition against a deadline; every request carries a
//! timeout; every process is stopped by `Drop` (see `ballast_e2e::cluster`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_e2e::cluster::{
    connect_many, connect_one, timed, wait_until, Cluster, ClusterOpts, Writers, CLIENT_TIMEOUT,
    CLUSTER_TIMEOUT, POLL_INTERVAL,
};
use ballast_e2e::etcd_client::{
    Client, EventType, GetOptions, PutOptions, SortOrder, SortTarget, WatchOptions,
};
use ballast_e2e::Target;

/// How long the survivors may take to elect a new leader (see
/// `tests/cluster.rs` for why it is this high).
const FAILOVER: Duration = Duration::from_secs(10);
/// A bound for waits that only depend on the cluster doing work.
const WORK: Duration = Duration::from_secs(30);

fn others(all: &[usize], but: &[usize]) -> Vec<usize> {
    all.iter().copied().filter(|i| !but.contains(i)).collect()
}

/// One event as the watcher received it.
#[derive(Clone, Debug)]
struct Seen {
    put: bool,
    key: String,
    mod_revision: i64,
    at: Instant,
}

/// A prefix watch on one endpoint, run in a task; when the stream breaks
/// (error, end, cancel) it reconnects and resumes from the last revision
/// received + 1.
struct Watcher {
    events: Arc<Mutex<Vec<Seen>>>,
    streams: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(endpoint: String, prefix: &str, start_revision: i64) -> Watcher {
        let events: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let prefix = prefix.to_string();
        let task = {
            let (events, streams, failure) = (events.clone(), streams.clone(), failure.clone());
            tokio::spawn(async move {
                loop {
                    let next = events
                        .lock()
                        .unwrap()
                        .last()
                        .map_or(start_revision, |e| e.mod_revision + 1);
                    let Ok(mut c) = connect_one(&endpoint, false).await else {
                        tokio::time::sleep(POLL_INTERVAL).await;
                        continue;
                    };
                    let opts = WatchOptions::new().with_prefix().with_start_revision(next);
                    let mut stream =
                        match timed(CLIENT_TIMEOUT, c.watch(prefix.as_str(), Some(opts))).await {
                            Ok(s) => s,
                            Err(_) => {
                                tokio::time::sleep(POLL_INTERVAL).await;
                                continue;
                            }
                        };
                    streams.fetch_add(1, Ordering::Relaxed);
                    // An error, the end or a cancel: reconnect and resume.
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.compact_revision() > 0 {
                            *failure.lock().unwrap() = Some(format!(
                                "watch from {next} compacted at {}",
                                resp.compact_revision()
                            ));
                            return;
                        }
                        if resp.canceled() {
                            break;
                        }
                        let now = Instant::now();
                        let mut ev = events.lock().unwrap();
                        for e in resp.events() {
                            let kv = e.kv().expect("event kv");
                            ev.push(Seen {
                                put: e.event_type() == EventType::Put,
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                mod_revision: kv.mod_revision(),
                                at: now,
                            });
                        }
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            })
        };
        Watcher {
            events,
            streams,
            failure,
            task,
        }
    }

    fn events(&self) -> Vec<Seen> {
        if let Some(f) = self.failure.lock().unwrap().clone() {
            panic!("watcher failed: {f}");
        }
        self.events.lock().unwrap().clone()
    }

    fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Waits until some event satisfies `f` and returns it.
    async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Seen) -> bool) -> Seen {
        wait_until(what, timeout, || async {
            let ev = self.events();
            ev.iter()
                .find(|e| f(e))
                .cloned()
                .ok_or_else(|| format!("{} events so far, last {:?}", ev.len(), ev.last()))
        })
        .await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Revision of the store as `endpoint` reports it (serializable read).
async fn revision_of(endpoint: &str) -> i64 {
    let mut c = connect_one(endpoint, false).await.expect("connect");
    timed(
        CLIENT_TIMEOUT,
        c.get("\0", Some(GetOptions::new().with_serializable())),
    )
    .await
    .expect("get")
    .header()
    .expect("header")
    .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watch_delivers_exact_history_across_leader_kill() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let old = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    // One watcher on each follower: whichever becomes the new leader, one
    // of them watches through a member that stays a follower throughout.
    let followers = others(&all, &[old.index]);
    let start = revision_of(&cluster.member(followers[0]).endpoint()).await + 1;
    let watchers: Vec<(usize, Watcher)> = followers
        .iter()
        .map(|&f| (f, Watcher::start(cluster.member(f).endpoint(), "w/", start)))
        .collect();
    for (_, watcher) in &watchers {
        wait_until("the watch stream is open", WORK, || async {
            if watcher.streams() > 0 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
    }

    // Writers through every member (the leader included, so some puts
    // fail or time out around the kill).
    let client = connect_many(&cluster.endpoints(&all)).await;
    let writers = Writers::start(&client, "w", 4);
    writers.wait_acked(100, WORK).await;

    cluster.member_mut(old.index).kill9();
    let killed = Instant::now();
    let at_kill = writers.acked();
    let rest = others(&all, &[old.index]);
    let new = cluster.wait_leader(&rest, FAILOVER).await;
    eprintln!(
        "new leader {} (term {}) {:?} after the kill of {} (term {})",
        cluster.member(new.index).name(),
        new.term,
        killed.elapsed(),
        cluster.member(old.index).name(),
        old.term
    );
    writers.wait_acked(at_kill + 100, WORK).await;
    let failed = writers.failed();
    let acked = writers.stop().await;
    eprintln!("{} puts acknowledged, {failed} failed", acked.len());

    // The committed history of the prefix, read through a survivor.
    let mut c = cluster.member(new.index).connect(false).await;
    let r = timed(
        CLIENT_TIMEOUT,
        c.get("w/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("final get");
    let final_rev = r.header().expect("header").revision();
    let mut committed: Vec<(String, i64)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    committed.sort_by_key(|(_, rev)| *rev);

    // Every acknowledged put is committed at its acknowledged revision.
    let by_key: BTreeMap<&str, i64> = committed.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    for (k, rev) in &acked {
        assert_eq!(
            by_key.get(k.as_str()),
            Some(rev),
            "acknowledged put {k}@{rev}"
        );
    }

    for (follower, watcher) in &watchers {
        let name = cluster.member(*follower).name();
        watcher
            .wait_for(
                &format!("the watcher reaches revision {final_rev}"),
                WORK,
                |e| e.mod_revision >= final_rev,
            )
            .await;
        let seen = watcher.events();
        eprintln!(
            "watcher: {} events on {} stream(s) through {name} ({})",
            seen.len(),
            watcher.streams(),
            if *follower == new.index {
                "became the new leader"
            } else {
                "follower throughout"
            }
        );

        // Strictly increasing, no gap (only this prefix is written), no
        // duplicate, only PUTs, exactly the committed history.
        for w in seen.windows(2) {
            assert_eq!(
                w[1].mod_revision,
                w[0].mod_revision + 1,
                "{name}: gap or duplicate: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        assert_eq!(seen.first().map(|e| e.mod_revision), Some(start), "{name}");
        assert_eq!(
            seen.last().map(|e| e.mod_revision),
            Some(final_rev),
            "{name}"
        );
        assert!(seen.iter().all(|e| e.put), "{name}: a non-PUT event");
        let seen_pairs: Vec<(String, i64)> = seen
            .iter()
            .map(|e| (e.key.clone(), e.mod_revision))
            .collect();
        assert_eq!(
            seen_pairs, committed,
            "{name}: watched != committed history"
        );
        let watched: BTreeMap<&str, i64> =
            seen_pairs.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        for (k, rev) in &acked {
            assert_eq!(
                watched.get(k.as_str()),
                Some(rev),
                "{name}: acknowledged put {k}@{rev} not watched"
            );
        }
    }
    eprintln!("test took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_a_follower_across_leader_kill() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(ClusterOpts::size(3)).await;
    let all = cluster.all();
    let old = cluster.wait_leader(&all, CLUSTER_TIMEOUT).await;
    let follower = others(&all, &[old.index])[0];
    let fend = cluster.member(follower).endpoint();
    let mut c = cluster.member(follower).connect(false).await;

    let start = revision_of(&fend).await + 1;
    let watcher = Watcher::start(fend.clone(), "lease/", start);

    // A lease kept alive through the follower.
    let kept = timed(CLIENT_TIMEOUT, c.lease_grant(3, None))
        .await
        .expect("grant through follower");
    let kept_id = kept.id();
    assert_eq!(kept.ttl(), 3);
    timed(
        CLIENT_TIMEOUT,
        c.put(
            "lease/kept",
            "v",
            Some(PutOptions::new().with_lease(kept_id)),
        ),
    )
    .await
    .expect("put with lease");

    let stop = Arc::new(AtomicBool::new(false));
    let keepalives = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (stop, keepalives, lost, fend) =
            (stop.clone(), keepalives.clone(), lost.clone(), fend.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = connect_one(&fend, false).await else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                };
                let Ok((mut k, mut s)) = timed(CLIENT_TIMEOUT, c.lease_keep_alive(kept_id)).await
                else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    if timed(CLIENT_TIMEOUT, k.keep_alive()).await.is_err() {
                        break;
                    }
                    match timed(Duration::from_secs(2), s.message()).await {
                        Ok(Some(r)) if r.ttl() > 0 => {
                            keepalives.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(_)) => {
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        })
    };

    // Kept alive for longer than its TTL before the fault.
    let kept_since = Instant::now();
    wait_until("4 s of keepalives through the follower", WORK, || async {
        if kept_since.elapsed() >= Duration::from_secs(4) && keepalives.load(Ordering::Relaxed) >= 4
        {
            Ok(())
        } else {
            Err(format!("{} keepalives", keepalives.load(Ordering::Relaxed)))
        }
    })
    .await;
    assert!(
        !lost.load(Ordering::Relaxed),
        "kept lease expired before the fault"
    );

    // A 2 s lease without keepalives, then the leader dies at once.
    let short = timed(CLIENT_TIMEOUT, c.lease_grant(2, None))
        .await
        .expect("grant short");
    timed(
        CLIENT_TIMEOUT,
        c.put(
            "lease/short",
            "v",
            Some(PutOptions::new().with_lease(short.id())),
        ),
    )
    .await
    .expect("put short");
    let granted = Instant::now();
    cluster.member_mut(old.index).kill9();
    let killed = Instant::now();
    let rest = others(&all, &[old.index]);
    let new = cluster.wait_leader(&rest, FAILOVER).await;
    let elected = Instant::now();
    eprintln!(
        "new leader {} {:?} after the kill ({:?} after the short grant)",
        cluster.member(new.index).name(),
        elected - killed,
        elected - granted
    );

    let del = watcher
        .wait_for("the DELETE of lease/short", WORK, |e| {
            !e.put && e.key == "lease/short"
        })
        .await;
    let after = del.at.saturating_duration_since(elected);
    eprintln!(
        "lease/short deleted {:?} after the new leader was seen ({:?} after the grant)",
        after,
        del.at - granted
    );
    // The new leader restarts the TTL when it takes over: not revoked before
    // (about) 2 s after it appeared (0.5 s slack for how late the poll
    // noticed the election), and within a bounded time.
    assert!(
        after >= Duration::from_millis(1500),
        "revoked only {after:?} after the new leader appeared"
    );
    assert!(
        after <= Duration::from_secs(8),
        "revoked {after:?} after the new leader"
    );

    // Gone through every survivor.
    for &i in &rest {
        let mut ci = cluster.member(i).connect(false).await;
        let r = timed(CLIENT_TIMEOUT, ci.get("lease/short", None))
            .await
            .expect("get");
        assert!(
            r.kvs().is_empty(),
            "lease/short still on {}",
            cluster.member(i).name()
        );
    }

    // The kept lease survives the failover (keepalives resume through the
    // same follower) and its key stays.
    let resumed = keepalives.load(Ordering::Relaxed);
    wait_until("keepalives resume after the failover", WORK, || async {
        let n = keepalives.load(Ordering::Relaxed);
        if n >= resumed + 3 {
            Ok(())
        } else {
            Err(format!("{n} keepalives"))
        }
    })
    .await;
    assert!(!lost.load(Ordering::Relaxed), "kept lease expired");
    let ttl = timed(CLIENT_TIMEOUT, c.lease_time_to_live(kept_id, None))
        .await
        .expect("time to live");
    assert!(ttl.ttl() > 0, "kept lease: ttl {}", ttl.ttl());
    let r = timed(CLIENT_TIMEOUT, c.get("lease/kept", None))
        .await
        .expect("get kept");
    assert_eq!(r.kvs().len(), 1, "lease/kept is gone");
    assert!(
        !watcher
            .events()
            .iter()
            .any(|e| !e.put && e.key == "lease/kept"),
        "lease/kept was deleted"
    );
    stop.store(true, Ordering::Relaxed);
    keeper.abort();
    eprintln!("test took {:?}", t0.elapsed());
}

/// A long-running `etcdctl` (e.g. `elect`) whose output is collected as it
/// comes; SIGKILLed and reaped on drop.
struct Etcdctl {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Etcdctl {
    fn spawn(endpoint: &str, args: &[&str]) -> Etcdctl {
        let mut cmd = std::process::Command::new(ballast_e2e::etcdctl_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=3s")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        fn collect(mut r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
            buf
        }
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Etcdctl {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The values `elect` printed (it prints the leader's key, then its
    /// value, each time one is elected or observed).
    fn values(&self) -> Vec<String> {
        let out = self.stdout();
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| c[1].to_string())
            .collect()
    }

    /// The leader key it printed first (`NAME/<lease ID in hex>`).
    fn first_key(&self) -> Option<String> {
        self.stdout().lines().next().map(str::to_string)
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits until `f` holds for its output.
    async fn wait_output(&self, what: &str, timeout: Duration, f: impl Fn(&Etcdctl) -> bool) {
        wait_until(what, timeout, || async {
            if f(self) {
                Ok(())
            } else {
                Err(format!(
                    "stdout {:?}, stderr {:?}",
                    self.stdout(),
                    self.stderr.lock().unwrap()
                ))
            }
        })
        .await;
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of the election's keys, oldest first.
async fn election_values(c: &Client) -> Result<Vec<String>, String> {
    let r = timed(
        CLIENT_TIMEOUT,
        c.clone().get(
            "el/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend),
            ),
        ),
    )
    .await?;
    Ok(r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect())
}

/// The lease ID in an election key `NAME/<hex ID>`.
fn lease_of(key: &str) -> i64 {
    let hex = key.rsplit('/').next().expect("a key");
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("lease in {key:?}: {e}")) as i64
}

/// `etcdctl elect` across members: A wins through member 1, B waits
/// through member 2, an observer on member 3 sees A. A is SIGKILLed (the
/// holder crashes without resigning): B is elected only once A's session
/// lease has expired. etcdctl 3.4's `elect` has no TTL flag: its session
/// lease is 60 s, renewed every 20 s, so this takes 40-60 s. Then C waits
/// through member 3 and B is interrupted: it resigns and C is elected at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_across_members_survives_a_crashed_leader() {
    let t0 = Instant::now();
    let cluster = Cluster::start(ClusterOpts::size(3)).await;
    let ep: Vec<String> = cluster.endpoints(&cluster.all());
    let c = cluster.member(2).connect(false).await;

    let a = Etcdctl::spawn(&ep[0], &["elect", "el", "valA"]);
    a.wait_output("A is elected", WORK, |p| p.values() == ["valA"])
        .await;
    let a_key = a.first_key().expect("A's key");
    let a_lease = lease_of(&a_key);
    let b = Etcdctl::spawn(&ep[1], &["elect", "el", "valB"]);
    let observer = Etcdctl::spawn(&ep[2], &["elect", "-l", "el"]);
    observer
        .wait_output("the observer sees A", WORK, |p| p.values() == ["valA"])
        .await;
    // B has put its key and waits behind A's.
    wait_until("B's key exists", WORK, || async {
        let v = election_values(&c).await?;
        if v.len() == 2 {
            Ok(())
        } else {
            Err(format!("values {v:?}"))
        }
    })
    .await;
    assert!(
        b.stdout().is_empty(),
        "B elected beside A: {:?}",
        b.stdout()
    );
    let ttl = timed(CLIENT_TIMEOUT, c.clone().lease_time_to_live(a_lease, None))
        .await
        .expect("A's lease");
    assert_eq!(ttl.granted_ttl(), 60, "etcdctl's session TTL");

    // A crashes: its key stays until its lease expires.
    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_until(
        "B is elected after A's lease expired",
        Duration::from_secs(75),
        || async {
            // Look at B first: if it is elected while A's lease is still
            // alive afterwards, the lock was broken.
            let elected = b.values() == ["valB"];
            let ttl = timed(CLIENT_TIMEOUT, c.clone().lease_time_to_live(a_lease, None))
                .await?
                .ttl();
            assert!(
                !(elected && ttl > 0),
                "B elected while A's lease has {ttl} s left"
            );
            if elected {
                Ok(())
            } else {
                Err(format!("A's lease: {ttl} s left; B: {:?}", b.stdout()))
            }
        },
    )
    .await;
    let after = killed.elapsed();
    eprintln!("B elected {after:?} after A was killed");
    // The lease ran its course: renewed at most 20 s before the kill.
    assert!(
        after >= Duration::from_secs(35),
        "A's lease expired early: {after:?}"
    );
    observer
        .wait_output("the observer sees B", WORK, |p| {
            p.values() == ["valA", "valB"]
        })
        .await;
    assert_eq!(
        election_values(&c).await.expect("get"),
        ["valB"],
        "A's key is gone"
    );

    // A graceful hand-over: B resigns on SIGINT, C (waiting) takes over.
    let c3 = Etcdctl::spawn(&ep[2], &["elect", "el", "valC"]);
    wait_until("C's key exists", WORK, || async {
        let v = election_values(&c).await?;
        if v.len() == 2 {
            Ok(())
        } else {
            Err(format!("values {v:?}"))
        }
    })
    .await;
    assert!(c3.stdout().is_empty(), "C elected beside B");
    b.signal(libc::SIGINT);
    let resigned = Instant::now();
    c3.wait_output("C is elected", WORK, |p| p.values() == ["valC"])
        .await;
    eprintln!("C elected {:?} after B resigned", resigned.elapsed());
    observer
        .wait_output("the observer sees C", WORK, |p| {
            p.values() == ["valA", "valB", "valC"]
        })
        .await;
    eprintln!("test took {:?}", t0.elapsed());
}
