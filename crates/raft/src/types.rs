//! openraft's type configuration for Ballast, and the replicated payloads.

use std::fmt;
use std::io::Cursor;

use ballast_mvcc::CommandResponse;
use ballast_proto::ballastpb::{apply_result, ApplyError, ApplyResult, Command};
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

/// A replicated request: one engine command.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The command the engine applies.
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}",
            self.command.op.as_ref().map(std::mem::discriminant)
        )
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.command.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes_like::Bytes = Deserialize::deserialize(d)?;
        let command = Command::decode(bytes.0.as_slice()).map_err(serde::de::Error::custom)?;
        Ok(Request { command })
    }
}

/// The outcome of applying one log entry: `None` for entries that carry no
/// command (blank and membership entries).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The engine's answer to the command.
    pub result: Option<Result<CommandResponse, ballast_mvcc::Error>>,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded: Option<Vec<u8>> = self.result.as_ref().map(|r| to_proto(r).encode_to_vec());
        encoded.map(serde_bytes_like::Bytes).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Option<serde_bytes_like::Bytes> = Deserialize::deserialize(d)?;
        let result = match bytes {
            None => None,
            Some(b) => {
                let r = ApplyResult::decode(b.0.as_slice()).map_err(serde::de::Error::custom)?;
                Some(from_proto(r).map_err(serde::de::Error::custom)?)
            }
        };
        Ok(Response { result })
    }
}

fn to_proto(r: &Result<CommandResponse, ballast_mvcc::Error>) -> ApplyResult {
    use apply_result::Result as R;
    use ballast_mvcc::Error as E;
    let result = match r {
        Ok(CommandResponse::Put(x)) => R::Put(x.clone()),
        Ok(CommandResponse::DeleteRange(x)) => R::DeleteRange(x.clone()),
        Ok(CommandResponse::Txn(x)) => R::Txn(x.clone()),
        Ok(CommandResponse::Compaction(x)) => R::Compaction(x.clone()),
        Err(e) => {
            let (kind, message, index) = match e {
                E::Compacted => ("compacted", String::new(), 0),
                E::FutureRev => ("future_rev", String::new(), 0),
                E::KeyNotFound => ("key_not_found", String::new(), 0),
                E::LeaseNotFound => ("lease_not_found", String::new(), 0),
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

fn from_proto(r: ApplyResult) -> Result<Result<CommandResponse, ballast_mvcc::Error>, String> {
    use apply_result::Result as R;
    use ballast_mvcc::Error as E;
    Ok(match r.result.ok_or("empty apply result")? {
        R::Put(x) => Ok(CommandResponse::Put(x)),
        R::DeleteRange(x) => Ok(CommandResponse::DeleteRange(x)),
        R::Txn(x) => Ok(CommandResponse::Txn(x)),
        R::Compaction(x) => Ok(CommandResponse::Compaction(x)),
        R::Error(e) => Err(match e.kind.as_str() {
            "compacted" => E::Compacted,
            "future_rev" => E::FutureRev,
            "key_not_found" => E::KeyNotFound,
            "lease_not_found" => E::LeaseNotFound,
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
    use ballast_proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    #[test]
    fn payloads_round_trip_through_bincode() {
        let req = Request {
            command: Command {
                op: Some(Op::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7; 100],
                    ..Default::default()
                })),
            },
        };
        let bytes = bincode::serialize(&req).unwrap();
        assert!(bytes.len() < 130, "compact encoding, got {}", bytes.len());
        assert_eq!(bincode::deserialize::<Request>(&bytes).unwrap(), req);
        for result in [
            None,
            Some(Ok(CommandResponse::Put(PutResponse {
                header: Some(ResponseHeader {
                    revision: 3,
                    ..Default::default()
                }),
                prev_kv: None,
            }))),
            Some(Err(ballast_mvcc::Error::Compacted)),
            Some(Err(ballast_mvcc::Error::AlreadyApplied(9))),
        ] {
            let r = Response { result };
            let b = bincode::serialize(&r).unwrap();
            assert_eq!(bincode::deserialize::<Response>(&b).unwrap(), r);
            let j = serde_json::to_vec(&r).unwrap();
            assert_eq!(serde_json::from_slice::<Response>(&j).unwrap(), r);
        }
    }
}
