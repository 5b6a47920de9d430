//! Request checks made before a request is proposed, as etcd's gRPC layer
//! makes them: they depend only on the request, never on the store.

use std::collections::HashSet;

use ballast_mvcc::KeyRange;
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::errors::EtcdError;

/// Checks a range request.
pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// Checks a put request.
pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// Checks a delete-range request.
pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Checks a txn: its size against `max_ops` (at every nesting level), every
/// operation, and that no branch writes one key twice.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(r, max_ops)?;
    writes_of(&r.success)?;
    writes_of(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(x)) => range(x)?,
            Some(Request::RequestPut(x)) => put(x)?,
            Some(Request::RequestDeleteRange(x)) => delete_range(x)?,
            Some(Request::RequestTxn(x)) => check_txn_ops(x, max_ops)?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// The keys put and the ranges deleted by one branch, nested txns included.
#[derive(Default)]
struct Writes {
    puts: HashSet<Vec<u8>>,
    dels: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn deletes(&self, key: &[u8]) -> bool {
        self.dels
            .iter()
            .any(|(k, end)| KeyRange::from_request(k, end).contains(key))
    }
}

/// Collects a branch's writes; two writes of one key in it (put and put, or
/// put inside a deleted range) are a duplicate. A nested txn's two branches
/// exclude each other, so they may write the same key.
fn writes_of(ops: &[RequestOp]) -> Result<Writes, EtcdError> {
    let mut w = Writes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            w.dels.push((d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = writes_of(&t.success)?;
        let els = writes_of(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.deletes(k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        for k in &els.puts {
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.deletes(k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        w.puts.extend(then.puts);
        w.puts.extend(els.puts);
        w.dels.extend(then.dels);
        w.dels.extend(els.dels);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if w.puts.contains(&p.key) || w.deletes(&p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        w.puts.insert(p.key.clone());
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), EtcdError> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(
            check(vec![put_op("a"), put_op("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put_op("b"), del_op("a", "c")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put_op("z"), del_op("a", "\0")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(check(vec![put_op("c"), del_op("a", "c")]), Ok(()));
        assert_eq!(check(vec![del_op("a", "c"), del_op("b", "d")]), Ok(()));
        // A nested txn's branches exclude each other.
        assert_eq!(
            check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]),
            Ok(())
        );
        assert_eq!(
            check(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![del_op("a", "b"), txn_op(vec![], vec![put_op("a")])]),
            Err(EtcdError::DuplicateKey)
        );
        // Success and failure branches of the top level are checked apart.
        let t = TxnRequest {
            compare: vec![],
            success: vec![put_op("a")],
            failure: vec![put_op("a")],
        };
        assert_eq!(txn(&t, 128), Ok(()));
    }

    #[test]
    fn limits_and_fields() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(EtcdError::TooManyOps));
        assert_eq!(check(vec![put_op("")]), Err(EtcdError::EmptyKey));
        assert_eq!(
            check(vec![RequestOp { request: None }]),
            Err(EtcdError::KeyNotFound)
        );
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 7,
            ..Default::default()
        };
        assert_eq!(range(&bad_sort), Err(EtcdError::InvalidSortOption));
        let p = PutRequest {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(EtcdError::ValueProvided));
    }
}
