//! geomirror's wire formats, free of any runtime.
//!
//! - [`nbd`]: the host protocol (NBD fixed newstyle), as pure encode and
//!   decode functions over byte slices. The node's server and the test
//!   clients drive the I/O; this crate only says what the bytes mean, so
//!   the decoders can be fuzzed and unit-tested without sockets.
//! - [`peer`]: the peer protocol between the two nodes (postcard frames).
//! - [`status`]: the typed `/status` snapshot that the node serves and the
//!   CLI, TUI and tests read.
//! - [`witness`]: the protocol between a node and the witness (postcard
//!   frames).
//!
//! Invariants: no decoder panics or allocates more than its stated limit on
//! any input; nothing here does I/O.

#![warn(missing_docs)]

pub mod nbd;
pub mod peer;
pub mod status;
pub mod witness;
