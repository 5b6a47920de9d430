//! Differential tests: the same requests go to a real etcd 3.4 and to
//! Ballast, and the answers must be identical once what legitimately
//! differs is normalized away:
//!
//! - `cluster_id`, `member_id` and `raft_term` (and the `ClusterID`,
//!   `MemberID`, `RaftTerm` lines of `-w fields`);
//! - etcdctl's warning log lines on stderr, of which only the message and
//!   the gRPC error (code and description) are kept;
//! - the revision a fresh store starts at: revisions are compared relative
//!   to each server's revision when the test began (`@N` in a command is
//!   that base + N). Whether a fresh store starts where etcd's does is
//!   checked on its own, exactly, by `fresh_store_revisions_match_etcd`.
//!
//! The tests print a skip notice and pass when no etcd binary is installed
//! (CI installs etcd-server, so they run there).

use std::time::Duration;

use ballast_e2e::etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use ballast_e2e::serde_json::{self, json, Value};
use ballast_e2e::{
    etcdctl_at, grpc_error, within, EtcdOpts, EtcdReference, Member, MemberOpts, Output, Target,
};

/// `--max-txn-ops` given to both servers, small so that the limit is cheap
/// to reach.
const MAX_TXN_OPS: u32 = 8;

struct Pair {
    etcd: EtcdReference,
    ballast: Member,
    /// Each server's revision before the test's first write.
    base_etcd: i64,
    base_ballast: i64,
}

async fn pair(test: &str) -> Option<Pair> {
    let (etcd, ballast) = tokio::join!(
        EtcdReference::start(
            test,
            EtcdOpts {
                max_txn_ops: Some(MAX_TXN_OPS),
                ..Default::default()
            }
        ),
        Member::start(MemberOpts {
            max_txn_ops: Some(MAX_TXN_OPS),
            ..Default::default()
        })
    );
    let etcd = etcd?;
    let base = |endpoint: &str| -> i64 {
        let out = etcdctl_at(endpoint, &["get", "base-probe", "-w", "json"], None);
        // etcd's JSON omits a zero revision (neither store starts there).
        out.json()["header"]["revision"].as_i64().unwrap_or(0)
    };
    let (base_etcd, base_ballast) = (base(&etcd.endpoint()), base(&ballast.endpoint()));
    Some(Pair {
        etcd,
        ballast,
        base_etcd,
        base_ballast,
    })
}

// ---------------------------------------------------------------------------
// Normalization

const REVISION_FIELDS: [&str; 4] = [
    "revision",
    "create_revision",
    "mod_revision",
    "compact_revision",
];
const ID_FIELDS: [&str; 3] = ["cluster_id", "member_id", "raft_term"];

/// Drops the ids and rebases revisions in a JSON answer; a field that
/// becomes 0 is dropped, as etcd's JSON omits zero values.
fn normalize_json(v: &mut Value, base: i64) {
    match v {
        Value::Object(o) => {
            for f in ID_FIELDS {
                o.remove(f);
            }
            for f in REVISION_FIELDS {
                if let Some(n) = o.get(f).and_then(Value::as_i64) {
                    if n - base == 0 {
                        o.remove(f);
                    } else {
                        o.insert(f.to_string(), json!(n - base));
                    }
                }
            }
            for (_, x) in o.iter_mut() {
                normalize_json(x, base);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize_json(x, base)),
        _ => {}
    }
}

fn rebase_number(s: &str, base: i64) -> String {
    match s.trim().parse::<i64>() {
        Ok(n) => (n - base).to_string(),
        Err(_) => s.to_string(),
    }
}

fn normalize_stdout_line(line: &str, base: i64) -> String {
    if line.starts_with('{') {
        if let Ok(mut v) = serde_json::from_str::<Value>(line) {
            normalize_json(&mut v, base);
            return v.to_string();
        }
    }
    if let Some(n) = line.strip_prefix("compacted revision ") {
        return format!("compacted revision {}", rebase_number(n, base));
    }
    for f in ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "] {
        if line.starts_with(f) {
            return format!("{f}<id>");
        }
    }
    for f in [
        "\"Revision\" : ",
        "\"CreateRevision\" : ",
        "\"ModRevision\" : ",
        "\"CompactRevision\" : ",
    ] {
        if let Some(n) = line.strip_prefix(f) {
            return format!("{f}{}", rebase_number(n, base));
        }
    }
    line.to_string()
}

fn normalize_stderr_line(line: &str) -> String {
    if line.starts_with("{\"level\"") {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            return format!(
                "log {}: {} {}",
                v["level"].as_str().unwrap_or(""),
                v["msg"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            );
        }
    }
    line.to_string()
}

/// Exit status, standard output and standard error, normalized.
fn normalize(out: &Output, base: i64) -> String {
    let stdout: Vec<String> = out
        .stdout
        .lines()
        .map(|l| normalize_stdout_line(l, base))
        .collect();
    let stderr: Vec<String> = out.stderr.lines().map(normalize_stderr_line).collect();
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout.join("\n"),
        stderr.join("\n")
    )
}

// ---------------------------------------------------------------------------
// Steps

/// What etcd is expected to do with a step (checked, so that a broken
/// step, e.g. one both servers refuse for the same wrong reason, is noticed).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Ok,
    Fails,
}

struct Step {
    line: String,
    stdin: Option<String>,
    expect: Expect,
}

fn ok(line: &str) -> Step {
    Step {
        line: line.to_string(),
        stdin: None,
        expect: Expect::Ok,
    }
}

fn fails(line: &str) -> Step {
    Step {
        expect: Expect::Fails,
        ..ok(line)
    }
}

fn with_stdin(mut s: Step, stdin: &str) -> Step {
    s.stdin = Some(stdin.to_string());
    s
}

