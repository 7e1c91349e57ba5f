//! The protocol between a node and the witness, the third-site process that
//! grants leases and the survivor role (DESIGN.md 5.1).
//!
//! One mutually authenticated TLS connection per node, framed like the peer
//! protocol (a 4-byte big-endian length, then a postcard-encoded
//! [`WitnessMessage`], at most [`WITNESS_FRAME_BYTES_MAX`]). The node sends
//! [`WitnessMessage::Hello`] first; after the witness's answer, the node
//! sends requests and the witness answers each with the request's id.
//!
//! Append variants and fields at the end only, bump
//! [`WITNESS_PROTOCOL_VERSION`] on any change, and keep the golden bytes
//! test passing.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::peer::RequestId;

/// Version spoken; another version is refused at hello.
pub const WITNESS_PROTOCOL_VERSION: u32 = 1;
/// Largest frame; a larger one closes the connection.
pub const WITNESS_FRAME_BYTES_MAX: usize = 4096;

/// Every message between a node and the witness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WitnessMessage {
    /// First frame, from the node.
    Hello {
        /// [`WITNESS_PROTOCOL_VERSION`] of the node.
        protocol_version: u32,
        /// The node's name (the witness checks it against its certificate).
        node: String,
        /// The lease length the node counts with, in milliseconds: a
        /// survivor waits for the other's lease to surely end.
        lease_ms: u64,
    },
    /// The witness's answer to the hello.
    HelloReply {
        /// The witness's version.
        protocol_version: u32,
        /// The witness's name.
        witness: String,
        /// Empty when accepted; else why not (the connection then closes).
        refusal: String,
    },
    /// Renew the sender's lease.
    Renew {
        /// Request id.
        id: RequestId,
    },
    /// The lease is renewed: it runs for the sender's lease length from
    /// when the sender sent the request.
    Lease {
        /// Request id.
        id: RequestId,
    },
    /// The sender lost its peer and asks for the survivor role.
    Claim {
        /// Request id.
        id: RequestId,
    },
    /// The sender is the survivor of this outage. It acts alone once the
    /// other node's lease has surely ended: `other_lease_ms` (the other
    /// node's lease length, as its hello announced, or the sender's own if
    /// the witness has not heard from it) plus the clock-drift bound, from
    /// when this answer arrived.
    Survivor {
        /// Request id.
        id: RequestId,
        /// The outage's generation (grows with every grant; a fencing token).
        generation: u64,
        /// The other node's lease length in milliseconds.
        other_lease_ms: u64,
    },
    /// Another node is the survivor: no lease, no survivor role (answer to
    /// [`WitnessMessage::Renew`] or [`WitnessMessage::Claim`]).
    Denied {
        /// Request id.
        id: RequestId,
        /// The survivor's name.
        survivor: String,
        /// The outage's generation.
        generation: u64,
    },
    /// The survivor's peer is back and resynced: the outage of this
    /// generation is over.
    Resolved {
        /// Request id.
        id: RequestId,
        /// The outage's generation.
        generation: u64,
    },
    /// Answer to [`WitnessMessage::Resolved`]: no survivor any more.
    Cleared {
        /// Request id.
        id: RequestId,
        /// The newest generation.
        generation: u64,
    },
    /// A request the witness could not serve.
    Error {
        /// Request id.
        id: RequestId,
        /// Why.
        message: String,
    },
}

/// What is wrong with a received frame.
#[derive(Debug, thiserror::Error)]
pub enum WitnessDecodeError {
    /// The bytes are not a valid message.
    #[error("malformed witness message: {0}")]
    Malformed(#[from] postcard::Error),
    /// The frame is larger than the limit.
    #[error("witness frame is {len} bytes, limit is {max}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl WitnessMessage {
    /// Serializes the message (without the length prefix).
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("witness messages always serialize"))
    }

    /// Parses one frame's bytes.
    pub fn decode(frame: &[u8]) -> Result<WitnessMessage, WitnessDecodeError> {
        if frame.len() > WITNESS_FRAME_BYTES_MAX {
            return Err(WitnessDecodeError::FrameTooLarge { len: frame.len(), max: WITNESS_FRAME_BYTES_MAX });
        }
        Ok(postcard::from_bytes(frame)?)
    }

    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WitnessMessage::Hello { .. } => "Hello",
            WitnessMessage::HelloReply { .. } => "HelloReply",
            WitnessMessage::Renew { .. } => "Renew",
            WitnessMessage::Lease { .. } => "Lease",
            WitnessMessage::Claim { .. } => "Claim",
            WitnessMessage::Survivor { .. } => "Survivor",
            WitnessMessage::Denied { .. } => "Denied",
            WitnessMessage::Resolved { .. } => "Resolved",
            WitnessMessage::Cleared { .. } => "Cleared",
            WitnessMessage::Error { .. } => "Error",
        }
    }

    /// Request id of a request or answer, if it has one.
    pub fn id(&self) -> Option<RequestId> {
        match self {
            WitnessMessage::Hello { .. } | WitnessMessage::HelloReply { .. } => None,
            WitnessMessage::Renew { id }
            | WitnessMessage::Lease { id }
            | WitnessMessage::Claim { id }
            | WitnessMessage::Survivor { id, .. }
            | WitnessMessage::Denied { id, .. }
            | WitnessMessage::Resolved { id, .. }
            | WitnessMessage::Cleared { id, .. }
            | WitnessMessage::Error { id, .. } => Some(*id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<WitnessMessage> {
        vec![
            WitnessMessage::Hello { protocol_version: WITNESS_PROTOCOL_VERSION, node: "site-a".into(), lease_ms: 2000 },
            WitnessMessage::HelloReply { protocol_version: 1, witness: "w".into(), refusal: String::new() },
            WitnessMessage::Renew { id: RequestId(1) },
            WitnessMessage::Lease { id: RequestId(1) },
            WitnessMessage::Claim { id: RequestId(2) },
            WitnessMessage::Survivor { id: RequestId(2), generation: 3, other_lease_ms: 2000 },
            WitnessMessage::Denied { id: RequestId(3), survivor: "site-b".into(), generation: 3 },
            WitnessMessage::Resolved { id: RequestId(4), generation: 3 },
            WitnessMessage::Cleared { id: RequestId(4), generation: 3 },
            WitnessMessage::Error { id: RequestId(5), message: "no".into() },
        ]
    }

    const GOLDEN: &[&[u8]] = &[
        &[0, 1, 6, 115, 105, 116, 101, 45, 97, 208, 15],
        &[1, 1, 1, 119, 0],
        &[2, 1],
        &[3, 1],
        &[4, 2],
        &[5, 2, 3, 208, 15],
        &[6, 3, 6, 115, 105, 116, 101, 45, 98, 3],
        &[7, 4, 3],
        &[8, 4, 3],
        &[9, 5, 2, 110, 111],
    ];

    #[test]
    fn golden_bytes_of_every_variant_do_not_change() {
        let samples = samples();
        assert_eq!(samples.len(), GOLDEN.len());
        for (m, golden) in samples.iter().zip(GOLDEN) {
            assert_eq!(m.encode().as_ref(), *golden, "{} encodes differently", m.kind());
            assert_eq!(&WitnessMessage::decode(golden).unwrap(), m);
        }
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert!(WitnessMessage::decode(&[]).is_err());
        assert!(WitnessMessage::decode(&[99]).is_err());
        assert!(WitnessMessage::decode(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(matches!(WitnessMessage::decode(&[0; WITNESS_FRAME_BYTES_MAX + 1]), Err(WitnessDecodeError::FrameTooLarge { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = WitnessMessage::decode(&bytes);
        }
    }
}
