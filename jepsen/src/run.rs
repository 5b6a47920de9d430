//! One test run: start the cluster behind the proxy, run the workloads and
//! the nemesis for the time limit, heal, take the end-of-run probes, stop
//! everything, check the history and write the results.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use crate::checker::cluster::{F_CRASH, F_HASH};
use crate::checker::register::COMPARE_FAILED;
use crate::checker::{self, CheckResult, Verdict};
use crate::client;
use crate::db::{self, Cluster, ClusterSpec, DbKind};
use crate::history::{self, Event, EventType, Process, Recorder};
use crate::nemesis::{Fault, Nemesis};
use crate::proxy::Proxy;
use crate::report;
use crate::rng::{self, Rng};
use crate::workloads::{
    self, append::Appends, lock, register::Registers, watch, Ctx, Generator, Workload,
};

/// Everything a run needs.
#[derive(Clone, Debug, Serialize)]
pub struct RunOpts {
    /// The database.
    pub db: DbKind,
    /// Number of members.
    pub nodes: usize,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Faults.
    pub faults: Vec<Fault>,
    /// How long the workload runs.
    #[serde(serialize_with = "secs")]
    pub time_limit: Duration,
    /// The run directory.
    pub out: PathBuf,
    /// The server binary.
    pub binary: PathBuf,
    /// Seed of the schedule.
    pub seed: u64,
    /// Client workers.
    pub concurrency: usize,
    /// Target of all workers together, in operations per second.
    pub rate: f64,
    /// Keys in use at a time by the register workload.
    pub keys: u64,
    /// Operations per register key.
    pub ops_per_key: u64,
    /// Deadline of one client operation.
    #[serde(serialize_with = "secs")]
    pub op_timeout: Duration,
    /// Mean time between faults.
    #[serde(serialize_with = "secs")]
    pub nemesis_interval: Duration,
    /// Time allowed for the linearizability search.
    #[serde(serialize_with = "secs")]
    pub check_budget: Duration,
    /// `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// `--election-timeout` (ms).
    pub election_ms: u64,
    /// Keep the members' data directories of a valid run.
    pub keep_data: bool,
}

/// A duration as seconds in `results.json`.
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs `fut` unless interrupted first (`None` then).
async fn unless_interrupted<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = interrupted() => None,
    }
}

fn prepare_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("{}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; choose a new --out",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))
}

/// Starts `nodes` members of `db` in `dir`, each behind its peer proxy,
/// and waits until all serve and agree on a leader.
///
/// # Errors
/// If no ports can be had, a member does not start, or no leader appears.
pub async fn start_cluster(
    db: DbKind,
    binary: &Path,
    nodes: usize,
    dir: &Path,
    heartbeat_ms: u64,
    election_ms: u64,
) -> anyhow::Result<(Arc<Cluster>, Arc<Proxy>)> {
    let mut port_rng = Rng::new(rng::entropy());
    let mut taken = Vec::new();
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..nodes {
        let l = db::bind_random(&mut port_rng)?;
        let proxy = l.local_addr()?.port();
        taken.push(proxy);
        listeners.push(l);
        let client = db::free_port(&mut port_rng, &mut taken)?;
        let peer = db::free_port(&mut port_rng, &mut taken)?;
        ports.push((client, peer, proxy));
    }
    let spec = ClusterSpec {
        db,
        binary: binary.to_path_buf(),
        dir: dir.to_path_buf(),
        token: format!("jepsen-{:016x}", port_rng.next_u64()),
        heartbeat_ms,
        election_ms,
        ports: ports.clone(),
    };
    let cluster = Arc::new(Cluster::new(&spec)?);
    let backends = ports
        .iter()
        .map(|&(_, peer, _)| std::net::SocketAddr::from(([127, 0, 0, 1], peer)))
        .collect();
    let proxy = Arc::new(Proxy::start(listeners, backends, cluster.pids())?);
    for i in 0..nodes {
        cluster.spawn(i)?;
    }
    for i in 0..nodes {
        cluster.start_and_wait(i, Duration::from_secs(30)).await?;
    }
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    Ok((cluster, proxy))
}

