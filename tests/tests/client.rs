//! Ballast through the etcd-client crate: the request options etcdctl 3.4
//! cannot send, transactions, and how errors are classified.
//!
//! Revisions are read from responses, never hard-coded. With
//! `BALLAST_E2E_TARGET=etcd` the suite runs against real etcd instead.

use std::time::Duration;

use ballast_e2e::etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use ballast_e2e::{assert_grpc_err, start_server, within, MemberOpts, Target};

const T: Duration = Duration::from_secs(30);

/// Puts and returns the revision.
async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

async fn keys(c: &mut Client, k: &str, o: GetOptions) -> Vec<String> {
    c.get(k, Some(o))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| kv.key_str().expect("utf-8").to_string())
        .collect()
}

async fn value(c: &mut Client, k: &str) -> Option<String> {
    c.get(k, None)
        .await
        .expect("get")
        .kvs()
        .first()
        .map(|kv| kv.value_str().expect("utf-8").to_string())
}

/// The member still answers (after a refused request).
async fn check_alive(c: &Client) {
    let mut c = c.clone();
    let r = c.get("alive", None).await.expect("member still serving");
    assert_eq!(r.kvs()[0].value(), b"yes");
}

#[tokio::test]
async fn count_only_and_keys_only() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        for i in 0..5 {
            put(&mut c, &format!("p/{i}"), &format!("value-{i}")).await;
        }
        put(&mut c, "q", "x").await;
        let prefix = || GetOptions::new().with_prefix();

        let r = c.get("p/", Some(prefix().with_count_only())).await.unwrap();
        assert_eq!(r.count(), 5);
        assert!(r.kvs().is_empty());
        assert!(!r.more());
        // count is not reduced by the limit.
        let r = c
            .get("p/", Some(prefix().with_count_only().with_limit(2)))
            .await
            .unwrap();
        assert_eq!(r.count(), 5);
        assert!(r.kvs().is_empty());
        let r = c.get("p/", Some(prefix().with_limit(2))).await.unwrap();
        assert_eq!(r.count(), 5);
        assert_eq!(r.kvs().len(), 2);
        assert!(r.more());
        let r = c
            .get("nothing/", Some(prefix().with_count_only()))
            .await
            .unwrap();
        assert_eq!(r.count(), 0);

        let r = c.get("p/", Some(prefix().with_keys_only())).await.unwrap();
        assert_eq!(r.kvs().len(), 5);
        for kv in r.kvs() {
            assert!(kv.value().is_empty(), "keys_only returned a value");
            assert!(kv.mod_revision() > 0 && kv.version() == 1);
        }
        assert_eq!(r.count(), 5);
    })
    .await;
}

#[tokio::test]
async fn revision_filters() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        let r1 = put(&mut c, "f/a", "1").await;
        let r2 = put(&mut c, "f/b", "1").await;
        let r3 = put(&mut c, "f/c", "1").await;
        let r4 = put(&mut c, "f/a", "2").await; // a: create r1, mod r4
        let r5 = put(&mut c, "f/d", "1").await;
        assert_eq!(r5, r1 + 4);
        let p = || GetOptions::new().with_prefix();
        assert_eq!(
            keys(&mut c, "f/", p().with_min_mod_revision(r3)).await,
            ["f/a", "f/c", "f/d"]
        );
        assert_eq!(
            keys(&mut c, "f/", p().with_max_mod_revision(r3)).await,
            ["f/b", "f/c"]
        );
        assert_eq!(
            keys(&mut c, "f/", p().with_min_create_revision(r2)).await,
            ["f/b", "f/c", "f/d"]
        );
        assert_eq!(
            keys(&mut c, "f/", p().with_max_create_revision(r2)).await,
            ["f/a", "f/b"]
        );
        assert_eq!(
            keys(
                &mut c,
                "f/",
                p().with_min_mod_revision(r2).with_max_mod_revision(r4)
            )
            .await,
            ["f/a", "f/b", "f/c"]
        );
        assert_eq!(
            keys(
                &mut c,
                "f/",
                p().with_min_create_revision(r2).with_max_mod_revision(r3)
            )
            .await,
            ["f/b", "f/c"]
        );
        // Filters apply at the revision read.
        assert_eq!(
            keys(
                &mut c,
                "f/",
                p().with_revision(r3).with_max_mod_revision(r1)
            )
            .await,
            ["f/a"]
        );
        // count ignores the filters (as etcd); more reflects the limit.
        let r = c
            .get("f/", Some(p().with_min_mod_revision(r4)))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 2);
        assert_eq!(r.count(), 4);
    })
    .await;
}

