//! Invariant 1, claim before acknowledge: a node acknowledges a write to
//! extent e only if e is in its own claims and the peer made that claim
//! durable before granting it.
//!
//! Checked as a state invariant after every step (every extent a node owns
//! is in the peer's *durable* claims file, as this node's, at an epoch no
//! older than the owner's), and at every acknowledged write (the extent it
//! ended in is owned then).

use geomirror_core::claims::ExtentState;

use crate::params::BLOCK_BYTES;
use crate::world::{VOLUME, World};

/// Every owned extent is durably recorded at the peer.
pub fn check(w: &World) -> Result<(), String> {
    for n in 0..2 {
        let Some(core) = &w.nodes[n].core else { continue };
        let peer_file = w.nodes[1 - n].disk.load_claims();
        for (e, s) in core.claims(VOLUME).extents() {
            if let ExtentState::Owned(o) = s {
                let recorded = peer_file.record.iter().find(|c| c.extent == *e);
                if recorded.is_none_or(|c| c.epoch < o.epoch) {
                    return Err(format!(
                        "invariant 1 (claim before acknowledge): node {n} owns extent {} at epoch {} but the peer's durable claims file records {:?}",
                        e.0, o.epoch.0, recorded
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A write acknowledged at node `n` ended in an extent it owns.
pub fn check_ack(w: &World, n: usize, first: u64, blocks: u64) -> Result<(), String> {
    let per = w.p.blocks_per_extent;
    let last = (first + blocks - 1) / per;
    match w.extent_state(n, last) {
        Some(Some(ExtentState::Owned(_))) => Ok(()),
        other => Err(format!(
            "invariant 1 (claim before acknowledge): node {n} acknowledged a write of blocks {first}+{blocks} ({} bytes) while extent {last} is {other:?}",
            blocks * BLOCK_BYTES
        )),
    }
}
