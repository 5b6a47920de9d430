//! The harness catches a real bug: a Ballast build with the
//! `fault-injection` feature, run with `BALLAST_FAULTS=stale-reads`
//! (linearizable reads served locally, without ReadIndex), under
//! partitions, must be reported not linearizable (exit status 1).

mod common;

#[test]
fn stale_reads_under_partitions_are_flagged_invalid() {
    let faulty = common::faulty_ballast_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let binary = faulty.to_string_lossy().into_owned();
    let (code, results) = common::run_harness(
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
            "25",
            "--nemesis-interval",
            "3",
            "--seed",
            "7",
            "--binary",
            &binary,
        ],
        &[("BALLAST_FAULTS", "stale-reads")],
        &out,
    );
    assert_eq!(code, Some(1), "results:\n{results}");
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
