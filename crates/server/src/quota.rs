//! The backend quota (`--quota-backend-bytes`), checked as etcd's gRPC layer
//! checks it (`v3rpc/quota.go`): a write that would take the database
//! past the quota raises the NOSPACE alarm (a replicated command) and fails
//! with `etcdserver: mvcc: database space exceeded`.

use std::time::{Duration, Instant};

use ballast_mvcc::Store;
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use parking_lot::Mutex;

/// etcd's estimate of the bytes a key-value pair costs beyond its key and
/// value (`kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// How long a size measured well under the quota is reused.
const SIZE_CACHE: Duration = Duration::from_millis(100);

/// The quota check.
pub struct Quota {
    store: Store,
    limit: Option<u64>,
    /// The last measured size and when; only used to let a write pass.
    cached: Mutex<Option<(Instant, u64)>>,
}

/// The bytes a put adds, by etcd's estimate.
pub fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// The bytes a txn adds: the larger of its branches' puts (nested txns
/// included; etcd counts only the top level's).
pub fn txn_cost(t: &TxnRequest) -> u64 {
    fn branch(ops: &[RequestOp]) -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => put_cost(p),
                Some(Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    }
    branch(&t.success).max(branch(&t.failure))
}

impl Quota {
    /// A quota of `limit` bytes on `store` (`None`: no quota).
    pub fn new(store: Store, limit: Option<u64>) -> Self {
        Quota {
            store,
            limit,
            cached: Mutex::new(None),
        }
    }

    /// The quota in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// True if a write costing `cost` bytes fits: as etcd, the database
    /// size plus the cost must stay below the quota. A write that changes
    /// nothing (`cost == 0`) always fits.
    pub fn available(&self, cost: u64) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if cost == 0 {
            return true;
        }
        let fits = |size: u64| size.saturating_add(cost) < limit;
        if let Some((at, size)) = *self.cached.lock() {
            // A recent size that leaves room for many such writes is good
            // enough; a refusal is always decided on a fresh measurement.
            if at.elapsed() < SIZE_CACHE && fits(size.saturating_add(cost.saturating_mul(16))) {
                return true;
            }
        }
        let size = self.store.db_size();
        *self.cached.lock() = Some((Instant::now(), size));
        fits(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: usize) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                value: vec![0; v],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_follow_etcd() {
        let p = PutRequest {
            key: b"key".to_vec(),
            value: vec![0; 10],
            ..Default::default()
        };
        assert_eq!(put_cost(&p), 256 + 3 + 10);
        let t = TxnRequest {
            compare: vec![],
            success: vec![put("a", 1), put("b", 1)],
            failure: vec![
                put("c", 100),
                RequestOp {
                    request: Some(Request::RequestTxn(TxnRequest {
                        compare: vec![],
                        success: vec![put("d", 5)],
                        failure: vec![],
                    })),
                },
            ],
        };
        assert_eq!(txn_cost(&t), (256 + 101) + (256 + 6));
        assert_eq!(txn_cost(&TxnRequest::default()), 0);
    }
}
