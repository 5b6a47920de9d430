//! `ballast-bench`: load for any etcd v3 endpoint (Ballast or etcd),
//! modelled on etcd's `benchmark` tool.
//!
//! ```text
//! ballast-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 --total 10000 \
//!     put --key-size 8 --val-size 256 --key-space-size 100000
//! ballast-bench --clients 100 --total 20000 range 00000000 --consistency s
//! ballast-bench --clients 100 --total 10000 txn-put --key-space-size 100000
//! ballast-bench --smoke put          # 20 requests, 2 clients, 10 s deadline
//! ballast-bench chart --input runs.jsonl --input members.jsonl --out-dir docs/benchmarks
//! ```
//!
//! While it runs, a progress line goes to stderr every second. At the end it
//! prints a table, then ONE JSON line (the last line of stdout) with the
//! same figures. Exit status: 0 for a valid run, 1 for a failed run (more
//! than `--max-error-ratio` of the requests failed, or none succeeded: the
//! report says `failed_run: true`), 2 for bad arguments.
//!
//! `chart` sends no load: it draws SVG bar charts (Ballast against etcd per
//! workload, and per member) from the JSON lines `scripts/bench-compare.sh`
//! collects, and prints the path of each file written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ballast_benches::compare::{write_charts, Results};
use ballast_benches::duration;
use ballast_benches::report::Report;
use ballast_benches::rng::seed_from_time;
use ballast_benches::runner::{run, RunOptions};
use ballast_benches::streams;
use ballast_benches::workload::{Consistency, KeyGen, Workload};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ballast-bench",
    version,
    about = "Load tool for etcd v3 endpoints (Ballast or etcd), after etcd's `benchmark`",
    after_help = "The last line of stdout is a JSON report. Exit status: 0 valid run, \
                  1 failed run (failed_run: true), 2 bad arguments."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug)]
struct Common {
    /// Endpoints, comma-separated (`host:port` or `http://host:port`); each
    /// connection balances requests over all of them.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Requests in all [default: 10000; 20 with --smoke].
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Requests per second over all clients; 0 = unlimited.
    #[arg(long, global = true, default_value_t = 0.0)]
    rate: f64,
    /// Per-request timeout, e.g. 500ms, 5s [default: 5s; 2s with --smoke].
    #[arg(long, global = true, value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Deadline of the whole run [default: 10m; 15s with --smoke].
    #[arg(long, global = true, value_parser = duration::parse)]
    deadline: Option<Duration>,
    /// Timeout of setting up each connection.
    #[arg(long, global = true, value_parser = duration::parse, default_value = "2s")]
    dial_timeout: Duration,
    /// A tiny run for CI: 20 requests, 2 clients (unless given), short
    /// timeouts.
    #[arg(long, global = true)]
    smoke: bool,
    /// A run where more than this fraction of requests failed is a failed
    /// run.
    #[arg(long, global = true, default_value_t = 0.1)]
    max_error_ratio: f64,
    /// Progress line interval on stderr; 0 = no progress line.
    #[arg(long, global = true, value_parser = duration::parse, default_value = "1s")]
    progress_interval: Duration,
    /// Seed of the random keys and values [default: from the clock].
    #[arg(long, global = true)]
    seed: Option<u64>,
}

