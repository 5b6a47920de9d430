//! Ballast driven by `etcdctl` 3.4 (API v3): the commands an operator uses,
//! their options and their output formats.
//!
//! Revisions are never hard-coded: they are read from the responses, so
//! these tests hold whatever revision a fresh store starts at. With
//! `BALLAST_E2E_TARGET=etcd` they run against real etcd instead, which
//! checks that what they expect is etcd's behaviour.

use ballast_e2e::serde_json::Value;
use ballast_e2e::{b64str, start_server, MemberOpts, Output, Server, Target};

/// `header.revision` of a `-w json` answer.
fn rev(out: &Output) -> i64 {
    out.json()["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {}", out.stdout))
}

/// Puts `key=value` and returns the revision of the put.
fn put(m: &Server, key: &str, value: &str) -> i64 {
    let out = m.etcdctl(&["put", key, value, "-w", "json"]);
    out.ok();
    rev(&out)
}

/// The keys of a `-w json` get, in order.
fn keys(out: &Output) -> Vec<String> {
    let v = out.json();
    v["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| b64str(&kv["key"])).collect())
        .unwrap_or_default()
}

/// The values of a `-w json` get, in order.
fn values(out: &Output) -> Vec<String> {
    let v = out.json();
    v["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| b64str(&kv["value"])).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn put_and_get() {
    let m = start_server(MemberOpts::default()).await;
    assert_eq!(m.etcdctl(&["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(m.etcdctl(&["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(m.etcdctl(&["get", "missing"]).ok(), "");
    assert_eq!(
        m.etcdctl(&["get", "foo", "--print-value-only"]).ok(),
        "bar\n"
    );
    // Overwrite; a value with spaces and an empty value.
    m.etcdctl(&["put", "foo", "bar two"]).ok();
    m.etcdctl(&["put", "empty", ""]).ok();
    assert_eq!(m.etcdctl(&["get", "foo"]).ok(), "foo\nbar two\n");
    assert_eq!(m.etcdctl(&["get", "empty"]).ok(), "empty\n\n");
    // A value from stdin.
    m.etcdctl_stdin(&["put", "stdin-key"], "from stdin").ok();
    assert_eq!(
        m.etcdctl(&["get", "stdin-key", "--print-value-only"]).ok(),
        "from stdin\n"
    );
    // `put --prev-kv` prints the old pair after OK.
    assert_eq!(
        m.etcdctl(&["put", "foo", "bar3", "--prev-kv"]).ok(),
        "OK\nfoo\nbar two\n"
    );
    // Hex output.
    assert_eq!(
        m.etcdctl(&["get", "foo", "--hex"]).ok(),
        "\\x66\\x6f\\x6f\n\\x62\\x61\\x72\\x33\n"
    );
}

#[tokio::test]
async fn ranges_prefix_from_key_limit() {
    let m = start_server(MemberOpts::default()).await;
    for k in ["a", "ab", "abc", "b", "ba", "c"] {
        put(&m, k, &format!("v-{k}"));
    }
    let out = m.etcdctl(&["get", "a", "--prefix", "-w", "json"]);
    assert_eq!(keys(&out), ["a", "ab", "abc"]);
    assert_eq!(out.json()["count"], 3);
    assert_eq!(
        keys(&m.etcdctl(&["get", "ab", "--prefix", "-w", "json"])),
        ["ab", "abc"]
    );
    assert_eq!(
        keys(&m.etcdctl(&["get", "b", "--from-key", "-w", "json"])),
        ["b", "ba", "c"]
    );
    // Empty key with --from-key: every key.
    assert_eq!(
        keys(&m.etcdctl(&["get", "", "--from-key", "-w", "json"])),
        ["a", "ab", "abc", "b", "ba", "c"]
    );
    assert_eq!(
        keys(&m.etcdctl(&["get", "", "--prefix", "-w", "json"])),
        ["a", "ab", "abc", "b", "ba", "c"]
    );
    // [key, range_end)
    assert_eq!(
        keys(&m.etcdctl(&["get", "ab", "ba", "-w", "json"])),
        ["ab", "abc", "b"]
    );
    // range_end below key: nothing.
    assert_eq!(
        keys(&m.etcdctl(&["get", "c", "a", "-w", "json"])),
        Vec::<String>::new()
    );

    // --limit: the first keys, `more` set, `count` the whole range.
    let out = m.etcdctl(&["get", "a", "--prefix", "--limit=2", "-w", "json"]);
    let v = out.json();
    assert_eq!(keys(&out), ["a", "ab"]);
    assert_eq!(v["more"], true);
    assert_eq!(v["count"], 3);
    let out = m.etcdctl(&["get", "a", "--prefix", "--limit=3", "-w", "json"]);
    assert_eq!(keys(&out), ["a", "ab", "abc"]);
    assert!(
        out.json().get("more").is_none(),
        "more must be false: {}",
        out.stdout
    );
    // Simple output of a range: key, value, key, value...
    assert_eq!(
        m.etcdctl(&["get", "b", "--prefix"]).ok(),
        "b\nv-b\nba\nv-ba\n"
    );
    // --keys-only
    assert_eq!(
        m.etcdctl(&["get", "b", "--prefix", "--keys-only"]).ok(),
        "b\n\nba\n\n"
    );
    let v = m
        .etcdctl(&["get", "a", "--prefix", "--keys-only", "-w", "json"])
        .json();
    for kv in v["kvs"].as_array().unwrap() {
        assert!(
            kv.get("value").is_none(),
            "keys-only returned a value: {kv}"
        );
        assert!(kv["mod_revision"].as_i64().unwrap() > 0);
    }
}

#[tokio::test]
async fn read_at_revision() {
    let m = start_server(MemberOpts::default()).await;
    put(&m, "first", "x");
    let r1 = put(&m, "k", "v1");
    let r2 = put(&m, "k", "v2");
    let r3 = put(&m, "other", "x");
    let r4 = put(&m, "k", "v3");
    assert_eq!((r2, r3, r4), (r1 + 1, r1 + 2, r1 + 3));
    let at = |r: i64| m.etcdctl(&["get", "k", &format!("--rev={r}"), "-w", "json"]);
    assert_eq!(values(&at(r1)), ["v1"]);
    assert_eq!(values(&at(r2)), ["v2"]);
    assert_eq!(values(&at(r3)), ["v2"]);
    assert_eq!(values(&at(r4)), ["v3"]);
    // The header carries the current revision, not the one read at.
    assert_eq!(rev(&at(r1)), r4);
    // Before the key existed.
    assert_eq!(values(&at(r1 - 1)), Vec::<String>::new());
    let kv = &at(r3).json()["kvs"][0];
    assert_eq!(kv["create_revision"], r1);
    assert_eq!(kv["mod_revision"], r2);
    assert_eq!(kv["version"], 2);
    // --rev=0 is the newest.
    assert_eq!(
        values(&m.etcdctl(&["get", "k", "--rev=0", "-w", "json"])),
        ["v3"]
    );
    // A range at a revision.
    let out = m.etcdctl(&[
        "get",
        "",
        "--from-key",
        &format!("--rev={r2}"),
        "-w",
        "json",
    ]);
    assert_eq!(keys(&out), ["first", "k"]);

    // A future revision fails.
    let out = m.etcdctl(&["get", "k", &format!("--rev={}", r4 + 1)]);
    assert_eq!(
        out.err(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let out = m.etcdctl(&["get", "k", "--rev=1000000"]);
    assert_eq!(
        out.err(),
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[tokio::test]
async fn sort_by_every_target() {
    let m = start_server(MemberOpts::default()).await;
    // Chosen so that every target gives a different order:
    //   key:     s1 s2 s3 s4
    //   create:  s3 s1 s4 s2
    //   value:   s1(a) s4(b) s3(c) s2(d)
    //   version: s4(1) s2(2) s3(3) s1(4)
    //   modify:  s4 s3 s2 s1
    let ops = [
        ("s3", "c"),
        ("s1", "a"),
        ("s4", "b"),
        ("s2", "d"),
        ("s1", "a"),
        ("s3", "c"),
        ("s1", "a"),
        ("s3", "c"),
        ("s2", "d"),
        ("s1", "a"),
    ];
    for (k, v) in ops {
        put(&m, k, v);
    }
    let cases = [
        ("KEY", ["s1", "s2", "s3", "s4"]),
        ("CREATE", ["s3", "s1", "s4", "s2"]),
        ("VALUE", ["s1", "s4", "s3", "s2"]),
        ("VERSION", ["s4", "s2", "s3", "s1"]),
        ("MODIFY", ["s4", "s3", "s2", "s1"]),
    ];
    for (target, asc) in cases {
        let sort = format!("--sort-by={target}");
        let got = keys(&m.etcdctl(&[
            "get",
            "s",
            "--prefix",
            &sort,
            "--order=ASCEND",
            "-w",
            "json",
        ]));
        assert_eq!(got, asc, "{target} ASCEND");
        let got = keys(&m.etcdctl(&[
            "get",
            "s",
            "--prefix",
            &sort,
            "--order=DESCEND",
            "-w",
            "json",
        ]));
        let mut desc = asc.to_vec();
        desc.reverse();
        assert_eq!(got, desc, "{target} DESCEND");
        // Sorting happens before the limit.
        let out = m.etcdctl(&[
            "get",
            "s",
            "--prefix",
            &sort,
            "--order=DESCEND",
            "--limit=2",
            "-w",
            "json",
        ]);
        assert_eq!(keys(&out), desc[..2].to_vec(), "{target} DESCEND limit 2");
        assert_eq!(out.json()["more"], true);
        assert_eq!(out.json()["count"], 4);
    }
    // --order alone sorts by key.
    let got = keys(&m.etcdctl(&["get", "s", "--prefix", "--order=DESCEND", "-w", "json"]));
    assert_eq!(got, ["s4", "s3", "s2", "s1"]);
}

#[tokio::test]
async fn delete() {
    let m = start_server(MemberOpts::default()).await;
    for k in ["d/1", "d/2", "d/3", "e"] {
        put(&m, k, &format!("val-{k}"));
    }
    // --prev-kv prints the count, then the deleted pairs.
    assert_eq!(m.etcdctl(&["del", "e", "--prev-kv"]).ok(), "1\ne\nval-e\n");
    assert_eq!(m.etcdctl(&["del", "e"]).ok(), "0\n");
    assert_eq!(m.etcdctl(&["get", "e"]).ok(), "");
    // A missing key takes no revision.
    let before = rev(&m.etcdctl(&["get", "x", "-w", "json"]));
    let out = m.etcdctl(&["del", "nothing-here", "-w", "json"]);
    assert_eq!(rev(&out), before);
    assert!(out.json().get("deleted").is_none());

    let out = m.etcdctl(&["del", "d/", "--prefix", "--prev-kv", "-w", "json"]);
    let v = out.json();
    assert_eq!(v["deleted"], 3);
    assert_eq!(rev(&out), before + 1, "one revision for the whole delete");
    let prev: Vec<String> = v["prev_kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| b64str(&kv["value"]))
        .collect();
    assert_eq!(prev, ["val-d/1", "val-d/2", "val-d/3"]);
    assert_eq!(m.etcdctl(&["get", "d/", "--prefix"]).ok(), "");

    // A range delete and --from-key.
    for k in ["r1", "r2", "r3", "s1"] {
        put(&m, k, "x");
    }
    assert_eq!(m.etcdctl(&["del", "r1", "r3"]).ok(), "2\n");
    assert_eq!(m.etcdctl(&["del", "r3", "--from-key"]).ok(), "2\n");
    assert_eq!(
        m.etcdctl(&["get", "", "--from-key", "--keys-only"]).ok(),
        ""
    );

    // Re-creating a deleted key starts a new generation.
    let r = put(&m, "e", "again");
    let kv = &m.etcdctl(&["get", "e", "-w", "json"]).json()["kvs"][0];
    assert_eq!(kv["create_revision"], r);
    assert_eq!(kv["version"], 1);
}

#[tokio::test]
async fn txn_compares_and_branches() {
    let m = start_server(MemberOpts::default()).await;
    let r1 = put(&m, "t1", "one");
    let r2 = put(&m, "t1", "uno");
    put(&m, "t2", "two");

    // Success branch, value compare.
    let out = m.etcdctl_stdin(
        &["txn"],
        "value(\"t1\") = \"uno\"\n\nput t3 three\nget t1\n\nput t4 four\n\n",
    );
    assert_eq!(out.ok(), "SUCCESS\n\nOK\n\nt1\nuno\n");
    assert_eq!(
        m.etcdctl(&["get", "t3", "--print-value-only"]).ok(),
        "three\n"
    );
    assert_eq!(m.etcdctl(&["get", "t4"]).ok(), "");

    // Failure branch.
    let out = m.etcdctl_stdin(
        &["txn"],
        "value(\"t1\") = \"one\"\n\nput t4 four\n\nput t5 five\ndel t2\n\n",
    );
    assert_eq!(out.ok(), "FAILURE\n\nOK\n\n1\n");
    assert_eq!(
        m.etcdctl(&["get", "t5", "--print-value-only"]).ok(),
        "five\n"
    );
    assert_eq!(m.etcdctl(&["get", "t2"]).ok(), "");
    assert_eq!(m.etcdctl(&["get", "t4"]).ok(), "");

    // version / create / mod compares, several at once (all must hold).
    let txn = |cmp: &str| {
        let out = m.etcdctl_stdin(&["txn"], &format!("{cmp}\n\nput ok yes\n\nput ko yes\n\n"));
        out.ok().lines().next().unwrap_or("").to_string()
    };
    assert_eq!(txn("version(\"t1\") = \"2\""), "SUCCESS");
    assert_eq!(txn("version(\"t1\") > \"2\""), "FAILURE");
    assert_eq!(txn("version(\"t1\") < \"3\""), "SUCCESS");
    assert_eq!(txn("version(\"t1\") != \"2\""), "FAILURE");
    assert_eq!(txn(&format!("create(\"t1\") = \"{r1}\"")), "SUCCESS");
    assert_eq!(txn(&format!("create(\"t1\") > \"{r1}\"")), "FAILURE");
    assert_eq!(txn(&format!("mod(\"t1\") = \"{r2}\"")), "SUCCESS");
    assert_eq!(txn(&format!("mod(\"t1\") < \"{r2}\"")), "FAILURE");
    assert_eq!(txn("value(\"t1\") > \"abc\""), "SUCCESS");
    assert_eq!(txn("value(\"t1\") != \"uno\""), "FAILURE");
    assert_eq!(
        txn(&format!(
            "version(\"t1\") = \"2\"\nmod(\"t1\") = \"{r2}\"\nvalue(\"t3\") = \"three\""
        )),
        "SUCCESS"
    );
    assert_eq!(
        txn(&format!(
            "version(\"t1\") = \"2\"\nmod(\"t1\") = \"{}\"",
            r2 + 1
        )),
        "FAILURE"
    );
    // A missing key: version, create and mod are 0.
    assert_eq!(txn("version(\"missing\") = \"0\""), "SUCCESS");
    assert_eq!(txn("create(\"missing\") = \"0\""), "SUCCESS");
    assert_eq!(txn("mod(\"missing\") = \"0\""), "SUCCESS");
    // No compares: success.
    assert_eq!(txn(""), "SUCCESS");

    // JSON output of a txn: one revision for all its writes.
    let before = rev(&m.etcdctl(&["get", "x", "-w", "json"]));
    let out = m.etcdctl_stdin(
        &["txn", "-w", "json"],
        "version(\"t1\") = \"2\"\n\nput m1 a\nput m2 b\ndel t3\nget m1\n\n\n",
    );
    let v = out.json();
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["header"]["revision"], before + 1);
    let resps = v["responses"].as_array().unwrap();
    assert_eq!(resps.len(), 4);
    let kv = &resps[3]["Response"]["ResponseRange"]["kvs"][0];
    assert_eq!(b64str(&kv["value"]), "a");
    assert_eq!(kv["mod_revision"], before + 1);
    for k in ["m1", "m2"] {
        let kv = &m.etcdctl(&["get", k, "-w", "json"]).json()["kvs"][0];
        assert_eq!(kv["mod_revision"], before + 1);
    }
    // A txn that changes nothing takes no revision.
    let out = m.etcdctl_stdin(&["txn", "-w", "json"], "\nget m1\n\n\n");
    assert_eq!(rev(&out), before + 1);

    // Errors: a duplicate key.
    let out = m.etcdctl_stdin(&["txn"], "\nput d 1\nput d 2\n\n\n");
    assert_eq!(out.err(), "etcdserver: duplicate key given in txn request");
}

#[tokio::test]
async fn txn_too_many_ops() {
    let m = start_server(MemberOpts {
        max_txn_ops: Some(4),
        ..Default::default()
    })
    .await;
    let ops = |n: usize| (0..n).map(|i| format!("put op{i} v\n")).collect::<String>();
    let out = m.etcdctl_stdin(&["txn"], &format!("\n{}\n\n", ops(4)));
    assert!(out.ok().starts_with("SUCCESS"));
    let out = m.etcdctl_stdin(&["txn"], &format!("\n{}\n\n", ops(5)));
    assert_eq!(out.err(), "etcdserver: too many operations in txn request");
    let out = m.etcdctl_stdin(&["txn"], &format!("\nput a b\n\n{}\n", ops(5)));
    assert_eq!(out.err(), "etcdserver: too many operations in txn request");
    // Still serving.
    assert_eq!(m.etcdctl(&["get", "op0", "--print-value-only"]).ok(), "v\n");
}

#[tokio::test]
async fn compaction() {
    let m = start_server(MemberOpts::default()).await;
    let r1 = put(&m, "c", "v1");
    let r2 = put(&m, "c", "v2");
    let r3 = put(&m, "c", "v3");
    let r4 = put(&m, "c", "v4");
    let r5 = put(&m, "other", "x");

    assert_eq!(
        m.etcdctl(&["compaction", &r2.to_string()]).ok(),
        format!("compacted revision {r2}\n")
    );
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    assert_eq!(
        m.etcdctl(&["get", "c", &format!("--rev={r1}")]).err(),
        compacted
    );
    // At the compaction point itself the data is still readable.
    assert_eq!(
        values(&m.etcdctl(&["get", "c", &format!("--rev={r2}"), "-w", "json"])),
        ["v2"]
    );
    assert_eq!(
        values(&m.etcdctl(&["get", "c", &format!("--rev={r3}"), "-w", "json"])),
        ["v3"]
    );
    // Compacting again at or below the point fails; compaction does not
    // take a revision.
    assert_eq!(m.etcdctl(&["compaction", &r2.to_string()]).err(), compacted);
    assert_eq!(m.etcdctl(&["compaction", &r1.to_string()]).err(), compacted);
    assert_eq!(
        m.etcdctl(&["compaction", &(r5 + 10).to_string()]).err(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(rev(&m.etcdctl(&["get", "c", "-w", "json"])), r5);

    // Physical compaction.
    assert_eq!(
        m.etcdctl(&["compaction", "--physical", &r4.to_string()])
            .ok(),
        format!("compacted revision {r4}\n")
    );
    assert_eq!(
        m.etcdctl(&["get", "c", &format!("--rev={r3}")]).err(),
        compacted
    );
    assert_eq!(
        m.etcdctl(&["get", "", "--from-key", &format!("--rev={r3}")])
            .err(),
        compacted
    );
    // The newest version of each key survives, with its history counters.
    let kv = &m.etcdctl(&["get", "c", "-w", "json"]).json()["kvs"][0];
    assert_eq!(kv["version"], 4);
    assert_eq!(kv["create_revision"], r1);
    assert_eq!(kv["mod_revision"], r4);
    assert_eq!(
        values(&m.etcdctl(&["get", "c", &format!("--rev={r4}"), "-w", "json"])),
        ["v4"]
    );
    // A deleted key disappears from history at compaction; writes go on.
    put(&m, "gone", "x");
    m.etcdctl(&["del", "gone"]).ok();
    let r = put(&m, "after", "y");
    assert_eq!(r, r5 + 3);
    m.etcdctl(&["compaction", "--physical", &r.to_string()])
        .ok();
    assert_eq!(m.etcdctl(&["get", "gone"]).ok(), "");
    assert_eq!(
        m.etcdctl(&["get", "after", "--print-value-only"]).ok(),
        "y\n"
    );
}

#[tokio::test]
async fn json_output_fields() {
    let m = start_server(MemberOpts::default()).await;
    let r1 = put(&m, "j1", "v");
    let r2 = put(&m, "j1", "w");
    put(&m, "j2", "x");

    let out = m.etcdctl(&["get", "j", "--prefix", "--limit=1", "-w", "json"]);
    let v = out.json();
    let h = &v["header"];
    assert!(h["cluster_id"].as_u64().unwrap() > 0, "cluster_id: {h}");
    assert!(h["member_id"].as_u64().unwrap() > 0, "member_id: {h}");
    assert!(h["raft_term"].as_u64().unwrap() > 0, "raft_term: {h}");
    assert_eq!(h["revision"], r2 + 1);
    assert_eq!(v["count"], 2);
    assert_eq!(v["more"], true);
    let kvs = v["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 1);
    let kv = &kvs[0];
    assert_eq!(b64str(&kv["key"]), "j1");
    assert_eq!(b64str(&kv["value"]), "w");
    assert_eq!(kv["create_revision"], r1);
    assert_eq!(kv["mod_revision"], r2);
    assert_eq!(kv["version"], 2);
    // No lease: the field is omitted, as etcd omits zero values.
    assert!(kv.get("lease").is_none());
    let mut fields: Vec<&String> = match kv {
        Value::Object(o) => o.keys().collect(),
        _ => unreachable!(),
    };
    fields.sort();
    assert_eq!(
        fields,
        ["create_revision", "key", "mod_revision", "value", "version"]
    );

    // Same ids on every response of the member.
    let put_out = m.etcdctl(&["put", "j3", "z", "-w", "json"]).json();
    assert_eq!(put_out["header"]["cluster_id"], h["cluster_id"]);
    assert_eq!(put_out["header"]["member_id"], h["member_id"]);

    // The `fields` format.
    let out = m.etcdctl(&["get", "j1", "-w", "fields"]);
    let text = out.ok();
    for line in [
        "\"Key\" : \"j1\"".to_string(),
        format!("\"CreateRevision\" : {r1}"),
        format!("\"ModRevision\" : {r2}"),
        "\"Version\" : 2".to_string(),
        "\"Value\" : \"w\"".to_string(),
        "\"Count\" : 1".to_string(),
        "\"More\" : false".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in {text}");
    }
    assert!(text.lines().any(|l| l.starts_with("\"ClusterID\" : ")));
    assert!(text.lines().any(|l| l.starts_with("\"MemberID\" : ")));
    assert!(text.lines().any(|l| l.starts_with("\"RaftTerm\" : ")));
}

#[tokio::test]
async fn bad_requests_do_not_stop_the_member() {
    let m = start_server(MemberOpts::default()).await;
    put(&m, "present", "v");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["put", "", "v"], "etcdserver: key is not provided"),
        (vec!["get", ""], "etcdserver: key is not provided"),
        (vec!["del", ""], "etcdserver: key is not provided"),
        (
            vec!["put", "absent", "--ignore-lease", "v"],
            "etcdserver: key not found",
        ),
        (
            vec!["put", "absent", "--ignore-value"],
            "etcdserver: key not found",
        ),
        (
            vec!["put", "present", "v", "--lease=1234"],
            "etcdserver: requested lease not found",
        ),
        (
            vec!["get", "present", "--rev=99999"],
            "etcdserver: mvcc: required revision is a future revision",
        ),
    ];
    for (args, want) in cases {
        let out = m.etcdctl(&args);
        assert_eq!(out.err(), want, "etcdctl {args:?}");
        // gRPC code in etcdctl's retry log line.
        assert_eq!(
            m.etcdctl(&["get", "present", "--print-value-only"]).ok(),
            "v\n"
        );
    }
    // --ignore-value on an existing key keeps its value.
    m.etcdctl(&["put", "present", "--ignore-value"]).ok();
    let kv = &m.etcdctl(&["get", "present", "-w", "json"]).json()["kvs"][0];
    assert_eq!(b64str(&kv["value"]), "v");
    assert_eq!(kv["version"], 2);
}
