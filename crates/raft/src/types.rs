//! openraft's type configuration for Ballast, and the replicated payloads.

use std::fmt;
use std::io::Cursor;

use ballast_mvcc::CommandResponse;
use ballast_proto::ballastpb::{apply_result, ApplyError, ApplyResult, Command, CommandBatch};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member's Raft node ID: its etcd member ID.
pub type NodeId = u64;

/// What the cluster knows about a member, replicated in the membership
/// configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member's name (`--name`); empty until a member added by
    /// `MemberAdd` starts and announces it.
    pub name: String,
    /// URLs peers reach it on (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// URLs clients reach it on (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.name, self.peer_urls)
    }
}

/// A replicated request: a batch of engine commands proposed together
/// (one log entry, one fsync), applied in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The commands the engine applies, in order.
    pub commands: Vec<Command>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} command(s)", self.commands.len())
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let batch = CommandBatch {
            commands: self.commands.clone(),
        };
        s.serialize_bytes(&batch.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes_like::Bytes = Deserialize::deserialize(d)?;
        let batch = CommandBatch::decode(bytes.0.as_slice()).map_err(serde::de::Error::custom)?;
        Ok(Request {
            commands: batch.commands,
        })
    }
}

/// The outcome of applying one log entry: one result per command (none
/// for blank and membership entries).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The engine's answers, in command order.
    pub results: Vec<Result<CommandResponse, ballast_mvcc::Error>>,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<serde_bytes_like::Bytes> = self
            .results
            .iter()
            .map(|r| serde_bytes_like::Bytes(to_proto(r).encode_to_vec()))
            .collect();
        encoded.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let encoded: Vec<serde_bytes_like::Bytes> = Deserialize::deserialize(d)?;
        let mut results = Vec::with_capacity(encoded.len());
        for b in encoded {
            let r = ApplyResult::decode(b.0.as_slice()).map_err(serde::de::Error::custom)?;
            results.push(from_proto(r).map_err(serde::de::Error::custom)?);
        }
        Ok(Response { results })
    }
}

pub(crate) fn to_proto(r: &Result<CommandResponse, ballast_mvcc::Error>) -> ApplyResult {
    use apply_result::Result as R;
    use ballast_mvcc::Error as E;
    let result = match r {
        Ok(CommandResponse::Put(x)) => R::Put(x.clone()),
        Ok(CommandResponse::DeleteRange(x)) => R::DeleteRange(x.clone()),
        Ok(CommandResponse::Txn(x)) => R::Txn(x.clone()),
        Ok(CommandResponse::Compaction(x)) => R::Compaction(*x),
        Ok(CommandResponse::Alarm(x)) => R::Alarm(x.clone()),
        Ok(CommandResponse::LeaseGrant(x)) => R::LeaseGrant(x.clone()),
        Ok(CommandResponse::LeaseRevoke(x)) => R::LeaseRevoke(*x),
        Err(e) => {
            let (kind, message, index) = match e {
                E::Compacted => ("compacted", String::new(), 0),
                E::FutureRev => ("future_rev", String::new(), 0),
                E::KeyNotFound => ("key_not_found", String::new(), 0),
                E::LeaseNotFound => ("lease_not_found", String::new(), 0),
                E::LeaseExists => ("lease_exists", String::new(), 0),
                E::NoSpace => ("no_space", String::new(), 0),
                E::CorruptAlarm => ("corrupt_alarm", String::new(), 0),
                E::AlreadyApplied(i) => ("already_applied", String::new(), *i),
                E::Open(m) => ("open", m.clone(), 0),
                E::Storage(m) => ("storage", m.clone(), 0),
                E::Corrupt(m) => ("corrupt", m.clone(), 0),
                other => ("storage", other.to_string(), 0),
            };
            R::Error(ApplyError {
                kind: kind.to_string(),
                message,
                index,
            })
        }
    };
    ApplyResult {
        result: Some(result),
    }
}

pub(crate) fn from_proto(
    r: ApplyResult,
) -> Result<Result<CommandResponse, ballast_mvcc::Error>, String> {
    use apply_result::Result as R;
    use ballast_mvcc::Error as E;
    Ok(match r.result.ok_or("empty apply result")? {
        R::Put(x) => Ok(CommandResponse::Put(x)),
        R::DeleteRange(x) => Ok(CommandResponse::DeleteRange(x)),
        R::Txn(x) => Ok(CommandResponse::Txn(x)),
        R::Compaction(x) => Ok(CommandResponse::Compaction(x)),
        R::Alarm(x) => Ok(CommandResponse::Alarm(x)),
        R::LeaseGrant(x) => Ok(CommandResponse::LeaseGrant(x)),
        R::LeaseRevoke(x) => Ok(CommandResponse::LeaseRevoke(x)),
        R::Error(e) => Err(match e.kind.as_str() {
            "compacted" => E::Compacted,
            "future_rev" => E::FutureRev,
            "key_not_found" => E::KeyNotFound,
            "lease_not_found" => E::LeaseNotFound,
            "lease_exists" => E::LeaseExists,
            "no_space" => E::NoSpace,
            "corrupt_alarm" => E::CorruptAlarm,
            "already_applied" => E::AlreadyApplied(e.index),
            "open" => E::Open(e.message),
            "corrupt" => E::Corrupt(e.message),
            _ => E::Storage(e.message),
        }),
    })
}

/// Byte strings through serde as a compact byte sequence (bincode writes a
/// length and the bytes).
mod serde_bytes_like {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

openraft::declare_raft_types!(
    /// Ballast's openraft types: engine commands as entries, etcd member
    /// IDs as node IDs, snapshots as files.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

// `declare_raft_types!` refers to `Cursor` in its defaults.
#[allow(dead_code)]
type _Cursor = Cursor<Vec<u8>>;

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// The Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// Storage errors.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log ID.
pub type LogId = openraft::LogId<NodeId>;
/// A stored membership configuration.
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_proto::ballastpb::command::Op;
    use ballast_proto::etcdserverpb::{
        LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, ResponseHeader,
    };

    #[test]
    fn payloads_round_trip_through_bincode() {
        let req = Request {
            commands: vec![Command {
                op: Some(Op::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7; 100],
                    ..Default::default()
                })),
            }],
        };
        let bytes = bincode::serialize(&req).unwrap();
        assert!(bytes.len() < 130, "compact encoding, got {}", bytes.len());
        assert_eq!(bincode::deserialize::<Request>(&bytes).unwrap(), req);
        for results in [
            vec![],
            vec![
                Ok(CommandResponse::Put(PutResponse {
                    header: Some(ResponseHeader {
                        revision: 3,
                        ..Default::default()
                    }),
                    prev_kv: None,
                })),
                Err(ballast_mvcc::Error::Compacted),
                Err(ballast_mvcc::Error::AlreadyApplied(9)),
                Err(ballast_mvcc::Error::LeaseExists),
                Ok(CommandResponse::LeaseGrant(LeaseGrantResponse {
                    header: None,
                    id: 5,
                    ttl: 10,
                    error: String::new(),
                })),
                Ok(CommandResponse::LeaseRevoke(LeaseRevokeResponse {
                    header: None,
                })),
            ],
        ] {
            let r = Response { results };
            let b = bincode::serialize(&r).unwrap();
            assert_eq!(bincode::deserialize::<Response>(&b).unwrap(), r);
            let j = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<Response>(&j).unwrap(), r);
        }
    }
}
