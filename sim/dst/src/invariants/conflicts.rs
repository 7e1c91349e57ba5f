//! Invariant 6 after a takeover: nothing acknowledged is lost except into a
//! conflict file. When an operator takes over a lost peer's extents, every
//! block the peer held differently at that moment must, once the peer is
//! back, be in the peer's conflict file (as it held it then, or as its
//! disk kept it through a crash) — unless the block ends up holding that
//! value anyway (the survivor wrote the same value since, e.g. a trim).

use crate::world::World;

/// Every block a takeover may have discarded reached its node's conflict file.
pub fn check(w: &World) -> Result<(), String> {
    for &(n, block, values) in &w.expected_conflicts {
        let saved = &w.nodes[n].disk.conflicts;
        let kept = values.contains(&w.nodes[n].disk.volatile[block as usize].value);
        if !kept && !saved.iter().any(|&(b, v)| b == block && values.contains(&v)) {
            return Err(format!(
                "invariant 6 (nothing acknowledged is lost): node {n} held block {block} as {values:?} when its peer took the extent over, \
                 and that value is not in its conflict file (saved: {:?})",
                saved.iter().filter(|(b, _)| *b == block).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}