#[tokio::test]
async fn sort_and_limit() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        // key order a b c; values c b a; versions a=1 b=3 c=2; created c b a.
        put(&mut c, "s/c", "a").await;
        put(&mut c, "s/b", "b").await;
        put(&mut c, "s/a", "c").await;
        put(&mut c, "s/b", "b").await;
        put(&mut c, "s/c", "a").await;
        put(&mut c, "s/b", "b").await;
        let sorted = |t, o| GetOptions::new().with_prefix().with_sort(t, o);
        let cases = [
            (SortTarget::Key, SortOrder::Descend, ["s/c", "s/b", "s/a"]),
            (SortTarget::Key, SortOrder::Ascend, ["s/a", "s/b", "s/c"]),
            (SortTarget::Value, SortOrder::Ascend, ["s/c", "s/b", "s/a"]),
            (
                SortTarget::Version,
                SortOrder::Descend,
                ["s/b", "s/c", "s/a"],
            ),
            (SortTarget::Create, SortOrder::Ascend, ["s/c", "s/b", "s/a"]),
            (SortTarget::Mod, SortOrder::Descend, ["s/b", "s/c", "s/a"]),
        ];
        for (t, o, want) in cases {
            assert_eq!(keys(&mut c, "s/", sorted(t, o)).await, want, "{t:?} {o:?}");
            let r = c.get("s/", Some(sorted(t, o).with_limit(2))).await.unwrap();
            let got: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
            assert_eq!(got, want[..2], "{t:?} {o:?} limit 2");
            assert!(r.more());
            assert_eq!(r.count(), 3);
        }
        // A limit equal to the count: no more.
        let r = c
            .get("s/", Some(GetOptions::new().with_prefix().with_limit(3)))
            .await
            .unwrap();
        assert!(!r.more());
        // Pages at one revision, as kube-apiserver lists.
        let rev = c
            .get("s/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut seen = Vec::new();
        let mut from = "s/".to_string();
        for _ in 0..10 {
            let r = c
                .get(
                    from.as_str(),
                    Some(
                        GetOptions::new()
                            .with_range("s0")
                            .with_limit(1)
                            .with_revision(rev),
                    ),
                )
                .await
                .unwrap();
            let Some(kv) = r.kvs().first() else { break };
            seen.push(kv.key_str().unwrap().to_string());
            from = format!("{}\0", kv.key_str().unwrap());
            if !r.more() {
                break;
            }
        }
        assert_eq!(seen, ["s/a", "s/b", "s/c"]);
    })
    .await;
}

#[tokio::test]
async fn prev_kv_on_put_and_delete() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        let r1 = put(&mut c, "k", "v1").await;
        let r = c
            .put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        let prev = r.prev_key().expect("prev kv");
        assert_eq!(prev.value(), b"v1");
        assert_eq!(prev.mod_revision(), r1);
        assert_eq!(prev.version(), 1);
        // A new key has no previous pair.
        let r = c
            .put("new", "x", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert!(r.prev_key().is_none());
        // Without the option, none is returned.
        let r = c.put("k", "v3", None).await.unwrap();
        assert!(r.prev_key().is_none());

        let r = c
            .delete("k", Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.deleted(), 1);
        assert_eq!(r.prev_kvs().len(), 1);
        assert_eq!(r.prev_kvs()[0].value(), b"v3");
        assert_eq!(r.prev_kvs()[0].version(), 3);
        assert_eq!(r.prev_kvs()[0].create_revision(), r1);
        let r = c.delete("new", None).await.unwrap();
        assert_eq!(r.deleted(), 1);
        assert!(r.prev_kvs().is_empty());
        let r = c
            .delete("k", Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.deleted(), 0);
        assert!(r.prev_kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn ignore_value_and_ignore_lease() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        let r1 = put(&mut c, "k", "kept").await;
        let r = c
            .put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .unwrap();
        let r2 = r.header().unwrap().revision();
        assert_eq!(r2, r1 + 1, "ignore_value is still a write");
        let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
        assert_eq!(kv.value(), b"kept");
        assert_eq!(kv.version(), 2);
        assert_eq!(kv.mod_revision(), r2);

        c.put("k", "new", Some(PutOptions::new().with_ignore_lease()))
            .await
            .unwrap();
        assert_eq!(value(&mut c, "k").await.as_deref(), Some("new"));
        assert_eq!(c.get("k", None).await.unwrap().kvs()[0].lease(), 0);

        assert_grpc_err(
            c.put("absent", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            "InvalidArgument",
            "etcdserver: key not found",
        );
        assert_grpc_err(
            c.put("absent", "v", Some(PutOptions::new().with_ignore_lease()))
                .await,
            "InvalidArgument",
            "etcdserver: key not found",
        );
        assert_grpc_err(
            c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
                .await,
            "InvalidArgument",
            "etcdserver: value is provided",
        );
        assert_grpc_err(
            c.put(
                "k",
                "v",
                Some(PutOptions::new().with_ignore_lease().with_lease(7)),
            )
            .await,
            "InvalidArgument",
            "etcdserver: lease is provided",
        );
        // Nothing of that was written.
        assert_eq!(value(&mut c, "k").await.as_deref(), Some("new"));
        assert!(value(&mut c, "absent").await.is_none());
    })
    .await;
}

