//! Stream workloads: `watch-latency` and `lease-keepalive`.
//!
//! - `watch-latency`: `watchers` watchers on one prefix (spread over the
//!   connections), then `total` puts of keys `<prefix><seq>` at `rate`/s
//!   through one client. Latency of each (watcher, event) pair is measured
//!   from just *before the put is sent* (as etcd's `benchmark watch-latency`)
//!   to the moment that watcher gets the event. Events still missing
//!   `timeout` after the last put are errors (`missing watch event`). With
//!   `total` 0 it only opens the watchers and holds them `hold` (an idle
//!   memory test); each watcher opened then counts as one success.
//! - `lease-keepalive`: grant `leases` leases (TTL 60), one keep-alive stream
//!   each, then `total` keep-alives at `rate`/s in all; latency is from
//!   sending a keep-alive to its response on the stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, WatchOptions};

use crate::runner::{RunOptions, RunResult};
use crate::stats::classify;

/// One watcher's events: (put number, time received).
type Received = Arc<Mutex<Vec<(u64, Instant)>>>;

fn count(map: &mut BTreeMap<String, u64>, class: String) {
    *map.entry(class).or_insert(0) += 1;
}

async fn connect_all(opts: &RunOptions, r: &mut RunResult) -> Vec<Client> {
    let mut conns = Vec::new();
    for _ in 0..opts.conns.max(1) {
        let co = ConnectOptions::new().with_connect_timeout(opts.dial_timeout);
        match tokio::time::timeout(
            opts.dial_timeout,
            Client::connect(&opts.endpoints, Some(co)),
        )
        .await
        {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => count(&mut r.connect_errors, format!("connect: {}", classify(&e))),
            Err(_) => count(
                &mut r.connect_errors,
                "connect: no connection within --dial-timeout".into(),
            ),
        }
    }
    r.conns_up = conns.len();
    conns
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn timeout_class(opts: &RunOptions) -> String {
    format!(
        "client timeout: no answer within --timeout {}",
        crate::duration::show(opts.timeout)
    )
}

/// Key of put number `seq` under `prefix`.
pub fn watch_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:010}")
}

