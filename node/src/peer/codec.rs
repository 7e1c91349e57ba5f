//! The framing of the peer protocol on a TLS stream: a 4-byte big-endian
//! length, then the postcard message (`geomirror_wire::peer`).

use bytes::{BufMut, BytesMut};
use geomirror_wire::peer::{FRAME_BYTES_MAX, Message};
use geomirror_wire::witness::WITNESS_FRAME_BYTES_MAX;
use tokio_util::codec::LengthDelimitedCodec;

/// The framing codec with its limit set explicitly (a larger frame closes
/// the connection).
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(FRAME_BYTES_MAX).length_field_length(4).new_codec()
}

/// The framing of the witness protocol: the same shape, a smaller limit.
pub fn witness_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(WITNESS_FRAME_BYTES_MAX).length_field_length(4).new_codec()
}

/// A message too large for one frame (the core never builds one: a bug).
#[derive(Debug, thiserror::Error)]
#[error("a {kind} message of {len} bytes exceeds the frame limit of {FRAME_BYTES_MAX} bytes")]
pub struct FrameTooLarge {
    kind: &'static str,
    len: usize,
}

/// Appends `message` as one frame (length prefix and body) to `out`, the
/// body encoded in place; returns the frame's bytes. On error `out` is as
/// it was.
pub fn encode_frame(message: &Message, out: &mut BytesMut) -> Result<usize, FrameTooLarge> {
    let start = out.len();
    out.put_u32(0);
    message.encode_into(out);
    let len = out.len() - start - 4;
    if len > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(FrameTooLarge { kind: message.kind(), len });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(len + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use geomirror_wire::peer::{RequestId, VolumeIndex};
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_encoded_in_place_decode_with_the_codec() {
        let messages = [
            Message::Heartbeat { id: RequestId(1) },
            Message::Pull { id: RequestId(2), volume: VolumeIndex(0), offset: 4096, length: 4096 },
            Message::PullReply { id: RequestId(2), data: Some(Bytes::from(vec![7u8; 70_000])) },
        ];
        let mut out = BytesMut::new();
        let mut total = 0;
        for m in &messages {
            total += encode_frame(m, &mut out).unwrap();
        }
        assert_eq!(total, out.len());
        let mut codec = codec();
        for m in &messages {
            let frame = codec.decode(&mut out).unwrap().expect("a whole frame");
            assert_eq!(&Message::decode(&frame).unwrap(), m);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_leaves_the_buffer_alone() {
        let mut out = BytesMut::from(&b"before"[..]);
        let huge = Message::PullReply { id: RequestId(1), data: Some(Bytes::from(vec![0u8; FRAME_BYTES_MAX])) };
        assert!(encode_frame(&huge, &mut out).is_err());
        assert_eq!(&out[..], b"before");
    }
}
