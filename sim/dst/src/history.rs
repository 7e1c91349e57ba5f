//! The history of every block: each host operation's interval and value,
//! per block, for the linearizability check at the end of a run.

use std::collections::{BTreeMap, BTreeSet};

use crate::linearizability::{self, Op, OpKind, Verdict};

/// One host operation in flight, as recorded: the blocks it touches and
/// its entry in each block's history.
#[derive(Clone, Debug)]
pub struct Recorded {
    entries: Vec<(u64, usize)>,
}

/// The histories of all blocks.
#[derive(Debug, Default)]
pub struct History {
    blocks: BTreeMap<u64, Vec<Op>>,
    /// Entries dropped (reads that failed, reads in flight at a crash).
    dropped: BTreeSet<(u64, usize)>,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct CheckSummary {
    /// Blocks checked.
    pub blocks: u64,
    /// Operations checked.
    pub ops: u64,
    /// Blocks whose history was too large to search.
    pub too_large: u64,
}

impl History {
    /// A write of `value` (0: a trim) to `blocks`, invoked at `now`.
    pub fn write(&mut self, blocks: std::ops::Range<u64>, value: u64, now: u64) -> Recorded {
        self.record(blocks, OpKind::Write(value), now)
    }

    /// A read of `blocks`, invoked at `now` (its values come at completion).
    pub fn read(&mut self, blocks: std::ops::Range<u64>, now: u64) -> Recorded {
        self.record(blocks, OpKind::Read(u64::MAX), now)
    }

    fn record(&mut self, blocks: std::ops::Range<u64>, kind: OpKind, now: u64) -> Recorded {
        let entries = blocks
            .map(|b| {
                let ops = self.blocks.entry(b).or_default();
                ops.push(Op { kind: kind.clone(), invoke: now, complete: u64::MAX, optional: false });
                (b, ops.len() - 1)
            })
            .collect();
        Recorded { entries }
    }

    /// The operation completed; for a read, with these values (one per block).
    pub fn complete(&mut self, r: &Recorded, now: u64, read_values: Option<&[u64]>) {
        for (i, &(b, at)) in r.entries.iter().enumerate() {
            let op = &mut self.blocks.get_mut(&b).expect("recorded")[at];
            op.complete = now;
            if let Some(values) = read_values {
                op.kind = OpKind::Read(values[i]);
            }
        }
    }

    /// The operation failed (or its node crashed before answering): a write
    /// may have taken effect by `now`; a read tells nothing.
    pub fn fail(&mut self, r: &Recorded, now: u64) {
        for &(b, at) in &r.entries {
            let op = &mut self.blocks.get_mut(&b).expect("recorded")[at];
            match op.kind {
                OpKind::Write(_) => {
                    op.complete = now;
                    op.optional = true;
                }
                _ => {
                    op.complete = now;
                    self.dropped.insert((b, at));
                }
            }
        }
    }

    /// A crash at `now` may have lost unflushed writes to `block`.
    pub fn havoc(&mut self, block: u64, now: u64) {
        self.blocks.entry(block).or_default().push(Op { kind: OpKind::Havoc, invoke: now, complete: now, optional: false });
    }

    /// Whether a write of `value` to `block` was acknowledged (completed,
    /// not failed).
    pub fn acknowledged_write(&self, block: u64, value: u64) -> bool {
        self.blocks
            .get(&block)
            .is_some_and(|ops| ops.iter().any(|op| op.kind == OpKind::Write(value) && !op.optional && op.complete != u64::MAX))
    }

    /// The latest value a completed, non-optional write gave `block`
    /// (None when a crash or a failed write makes it uncertain).
    pub fn certain_value(&self, block: u64) -> Option<u64> {
        let ops = self.blocks.get(&block)?;
        let mut last: Option<&Op> = None;
        for op in ops {
            match op.kind {
                OpKind::Havoc => return None,
                OpKind::Write(_) if op.optional => return None,
                OpKind::Write(_) => {
                    if op.complete == u64::MAX || last.is_some_and(|l| op.invoke < l.complete) {
                        return None; // concurrent writes: no single latest
                    }
                    last = Some(op);
                }
                OpKind::Read(_) => {}
            }
        }
        last.map(|op| match op.kind {
            OpKind::Write(v) => v,
            _ => unreachable!(),
        })
    }

    /// Checks every block's history; the first violation, or a summary.
    pub fn check(&self) -> Result<CheckSummary, String> {
        let mut summary = CheckSummary::default();
        for (&b, ops) in &self.blocks {
            let kept: Vec<Op> = ops
                .iter()
                .enumerate()
                .filter(|(i, o)| !self.dropped.contains(&(b, *i)) && o.complete != u64::MAX)
                .map(|(_, o)| o.clone())
                .collect();
            assert!(kept.iter().all(|o| o.kind != OpKind::Read(u64::MAX)), "block {b}: a read completed without its value");
            summary.blocks += 1;
            summary.ops += kept.len() as u64;
            match linearizability::check(&kept, 0) {
                Verdict::Linearizable => {}
                Verdict::TooLarge => summary.too_large += 1,
                Verdict::Violation { detail } => {
                    let mut all: Vec<&Op> = kept.iter().collect();
                    all.sort_by_key(|o| o.invoke);
                    let shown: Vec<String> = all
                        .iter()
                        .rev()
                        .take(std::env::var("GEOMIRROR_DST_HISTORY").ok().and_then(|v| v.parse().ok()).unwrap_or(24))
                        .rev()
                        .map(|o| {
                            format!(
                                "{:?} [{:.3}, {:.3}]{}",
                                o.kind,
                                o.invoke as f64 / 1e6,
                                o.complete as f64 / 1e6,
                                if o.optional { " opt" } else { "" }
                            )
                        })
                        .collect();
                    return Err(format!(
                        "block {b}: history not linearizable: {detail}\n  last operations on the block (ms): {}",
                        shown.join("; ")
                    ));
                }
            }
        }
        Ok(summary)
    }
}
