//! A short run of the `ballast-jepsen` binary against Ballast, with kills
//! and partitions, every workload (register, append, lock, watch): every checker must
//! say valid (exit status 0). Needs the `ballast` binary in the same
//! target directory (`cargo build -p ballast-server`) or `$BALLAST_BIN`.

mod common;

use std::process::Command;

#[test]
fn short_run_against_ballast_is_valid() {
    let ballast = common::ballast_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let binary = ballast.to_string_lossy().into_owned();
    let (code, results) = common::run_harness(
        &[
            "run",
            "--db",
            "ballast",
            "--nodes",
            "3",
            "--workload",
            "register,append,lock,watch",
            "--nemesis",
            "kill,partition",
            "--time-limit",
            "20",
            "--nemesis-interval",
            "3",
            "--seed",
            "7",
            "--binary",
            &binary,
        ],
        &[],
        &out,
    );
    assert_eq!(code, Some(0), "results:\n{results}");
    let r: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["verdict"], "valid");
    let names: Vec<&str> = r["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "linearizable",
        "append",
        "lock",
        "watch",
        "committed-writes",
        "convergence",
        "crashes",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(out.join("history.jsonl").is_file());
    assert!(out.join("report.html").is_file());
    // `check` agrees with the run.
    let check = Command::new(env!("CARGO_BIN_EXE_ballast-jepsen"))
        .arg("check")
        .arg(out.join("history.jsonl"))
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