/// Runs `watch-latency`; see the module documentation.
pub async fn watch_latency(
    opts: &RunOptions,
    watchers: usize,
    prefix: &str,
    hold: Duration,
) -> RunResult {
    let mut r = RunResult::default();
    let deadline = Instant::now() + opts.deadline;
    let conns = connect_all(opts, &mut r).await;
    if conns.is_empty() {
        return r;
    }
    // Per watcher: (seq, time received) of each event.
    let mut received: Vec<Received> = Vec::new();
    let mut tasks = Vec::new();
    let mut opened = 0u64;
    for i in 0..watchers {
        let mut c = conns[i % conns.len()].clone();
        let w = tokio::time::timeout(
            opts.timeout,
            c.watch(prefix, Some(WatchOptions::new().with_prefix())),
        )
        .await;
        let mut stream = match w {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                count(&mut r.errors, format!("watch: {}", classify(&e)));
                continue;
            }
            Err(_) => {
                count(&mut r.errors, format!("watch: {}", timeout_class(opts)));
                continue;
            }
        };
        opened += 1;
        let got = Arc::new(Mutex::new(Vec::new()));
        received.push(got.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                let now = Instant::now();
                let mut g = got.lock().unwrap_or_else(|e| e.into_inner());
                for ev in msg.events() {
                    if let Some(kv) = ev.kv() {
                        let key = String::from_utf8_lossy(kv.key());
                        if let Some(Ok(seq)) = key.strip_prefix(&prefix).map(str::parse::<u64>) {
                            g.push((seq, now));
                        }
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    if opts.total == 0 {
        tokio::time::sleep(hold).await;
        r.latencies_ns = vec![0; usize::try_from(opened).unwrap_or(0)];
        r.ok = opened;
        r.failed = r.errors.values().sum();
        r.elapsed = start.elapsed();
        return r;
    }
    let mut client = conns[0].clone();
    let mut sent: Vec<Option<Instant>> = vec![None; usize::try_from(opts.total).unwrap_or(0)];
    let interval = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut put_errors = 0u64;
    for seq in 0..opts.total {
        if Instant::now() >= deadline {
            r.deadline_reached = true;
            break;
        }
        if let Some(iv) = interval {
            tokio::time::sleep_until((start + iv.mul_f64(seq as f64)).into()).await;
        }
        let began = Instant::now();
        match tokio::time::timeout(opts.timeout, client.put(watch_key(prefix, seq), "v", None))
            .await
        {
            Ok(Ok(_)) => sent[seq as usize] = Some(began),
            Ok(Err(e)) => {
                put_errors += 1;
                count(&mut r.errors, format!("put: {}", classify(&e)));
            }
            Err(_) => {
                put_errors += 1;
                count(&mut r.errors, format!("put: {}", timeout_class(opts)));
            }
        }
    }
    let acked = sent.iter().filter(|s| s.is_some()).count() as u64;
    let expected = acked * opened;
    // Wait for the last events (at most --timeout).
    let wait_until = Instant::now() + opts.timeout;
    loop {
        let have: u64 = received
            .iter()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum();
        if have >= expected || Instant::now() >= wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.elapsed = start.elapsed();
    for t in &tasks {
        t.abort();
    }
    let mut pairs = 0u64;
    for g in &received {
        let g = g.lock().unwrap_or_else(|e| e.into_inner());
        for &(seq, at) in g.iter() {
            if let Some(Some(b)) = sent.get(seq as usize) {
                r.latencies_ns.push(ns(at.saturating_duration_since(*b)));
                pairs += 1;
            }
        }
    }
    let missing = expected.saturating_sub(pairs);
    if missing > 0 {
        *r.errors
            .entry("missing watch event (not received within --timeout after the last put)".into())
            .or_insert(0) += missing;
    }
    // Each failed put (counted once above) is an event no watcher got.
    r.ok = r.latencies_ns.len() as u64;
    r.failed = r.errors.values().sum::<u64>() + put_errors * opened.saturating_sub(1);
    r
}

/// Runs `lease-keepalive`; see the module documentation.
pub async fn lease_keepalive(opts: &RunOptions, leases: usize) -> RunResult {
    let mut r = RunResult::default();
    let deadline = Instant::now() + opts.deadline;
    let conns = connect_all(opts, &mut r).await;
    if conns.is_empty() {
        return r;
    }
    let mut streams = Vec::new();
    for i in 0..leases.max(1) {
        let mut c = conns[i % conns.len()].clone();
        let got = tokio::time::timeout(opts.timeout, async {
            let id = c.lease_grant(60, None).await?.id();
            c.lease_keep_alive(id).await
        })
        .await;
        match got {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => count(&mut r.errors, format!("lease: {}", classify(&e))),
            Err(_) => count(&mut r.errors, format!("lease: {}", timeout_class(opts))),
        }
    }
    if streams.is_empty() {
        r.failed = r.errors.values().sum();
        return r;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let interval = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut tasks = Vec::new();
    for (mut keeper, mut stream) in streams {
        let next = next.clone();
        let total = opts.total;
        let timeout = opts.timeout;
        let tclass = timeout_class(opts);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errs: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                if let Some(iv) = interval {
                    tokio::time::sleep_until((start + iv.mul_f64(seq as f64)).into()).await;
                }
                let began = Instant::now();
                let one = tokio::time::timeout(timeout, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match one {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => lat.push(ns(began.elapsed())),
                    Ok(Ok(Some(_))) => count(&mut errs, "keep-alive: lease expired (ttl 0)".into()),
                    Ok(Ok(None)) => count(&mut errs, "keep-alive: stream closed".into()),
                    Ok(Err(e)) => count(&mut errs, format!("keep-alive: {}", classify(&e))),
                    Err(_) => count(&mut errs, format!("keep-alive: {tclass}")),
                }
            }
            (lat, errs)
        }));
    }
    for t in tasks {
        if let Ok((mut lat, errs)) = t.await {
            r.latencies_ns.append(&mut lat);
            for (k, v) in errs {
                *r.errors.entry(k).or_insert(0) += v;
            }
        }
    }
    r.elapsed = start.elapsed();
    r.deadline_reached = next.load(Ordering::Relaxed) < opts.total;
    r.ok = r.latencies_ns.len() as u64;
    r.failed = r.errors.values().sum();
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn watch_keys_sort_by_seq() {
        assert_eq!(super::watch_key("w/", 7), "w/0000000007");
        assert!(super::watch_key("w/", 9) < super::watch_key("w/", 10));
    }
}
