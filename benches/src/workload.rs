//! What one request of each workload is.
//!
//! - `put`: one `Put` of a key from the key space (random, or in sequence).
//! - `range`: one `Range` of a key, a key range or a prefix, linearizable
//!   (`l`) or serializable (`s`), with an optional limit.
//! - `txn-put`: kube-apiserver's update: read the key (its `mod_revision`,
//!   0 if absent), then `Txn` *if mod_revision == r then put else get*. Both
//!   requests count as one operation (one latency); a `Txn` whose compare
//!   failed (another client wrote the key in between) is a *conflict*,
//!   counted apart, not an error.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::rng::Rng;

/// Keys `<prefix><index>`, the index zero-padded to `key_size` bytes in
/// total, from a key space of `space` keys.
#[derive(Clone, Debug)]
pub struct KeyGen {
    prefix: String,
    width: usize,
    space: u64,
    sequential: bool,
}

impl KeyGen {
    /// Keys of `key_size` bytes (prefix included) from `space` keys;
    /// `sequential`: request `n` uses key `n % space`, else a random one.
    ///
    /// # Errors
    /// If `space` is 0 or its indexes do not fit in `key_size` bytes after
    /// the prefix.
    pub fn new(
        prefix: &str,
        key_size: usize,
        space: u64,
        sequential: bool,
    ) -> Result<KeyGen, String> {
        if space == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        let digits = (space - 1).to_string().len();
        if key_size < prefix.len() + digits {
            return Err(format!(
                "--key-size {key_size} is too small: the prefix {prefix:?} and {digits} digit(s) \
                 for --key-space-size {space} need {}",
                prefix.len() + digits
            ));
        }
        Ok(KeyGen {
            prefix: prefix.to_string(),
            width: key_size - prefix.len(),
            space,
            sequential,
        })
    }

    /// The key with index `i` (taken modulo the key space).
    pub fn key_at(&self, i: u64) -> Vec<u8> {
        format!(
            "{}{:0width$}",
            self.prefix,
            i % self.space,
            width = self.width
        )
        .into_bytes()
    }

    /// The key for request number `seq`.
    pub fn key(&self, seq: u64, rng: &mut Rng) -> Vec<u8> {
        if self.sequential {
            self.key_at(seq)
        } else {
            self.key_at(rng.below(self.space))
        }
    }
}

/// A value of `len` random bytes (incompressible, as etcd's tool).
pub fn value(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Read consistency of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (the default): confirmed with the leader.
    Linearizable,
    /// Serializable: served from the member's local state.
    Serializable,
}

impl Consistency {
    /// `l` or `s`, as etcd's tool.
    ///
    /// # Errors
    /// On anything else.
    pub fn parse(s: &str) -> Result<Consistency, String> {
        match s {
            "l" | "linearizable" => Ok(Consistency::Linearizable),
            "s" | "serializable" => Ok(Consistency::Serializable),
            _ => Err(format!("--consistency must be l or s, not {s:?}")),
        }
    }

    /// `l` or `s`.
    pub fn letter(self) -> &'static str {
        match self {
            Consistency::Linearizable => "l",
            Consistency::Serializable => "s",
        }
    }

    fn apply(self, o: GetOptions) -> GetOptions {
        match self {
            Consistency::Linearizable => o,
            Consistency::Serializable => o.with_serializable(),
        }
    }
}

/// One workload: what each request does.
#[derive(Clone, Debug)]
pub enum Workload {
    /// `put`.
    Put {
        /// Keys.
        keys: KeyGen,
        /// Value size in bytes.
        val_size: usize,
    },
    /// `range`.
    Range {
        /// The key (or start of the range, or the prefix).
        key: Vec<u8>,
        /// End of the range (exclusive), if any.
        end: Option<Vec<u8>>,
        /// Range over every key starting with `key`.
        prefix: bool,
        /// At most this many keys (0: no limit).
        limit: i64,
        /// Read consistency.
        consistency: Consistency,
    },
    /// `txn-put`.
    TxnPut {
        /// Keys.
        keys: KeyGen,
        /// Value size in bytes.
        val_size: usize,
        /// Consistency of the read before the transaction.
        read: Consistency,
    },
    /// `watch-latency` (run by [`crate::streams::watch_latency`]).
    WatchLatency {
        /// Watchers.
        watchers: usize,
        /// Key prefix watched and written.
        prefix: String,
        /// With `--total 0`: how long to hold the idle watchers.
        hold_s: f64,
    },
    /// `lease-keepalive` (run by [`crate::streams::lease_keepalive`]).
    LeaseKeepalive {
        /// Leases (TTL 60), one keep-alive stream each.
        leases: usize,
    },
}