#[tokio::test]
async fn txn_ops_share_one_revision() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        let r0 = put(&mut c, "old", "x").await;
        let t = Txn::new().and_then([
            TxnOp::put("t1", "a", None),
            TxnOp::put("t2", "b", None),
            TxnOp::delete("old", None),
            TxnOp::get("t1", None),
            TxnOp::put("t3", "c", Some(PutOptions::new().with_prev_key())),
        ]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        let rev = r.header().unwrap().revision();
        assert_eq!(rev, r0 + 1, "one revision for the whole txn");
        let ops = r.op_responses();
        assert_eq!(ops.len(), 5);
        match &ops[3] {
            TxnOpResponse::Get(g) => {
                // A read inside the txn sees its earlier writes.
                assert_eq!(g.kvs()[0].value(), b"a");
                assert_eq!(g.kvs()[0].mod_revision(), rev);
            }
            other => panic!("expected a get response, got {other:?}"),
        }
        match &ops[2] {
            TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
            other => panic!("expected a delete response, got {other:?}"),
        }
        for k in ["t1", "t2", "t3"] {
            let kv = c.get(k, None).await.unwrap().kvs()[0].clone();
            assert_eq!(kv.mod_revision(), rev, "{k}");
            assert_eq!(kv.create_revision(), rev, "{k}");
        }
        // The next write takes the next revision.
        assert_eq!(put(&mut c, "after", "x").await, rev + 1);
        // A read-only txn takes none.
        let r = c
            .txn(Txn::new().and_then([TxnOp::get("t1", None)]))
            .await
            .unwrap();
        assert_eq!(r.header().unwrap().revision(), rev + 1);
    })
    .await;
}

