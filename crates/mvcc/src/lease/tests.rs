use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use crate::{CommandResponse, Error, LeaseInfo, Result, Store, StoreOptions};

struct T {
    store: Store,
    index: u64,
}

impl T {
    fn open(dir: &std::path::Path) -> T {
        let store = Store::open(dir, StoreOptions::default()).unwrap();
        let index = store.applied_index();
        T { store, index }
    }

    fn apply(&mut self, op: Op) -> Result<CommandResponse> {
        self.index += 1;
        let mut out = self
            .store
            .apply(&[(self.index, Command { op: Some(op) })])
            .unwrap();
        out.pop().unwrap()
    }

    fn grant(&mut self, id: i64, ttl: i64) -> Result<CommandResponse> {
        self.apply(Op::LeaseGrant(LeaseGrantRequest { id, ttl }))
    }

    fn revoke(&mut self, id: i64) -> Result<CommandResponse> {
        self.apply(Op::LeaseRevoke(LeaseRevokeRequest { id }))
    }

    fn put(&mut self, k: &str, lease: i64) -> Result<CommandResponse> {
        self.apply(Op::Put(put_req(k, lease)))
    }

    fn get(&self, k: &str) -> Option<(i64, i64)> {
        let r = self
            .store
            .range(&RangeRequest {
                key: k.into(),
                ..Default::default()
            })
            .unwrap();
        r.kvs.first().map(|kv| (kv.lease, kv.mod_revision))
    }

    fn keys(&self, id: i64) -> Vec<String> {
        self.store
            .lease(id)
            .unwrap()
            .keys
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }
}

fn put_req(k: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

#[test]
fn grant_put_and_revoke_deletes_every_key_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    // No lease yet: a put naming one is refused, in a txn too.
    assert_eq!(t.put("a", 7), Err(Error::LeaseNotFound));
    let txn = Op::Txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put_req("t", 7))),
        }],
        failure: vec![],
    });
    assert_eq!(t.apply(txn.clone()), Err(Error::LeaseNotFound));
    let rev0 = t.store.current_revision();

    match t.grant(7, 10).unwrap() {
        CommandResponse::LeaseGrant(g) => {
            assert_eq!((g.id, g.ttl), (7, 10));
            assert_eq!(g.header.unwrap().revision, rev0);
        }
        other => panic!("{other:?}"),
    }
    // A grant takes no revision; granting the ID again is refused.
    assert_eq!(t.store.current_revision(), rev0);
    assert_eq!(t.grant(7, 30), Err(Error::LeaseExists));
    assert_eq!(t.store.lease(7).unwrap().ttl, 10);
    assert_eq!(t.store.leases(), vec![(7, 10)]);

    t.put("a", 7).unwrap();
    t.put("b", 7).unwrap();
    assert!(t.apply(txn).is_ok());
    t.put("c", 0).unwrap();
    assert_eq!(t.get("a").unwrap().0, 7);
    assert_eq!(t.keys(7), ["a", "b", "t"]);

    let before = t.store.current_revision();
    match t.revoke(7).unwrap() {
        CommandResponse::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, before + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.store.current_revision(), before + 1);
    assert_eq!(t.get("a"), None);
    assert_eq!(t.get("b"), None);
    assert_eq!(t.get("t"), None);
    assert!(t.get("c").is_some());
    // All three tombstones share the revision.
    let tombs: Vec<_> = t
        .store
        .stored_revisions()
        .unwrap()
        .into_iter()
        .filter(|(_, tomb)| *tomb)
        .map(|(r, _)| r.main)
        .collect();
    assert_eq!(tombs, vec![before + 1; 3]);
    assert_eq!(t.store.lease(7), None);
    assert_eq!(t.revoke(7), Err(Error::LeaseNotFound));
    assert_eq!(t.put("a", 7), Err(Error::LeaseNotFound));

    // Revoking a lease without keys takes no revision.
    t.grant(8, 5).unwrap();
    let rev = t.store.current_revision();
    assert!(t.revoke(8).is_ok());
    assert_eq!(t.store.current_revision(), rev);
    assert!(t.store.leases().is_empty());
}

#[test]
fn overwrite_moves_and_delete_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    t.grant(1, 10).unwrap();
    t.grant(2, 10).unwrap();
    t.put("k", 1).unwrap();
    assert_eq!(t.keys(1), ["k"]);
    t.put("k", 2).unwrap();
    assert!(t.keys(1).is_empty());
    assert_eq!(t.keys(2), ["k"]);
    // ignore_lease keeps the key's lease.
    t.apply(Op::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"w".to_vec(),
        ignore_lease: true,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(t.get("k").unwrap().0, 2);
    assert_eq!(t.keys(2), ["k"]);
    // A put without a lease detaches.
    t.put("k", 0).unwrap();
    assert!(t.keys(2).is_empty());
    t.put("k", 1).unwrap();
    t.apply(Op::DeleteRange(DeleteRangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    assert!(t.keys(1).is_empty());
    // The deleted key is not deleted again by the revoke.
    let rev = t.store.current_revision();
    t.revoke(1).unwrap();
    assert_eq!(t.store.current_revision(), rev);
}

#[test]
fn leases_survive_reopen_and_snapshot_install() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    t.grant(5, 60).unwrap();
    t.grant(6, 3).unwrap();
    t.put("x", 5).unwrap();
    t.put("y", 5).unwrap();
    t.put("y", 6).unwrap();
    t.put("z", 6).unwrap();
    t.apply(Op::DeleteRange(DeleteRangeRequest {
        key: b"z".to_vec(),
        ..Default::default()
    }))
    .unwrap();
    drop(t);

    let mut t = T::open(dir.path());
    assert_eq!(t.store.leases(), vec![(5, 60), (6, 3)]);
    assert_eq!(
        t.store.lease(5),
        Some(LeaseInfo {
            id: 5,
            ttl: 60,
            keys: vec![b"x".to_vec()]
        })
    );
    assert_eq!(t.keys(6), ["y"]);

    // An image carries the leases; the installed store rebuilds attachments.
    let mut image = Vec::new();
    t.store.write_snapshot(&mut image, &[]).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut u = T::open(dir2.path());
    u.grant(99, 1).unwrap();
    u.store.install_snapshot(&mut image.as_slice()).unwrap();
    u.index = u.store.applied_index();
    assert_eq!(u.store.leases(), t.store.leases());
    assert_eq!(u.keys(5), ["x"]);
    assert_eq!(u.keys(6), ["y"]);
    assert_eq!(u.store.hash().unwrap(), t.store.hash().unwrap());
    let rev = u.store.current_revision();
    u.revoke(6).unwrap();
    assert_eq!(u.get("y"), None);
    assert_eq!(u.store.current_revision(), rev + 1);
    assert_eq!(t.revoke(99), Err(Error::LeaseNotFound));
}
