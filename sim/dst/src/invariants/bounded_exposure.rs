//! Invariant 7, bounded exposure: the extents a node owns (or is about to:
//! claiming, acquiring, receiving, or a claim whose answer was lost) never
//! exceed the configured limit, and neither do the extents the peer records
//! as that node's (what is unavailable at the peer if the node dies), but
//! for releases the node has sent and not yet seen confirmed (checked once
//! both nodes have finished the session-start sync). A node that claimed
//! or took extents alone (the survivor of an outage: the peer is lost, so
//! nothing more is exposed) is exempt until its budget, and the own claims
//! its durable claims file would restore after a crash, are within the
//! limit again.

use geomirror_core::claims::ExtentState;

use crate::world::{VOLUME, World};

/// Each node's owned-extent budget stays within the limit.
pub fn check(w: &mut World) -> Result<(), String> {
    for n in 0..2 {
        let Some(c) = &w.nodes[n].core else { continue };
        if c.claims(VOLUME).has_taken() {
            w.nodes[n].over_limit_allowed = true;
        } else if w.nodes[n].over_limit_allowed
            && c.claims(VOLUME).figures().budget_used as usize <= w.p.max_owned
            && w.nodes[n].disk.claims().own.len() <= w.p.max_owned
        {
            // Back within the limit, and so is what a restart would restore.
            w.nodes[n].over_limit_allowed = false;
        }
    }
    for (n, node) in w.nodes.iter().enumerate() {
        let Some(core) = &node.core else { continue };
        if node.over_limit_allowed || core.claims(VOLUME).has_taken() {
            continue;
        }
        let f = core.claims(VOLUME).figures();
        // A restarted node's claims file lags its last state (own claims
        // and confirmations are written lazily) until its first sync.
        if f.budget_used as usize > w.p.max_owned && node.synced_once {
            return Err(format!(
                "invariant 7 (bounded exposure): node {n} holds {} extents in its budget (owned {}), the limit is {}",
                f.budget_used, f.owned_extents, w.p.max_owned
            ));
        }
        // The peer's record is checked once both views are reconciled (the
        // session-start sync done at both nodes): a restarted node's claims
        // file may be behind until then.
        if let Some(peer) =
            w.nodes[1 - n].core.as_ref().filter(|p| !p.is_stopped(VOLUME) && !core.is_stopped(VOLUME) && p.is_ready() && core.is_ready())
        {
            // Entries of releases the node has not seen confirmed do not
            // count: their data is at the peer, and the node sends them again.
            let released = core.claims(VOLUME).unconfirmed_releases();
            let recorded = peer
                .claims(VOLUME)
                .extents()
                .filter(|(e, s)| match s {
                    ExtentState::PeerOwned { epoch } | ExtentState::Acquiring { epoch, released: false, .. } => {
                        !released.iter().any(|r| r.extent == **e && r.epoch == *epoch)
                    }
                    _ => false,
                })
                .count();
            if recorded > w.p.max_owned {
                return Err(format!(
                    "invariant 7 (bounded exposure): the peer records {recorded} extents as node {n}'s, the limit is {}",
                    w.p.max_owned
                ));
            }
        }
    }
    Ok(())
}
