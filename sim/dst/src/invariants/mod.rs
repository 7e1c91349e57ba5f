//! The invariants of DESIGN.md section 3, one file each, checked by the
//! world after every step (or at the step they are about). Each returns the
//! first violation as text; the world stops the run there.
//!
//! Linearizability of every block's history (read freshness, nothing
//! acknowledged lost) is checked at the end of a run by `history`, after
//! the final reads at both sites.

pub mod bounded_exposure;
pub mod claim_before_ack;
pub mod convergence;
pub mod epochs;
pub mod release_after_data;
pub mod single_owner;
