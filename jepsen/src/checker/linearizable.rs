//! Linearizability of single registers: the Wing–Gong–Lowe search with
//! Lowe's memoization (as in porcupine), bounded in time and memory.
//!
//! The model is a register holding `None` (absent key) or a number.
//! Operations that may or may not have taken effect (`info`) are open until
//! the end of the history and are nondeterministic (applied or not); the
//! search therefore runs over *sets* of possible register values, which is
//! the usual subset construction and stays small for a register.

use std::collections::HashSet;
use std::time::Instant;

/// A value read that no write can have produced (unparseable data).
pub const GARBLED: u64 = u64::MAX;

/// One register operation as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// A read that returned this value.
    Read(Option<u64>),
    /// A write of this value.
    Write(u64),
    /// Compare-and-set: if the value is `.0`, set `.1`.
    Cas(u64, u64),
    /// A compare-and-set that executed and found the value was not `.0`.
    CasFailed(u64),
}

/// An operation with its real-time interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinOp {
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` if its outcome is unknown (it may take
    /// effect at any point after `call`, or never).
    pub ret: Option<u64>,
    /// What it did.
    pub op: RegOp,
}

/// Where the search got stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the operation whose completion could not be passed at the
    /// deepest point of the search.
    pub op: usize,
    /// How many operations were linearized at that point.
    pub linearized: usize,
    /// The register values possible just before it.
    pub states: Vec<Option<u64>>,
}

/// The answer of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable(Failure),
    /// The search ran out of time or memory.
    Unknown(String),
}

/// Bounds of one search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Give up at this instant.
    pub deadline: Instant,
    /// Give up when the memoized configurations take about this many bytes.
    pub max_bytes: usize,
}

type States = Vec<Option<u64>>;

/// The possible values after `op`, from the possible values `s` before it;
/// `None` if `op` cannot happen in any of them.
fn step(s: &States, op: &LinOp) -> Option<States> {
    let definite = op.ret.is_some();
    let mut out: States = match (op.op, definite) {
        (RegOp::Read(v), _) => s.iter().copied().filter(|x| *x == v).collect(),
        (RegOp::Write(v), true) => vec![Some(v)],
        (RegOp::Write(v), false) => {
            let mut o = s.clone();
            o.push(Some(v));
            o
        }
        (RegOp::Cas(e, n), true) => {
            if s.contains(&Some(e)) {
                vec![Some(n)]
            } else {
                Vec::new()
            }
        }
        (RegOp::Cas(e, n), false) => {
            let mut o = s.clone();
            if s.contains(&Some(e)) {
                o.push(Some(n));
            }
            o
        }
        (RegOp::CasFailed(e), _) => s.iter().copied().filter(|x| *x != Some(e)).collect(),
    };
    if out.is_empty() {
        return None;
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    call: bool,
    prev: usize,
    next: usize,
    /// For a call, its return node.
    ret: usize,
}

/// The doubly linked list of call and return entries, node 0 the head.
struct Entries {
    n: Vec<Node>,
}

impl Entries {
    fn new(ops: &[LinOp]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times,
        // so operations touching in time count as concurrent.
        let mut ev: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            ev.push((o.call, false, i));
            ev.push((o.ret.unwrap_or(u64::MAX), true, i));
        }
        ev.sort_unstable();
        let mut n = vec![Node {
            op: NIL,
            call: false,
            prev: NIL,
            next: NIL,
            ret: NIL,
        }];
        let mut call_node = vec![NIL; ops.len()];
        for (k, &(_, is_ret, op)) in ev.iter().enumerate() {
            let idx = k + 1;
            n.push(Node {
                op,
                call: !is_ret,
                prev: idx - 1,
                next: if k + 1 < ev.len() { idx + 1 } else { NIL },
                ret: NIL,
            });
            if is_ret {
                n[call_node[op]].ret = idx;
            } else {
                call_node[op] = idx;
            }
        }
        n[0].next = if ev.is_empty() { NIL } else { 1 };
        Entries { n }
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.n[i];
        self.n[prev].next = next;
        if next != NIL {
            self.n[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.n[i];
        self.n[prev].next = i;
        if next != NIL {
            self.n[next].prev = i;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.n[call].ret);
    }

    /// Undoes [`Entries::lift`].
    fn unlift(&mut self, call: usize) {
        self.relink(self.n[call].ret);
        self.relink(call);
    }
}

/// A set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Searches for a linearization of `ops` from an absent key.
pub fn check(ops: &[LinOp], limits: Limits) -> Outcome {
    check_from(ops, vec![None], limits)
}

/// Searches for a linearization of `ops` from any of the register values
/// in `initial` (which must not be empty).
pub fn check_from(ops: &[LinOp], mut initial: Vec<Option<u64>>, limits: Limits) -> Outcome {
    let mut list = Entries::new(ops);
    initial.sort_unstable();
    initial.dedup();
    let mut state: States = initial;
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, States)> = HashSet::new();
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut best: Option<Failure> = None;
    let mut entry = list.n[0].next;
    let mut steps: u64 = 0;
    // A configuration: the bit set, a few values, and the table's overhead.
    let per_state = linearized.0.len() * 8 + 96;
    let max_states = (limits.max_bytes / per_state).max(1);
    loop {
        let first = list.n[0].next;
        // Done when every completed operation is linearized: what is left
        // are operations of unknown outcome, which may never have happened.
        if first == NIL || (!list.n[first].call && ops[list.n[first].op].ret.is_none()) {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(4096) {
            if Instant::now() >= limits.deadline {
                return Outcome::Unknown(format!(
                    "search timed out after {steps} steps ({} ops)",
                    ops.len()
                ));
            }
            if cache.len() > max_states {
                return Outcome::Unknown(format!(
                    "search gave up after {} configurations ({} ops)",
                    cache.len(),
                    ops.len()
                ));
            }
        }
        let node = list.n[entry];
        if node.call {
            if let Some(next) = step(&state, &ops[node.op]) {
                linearized.set(node.op);
                if cache.insert((linearized.clone(), next.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    list.lift(entry);
                    entry = list.n[0].next;
                    continue;
                }
                linearized.clear(node.op);
            }
            entry = node.next;
        } else {
            // A completion whose operation could not be placed: backtrack.
            if best.as_ref().is_none_or(|b| stack.len() > b.linearized) {
                best = Some(Failure {
                    op: node.op,
                    linearized: stack.len(),
                    states: state.clone(),
                });
            }
            let Some((call, prev)) = stack.pop() else {
                return Outcome::NotLinearizable(best.unwrap_or(Failure {
                    op: node.op,
                    linearized: 0,
                    states: state,
                }));
            };
            linearized.clear(list.n[call].op);
            state = prev;
            list.unlift(call);
            entry = list.n[call].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            deadline: Instant::now() + Duration::from_secs(10),
            max_bytes: 256 << 20,
        }
    }
    fn op(call: u64, ret: u64, op: RegOp) -> LinOp {
        LinOp {
            call,
            ret: Some(ret),
            op,
        }
    }
    fn info(call: u64, op: RegOp) -> LinOp {
        LinOp {
            call,
            ret: None,
            op,
        }
    }
    use RegOp::*;

    #[test]
    fn empty_and_sequential_histories() {
        assert_eq!(check(&[], limits()), Outcome::Linearizable);
        let h = [
            op(0, 1, Read(None)),
            op(2, 3, Write(1)),
            op(4, 5, Read(Some(1))),
            op(6, 7, Cas(1, 2)),
            op(8, 9, Read(Some(2))),
            op(10, 11, CasFailed(1)),
        ];
        assert_eq!(check(&h, limits()), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_is_caught() {
        let h = [
            op(0, 10, Write(1)),
            op(20, 30, Write(2)),
            op(40, 50, Read(Some(1))),
        ];
        match check(&h, limits()) {
            Outcome::NotLinearizable(f) => {
                assert_eq!(f.op, 2);
                assert_eq!(f.states, vec![Some(2)]);
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn concurrency_allows_either_order() {
        // The read overlaps both writes: it may see either.
        let h = [
            op(0, 100, Write(1)),
            op(10, 110, Write(2)),
            op(50, 60, Read(Some(1))),
            op(200, 210, Read(Some(2))),
        ];
        assert_eq!(check(&h, limits()), Outcome::Linearizable);
        // Two sequential reads cannot see 2 then 1 after both writes ended.
        let h = [
            op(0, 100, Write(1)),
            op(10, 110, Write(2)),
            op(200, 210, Read(Some(2))),
            op(220, 230, Read(Some(1))),
        ];
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
    }

    #[test]
    fn info_ops_may_or_may_not_happen() {
        let base = [op(0, 1, Write(1)), info(2, Write(2))];
        for reads in [
            vec![Some(1)],
            vec![Some(2)],
            vec![Some(1), Some(2)],
            vec![Some(1), Some(1)],
        ] {
            let mut h = base.to_vec();
            for (i, r) in reads.iter().enumerate() {
                h.push(op(10 + 10 * i as u64, 15 + 10 * i as u64, Read(*r)));
            }
            assert_eq!(check(&h, limits()), Outcome::Linearizable, "{reads:?}");
        }
        // Once seen, the write cannot be undone.
        let mut h = base.to_vec();
        h.push(op(10, 15, Read(Some(2))));
        h.push(op(20, 25, Read(Some(1))));
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
        // An indeterminate cas only applies if its precondition held.
        let h = [
            op(0, 1, Write(1)),
            info(2, Cas(5, 6)),
            op(10, 11, Read(Some(6))),
        ];
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
        let h = [
            op(0, 1, Write(1)),
            info(2, Cas(1, 6)),
            op(10, 11, Read(Some(6))),
        ];
        assert_eq!(check(&h, limits()), Outcome::Linearizable);
    }

    #[test]
    fn failed_cas_is_a_constraint() {
        let h = [op(0, 1, Write(1)), op(2, 3, CasFailed(1))];
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
        let h = [
            op(0, 1, Write(1)),
            info(1, Write(2)),
            op(2, 3, CasFailed(1)),
        ];
        assert_eq!(check(&h, limits()), Outcome::Linearizable);
        // A cas that succeeded needs its expected value.
        let h = [op(0, 1, Write(1)), op(2, 3, Cas(2, 3))];
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
    }

    #[test]
    fn garbled_reads_are_never_linearizable() {
        let h = [op(0, 1, Write(1)), op(2, 3, Read(Some(GARBLED)))];
        assert!(matches!(check(&h, limits()), Outcome::NotLinearizable(_)));
    }

    #[test]
    fn time_bound_gives_unknown() {
        // Many fully concurrent indeterminate writes and reads of values
        // in no particular order: a large search, stopped at once.
        let mut h = Vec::new();
        for i in 0..60u64 {
            h.push(info(i, Write(i)));
            h.push(op(100 + i, 1000, Read(Some((i * 7) % 60))));
        }
        let l = Limits {
            deadline: Instant::now(),
            max_bytes: 1000,
        };
        assert!(matches!(check(&h, l), Outcome::Unknown(_)));
    }

    /// Random histories made by a real register with random concurrency
    /// are linearizable; changing one read to a value that no write
    /// produced makes them not linearizable.
    #[test]
    fn random_histories() {
        let mut rng = Rng::new(42);
        for round in 0..200 {
            let (h, reads) = simulate(&mut rng, 4, 40);
            assert_eq!(check(&h, limits()), Outcome::Linearizable, "round {round}");
            if let Some(&r) = reads.first() {
                let mut bad = h.clone();
                bad[r].op = Read(Some(999_999));
                assert!(
                    matches!(check(&bad, limits()), Outcome::NotLinearizable(_)),
                    "round {round}"
                );
            }
        }
    }

    /// Runs `n` operations of `procs` processes against a register; each
    /// takes effect at a random point of its interval; some lose their
    /// answer (info). Returns the history and the indices of ok reads.
    fn simulate(rng: &mut Rng, procs: usize, n: usize) -> (Vec<LinOp>, Vec<usize>) {
        // (call, effect, ret) per process, sequential within a process.
        let mut t = vec![0u64; procs];
        let mut planned: Vec<(u64, u64, u64, usize, u8, u64, u64)> = Vec::new();
        for next_value in 1..=n as u64 {
            let p = rng.index(procs);
            let call = t[p] + rng.below(5);
            let effect = call + 1 + rng.below(20);
            let ret = effect + 1 + rng.below(20);
            t[p] = ret + 1;
            let kind = rng.below(3) as u8;
            let e = rng.below(next_value) + 1;
            planned.push((effect, call, ret, p, kind, next_value, e));
        }
        planned.sort_unstable();
        let mut reg: Option<u64> = None;
        let mut h = Vec::new();
        let mut reads = Vec::new();
        for (_, call, ret, _, kind, v, e) in planned {
            let lost = rng.chance(0.1);
            let o = match kind {
                0 => {
                    if lost {
                        continue;
                    }
                    reads.push(h.len());
                    Read(reg)
                }
                1 => {
                    reg = Some(v);
                    Write(v)
                }
                _ => {
                    if reg == Some(e) {
                        reg = Some(v);
                        Cas(e, v)
                    } else if lost {
                        Cas(e, v)
                    } else {
                        CasFailed(e)
                    }
                }
            };
            h.push(LinOp {
                call,
                ret: (!lost).then_some(ret),
                op: o,
            });
        }
        (h, reads)
    }
}
