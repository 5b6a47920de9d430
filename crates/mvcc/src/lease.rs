//! The lease table: etcd v3 leases as replicated engine state.
//!
//! Leases are created and deleted only by `LeaseGrant` and `LeaseRevoke`
//! commands through [`Store::apply`](crate::Store::apply), and stored in the
//! meta column family (`lease/` + ID as 8 bytes big-endian → TTL as 8 bytes
//! big-endian), so every member agrees on them, they survive restarts and
//! whole-store images carry them. Which keys a lease holds is not stored
//! separately: it is each live key's `KeyValue.lease`, rebuilt at open (and
//! after a snapshot install) and kept up to date by every put and delete.
//!
//! Expiry is not the engine's business: deadlines live in memory on the
//! leader, which proposes a `LeaseRevoke` when one passes. Revoking deletes
//! every attached key in one write transaction (one revision), so watchers
//! see ordinary DELETE events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ballast_proto::ballastpb::command;
use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, ResponseHeader,
};
use rocksdb::DB;

use crate::apply::{CommandResponse, Pending};
use crate::error::{Error, Result};
use crate::schema::{decode_u64, i64_bytes, CF_META, META_LEASE_PREFIX};
use crate::store::{Inner, Store, WriterState};
use crate::txn::WriteTxn;

/// One lease as the engine knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease ID.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// The keys attached to it, in key order.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// Every lease and the key → lease attachments of the live keys.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    attached: HashMap<Vec<u8>, i64>,
}

pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    let mut k = META_LEASE_PREFIX.to_vec();
    k.extend_from_slice(&i64_bytes(id));
    k
}

impl LeaseTable {
    /// Loads the leases stored in the meta column family and attaches the
    /// live keys (`attached`: key → lease of its newest version).
    pub fn load(db: &DB, attached: HashMap<Vec<u8>, i64>) -> Result<LeaseTable> {
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let mut t = LeaseTable::default();
        let iter = db.iterator_cf(
            meta,
            rocksdb::IteratorMode::From(META_LEASE_PREFIX, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(META_LEASE_PREFIX) {
                break;
            }
            let bad = || Error::Corrupt(format!("stored lease {k:?}"));
            let id = decode_u64(&k[META_LEASE_PREFIX.len()..]).ok_or_else(bad)? as i64;
            let ttl = decode_u64(&v).ok_or_else(bad)? as i64;
            t.leases.insert(
                id,
                Lease {
                    ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, id) in attached {
            // A key naming a lease that is gone (none should) stays unattached.
            if let Some(l) = t.leases.get_mut(&id) {
                l.keys.insert(key.clone());
                t.attached.insert(key, id);
            }
        }
        Ok(t)
    }

    /// True if lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Attaches `key` to `lease` (0: none), detaching it from its former one.
    pub fn attach(&mut self, key: &[u8], lease: i64) {
        self.detach(key);
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
                self.attached.insert(key.to_vec(), lease);
            }
        }
    }

    /// Detaches `key` from its lease, if it has one.
    pub fn detach(&mut self, key: &[u8]) {
        if let Some(old) = self.attached.remove(key) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
    }

    fn info(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo {
            id,
            ttl: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }
}

/// The lease refusal of an active alarm, as etcd's capped and corrupt
/// appliers: (is a write, needs space).
pub(crate) fn alarm_class(op: &command::Op) -> Option<(bool, bool)> {
    match op {
        command::Op::LeaseGrant(_) => Some((true, true)),
        command::Op::LeaseRevoke(_) => Some((true, false)),
        _ => None,
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

/// Applies a grant: a new lease with the proposed ID and TTL.
pub(crate) fn grant(
    inner: &Inner,
    w: &WriterState,
    pending: &mut Pending,
    req: &LeaseGrantRequest,
) -> Result<CommandResponse> {
    let mut table = inner.leases.lock();
    if req.id == 0 {
        return Err(Error::LeaseNotFound);
    }
    if table.contains(req.id) {
        return Err(Error::LeaseExists);
    }
    table.leases.insert(
        req.id,
        Lease {
            ttl: req.ttl,
            keys: BTreeSet::new(),
        },
    );
    pending
        .wb
        .put_cf(inner.cf(CF_META), lease_key(req.id), i64_bytes(req.ttl));
    Ok(CommandResponse::LeaseGrant(LeaseGrantResponse {
        header: header(w.rev),
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    }))
}

/// Applies a revoke: deletes every attached key in one write transaction
/// (one revision; nothing if no key is attached), then the lease.
pub(crate) fn revoke(
    inner: &Inner,
    w: &mut WriterState,
    pending: &mut Pending,
    index: u64,
    req: &LeaseRevokeRequest,
) -> Result<CommandResponse> {
    let keys = match inner.leases.lock().info(req.id) {
        Some(l) => l.keys,
        None => return Err(Error::LeaseNotFound),
    };
    let mut txn = WriteTxn::new(inner, pending, w.rev);
    for key in keys {
        let del = command::Op::DeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        });
        if let Err(e) = txn.run(&del) {
            inner
                .poisoned
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(Error::Storage(format!(
                "revoke of lease {:x} at index {index} failed midway: {e}",
                req.id
            )));
        }
    }
    if txn.changed() {
        w.rev += 1;
    }
    inner.leases.lock().leases.remove(&req.id);
    pending.wb.delete_cf(inner.cf(CF_META), lease_key(req.id));
    Ok(CommandResponse::LeaseRevoke(LeaseRevokeResponse {
        header: header(w.rev),
    }))
}

impl Store {
    /// Lease `id`: its granted TTL and attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.inner.leases.lock().info(id)
    }

    /// Every lease as (ID, granted TTL), by ID.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.inner
            .leases
            .lock()
            .leases
            .iter()
            .map(|(id, l)| (*id, l.ttl))
            .collect()
    }
}

#[cfg(test)]
mod tests;
