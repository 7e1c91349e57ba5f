//! The peer protocol between the two nodes of a pair.
//!
//! Frames: a 4-byte big-endian length, then a postcard-encoded [`Message`]
//! (tokio-util's `LengthDelimitedCodec`, limit [`FRAME_BYTES_MAX`]). Each
//! node dials two TLS connections to its peer, one per [`Lane`], and sends
//! its own requests on them; the peer answers on the same connection. The
//! priority lane carries claims, handovers, pulls, releases and heartbeats
//! and never queues behind the bulk lane, which carries the copy stream.
//!
//! postcard is not self-describing: field and variant order are the wire
//! format. Append variants and fields at the end only, bump
//! [`PROTOCOL_VERSION`] on any change, and keep the golden bytes test
//! passing. See `docs/wire.md`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Version spoken; a peer with another version is refused at hello.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame; a larger one closes the connection with `FrameTooLarge`.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Largest block payload in one copy, handover or pull message.
pub const DATA_BYTES_MAX: usize = 8 * 1024 * 1024;
const _: () = assert!(FRAME_BYTES_MAX >= DATA_BYTES_MAX + 4096);

/// The framing codec with its limit set explicitly.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(FRAME_BYTES_MAX).length_field_length(4).new_codec()
}

/// Index of an extent within a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Extent(pub u64);

/// Index of a block within a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockIndex(pub u64);

/// The epoch of an extent's ownership: grows each time ownership is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Epoch(pub u64);

/// Which of the two connections a hello opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// Claims, handovers, pulls, releases, heartbeats.
    Priority,
    /// The copy stream.
    Bulk,
}

/// A volume as announced at hello; both nodes must agree on every field
/// but `volume_id` (each node's own random identity, for diagnostics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_bytes: u32,
    /// Extent size in bytes.
    pub extent_bytes: u32,
    /// The sender's local volume id.
    pub volume_id: [u8; 16],
}

/// Volumes are referred to by their position in the hello's list.
pub type VolumeSlot = u16;

/// One extent's ownership as exchanged at session start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentClaim {
    /// The extent.
    pub extent: Extent,
    /// Its ownership epoch.
    pub epoch: Epoch,
}

/// A claim decision for one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimOutcome {
    /// Recorded durably: the requester owns it at this epoch.
    Granted(Epoch),
    /// The responder owns it; ask for a handover.
    OwnedByResponder(Epoch),
    /// Not granted now (a prediction, a concurrent claim the responder wins,
    /// or an extent in transition); retry later if needed.
    Declined,
}

/// Blocks carried inline (handover) or in the copy stream: a run of
/// consecutive blocks starting at `first`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRun {
    /// First block of the run.
    pub first: BlockIndex,
    /// The blocks' bytes (a whole number of blocks).
    pub data: Bytes,
}

/// One run of blocks in a [`Message::Copy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyItem {
    /// The extent.
    pub extent: Extent,
    /// The sender's ownership epoch.
    pub epoch: Epoch,
    /// First block.
    pub first: BlockIndex,
    /// Number of blocks.
    pub count: u32,
    /// The blocks' bytes (`count` blocks), or empty when they are all zeroes.
    pub data: Bytes,
}

