//! Range reads: which revisions a `RangeRequest` selects, and the
//! filtering, sorting and limiting etcd applies to the fetched pairs.

use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use ballast_proto::mvccpb::KeyValue;

use crate::error::{Error, Result};
use crate::index::{KeyRange, TreeIndex};
use crate::revision::Revision;

/// The revisions a range read must fetch, chosen under the index lock.
#[derive(Debug)]
pub(crate) struct RangePlan {
    /// Revisions to fetch, in key order.
    pub revs: Vec<Revision>,
    /// Keys in the range at the read revision, before limit and filters.
    pub count: i64,
    /// The store revision the response's header reports.
    pub header_rev: i64,
}

/// Picks the revisions `req` reads from `tree`, given the newest readable
/// revision `current` and the compaction point `compact`.
///
/// # Errors
/// [`Error::FutureRev`] above `current`; [`Error::Compacted`] below `compact`.
pub(crate) fn plan(
    tree: &TreeIndex,
    req: &RangeRequest,
    current: i64,
    compact: i64,
) -> Result<RangePlan> {
    let at = read_revision(req.revision, current, compact)?;
    let range = KeyRange::from_request(&req.key, &req.range_end);
    if req.count_only {
        return Ok(RangePlan {
            revs: Vec::new(),
            count: tree.count(range, at) as i64,
            header_rev: current,
        });
    }
    let needs_all = req.sort_order != SortOrder::None as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // One extra key tells whether there are more.
    let index_limit = if needs_all || req.limit <= 0 {
        0
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX - 1)
            .saturating_add(1)
    };
    let (found, count) = tree.range(range, at, index_limit);
    Ok(RangePlan {
        revs: found.iter().map(|(_, k)| k.modified).collect(),
        count: count as i64,
        header_rev: current,
    })
}

/// The revision a read at `requested` (0 or less = newest) sees.
pub(crate) fn read_revision(requested: i64, current: i64, compact: i64) -> Result<i64> {
    if requested > current {
        return Err(Error::FutureRev);
    }
    let at = if requested <= 0 { current } else { requested };
    if at < compact {
        return Err(Error::Compacted);
    }
    Ok(at)
}

/// Turns the fetched pairs into the response: min/max revision filters,
/// sorting, the limit with `more`, and `keys_only`, exactly as etcd 3.5.
pub(crate) fn finish(req: &RangeRequest, plan: RangePlan, mut kvs: Vec<KeyValue>) -> RangeResponse {
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    // Pairs come in ascending key order: sort ascending by default when the
    // target is not the key, and skip re-sorting by key ascending.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable in both directions: ties stay in key order, as etcd's
        // `sort.Sort(sort.Reverse(..))` leaves them (for small results).
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision: plan.header_rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: plan.count,
    }
}
