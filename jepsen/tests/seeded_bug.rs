//! The harness catches real bugs: a Ballast build with the
//! `fault-injection` feature, run with `BALLAST_FAULTS=stale-reads`
//! (linearizable reads served locally, without ReadIndex), under
//! partitions, must be reported not linearizable (exit status 1); run
//! with `BALLAST_FAULTS=early-lease-expiry` (leases expire after a third
//! of their TTL), the lock checker must flag it. The valid control runs
//! are here (stale reads) and in `run.rs` (every workload, with faults).

mod common;

/// The run both tests make: partitions every few seconds, and short
/// operation deadlines and two hot keys, so a worker on a cut-off member
/// reads many times while the majority writes (with the default 3 s
/// deadline a cut-off worker spends most of a partition in one timed-out
/// write, and a 25 s run caught the seeded bug only one time in three).
fn partition_run(binary: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    common::run_harness(
        &[
            "run",
            "--db",
            "ballast",
            "--nodes",
            "3",
            "--workload",
            "register",
            "--nemesis",
            "partition",
            "--time-limit",
            "20",
            "--nemesis-interval",
            "3",
            "--concurrency",
            "9",
            "--rate",
            "300",
            "--keys",
            "2",
            "--op-timeout-ms",
            "600",
            "--seed",
            "7",
            "--binary",
            binary,
        ],
        env,
        &out,
    )
}

/// The result of the checker `name` in `results.json`.
fn checker(results: &str, name: &str) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(results).unwrap();
    r["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} checker in {results}"))
        .clone()
}

fn linearizable_verdict(results: &str) -> String {
    checker(results, "linearizable")["verdict"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn stale_reads_under_partitions_are_flagged_invalid() {
    let faulty = common::faulty_ballast_bin();
    let (code, results) = partition_run(
        &faulty.to_string_lossy(),
        &[("BALLAST_FAULTS", "stale-reads")],
    );
    assert_eq!(code, Some(1), "results:\n{results}");
    let r: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["verdict"], "invalid", "{results}");
    assert_eq!(linearizable_verdict(&results), "invalid", "{results}");
}

/// The control: the same run against the same build without the fault is
/// linearizable, so the verdict above is the fault's, not the schedule's.
#[test]
fn same_run_without_the_fault_is_valid() {
    let faulty = common::faulty_ballast_bin();
    let (code, results) = partition_run(&faulty.to_string_lossy(), &[]);
    assert_eq!(code, Some(0), "results:\n{results}");
    assert_eq!(linearizable_verdict(&results), "valid", "{results}");
}

#[test]
fn early_lease_expiry_is_flagged_by_the_lock_checker() {
    let faulty = common::faulty_ballast_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, results) = common::run_harness(
        &[
            "run",
            "--db",
            "ballast",
            "--nodes",
            "3",
            "--workload",
            "lock",
            "--nemesis",
            "none",
            "--time-limit",
            "10",
            "--seed",
            "7",
            "--binary",
            &faulty.to_string_lossy(),
        ],
        &[("BALLAST_FAULTS", "early-lease-expiry")],
        &out,
    );
    assert_eq!(code, Some(1), "results:\n{results}");
    let lock = checker(&results, "lock");
    assert_eq!(lock["verdict"], "invalid", "{lock}");
    assert!(
        lock["details"]["early_expiries"].as_u64().unwrap() > 0,
        "{lock}"
    );
}
