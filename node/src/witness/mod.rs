//! The witness: the third-site process that grants leases and the
//! survivor role ([`server`]), and each node's connection to it
//! ([`client`]). The decisions are the cores': `geomirror_core::witness`
//! on the witness's side, the node core's standing on the node's.

pub mod client;
pub mod server;
