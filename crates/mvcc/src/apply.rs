//! The write path: applying an ordered batch of commands in one synced
//! write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use ballast_proto::ballastpb::{command, Command};
use ballast_proto::etcdserverpb::{
    AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;
use rocksdb::WriteBatch;

use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::schema::*;
use crate::store::{Inner, Store, WriterState};
use crate::txn::WriteTxn;

/// The outcome of one applied command.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandResponse {
    /// Response to a put.
    Put(PutResponse),
    /// Response to a delete-range.
    DeleteRange(DeleteRangeResponse),
    /// Response to a transaction.
    Txn(TxnResponse),
    /// Response to a compaction (logical; see [`Store::wait_compacted`]).
    Compaction(CompactionResponse),
    /// Response to an alarm command: the alarms listed, raised or cleared.
    Alarm(AlarmResponse),
    /// Response to a lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// Response to a lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
}

/// Changes of the current batch not yet written: the write batch and the
/// new versions, so that later commands of the batch can read them.
#[derive(Default)]
pub(crate) struct Pending {
    pub wb: WriteBatch,
    pub overlay: HashMap<Revision, KeyValue>,
    /// The batch's changes in order, for watchers (`None`: no watch hub).
    pub changes: Option<Vec<crate::watch::Change>>,
}

impl Store {
    /// Applies `entries` (log index, command) in order, as one atomic,
    /// synced write, and returns one outcome per entry.
    ///
    /// An entry whose index is not above the last applied index is skipped
    /// with [`Error::AlreadyApplied`], so replaying a log is harmless. A
    /// command that fails validation against the store (a compacted
    /// revision, a missing key for `ignore_value`, ...) changes nothing and
    /// gets its error; the other entries still apply.
    ///
    /// # Errors
    /// The outer error means the write to disk failed: nothing of the batch
    /// is acknowledged, and the store refuses every later write.
    pub fn apply(&self, entries: &[(u64, Command)]) -> Result<Vec<Result<CommandResponse>>> {
        self.apply_with_meta(entries, &[])
    }

    /// Like [`Store::apply`], and also writes `meta` records (name, value)
    /// in the same atomic write, for the caller's own bookkeeping (a
    /// replication layer records its applied log position this way). Names
    /// must not collide with the engine's (see [`crate::schema`]); `entries`
    /// may be empty.
    pub fn apply_with_meta(
        &self,
        entries: &[(u64, Command)],
        meta: &[(&[u8], &[u8])],
    ) -> Result<Vec<Result<CommandResponse>>> {
        let inner = &*self.inner;
        let mut w = inner.writer.lock();
        if inner.poisoned.load(Ordering::Acquire) {
            return Err(Error::Storage(
                "the store stopped after a failed write".into(),
            ));
        }
        let mut pending = Pending {
            changes: crate::watch::collector(inner),
            ..Default::default()
        };
        let mut out = Vec::with_capacity(entries.len());
        for (index, cmd) in entries {
            if *index <= w.applied_index {
                out.push(Err(Error::AlreadyApplied(*index)));
                continue;
            }
            // An active alarm refuses writes before anything else is looked at.
            let refused = cmd.op.as_ref().and_then(|op| w.alarms.refuses(op));
            let res = match (&cmd.op, refused) {
                (None, _) => Err(Error::Corrupt(format!("command at index {index} is empty"))),
                (Some(_), Some(e)) => Err(e),
                (Some(command::Op::Compaction(c)), None) => {
                    compact(inner, &mut w, &mut pending, *index, c)
                }
                (Some(command::Op::Alarm(a)), None) => {
                    Ok(crate::alarm::apply(inner, &mut w.alarms, &mut pending, a))
                }
                (Some(command::Op::LeaseGrant(g)), None) => {
                    crate::lease::grant(inner, &w, &mut pending, g)
                }
                (Some(command::Op::LeaseRevoke(r)), None) => {
                    match crate::lease::revoke(inner, &mut w, &mut pending, *index, r) {
                        // Failed midway: the store is poisoned.
                        Err(e @ Error::Storage(_)) => return Err(e),
                        res => res,
                    }
                }
                (Some(op), None) => {
                    let mut txn = WriteTxn::new(inner, &mut pending, w.rev);
                    let res = txn.run(op);
                    let changed = txn.changed();
                    if let Err(e) = &res {
                        if changed || matches!(e, Error::Storage(_) | Error::Corrupt(_)) {
                            // Memory may hold changes the batch will not carry.
                            inner.poisoned.store(true, Ordering::Release);
                            return Err(Error::Storage(format!(
                                "apply of index {index} failed midway: {e}"
                            )));
                        }
                    }
                    if changed {
                        w.rev += 1;
                    }
                    res
                }
            };
            w.applied_index = *index;
            out.push(res);
        }
        for (name, value) in meta {
            pending.wb.put_cf(inner.cf(CF_META), name, value);
        }
        commit(inner, &w, pending)?;
        Ok(out)
    }
}

/// Writes the batch with the applied index and revision, then makes its
/// revisions visible to readers.
fn commit(inner: &Inner, w: &WriterState, mut pending: Pending) -> Result<()> {
    let meta = inner.cf(CF_META);
    pending
        .wb
        .put_cf(meta, META_APPLIED_INDEX, u64_bytes(w.applied_index));
    pending.wb.put_cf(meta, META_CURRENT_REV, i64_bytes(w.rev));
    if let Err(e) = inner.db.write_opt(pending.wb, &inner.write_opts) {
        inner.poisoned.store(true, Ordering::Release);
        return Err(e.into());
    }
    inner.committed_rev.store(w.rev, Ordering::Release);
    let mut published = inner.alarms.write();
    if *published != w.alarms {
        *published = w.alarms.clone();
    }
    drop(published);
    // Watchers get the batch's events only now that it is durable.
    crate::watch::publish(inner, w.rev, pending.changes, pending.overlay);
    Ok(())
}

/// Applies a compaction: everything before it in the batch is committed
/// first, so readers never meet an index compacted past what they can read.
fn compact(
    inner: &Inner,
    w: &mut WriterState,
    pending: &mut Pending,
    index: u64,
    req: &CompactionRequest,
) -> Result<crate::CommandResponse> {
    let rev = req.revision;
    if rev <= inner.index.read().compact_rev {
        return Err(Error::Compacted);
    }
    if rev > w.rev {
        return Err(Error::FutureRev);
    }
    let mut batch = std::mem::take(pending);
    pending.changes = batch.changes.as_ref().map(|_| Vec::new());
    batch
        .wb
        .put_cf(inner.cf(CF_META), META_SCHEDULED_COMPACT, i64_bytes(rev));
    w.applied_index = index;
    commit(inner, w, batch)?;
    let keep = {
        let mut ix = inner.index.write();
        ix.compact_rev = rev;
        ix.tree.compact(rev)
    };
    // Before the removal is scheduled: the revision is still whole on disk.
    crate::watch::compacted(inner, rev);
    inner.compactor.schedule(rev, keep);
    Ok(CommandResponse::Compaction(CompactionResponse {
        header: Some(ResponseHeader {
            revision: w.rev,
            ..Default::default()
        }),
    }))
}
