//! A volume's claims file on disk: `volumes/<name>/claims`, a snapshot and
//! a journal. A whole write replaces it atomically (write a temporary file,
//! fsync, rename, fsync the directory); a change appends one journal record
//! and fdatasyncs. The byte format, and when to write whole, are the core's
//! (`geomirror_core::claims_file`, `Claims::take_file_write`).

use std::path::{Path, PathBuf};

use geomirror_core::claims_file::{self, CLAIMS_FILE_BYTES_MAX, ClaimsDelta, ClaimsFileContents, ClaimsFileCorrupt};

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
        let (contents, torn) =
            claims_file::decode_with_tail(&bytes).map_err(|reason| ClaimsFileError::Corrupt { path: self.path.clone(), reason })?;
        if let Some(at) = torn {
            // The append a crash cut short; it was never reported durable,
            // and the first write after start rewrites the file whole.
            tracing::warn!(path = %self.path.display(), at, bytes = bytes.len() - at, "the claims file's last journal record was cut short by a crash; ignored");
        }
        Ok(contents)
    }

    /// Appends one journal record and makes it durable (fdatasync).
    pub fn append(&self, delta: &ClaimsDelta) -> Result<(), ClaimsFileError> {
        use std::io::Write;
        let io = |source| ClaimsFileError::Io { path: self.path.clone(), source };
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        f.write_all(&claims_file::encode_delta(delta)).map_err(io)?;
        f.sync_data().map_err(io)
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
        // A change appended to the journal reads back; a whole write folds it.
        let delta = geomirror_core::claims_file::ClaimsDelta {
            counter: Epoch(4),
            entries: vec![(Extent(2), geomirror_core::claims_file::ExtentEntry { record: Some(Epoch(4)), ..Default::default() })],
            ..Default::default()
        };
        file.append(&delta).unwrap();
        let appended =
            ClaimsFileContents { counter: Epoch(4), record: vec![ExtentClaim { extent: Extent(2), epoch: Epoch(4) }], ..c.clone() };
        assert_eq!(file.load().unwrap(), appended);
        file.store(&appended).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("claims")).unwrap().len() as usize,
            geomirror_core::claims_file::encode(&appended).len()
        );
        std::fs::write(dir.path().join("claims"), b"garbage").unwrap();
        assert!(matches!(file.load(), Err(ClaimsFileError::Corrupt { .. })));
    }
}
