//! A benchmark of the API facade (not a test): against a running facade it
//! creates N pods from C concurrent clients, lists them (whole, and in
//! pages), then opens W watchers on the pods and makes U updates, measuring
//! for each watcher the time from an update's acknowledgement to its event.
//! With `--pid` it reports the facade process's memory (VmRSS, VmHWM) and
//! CPU time from /proc.
//!
//! ```text
//! ballast up --dir /tmp/b --fresh --no-apiserver &
//! ballast apiserver --etcd-servers http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379 --listen 127.0.0.1:18080 &
//! cargo run --release -p ballast-apiserver --example facade_bench -- \
//!     --server 127.0.0.1:18080 --pid $(pgrep -nf 'ballast apiserver')
//! ```
//!
//! The HTTP/1.1 client is a minimal one written here (keep-alive requests,
//! Content-Length and chunked bodies) to keep the crate's dependencies as
//! they are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
struct Args {
    /// The facade's address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: String,
    /// Pods to create.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients creating them.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Page size of the paged list.
    #[arg(long, default_value_t = 500)]
    page: usize,
    /// Concurrent watchers of the pods.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Updates the watchers must all see.
    #[arg(long, default_value_t = 1_000)]
    updates: usize,
    /// Updates per second (0: each as soon as the previous one is acknowledged).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Namespace to create the pods in (created if missing).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// The facade's process id, for memory and CPU figures.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up on the watch phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    watch_timeout: u64,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn connect(host: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(host)
            .await
            .with_context(|| format!("connecting to {host}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, s),
            host: host.to_string(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        ct: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        if !ct.is_empty() {
            req.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.r.get_mut().write_all(&req).await?;
        Ok(())
    }

    /// Reads the status line and headers: (status, content length, chunked).
    async fn head(&mut self) -> anyhow::Result<(u16, Option<usize>, bool)> {
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            let h = line.trim_end();
            if h.is_empty() {
                return Ok((code, len, chunked));
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
    }

    /// The next chunk of a chunked body (None at its end).
    async fn chunk(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
        let mut size = String::new();
        if self.r.read_line(&mut size).await? == 0 {
            bail!("connection closed");
        }
        let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        buf.resize(n + 2, 0);
        self.r.read_exact(buf).await?;
        buf.truncate(n);
        Ok(n > 0)
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        ct: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send(method, path, ct, body).await?;
        let (code, len, chunked) = self.head().await?;
        let mut out = Vec::new();
        if chunked {
            let mut buf = Vec::new();
            while self.chunk(&mut buf).await? {
                out.extend_from_slice(&buf);
            }
        } else {
            out.resize(len.unwrap_or(0), 0);
            self.r.read_exact(&mut out).await?;
        }
        Ok((code, out))
    }
}

/// `metadata.resourceVersion` of an object or event, found without parsing.
fn resource_version(json: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"resourceVersion\":\"";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = json[at..].iter().position(|b| *b == b'"')? + at;
    std::str::from_utf8(&json[at..end]).ok()?.parse().ok()
}

fn pod(i: usize) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench", "shard": (i % 32).to_string()}},
           "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
    .to_string()
    .into_bytes()
}

/// Percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "{name}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        ms.len(),
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

/// (VmRSS, VmHWM) in MiB and CPU seconds (utime + stime) of a process.
fn proc_stats(pid: Option<u32>) -> Option<(f64, f64, f64)> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((
        kib("VmRSS:")? / 1024.0,
        kib("VmHWM:")? / 1024.0,
        ticks / 100.0,
    ))
}

fn report_proc(args: &Args, phase: &str) {
    if let Some((rss, hwm, cpu)) = proc_stats(args.pid) {
        println!("facade after {phase}: VmRSS={rss:.0}MiB VmHWM={hwm:.0}MiB cpu={cpu:.1}s");
    }
}

async fn create_pods(args: &Args) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let path = format!("/api/v1/namespaces/{}/pods", args.namespace);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (next, path, args) = (next.clone(), path.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&args.server).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.pods {
                    return anyhow::Ok(lat);
                }
                let t = Instant::now();
                let (code, body) = conn
                    .request("POST", &path, "application/json", &pod(i))
                    .await?;
                if code != 201 {
                    bail!("create pod {i}: {code} {}", String::from_utf8_lossy(&body));
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "create: {} pods, {} clients, {secs:.2}s, {:.0} pods/s",
        args.pods,
        args.clients,
        args.pods as f64 / secs
    );
    println!("{}", summary("create latency", all));
    Ok(())
}

async fn lists(args: &Args) -> anyhow::Result<i64> {
    let mut conn = Conn::connect(&args.server).await?;
    let path = format!("/api/v1/namespaces/{}/pods", args.namespace);
    let mut rv = 0;
    for round in 1..=3 {
        let t = Instant::now();
        let (code, body) = conn.request("GET", &path, "", b"").await?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        let list: Value = serde_json::from_slice(&body)?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if code != 200 || n != args.pods {
            bail!("full list: {code}, {n} items");
        }
        rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .parse()?;
        println!(
            "list (full) #{round}: {n} items, {:.1} MiB, {took:.0}ms",
            body.len() as f64 / 1048576.0
        );
    }
    for round in 1..=3 {
        let t = Instant::now();
        let (mut token, mut pages, mut n) = (String::new(), 0, 0);
        loop {
            let url = format!("{path}?limit={}&continue={token}", args.page);
            let (code, body) = conn.request("GET", &url, "", b"").await?;
            let page: Value = serde_json::from_slice(&body)?;
            if code != 200 {
                bail!("paged list: {code} {page}");
            }
            pages += 1;
            n += page["items"].as_array().map_or(0, Vec::len);
            token = page["metadata"]["continue"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if token.is_empty() {
                break;
            }
        }
        if n != args.pods {
            bail!("paged list: {n} items");
        }
        println!(
            "list (limit={}) #{round}: {pages} pages, {n} items, {:.0}ms",
            args.page,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(rv)
}

/// One watcher: the arrival time of each MODIFIED event, by resourceVersion.
async fn watcher(
    args: Arc<Args>,
    from: i64,
    ready: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<Vec<(i64, Instant)>> {
    let path = format!(
        "/api/v1/namespaces/{}/pods?watch=true&resourceVersion={from}&timeoutSeconds={}",
        args.namespace, args.watch_timeout
    );
    let opened = async {
        let mut conn = Conn::connect(&args.server).await?;
        conn.send("GET", &path, "", b"").await?;
        match conn.head().await? {
            (200, _, true) => anyhow::Ok(conn),
            (code, _, _) => bail!("watch: HTTP {code}"),
        }
    }
    .await;
    ready.wait().await; // every watcher counts, connected or not
    let mut conn = opened?;
    let mut seen = Vec::with_capacity(args.updates);
    let (mut buf, mut pending) = (Vec::new(), Vec::new());
    while seen.len() < args.updates && conn.chunk(&mut buf).await? {
        let now = Instant::now();
        pending.extend_from_slice(&buf);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            if let Some(rv) = resource_version(&line) {
                seen.push((rv, now));
            }
        }
    }
    Ok(seen)
}

async fn watch_phase(args: &Args, from: i64) -> anyhow::Result<()> {
    let shared = Arc::new(args.clone());
    let ready = Arc::new(tokio::sync::Barrier::new(args.watchers + 1));
    let t = Instant::now();
    let tasks: Vec<_> = (0..args.watchers)
        .map(|_| tokio::spawn(watcher(shared.clone(), from, ready.clone())))
        .collect();
    ready.wait().await;
    println!(
        "watch: {} watchers connected in {:.0}ms",
        args.watchers,
        t.elapsed().as_secs_f64() * 1e3
    );
    report_proc(args, "connecting the watchers");

    let mut conn = Conn::connect(&args.server).await?;
    let mut acks = std::collections::HashMap::with_capacity(args.updates);
    let mut write_lat = Vec::new();
    let start = Instant::now();
    for u in 0..args.updates {
        if args.rate > 0.0 {
            let due = start + Duration::from_secs_f64(u as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/pod-{:05}",
            args.namespace,
            u % args.pods
        );
        let patch =
            json!({"metadata": {"annotations": {"bench/update": u.to_string()}}}).to_string();
        let t = Instant::now();
        let (code, body) = conn
            .request(
                "PATCH",
                &path,
                "application/merge-patch+json",
                patch.as_bytes(),
            )
            .await?;
        let acked = Instant::now();
        if code != 200 {
            bail!("update {u}: {code} {}", String::from_utf8_lossy(&body));
        }
        write_lat.push((acked - t).as_secs_f64() * 1e3);
        acks.insert(
            resource_version(&body).context("update without resourceVersion")?,
            acked,
        );
    }
    let update_secs = start.elapsed().as_secs_f64();
    println!(
        "updates: {} in {update_secs:.2}s ({:.0}/s)",
        args.updates,
        args.updates as f64 / update_secs
    );
    println!("{}", summary("update latency", write_lat));

    let deadline = Duration::from_secs(args.watch_timeout);
    let mut lat = Vec::with_capacity(args.watchers * args.updates);
    let (mut early, mut missing, mut failed) = (0usize, 0usize, 0usize);
    for task in tasks {
        match tokio::time::timeout(deadline.saturating_sub(start.elapsed()), task).await {
            Ok(Ok(Ok(seen))) => {
                missing += args.updates.saturating_sub(seen.len());
                for (rv, at) in seen {
                    let Some(acked) = acks.get(&rv) else { continue };
                    match at.checked_duration_since(*acked) {
                        Some(d) => lat.push(d.as_secs_f64() * 1e3),
                        None => {
                            // The event came before the client read the write's answer.
                            early += 1;
                            lat.push(0.0);
                        }
                    }
                }
            }
            Ok(Ok(Err(e))) => {
                failed += 1;
                eprintln!("watcher failed: {e:#}");
            }
            _ => failed += 1,
        }
    }
    println!(
        "delivery: all events delivered {:.2}s after the first update; {missing} missing, {failed} watchers failed, {early} events before the ack",
        start.elapsed().as_secs_f64()
    );
    println!("{}", summary("update ack -> event at each watcher", lat));
    report_proc(args, "the watch phase");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut conn = Conn::connect(&args.server).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}});
    let (code, body) = conn
        .request(
            "POST",
            "/api/v1/namespaces",
            "application/json",
            ns.to_string().as_bytes(),
        )
        .await?;
    if code != 201 && code != 409 {
        bail!("namespace: {code} {}", String::from_utf8_lossy(&body));
    }
    report_proc(&args, "start");
    create_pods(&args).await?;
    report_proc(&args, "the creates");
    let rv = lists(&args).await?;
    report_proc(&args, "the lists");
    watch_phase(&args, rv).await?;
    Ok(())
}
