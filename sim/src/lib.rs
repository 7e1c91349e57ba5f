//! geomirror's WAN link simulator: a TCP proxy that makes a loopback connection behave like a
//! link between two sites, and injects the faults a WAN has.
//!
//! Placed between two nodes' peer links (or in front of anything that speaks TCP), it accepts
//! connections on one address, connects each to an upstream, and forwards bytes both ways
//! through a model of the link:
//!
//! - **Delay** per direction ("ab" = client → upstream, "ba" = upstream → client), so links
//!   can be asymmetric.
//! - **Jitter**, uniform in `[-jitter, +jitter]` around the delay, drawn per chunk (per socket
//!   read), floored at zero. It never reorders bytes within a connection: a chunk is delivered
//!   no earlier than the previous chunk of the same connection and direction, which biases
//!   back-to-back chunks towards the upper end. Different connections may overtake each other.
//! - **Bandwidth**, per direction, as a serialization delay shared by all connections of that
//!   direction (one output queue, like a router port): a chunk of `n` bytes occupies the link
//!   for `8n / bandwidth` after the previous chunk. Sending does not wait for delivery, so a
//!   sender with enough data in flight gets `min(bandwidth, window / RTT)`; a 1 MiB burst at
//!   100 Mbit/s arrives 84 ms + delay after it was sent. Bandwidth counts payload bytes; packet
//!   headers are not modelled.
//! - **Faults**: partitions in hold mode (connections stay up, bytes wait; heal delivers them
//!   after the normal delay) or reset mode (connections reset, new ones reset on accept), one
//!   way or both ways, and a reset of all connections.
//!
//! The model itself ([`link`]) is pure arithmetic with no runtime, clock or I/O, so an
//! in-process deterministic simulation can share it; [`proxy`] drives it with tokio. Delivery
//! deadlines use a dedicated timer thread, because tokio's 1 ms timer resolution would add up
//! to a millisecond to every hop.
//!
//! Settings change at run time through [`proxy::ProxyHandle`], the HTTP control API
//! ([`control`]: `GET`/`PUT /link`, `POST /partition`, `/heal`, `/reset`), or the CLI
//! ([`cli`]: `geomirror sim set|partition|heal|reset|status`). Named profiles: `lan`, `metro`,
//! `regional`, `intercontinental` (see [`settings::LinkSettings::profile`]).
//!
//! # What it deliberately does not do
//! - No packet loss, duplication or corruption: it works above TCP, whose retransmissions a
//!   real link would hide inside extra latency anyway. A hold partition models the loss of
//!   everything for a while.
//! - No per-packet header overhead, MTU, congestion or TCP window modelling: the endpoints'
//!   kernels do their own TCP over loopback; the proxy only shapes when bytes appear.
//! - No UDP, no TLS termination (TLS passes through as bytes).
//! - Not a traffic generator or a benchmark; precision is limited by the OS scheduler (tens of
//!   microseconds) and by chunk granularity (a 64 KiB read is delivered whole).
//!
//! # Limits
//! All in [`limits`]: each direction of each connection buffers at most
//! [`limits::DIRECTION_QUEUE_BYTES_MAX`] bytes (then the proxy stops reading: backpressure, no
//! drops); at most [`limits::CONNECTIONS_MAX`] connections (then it stops accepting); the
//! upstream connect and every CLI request have deadlines. No input can make it panic; a
//! connection whose socket fails is reset at both ends.
//!
//! # Invariants
//! - Within one connection and direction, bytes are delivered in the order they were read.
//! - The model schedules no byte before `offered + serialization + delay - jitter`; the proxy
//!   writes it at most [`limits::TIMER_LEAD_MAX`] (2 ms) before that, as its timer aims early
//!   by the measured wake-up lateness.
//! - Queues never exceed their bounds (asserted).

pub mod cli;
pub mod client;
pub mod control;
pub mod limits;
pub mod link;
pub mod proxy;
pub mod settings;
pub mod status;
mod timer;
pub mod units;

pub use link::{DirectionParams, LinkDirection, LinkTime, StreamClock};
pub use proxy::{Proxy, ProxyConfig, ProxyHandle, StartError};
pub use settings::{Dir, LinkSettings, LinkUpdate, SettingsError};
pub use status::{Counters, Direction, DirectionCounters, Flow, LinkStatus, PartitionMode, PartitionRequest, PartitionState};
pub use units::{Bandwidth, ParseError};
