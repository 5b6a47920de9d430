//! What the integration tests need: the server binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `ballast` binary: `$BALLAST_BIN`, else the one in the same target
/// directory as `ballast-jepsen` (build it first: `cargo build -p
/// ballast-server`, or `cargo build --workspace --bins` as CI does).
///
/// # Panics
/// If it does not exist.
#[allow(dead_code)]
pub fn ballast_bin() -> PathBuf {
    let p = std::env::var_os("BALLAST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_ballast-jepsen"))
                .with_file_name(format!("ballast{}", std::env::consts::EXE_SUFFIX))
        });
    assert!(
        p.is_file(),
        "{} not found; build it first: cargo build -p ballast-server",
        p.display()
    );
    p
}

/// The `ballast` binary built with the `fault-injection` feature:
/// `$BALLAST_FAULTY_BIN`, else `ballast-fault-injection` beside
/// `ballast-jepsen` (scripts/test.sh builds it:
/// `cargo build -p ballast-server --features fault-injection` and copies
/// the binary under that name).
///
/// # Panics
/// If it does not exist.
#[allow(dead_code)]
pub fn faulty_ballast_bin() -> PathBuf {
    let p = std::env::var_os("BALLAST_FAULTY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_ballast-jepsen")).with_file_name(format!(
                "ballast-fault-injection{}",
                std::env::consts::EXE_SUFFIX
            ))
        });
    assert!(
        p.is_file(),
        "{} not found; build it first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// etcd, if installed (`$ETCD_BIN`, else `/usr/bin/etcd`).
#[allow(dead_code)]
pub fn etcd_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    p.is_file().then_some(p)
}

/// Runs `ballast-jepsen` with `args` (and `--out out`) and the environment
/// `env`, killing it after four minutes; returns its exit code and the
/// run's `results.json` (empty if it wrote none).
///
/// # Panics
/// If it does not finish in time.
#[allow(dead_code)]
pub fn run_harness(args: &[&str], env: &[(&str, &str)], out: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ballast-jepsen"));
    cmd.args(args).arg("--out").arg(out).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start ballast-jepsen");
    // A run takes its time limit plus start-up, healing and checking.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ballast-jepsen") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ballast-jepsen did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = std::fs::read_to_string(out.join("results.json")).unwrap_or_default();
    (status.code(), results)
}
