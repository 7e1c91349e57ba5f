//! Identities the core hands out or receives. Those that travel between the
//! nodes ([`RequestId`], [`CopySeq`], [`VolumeIndex`]) are defined in `wire`.

pub use geomirror_wire::peer::{CopySeq, RequestId, VolumeIndex};

/// One session with the peer: a pair of connections from hello to close.
/// The runtime numbers sessions; inputs and outputs of an older session are
/// ignored or discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionGen(pub u64);

/// One connection to the witness, from hello to close. The runtime numbers
/// them; inputs of an older one are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WitnessLinkGen(pub u64);

/// Names one I/O the core asked for; its completion carries it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoToken(pub u64);

/// Names one host request; the runtime chooses it and gets it back in the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostRequestId(pub u64);
