//! Explicit limits of the node; each says what happens when it is hit.

use std::time::Duration;

/// Bytes of buffered socket input per host connection.
pub const NBD_READ_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes of buffered socket output per host connection; replies larger than
/// this bypass the buffer.
pub const NBD_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Whole handshake deadline; a client slower than this is disconnected.
pub const NBD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Options one handshake may send; past it the connection is closed (a
/// client looping on options would otherwise hold a connection slot forever).
pub const NBD_HANDSHAKE_OPTIONS_MAX: usize = 256;
/// Chunk size of the fallback that writes zeroes when the filesystem cannot
/// zero or punch a range.
pub const ZERO_FALLBACK_CHUNK_BYTES: usize = 1 << 20;
/// Size of the metadata file we accept on reopen; a larger one is corrupt.
pub const VOLUME_META_BYTES_MAX: u64 = 64 * 1024;
