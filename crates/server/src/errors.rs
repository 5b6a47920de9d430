//! etcd's client-facing errors: each maps to the gRPC code and message
//! (`etcdserver: ...`) etcd 3.5 sends, so client libraries classify them.

use tonic::{Code, Status};

/// An error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key, or an empty txn op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More txn operations than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn branch writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An unknown sort order or target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A request over `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The requested revision was compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant named a lease ID that exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// A grant with a TTL above etcd's maximum (9,000,000,000 s).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The backend is over its quota, or a NOSPACE alarm is active.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// MoveLeader to a member that does not exist (or is a learner).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// Downgrade is not implemented by Ballast.
    #[error("etcdserver: downgrade is not supported")]
    DowngradeUnsupported,
    /// No leader is known (an election is going on, or no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The leader changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The request did not complete in time (it may still take effect).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The cluster cannot serve the request now.
    #[error("etcdserver: {0}")]
    Unavailable(String),
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The member's storage failed; it refuses writes until restarted.
    #[error("etcdserver: {0}")]
    Storage(String),
    /// Stored data does not decode.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

impl EtcdError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExist => Code::FailedPrecondition,
            NoSpace => Code::ResourceExhausted,
            BadLeaderTransferee => Code::FailedPrecondition,
            DowngradeUnsupported => Code::Unimplemented,
            Stopped | NoLeader | LeaderChanged | Timeout | Unavailable(_) => Code::Unavailable,
            Storage(_) => Code::Internal,
            Corrupt => Code::DataLoss,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<ballast_mvcc::Error> for EtcdError {
    fn from(e: ballast_mvcc::Error) -> EtcdError {
        use ballast_mvcc::Error as M;
        match e {
            M::Compacted => EtcdError::Compacted,
            M::FutureRev => EtcdError::FutureRev,
            M::KeyNotFound => EtcdError::KeyNotFound,
            M::LeaseNotFound => EtcdError::LeaseNotFound,
            M::LeaseExists => EtcdError::LeaseExist,
            M::NoSpace => EtcdError::NoSpace,
            M::CorruptAlarm => EtcdError::Corrupt,
            M::Corrupt(msg) => {
                tracing::error!(error = %msg, "corrupt data");
                EtcdError::Corrupt
            }
            other => EtcdError::Storage(other.to_string()),
        }
    }
}
