//! Invariant 5, epochs order everything about an extent: at each node the
//! epoch of an extent's ownership (own or the peer's) never goes back while
//! the node runs, and neither does the epoch counter. A stale release, copy
//! or handover message that undid a newer grant would show here.

use geomirror_core::claims::ExtentState;

use crate::world::{VOLUME, World};

/// Epochs only grow within a node's life; records the ones seen.
pub fn check(w: &mut World) -> Result<(), String> {
    for n in 0..2 {
        let Some(core) = &w.nodes[n].core else { continue };
        let claims = core.claims(VOLUME);
        let counter = claims.counter().0;
        let mut seen = Vec::new();
        for (e, s) in claims.extents() {
            let epoch = match s {
                ExtentState::Owned(o) => o.epoch,
                ExtentState::PeerOwned { epoch } | ExtentState::Acquiring { epoch, .. } => *epoch,
                _ => continue,
            };
            seen.push((e.0, epoch.0));
        }
        let node = &mut w.nodes[n];
        if counter < node.counter {
            return Err(format!("invariant 5 (epochs): node {n}'s epoch counter went back from {} to {counter}", node.counter));
        }
        node.counter = counter;
        for (e, epoch) in seen {
            let before = node.epochs.entry(e).or_insert(epoch);
            if epoch < *before {
                return Err(format!("invariant 5 (epochs): node {n}'s epoch of extent {e} went back from {before} to {epoch}"));
            }
            *before = epoch;
            if epoch > counter {
                return Err(format!("invariant 5 (epochs): node {n} holds extent {e} at epoch {epoch}, above its counter {counter}"));
            }
        }
    }
    Ok(())
}
