//! Column families and meta keys of the engine's RocksDB database.
//!
//! See `docs/architecture.md` for the full on-disk layout.

/// Every stored change, keyed by its encoded revision
/// ([`crate::Revision::to_key`]); the value is a protobuf `mvccpb.KeyValue`.
pub const CF_KV: &str = "kv";
/// Small records about the store itself, keyed by the `META_*` names.
pub const CF_META: &str = "meta";

/// The data format marker; a database without it, or with another value,
/// is refused at open.
pub const META_FORMAT: &[u8] = b"format";
/// The format this build reads and writes.
pub const FORMAT_VERSION: &[u8] = b"ballast-mvcc-v1";
/// Log index of the last applied command (u64, big-endian), written in the
/// same batch as the command's changes.
pub const META_APPLIED_INDEX: &[u8] = b"applied_index";
/// The store revision (i64, big-endian), written when the store is created
/// ([`FIRST_REVISION`]) and with every change.
pub const META_CURRENT_REV: &[u8] = b"current_rev";
/// Revision of the last compaction applied (i64, big-endian); absent
/// before the first compaction ([`NO_COMPACTION`]).
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
/// Revision of the last compaction whose old versions are all removed;
/// absent before the first compaction finished ([`NO_COMPACTION`]).
pub const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";

/// The revision of a new, empty store: etcd's store starts at revision 1
/// (mvcc `currentRev`), so a read of an empty store reports revision 1 and
/// the first write is revision 2.
pub const FIRST_REVISION: i64 = 1;
/// The compaction point of a store never compacted: -1, as etcd's
/// `compactMainRev` (so a compaction at revision 0 is accepted once, and
/// HashKV reports -1 before the first compaction).
pub const NO_COMPACTION: i64 = -1;

/// Prefix of the alarm records: `alarm/` + member ID (8 bytes big-endian) +
/// alarm type (4 bytes big-endian); the value is a protobuf
/// `etcdserverpb.AlarmMember`.
pub const META_ALARM_PREFIX: &[u8] = b"alarm/";

/// Prefix of the lease records: `lease/` + lease ID (8 bytes big-endian);
/// the value is the granted TTL in seconds (8 bytes big-endian).
pub const META_LEASE_PREFIX: &[u8] = b"lease/";

/// True for the meta records that are the engine's replicated content (the
/// format marker, revision, compaction points, alarms and leases), as opposed to a
/// member's log position (`applied_index`) and records written by other
/// layers with [`crate::Store::apply_with_meta`]. A restored backup keeps
/// only these ([`crate::Store::reset_log_position`]); a new engine record
/// must be added here.
pub fn is_engine_meta(key: &[u8]) -> bool {
    [
        META_FORMAT,
        META_CURRENT_REV,
        META_SCHEDULED_COMPACT,
        META_FINISHED_COMPACT,
    ]
    .contains(&key)
        || key.starts_with(META_ALARM_PREFIX)
        || key.starts_with(META_LEASE_PREFIX)
}

/// Encodes a u64 meta value.
pub fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Encodes an i64 meta value.
pub fn i64_bytes(v: i64) -> [u8; 8] {
    (v as u64).to_be_bytes()
}

/// Decodes an 8-byte big-endian meta value.
pub fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}
