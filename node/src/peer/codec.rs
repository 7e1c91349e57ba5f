//! The framing of the peer protocol on a TLS stream: a 4-byte big-endian
//! length, then the postcard message (`geomirror_wire::peer`).

use geomirror_wire::peer::FRAME_BYTES_MAX;
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
