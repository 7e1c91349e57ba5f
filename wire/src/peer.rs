//! The peer protocol between the two nodes of a pair.
//!
//! Frames: a 4-byte big-endian length, then a postcard-encoded [`Message`]
//! (the node frames them with tokio-util's `LengthDelimitedCodec`, limit
//! [`FRAME_BYTES_MAX`]; this crate has no runtime). Each
//! node dials two TLS connections to its peer, one per [`Lane`], and sends
//! its own requests on them; the peer answers on the same connection. The
//! priority lane carries claims, handovers, pulls, releases and heartbeats
//! and never queues behind the bulk lane, which carries the copy stream.
//!
//! postcard is not self-describing: field and variant order are the wire
//! format. Append variants and fields at the end only, bump
//! [`PROTOCOL_VERSION`] on any change, and keep the golden bytes test
//! passing. See `docs/wire.md`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Version spoken; a peer with another version is refused at hello.
/// History: 1 the first; 2 adds [`Message::HandoverPart`] (handovers of more
/// than [`DATA_BYTES_MAX`] of blocks); 3 adds the outage generation and the
/// extents taken alone to the sync, `detached` to a volume's hello entry,
/// and the block-checksum resync ([`Message::DigestRequest`],
/// [`Message::DigestReply`], [`Message::ResyncNeed`], [`Message::Ack`]);
/// 4 adds the replication modes: `report` to [`Message::Copy`] and
/// [`Message::Destage`]; [`Message::CopyProgress`] moves to the priority
/// lane (hosts of a sync mode wait for it).
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest frame; a larger one closes the connection with `FrameTooLarge`.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Largest block payload in one copy, handover or pull message.
pub const DATA_BYTES_MAX: usize = 8 * 1024 * 1024;
const _: () = assert!(FRAME_BYTES_MAX >= DATA_BYTES_MAX + 4096);

/// Bytes a message may add around its block payload (tags, lengths, ids,
/// run headers); a frame is at most `DATA_BYTES_MAX` plus this.
pub const FRAME_OVERHEAD_BYTES_MAX: usize = 64 * 1024;
const _: () = assert!(FRAME_BYTES_MAX >= DATA_BYTES_MAX + FRAME_OVERHEAD_BYTES_MAX);

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
    /// The sender served this volume alone after an offline takeover: its
    /// contents may differ anywhere from the other node's, so it is not
    /// mirrored again automatically (both nodes refuse to serve it).
    pub detached: bool,
}

/// A volume, by its position in the hello's list of volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeIndex(pub u16);

/// Identifies one request of a node to its peer; its answer carries it back.
/// Unique per node for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Position of a [`Message::Copy`] in one volume's copy stream within one
/// session: 1, 2, 3, ... (progress reports refer to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct CopySeq(pub u64);

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

/// A run of consecutive blocks, without data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpan {
    /// First block.
    pub first: BlockIndex,
    /// Number of blocks.
    pub count: u32,
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

