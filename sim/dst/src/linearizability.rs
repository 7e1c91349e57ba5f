//! A linearizability checker for one register (one block), in the manner
//! of Wing & Gong with Lowe's memoization: search for an order of the
//! operations that respects real time (an operation that completed before
//! another began comes first) and register semantics (a read returns the
//! latest write before it).
//!
//! Extensions for a storage system with faults:
//! - an *optional* write may or may not have taken effect (it failed, or
//!   its node crashed before answering); if it did, it did so within its
//!   interval;
//! - a *havoc* marks a crash that lost writes not yet flushed: at that
//!   instant the register may hold any value written so far or anywhere in
//!   the same piece (a superset of what the crash can leave: conservative).
//!
//! The history is cut at quiescent points (no operation in flight) and the
//! pieces checked in turn, carrying the set of possible values across.

use std::collections::{BTreeSet, HashSet};

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote this value.
    Write(u64),
    /// Read this value.
    Read(u64),
    /// Lost unflushed writes: the value may become any written before.
    Havoc,
}

/// One operation on the register; times in any monotonic unit.
#[derive(Clone, Debug)]
pub struct Op {
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked.
    pub invoke: u64,
    /// When its answer arrived (or by when it took effect, if optional).
    pub complete: u64,
    /// It may not have taken effect (writes only).
    pub optional: bool,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every answer.
    Linearizable,
    /// No order does; `detail` shows the piece that failed.
    Violation {
        /// The failing piece of the history, with the values possible before it.
        detail: String,
    },
    /// A piece was too large to search (counted, not failed).
    TooLarge,
}

/// Operations in one piece the search handles.
const PIECE_OPS_MAX: usize = 128;
/// States the search may remember per piece.
const MEMO_STATES_MAX: usize = 2_000_000;

/// Checks a register that starts at `initial`.
pub fn check(ops: &[Op], initial: u64) -> Verdict {
    let mut ops: Vec<Op> = ops.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.complete));
    let mut states: BTreeSet<u64> = BTreeSet::from([initial]);
    let mut written: BTreeSet<u64> = BTreeSet::from([initial]);
    let mut start = 0;
    while start < ops.len() {
        let mut end = start + 1;
        let mut horizon = ops[start].complete;
        while end < ops.len() && ops[end].invoke <= horizon {
            horizon = horizon.max(ops[end].complete);
            end += 1;
        }
        let piece = &ops[start..end];
        if piece.len() > PIECE_OPS_MAX {
            return Verdict::TooLarge;
        }
        // Values a havoc in this piece may produce: any written so far or in it.
        for o in piece {
            if let OpKind::Write(v) = o.kind {
                written.insert(v);
            }
        }
        let mut search = Search { ops: piece, havoc: &written, memo: HashSet::new(), finals: BTreeSet::new(), too_large: false };
        for &s in &states {
            search.dfs(0, s);
        }
        if search.too_large {
            return Verdict::TooLarge;
        }
        if search.finals.is_empty() {
            let shown: Vec<String> = piece
                .iter()
                .map(|o| format!("{:?} [{}, {}]{}", o.kind, o.invoke, o.complete, if o.optional { " optional" } else { "" }))
                .collect();
            return Verdict::Violation { detail: format!("possible values before: {states:?}; operations: {}", shown.join("; ")) };
        }
        states = search.finals;
        start = end;
    }
    Verdict::Linearizable
}

struct Search<'a> {
    ops: &'a [Op],
    havoc: &'a BTreeSet<u64>,
    memo: HashSet<(u128, u64)>,
    finals: BTreeSet<u64>,
    too_large: bool,
}

impl Search<'_> {
    fn dfs(&mut self, done: u128, value: u64) {
        if self.too_large || !self.memo.insert((done, value)) {
            return;
        }
        if self.memo.len() > MEMO_STATES_MAX {
            self.too_large = true;
            return;
        }
        let pending = |i: usize| done & (1u128 << i) == 0;
        let bound = (0..self.ops.len()).filter(|&i| pending(i) && !self.ops[i].optional).map(|i| self.ops[i].complete).min();
        if bound.is_none() {
            // Every operation that must have happened has: the rest are
            // optional writes that may never have taken effect.
            self.finals.insert(value);
        }
        let bound = bound.unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if !pending(i) || self.ops[i].invoke > bound {
                continue;
            }
            let op = &self.ops[i];
            // Optional writes that ended before this one began never happened.
            let mut next = done | (1u128 << i);
            for j in 0..self.ops.len() {
                if pending(j) && j != i && self.ops[j].optional && self.ops[j].complete < op.invoke {
                    next |= 1u128 << j;
                }
            }
            match &op.kind {
                OpKind::Write(v) => self.dfs(next, *v),
                OpKind::Read(v) if *v == value => self.dfs(next, value),
                OpKind::Read(_) => {}
                OpKind::Havoc => {
                    let values: Vec<u64> = self.havoc.iter().copied().collect();
                    for v in values {
                        self.dfs(next, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u64, i: u64, c: u64) -> Op {
        Op { kind: OpKind::Write(v), invoke: i, complete: c, optional: false }
    }
    fn r(v: u64, i: u64, c: u64) -> Op {
        Op { kind: OpKind::Read(v), invoke: i, complete: c, optional: false }
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        assert_eq!(check(&[w(1, 0, 10), r(1, 20, 30)], 0), Verdict::Linearizable);
        assert!(matches!(check(&[w(1, 0, 10), r(0, 20, 30)], 0), Verdict::Violation { .. }));
    }

    #[test]
    fn overlapping_operations_may_go_either_way() {
        assert_eq!(check(&[w(1, 0, 10), r(0, 5, 15)], 0), Verdict::Linearizable);
        assert_eq!(check(&[w(1, 0, 10), r(1, 5, 15)], 0), Verdict::Linearizable);
        // Two reads that disagree about the order of one write and a later read.
        assert!(matches!(check(&[w(1, 0, 100), r(1, 10, 20), r(0, 30, 40)], 0), Verdict::Violation { .. }));
    }

    #[test]
    fn an_optional_write_may_or_may_not_have_happened() {
        let failed = Op { kind: OpKind::Write(7), invoke: 0, complete: 10, optional: true };
        assert_eq!(check(&[failed.clone(), r(7, 20, 30)], 0), Verdict::Linearizable);
        assert_eq!(check(&[failed.clone(), r(0, 20, 30)], 0), Verdict::Linearizable);
        assert!(matches!(check(&[failed, r(7, 20, 30), r(0, 40, 50)], 0), Verdict::Violation { .. }));
    }

    #[test]
    fn a_havoc_allows_any_earlier_value_once() {
        let havoc = Op { kind: OpKind::Havoc, invoke: 50, complete: 50, optional: false };
        let ops = [w(1, 0, 10), w(2, 20, 30), havoc, r(1, 60, 70), r(1, 80, 90)];
        assert_eq!(check(&ops, 0), Verdict::Linearizable);
        let ops = [w(1, 0, 10), w(2, 20, 30), r(1, 60, 70)];
        assert!(matches!(check(&ops, 0), Verdict::Violation { .. }), "without the crash, the older value is stale");
    }
}