/// Splits a command line: whitespace separates arguments, `"..."` quotes
/// (so `""` is an empty argument).
fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                have = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if have {
                    args.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        args.push(cur);
    }
    args
}

/// Replaces every `@N` with `base + N`.
fn at_revisions(s: &str, base: i64) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            out.push_str(&(base + n.parse::<i64>().expect("digits")).to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn run_step(endpoint: &str, step: &Step, base: i64) -> Output {
    let args: Vec<String> = split_args(&at_revisions(&step.line, base));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdin = step.stdin.as_ref().map(|s| at_revisions(s, base));
    etcdctl_at(endpoint, &args, stdin.as_deref().map(str::as_bytes))
}

/// Runs every step on both servers (in parallel, one step at a time) and
/// fails listing every difference.
fn compare_steps(p: &Pair, steps: &[Step]) {
    let mut diffs = Vec::new();
    let mut wrong_expect = Vec::new();
    let (ep_e, ep_b) = (p.etcd.endpoint(), p.ballast.endpoint());
    for (i, step) in steps.iter().enumerate() {
        let (e, b) = std::thread::scope(|s| {
            let e = s.spawn(|| run_step(&ep_e, step, p.base_etcd));
            let b = s.spawn(|| run_step(&ep_b, step, p.base_ballast));
            (
                e.join().expect("etcd step"),
                b.join().expect("ballast step"),
            )
        });
        let (ne, nb) = (normalize(&e, p.base_etcd), normalize(&b, p.base_ballast));
        let label = match &step.stdin {
            None => format!("#{i} etcdctl {}", step.line),
            Some(s) => format!("#{i} etcdctl {} <<< {:?}", step.line, s),
        };
        let etcd_expect = if e.success() {
            Expect::Ok
        } else {
            Expect::Fails
        };
        if etcd_expect != step.expect {
            wrong_expect.push(format!("{label}: etcd gave {etcd_expect:?}:\n{ne}"));
        }
        if ne != nb {
            diffs.push(format!(
                "{label}\n--- etcd 3.4:\n{ne}\n--- ballast:\n{nb}\n"
            ));
        }
    }
    assert!(
        wrong_expect.is_empty(),
        "steps whose outcome on etcd is not the expected one (fix the test):\n{}",
        wrong_expect.join("\n")
    );
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ from etcd:\n\n{}",
        diffs.len(),
        steps.len(),
        diffs.join("\n")
    );
    eprintln!("{} etcdctl steps: identical answers", steps.len());
}

