//! A volume's conflict file on disk: `volumes/<name>/conflicts`, append-only.
//! Each batch of saved blocks is appended whole and synced (fdatasync)
//! before the engine lets the peer's data overwrite them. The byte format
//! is the core's (`geomirror_core::conflict_file`); `geomirror conflicts`
//! reads it.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use geomirror_core::ConflictRecord;
use geomirror_core::conflict_file::{self, ConflictFileError, ConflictFileHeader, SavedBlock};

/// Why a conflict file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConflictFileIoError {
    /// I/O failed.
    #[error("conflict file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged or cut short.
    #[error(
        "conflict file {path}: {problem}; it holds blocks this site had before an outage and nothing may be lost from it: \
         inspect it with `geomirror conflicts list --data-dir DATA_DIR`, keep a copy, and remove the cut-short last record with \
         `geomirror conflicts repair --data-dir DATA_DIR --volume {volume}` (a record cut short was never the only copy of its block)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The volume.
        volume: String,
        /// What is wrong.
        problem: ConflictFileError,
    },
    /// The file belongs to another volume.
    #[error("conflict file {path} belongs to volume `{found}`, not `{expected}`")]
    WrongVolume {
        /// The file.
        path: PathBuf,
        /// Its volume.
        found: String,
        /// The volume it sits in.
        expected: String,
    },
}

/// The records of a conflict file that check out, and what stopped the read
/// (None: the end of the file).
pub type IntactRecords = (Vec<SavedBlock>, Option<ConflictFileError>);

