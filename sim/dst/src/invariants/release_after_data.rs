//! Invariant 3, release after data: an extent leaves a claims record only
//! after every write the owner acknowledged to it is durable at that node.
//!
//! Checked when a release reaches the node that records the claim (a bulk
//! `Release`, or the releases a claim or handover request carries): for each
//! extent it will remove (the epoch matches), every block's *durable* value
//! there equals the owner's current value (the owner cannot have written it
//! since: it released it), and that value is durable at the owner too (else
//! a crash of the owner would leave the clean extent different at the two
//! sites).

use geomirror_core::claims::ExtentState;
use geomirror_wire::peer::ExtentClaim;

use crate::world::World;

/// The release about to be applied at node `to` leaves nothing behind.
pub fn check(w: &mut World, to: usize, released: &[ExtentClaim]) -> Result<(), String> {
    let owner = 1 - to;
    let per = w.p.blocks_per_extent;
    for c in released {
        let effective = matches!(
            w.extent_state(to, c.extent.0),
            Some(Some(ExtentState::PeerOwned { epoch })) if epoch == c.epoch
        );
        if !effective || w.nodes[owner].core.is_none() {
            continue;
        }
        w.stats.releases_checked += 1;
        for b in c.extent.0 * per..(c.extent.0 + 1) * per {
            let here = w.nodes[to].disk.durable[b as usize].value;
            let there = w.nodes[owner].disk.volatile[b as usize].value;
            let there_durable = w.nodes[owner].disk.durable[b as usize].value;
            if here != there || there != there_durable {
                return Err(format!(
                    "invariant 3 (release after data): extent {} released at epoch {} while block {b} is durable here as {here} but the owner holds {there} (durable there: {there_durable})",
                    c.extent.0, c.epoch.0
                ));
            }
        }
    }
    Ok(())
}
