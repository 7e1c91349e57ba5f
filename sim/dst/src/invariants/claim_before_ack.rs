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
        let peer_file = w.nodes[1 - n].disk.claims();
        // Extents taken alone (the survivor of an outage) are recorded in
        // the owner's own claims file instead, before any write to them
        // (checked at each acknowledgement below).
        let taken = core.claims(VOLUME).taken_list();
        for (e, s) in core.claims(VOLUME).extents() {
            if let ExtentState::Owned(o) = s {
                if taken.iter().any(|c| c.extent == *e) {
                    continue;
                }
                let recorded = peer_file.record.iter().find(|c| c.extent == *e);
                // The peer took it over while this node was lost: this
                // node's ownership is stale until the next sync hands it
                // back (it may acknowledge nothing there: see check_ack).
                let overridden = peer_file.taken.iter().any(|c| c.extent == *e && c.epoch > o.epoch);
                if recorded.is_none_or(|c| c.epoch < o.epoch) && !overridden {
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

/// A write acknowledged at node `n` ended in an extent it owns, which the
/// peer's durable claims file records as its, or (taken alone) its own
/// durable claims file does. A write of a sync mode (`at_peer`: the peer
/// reported it before the acknowledgement) ends while the extent is still
/// owned, but the extent may be handed to the peer in the same step, after
/// it ended and before this check sees the state: the peer then owns it
/// with the write's blocks, which is what the check accepts (and a write
/// waiting here may already be asking for it back).
pub fn check_ack(w: &World, n: usize, first: u64, blocks: u64, at_peer: bool) -> Result<(), String> {
    let per = w.p.blocks_per_extent;
    let last = (first + blocks - 1) / per;
    match w.extent_state(n, last) {
        Some(Some(ExtentState::Owned(o))) => {
            let at_peer = w.nodes[1 - n].disk.claims().record.iter().any(|c| c.extent.0 == last && c.epoch >= o.epoch);
            let taken_here = w.nodes[n].disk.claims().taken.iter().any(|c| c.extent.0 == last && c.epoch <= o.epoch);
            if at_peer || taken_here {
                Ok(())
            } else {
                Err(format!(
                    "invariant 1 (claim before acknowledge): node {n} acknowledged a write to extent {last} (epoch {}) that neither \
                     the peer's durable claims file nor its own (taken alone) records",
                    o.epoch.0
                ))
            }
        }
        // Handed to the peer in this step (and perhaps being asked back).
        Some(Some(ExtentState::PeerOwned { .. } | ExtentState::Acquiring { .. } | ExtentState::Receiving { .. })) if at_peer => Ok(()),
        other => Err(format!(
            "invariant 1 (claim before acknowledge): node {n} acknowledged a write of blocks {first}+{blocks} ({} bytes) while extent {last} is {other:?}",
            blocks * BLOCK_BYTES
        )),
    }
}
