//! Block stores: where a volume's bytes live.
//!
//! [`BlockStore`] is a synchronous, positioned-I/O interface (callers run it
//! off the async runtime's threads). [`file::FileStore`] is the real one: a
//! sparse file per volume with a checksummed metadata file beside it (see
//! `docs/on-disk.md`). [`memory::MemoryStore`] backs unit tests and the
//! deterministic simulation. Both pass the same conformance suite.
//!
//! Invariants: a store never changes a byte outside the range it was asked
//! to change; `sync` returns only when every completed write is durable.

pub mod file;
pub mod memory;
pub mod meta;

#[cfg(test)]
mod conformance;

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// How a zero-write may be carried out (the core's type: one meaning).
pub use geomirror_core::ZeroMode;

/// Errors of a block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request reaches past the end of the volume.
    #[error("range {offset}+{length} is outside the volume ({size} bytes)")]
    OutOfRange {
        /// Start of the request.
        offset: u64,
        /// Its length.
        length: u64,
        /// The volume size.
        size: u64,
    },
    /// A fast zero was asked for and the store cannot zero this range quickly.
    #[error("zeroing cannot be done quickly here")]
    NotFast,
    /// The operating system failed the I/O.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Reads `length` bytes at `offset` of `store` for an async caller: on the
/// calling thread when the page cache holds them
/// ([`BlockStore::try_read_now`]), else on the blocking pool.
pub async fn read(store: &Arc<dyn BlockStore>, offset: u64, length: usize) -> Result<Bytes, StoreError> {
    if let Some(data) = store.try_read_now(offset, length)? {
        return Ok(data);
    }
    let store = store.clone();
    crate::tasks::blocking(move || store.read_bytes(offset, length)).await
}

/// Writes `data` at `offset` of `store` for an async caller: a write of at
/// most [`INLINE_WRITE_BYTES_MAX`] on the calling thread (a page-cache copy;
/// this kernel's ext4 refuses `RWF_NOWAIT` for buffered writes, so there is
/// no non-blocking attempt to make), a larger one on the blocking pool.
/// Returns the buffer.
///
/// [`INLINE_WRITE_BYTES_MAX`]: crate::limits::INLINE_WRITE_BYTES_MAX
pub async fn write(store: &Arc<dyn BlockStore>, offset: u64, data: Bytes) -> Result<Bytes, StoreError> {
    if data.len() <= crate::limits::INLINE_WRITE_BYTES_MAX {
        return store.write_at(&data, offset).map(|()| data);
    }
    let store = store.clone();
    crate::tasks::blocking(move || store.write_at(&data, offset).map(|()| data)).await
}

/// Positioned, synchronous block I/O over one volume.
pub trait BlockStore: Send + Sync + 'static {
    /// Volume size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError>;
    /// Reads `length` bytes at `offset` into a new buffer (a store that
    /// can fills it without zeroing it first).
    fn read_bytes(&self, offset: u64, length: usize) -> Result<Bytes, StoreError> {
        let mut buf = BytesMut::zeroed(length);
        self.read_at(&mut buf, offset)?;
        Ok(buf.freeze())
    }
    /// [`read_bytes`](Self::read_bytes), but only if it needs no wait for
    /// the device (the bytes are all in memory): `Ok(None)` otherwise, and
    /// the caller reads on the blocking pool. The async runtime's threads
    /// call it to serve page-cache hits without a thread hop.
    fn try_read_now(&self, _offset: u64, _length: usize) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    /// Writes `data` at `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), StoreError>;
    /// Makes every completed write durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Discards a range; it reads back as zeroes afterwards.
    fn trim(&self, offset: u64, length: u64) -> Result<(), StoreError>;
    /// Writes zeroes over a range. With `fast_only`, fails with
    /// [`StoreError::NotFast`] instead of writing zeroes slowly.
    fn write_zeroes(&self, offset: u64, length: u64, mode: ZeroMode, fast_only: bool) -> Result<(), StoreError>;

    /// How `offset..offset+length` is allocated, in order: `(length,
    /// holey)` runs, `holey` where the store holds no data (reads as zeroes).
    /// The default reports it all as data (never wrongly as a hole).
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, bool)>, StoreError> {
        self.check_range(offset, length)?;
        Ok(vec![(length, false)])
    }

    /// Checks that `offset..offset+length` lies inside the volume.
    fn check_range(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        match offset.checked_add(length) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(StoreError::OutOfRange { offset, length, size: self.size() }),
        }
    }
}