/// A txn fed on stdin: compares, success ops, failure ops, one per line,
/// each section ended by a blank line.
fn txn(flags: &str, compares: &[&str], success: &[&str], failure: &[&str], expect: Expect) -> Step {
    let mut stdin = String::new();
    for section in [compares, success, failure] {
        for line in section {
            stdin.push_str(line);
            stdin.push('\n');
        }
        stdin.push('\n');
    }
    Step {
        line: format!("txn {flags}"),
        stdin: Some(stdin),
        expect,
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sequence_matches_etcd() {
    let Some(p) = pair("etcdctl_sequence_matches_etcd").await else {
        return;
    };
    use Expect::{Fails, Ok as Succeeds};
    let mut steps = vec![
        // Puts: revisions @1..@11.
        ok("put a 1 -w json"),
        ok("put ab 2"),
        ok("put abc 3 -w json"),
        ok("put b 4 -w json"),
        ok("put c 5 -w json"),
        ok("put a 10 --prev-kv -w json"),
        ok("put b 40 -w json"),
        ok("put b 41 --prev-kv"),
        ok("put \"key with spaces\" \"value with spaces\" -w json"),
        ok("put z \"\" -w json"),
        ok("put ba 7 --prev-kv -w json"),
        with_stdin(ok("put from-stdin -w json"), "stdin value"),
        // Gets.
        ok("get a -w json"),
        ok("get a"),
        ok("get missing -w json"),
        ok("get missing"),
        ok("get a --prefix -w json"),
        ok("get a --prefix"),
        ok("get \"\" --prefix -w json"),
        ok("get \"\" --from-key -w json"),
        ok("get b --from-key -w json"),
        ok("get a c -w json"),
        ok("get c a -w json"),
        ok("get a a -w json"),
        ok("get a --prefix --limit=2 -w json"),
        ok("get a --prefix --limit=3 -w json"),
        ok("get \"\" --from-key --limit=1 -w json"),
        ok("get \"\" --from-key --limit=1"),
        ok("get a --prefix --limit=0 -w json"),
        ok("get a --print-value-only"),
        ok("get a --prefix --print-value-only"),
        ok("get \"\" --from-key --keys-only"),
        ok("get \"\" --from-key --keys-only -w json"),
        ok("get a --prefix --keys-only --limit=1 -w json"),
        ok("get a -w fields"),
        ok("get a --prefix --limit=1 -w fields"),
        ok("get a --prefix --hex"),
        ok("get a --consistency=s -w json"),
        ok("get \"key with spaces\" -w json"),
        ok("get z -w json"),
        ok("get z"),
        // At past revisions.
        ok("get a --rev=@1 -w json"),
        ok("get a --rev=@5 -w json"),
        ok("get a --rev=@6 -w json"),
        ok("get b --prefix --rev=@7 -w json"),
        ok("get \"\" --from-key --rev=@4 -w json"),
        ok("get a --prefix --limit=1 --rev=@3 -w json"),
        ok("get ba --rev=@10 -w json"),
        ok("get \"\" --from-key --rev=@12 --keys-only -w json"),
        ok("get a --rev=0 -w json"),
        fails("get a --rev=@1000"),
        fails("get a --rev=@1000 -w json"),
    ];
    // Every sort target and order, alone, with a limit, keys only.
    for target in ["KEY", "CREATE", "MODIFY", "VALUE", "VERSION"] {
        for order in ["ASCEND", "DESCEND"] {
            let sort = format!("--sort-by={target} --order={order}");
            steps.push(ok(&format!("get \"\" --from-key {sort} -w json")));
            steps.push(ok(&format!("get \"\" --from-key {sort} --limit=3 -w json")));
            steps.push(ok(&format!("get a --prefix {sort} --keys-only")));
            steps.push(ok(&format!("get \"\" --from-key {sort} --rev=@8 -w json")));
        }
    }
    steps.push(ok("get \"\" --from-key --order=DESCEND -w json"));
    steps.push(ok("get \"\" --from-key --sort-by=VALUE -w json"));
    steps.extend([
        // Deletes.
        ok("del ab --prev-kv -w json"),
        ok("del nonexistent -w json"),
        ok("del nonexistent"),
        ok("del abc"),
        ok("put d/1 x"),
        ok("put d/2 y"),
        ok("put d/3 z"),
        ok("del d/ --prefix --prev-kv -w json"),
        ok("del d/ --prefix -w json"),
        ok("put e1 1"),
        ok("put e2 2"),
        ok("put e3 3"),
        ok("del e1 e3 --prev-kv"),
        ok("del e3 --from-key --prev-kv -w json"),
        ok("get \"\" --from-key -w json"),
        ok("put a 11 -w json"),
        ok("get a -w json"),
        // Txns.
        txn(
            "-w json",
            &["value(\"a\") = \"11\""],
            &["put t1 x", "get a"],
            &["put t2 y"],
            Succeeds,
        ),
        txn(
            "",
            &["value(\"a\") = \"11\""],
            &["put t3 x", "get a"],
            &["put t4 y"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["value(\"a\") = \"nope\""],
            &["put t5 x"],
            &["put t6 y", "get t1", "del t3"],
            Succeeds,
        ),
        txn(
            "",
            &["value(\"a\") != \"11\""],
            &["put t7 x"],
            &["put t8 y", "get t1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &[
                "version(\"a\") = \"3\"",
                "create(\"a\") = \"@1\"",
                "mod(\"a\") > \"@6\"",
            ],
            &["put t9 x"],
            &["put t10 y"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["version(\"a\") > \"3\""],
            &["put t11 x"],
            &["put t12 y"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["create(\"a\") < \"@1\""],
            &["get a"],
            &["get b"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["mod(\"b\") = \"@8\""],
            &["get b --prefix", "del ba --prev-kv"],
            &[],
            Succeeds,
        ),
        txn(
            "-w json",
            &["value(\"b\") < \"5\"", "value(\"c\") > \"4\""],
            &["put t13 1"],
            &["put t14 1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &[
                "version(\"missing\") = \"0\"",
                "create(\"missing\") = \"0\"",
                "mod(\"missing\") = \"0\"",
            ],
            &["put m1 1"],
            &["put m2 1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["value(\"missing\") = \"\""],
            &["put m3 1"],
            &["put m4 1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &["value(\"missing\") != \"x\""],
            &["put m5 1"],
            &["put m6 1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &[],
            &["put n1 1", "put n2 2", "get n --prefix"],
            &[],
            Succeeds,
        ),
        txn(
            "-w json",
            &[],
            &["get \"\" --from-key --limit=2"],
            &[],
            Succeeds,
        ),
        txn(
            "-w json",
            &[],
            &["get t --prefix --keys-only --sort-by=MODIFY --order=DESCEND"],
            &[],
            Succeeds,
        ),
        txn("-w json", &[], &[], &[], Succeeds),
        txn(
            "-w json",
            &["value(\"a\") = \"11\""],
            &[],
            &["put x 1"],
            Succeeds,
        ),
        txn(
            "-w json",
            &[],
            &["del t --prefix --prev-kv", "put t1 again"],
            &[],
            Fails,
        ),
        txn(
            "-w json",
            &[],
            &["del t --prefix --prev-kv", "put u1 again"],
            &[],
            Succeeds,
        ),
        txn("-w json", &[], &["put dup 1", "put dup 2"], &[], Fails),
        txn("", &[], &["put dup 1", "del dup"], &[], Fails),
        txn("", &[], &["del q1 q9", "del q2 q8"], &[], Succeeds),
        txn(
            "-w json",
            &[],
            &[
                "put o1 1", "put o2 1", "put o3 1", "put o4 1", "put o5 1", "put o6 1", "put o7 1",
                "put o8 1",
            ],
            &[],
            Succeeds,
        ),
        txn(
            "-w json",
            &[],
            &[
                "put o1 1", "put o2 1", "put o3 1", "put o4 1", "put o5 1", "put o6 1", "put o7 1",
                "put o8 1", "put o9 1",
            ],
            &[],
            Fails,
        ),
        txn(
            "-w json",
            &[],
            &[],
            &[
                "put o1 1", "put o2 1", "put o3 1", "put o4 1", "put o5 1", "put o6 1", "put o7 1",
                "put o8 1", "put o9 1",
            ],
            Fails,
        ),
        txn(
            "-w json",
            &["value(\"a\") = \"11\""],
            &["put \"\" x"],
            &[],
            Fails,
        ),
        txn(
            "-w json",
            &["value(\"a\") = \"11\""],
            &["get a --rev=@1000"],
            &[],
            Fails,
        ),
        txn(
            "-w json",
            &["value(\"a\") = \"11\""],
            &["get a --rev=@1"],
            &[],
            Succeeds,
        ),
        ok("get \"\" --from-key -w json"),
        // Errors.
        fails("put \"\" v"),
        fails("put \"\" v -w json"),
        fails("get \"\""),
        fails("del \"\""),
        fails("put nokey v --ignore-lease"),
        fails("put nokey --ignore-value"),
        ok("put a --ignore-value -w json"),
        ok("put a 12 --ignore-lease --prev-kv -w json"),
        fails("put a v --lease=1234"),
        fails("put a v --lease=1234 -w json"),
        fails("put a --ignore-value --lease=1234"),
        fails("get a --sort-by=BOGUS"),
        fails("get a --order=BOGUS"),
        ok("get \"\" --from-key --keys-only"),
        // Compaction.
        ok("compaction @3"),
        fails("get a --rev=@2"),
        fails("get a --rev=@2 -w json"),
        fails("get \"\" --from-key --rev=@1 -w json"),
        ok("get a --rev=@3 -w json"),
        ok("get \"\" --from-key --rev=@3 -w json"),
        fails("compaction @3"),
        fails("compaction @2"),
        fails("compaction @1000"),
        ok("compaction @4 -w json"),
        ok("compaction --physical @8"),
        fails("get a --rev=@7"),
        ok("get \"\" --from-key --rev=@8 -w json"),
        ok("get \"\" --from-key --rev=@20 -w json"),
        txn("-w json", &[], &["get a --rev=@5"], &[], Fails),
        ok("get \"\" --from-key -w json"),
        // (Sorting many keys with equal sort values is left out: etcd does
        // not define the order of ties, and its Go sort is not stable
        // beyond 12 elements.)
        ok("get m --prefix --sort-by=CREATE --order=DESCEND -w fields"),
        ok("put a 13 -w json"),
        ok("get a -w json"),
    ]);
    within("the etcdctl sequence", Duration::from_secs(90), async {
        tokio::task::block_in_place(|| compare_steps(&p, &steps));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_too_large_matches_etcd() {
    let Some(p) = pair("request_too_large_matches_etcd").await else {
        return;
    };
    // Over --max-request-bytes (1.5 MiB) but under what gRPC accepts.
    let big = "x".repeat(1_700_000);
    let steps = vec![
        ok("put small v -w json"),
        with_stdin(fails("put big"), &big),
        with_stdin(fails("put big -w json"), &big),
        txn(
            "",
            &[],
            &[&format!("put big {}", "y".repeat(100))],
            &[],
            Expect::Ok,
        ),
        ok("get \"\" --from-key --keys-only -w json"),
    ];
    tokio::task::block_in_place(|| compare_steps(&p, &steps));
}

/// A fresh store's revision, compared exactly (not rebased): etcd's store
/// starts at revision 1, so its first write is revision 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_revisions_match_etcd() {
    let Some(p) = pair("fresh_store_revisions_match_etcd").await else {
        return;
    };
    let p = Pair {
        base_etcd: 0,
        base_ballast: 0,
        ..p
    };
    let steps = vec![
        ok("get a -w json"),
        ok("put a 1 -w json"),
        ok("get a -w json"),
        ok("get a --rev=1 -w json"),
        ok("compaction 1"),
        ok("get a --rev=1 -w json"),
    ];
    tokio::task::block_in_place(|| compare_steps(&p, &steps));
}

// ---------------------------------------------------------------------------
// The same at the gRPC level, with the etcd-client crate: what etcdctl 3.4
// cannot send (count_only, revision filters, nested txns, range compares).

/// Bytes as text, or as a list of numbers if not UTF-8; long values are
/// summarized.
fn bytes_json(b: &[u8]) -> Value {
    if b.len() > 64 {
        return json!({ "len": b.len(), "first": b[0], "last": b[b.len() - 1] });
    }
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!(b),
    }
}

fn kv_json(kv: &KeyValue, base: i64) -> Value {
    let rel = |r: i64| if r == 0 { 0 } else { r - base };
    json!({
        "key": bytes_json(kv.key()),
        "value": bytes_json(kv.value()),
        "create_revision": rel(kv.create_revision()),
        "mod_revision": rel(kv.mod_revision()),
        "version": kv.version(),
        "lease": kv.lease(),
    })
}

/// The header's revision relative to `base`; 0 stays 0 (etcd sends an
/// empty header in nested txn responses), and no header at all is -1.
fn header_rev(h: Option<&ballast_e2e::etcd_client::ResponseHeader>, base: i64) -> i64 {
    match h.map(|h| h.revision()) {
        None => -1,
        Some(0) => 0,
        Some(r) => r - base,
    }
}

fn get_json(r: &GetResponse, base: i64) -> Value {
    json!({
        "rev": header_rev(r.header(), base),
        "kvs": r.kvs().iter().map(|kv| kv_json(kv, base)).collect::<Vec<_>>(),
        "count": r.count(),
        "more": r.more(),
    })
}

fn txn_json(r: &TxnResponse, base: i64) -> Value {
    let ops: Vec<Value> = r
        .op_responses()
        .iter()
        .map(|op| match op {
            TxnOpResponse::Get(g) => json!({ "get": get_json(g, base) }),
            TxnOpResponse::Put(p) => json!({ "put": {
                "rev": header_rev(p.header(), base),
                "prev": p.prev_key().map(|kv| kv_json(kv, base)),
            }}),
            TxnOpResponse::Delete(d) => json!({ "delete": {
                "rev": header_rev(d.header(), base),
                "deleted": d.deleted(),
                "prev": d.prev_kvs().iter().map(|kv| kv_json(kv, base)).collect::<Vec<_>>(),
            }}),
            TxnOpResponse::Txn(t) => json!({ "txn": txn_json(t, base) }),
        })
        .collect();
    json!({
        "rev": header_rev(r.header(), base),
        "succeeded": r.succeeded(),
        "responses": ops,
    })
}

fn err_json(e: &ballast_e2e::etcd_client::Error) -> Value {
    let (code, msg) = grpc_error(e);
    json!({ "error": code, "message": msg })
}

/// One request, sent to one server; the answer as comparable JSON.
enum Req {
    Put(Vec<u8>, Vec<u8>, Option<PutOptions>),
    Get(Vec<u8>, Option<GetOptions>),
    Del(Vec<u8>, Option<DeleteOptions>),
    Txn(Txn),
    Compact(i64, bool),
}

/// A request whose revisions depend on the server's base revision.
type ReqFn = Box<dyn Fn(i64) -> Req>;

async fn send(c: &mut Client, r: Req, base: i64) -> Value {
    let res = match r {
        Req::Put(k, v, o) => c.put(k, v, o).await.map(|r| {
            json!({"rev": header_rev(r.header(), base), "prev": r.prev_key().map(|kv| kv_json(kv, base))})
        }),
        Req::Get(k, o) => c.get(k, o).await.map(|r| get_json(&r, base)),
        Req::Del(k, o) => c.delete(k, o).await.map(|r| {
            json!({
                "rev": header_rev(r.header(), base),
                "deleted": r.deleted(),
                "prev": r.prev_kvs().iter().map(|kv| kv_json(kv, base)).collect::<Vec<_>>(),
            })
        }),
        Req::Txn(t) => c.txn(t).await.map(|r| txn_json(&r, base)),
        Req::Compact(rev, physical) => {
            let o = physical.then(|| CompactionOptions::new().with_physical());
            c.compact(rev, o)
                .await
                .map(|r| json!({"rev": header_rev(r.header(), base)}))
        }
    };
    res.unwrap_or_else(|e| err_json(&e))
}

/// Sends each request to both servers (rebased on each one's revision) and
/// fails listing every answer that differs.
async fn compare_requests(p: &Pair, reqs: &[(&str, ReqFn)]) {
    let mut ce = p.etcd.client().await;
    let mut cb = p.ballast.client().await;
    let mut diffs = Vec::new();
    for (name, req) in reqs {
        let (e, b) = within(name, Duration::from_secs(20), async {
            tokio::join!(
                send(&mut ce, req(p.base_etcd), p.base_etcd),
                send(&mut cb, req(p.base_ballast), p.base_ballast)
            )
        })
        .await;
        if e != b {
            diffs.push(format!("{name}\n--- etcd 3.4:\n{e}\n--- ballast:\n{b}\n"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} gRPC requests differ from etcd:\n\n{}",
        diffs.len(),
        reqs.len(),
        diffs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_match_etcd() {
    let Some(p) = pair("grpc_requests_match_etcd").await else {
        return;
    };
    let put = |k: &'static str, v: &str| -> ReqFn {
        let v = v.to_string();
        Box::new(move |_| Req::Put(k.into(), v.clone().into(), None))
    };
    let get = |k: &'static str, o: fn(i64) -> GetOptions| -> ReqFn {
        Box::new(move |b| Req::Get(k.into(), Some(o(b))))
    };
    let txn = |t: fn(i64) -> Txn| -> ReqFn { Box::new(move |b| Req::Txn(t(b))) };
    let reqs: Vec<(&str, ReqFn)> = vec![
        ("put k1", put("k1", "a")),        // @1
        ("put k2", put("k2", "b")),        // @2
        ("put k3", put("k3", "c")),        // @3
        ("put k1 again", put("k1", "aa")), // @4
        ("put k4", put("k4", "d")),        // @5
        ("put k2 again", put("k2", "bb")), // @6
        ("put j1", put("j1", "z")),        // @7
        (
            "count_only",
            get("k", |_| GetOptions::new().with_prefix().with_count_only()),
        ),
        (
            "count_only with limit",
            get("k", |_| {
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_limit(1)
            }),
        ),
        (
            "keys_only",
            get("k", |_| GetOptions::new().with_prefix().with_keys_only()),
        ),
        (
            "limit and more",
            get("k", |_| GetOptions::new().with_prefix().with_limit(2)),
        ),
        (
            "negative limit",
            get("k", |_| GetOptions::new().with_prefix().with_limit(-1)),
        ),
        (
            "min_mod_revision",
            get("k", |b| {
                GetOptions::new().with_prefix().with_min_mod_revision(b + 4)
            }),
        ),
        (
            "max_mod_revision",
            get("k", |b| {
                GetOptions::new().with_prefix().with_max_mod_revision(b + 3)
            }),
        ),
        (
            "min_create_revision",
            get("k", |b| {
                GetOptions::new()
                    .with_prefix()
                    .with_min_create_revision(b + 2)
            }),
        ),
        (
            "max_create_revision",
            get("k", |b| {
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(b + 2)
            }),
        ),
        (
            "filters and limit",
            get("k", |b| {
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(b + 3)
                    .with_limit(1)
            }),
        ),
        (
            "filters, count_only",
            get("k", |b| {
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(b + 1)
                    .with_count_only()
            }),
        ),
        (
            "filters at a revision",
            get("k", |b| {
                GetOptions::new()
                    .with_prefix()
                    .with_revision(b + 5)
                    .with_min_mod_revision(b + 3)
            }),
        ),
        (
            "sort by version desc with limit",
            get("k", |_| {
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Version, SortOrder::Descend)
                    .with_limit(2)
            }),
        ),
        (
            "sort by mod asc",
            get("", |_| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Mod, SortOrder::Ascend)
            }),
        ),
        (
            "sort by create desc",
            get("", |_| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
            }),
        ),
        (
            "sort by value asc",
            get("", |_| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Ascend)
            }),
        ),
        (
            "sort by key desc, keys only",
            get("", |_| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_keys_only()
            }),
        ),
        (
            "explicit range",
            get("k1", |_| GetOptions::new().with_range("k3")),
        ),
        (
            "range end below key",
            get("k3", |_| GetOptions::new().with_range("k1")),
        ),
        (
            "serializable",
            get("k1", |_| GetOptions::new().with_serializable()),
        ),
        (
            "put prev_kv",
            Box::new(|_| {
                Req::Put(
                    "k3".into(),
                    "cc".into(),
                    Some(PutOptions::new().with_prev_key()),
                )
            }),
        ), // @8
        (
            "put prev_kv of new key",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    "e".into(),
                    Some(PutOptions::new().with_prev_key()),
                )
            }),
        ), // @9
        (
            "ignore_value",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    Vec::new(),
                    Some(PutOptions::new().with_ignore_value().with_prev_key()),
                )
            }),
        ), // @10
        (
            "ignore_lease",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    "f".into(),
                    Some(PutOptions::new().with_ignore_lease()),
                )
            }),
        ), // @11
        (
            "ignore_value missing",
            Box::new(|_| {
                Req::Put(
                    "nokey".into(),
                    Vec::new(),
                    Some(PutOptions::new().with_ignore_value()),
                )
            }),
        ),
        (
            "ignore_value with value",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    "x".into(),
                    Some(PutOptions::new().with_ignore_value()),
                )
            }),
        ),
        (
            "ignore_lease with lease",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    "x".into(),
                    Some(PutOptions::new().with_ignore_lease().with_lease(5)),
                )
            }),
        ),
        (
            "unknown lease",
            Box::new(|_| {
                Req::Put(
                    "k5".into(),
                    "x".into(),
                    Some(PutOptions::new().with_lease(0x1234)),
                )
            }),
        ),
        (
            "empty key put",
            Box::new(|_| Req::Put("".into(), "x".into(), None)),
        ),
        ("empty key get", Box::new(|_| Req::Get("".into(), None))),
        ("empty key delete", Box::new(|_| Req::Del("".into(), None))),
        (
            "future revision",
            get("k1", |b| GetOptions::new().with_revision(b + 1000)),
        ),
        (
            "txn range compare all greater",
            txn(|_| {
                Txn::new()
                    .when([Compare::version("k", CompareOp::Greater, 0).with_range("l")])
                    .and_then([TxnOp::get(
                        "k",
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )])
            }),
        ),
        (
            "txn range compare fails on one",
            txn(|_| {
                Txn::new()
                    .when([Compare::version("k", CompareOp::Greater, 1).with_range("l")])
                    .and_then([TxnOp::put("r1", "x", None)])
                    .or_else([TxnOp::put("r2", "y", None)])
            }),
        ), // @12
        (
            "txn range compare mod less",
            txn(|b| {
                Txn::new()
                    .when([Compare::mod_revision("k", CompareOp::Less, b + 100).with_prefix()])
                    .and_then([TxnOp::get("r2", None)])
            }),
        ),
        (
            "txn range compare value equal",
            txn(|_| {
                Txn::new()
                    .when([Compare::value("k1", CompareOp::Equal, "aa").with_range("k2")])
                    .and_then([TxnOp::get("k1", None)])
                    .or_else([TxnOp::get("k2", None)])
            }),
        ),
        (
            "txn range compare over empty range",
            txn(|_| {
                Txn::new()
                    .when([Compare::version("zz", CompareOp::Equal, 5).with_range("zzz")])
                    .and_then([TxnOp::put("r3", "x", None)])
                    .or_else([TxnOp::put("r4", "y", None)])
            }),
        ), // @13
        (
            "txn range compare create not equal",
            txn(|_| {
                Txn::new()
                    .when([Compare::create_revision("k", CompareOp::NotEqual, 0).with_prefix()])
                    .and_then([TxnOp::get("r3", None)])
                    .or_else([TxnOp::get("r4", None)])
            }),
        ),
        (
            "txn lease compare",
            txn(|_| {
                Txn::new()
                    .when([Compare::lease("k1", CompareOp::Equal, 0)])
                    .and_then([TxnOp::get("k1", None)])
            }),
        ),
        (
            "txn value compare missing key",
            txn(|_| {
                Txn::new()
                    .when([Compare::value("nokey", CompareOp::NotEqual, "x")])
                    .and_then([TxnOp::get("k1", None)])
                    .or_else([TxnOp::get("k2", None)])
            }),
        ),
        (
            "nested txn",
            txn(|b| {
                Txn::new()
                    .when([Compare::version("k1", CompareOp::Equal, 2)])
                    .and_then([
                        TxnOp::put("n1", "x", None),
                        TxnOp::txn(
                            Txn::new()
                                .when([Compare::mod_revision("k2", CompareOp::Equal, b + 6)])
                                .and_then([
                                    TxnOp::put("n2", "y", Some(PutOptions::new().with_prev_key())),
                                    TxnOp::get("n", Some(GetOptions::new().with_prefix())),
                                ])
                                .or_else([TxnOp::put("n3", "z", None)]),
                        ),
                        TxnOp::get("n", Some(GetOptions::new().with_prefix())),
                    ])
            }),
        ), // @14
        (
            "nested txn, inner failure",
            txn(|_| {
                Txn::new().and_then([TxnOp::txn(
                    Txn::new()
                        .when([Compare::value("n1", CompareOp::Equal, "nope")])
                        .and_then([TxnOp::put("n4", "y", None)])
                        .or_else([
                            TxnOp::delete("n1", Some(DeleteOptions::new().with_prev_key())),
                            TxnOp::put("n5", "v", None),
                        ]),
                )])
            }),
        ), // @15
        (
            "nested txn sees outer write",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::put("n6", "x", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version("n6", CompareOp::Equal, 0)])
                            .and_then([TxnOp::put("n7", "evaluated-before", None)])
                            .or_else([TxnOp::put("n8", "evaluated-after", None)]),
                    ),
                ])
            }),
        ), // @16
        (
            "nested duplicate put",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::put("d1", "x", None),
                    TxnOp::txn(Txn::new().and_then([TxnOp::put("d1", "y", None)])),
                ])
            }),
        ),
        (
            "nested branches may write one key",
            txn(|_| {
                Txn::new().and_then([TxnOp::txn(
                    Txn::new()
                        .when([Compare::version("d2", CompareOp::Equal, 0)])
                        .and_then([TxnOp::put("d2", "x", None)])
                        .or_else([TxnOp::put("d2", "y", None)]),
                )])
            }),
        ), // @17
        (
            "put inside deleted range",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::delete("d", Some(DeleteOptions::new().with_prefix())),
                    TxnOp::put("d3", "x", None),
                ])
            }),
        ),
        (
            "delete then put outside range",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::delete("d", Some(DeleteOptions::new().with_prefix())),
                    TxnOp::put("e9", "x", None),
                ])
            }),
        ), // @18
        (
            "two overlapping deletes",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::delete("k1", Some(DeleteOptions::new().with_range("k3"))),
                    TxnOp::delete("k2", Some(DeleteOptions::new().with_range("k4"))),
                ])
            }),
        ), // @19
        (
            "txn deleting nothing takes no revision",
            txn(|_| {
                Txn::new().and_then([
                    TxnOp::delete("nothing", None),
                    TxnOp::delete("nothing2", Some(DeleteOptions::new().with_prefix())),
                ])
            }),
        ),
        (
            "txn failing compare, empty branch",
            txn(|_| {
                Txn::new()
                    .when([Compare::value("k1", CompareOp::Equal, "no")])
                    .and_then([TxnOp::put("never", "x", None)])
            }),
        ),
        (
            "negative revision reads newest",
            get("k1", |_| GetOptions::new().with_revision(-5)),
        ),
        (
            "get of a deleted key at an old revision",
            get("n1", |b| GetOptions::new().with_revision(b + 14)),
        ),
        (
            "txn read at a revision",
            txn(|b| {
                Txn::new().and_then([TxnOp::get(
                    "k",
                    Some(GetOptions::new().with_prefix().with_revision(b + 5)),
                )])
            }),
        ),
        (
            "txn read at a future revision",
            txn(|b| {
                Txn::new().and_then([TxnOp::get(
                    "k",
                    Some(GetOptions::new().with_revision(b + 1000)),
                )])
            }),
        ),
        (
            "txn with empty key compare",
            txn(|_| {
                Txn::new()
                    .when([Compare::version("", CompareOp::Equal, 0)])
                    .and_then([TxnOp::get("k", None)])
            }),
        ),
        (
            "too many ops",
            txn(|_| {
                Txn::new().and_then(
                    (0..MAX_TXN_OPS + 1)
                        .map(|i| TxnOp::put(format!("o{i}"), "x", None))
                        .collect::<Vec<_>>(),
                )
            }),
        ),
        (
            "too many compares",
            txn(|_| {
                Txn::new().when(
                    (0..MAX_TXN_OPS + 1)
                        .map(|i| Compare::version(format!("o{i}"), CompareOp::Equal, 0))
                        .collect::<Vec<_>>(),
                )
            }),
        ),
        (
            "too many nested ops",
            txn(|_| {
                Txn::new().and_then([TxnOp::txn(
                    Txn::new().and_then(
                        (0..MAX_TXN_OPS + 1)
                            .map(|i| TxnOp::get(format!("o{i}"), None))
                            .collect::<Vec<_>>(),
                    ),
                )])
            }),
        ),
        (
            "delete prev_kv range",
            Box::new(|_| {
                Req::Del(
                    "n".into(),
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                )
            }),
        ), // @20
        (
            "delete all",
            Box::new(|_| Req::Del("r".into(), Some(DeleteOptions::new().with_from_key()))),
        ), // @21
        ("compact", Box::new(|b| Req::Compact(b + 5, false))),
        ("compact again", Box::new(|b| Req::Compact(b + 5, false))),
        ("compact below", Box::new(|b| Req::Compact(b + 2, false))),
        ("compact future", Box::new(|b| Req::Compact(b + 1000, true))),
        (
            "read compacted",
            get("k", |b| {
                GetOptions::new().with_prefix().with_revision(b + 4)
            }),
        ),
        (
            "read at compaction point",
            get("", |b| {
                GetOptions::new().with_all_keys().with_revision(b + 5)
            }),
        ),
        ("compact physical", Box::new(|b| Req::Compact(b + 12, true))),
        (
            "read at compaction point after physical",
            get("", |b| {
                GetOptions::new().with_all_keys().with_revision(b + 12)
            }),
        ),
        (
            "read below after physical",
            get("", |b| {
                GetOptions::new()
                    .with_all_keys()
                    .with_revision(b + 11)
                    .with_count_only()
            }),
        ),
        ("all keys", get("", |_| GetOptions::new().with_all_keys())),
        ("put after compaction", put("k1", "after")),
        (
            "all keys again",
            get("", |_| GetOptions::new().with_all_keys()),
        ),
        (
            "compact at current revision",
            Box::new(|b| Req::Compact(b + 22, true)),
        ),
        (
            "read at current after compaction",
            get("", |b| {
                GetOptions::new()
                    .with_all_keys()
                    .with_revision(b + 22)
                    .with_keys_only()
            }),
        ),
        (
            "txn read at compacted revision",
            txn(|b| {
                Txn::new().and_then([TxnOp::get(
                    "k1",
                    Some(GetOptions::new().with_revision(b + 21)),
                )])
            }),
        ),
    ];
    compare_requests(&p, &reqs).await;
}