/// How a successful operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// As intended.
    Done,
    /// `txn-put` only: the compare failed (the key changed in between).
    Conflict,
}

impl Workload {
    /// The subcommand's name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::WatchLatency { .. } => "watch-latency",
            Workload::LeaseKeepalive { .. } => "lease-keepalive",
        }
    }

    /// The workload's parameters, for the report.
    pub fn params(&self) -> serde_json::Value {
        match self {
            Workload::Put { keys, val_size } => serde_json::json!({
                "key_size": keys.prefix.len() + keys.width,
                "key_prefix": keys.prefix,
                "val_size": val_size,
                "key_space_size": keys.space,
                "sequential_keys": keys.sequential,
            }),
            Workload::Range {
                key,
                end,
                prefix,
                limit,
                consistency,
            } => serde_json::json!({
                "key": String::from_utf8_lossy(key),
                "end": end.as_ref().map(|e| String::from_utf8_lossy(e).into_owned()),
                "prefix": prefix,
                "limit": limit,
                "consistency": consistency.letter(),
            }),
            Workload::TxnPut {
                keys,
                val_size,
                read,
            } => serde_json::json!({
                "key_size": keys.prefix.len() + keys.width,
                "key_prefix": keys.prefix,
                "val_size": val_size,
                "key_space_size": keys.space,
                "sequential_keys": keys.sequential,
                "read_consistency": read.letter(),
            }),
            Workload::WatchLatency {
                watchers,
                prefix,
                hold_s,
            } => serde_json::json!({
                "watchers": watchers,
                "key_prefix": prefix,
                "hold_s": hold_s,
                "latency_from": "before sending the put (as etcd's benchmark)",
            }),
            Workload::LeaseKeepalive { leases } => serde_json::json!({
                "leases": leases,
                "ttl_s": 60,
                "latency_from": "sending the keep-alive to its response",
            }),
        }
    }

    /// Runs request number `seq` on `client`.
    ///
    /// # Errors
    /// The client's error, as returned.
    pub async fn run_one(
        &self,
        client: &mut Client,
        seq: u64,
        rng: &mut Rng,
    ) -> Result<Outcome, etcd_client::Error> {
        match self {
            Workload::Put { keys, val_size } => {
                let key = keys.key(seq, rng);
                client.put(key, value(*val_size, rng), None).await?;
                Ok(Outcome::Done)
            }
            Workload::Range {
                key,
                end,
                prefix,
                limit,
                consistency,
            } => {
                let mut o = consistency.apply(GetOptions::new());
                if *prefix {
                    o = o.with_prefix();
                } else if let Some(end) = end {
                    o = o.with_range(end.clone());
                }
                if *limit > 0 {
                    o = o.with_limit(*limit);
                }
                client.get(key.clone(), Some(o)).await?;
                Ok(Outcome::Done)
            }
            Workload::TxnPut {
                keys,
                val_size,
                read,
            } => {
                let key = keys.key(seq, rng);
                let got = client
                    .get(key.clone(), Some(read.apply(GetOptions::new())))
                    .await?;
                let rev = got.kvs().first().map_or(0, |kv| kv.mod_revision());
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key.clone(), value(*val_size, rng), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = client.txn(txn).await?;
                Ok(if resp.succeeded() {
                    Outcome::Done
                } else {
                    Outcome::Conflict
                })
            }
            // Stream workloads run whole, not request by request.
            Workload::WatchLatency { .. } | Workload::LeaseKeepalive { .. } => Ok(Outcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_bounded() {
        let k = KeyGen::new("", 8, 1, false).unwrap();
        assert_eq!(k.key_at(0), b"00000000");
        let k = KeyGen::new("b/", 8, 1000, true).unwrap();
        assert_eq!(k.key_at(42), b"b/000042");
        assert_eq!(k.key_at(1042), b"b/000042");
        let mut rng = Rng::new(3);
        assert_eq!(k.key(7, &mut rng), b"b/000007");
        assert!(KeyGen::new("", 2, 1000, false).is_err());
        assert!(KeyGen::new("", 3, 1000, false).is_ok());
        assert!(KeyGen::new("", 8, 0, false).is_err());
        let k = KeyGen::new("", 4, 10, false).unwrap();
        for s in 0..100 {
            let key = k.key(s, &mut rng);
            assert_eq!(key.len(), 4);
            assert!(key.starts_with(b"000"));
        }
    }

    #[test]
    fn consistency_letters() {
        assert_eq!(Consistency::parse("l"), Ok(Consistency::Linearizable));
        assert_eq!(Consistency::parse("s"), Ok(Consistency::Serializable));
        assert!(Consistency::parse("x").is_err());
    }
}
