//! The per-volume metadata file: identity and geometry, checksummed.
//!
//! Layout (little-endian; see `docs/on-disk.md`):
//! `magic[8] "GMVOLMET" | version u32 | block_bytes u32 | extent_bytes u32 |
//! reserved u32 | volume_id [u8;16] | size u64 | name_len u16 | name |
//! crc32c u32` — the checksum covers every byte before it.

use std::fs;
use std::io::Write;
use std::path::Path;

/// First bytes of the file.
pub const META_MAGIC: &[u8; 8] = b"GMVOLMET";
/// Current format version; older or newer versions are refused.
pub const META_VERSION: u32 = 1;

/// Identity and geometry of a volume, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Random identity chosen at creation; peers compare it.
    pub volume_id: [u8; 16],
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_bytes: u32,
    /// Extent size in bytes.
    pub extent_bytes: u32,
}

/// Why a metadata file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    /// The file is shorter than its fields or longer than the limit.
    #[error("metadata file is truncated or oversized ({0} bytes)")]
    Length(usize),
    /// Not a geomirror metadata file.
    #[error("metadata file has a bad magic number")]
    Magic,
    /// Written by another format version.
    #[error("metadata format version {0} is not supported (this build reads version {META_VERSION})")]
    Version(u32),
    /// The checksum does not match.
    #[error("metadata checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// The name is not UTF-8.
    #[error("metadata holds an invalid volume name")]
    Name,
}

impl VolumeMeta {
    /// The volume id as 32 hex digits.
    pub fn id_hex(&self) -> String {
        self.volume_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Serializes with checksum.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut out = Vec::with_capacity(58 + name.len() + 4);
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&META_VERSION.to_le_bytes());
        out.extend_from_slice(&self.block_bytes.to_le_bytes());
        out.extend_from_slice(&self.extent_bytes.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and verifies a metadata file's bytes.
    pub fn decode(b: &[u8]) -> Result<Self, MetaError> {
        const FIXED: usize = 8 + 4 * 4 + 16 + 8 + 2;
        if b.len() < FIXED + 4 || b.len() > crate::limits::VOLUME_META_BYTES_MAX as usize {
            return Err(MetaError::Length(b.len()));
        }
        if &b[..8] != META_MAGIC {
            return Err(MetaError::Magic);
        }
        let (body, tail) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(MetaError::Checksum { stored, computed });
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != META_VERSION {
            return Err(MetaError::Version(version));
        }
        let name_len = u16::from_le_bytes([body[FIXED - 2], body[FIXED - 1]]) as usize;
        if body.len() != FIXED + name_len {
            return Err(MetaError::Length(b.len()));
        }
        let name = std::str::from_utf8(&body[FIXED..]).map_err(|_| MetaError::Name)?.to_string();
        Ok(VolumeMeta {
            block_bytes: u32_at(12),
            extent_bytes: u32_at(16),
            volume_id: body[24..40].try_into().expect("16 bytes"),
            size: u64::from_le_bytes(body[40..48].try_into().expect("8 bytes")),
            name,
        })
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory. A crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeMeta {
        VolumeMeta { volume_id: [7; 16], name: "vol0".into(), size: 1 << 30, block_bytes: 4096, extent_bytes: 1 << 20 }
    }

    #[test]
    fn meta_round_trips() {
        assert_eq!(VolumeMeta::decode(&sample().encode()).unwrap(), sample());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let good = sample().encode();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(VolumeMeta::decode(&bad).is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn truncations_and_foreign_versions_are_refused() {
        let good = sample().encode();
        for len in 0..good.len() {
            assert!(VolumeMeta::decode(&good[..len]).is_err());
        }
        let mut v2 = good.clone();
        v2[8] = 2;
        let body_len = v2.len() - 4;
        let crc = crc32c::crc32c(&v2[..body_len]);
        v2[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(VolumeMeta::decode(&v2), Err(MetaError::Version(2)));
    }
}