/// Keys that are not text: 0xff bytes (whose prefix has no upper bound),
/// NUL bytes, the `\0` range end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_match_etcd() {
    let Some(p) = pair("binary_keys_match_etcd").await else {
        return;
    };
    let putb = |k: &'static [u8], v: &'static [u8]| -> ReqFn {
        Box::new(move |_| Req::Put(k.to_vec(), v.to_vec(), None))
    };
    let getb = |k: &'static [u8], o: fn(i64) -> GetOptions| -> ReqFn {
        Box::new(move |b| Req::Get(k.to_vec(), Some(o(b))))
    };
    let reqs: Vec<(&str, ReqFn)> = vec![
        ("put 0xff", putb(b"\xff", b"a")),
        ("put 0xff 0xff", putb(b"\xff\xff", b"b")),
        ("put 0xff 0x00", putb(b"\xff\x00", b"\x00\x01")),
        ("put NUL in key", putb(b"a\x00b", b"c")),
        ("put a", putb(b"a", b"d")),
        ("put 0xfe 0xff", putb(b"\xfe\xff", b"e")),
        (
            "prefix 0xff",
            getb(b"\xff", |_| GetOptions::new().with_prefix()),
        ),
        (
            "prefix 0xff 0xff",
            getb(b"\xff\xff", |_| GetOptions::new().with_prefix()),
        ),
        (
            "prefix 0xfe",
            getb(b"\xfe", |_| GetOptions::new().with_prefix()),
        ),
        ("prefix a", getb(b"a", |_| GetOptions::new().with_prefix())),
        (
            "from 0xfe",
            getb(b"\xfe", |_| GetOptions::new().with_from_key()),
        ),
        ("all keys", getb(b"", |_| GetOptions::new().with_all_keys())),
        (
            "from NUL",
            getb(b"\x00", |_| GetOptions::new().with_from_key()),
        ),
        (
            "range a..a\\0",
            getb(b"a", |_| GetOptions::new().with_range(b"a\x00".to_vec())),
        ),
        (
            "range a\\0..a\\0c",
            getb(b"a\x00", |_| {
                GetOptions::new().with_range(b"a\x00c".to_vec())
            }),
        ),
        (
            "sort by value desc",
            getb(b"", |_| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Descend)
            }),
        ),
        (
            "delete prefix 0xff",
            Box::new(|_| {
                Req::Del(
                    b"\xff".to_vec(),
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                )
            }),
        ),
        (
            "compare over a prefix of 0xfe",
            Box::new(|_| {
                Req::Txn(
                    Txn::new()
                        .when([
                            Compare::version(b"\xfe".to_vec(), CompareOp::Equal, 1).with_prefix()
                        ])
                        .and_then([TxnOp::get(
                            b"\xfe".to_vec(),
                            Some(GetOptions::new().with_prefix()),
                        )]),
                )
            }),
        ),
        (
            "all keys after",
            getb(b"", |_| GetOptions::new().with_all_keys()),
        ),
    ];
    compare_requests(&p, &reqs).await;
}

