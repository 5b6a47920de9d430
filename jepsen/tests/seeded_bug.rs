//! The harness catches a real bug: a Ballast build with the
//! `fault-injection` feature, run with `BALLAST_FAULTS=stale-reads`
//! (linearizable reads served locally, without ReadIndex), under
//! partitions, must be reported not linearizable (exit status 1).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn stale_reads_under_partitions_are_flagged_invalid() {
    let faulty = common::faulty_ballast_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast-jepsen"))
        .env("BALLAST_FAULTS", "stale-reads")
        .args(["run", "--db", "ballast", "--nodes", "3"])
        .args(["--workload", "register", "--nemesis", "partition"])
        .args([
            "--time-limit",
            "25",
            "--nemesis-interval",
            "3",
            "--seed",
            "7",
        ])
        .arg("--binary")
        .arg(&faulty)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
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
    assert_eq!(status.code(), Some(1), "results:\n{results}");
    let r: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["verdict"], "invalid", "{results}");
    let lin = r["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "linearizable")
        .expect("linearizable checker");
    assert_eq!(lin["verdict"], "invalid", "{lin}");
}
