//! The engine's errors.

/// What can go wrong in the engine. Request errors are deterministic: every
/// member applying the same command gets the same one. Storage errors are
/// not, and leave the store refusing further writes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The requested revision is at or below the compaction point and its
    /// history is gone (etcd's `ErrCompacted`).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's (etcd's `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A put named a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A grant named a lease ID that exists already.
    #[error("lease already exists")]
    LeaseExists,
    /// A NOSPACE alarm is active: puts (and txns that put) are refused until
    /// it is disarmed (etcd's `ErrNoSpace`).
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is active: every write is refused until it is
    /// disarmed (etcd's `ErrCorrupt`).
    #[error("corrupt cluster")]
    CorruptAlarm,
    /// The command was applied before (its log index is not new).
    #[error("command at index {0} was already applied")]
    AlreadyApplied(u64),
    /// The data directory cannot be used (another format, corrupt, locked).
    #[error("{0}")]
    Open(String),
    /// Reading or writing the database failed; the store stops accepting
    /// writes, since memory and disk may disagree.
    #[error("storage error: {0}")]
    Storage(String),
    /// Stored data does not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

/// Result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
