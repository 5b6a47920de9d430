//! `ballast-jepsen run ...` tests a cluster; `ballast-jepsen check FILE`
//! checks a stored history again. Exit status: 0 valid, 1 invalid, 2
//! unknown or the run failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ballast_jepsen::checker::{self, Verdict};
use ballast_jepsen::db::{default_binary, DbKind};
use ballast_jepsen::history;
use ballast_jepsen::nemesis::Fault;
use ballast_jepsen::rng;
use ballast_jepsen::run::{self, RunOpts};
use ballast_jepsen::workloads::Workload;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ballast-jepsen",
    version,
    about = "Linearizability testing with fault injection for etcd v3 clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster, run workloads under faults, check the history.
    Run(RunArgs),
    /// Check a stored history.jsonl again.
    Check {
        /// The history file.
        history: PathBuf,
        /// Time allowed for the linearizability search, in seconds.
        #[arg(long, default_value_t = 120)]
        check_timeout: u64,
        /// Also write an HTML report there.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The database under test.
    #[arg(long, value_enum, default_value = "ballast")]
    db: DbKind,
    /// Number of members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Workloads, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "register,watch"
    )]
    workload: Vec<Workload>,
    /// Faults, comma-separated: kill, pause, partition, bridge, member,
    /// compact (`none` for no faults).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    nemesis: Vec<String>,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// The run directory (must not exist or be empty; default
    /// `jepsen-runs/<db>-<unix time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The server binary (default: Ballast's `ballast` beside this program
    /// or on the PATH; etcd's `/usr/bin/etcd`).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Seed of the operation and fault schedule (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Client workers.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Operations per second of all workers together (0: as fast as they can).
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Register keys in use at a time.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Operations per register key before moving on to fresh keys.
    #[arg(long, default_value_t = 200)]
    ops_per_key: u64,
    /// Deadline of one client operation, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    op_timeout_ms: u64,
    /// Mean seconds between faults (each lasts one to two of these).
    #[arg(long, default_value_t = 5)]
    nemesis_interval: u64,
    /// Time allowed for the linearizability search, in seconds.
    #[arg(long, default_value_t = 120)]
    check_timeout: u64,
    /// --heartbeat-interval of the members, in ms.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// --election-timeout of the members, in ms.
    #[arg(long, default_value_t = 1000)]
    election_ms: u64,
    /// Keep the members' data directories even if the run is valid.
    #[arg(long)]
    keep_data: bool,
}

fn faults(names: &[String]) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for n in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match Fault::parse(n) {
            Some(f) => out.push(f),
            None if n == "none" => {}
            None => {
                let all: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                return Err(format!("unknown nemesis {n:?} ({}, none)", all.join(", ")));
            }
        }
    }
    Ok(out)
}

fn run_opts(a: RunArgs) -> Result<RunOpts, String> {
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        return Err("--rate must be a non-negative number".into());
    }
    let out = a.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from("jepsen-runs").join(format!("{:?}-{now}", a.db).to_lowercase())
    });
    Ok(RunOpts {
        binary: a.binary.unwrap_or_else(|| default_binary(a.db)),
        db: a.db,
        nodes: usize::from(a.nodes),
        workloads: a.workload,
        faults: faults(&a.nemesis)?,
        time_limit: Duration::from_secs(a.time_limit),
        out,
        seed: a.seed.unwrap_or_else(rng::entropy),
        concurrency: usize::from(a.concurrency),
        rate: a.rate,
        keys: a.keys.max(1),
        ops_per_key: a.ops_per_key.max(1),
        op_timeout: Duration::from_millis(a.op_timeout_ms.max(1)),
        nemesis_interval: Duration::from_secs(a.nemesis_interval.max(1)),
        check_budget: Duration::from_secs(a.check_timeout),
        heartbeat_ms: a.heartbeat_ms,
        election_ms: a.election_ms,
        keep_data: a.keep_data,
    })
}

fn check(path: &Path, timeout: u64, report: Option<&Path>) -> anyhow::Result<Verdict> {
    let events = history::read_jsonl(path)?;
    let results = checker::check_all(&events, Duration::from_secs(timeout));
    print!("{}", checker::table(&results));
    if let Some(r) = report {
        ballast_jepsen::report::write(r, &path.display().to_string(), &events, &results)?;
    }
    Ok(checker::overall(&results))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            history,
            check_timeout,
            report,
        } => check(&history, check_timeout, report.as_deref()),
        Command::Run(args) => match run_opts(args) {
            Err(e) => {
                eprintln!("ballast-jepsen: {e}");
                return ExitCode::from(2);
            }
            Ok(opts) => match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(run::run(opts)),
                Err(e) => Err(e.into()),
            },
        },
    };
    match result {
        Ok(v) => ExitCode::from(v.exit_code()),
        Err(e) => {
            eprintln!("ballast-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}