#[derive(Args, Debug)]
struct KeyArgs {
    /// Key size in bytes (the prefix included); keys are zero-padded
    /// decimal indexes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes (random bytes).
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Request n uses key n % key-space-size (else a random key).
    #[arg(long)]
    sequential_keys: bool,
    /// Prefix of every key (counts in --key-size).
    #[arg(long, default_value = "")]
    key_prefix: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Put keys.
    Put {
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Range over a key, a key range [KEY, END) or a prefix.
    Range {
        /// The key (start of the range, or the prefix with --prefix).
        key: String,
        /// End of the range, exclusive.
        end: Option<String>,
        /// Consistency: l (linearizable) or s (serializable).
        #[arg(long, default_value = "l", value_parser = Consistency::parse)]
        consistency: Consistency,
        /// Every key that starts with KEY.
        #[arg(long, conflicts_with = "end")]
        prefix: bool,
        /// At most this many keys; 0 = no limit.
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// kube-apiserver's update: read the key's mod_revision r, then
    /// Txn(if mod_revision == r then put else get); one latency for both.
    TxnPut {
        #[command(flatten)]
        keys: KeyArgs,
        /// Consistency of the read: l (linearizable) or s (serializable).
        #[arg(long, default_value = "l", value_parser = Consistency::parse)]
        consistency: Consistency,
    },
    /// Watchers on one prefix, then puts at --rate through one client;
    /// latency from before each put is sent to each watcher's event.
    /// --total 0: only open the watchers and hold them --hold (idle test).
    WatchLatency {
        /// Watchers, spread over the connections.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Key prefix watched and written.
        #[arg(long, default_value = "watch-bench/")]
        key_prefix: String,
        /// With --total 0: how long to hold the idle watchers.
        #[arg(long, value_parser = duration::parse, default_value = "5s")]
        hold: Duration,
    },
    /// Grant --leases leases (TTL 60), then keep-alives at --rate in all
    /// over one keep-alive stream per lease; latency send -> response.
    LeaseKeepalive {
        /// Leases, spread over the connections.
        #[arg(long, default_value_t = 100)]
        leases: usize,
    },
    /// No load: SVG charts (throughput.svg, latency-p99.svg, rss.svg,
    /// data-dir.svg) from the JSON lines of a scripts/bench-compare.sh run;
    /// prints the path of each file written.
    Chart {
        /// A JSON-lines file: run reports with system/round/wl, member
        /// records, 1M-key load records. Repeat for several files.
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// Directory to write the SVG files into (created if needed).
        #[arg(long)]
        out_dir: PathBuf,
        /// Only runs during which the rest of the machine used fewer CPUs
        /// than this (`other_cpu`); default: every valid run.
        #[arg(long)]
        max_other_cpu: Option<f64>,
    },
}

/// `ballast-bench chart`.
fn chart(input: &[PathBuf], out_dir: &std::path::Path, max_other_cpu: Option<f64>) -> ExitCode {
    let results = match Results::read(input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ballast-bench: error: {e}");
            return ExitCode::from(2);
        }
    };
    let scope = match max_other_cpu {
        Some(c) => format!("quiet valid runs (others < {c} CPUs)"),
        None => "all valid runs".to_string(),
    };
    match write_charts(&results, out_dir, max_other_cpu, &scope) {
        Ok(paths) if paths.is_empty() => {
            eprintln!("ballast-bench: error: no runs or member records in the input");
            ExitCode::from(2)
        }
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ballast-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn build(cli: Cli) -> Result<(RunOptions, Workload, f64), String> {
    let c = cli.common;
    let endpoints: Vec<String> = c
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    for e in &endpoints {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        if !rest.contains(':') {
            return Err(format!("endpoint {e:?} has no port (host:port)"));
        }
    }
    if c.conns == 0 || c.clients == 0 {
        return Err("--conns and --clients must be at least 1".into());
    }
    if !(c.rate.is_finite() && c.rate >= 0.0) {
        return Err("--rate must be a number >= 0".into());
    }
    if !(0.0..=1.0).contains(&c.max_error_ratio) {
        return Err("--max-error-ratio must be between 0 and 1".into());
    }
    let total = c.total.unwrap_or(if c.smoke { 20 } else { 10_000 });
    if total == 0 && !matches!(cli.cmd, Cmd::WatchLatency { .. }) {
        return Err("--total must be at least 1".into());
    }
    let clients = if c.smoke && c.clients == 1 {
        2
    } else {
        c.clients
    };
    let timeout = c
        .timeout
        .unwrap_or(Duration::from_secs(if c.smoke { 2 } else { 5 }));
    let deadline = c
        .deadline
        .unwrap_or(Duration::from_secs(if c.smoke { 15 } else { 600 }));
    if timeout.is_zero() || deadline.is_zero() || c.dial_timeout.is_zero() {
        return Err("--timeout, --deadline and --dial-timeout must be more than 0".into());
    }
    let keys = |k: &KeyArgs| {
        KeyGen::new(
            &k.key_prefix,
            k.key_size,
            k.key_space_size,
            k.sequential_keys,
        )
    };
    let workload = match &cli.cmd {
        Cmd::Put { keys: k } => Workload::Put {
            keys: keys(k)?,
            val_size: k.val_size,
        },
        Cmd::Range {
            key,
            end,
            consistency,
            prefix,
            limit,
        } => {
            if *limit < 0 {
                return Err("--limit must be >= 0".into());
            }
            Workload::Range {
                key: key.clone().into_bytes(),
                end: end.clone().map(String::into_bytes),
                prefix: *prefix,
                limit: *limit,
                consistency: *consistency,
            }
        }
        Cmd::TxnPut {
            keys: k,
            consistency,
        } => Workload::TxnPut {
            keys: keys(k)?,
            val_size: k.val_size,
            read: *consistency,
        },
        Cmd::WatchLatency {
            watchers,
            key_prefix,
            hold,
        } => {
            if *watchers == 0 {
                return Err("--watchers must be at least 1".into());
            }
            Workload::WatchLatency {
                watchers: *watchers,
                prefix: key_prefix.clone(),
                hold_s: hold.as_secs_f64(),
            }
        }
        Cmd::LeaseKeepalive { leases } => {
            if *leases == 0 {
                return Err("--leases must be at least 1".into());
            }
            Workload::LeaseKeepalive { leases: *leases }
        }
        Cmd::Chart { .. } => return Err("chart sends no load".into()),
    };
    let opts = RunOptions {
        endpoints,
        conns: c.conns,
        clients,
        total,
        rate: c.rate,
        timeout,
        deadline,
        dial_timeout: c.dial_timeout,
        progress: (!c.progress_interval.is_zero()).then_some(c.progress_interval),
        seed: c.seed.unwrap_or_else(seed_from_time),
    };
    Ok((opts, workload, c.max_error_ratio))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Chart {
        input,
        out_dir,
        max_other_cpu,
    } = &cli.cmd
    {
        return chart(input, out_dir, *max_other_cpu);
    }
    let (opts, workload, max_error_ratio) = match build(cli) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ballast-bench: error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ballast-bench: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let workload = Arc::new(workload);
    let (result, report_opts) = match &*workload {
        Workload::WatchLatency {
            watchers,
            prefix,
            hold_s,
        } => {
            let r = rt.block_on(streams::watch_latency(
                &opts,
                *watchers,
                prefix,
                Duration::from_secs_f64(*hold_s),
            ));
            // Counted per (watcher, event) pair, or per watcher when idle.
            let mut o = opts.clone();
            o.total = if opts.total == 0 {
                *watchers as u64
            } else {
                opts.total * *watchers as u64
            };
            (r, o)
        }
        Workload::LeaseKeepalive { leases } => (
            rt.block_on(streams::lease_keepalive(&opts, *leases)),
            opts.clone(),
        ),
        _ => (rt.block_on(run(&opts, workload.clone())), opts.clone()),
    };
    let report = Report::new(&workload, &report_opts, result, max_error_ratio);
    // The runtime may hold connections still trying to reach a dead
    // endpoint: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    print!("{}", report.table());
    println!("{}", report.json_line());
    if report.failed_run {
        eprintln!("ballast-bench: {}", report.notes[0]);
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
