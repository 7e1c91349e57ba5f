//! The sizes of a volume and the arithmetic between bytes, blocks and extents.

use std::ops::{Range, RangeInclusive};

use geomirror_wire::peer::{BlockIndex, Extent};

/// Sizes of a volume, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per block (the unit of copy tracking).
    pub block_bytes: u64,
    /// Bytes per extent (the unit of ownership); a multiple of the block.
    pub extent_bytes: u64,
    /// Volume size in bytes; a multiple of the block.
    pub size: u64,
}

impl Geometry {
    /// Blocks in one extent.
    pub fn blocks_per_extent(&self) -> u64 {
        self.extent_bytes / self.block_bytes
    }
    /// Extents in the volume.
    pub fn extents(&self) -> u64 {
        self.size.div_ceil(self.extent_bytes)
    }
    /// Blocks in the volume.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_bytes)
    }
    /// The extent holding a block.
    pub fn extent_of(&self, block: BlockIndex) -> Extent {
        Extent(block.0 / self.blocks_per_extent())
    }
    /// Extents touched by a byte range (length > 0).
    pub fn extents_of(&self, offset: u64, length: u64) -> RangeInclusive<u64> {
        offset / self.extent_bytes..=(offset + length - 1) / self.extent_bytes
    }
    /// Blocks touched by a byte range (length > 0).
    pub fn blocks_of(&self, offset: u64, length: u64) -> RangeInclusive<u64> {
        offset / self.block_bytes..=(offset + length - 1) / self.block_bytes
    }
    /// Blocks of an extent that lie inside the volume.
    pub fn blocks_in(&self, extent: Extent) -> Range<u64> {
        let first = extent.0 * self.blocks_per_extent();
        let end = (first + self.blocks_per_extent()).min(self.blocks());
        first..end
    }
    /// Whether `offset..offset+length` lies inside the volume.
    pub fn contains(&self, offset: u64, length: u64) -> bool {
        offset.checked_add(length).is_some_and(|end| end <= self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_extent_may_be_short() {
        let g = Geometry { block_bytes: 4096, extent_bytes: 4 * 4096, size: 10 * 4096 };
        assert_eq!(g.extents(), 3);
        assert_eq!(g.blocks_in(Extent(2)), 8..10);
        assert_eq!(g.extents_of(4096 * 3, 4096 * 2), 0..=1);
        assert_eq!(g.blocks_of(100, 4096), 0..=1);
        assert!(g.contains(0, g.size) && !g.contains(1, g.size) && !g.contains(u64::MAX, 2));
    }
}