/// Requests near and over `--max-request-bytes` (1.5 MiB) and over what
/// gRPC accepts (the limit + 512 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_match_etcd() {
    let Some(p) = pair("large_requests_match_etcd").await else {
        return;
    };
    let put_len = |k: &'static str, n: usize| -> ReqFn {
        Box::new(move |_| Req::Put(k.into(), vec![b'v'; n], None))
    };
    let reqs: Vec<(&str, ReqFn)> = vec![
        ("1.4 MiB value", put_len("big1", 1_400_000)),
        ("read it", Box::new(|_| Req::Get("big1".into(), None))),
        ("1.6 MiB value", put_len("big2", 1_700_000)),
        ("1.9 MiB value", put_len("big2", 2_000_000)),
        (
            "txn of 5 x 350 KB",
            Box::new(|_| {
                Req::Txn(
                    Txn::new().and_then(
                        (0..5)
                            .map(|i| TxnOp::put(format!("t{i}"), vec![b'x'; 350_000], None))
                            .collect::<Vec<_>>(),
                    ),
                )
            }),
        ),
        (
            "txn of 4 x 350 KB",
            Box::new(|_| {
                Req::Txn(
                    Txn::new().and_then(
                        (0..4)
                            .map(|i| TxnOp::put(format!("t{i}"), vec![b'x'; 350_000], None))
                            .collect::<Vec<_>>(),
                    ),
                )
            }),
        ),
        (
            "all keys",
            Box::new(|_| {
                Req::Get(
                    "".into(),
                    Some(GetOptions::new().with_all_keys().with_keys_only()),
                )
            }),
        ),
        (
            "range of 3 MiB answers",
            Box::new(|_| {
                Req::Get(
                    "".into(),
                    Some(GetOptions::new().with_all_keys().with_count_only()),
                )
            }),
        ),
    ];
    compare_requests(&p, &reqs).await;
}

