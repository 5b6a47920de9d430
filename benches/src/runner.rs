//! Running a workload: connections, clients, rate, per-request timeout,
//! the run's deadline and the progress line.
//!
//! Each of `clients` clients (tokio tasks) uses connection `i % conns` and
//! takes request numbers from a shared counter until `total` are taken,
//! the deadline passes, or the run is stopped. A request that fails or gets
//! no answer within the timeout is counted by its class and the client goes
//! on with the next one: faults never stop a run early, only the deadline
//! does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::rng::Rng;
use crate::stats::classify;
use crate::workload::{Outcome, Workload};

/// How to run a workload.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `host:port` or `http://host:port`; each connection balances over all.
    pub endpoints: Vec<String>,
    /// gRPC connections (each one etcd-client `Client`).
    pub conns: usize,
    /// Concurrent clients, spread over the connections.
    pub clients: usize,
    /// Requests in all.
    pub total: u64,
    /// Requests per second over all clients; 0: unlimited.
    pub rate: f64,
    /// Per-request timeout (a `txn-put` operation's two requests together).
    pub timeout: Duration,
    /// The whole run, connecting included, stops at this deadline.
    pub deadline: Duration,
    /// Timeout of establishing each connection.
    pub dial_timeout: Duration,
    /// Progress line on stderr at this interval; `None`: none.
    pub progress: Option<Duration>,
    /// Seed of the clients' random generators.
    pub seed: u64,
}

/// What a run measured, before any judgement.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Requests that succeeded (conflicts included).
    pub ok: u64,
    /// Requests that failed or timed out.
    pub failed: u64,
    /// `txn-put` operations whose compare failed.
    pub conflicts: u64,
    /// Latency of each successful request, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Failed requests by class.
    pub errors: BTreeMap<String, u64>,
    /// Connections that could not be set up, by class.
    pub connect_errors: BTreeMap<String, u64>,
    /// Connections in use.
    pub conns_up: usize,
    /// Time from the first request to the last answer (or the deadline).
    pub elapsed: Duration,
    /// The deadline stopped the run before `total` requests were done.
    pub deadline_reached: bool,
}

/// Requests per second at most: each request waits for its slot, `n / rate`
/// seconds after the start.
struct Pacer {
    start: tokio::time::Instant,
    interval: Duration,
}

impl Pacer {
    async fn wait(&self, seq: u64) {
        let at = self.start + self.interval.mul_f64(seq as f64);
        tokio::time::sleep_until(at).await;
    }
}

/// Counters the progress line reads.
#[derive(Default)]
struct Counters {
    next: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// One client's tally, behind its own (uncontended) lock so that a client
/// aborted at the deadline leaves what it measured.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors: BTreeMap<String, u64>,
    conflicts: u64,
}

async fn connect(opts: &RunOptions) -> Result<Client, String> {
    let co = ConnectOptions::new().with_connect_timeout(opts.dial_timeout);
    match tokio::time::timeout(
        opts.dial_timeout,
        Client::connect(&opts.endpoints, Some(co)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {}", classify(&e))),
        Err(_) => Err(format!(
            "connect: no connection within --dial-timeout {}",
            crate::duration::show(opts.dial_timeout)
        )),
    }
}

/// Runs `workload` as `opts` say and returns what was measured. Never
/// fails: connection and request errors are counted in the result.
pub async fn run(opts: &RunOptions, workload: Arc<Workload>) -> RunResult {
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let mut result = RunResult::default();

    // Connections (lazy in etcd-client: an unreachable endpoint shows up as
    // failed requests, not here).
    let mut conns = Vec::new();
    for _ in 0..opts.conns.max(1) {
        match tokio::time::timeout_at(deadline, connect(opts)).await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(class)) => *result.connect_errors.entry(class).or_insert(0) += 1,
            Err(_) => {
                *result
                    .connect_errors
                    .entry("connect: deadline reached while connecting".into())
                    .or_insert(0) += 1;
                result.deadline_reached = true;
                break;
            }
        }
    }
    result.conns_up = conns.len();
    if conns.is_empty() {
        return result;
    }

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let pacer = (opts.rate > 0.0).then(|| {
        Arc::new(Pacer {
            start: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / opts.rate),
        })
    });

    let progress = opts.progress.map(|every| {
        let counters = counters.clone();
        let total = opts.total;
        let name = workload.name();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let ok = counters.ok.load(Ordering::Relaxed);
                let failed = counters.failed.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "{name}: {}/{total} done, {failed} errors, {:.0} ok/s, {secs:.1}s",
                    ok + failed,
                    ok as f64 / secs.max(1e-9)
                );
            }
        })
    });

    let mut tasks = Vec::new();
    let mut tallies = Vec::new();
    for i in 0..opts.clients.max(1) {
        let mut client = conns[i % conns.len()].clone();
        let tally = Arc::new(Mutex::new(Tally::default()));
        tallies.push(tally.clone());
        let counters = counters.clone();
        let pacer = pacer.clone();
        let workload = workload.clone();
        let total = opts.total;
        let timeout = opts.timeout;
        let mut rng = Rng::new(opts.seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        tasks.push(tokio::spawn(async move {
            loop {
                if counters.stop.load(Ordering::Relaxed) {
                    break;
                }
                let seq = counters.next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    break;
                }
                if let Some(p) = &pacer {
                    p.wait(seq).await;
                }
                let began = Instant::now();
                let r = tokio::time::timeout(timeout, workload.run_one(&mut client, seq, &mut rng))
                    .await;
                let took = began.elapsed();
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(Ok(outcome)) => {
                        t.latencies_ns
                            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                        if outcome == Outcome::Conflict {
                            t.conflicts += 1;
                        }
                        counters.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        *t.errors.entry(classify(&e)).or_insert(0) += 1;
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        let class = format!(
                            "client timeout: no answer within --timeout {}",
                            crate::duration::show(timeout)
                        );
                        *t.errors.entry(class).or_insert(0) += 1;
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let all_done = async {
        for t in &mut tasks {
            // A client task only ends by returning (a panic would be a bug
            // in this tool; it is reported as such below).
            if let Err(e) = t.await {
                if e.is_panic() {
                    eprintln!("ballast-bench: a client panicked: {e}");
                }
            }
        }
    };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        result.deadline_reached = true;
        counters.stop.store(true, Ordering::Relaxed);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
    result.elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
    }

    for tally in tallies {
        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
        result.latencies_ns.append(&mut t.latencies_ns);
        result.conflicts += t.conflicts;
        for (class, n) in std::mem::take(&mut t.errors) {
            *result.errors.entry(class).or_insert(0) += n;
        }
    }
    result.ok = result.latencies_ns.len() as u64;
    result.failed = result.errors.values().sum();
    result
}
