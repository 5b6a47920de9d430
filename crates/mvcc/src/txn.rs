//! One write transaction: a put, a delete-range or a txn, all of whose
//! changes share one main revision.

use ballast_proto::ballastpb::command;
use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;
use prost::Message;

use crate::apply::{CommandResponse, Pending};
use crate::error::{Error, Result};
use crate::index::KeyRange;
use crate::key_index::KeyAt;
use crate::range;
use crate::revision::Revision;
use crate::schema::CF_KV;
use crate::store::{decode_kv, Inner};

/// A write transaction over the store's newest state, including the
/// changes of earlier commands in the same batch.
///
/// # Guarantees
/// Every change gets main revision `begin_rev + 1` and an increasing sub
/// revision. Reads inside the transaction see its earlier changes. Errors
/// that depend on the store are found before the first change is made.
pub(crate) struct WriteTxn<'a> {
    inner: &'a Inner,
    pending: &'a mut Pending,
    begin_rev: i64,
    sub: i64,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'a> WriteTxn<'a> {
    pub fn new(inner: &'a Inner, pending: &'a mut Pending, begin_rev: i64) -> Self {
        WriteTxn {
            inner,
            pending,
            begin_rev,
            sub: 0,
        }
    }

    /// True once the transaction changed something (it then takes a revision).
    pub fn changed(&self) -> bool {
        self.sub > 0
    }

    /// The revision the transaction's reads see and its responses report.
    fn rev(&self) -> i64 {
        if self.changed() {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    /// Runs one command.
    pub fn run(&mut self, op: &command::Op) -> Result<CommandResponse> {
        match op {
            command::Op::Put(p) => {
                // etcd's Put looks the lease up before ignore_value/ignore_lease.
                if !p.ignore_lease && p.lease != 0 && !self.lease_exists(p.lease) {
                    return Err(Error::LeaseNotFound);
                }
                self.check_put(p)?;
                self.put(p).map(CommandResponse::Put)
            }
            command::Op::DeleteRange(d) => self.delete_range(d).map(CommandResponse::DeleteRange),
            command::Op::Txn(t) => {
                let mut path = Vec::new();
                self.compare_path(t, &mut path)?;
                // As etcd: every put of the path first, then every range.
                self.check_ops(t, &path, &mut 0, false)?;
                self.check_ops(t, &path, &mut 0, true)?;
                self.txn(t, &path, &mut 0).map(CommandResponse::Txn)
            }
            command::Op::Compaction(_)
            | command::Op::Alarm(_)
            | command::Op::LeaseGrant(_)
            | command::Op::LeaseRevoke(_) => {
                unreachable!("compactions, alarms and leases are applied by the store")
            }
        }
    }

    // ----- reads -----

    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        if let Some(kv) = self.pending.overlay.get(&rev) {
            return Ok(kv.clone());
        }
        let bytes = self
            .inner
            .db
            .get_cf(self.inner.cf(CF_KV), rev.to_key(false))?
            .ok_or_else(|| Error::Corrupt(format!("revision {rev} is indexed but not stored")))?;
        decode_kv(&bytes)
    }

    /// The key's newest version, including this transaction's changes.
    fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let at = self.inner.index.read().tree.get(key, self.begin_rev + 1);
        at.map(|k| self.fetch(k.modified)).transpose()
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let plan = {
            let ix = self.inner.index.read();
            range::plan(&ix.tree, req, self.rev(), ix.compact_rev)?
        };
        let kvs = plan
            .revs
            .iter()
            .map(|r| self.fetch(*r))
            .collect::<Result<Vec<_>>>()?;
        Ok(range::finish(req, plan, kvs))
    }

    /// Keys of a range at the transaction's revision.
    fn keys_in(&self, key: &[u8], range_end: &[u8]) -> Vec<(Vec<u8>, KeyAt)> {
        let ix = self.inner.index.read();
        let (found, _) = ix.tree.range(
            KeyRange::from_request(key, range_end),
            self.begin_rev + 1,
            0,
        );
        found.into_iter().map(|(k, at)| (k.to_vec(), at)).collect()
    }

    // ----- checks made before any change -----

    fn check_put(&self, p: &PutRequest) -> Result<()> {
        if (p.ignore_value || p.ignore_lease) && self.latest(&p.key)?.is_none() {
            return Err(Error::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !self.lease_exists(p.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn lease_exists(&self, id: i64) -> bool {
        self.inner.leases.lock().contains(id)
    }

    fn check_range(&self, r: &RangeRequest) -> Result<()> {
        let compact = self.inner.index.read().compact_rev;
        range::read_revision(r.revision, self.rev(), compact).map(|_| ())
    }

    /// Evaluates the compares of `t` and of every nested txn on the path
    /// taken, depth first, against the state before the transaction.
    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in branch(t, ok) {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.compare_path(nested, path)?;
            }
        }
        Ok(())
    }

    /// Checks the puts (`ranges == false`) or the ranges of the path.
    fn check_ops(&self, t: &TxnRequest, path: &[bool], at: &mut usize, ranges: bool) -> Result<()> {
        let ok = path[*at];
        *at += 1;
        for op in branch(t, ok) {
            match &op.request {
                Some(Request::RequestPut(p)) if !ranges => self.check_put(p)?,
                Some(Request::RequestRange(r)) if ranges => self.check_range(r)?,
                Some(Request::RequestTxn(nested)) => self.check_ops(nested, path, at, ranges)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        let found = self.keys_in(&c.key, &c.range_end);
        let target = CompareTarget::try_from(c.target).ok();
        if found.is_empty() {
            // A missing key compares as a zero-valued pair, but a value
            // compare on it always fails.
            return Ok(
                target != Some(CompareTarget::Value) && compare_kv(c, target, &KeyValue::default())
            );
        }
        for (key, at) in found {
            let kv = match target {
                Some(CompareTarget::Value | CompareTarget::Lease) => self.fetch(at.modified)?,
                _ => KeyValue {
                    key,
                    create_revision: at.created.main,
                    mod_revision: at.modified.main,
                    version: at.version,
                    ..Default::default()
                },
            };
            if !compare_kv(c, target, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    // ----- changes -----

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        let prev = if p.prev_kv || p.ignore_value || p.ignore_lease {
            self.latest(&p.key)?
        } else {
            None
        };
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let rev = self.put_kv(&p.key, value, lease);
        Ok(PutResponse {
            header: header(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn put_kv(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let main = self.begin_rev + 1;
        let rev = Revision::new(main, self.sub);
        let now = self.inner.index.read().tree.get(key, main);
        let (create_revision, version) = match now {
            Some(k) => (k.created.main, k.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.pending
            .wb
            .put_cf(self.inner.cf(CF_KV), rev.to_key(false), kv.encode_to_vec());
        self.pending.overlay.insert(rev, kv);
        if let Some(changes) = &mut self.pending.changes {
            changes.push(crate::watch::Change::Put(rev));
        }
        self.inner.index.write().tree.put(key, rev);
        // Overwriting a key moves it to the new lease (or to none).
        self.inner.leases.lock().attach(key, lease);
        self.sub += 1;
        main
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let found = self.keys_in(&d.key, &d.range_end);
        let prev_kvs = if d.prev_kv {
            found
                .iter()
                .map(|(_, at)| self.fetch(at.modified))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let main = self.begin_rev + 1;
        for (key, _) in &found {
            let rev = Revision::new(main, self.sub);
            let tomb = KeyValue {
                key: key.clone(),
                ..Default::default()
            };
            self.pending
                .wb
                .put_cf(self.inner.cf(CF_KV), rev.to_key(true), tomb.encode_to_vec());
            self.inner.index.write().tree.tombstone(key, rev);
            self.inner.leases.lock().detach(key);
            if let Some(changes) = &mut self.pending.changes {
                changes.push(crate::watch::Change::Delete(rev, key.clone()));
            }
            self.sub += 1;
        }
        Ok(DeleteRangeResponse {
            header: header(self.rev()),
            deleted: found.len() as i64,
            prev_kvs,
        })
    }

    fn txn(&mut self, t: &TxnRequest, path: &[bool], at: &mut usize) -> Result<TxnResponse> {
        let succeeded = path[*at];
        *at += 1;
        let mut responses = Vec::new();
        for op in branch(t, succeeded) {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)?),
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.put(p)?),
                Some(Request::RequestDeleteRange(d)) => {
                    Response::ResponseDeleteRange(self.delete_range(d)?)
                }
                Some(Request::RequestTxn(nested)) => {
                    let mut resp = self.txn(nested, path, at)?;
                    // etcd fills only the outermost txn's header.
                    resp.header = Some(ResponseHeader::default());
                    Response::ResponseTxn(resp)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: header(self.rev()),
            succeeded,
            responses,
        })
    }
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// Compares one pair against a compare's target, as etcd does: a target
/// union of another kind than the target counts as zero (or empty); an
/// unknown target compares equal and an unknown result holds.
fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    let Some(target) = target else {
        return CompareResult::try_from(c.result)
            .map_or(true, |r| matches!(r, CompareResult::Equal));
    };
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        CompareTarget::Version => kv.version.cmp(&int_target(c, |u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&int_target(c, |u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_target(c, |u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int_target(c, |u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

fn int_target(c: &Compare, pick: impl Fn(&TargetUnion) -> Option<i64>) -> i64 {
    c.target_union.as_ref().and_then(pick).unwrap_or(0)
}