/// What the sender of a [`Message::Copy`] waits for: how soon the receiver
/// reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum CopyReport {
    /// Nobody waits (`async`): reported with the next grouped fdatasync.
    #[default]
    Lazy,
    /// A host waits until the peer holds it in memory (`sync-memory`):
    /// reported received as soon as it arrives (before it is written).
    Received,
    /// A host waits until it is durable at the peer (`sync`, or a FUA or
    /// FLUSH): applied, fdatasync'ed at once, then reported durable.
    Durable,
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
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// The sender's epoch counter.
        counter: Epoch,
        /// Extents the sender owns.
        own: Vec<ExtentClaim>,
        /// Extents the sender believes the receiver owns (its claims record).
        record: Vec<ExtentClaim>,
        /// Handovers the sender gave the receiver and saw no confirmation of.
        gives: Vec<ExtentClaim>,
        /// The newest outage generation the sender knows (from the witness,
        /// or an operator's takeover).
        generation: u64,
        /// Extents the sender owns because it claimed them alone or took
        /// them over while the receiver was lost, not yet resynced to the
        /// receiver: their data wins, and the receiver saves its own
        /// differing blocks of them to its conflict file first.
        taken: Vec<ExtentClaim>,
    },
    /// Answer to [`Message::Sync`], with the responder's view after merging.
    SyncReply {
        /// Request id.
        id: RequestId,
        /// The responder's epoch counter.
        counter: Epoch,
        /// Extents the responder owns.
        own: Vec<ExtentClaim>,
        /// Extents the responder believes the requester owns.
        record: Vec<ExtentClaim>,
        /// Handovers the responder gave the requester and saw no confirmation of.
        gives: Vec<ExtentClaim>,
        /// The newest outage generation the responder knows.
        generation: u64,
        /// As in [`Message::Sync`], the responder's.
        taken: Vec<ExtentClaim>,
    },
    /// Record that the requester may hold writes to these extents. The first
    /// is being written; the rest are predicted. The responder first applies
    /// `releases` (the requester's releases it may not have seen yet: the
    /// claim may overtake them), so its record of the requester's claims
    /// never exceeds the requester's limit.
    Claim {
        /// Request id.
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// The requester's epoch counter.
        counter: Epoch,
        /// Extents, the demanded one first.
        extents: Vec<Extent>,
        /// Releases of the requester not yet confirmed.
        releases: Vec<ExtentClaim>,
    },
    /// Answer to [`Message::Claim`], one outcome per extent in order.
    ClaimReply {
        /// Request id.
        id: RequestId,
        /// The responder's counter after granting.
        counter: Epoch,
        /// Outcomes.
        outcomes: Vec<ClaimOutcome>,
    },
    /// Give me this extent you own. The responder first applies `releases`
    /// (as for a claim).
    Handover {
        /// Request id.
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// The requester's counter.
        counter: Epoch,
        /// The extent.
        extent: Extent,
        /// Releases of the requester not yet confirmed.
        releases: Vec<ExtentClaim>,
    },
    /// Answer to [`Message::Handover`].
    HandoverReply {
        /// Request id.
        id: RequestId,
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
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// Byte offset.
        offset: u64,
        /// Byte length (within one extent).
        length: u32,
    },
    /// Answer to [`Message::Pull`]: the data, or None when the responder
    /// does not hold the newest data for that range.
    PullReply {
        /// Request id.
        id: RequestId,
        /// The bytes.
        data: Option<Bytes>,
    },
    /// The sender gives up these extents: all their writes are durable at the receiver.
    Release {
        /// Volume.
        volume: VolumeIndex,
        /// Extents and the epochs being released.
        extents: Vec<ExtentClaim>,
    },
    /// Liveness probe.
    Heartbeat {
        /// Request id.
        id: RequestId,
    },
    /// Answer to [`Message::Heartbeat`].
    HeartbeatReply {
        /// Request id.
        id: RequestId,
    },
    /// Copy stream: runs of blocks of extents the sender owns, in one
    /// message (one sequence number).
    Copy {
        /// Stream position (per volume and session, from 1).
        seq: CopySeq,
        /// Volume.
        volume: VolumeIndex,
        /// The runs.
        items: Vec<CopyItem>,
        /// How soon the receiver reports it.
        report: CopyReport,
    },
    /// Copy stream progress, from the receiver.
    CopyProgress {
        /// Volume.
        volume: VolumeIndex,
        /// Every copy up to this one has been applied (in memory).
        received: CopySeq,
        /// Every copy up to this one is durable (after fdatasync).
        durable: CopySeq,
    },
    /// A request the responder could not serve (unknown volume, bad range).
    Error {
        /// Request id.
        id: RequestId,
        /// Why.
        message: String,
    },
    /// The requester of a handover applied it (its blocks are durable and
    /// its ownership recorded): the giver forgets the give.
    HandoverAck {
        /// Volume.
        volume: VolumeIndex,
        /// The extent.
        extent: Extent,
        /// The epoch it was given at.
        epoch: Epoch,
    },
    /// Part of the blocks of a handover that carries more than one frame
    /// holds: sent before the [`Message::HandoverReply`] of the same request
    /// on the same lane, which carries the last part.
    HandoverPart {
        /// The handover request's id.
        id: RequestId,
        /// The requester's new epoch (as in the reply).
        epoch: Epoch,
        /// Blocks not yet durable at the requester.
        blocks: Vec<BlockRun>,
    },
    /// Resync: the CRC-32C of each of these blocks of the responder's store.
    DigestRequest {
        /// Request id.
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// The extent (the blocks lie within it).
        extent: Extent,
        /// The blocks.
        span: BlockSpan,
    },
    /// Answer to [`Message::DigestRequest`]: one checksum per block, in order.
    DigestReply {
        /// Request id.
        id: RequestId,
        /// The checksums.
        crcs: Vec<u32>,
    },
    /// Resync of an extent the responder took while the requester was lost:
    /// the requester saved its own differing blocks (these runs) to its
    /// conflict file; send it yours. The responder answers [`Message::Ack`].
    ResyncNeed {
        /// Request id.
        id: RequestId,
        /// Volume.
        volume: VolumeIndex,
        /// The extent.
        extent: Extent,
        /// The responder's ownership epoch the requester saw.
        epoch: Epoch,
        /// The blocks that differ.
        runs: Vec<BlockSpan>,
    },
    /// A request was carried out (the answer to [`Message::ResyncNeed`]).
    Ack {
        /// Request id.
        id: RequestId,
    },
    /// From the copy stream's sender: make every copy up to `upto` durable
    /// now and report it (a host FLUSH or FUA waits for it); on the bulk
    /// lane, after those copies.
    Destage {
        /// Volume.
        volume: VolumeIndex,
        /// The newest copy position to make durable.
        upto: CopySeq,
    },
}

