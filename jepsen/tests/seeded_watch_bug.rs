//! The watch checker catches a real bug: a Ballast build with the
//! `fault-injection` feature, run with `BALLAST_FAULTS=drop-watch-event`
//! (each member leaves one event out of its watch streams), must be
//! reported invalid by the `watch` checker (exit status 1), while the
//! register history stays linearizable.

mod common;

use serde_json::Value;

/// The run both tests make: the register and watch workloads, no
/// nemesis, 20 s; the register writes reach each member's 50th watch
/// event within the first seconds.
fn watch_run(binary: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
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
            "register,watch",
            "--nemesis",
            "none",
            "--time-limit",
            "20",
            "--seed",
            "7",
            "--binary",
            binary,
        ],
        env,
        &out,
    )
}

/// The result of the checker `name`.
fn checker<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["checkers"]
        .as_array()
        .expect("checkers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} checker in {results}"))
}

#[test]
fn a_dropped_watch_event_is_flagged_invalid() {
    let faulty = common::faulty_ballast_bin();
    let (code, results) = watch_run(
        &faulty.to_string_lossy(),
        &[("BALLAST_FAULTS", "drop-watch-event")],
    );
    assert_eq!(code, Some(1), "results:\n{results}");
    let r: Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["verdict"], "invalid", "{results}");
    let watch = checker(&r, "watch");
    assert_eq!(watch["verdict"], "invalid", "{watch}");
    // A gap in the live watchers, not a lagging watcher or a member with a
    // different history: each deviating session (at most one per member)
    // skips exactly one revision.
    let problems = watch["details"]["problems"].as_array().expect("problems");
    assert!((1..=3).contains(&problems.len()), "{watch}");
    for p in problems {
        let got = p["got"][0].as_i64().expect("got revision");
        let expected = p["expected"][0].as_i64().expect("expected revision");
        assert_eq!(got, expected + 1, "{p}");
    }
    // The fault touches watch delivery only.
    for other in ["linearizable", "committed-writes", "convergence"] {
        assert_eq!(checker(&r, other)["verdict"], "valid", "{results}");
    }
}

/// The control: the same run against the same build without the fault is
/// valid, so the verdict above is the fault's, not the schedule's.
#[test]
fn same_run_without_the_fault_is_valid() {
    let faulty = common::faulty_ballast_bin();
    let (code, results) = watch_run(&faulty.to_string_lossy(), &[]);
    assert_eq!(code, Some(0), "results:\n{results}");
    let r: Value = serde_json::from_str(&results).unwrap();
    assert_eq!(checker(&r, "watch")["verdict"], "valid", "{results}");
    assert_eq!(checker(&r, "linearizable")["verdict"], "valid", "{results}");
}
