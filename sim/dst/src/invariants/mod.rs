//! The invariants of the design (DESIGN.md section 3), one file each.
//! Claim before acknowledge, single owner, bounded exposure and epochs are
//! checked after every step; release after data at each release that
//! arrives (on the bulk lane, a claim or a handover request); convergence
//! at the end of the heal phase. Each returns the first violation as text;
//! the world stops the run there.
//!
//! Read freshness (invariant 2) and nothing acknowledged lost (6) are
//! checked at the end of a run by `history`: every block's history must be
//! linearizable, after the final reads at both sites.

pub mod bounded_exposure;
pub mod claim_before_ack;
pub mod conflicts;
pub mod convergence;
pub mod epochs;
pub mod release_after_data;
pub mod single_owner;
