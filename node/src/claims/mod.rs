//! Claims: who may hold writes the other site has not received.
//!
//! [`state`] is the pure state machine (no I/O); [`record`] the durable
//! claims record file; [`replica`] the async layer that runs host reads and
//! writes against the state and the peer link.

pub mod record;
pub mod replica;
pub mod state;

#[cfg(test)]
mod tests;
