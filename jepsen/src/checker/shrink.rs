//! Shrinking a non-linearizable register history to a small failing
//! window: the operations of one stretch of time that are not
//! linearizable by themselves, whatever the register held before.
//!
//! A window `[from, to]` keeps the operations invoked in it. Its check is
//! an over-approximation of the full history, so a window that still fails
//! is a real witness: the register may start with any value written before
//! `from` (or be absent); an operation still running at `to`, or one that
//! began before `from` and ended inside, is kept as one of unknown outcome
//! (a write or cas that may take effect anywhere after `from`, or never),
//! and such reads are dropped.

use std::time::Instant;

use super::linearizable::{check_from, Limits, LinOp, Outcome, RegOp};

/// The window `[from, to]` of `ops` as a history of its own, with the
/// original index of each operation kept.
fn window(ops: &[LinOp], from: u64, to: u64) -> (Vec<LinOp>, Vec<usize>, Vec<Option<u64>>) {
    let mut initial = vec![None];
    let (mut out, mut idx) = (Vec::new(), Vec::new());
    for (i, o) in ops.iter().enumerate() {
        let written = match o.op {
            RegOp::Write(v) | RegOp::Cas(_, v) => Some(v),
            _ => None,
        };
        if o.call < from {
            initial.extend(written.map(Some));
            // Still running at `from`: it may take effect inside.
            if o.ret.is_none_or(|r| r >= from) && written.is_some() {
                out.push(LinOp {
                    call: from,
                    ret: None,
                    op: o.op,
                });
                idx.push(i);
            }
            continue;
        }
        if o.call > to {
            continue;
        }
        match o.ret {
            Some(r) if r <= to => {
                out.push(*o);
                idx.push(i);
            }
            _ if written.is_some() => {
                out.push(LinOp { ret: None, ..*o });
                idx.push(i);
            }
            _ => {}
        }
    }
    (out, idx, initial)
}

fn fails(ops: &[LinOp], from: u64, to: u64, deadline: Instant) -> bool {
    let (w, _, initial) = window(ops, from, to);
    let limits = Limits {
        deadline,
        max_bytes: 64 << 20,
    };
    matches!(check_from(&w, initial, limits), Outcome::NotLinearizable(_))
}

/// The indices (into `ops`) of a small window that is not linearizable on
/// its own, found by moving its start as late and then its end as early
/// as possible; `None` if even the whole history passes as a window or
/// `deadline` comes first.
pub fn shrink(ops: &[LinOp], deadline: Instant) -> Option<Vec<usize>> {
    let mut calls: Vec<u64> = ops.iter().map(|o| o.call).collect();
    calls.sort_unstable();
    calls.dedup();
    let mut rets: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    rets.sort_unstable();
    rets.dedup();
    let end = u64::MAX - 1;
    let (&first, _) = calls.split_first()?;
    if !fails(ops, first, end, deadline) {
        return None;
    }
    // The latest start that still fails (binary search over call times;
    // `lo` always fails).
    let (mut lo, mut hi) = (0usize, calls.len());
    while hi - lo > 1 {
        if Instant::now() >= deadline {
            return None;
        }
        let mid = (lo + hi) / 2;
        if fails(ops, calls[mid], end, deadline) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let from = calls[lo];
    // The earliest end that still fails (`hi` always fails).
    let rets: Vec<u64> = rets.into_iter().filter(|&r| r >= from).collect();
    let (mut lo, mut hi) = (0usize, rets.len());
    if rets.is_empty() || !fails(ops, from, rets[hi - 1], deadline) {
        return Some(window(ops, from, end).1);
    }
    hi -= 1;
    while hi > lo {
        if Instant::now() >= deadline {
            return None;
        }
        let mid = (lo + hi) / 2;
        if fails(ops, from, rets[mid], deadline) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(window(ops, from, rets[hi]).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use RegOp::*;

    fn op(call: u64, ret: u64, op: RegOp) -> LinOp {
        LinOp {
            call,
            ret: Some(ret),
            op,
        }
    }

    #[test]
    fn a_stale_read_shrinks_to_the_write_and_the_read() {
        let mut h = Vec::new();
        // A long valid prefix, then a stale read, then more valid ops.
        for i in 0..50u64 {
            h.push(op(i * 100, i * 100 + 10, Write(i + 1)));
            h.push(op(i * 100 + 20, i * 100 + 30, Read(Some(i + 1))));
        }
        h.push(op(6000, 6010, Write(500)));
        h.push(op(6020, 6030, Read(Some(50)))); // stale: 500 was written
        for i in 0..20u64 {
            h.push(op(7000 + i * 100, 7010 + i * 100, Write(600 + i)));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let w = shrink(&h, deadline).expect("a failing window");
        assert!(w.len() <= 3, "{w:?}");
        assert!(w.contains(&101), "{w:?}");
        // A valid history does not shrink to anything.
        h.remove(101);
        assert_eq!(shrink(&h, deadline), None);
    }

    #[test]
    fn a_window_never_fails_where_the_history_passes() {
        // Concurrent write and read: valid; the window must agree even
        // though the write began before it.
        let h = vec![op(0, 100, Write(1)), op(50, 60, Read(Some(1)))];
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(!fails(&h, 50, u64::MAX - 1, deadline));
        assert!(!fails(&h, 0, u64::MAX - 1, deadline));
    }
}
