//! `ballast-bench` end to end: the built tool against a real `ballast`
//! member (a child process: `target/<profile>/ballast`, or `$BALLAST_BIN`;
//! build it first with `cargo build --bins`), and against endpoints that do
//! not answer. Every process has a deadline.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ballast_e2e::serde_json::Value;
use ballast_e2e::{free_port, run_with_deadline, Member, Output, Target};

/// Longest any single run of the tool may take here.
const TOOL_DEADLINE: Duration = Duration::from_secs(40);

fn bench(args: &[&str]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ballast-bench"));
    cmd.args(args);
    let started = Instant::now();
    let out = run_with_deadline(cmd, None, TOOL_DEADLINE);
    (out, started.elapsed())
}

/// The JSON report: the last line of stdout.
#[track_caller]
fn report(out: &Output) -> Value {
    let line = out
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr={:?}", out.stderr));
    ballast_e2e::serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "last line is not JSON ({e}): {line:?}; stderr={:?}",
            out.stderr
        )
    })
}

#[track_caller]
fn assert_valid_run(out: &Output, workload: &str, total: u64) -> Value {
    let r = report(out);
    assert!(
        out.success(),
        "{workload}: exit {} stdout={} stderr={}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(r["workload"], workload);
    assert_eq!(r["failed_run"], false, "{r}");
    assert_eq!(r["ok"], total, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["errors"], serde_json_empty(), "{r}");
    assert!(r["qps"].as_f64().unwrap() > 0.0, "{r}");
    let p50 = r["p50_ms"].as_f64().unwrap();
    let p99 = r["p99_ms"].as_f64().unwrap();
    let max = r["max_ms"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    assert!(
        out.stdout.contains("qps (ok/s)"),
        "no table: {}",
        out.stdout
    );
    r
}

fn serde_json_empty() -> Value {
    Value::Object(Default::default())
}

#[tokio::test]
async fn smoke_runs_against_a_ballast_member() {
    let m = Member::start_default().await;
    let ep = m.endpoint();

    // put, with one key: the range below reads it.
    let (out, _) = bench(&["--endpoints", &ep, "--smoke", "put", "--val-size", "16"]);
    let r = assert_valid_run(&out, "put", 20);
    assert_eq!(r["clients"], 2);
    let mut c = m.client().await;
    let got = c.get("00000000", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1, "the put did not write key 00000000");
    assert_eq!(got.kvs()[0].value().len(), 16);
    assert_eq!(got.kvs()[0].version(), 20, "20 puts of the one key");

    for consistency in ["l", "s"] {
        let (out, _) = bench(&[
            "--endpoints",
            &ep,
            "--smoke",
            "range",
            "00000000",
            "--consistency",
            consistency,
        ]);
        let r = assert_valid_run(&out, "range", 20);
        assert_eq!(r["params"]["consistency"], consistency);
    }
    let (out, _) = bench(&[
        "--endpoints",
        &ep,
        "--smoke",
        "range",
        "0",
        "--prefix",
        "--limit",
        "5",
    ]);
    assert_valid_run(&out, "range", 20);

    // txn-put: every operation either wrote or lost a race, never failed.
    let (out, _) = bench(&[
        "--endpoints",
        &ep,
        "--smoke",
        "--clients",
        "4",
        "txn-put",
        "--key-space-size",
        "3",
        "--key-prefix",
        "t/",
    ]);
    let r = assert_valid_run(&out, "txn-put", 20);
    let conflicts = r["conflicts"].as_u64().unwrap();
    let written: i64 = {
        let got = c
            .get(
                "t/",
                Some(ballast_e2e::etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("get");
        got.kvs().iter().map(|kv| kv.version()).sum()
    };
    assert_eq!(
        written as u64 + conflicts,
        20,
        "each txn-put either wrote (version +1) or was a conflict: {r}"
    );
}

#[test]
fn unreachable_endpoint_is_a_failed_run_in_bounded_time() {
    // Free a moment ago: nothing listens there.
    let port = free_port();
    let ep = format!("127.0.0.1:{port}");
    let (out, took) = bench(&[
        "--endpoints",
        &ep,
        "--smoke",
        "--timeout",
        "500ms",
        "--deadline",
        "5s",
        "put",
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "stdout={}", out.stdout);
    assert_eq!(r["failed_run"], true, "{r}");
    assert_eq!(r["ok"], 0, "{r}");
    assert!(r["p50_ms"].is_null(), "{r}");
    let errors = r["errors"].as_object().unwrap();
    let counted: u64 = errors.values().map(|v| v.as_u64().unwrap()).sum::<u64>()
        + r["connect_errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    assert!(counted > 0, "errors not classified: {r}");
    assert!(
        r["notes"][0].as_str().unwrap().starts_with("FAILED RUN"),
        "{r}"
    );
    assert!(out.stdout.contains("FAILED RUN"), "{}", out.stdout);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn silent_endpoint_times_out_and_stops_at_the_deadline() {
    // Accepts connections (the kernel does) but never answers.
    let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
    let ep = listener.local_addr().unwrap().to_string();
    let (out, took) = bench(&[
        "--endpoints",
        &ep,
        "--clients",
        "4",
        "--total",
        "100000",
        "--timeout",
        "300ms",
        "--deadline",
        "2s",
        "--progress-interval",
        "500ms",
        "put",
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "stdout={}", out.stdout);
    assert_eq!(r["failed_run"], true, "{r}");
    assert_eq!(r["deadline_reached"], true, "{r}");
    assert!(r["unfinished"].as_u64().unwrap() > 0, "{r}");
    let timeouts = r["errors"]["client timeout: no answer within --timeout 300ms"]
        .as_u64()
        .unwrap_or(0);
    assert!(timeouts > 0, "{r}");
    assert!(
        out.stderr.contains("/100000 done"),
        "no progress line: {}",
        out.stderr
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(listener);
}

#[tokio::test]
async fn member_lost_mid_run_is_counted_and_reported() {
    let mut m = Member::start_default().await;
    let ep = m.endpoint();
    // 50 puts/s for 4 s; the member dies after about 1 s.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast-bench"))
        .args([
            "--endpoints",
            &ep,
            "--clients",
            "4",
            "--total",
            "200",
            "--rate",
            "50",
            "--timeout",
            "500ms",
            "--deadline",
            "20s",
            "put",
            "--key-space-size",
            "100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ballast-bench");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    m.kill9();
    let deadline = Instant::now() + TOOL_DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ballast-bench did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("output");
    let out = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let r = report(&out);
    let ok = r["ok"].as_u64().unwrap();
    let failed = r["failed"].as_u64().unwrap();
    assert!(ok > 0 && failed > 0, "{r}");
    assert_eq!(ok + failed, 200, "every request is counted: {r}");
    assert_eq!(r["failed_run"], true, "most requests failed: {r}");
    assert_eq!(out.status.code(), Some(1));
    assert!(!r["errors"].as_object().unwrap().is_empty(), "{r}");
}

#[test]
fn bad_arguments_exit_2_without_a_report() {
    let (out, _) = bench(&[
        "--smoke",
        "put",
        "--key-size",
        "2",
        "--key-space-size",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--key-size"), "{}", out.stderr);
    assert!(!out.stdout.contains('{'), "{}", out.stdout);
    let (out, _) = bench(&["--endpoints", "nohost", "--smoke", "put"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (out, _) = bench(&["--smoke", "range", "k", "--consistency", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `chart` reads bench-compare's JSON lines, writes the SVG files and
/// prints their paths; a missing or broken input is a usage error (2).
#[test]
fn chart_writes_svg_files_from_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.jsonl");
    let members = dir.path().join("members.jsonl");
    std::fs::write(
        &runs,
        concat!(
            r#"{"workload":"put","failed_run":false,"qps":1200.0,"p99_ms":20.5,"system":"ballast","round":1,"wl":"put","other_cpu":0.0}"#,
            "\n",
            r#"{"workload":"put","failed_run":false,"qps":1000.0,"p99_ms":25.0,"system":"etcd","round":1,"wl":"put","other_cpu":0.0}"#,
            "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        &members,
        r#"{"system":"ballast","round":1,"member":"m1","vmhwm_kb":51200,"du_kb":10240,"apparent_kb":10240}"#,
    )
    .unwrap();
    let out_dir = dir.path().join("charts");
    let (out, _) = bench(&[
        "chart",
        "--input",
        runs.to_str().unwrap(),
        "--input",
        members.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.success(), "stdout={} stderr={}", out.stdout, out.stderr);
    let written: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(written.len(), 4, "{}", out.stdout);
    for name in [
        "throughput.svg",
        "latency-p99.svg",
        "rss.svg",
        "data-dir.svg",
    ] {
        let path = out_dir.join(name);
        assert!(written.contains(&path.to_str().unwrap()), "{}", out.stdout);
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    }
    let svg = std::fs::read_to_string(out_dir.join("throughput.svg")).unwrap();
    for text in [
        "1,200",
        "1,000",
        "Ballast/etcd 1.20×",
        ">Ballast<",
        ">etcd 3.4<",
    ] {
        assert!(svg.contains(text), "missing {text:?}: {svg}");
    }

    let (out, _) = bench(&["chart", "--input", "/nonexistent.jsonl", "--out-dir", "x"]);
    assert_eq!(out.status.code(), Some(2), "stderr={}", out.stderr);
    std::fs::write(&runs, "not json\n").unwrap();
    let (out, _) = bench(&[
        "chart",
        "--input",
        runs.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "stderr={}", out.stderr);
    assert!(out.stderr.contains("not JSON"), "{}", out.stderr);
}