#[tokio::test]
async fn nested_txn() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        put(&mut c, "flag", "on").await;
        let r0 = put(&mut c, "counter", "1").await;
        let inner = Txn::new()
            .when([Compare::value("counter", CompareOp::Equal, "1")])
            .and_then([
                TxnOp::put("counter", "2", Some(PutOptions::new().with_prev_key())),
                TxnOp::get("flag", None),
            ])
            .or_else([TxnOp::put("inner-failed", "x", None)]);
        let outer = Txn::new()
            .when([Compare::value("flag", CompareOp::Equal, "on")])
            .and_then([TxnOp::put("outer", "x", None), TxnOp::txn(inner)])
            .or_else([TxnOp::put("outer-failed", "x", None)]);
        let r = c.txn(outer).await.unwrap();
        assert!(r.succeeded());
        let rev = r.header().unwrap().revision();
        assert_eq!(rev, r0 + 1);
        let ops = r.op_responses();
        let TxnOpResponse::Txn(inner) = &ops[1] else {
            panic!("expected a txn response, got {:?}", ops[1]);
        };
        assert!(inner.succeeded());
        let inner_ops = inner.op_responses();
        let TxnOpResponse::Put(p) = &inner_ops[0] else {
            panic!("expected a put response");
        };
        assert_eq!(p.prev_key().unwrap().value(), b"1");
        assert_eq!(value(&mut c, "counter").await.as_deref(), Some("2"));
        assert_eq!(value(&mut c, "outer").await.as_deref(), Some("x"));
        assert!(value(&mut c, "inner-failed").await.is_none());
        assert!(value(&mut c, "outer-failed").await.is_none());

        // Inner failure branch; compares are evaluated before the txn runs,
        // so the inner compare does not see the outer put.
        let inner = Txn::new()
            .when([Compare::version("fresh", CompareOp::Greater, 0)])
            .and_then([TxnOp::put("saw-fresh", "x", None)])
            .or_else([TxnOp::put("did-not-see-fresh", "x", None)]);
        let outer = Txn::new().and_then([TxnOp::put("fresh", "x", None), TxnOp::txn(inner)]);
        let r = c.txn(outer).await.unwrap();
        let TxnOpResponse::Txn(inner) = &r.op_responses()[1] else {
            panic!("expected a txn response");
        };
        assert!(!inner.succeeded());
        assert!(value(&mut c, "did-not-see-fresh").await.is_some());
        assert!(value(&mut c, "saw-fresh").await.is_none());

        // The two branches of a nested txn may write the same key; a branch
        // and its parent may not.
        let ok = Txn::new().and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::version("x", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("x", "1", None)])
                .or_else([TxnOp::put("x", "2", None)]),
        )]);
        c.txn(ok).await.unwrap();
        let dup = Txn::new().and_then([
            TxnOp::put("y", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("y", "2", None)])),
        ]);
        assert_grpc_err(
            c.txn(dup).await,
            "InvalidArgument",
            "etcdserver: duplicate key given in txn request",
        );
    })
    .await;
}

#[tokio::test]
async fn compare_over_a_range() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        let r1 = put(&mut c, "r/a", "1").await;
        put(&mut c, "r/b", "1").await;
        put(&mut c, "r/b", "2").await;
        let r4 = put(&mut c, "r/c", "1").await;
        put(&mut c, "s", "1").await;
        let check = |cmp: Compare| Txn::new().when([cmp]).and_then([TxnOp::get("s", None)]);
        let cases = [
            // Every key in [r/a, r/d) must satisfy the compare.
            (
                Compare::version("r/a", CompareOp::Greater, 0).with_range("r/d"),
                true,
            ),
            (
                Compare::version("r/a", CompareOp::Equal, 1).with_range("r/d"),
                false,
            ),
            (
                Compare::version("r/a", CompareOp::Equal, 1).with_range("r/b"),
                true,
            ),
            (
                Compare::version("r/", CompareOp::Less, 3).with_prefix(),
                true,
            ),
            (
                Compare::mod_revision("r/", CompareOp::Less, r4 + 1).with_prefix(),
                true,
            ),
            (
                Compare::mod_revision("r/", CompareOp::Less, r4).with_prefix(),
                false,
            ),
            (
                Compare::create_revision("r/", CompareOp::Greater, r1 - 1).with_prefix(),
                true,
            ),
            (
                Compare::create_revision("r/", CompareOp::NotEqual, r1).with_prefix(),
                false,
            ),
            (
                Compare::value("r/a", CompareOp::Equal, "1").with_range("r/b"),
                true,
            ),
            (
                Compare::value("r/a", CompareOp::Equal, "1").with_range("r/c"),
                false,
            ),
            (
                Compare::value("r/", CompareOp::Greater, "0").with_prefix(),
                true,
            ),
            // An empty range compares as one missing key: version 0, and
            // a value compare fails.
            (
                Compare::version("t/", CompareOp::Equal, 7).with_prefix(),
                false,
            ),
            (
                Compare::version("t/", CompareOp::Equal, 0).with_prefix(),
                true,
            ),
            (
                Compare::value("t/", CompareOp::NotEqual, "x").with_prefix(),
                false,
            ),
            // Range end "\0": every key from r/c on (r/c and s).
            (
                Compare::version("r/c", CompareOp::Equal, 1).with_range("\0"),
                true,
            ),
            (
                Compare::version("r/b", CompareOp::Equal, 1).with_range("\0"),
                false,
            ),
        ];
        for (i, (cmp, want)) in cases.into_iter().enumerate() {
            let r = c.txn(check(cmp)).await.unwrap();
            assert_eq!(r.succeeded(), want, "case {i}");
        }
    })
    .await;
}

