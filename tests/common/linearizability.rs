//! A linearizability checker for single registers (one block each), in
//! the manner of Wing & Gong with Lowe's memoization: search for an order of
//! the operations that respects real time (an operation that completed
//! before another began comes first) and register semantics (a read returns
//! the latest write before it).

use std::collections::HashSet;
use std::time::Instant;

/// One operation on a register.
#[derive(Clone, Debug)]
pub struct Op {
    /// A write (else a read).
    pub write: bool,
    /// The value written, or the value the read returned.
    pub value: u64,
    /// When the client sent it.
    pub invoke: Instant,
    /// When the client had the answer.
    pub complete: Instant,
}

/// Whether the history of one register (initially `initial`) is linearizable.
pub fn linearizable(ops: &[Op], initial: u64) -> bool {
    assert!(ops.len() <= 128, "the checker handles up to 128 operations per register");
    let all: u128 = if ops.len() == 128 { u128::MAX } else { (1u128 << ops.len()) - 1 };
    let mut memo = HashSet::new();
    search(ops, all, 0, initial, &mut memo)
}

fn search(ops: &[Op], all: u128, done: u128, value: u64, memo: &mut HashSet<(u128, u64)>) -> bool {
    if done == all {
        return true;
    }
    if !memo.insert((done, value)) {
        return false;
    }
    let pending = |i: &usize| done & (1u128 << i) == 0;
    let first_completion = (0..ops.len()).filter(pending).map(|i| ops[i].complete).min().expect("some op pending");
    for i in (0..ops.len()).filter(pending) {
        let op = &ops[i];
        if op.invoke > first_completion {
            continue; // some other pending op finished before this one began
        }
        let next = done | (1u128 << i);
        if op.write {
            if search(ops, all, next, op.value, memo) {
                return true;
            }
        } else if op.value == value && search(ops, all, next, value, memo) {
            return true;
        }
    }
    false
}
