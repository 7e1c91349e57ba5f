//! The heal phase must converge: once faults stop and `release_after` has
//! passed, both nodes own nothing, record nothing, and hold identical
//! blocks; every block whose last write is certain holds it at both sites
//! (invariant 6, nothing acknowledged is lost; the linearizability check of
//! the final reads says the same for every block).

use crate::world::World;

/// Both stores agree and hold every certain value.
pub fn check(w: &World) -> Result<(), String> {
    let (a, b) = (&w.nodes[0].disk.volatile, &w.nodes[1].disk.volatile);
    for block in 0..w.p.blocks() {
        let (x, y) = (a[block as usize].value, b[block as usize].value);
        if x != y {
            return Err(format!("convergence: block {block} holds {x} at site-a and {y} at site-b after healing"));
        }
        if let Some(v) = w.history.certain_value(block)
            && v != x
        {
            return Err(format!(
                "invariant 6 (nothing acknowledged is lost): block {block} holds {x} at both sites, but the last acknowledged write was {v}"
            ));
        }
    }
    Ok(())
}