/// Every message of the peer protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame on a new connection, from the dialer.
    Hello {
        /// [`PROTOCOL_VERSION`] of the dialer.
        protocol_version: u32,
        /// The dialer's node name.
        node: String,
        /// Which connection this is.
        lane: Lane,
        /// The dialer's volumes.
        volumes: Vec<VolumeInfo>,
    },
    /// Answer to [`Message::Hello`].
    HelloReply {
        /// The responder's version.
        protocol_version: u32,
        /// The responder's node name.
        node: String,
        /// Empty when accepted; otherwise why not (the connection then closes).
        refusal: String,
        /// Per volume of the hello: empty when it matches, else the mismatch.
        volume_errors: Vec<String>,
    },
    /// Session start: the sender's view of ownership of a volume.
    Sync {
        /// Request id.
        id: u64,
        /// Volume.
        volume: VolumeSlot,
        /// The sender's epoch counter.
        counter: Epoch,
        /// Extents the sender owns.
        own: Vec<ExtentClaim>,
        /// Extents the sender believes the receiver owns (its claims record).
        record: Vec<ExtentClaim>,
        /// Handovers the sender gave the receiver and saw no confirmation of.
        gives: Vec<ExtentClaim>,
    },
    /// Answer to [`Message::Sync`], with the responder's view after merging.
    SyncReply {
        /// Request id.
        id: u64,
        /// The responder's epoch counter.
        counter: Epoch,
        /// Extents the responder owns.
        own: Vec<ExtentClaim>,
        /// Extents the responder believes the requester owns.
        record: Vec<ExtentClaim>,
        /// Handovers the responder gave the requester and saw no confirmation of.
        gives: Vec<ExtentClaim>,
    },
    /// Record that the requester may hold writes to these extents. The first
    /// is being written; the rest are predicted.
    Claim {
        /// Request id.
        id: u64,
        /// Volume.
        volume: VolumeSlot,
        /// The requester's epoch counter.
        counter: Epoch,
        /// Extents, the demanded one first.
        extents: Vec<Extent>,
    },
    /// Answer to [`Message::Claim`], one outcome per extent in order.
    ClaimReply {
        /// Request id.
        id: u64,
        /// The responder's counter after granting.
        counter: Epoch,
        /// Outcomes.
        outcomes: Vec<ClaimOutcome>,
    },
    /// Give me this extent you own.
    Handover {
        /// Request id.
        id: u64,
        /// Volume.
        volume: VolumeSlot,
        /// The requester's counter.
        counter: Epoch,
        /// The extent.
        extent: Extent,
    },
    /// Answer to [`Message::Handover`].
    HandoverReply {
        /// Request id.
        id: u64,
        /// The responder's counter.
        counter: Epoch,
        /// The requester's new epoch, or None if the responder does not own it.
        granted: Option<Epoch>,
        /// The extent's blocks not yet durable at the requester.
        blocks: Vec<BlockRun>,
    },
    /// Read bytes of an extent the responder owns.
    Pull {
        /// Request id.
        id: u64,
        /// Volume.
        volume: VolumeSlot,
        /// Byte offset.
        offset: u64,
        /// Byte length (within one extent).
        length: u32,
    },
    /// Answer to [`Message::Pull`]: the data, or None when the responder
    /// does not hold the newest data for that range.
    PullReply {
        /// Request id.
        id: u64,
        /// The bytes.
        data: Option<Bytes>,
    },
    /// The sender gives up these extents: all their writes are durable at the receiver.
    Release {
        /// Volume.
        volume: VolumeSlot,
        /// Extents and the epochs being released.
        extents: Vec<ExtentClaim>,
    },
    /// Liveness probe.
    Heartbeat {
        /// Request id.
        id: u64,
    },
    /// Answer to [`Message::Heartbeat`].
    HeartbeatReply {
        /// Request id.
        id: u64,
    },
    /// Copy stream: runs of blocks of extents the sender owns, in one
    /// message (one sequence number).
    Copy {
        /// Stream sequence number (per session, from 1).
        seq: u64,
        /// Volume.
        volume: VolumeSlot,
        /// The runs.
        items: Vec<CopyItem>,
    },
    /// Copy stream progress, from the receiver.
    CopyProgress {
        /// Volume.
        volume: VolumeSlot,
        /// Every copy up to this seq has been applied (in memory).
        received: u64,
        /// Every copy up to this seq is durable (after fdatasync).
        durable: u64,
    },
    /// A request the responder could not serve (unknown volume, bad range).
    Error {
        /// Request id.
        id: u64,
        /// Why.
        message: String,
    },
    /// The requester of a handover applied it (its blocks are durable and
    /// its ownership recorded): the giver forgets the give.
    HandoverAck {
        /// Volume.
        volume: VolumeSlot,
        /// The extent.
        extent: Extent,
        /// The epoch it was given at.
        epoch: Epoch,
    },
}