/// A request over what gRPC accepts (`--max-request-bytes` + 512 KiB) is
/// refused by the transport before etcd sees it. The text is the gRPC
/// library's own (grpc-go's and tonic's differ); the code must be the same,
/// since clients classify errors by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_limit_code_matches_etcd() {
    let Some(p) = pair("over_grpc_limit_code_matches_etcd").await else {
        return;
    };
    let mut ce = p.etcd.client().await;
    let mut cb = p.ballast.client().await;
    let huge = vec![b'h'; 2_600_000];
    ce.put("small", "v", None).await.expect("etcd put");
    cb.put("small", "v", None).await.expect("ballast put");
    let e = ce.put("huge", huge.clone(), None).await.map(|_| ());
    let b = cb.put("huge", huge, None).await.map(|_| ());
    let code = |r: &Result<(), ballast_e2e::etcd_client::Error>| match r {
        Ok(()) => "Ok".to_string(),
        Err(e) => grpc_error(e).0,
    };
    assert_ne!(code(&e), "Ok");
    // Both still serve.
    let e2 = ce.get("small", None).await.expect("etcd get");
    let b2 = cb.get("small", None).await.expect("ballast get");
    assert_eq!(e2.kvs().len(), b2.kvs().len());
    assert_eq!(
        code(&b),
        code(&e),
        "gRPC code of a request over the gRPC limit:\netcd 3.4: {e:?}\nballast: {b:?}"
    );
}
