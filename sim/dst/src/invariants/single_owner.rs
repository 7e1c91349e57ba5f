//! Invariant 4, single owner: two nodes never both act on an extent. After
//! a takeover both may hold it for a while, but then the other node may
//! not serve hosts (fenced, or its lease over) until the session-start
//! sync has taken it back.

use geomirror_core::claims::ExtentState;

use crate::world::{VOLUME, World};

/// No extent is owned at both nodes.
pub fn check(w: &World) -> Result<(), String> {
    let (Some(a), Some(b)) = (&w.nodes[0].core, &w.nodes[1].core) else { return Ok(()) };
    // A node an operator declared down (no witness) serves no host until it
    // has synced again: the operator's promise when taking over.
    let acts = |n: usize, c: &geomirror_core::NodeCore| c.may_serve() && c.is_serving(VOLUME) && !w.nodes[n].declared_down;
    if !acts(0, a) || !acts(1, b) {
        return Ok(());
    }
    for (e, s) in a.claims(VOLUME).extents() {
        if let (ExtentState::Owned(x), Some(ExtentState::Owned(y))) = (s, b.claims(VOLUME).extent(*e)) {
            return Err(format!(
                "invariant 4 (single owner): extent {} is owned by both nodes, and both may serve hosts (epochs {} and {})",
                e.0, x.epoch.0, y.epoch.0
            ));
        }
    }
    Ok(())
}