/// What is wrong with a received frame.
#[derive(Debug, thiserror::Error)]
pub enum PeerDecodeError {
    /// The bytes are not a valid message.
    #[error("malformed peer message: {0}")]
    Malformed(#[from] postcard::Error),
    /// The frame is larger than the limit.
    #[error("peer frame is {len} bytes, limit is {max}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Message {
    /// Serializes the message (without the length prefix).
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("peer messages always serialize"))
    }

    /// Parses one frame's bytes.
    pub fn decode(frame: &[u8]) -> Result<Message, PeerDecodeError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(PeerDecodeError::FrameTooLarge { len: frame.len(), max: FRAME_BYTES_MAX });
        }
        Ok(postcard::from_bytes(frame)?)
    }

    /// Request id of a request or reply, if it has one.
    pub fn id(&self) -> Option<u64> {
        match self {
            Message::Sync { id, .. }
            | Message::SyncReply { id, .. }
            | Message::Claim { id, .. }
            | Message::ClaimReply { id, .. }
            | Message::Handover { id, .. }
            | Message::HandoverReply { id, .. }
            | Message::Pull { id, .. }
            | Message::PullReply { id, .. }
            | Message::Heartbeat { id }
            | Message::HeartbeatReply { id }
            | Message::Error { id, .. } => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        let run = BlockRun { first: BlockIndex(7), data: Bytes::from_static(&[1, 2, 3, 4]) };
        vec![
            Message::Hello {
                protocol_version: PROTOCOL_VERSION,
                node: "site-a".into(),
                lane: Lane::Bulk,
                volumes: vec![VolumeInfo {
                    name: "vol0".into(),
                    size: 1 << 30,
                    block_bytes: 4096,
                    extent_bytes: 1 << 20,
                    volume_id: [9; 16],
                }],
            },
            Message::HelloReply { protocol_version: 1, node: "site-b".into(), refusal: String::new(), volume_errors: vec![String::new()] },
            Message::Sync {
                id: 1,
                volume: 0,
                counter: Epoch(5),
                own: vec![ExtentClaim { extent: Extent(3), epoch: Epoch(4) }],
                record: vec![],
                gives: vec![],
            },
            Message::SyncReply {
                id: 1,
                counter: Epoch(6),
                own: vec![],
                record: vec![ExtentClaim { extent: Extent(3), epoch: Epoch(4) }],
                gives: vec![ExtentClaim { extent: Extent(5), epoch: Epoch(6) }],
            },
            Message::Claim { id: 2, volume: 0, counter: Epoch(6), extents: vec![Extent(10), Extent(11)] },
            Message::ClaimReply {
                id: 2,
                counter: Epoch(8),
                outcomes: vec![ClaimOutcome::Granted(Epoch(7)), ClaimOutcome::Declined, ClaimOutcome::OwnedByResponder(Epoch(2))],
            },
            Message::Handover { id: 3, volume: 0, counter: Epoch(8), extent: Extent(2) },
            Message::HandoverReply { id: 3, counter: Epoch(9), granted: Some(Epoch(9)), blocks: vec![run.clone()] },
            Message::Pull { id: 4, volume: 0, offset: 4096, length: 4096 },
            Message::PullReply { id: 4, data: Some(Bytes::from_static(b"abcd")) },
            Message::Release { volume: 0, extents: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(1) }] },
            Message::Heartbeat { id: 5 },
            Message::HeartbeatReply { id: 5 },
            Message::Copy {
                seq: 1,
                volume: 0,
                items: vec![
                    CopyItem { extent: Extent(0), epoch: Epoch(1), first: BlockIndex(7), count: 1, data: run.data.clone() },
                    CopyItem { extent: Extent(1), epoch: Epoch(1), first: BlockIndex(300), count: 4, data: Bytes::new() },
                ],
            },
            Message::CopyProgress { volume: 0, received: 10, durable: 8 },
            Message::Error { id: 6, message: "no".into() },
            Message::HandoverAck { volume: 0, extent: Extent(2), epoch: Epoch(9) },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    /// postcard encodes by variant and field order: this catches a reorder.
    #[test]
    fn golden_bytes_do_not_change() {
        assert_eq!(Message::Heartbeat { id: 5 }.encode().as_ref(), &[11, 5]);
        assert_eq!(Message::CopyProgress { volume: 1, received: 10, durable: 8 }.encode().as_ref(), &[14, 1, 10, 8]);
        assert_eq!(
            Message::Claim { id: 2, volume: 0, counter: Epoch(6), extents: vec![Extent(10), Extent(300)] }.encode().as_ref(),
            &[4, 2, 0, 6, 2, 10, 172, 2]
        );
        assert_eq!(
            Message::ClaimReply { id: 2, counter: Epoch(8), outcomes: vec![ClaimOutcome::Granted(Epoch(7)), ClaimOutcome::Declined] }
                .encode()
                .as_ref(),
            &[5, 2, 8, 2, 0, 7, 2]
        );
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[200]).is_err());
        // A vector claiming 2^60 elements must not allocate them.
        assert!(Message::decode(&[4, 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(matches!(Message::decode(&vec![0; FRAME_BYTES_MAX + 1]), Err(PeerDecodeError::FrameTooLarge { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn truncations_of_valid_messages_are_rejected_or_shorter(i in 0usize..17, cut in 0usize..64) {
            let m = &samples()[i % 17];
            let bytes = m.encode();
            let cut = cut.min(bytes.len());
            if cut < bytes.len()
                && let Ok(decoded) = Message::decode(&bytes[..cut]) {
                    prop_assert_ne!(&decoded, m);
                }
        }
    }
}