/// postcard's output into a `BytesMut`, slices appended whole.
struct AppendTo<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.put_u8(byte);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
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
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends the serialized message to `out` (without the length
    /// prefix): a writer batching frames encodes each straight into its
    /// output buffer, block data copied once.
    pub fn encode_into(&self, out: &mut BytesMut) {
        postcard::serialize_with_flavor(self, AppendTo(out)).expect("peer messages always serialize");
    }

    /// The variant's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::HelloReply { .. } => "HelloReply",
            Message::Sync { .. } => "Sync",
            Message::SyncReply { .. } => "SyncReply",
            Message::Claim { .. } => "Claim",
            Message::ClaimReply { .. } => "ClaimReply",
            Message::Handover { .. } => "Handover",
            Message::HandoverReply { .. } => "HandoverReply",
            Message::Pull { .. } => "Pull",
            Message::PullReply { .. } => "PullReply",
            Message::Release { .. } => "Release",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatReply { .. } => "HeartbeatReply",
            Message::Copy { .. } => "Copy",
            Message::CopyProgress { .. } => "CopyProgress",
            Message::Error { .. } => "Error",
            Message::HandoverAck { .. } => "HandoverAck",
            Message::HandoverPart { .. } => "HandoverPart",
            Message::DigestRequest { .. } => "DigestRequest",
            Message::DigestReply { .. } => "DigestReply",
            Message::ResyncNeed { .. } => "ResyncNeed",
            Message::Ack { .. } => "Ack",
            Message::Destage { .. } => "Destage",
        }
    }

    /// The lane this message travels on.
    pub fn lane(&self) -> Option<Lane> {
        match self {
            Message::Hello { .. } | Message::HelloReply { .. } => None,
            Message::Copy { .. } | Message::Release { .. } | Message::Destage { .. } => Some(Lane::Bulk),
            _ => Some(Lane::Priority),
        }
    }

    /// Parses one frame's bytes.
    pub fn decode(frame: &[u8]) -> Result<Message, PeerDecodeError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(PeerDecodeError::FrameTooLarge { len: frame.len(), max: FRAME_BYTES_MAX });
        }
        Ok(postcard::from_bytes(frame)?)
    }

    /// Request id of a request or reply, if it has one.
    pub fn id(&self) -> Option<RequestId> {
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
            | Message::Error { id, .. }
            | Message::HandoverPart { id, .. }
            | Message::DigestRequest { id, .. }
            | Message::DigestReply { id, .. }
            | Message::ResyncNeed { id, .. }
            | Message::Ack { id } => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One sample of every variant, in variant order.
    fn samples() -> Vec<Message> {
        let run = BlockRun { first: BlockIndex(7), data: Bytes::from_static(&[1, 2, 3, 4]) };
        let claim = |e, p| ExtentClaim { extent: Extent(e), epoch: Epoch(p) };
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
                    detached: false,
                }],
            },
            Message::HelloReply { protocol_version: 2, node: "site-b".into(), refusal: String::new(), volume_errors: vec![String::new()] },
            Message::Sync {
                id: RequestId(1),
                volume: VolumeIndex(0),
                counter: Epoch(5),
                own: vec![claim(3, 4)],
                record: vec![],
                gives: vec![],
                generation: 2,
                taken: vec![claim(3, 4)],
            },
            Message::SyncReply {
                id: RequestId(1),
                counter: Epoch(6),
                own: vec![],
                record: vec![claim(3, 4)],
                gives: vec![claim(5, 6)],
                generation: 2,
                taken: vec![],
            },
            Message::Claim {
                id: RequestId(2),
                volume: VolumeIndex(0),
                counter: Epoch(6),
                extents: vec![Extent(10), Extent(11)],
                releases: vec![claim(4, 3)],
            },
            Message::ClaimReply {
                id: RequestId(2),
                counter: Epoch(8),
                outcomes: vec![ClaimOutcome::Granted(Epoch(7)), ClaimOutcome::Declined, ClaimOutcome::OwnedByResponder(Epoch(2))],
            },
            Message::Handover { id: RequestId(3), volume: VolumeIndex(0), counter: Epoch(8), extent: Extent(2), releases: vec![] },
            Message::HandoverReply { id: RequestId(3), counter: Epoch(9), granted: Some(Epoch(9)), blocks: vec![run.clone()] },
            Message::Pull { id: RequestId(4), volume: VolumeIndex(0), offset: 4096, length: 4096 },
            Message::PullReply { id: RequestId(4), data: Some(Bytes::from_static(b"abcd")) },
            Message::Release { volume: VolumeIndex(0), extents: vec![claim(1, 1)] },
            Message::Heartbeat { id: RequestId(5) },
            Message::HeartbeatReply { id: RequestId(5) },
            Message::Copy {
                seq: CopySeq(1),
                volume: VolumeIndex(0),
                items: vec![
                    CopyItem { extent: Extent(0), epoch: Epoch(1), first: BlockIndex(7), count: 1, data: run.data.clone() },
                    CopyItem { extent: Extent(1), epoch: Epoch(1), first: BlockIndex(300), count: 4, data: Bytes::new() },
                ],
                report: CopyReport::Durable,
            },
            Message::CopyProgress { volume: VolumeIndex(0), received: CopySeq(10), durable: CopySeq(8) },
            Message::Error { id: RequestId(6), message: "no".into() },
            Message::HandoverAck { volume: VolumeIndex(0), extent: Extent(2), epoch: Epoch(9) },
            Message::HandoverPart { id: RequestId(3), epoch: Epoch(9), blocks: vec![run] },
            Message::DigestRequest {
                id: RequestId(7),
                volume: VolumeIndex(0),
                extent: Extent(2),
                span: BlockSpan { first: BlockIndex(512), count: 256 },
            },
            Message::DigestReply { id: RequestId(7), crcs: vec![0xdead_beef, 1] },
            Message::ResyncNeed {
                id: RequestId(8),
                volume: VolumeIndex(0),
                extent: Extent(2),
                epoch: Epoch(11),
                runs: vec![BlockSpan { first: BlockIndex(513), count: 2 }],
            },
            Message::Ack { id: RequestId(8) },
            Message::Destage { volume: VolumeIndex(0), upto: CopySeq(12) },
        ]
    }

    /// The encoding of each sample, in order. postcard encodes by variant
    /// and field order: a reordered variant or field changes these bytes.
    const GOLDEN: &[&[u8]] = &[
        &[
            0, 4, 6, 115, 105, 116, 101, 45, 97, 1, 1, 4, 118, 111, 108, 48, 128, 128, 128, 128, 4, 128, 32, 128, 128, 64, 9, 9, 9, 9, 9,
            9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0,
        ],
        &[1, 2, 6, 115, 105, 116, 101, 45, 98, 0, 1, 0],
        &[2, 1, 0, 5, 1, 3, 4, 0, 0, 2, 1, 3, 4],
        &[3, 1, 6, 0, 1, 3, 4, 1, 5, 6, 2, 0],
        &[4, 2, 0, 6, 2, 10, 11, 1, 4, 3],
        &[5, 2, 8, 3, 0, 7, 2, 1, 2],
        &[6, 3, 0, 8, 2, 0],
        &[7, 3, 9, 1, 9, 1, 7, 4, 1, 2, 3, 4],
        &[8, 4, 0, 128, 32, 128, 32],
        &[9, 4, 1, 4, 97, 98, 99, 100],
        &[10, 0, 1, 1, 1],
        &[11, 5],
        &[12, 5],
        &[13, 1, 0, 2, 0, 1, 7, 1, 4, 1, 2, 3, 4, 1, 1, 172, 2, 4, 0, 2],
        &[14, 0, 10, 8],
        &[15, 6, 2, 110, 111],
        &[16, 0, 2, 9],
        &[17, 3, 9, 1, 7, 4, 1, 2, 3, 4],
        &[18, 7, 0, 2, 128, 4, 128, 2],
        &[19, 7, 2, 239, 253, 182, 245, 13, 1],
        &[20, 8, 0, 2, 11, 1, 129, 4, 2],
        &[21, 8],
        &[22, 0, 12],
    ];

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn golden_bytes_of_every_variant_do_not_change() {
        let samples = samples();
        assert_eq!(samples.len(), GOLDEN.len(), "one golden encoding per variant");
        for (i, (m, golden)) in samples.iter().zip(GOLDEN).enumerate() {
            assert_eq!(m.encode().as_ref(), *golden, "variant #{i} ({}) encodes differently", m.kind());
        }
    }

    #[test]
    fn encoding_into_a_buffer_appends_the_same_bytes() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        for (m, golden) in samples().iter().zip(GOLDEN) {
            let start = out.len();
            m.encode_into(&mut out);
            assert_eq!(&out[start..], *golden, "{}", m.kind());
        }
        assert_eq!(&out[..6], b"prefix");
    }

    #[test]
    fn every_variant_has_a_lane_but_the_hello() {
        for m in samples() {
            let hello = matches!(m, Message::Hello { .. } | Message::HelloReply { .. });
            assert_eq!(m.lane().is_none(), hello, "{}", m.kind());
        }
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
        fn truncations_of_valid_messages_are_rejected_or_shorter(i in 0usize..23, cut in 0usize..64) {
            let samples = samples();
            let m = &samples[i % samples.len()];
            let bytes = m.encode();
            let cut = cut.min(bytes.len());
            if cut < bytes.len()
                && let Ok(decoded) = Message::decode(&bytes[..cut]) {
                    prop_assert_ne!(&decoded, m);
                }
        }
    }
}
