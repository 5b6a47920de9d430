//! The writers' side: seeded choices, the operations and their model.

use super::*;

// ---------------------------------------------------------------------------
// Seeded randomness

/// SplitMix64: small, seedable, good enough for choices.
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    pub(crate) fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.between(lo as i64, hi as i64) as u64)
    }

    /// An independent generator.
    pub(crate) fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// `$BALLAST_TEST_SEED` (decimal or `0x` hex), else a fresh one.
pub(crate) fn seed() -> u64 {
    match std::env::var("BALLAST_TEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| s.parse())
                .unwrap_or_else(|e| panic!("BALLAST_TEST_SEED={s:?}: {e}"))
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

pub(crate) fn key(i: usize) -> String {
    format!("m/{i}")
}

// ---------------------------------------------------------------------------
// The model

/// A key-value as the model and the watchers compare it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) create: i64,
    pub(crate) modr: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
}

impl Kv {
    pub(crate) fn of(kv: &KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create: kv.create_revision(),
            modr: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ev {
    pub(crate) put: bool,
    pub(crate) kv: Kv,
}

/// One change a write makes: PUT with its value, or DELETE.
pub(crate) type Effect = (bool, String, Option<String>);

/// One operation of a txn branch.
#[derive(Clone, Debug)]
pub(crate) enum Sub {
    Put(String, String),
    Del(String),
}

/// One write.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put(String, String),
    Del(String),
    /// Deletes `[from, to)`.
    DelRange(String, String),
    /// `if exists(key) == exists { then } else { els }`.
    Txn {
        key: String,
        exists: bool,
        then: Vec<Sub>,
        els: Vec<Sub>,
    },
}

pub(crate) type State = BTreeMap<String, Kv>;

impl Op {
    /// The branch taken (true for non-txns) and the changes, on `state`.
    pub(crate) fn effects(&self, state: &State) -> (bool, Vec<Effect>) {
        let del = |k: &String, out: &mut Vec<Effect>| {
            if state.contains_key(k) {
                out.push((false, k.clone(), None));
            }
        };
        let mut out = Vec::new();
        match self {
            Op::Put(k, v) => out.push((true, k.clone(), Some(v.clone()))),
            Op::Del(k) => del(k, &mut out),
            Op::DelRange(a, b) => {
                for k in state.range(a.clone()..b.clone()).map(|(k, _)| k) {
                    out.push((false, k.clone(), None));
                }
            }
            Op::Txn {
                key,
                exists,
                then,
                els,
            } => {
                let ok = state.contains_key(key) == *exists;
                // The keys of a branch are distinct: order does not matter
                // for what each op sees.
                for s in if ok { then } else { els } {
                    match s {
                        Sub::Put(k, v) => out.push((true, k.clone(), Some(v.clone()))),
                        Sub::Del(k) => del(k, &mut out),
                    }
                }
                return (ok, out);
            }
        }
        (true, out)
    }
}

/// What became of a write.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Answered: the header revision, whether it changed anything (a put,
    /// or something deleted), and the txn branch.
    Acked {
        rev: i64,
        changed: bool,
        succeeded: bool,
    },
    /// An error or no answer: it may or may not have been applied.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub(crate) struct OpRec {
    pub(crate) writer: usize,
    pub(crate) member: usize,
    pub(crate) op: Op,
    pub(crate) outcome: Outcome,
}

pub(crate) fn gen_op(rng: &mut Rng, writer: usize, seq: u64) -> Op {
    let value = |i: usize| format!("{writer}.{seq}.{i}");
    let subs = |rng: &mut Rng, tag: usize| {
        let n = rng.between(1, 3) as usize;
        let mut keys: Vec<usize> = (0..KEYS).collect();
        (0..n)
            .map(|i| {
                let k = keys.swap_remove(rng.below(keys.len()));
                if rng.percent(70) {
                    Sub::Put(key(k), value(tag * 10 + i))
                } else {
                    Sub::Del(key(k))
                }
            })
            .collect::<Vec<_>>()
    };
    match rng.below(100) {
        0..=34 => Op::Put(key(rng.below(KEYS)), value(0)),
        35..=44 => Op::Del(key(rng.below(KEYS))),
        45..=49 => {
            let a = rng.below(KEYS - 1);
            let b = rng.between(a as i64 + 1, KEYS as i64) as usize;
            Op::DelRange(key(a), key(b))
        }
        _ => Op::Txn {
            key: key(rng.below(KEYS)),
            exists: rng.percent(50),
            then: subs(rng, 1),
            els: subs(rng, 2),
        },
    }
}

pub(crate) fn txn_ops(subs: &[Sub]) -> Vec<TxnOp> {
    subs.iter()
        .map(|s| match s {
            Sub::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
            Sub::Del(k) => TxnOp::delete(k.as_str(), None),
        })
        .collect()
}

pub(crate) async fn execute(c: &mut Client, op: &Op) -> Outcome {
    let rev_of =
        |h: Option<&ballast_e2e::etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    let r = match op {
        Op::Put(k, v) => timed(OP_TIMEOUT, c.put(k.as_str(), v.as_str(), None))
            .await
            .map(|r| (rev_of(r.header()), true, true)),
        Op::Del(k) => timed(OP_TIMEOUT, c.delete(k.as_str(), None))
            .await
            .map(|r| (rev_of(r.header()), r.deleted() > 0, true)),
        Op::DelRange(a, b) => timed(
            OP_TIMEOUT,
            c.delete(
                a.as_str(),
                Some(DeleteOptions::new().with_range(b.as_str())),
            ),
        )
        .await
        .map(|r| (rev_of(r.header()), r.deleted() > 0, true)),
        Op::Txn {
            key,
            exists,
            then,
            els,
        } => {
            let cmp = if *exists {
                CompareOp::Greater
            } else {
                CompareOp::Equal
            };
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), cmp, 0)])
                .and_then(txn_ops(then))
                .or_else(txn_ops(els));
            timed(OP_TIMEOUT, c.txn(txn)).await.map(|r| {
                let changed = r.op_responses().iter().any(|o| match o {
                    TxnOpResponse::Put(_) => true,
                    TxnOpResponse::Delete(d) => d.deleted() > 0,
                    _ => false,
                });
                (rev_of(r.header()), changed, r.succeeded())
            })
        }
    };
    match r {
        Ok((rev, changed, succeeded)) => Outcome::Acked {
            rev,
            changed,
            succeeded,
        },
        Err(e) => Outcome::Unknown(e),
    }
}

// ---------------------------------------------------------------------------
// Writers