/// Records members that exited by themselves, until `stop`.
fn monitor(
    cluster: Arc<Cluster>,
    recorder: Arc<Recorder>,
    mut stop: signal::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for (i, status) in cluster.reap_exited() {
                let tail = cluster.log_tail(i, 3);
                recorder.record(
                    Event::new(
                        Process::named("monitor"),
                        EventType::Info,
                        F_CRASH,
                        json!(tail),
                    )
                    .node(cluster.names()[i].clone())
                    .error(status),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// The end-of-run probes, once every fault is healed: the revision all
/// members reach, their HashKV there, their history above the highest
/// compaction (`compacted`, 0 if none), and the watchers catching up to it.
async fn final_probes(
    cluster: &Cluster,
    recorder: &Recorder,
    progress: Option<&watch::Progress>,
    compacted: i64,
) {
    if let Err(e) = cluster.wait_healthy(Duration::from_secs(30)).await {
        eprintln!("ballast-jepsen: after healing: {e:#}");
    }
    // The final revision: every acknowledged write is at or below it.
    let eps = cluster.endpoints();
    let mut target = 1;
    for ep in eps {
        if let Ok(r) = client::linearizable_revision(ep).await {
            target = target.max(r);
        }
        if let Ok(s) = client::status(ep).await {
            target = target.max(s.revision);
        }
    }
    // Every member applies up to the highest revision seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    for ep in eps {
        while Instant::now() < deadline {
            if client::status(ep).await.is_ok_and(|s| s.revision >= target) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (i, ep) in eps.iter().enumerate() {
        let name = cluster.names()[i].clone();
        let e = match client::hash_kv(ep, target).await {
            Ok((hashed, hash, compact)) => Event::new(
                Process::named("convergence"),
                EventType::Ok,
                F_HASH,
                json!({ "revision": target, "hash_revision": hashed, "hash": hash, "compact": compact }),
            ),
            Err(err) => Event::new(
                Process::named("convergence"),
                EventType::Info,
                F_HASH,
                Value::Null,
            )
            .error(err),
        };
        recorder.record(e.node(name));
    }
    for (i, ep) in eps.iter().enumerate() {
        watch::final_history(
            recorder,
            ep,
            &cluster.names()[i],
            compacted + 1,
            target,
            Duration::from_secs(20),
        )
        .await;
    }
    if let Some(p) = progress {
        let deadline = Instant::now() + Duration::from_secs(20);
        while (0..eps.len()).any(|i| p.last(i) < target) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What `results.json` holds.
#[derive(Serialize)]
struct Results<'a> {
    verdict: Verdict,
    opts: &'a RunOpts,
    error: Option<String>,
    interrupted: bool,
    duration_s: f64,
    ops: Value,
    availability: f64,
    proxy: Option<crate::proxy::ProxyStats>,
    checkers: &'a [CheckResult],
}

/// Client operation counts by function and completion type, and totals
/// for the availability (a cas whose comparison was false counts as
/// answered).
pub fn op_counts(events: &[Event]) -> (Value, history::Counts) {
    let ops = history::client_ops(events);
    let mut by_f = serde_json::Map::new();
    let mut total = history::Counts::default();
    for op in &ops {
        let entry = by_f
            .entry(op.f.clone())
            .or_insert_with(|| json!({ "ok": 0, "fail": 0, "info": 0 }));
        let k = op.kind.as_str();
        entry[k] = json!(entry[k].as_u64().unwrap_or(0) + 1);
        let answered = op.error.as_deref() == Some(COMPARE_FAILED);
        match op.kind {
            EventType::Ok => total.ok += 1,
            // The store answered: it is available, the comparison was false.
            EventType::Fail if answered => total.ok += 1,
            EventType::Fail => total.fail += 1,
            _ => total.info += 1,
        }
    }
    (Value::Object(by_f), total)
}

/// Runs the test and writes the run directory; the overall verdict.
///
/// # Errors
/// If the run could not be carried out (the directory, the cluster); the
/// results file says why when it could be written.
pub async fn run(opts: RunOpts) -> anyhow::Result<Verdict> {
    prepare_dir(&opts.out)?;
    let started = Instant::now();
    let (cluster, proxy) = match start_cluster(
        opts.db,
        &opts.binary,
        opts.nodes,
        &opts.out,
        opts.heartbeat_ms,
        opts.election_ms,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let e = e.context("the cluster did not start");
            write_results(
                &opts,
                &[],
                &[],
                Some(format!("{e:#}")),
                false,
                started,
                None,
            )?;
            return Err(e);
        }
    };
    eprintln!(
        "ballast-jepsen: {} members of {:?} up; running for {:?} (seed {})",
        opts.nodes, opts.db, opts.time_limit, opts.seed
    );
    let recorder = Arc::new(Recorder::new());
    let mut rng = Rng::new(opts.seed);
    let (mon_stop, mon_rx) = signal::channel(false);
    let mon = monitor(cluster.clone(), recorder.clone(), mon_rx);

    let (watch_stop, watch_rx) = signal::channel(false);
    let progress = Arc::new(watch::Progress::new(opts.nodes));
    let mut watchers = Vec::new();
    if opts.workloads.contains(&Workload::Watch) {
        for (i, ep) in cluster.endpoints().iter().enumerate() {
            watchers.push(tokio::spawn(watch::watcher(
                recorder.clone(),
                ep.clone(),
                cluster.names()[i].clone(),
                i,
                progress.clone(),
                watch_rx.clone(),
            )));
        }
    }

    let (client_stop, client_rx) = signal::channel(false);
    let gen = Arc::new(Generator {
        register: opts
            .workloads
            .contains(&Workload::Register)
            .then(|| Registers::new(opts.keys, opts.ops_per_key)),
        append: opts
            .workloads
            .contains(&Workload::Append)
            .then(|| Appends::new(opts.keys, opts.ops_per_key)),
        puts: Default::default(),
    });
    let pace = if opts.rate > 0.0 {
        Duration::from_secs_f64(opts.concurrency as f64 / opts.rate)
    } else {
        Duration::ZERO
    };
    let ctx = Arc::new(Ctx {
        recorder: recorder.clone(),
        endpoints: cluster.endpoints().to_vec(),
        names: cluster.names().to_vec(),
        op_timeout: opts.op_timeout,
        concurrency: opts.concurrency,
        pace,
    });
    let workers: Vec<JoinHandle<()>> = (0..opts.concurrency)
        .map(|id| {
            let r = rng.fork(id as u64);
            tokio::spawn(workloads::worker(
                ctx.clone(),
                gen.clone(),
                id,
                r,
                client_rx.clone(),
            ))
        })
        .collect();

    let mut lockers = Vec::new();
    if opts.workloads.contains(&Workload::Lock) {
        for id in 0..lock::LOCKERS {
            lockers.push(tokio::spawn(lock::locker(
                recorder.clone(),
                cluster.endpoints().to_vec(),
                cluster.names().to_vec(),
                id,
                "0".into(),
                rng.fork(1_000 + id as u64),
                opts.op_timeout,
                client_rx.clone(),
            )));
        }
    }

    let mut nemesis = Nemesis::new(
        cluster.clone(),
        proxy.clone(),
        recorder.clone(),
        opts.faults.clone(),
        rng.fork(u64::MAX),
        opts.nemesis_interval,
    );
    if opts.workloads.contains(&Workload::Watch) {
        nemesis = nemesis.with_watch_progress(progress.clone());
    }
    let status = nemesis.status();
    let compacted: Arc<AtomicI64> = nemesis.compacted();
    let (nem_stop, nem_rx) = signal::channel(false);
    let nem_task = tokio::spawn(nemesis.run(nem_rx));

    // The workload phase, with a progress line every 5 s.
    let workload_start = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.time_limit;
    let mut was_interrupted = false;
    loop {
        let tick = tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(5)),
        );
        tokio::select! {
            _ = tick => {}
            _ = interrupted() => { was_interrupted = true; }
        }
        let c = recorder.counts();
        let fault = status.lock().map(|s| s.clone()).unwrap_or_default();
        eprintln!(
            "[{:>4.0}s/{}s] ok {} fail {} info {} | nemesis: {fault}",
            workload_start.elapsed().as_secs_f64(),
            opts.time_limit.as_secs(),
            c.ok,
            c.fail,
            c.info
        );
        if was_interrupted || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    if was_interrupted {
        eprintln!("ballast-jepsen: interrupted; healing, then writing what was collected (Ctrl-C again to skip the end-of-run probes)");
    }

    let _ = client_stop.send(true);
    for w in workers.into_iter().chain(lockers) {
        let abort = w.abort_handle();
        if tokio::time::timeout(opts.op_timeout + Duration::from_secs(5), w)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let _ = nem_stop.send(true);
    let healed = unless_interrupted(async {
        match nem_task.await {
            Ok(mut n) => n.heal_all().await,
            Err(e) => eprintln!("ballast-jepsen: the nemesis failed: {e}"),
        }
        final_probes(
            &cluster,
            &recorder,
            opts.workloads
                .contains(&Workload::Watch)
                .then_some(&*progress),
            compacted.load(Ordering::Relaxed),
        )
        .await;
        if let Some(a) = &gen.append {
            let (ep, name) = (&cluster.endpoints()[0], &cluster.names()[0]);
            workloads::append::final_reads(&recorder, ep, name, &a.keys()).await;
        }
    })
    .await;
    was_interrupted |= healed.is_none();
    let _ = watch_stop.send(true);
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
    }
    let _ = mon_stop.send(true);
    let _ = mon.await;
    let proxy_stats = proxy.stats();
    cluster.stop_all();
    drop(proxy);

    let events = recorder.snapshot();
    history::write_jsonl(&opts.out.join("history.jsonl"), &events)?;
    eprintln!("ballast-jepsen: checking {} events", events.len());
    let results = checker::check_all(&events, opts.check_budget);
    let verdict = write_results(
        &opts,
        &events,
        &results,
        None,
        was_interrupted,
        started,
        Some(proxy_stats),
    )?;
    println!("{}", checker::table(&results));
    let (_, counts) = op_counts(&events);
    println!(
        "ops: {} answered (ok, or cas found another value), {} failed, {} unknown; availability {:.1}%; run directory {}",
        counts.ok,
        counts.fail,
        counts.info,
        counts.availability() * 100.0,
        opts.out.display()
    );
    if verdict == Verdict::Valid && !opts.keep_data {
        let _ = std::fs::remove_dir_all(opts.out.join("data"));
    }
    Ok(verdict)
}

/// Writes `results.json` and `report.html`; the overall verdict.
fn write_results(
    opts: &RunOpts,
    events: &[Event],
    results: &[CheckResult],
    error: Option<String>,
    was_interrupted: bool,
    started: Instant,
    proxy: Option<crate::proxy::ProxyStats>,
) -> anyhow::Result<Verdict> {
    let verdict = if error.is_some() {
        Verdict::Unknown
    } else {
        checker::overall(results)
    };
    let (ops, counts) = op_counts(events);
    let r = Results {
        verdict,
        opts,
        error,
        interrupted: was_interrupted,
        duration_s: started.elapsed().as_secs_f64(),
        ops,
        availability: counts.availability(),
        proxy,
        checkers: results,
    };
    let path = opts.out.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&r)?)
        .with_context(|| format!("{}", path.display()))?;
    let title = format!(
        "{:?}, {} members, {} s, seed {}",
        opts.db,
        opts.nodes,
        opts.time_limit.as_secs(),
        opts.seed
    );
    report::write(&opts.out.join("report.html"), &title, events, results)?;
    Ok(verdict)
}
