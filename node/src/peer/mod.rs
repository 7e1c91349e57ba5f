//! The peer link: mutual TLS ([`tls`]), certificate generation ([`certs`]),
//! the framing ([`codec`]) and the two connections (priority and bulk
//! lanes) to the other node ([`link`]), each lane's outgoing side
//! ([`outbox`]).

pub mod certs;
pub mod codec;
pub mod link;
pub mod outbox;
pub mod tls;
