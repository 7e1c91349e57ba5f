//! Invariant 4, single owner: two nodes never both own an extent.

use geomirror_core::claims::ExtentState;

use crate::world::{VOLUME, World};

/// No extent is owned at both nodes.
pub fn check(w: &World) -> Result<(), String> {
    let (Some(a), Some(b)) = (&w.nodes[0].core, &w.nodes[1].core) else { return Ok(()) };
    for (e, s) in a.claims(VOLUME).extents() {
        if let (ExtentState::Owned(x), Some(ExtentState::Owned(y))) = (s, b.claims(VOLUME).extent(*e)) {
            return Err(format!(
                "invariant 4 (single owner): extent {} is owned by both nodes (epochs {} and {})",
                e.0, x.epoch.0, y.epoch.0
            ));
        }
    }
    Ok(())
}
