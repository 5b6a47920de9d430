//! The `ballast` binary: an etcd v3 compatible member, started with etcd's
//! flags.

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ballast_server::restore::RestoreOptions;
use ballast_server::up::UpConfig;
use ballast_server::{MemberConfig, ETCD_VERSION};

/// Ballast: a Raft-replicated key-value store that speaks the etcd v3 API.
///
/// Without a subcommand, runs a member with etcd's flags.
#[derive(Parser, Debug)]
#[command(name = "ballast", version = concat!(env!("CARGO_PKG_VERSION"), " (etcd API ", "3.5", ")"))]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    #[command(flatten)]
    member: MemberConfig,
}

/// Subcommands; without one, `ballast` runs a member.
#[derive(Subcommand, Debug)]
enum Tool {
    /// Start a local three-member cluster (client ports 2379, 22379, 32379)
    /// as three processes; Ctrl-C stops it.
    Up(UpConfig),
    /// Serve the Kubernetes-style API facade (HTTP/JSON) over an etcd v3
    /// store: Ballast members or a real etcd.
    Apiserver(ballast_apiserver::ApiServerConfig),
    /// Work with snapshot files saved by `etcdctl snapshot save`.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotTool,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotTool {
    /// Make a new data directory from a snapshot file; a member started on
    /// it has the snapshot's keys, revisions and compaction point.
    Restore(RestoreOptions),
}

fn restore(opts: &RestoreOptions) {
    match ballast_server::restore::restore(opts) {
        Ok(r) => println!(
            "Restored {} into {}: member {} ({:x}), cluster {:x}, revision {}, compacted at {}",
            opts.file.display(),
            r.data_dir.display(),
            r.identity.name,
            r.identity.member_id,
            r.identity.cluster_id,
            r.revision,
            r.compact_revision
        ),
        Err(e) => {
            eprintln!("ballast: {e:#}");
            std::process::exit(1);
        }
    }
}

/// etcd (Go's flag package) accepts `-name value` as well as `--name value`:
/// rewrite single-dash long flags that name one of our flags.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let cmd = Cli::command();
    let longs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .chain(["version".to_string(), "help".to_string()])
        .collect();
    args.enumerate()
        .map(|(i, a)| {
            if i > 0 && a.starts_with('-') && !a.starts_with("--") {
                let name = a[1..].split('=').next().unwrap_or("");
                if longs.iter().any(|l| l == name) {
                    return format!("-{a}");
                }
            }
            a
        })
        .collect()
}

fn init_logging(level: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    // openraft reports every election and membership step at info.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},openraft=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    init_logging(&cli.member.log_level);
    if let Some(Tool::Snapshot {
        command: SnapshotTool::Restore(opts),
    }) = &cli.command
    {
        restore(opts);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Some(Tool::Up(up)) => rt.block_on(ballast_server::up::run(up, shutdown_signal())),
        Some(Tool::Apiserver(cfg)) => rt.block_on(ballast_apiserver::serve(cfg, shutdown_signal())),
        _ => {
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                etcd_api = ETCD_VERSION,
                "starting ballast"
            );
            match ballast_raft::check_faults_env() {
                Ok(f) if f.any() => {
                    tracing::warn!(faults = ?f, "DELIBERATE BUGS ARE ON ({}): this member is for testing the test harness only", ballast_raft::FAULTS_ENV);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("ballast: {e}");
                    std::process::exit(1);
                }
            }
            rt.block_on(ballast_server::run(cli.member, shutdown_signal()))
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ballast: {e:#}");
            1
        }
    };
    exit_now(code);
}

/// Ends the process without running C++ static destructors: RocksDB's
/// background threads may still be winding down, and tearing their globals
/// down under them aborts the process. Everything acknowledged is already
/// synced to disk.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) only ends the process.
    unsafe { libc::_exit(code) }
}
