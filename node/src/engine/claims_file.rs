//! A volume's claims file on disk: `volumes/<name>/claims`, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory).
//! The byte format is the core's (`geomirror_core::claims_file`).

use std::path::{Path, PathBuf};

use geomirror_core::claims_file::{self, CLAIMS_FILE_BYTES_MAX, ClaimsFileContents, ClaimsFileCorrupt};

use crate::store::meta::write_atomically;

/// Why a claims file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsFileError {
    /// I/O failed.
    #[error("claims file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged: refused, because forgetting a peer's claim would
    /// serve stale reads.
    #[error(
        "claims file {path} is corrupt ({reason}); refusing to start (restore it from a backup, or remove it only if both sites hold identical data)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: ClaimsFileCorrupt,
    },
}

/// The claims file of one volume.
#[derive(Clone, Debug)]
pub struct ClaimsFile {
    path: PathBuf,
}

impl ClaimsFile {
    /// The claims file of the volume whose files are in `volume_dir`.
    pub fn new(volume_dir: &Path) -> Self {
        ClaimsFile { path: volume_dir.join("claims") }
    }

    /// Loads the file; a missing file is an empty one.
    pub fn load(&self) -> Result<ClaimsFileContents, ClaimsFileError> {
        use std::io::Read;
        let io = |source| ClaimsFileError::Io { path: self.path.clone(), source };
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(f) => {
                f.take(CLAIMS_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClaimsFileContents::default()),
            Err(e) => return Err(io(e)),
        }
        claims_file::decode(&bytes).map_err(|reason| ClaimsFileError::Corrupt { path: self.path.clone(), reason })
    }

    /// Replaces the file atomically and durably.
    pub fn store(&self, contents: &ClaimsFileContents) -> Result<(), ClaimsFileError> {
        write_atomically(&self.path, &claims_file::encode(contents))
            .map_err(|source| ClaimsFileError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geomirror_wire::peer::{Epoch, Extent, ExtentClaim};

    #[test]
    fn contents_round_trip_through_a_file_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClaimsFile::new(dir.path());
        assert_eq!(file.load().unwrap(), ClaimsFileContents::default(), "no file is an empty one");
        let c = ClaimsFileContents {
            counter: Epoch(3),
            own: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(2) }],
            ..ClaimsFileContents::default()
        };
        file.store(&c).unwrap();
        assert_eq!(file.load().unwrap(), c);
        std::fs::write(dir.path().join("claims"), b"garbage").unwrap();
        assert!(matches!(file.load(), Err(ClaimsFileError::Corrupt { .. })));
    }
}
