//! An in-memory block store for tests and the deterministic simulation.

use std::sync::Mutex;

use super::{BlockStore, StoreError, ZeroMode};

/// A volume held in a `Vec<u8>`; `sync` is a no-op (nothing is volatile).
pub struct MemoryStore {
    bytes: Mutex<Vec<u8>>,
}

impl MemoryStore {
    /// A zero-filled volume of `size` bytes.
    pub fn new(size: u64) -> Self {
        MemoryStore { bytes: Mutex::new(vec![0; usize::try_from(size).expect("memory volume fits in memory")]) }
    }
}

impl BlockStore for MemoryStore {
    fn size(&self) -> u64 {
        self.bytes.lock().expect("store lock").len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        self.check_range(offset, buf.len() as u64)?;
        let bytes = self.bytes.lock().expect("store lock");
        buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn try_read_now(&self, offset: u64, length: usize) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read_bytes(offset, length).map(Some)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), StoreError> {
        self.check_range(offset, data.len() as u64)?;
        let mut bytes = self.bytes.lock().expect("store lock");
        bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn trim(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        self.write_zeroes(offset, length, ZeroMode::MayUnmap, false)
    }

    fn write_zeroes(&self, offset: u64, length: u64, _mode: ZeroMode, _fast_only: bool) -> Result<(), StoreError> {
        self.check_range(offset, length)?;
        let mut bytes = self.bytes.lock().expect("store lock");
        bytes[offset as usize..(offset + length) as usize].fill(0);
        Ok(())
    }
}