/// The conflict file of one volume.
#[derive(Clone, Debug)]
pub struct ConflictFile {
    path: PathBuf,
    header: ConflictFileHeader,
    /// Appends run on the blocking pool, several extents' at once: one at a
    /// time, so that exactly one writes the header of a new file and no
    /// record lands inside another.
    appending: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Largest conflict file read whole (a larger one is read by the CLI in the
/// same way, but a node does not check it at start beyond this).
const CHECK_BYTES_MAX: u64 = 1 << 34;

impl ConflictFile {
    /// The conflict file of volume `volume` (id `volume_id`) in `volume_dir`.
    pub fn new(volume_dir: &Path, volume: &str, volume_id: [u8; 16]) -> Self {
        ConflictFile {
            path: volume_dir.join("conflicts"),
            header: ConflictFileHeader { volume: volume.into(), volume_id },
            appending: std::sync::Arc::new(std::sync::Mutex::new(())),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file whole (None: there is none).
    pub fn read(&self) -> Result<Option<Vec<SavedBlock>>, ConflictFileIoError> {
        let io = |source| ConflictFileIoError::Io { path: self.path.clone(), source };
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(f) => f.take(CHECK_BYTES_MAX).read_to_end(&mut bytes).map(|_| ()).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let damaged = |problem| ConflictFileIoError::Damaged { path: self.path.clone(), volume: self.header.volume.clone(), problem };
        let (header, records) = conflict_file::decode(&bytes).map_err(damaged)?;
        if header.volume != self.header.volume {
            return Err(ConflictFileIoError::WrongVolume {
                path: self.path.clone(),
                found: header.volume,
                expected: self.header.volume.clone(),
            });
        }
        Ok(Some(records))
    }

    /// Reads the records that check out, for an operator: a damaged or cut
    /// short file yields what precedes the damage, and what stopped the read.
    pub fn read_intact(&self) -> Result<Option<IntactRecords>, ConflictFileIoError> {
        let io = |source| ConflictFileIoError::Io { path: self.path.clone(), source };
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let damaged = |problem| ConflictFileIoError::Damaged { path: self.path.clone(), volume: self.header.volume.clone(), problem };
        let (header, records, problem) = conflict_file::decode_prefix(&bytes).map_err(damaged)?;
        if header.volume != self.header.volume {
            return Err(ConflictFileIoError::WrongVolume {
                path: self.path.clone(),
                found: header.volume,
                expected: self.header.volume.clone(),
            });
        }
        Ok(Some((records, problem)))
    }

    /// Appends `records` (stamped with `saved_at_ms`) and syncs the file.
    pub fn append(&self, records: &[ConflictRecord], saved_at_ms: u64) -> Result<(), ConflictFileIoError> {
        let io = |source| ConflictFileIoError::Io { path: self.path.clone(), source };
        let _one_at_a_time = self.appending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = !self.path.exists();
        let mut bytes = if new { conflict_file::encode_header(&self.header) } else { Vec::new() };
        for r in records {
            let saved = SavedBlock {
                kind: r.kind,
                offset: r.offset,
                our_generation: r.our_generation,
                their_generation: r.their_generation,
                saved_at_ms,
                data: r.data.to_vec(),
            };
            bytes.extend_from_slice(&conflict_file::encode_record(&saved));
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        if new {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// Cuts a torn last record off (after a crash while appending it);
    /// returns how many bytes were removed. Corruption elsewhere is refused.
    pub fn repair(&self) -> Result<u64, ConflictFileIoError> {
        let io = |source| ConflictFileIoError::Io { path: self.path.clone(), source };
        let bytes = std::fs::read(&self.path).map_err(io)?;
        let damaged = |problem| ConflictFileIoError::Damaged { path: self.path.clone(), volume: self.header.volume.clone(), problem };
        let (_, _, problem) = conflict_file::decode_prefix(&bytes).map_err(damaged)?;
        match problem {
            None => Ok(0),
            Some(ConflictFileError::TornTail { at }) => {
                let f = OpenOptions::new().write(true).open(&self.path).map_err(io)?;
                f.set_len(at as u64).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok((bytes.len() - at) as u64)
            }
            Some(other) => Err(damaged(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geomirror_core::ConflictKind;

    fn record(offset: u64) -> ConflictRecord {
        ConflictRecord {
            offset,
            data: bytes::Bytes::from(vec![offset as u8; 512]),
            kind: ConflictKind::TakenOver,
            our_generation: 1,
            their_generation: 2,
        }
    }

    #[test]
    fn appends_survive_and_a_torn_tail_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let f = ConflictFile::new(dir.path(), "vol0", [1; 16]);
        assert!(f.read().unwrap().is_none());
        f.append(&[record(0), record(512)], 1000).unwrap();
        f.append(&[record(1024)], 2000).unwrap();
        let records = f.read().unwrap().unwrap();
        assert_eq!(records.iter().map(|r| (r.offset, r.saved_at_ms)).collect::<Vec<_>>(), vec![(0, 1000), (512, 1000), (1024, 2000)]);
        // A crash cut the last append short: the node refuses the file with
        // instructions, and repair removes only the incomplete record.
        let len = std::fs::metadata(f.path()).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f.path()).unwrap().set_len(len - 100).unwrap();
        let err = f.read().unwrap_err().to_string();
        assert!(err.contains("incomplete") && err.contains("geomirror conflicts repair"), "{err}");
        assert!(f.repair().unwrap() > 0);
        assert_eq!(f.read().unwrap().unwrap().len(), 2);
        let other = ConflictFile::new(dir.path(), "vol1", [1; 16]);
        assert!(matches!(other.read(), Err(ConflictFileIoError::WrongVolume { .. })));
    }

    #[test]
    fn concurrent_appends_to_a_new_file_keep_it_whole() {
        // The engine saves several extents' blocks at once on the blocking
        // pool; the first appends to a new file once wrote a header each.
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let f = ConflictFile::new(dir.path(), "vol0", [1; 16]);
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let f = f.clone();
                    std::thread::spawn(move || f.append(&[record(t * 4096), record(t * 4096 + 512)], 1000).unwrap())
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let records = f.read().unwrap_or_else(|e| panic!("round {round}: {e}")).unwrap();
            assert_eq!(records.len(), 16, "round {round}");
        }
    }
}