#[tokio::test]
async fn errors_are_classified_and_the_member_keeps_serving() {
    let m = start_server(MemberOpts::default()).await;
    let mut c = m.client().await;
    within("test", T, async {
        for i in 0..4 {
            put(&mut c, "e", &format!("v{i}")).await;
        }
        let cur = put(&mut c, "alive", "yes").await;
        let alive = c.clone();
        let check_alive = || check_alive(&alive);
        let invalid = "InvalidArgument";

        assert_grpc_err(
            c.put("", "v", None).await,
            invalid,
            "etcdserver: key is not provided",
        );
        check_alive().await;
        assert_grpc_err(
            c.get("", None).await,
            invalid,
            "etcdserver: key is not provided",
        );
        assert_grpc_err(
            c.delete("", None).await,
            invalid,
            "etcdserver: key is not provided",
        );
        assert_grpc_err(
            c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
                .await,
            invalid,
            "etcdserver: key is not provided",
        );
        check_alive().await;

        // 129 ops with the default --max-txn-ops of 128; 128 pass.
        let ops = |n: usize| {
            (0..n)
                .map(|i| TxnOp::put(format!("op/{i:03}"), "v", None))
                .collect::<Vec<_>>()
        };
        assert_grpc_err(
            c.txn(Txn::new().and_then(ops(129))).await,
            invalid,
            "etcdserver: too many operations in txn request",
        );
        assert_grpc_err(
            c.txn(Txn::new().or_else(ops(129))).await,
            invalid,
            "etcdserver: too many operations in txn request",
        );
        check_alive().await;
        c.txn(Txn::new().and_then(ops(128))).await.expect("128 ops");
        let r = c
            .get(
                "op/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(r.count(), 128);

        assert_grpc_err(
            c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
                .await,
            invalid,
            "etcdserver: duplicate key given in txn request",
        );
        assert_grpc_err(
            c.txn(Txn::new().and_then([
                TxnOp::delete("d", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("d2", "x", None),
            ]))
            .await,
            invalid,
            "etcdserver: duplicate key given in txn request",
        );
        check_alive().await;

        // Over --max-request-bytes (1.5 MiB) but under gRPC's limit (2 MiB).
        let big = vec![b'x'; 1_700_000];
        assert_grpc_err(
            c.put("big", big.clone(), None).await,
            invalid,
            "etcdserver: request is too large",
        );
        assert_grpc_err(
            c.txn(Txn::new().and_then([TxnOp::put("big", big, None)]))
                .await,
            invalid,
            "etcdserver: request is too large",
        );
        check_alive().await;
        // Just under the limit passes.
        c.put("big", vec![b'y'; 1_500_000], None)
            .await
            .expect("a 1.5 MB value");

        let cur = cur + 2; // the 128-op txn, the big put
        let now = c
            .get("alive", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert_eq!(now, cur);
        assert_grpc_err(
            c.get("e", Some(GetOptions::new().with_revision(now + 1)))
                .await,
            "OutOfRange",
            "etcdserver: mvcc: required revision is a future revision",
        );
        c.compact(now - 3, None).await.expect("compact");
        assert_grpc_err(
            c.get("e", Some(GetOptions::new().with_revision(now - 4)))
                .await,
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_grpc_err(
            c.compact(now - 4, None).await,
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_grpc_err(
            c.compact(now + 100, None).await,
            "OutOfRange",
            "etcdserver: mvcc: required revision is a future revision",
        );
        check_alive().await;

        assert_grpc_err(
            c.put("e", "v", Some(PutOptions::new().with_lease(0x7777)))
                .await,
            "NotFound",
            "etcdserver: requested lease not found",
        );
        assert_grpc_err(
            c.txn(Txn::new().and_then([TxnOp::put(
                "e",
                "v",
                Some(PutOptions::new().with_lease(0x7777)),
            )]))
            .await,
            "NotFound",
            "etcdserver: requested lease not found",
        );
        check_alive().await;

        // None of the refused requests changed anything.
        let end = c
            .get("alive", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert_eq!(end, now);
        assert_eq!(value(&mut c, "e").await.as_deref(), Some("v3"));
        assert!(value(&mut c, "d2").await.is_none());
    })
    .await;
}
