//! The protocol engine of a geomirror node, without I/O.
//!
//! [`NodeCore`] holds every decision of one node: per volume the claims,
//! epochs, prediction, the owned-extent limit and copy tracking; the session
//! with the peer (hello result, sync rounds, readiness, request ids and their
//! table, heartbeat and idle deadlines); the ordered outbox per lane with
//! places reserved for replies that wait on I/O; persist-before-grant and
//! persist-before-acknowledge; what the receiver has received and made
//! durable; releases; what each host request waits for.
//!
//! Its interface is a closed set of [`Input`]s (a host request, a frame on a
//! lane, link up/down with its session, an I/O completion with its token,
//! the time passing) and [`Output`]s (send on a lane, close a session, an I/O
//! on a store or claims file, a reply to a host, an event), plus
//! [`NodeCore::poll_timeout`]. The runtime (`geomirror-node`) and the
//! deterministic simulator (`geomirror-dst`) both drive it the same way:
//!
//! ```text
//! core.handle(now, input);
//! while let Some(output) = core.poll_output() { perform(output) }
//! sleep until core.poll_timeout(), then core.handle(now, Input::Tick)
//! ```
//!
//! A message that must follow a durable step is an output the runtime only
//! sees after that step's completion was handled: ordering is the core's,
//! not the scheduler's. Two synchronous fast paths ([`NodeCore::try_write`],
//! [`NodeCore::read_is_local`]) let the runtime serve owned writes and local
//! reads without a round through the general path.
//!
//! What it deliberately does not do: no tokio, no clock, no file system, no
//! network, no randomness (enforced by this crate's dependencies and by
//! clippy's `disallowed-methods`/`disallowed-types`), and no iteration in an
//! order that changes from run to run. A seed replays a simulated run exactly.
//!
//! Invariants (the design's seven; ARCHITECTURE.md says where each is
//! enforced and checked), enforced here: a write is acknowledged
//! only on an owned extent whose claim the peer made durable before granting
//! it ([`claims`], [`peer`](NodeCore)); a read is served from the own store
//! only where the peer owns nothing; an extent is released only after its
//! writes are durable at the peer and our claims file no longer lists it;
//! epochs decide every race; owned extents stay within the limit.

pub mod claims;
pub mod claims_file;
pub mod config;
pub mod conflict_file;
mod copy;
pub mod geometry;
mod host;
pub mod ids;
pub mod io;
pub mod limits;
mod node;
mod outbox;
mod peer;
pub mod replication;
pub mod resync;
mod session;
pub mod standing;
pub mod time;
pub mod tracking;
pub mod witness;

pub use config::{CoreConfig, CoreConfigError, Knobs, VolumeSettings, WitnessSettings};
pub use geometry::Geometry;
pub use ids::{HostRequestId, IoToken, SessionGen, WitnessLinkGen};
pub use io::{
    ConflictKind, ConflictRecord, Event, HostError, HostRequest, Input, IoFault, IoFaultKind, IoOp, IoOutcome, Output, Role, StoreWrite,
    ZeroMode,
};
pub use node::{CoreStatus, Exposure, NodeCore, SessionView, TakeoverRefused, VolumeCounters, VolumeView, WriteTicket};
pub use resync::ResyncFigures;
pub use standing::{Health, SurvivorRole};
pub use time::Time;

#[cfg(test)]
mod tests;
