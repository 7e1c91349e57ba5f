//! The file-backed store: one sparse data file per volume, plus metadata.
//!
//! Directory layout under the node's `data_dir`:
//! ```text
//! LOCK                      flock'ed by the running node (one node per data_dir)
//! volumes/<name>/data       sparse file, exactly `size` bytes
//! volumes/<name>/meta       VolumeMeta, checksummed, replaced atomically
//! ```
//! A volume is created in `volumes/.<name>.creating/` and renamed into place
//! once complete, so a crash during creation never leaves a half-made volume
//! that a restart would mistake for a real one.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::meta::{self, MetaError, VolumeMeta};
use super::{BlockStore, StoreError, ZeroMode};
use crate::limits::ZERO_FALLBACK_CHUNK_BYTES;

/// Why a volume could not be opened; every variant names the volume.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An I/O call failed.
    #[error("volume `{volume}`: cannot {action} {path}: {source}")]
    Io {
        /// Volume name.
        volume: String,
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metadata file is unreadable: refused, never reformatted.
    #[error(
        "volume `{volume}`: metadata file {path} is corrupt ({source}); refusing to open it (restore it or remove the volume directory to recreate the volume empty)"
    )]
    CorruptMeta {
        /// Volume name.
        volume: String,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        source: MetaError,
    },
    /// The configuration disagrees with what is on disk.
    #[error(
        "volume `{volume}`: configured {field} is {configured} but the volume on disk has {stored}; refusing to open it (a volume's geometry cannot change)"
    )]
    Mismatch {
        /// Volume name.
        volume: String,
        /// Which property.
        field: &'static str,
        /// Configured value.
        configured: u64,
        /// Stored value.
        stored: u64,
    },
    /// The data file is missing or has the wrong length.
    #[error("volume `{volume}`: data file {path} {problem}; refusing to open it")]
    DataFile {
        /// Volume name.
        volume: String,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another geomirror process")]
    Locked(PathBuf),
}

/// What a volume should look like, from the config.
#[derive(Clone, Debug)]
pub struct VolumeGeometry {
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_bytes: u32,
    /// Extent size in bytes.
    pub extent_bytes: u32,
}

/// An exclusive lock on a data directory, held for the node's lifetime.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks `dir/LOCK` (non-blocking).
    pub fn acquire(dir: &Path) -> Result<Self, OpenError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { volume: "-".into(), action, path, source }
        };
        fs::create_dir_all(dir.join("volumes")).map_err(io("create directory", dir))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        Ok(DataDirLock { _file: file })
    }
}

/// A volume's data file.
pub struct FileStore {
    file: File,
    size: u64,
}

impl FileStore {
    /// Opens the volume under `data_dir`, creating it on first start. A
    /// corrupt metadata file or a geometry that differs from `want` is an
    /// error; nothing is rewritten in that case.
    pub fn open_or_create(data_dir: &Path, want: &VolumeGeometry) -> Result<(Self, VolumeMeta), OpenError> {
        let volumes = data_dir.join("volumes");
        let dir = volumes.join(&want.name);
        if !dir.exists() {
            create_volume(&volumes, want)?;
        }
        let name = want.name.clone();
        let io = |action, path: &Path| {
            let (volume, path) = (name.clone(), path.to_path_buf());
            move |source| OpenError::Io { volume, action, path, source }
        };
        let meta_path = dir.join("meta");
        let meta_bytes = read_bounded(&meta_path).map_err(io("read", &meta_path))?;
        let meta = VolumeMeta::decode(&meta_bytes).map_err(|source| OpenError::CorruptMeta {
            volume: want.name.clone(),
            path: meta_path.clone(),
            source,
        })?;
        let mismatch = |field, configured: u64, stored: u64| {
            (configured != stored).then(|| OpenError::Mismatch { volume: want.name.clone(), field, configured, stored })
        };
        if let Some(e) = mismatch("size", want.size, meta.size)
            .or_else(|| mismatch("block_size", want.block_bytes.into(), meta.block_bytes.into()))
            .or_else(|| mismatch("extent_size", want.extent_bytes.into(), meta.extent_bytes.into()))
        {
            return Err(e);
        }
        if meta.name != want.name {
            return Err(OpenError::DataFile {
                volume: want.name.clone(),
                path: meta_path,
                problem: format!("belongs to volume `{}`", meta.name),
            });
        }
        let data_path = dir.join("data");
        let file = OpenOptions::new().read(true).write(true).open(&data_path).map_err(io("open", &data_path))?;
        let len = file.metadata().map_err(io("stat", &data_path))?.len();
        if len != meta.size {
            return Err(OpenError::DataFile {
                volume: want.name.clone(),
                path: data_path,
                problem: format!("is {len} bytes, metadata says {}", meta.size),
            });
        }
        Ok((FileStore { file, size: meta.size }, meta))
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, length: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on our own descriptor with in-range values; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as libc::off_t, length as libc::off_t) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Zeroes by writing them (a filesystem without the `fallocate`
    /// modes), in the same pieces as [`write_at`](BlockStore::write_at).
    fn write_zeroes_slowly(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        let zeroes = vec![0u8; ZERO_FALLBACK_CHUNK_BYTES.min(length as usize)];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(zeroes.len() as u64) as usize;
            for (at, range) in write_pieces(offset + done, n, crate::limits::PAGE_CACHE_WRITE_PIECE_BYTES) {
                self.file.write_all_at(&zeroes[range], at)?;
            }
            done += n as u64;
        }
        Ok(())
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(crate::limits::VOLUME_META_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn create_volume(volumes: &Path, want: &VolumeGeometry) -> Result<(), OpenError> {
    let staging = volumes.join(format!(".{}.creating", want.name));
    let io = |action, path: &Path| {
        let (volume, path) = (want.name.clone(), path.to_path_buf());
        move |source| OpenError::Io { volume, action, path, source }
    };
    if staging.exists() {
        // A previous creation crashed before the rename: nothing in it was
        // ever served, so it is safe to start over.
        fs::remove_dir_all(&staging).map_err(io("remove stale", &staging))?;
    }
    fs::create_dir_all(&staging).map_err(io("create directory", &staging))?;
    let data_path = staging.join("data");
    let data = File::create_new(&data_path).map_err(io("create", &data_path))?;
    data.set_len(want.size).map_err(io("size", &data_path))?;
    data.sync_all().map_err(io("sync", &data_path))?;
    let meta = VolumeMeta {
        volume_id: rand::random(),
        name: want.name.clone(),
        size: want.size,
        block_bytes: want.block_bytes,
        extent_bytes: want.extent_bytes,
    };
    let meta_path = staging.join("meta");
    meta::write_atomically(&meta_path, &meta.encode()).map_err(io("write", &meta_path))?;
    let target = volumes.join(&want.name);
    fs::rename(&staging, &target).map_err(io("rename into place", &target))?;
    File::open(volumes).and_then(|d| d.sync_all()).map_err(io("sync", volumes))?;
    Ok(())
}

impl BlockStore for FileStore {
    fn size(&self) -> u64 {
        self.size
    }

    /// From the file's holes (`SEEK_DATA`/`SEEK_HOLE`).
    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, bool)>, StoreError> {
        self.check_range(offset, length)?;
        let fd = self.file.as_raw_fd();
        let end = offset + length;
        let seek = |at: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
            // SAFETY: lseek(2) on our own open file descriptor.
            let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
            if r >= 0 {
                return Ok(Some(r as u64));
            }
            let e = std::io::Error::last_os_error();
            // No data at or after `at`: the rest is a hole.
            if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) }
        };
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut push = |len: u64, hole: bool| match runs.last_mut() {
            Some((l, h)) if *h == hole => *l += len,
            _ => runs.push((len, hole)),
        };
        let mut at = offset;
        while at < end {
            let data = seek(at, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            if data > at {
                push(data - at, true);
                at = data;
                continue;
            }
            let hole = seek(at, libc::SEEK_HOLE)?.unwrap_or(end).min(end).max(at + 1);
            push(hole - at, false);
            at = hole;
        }
        Ok(runs)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StoreError> {
        self.check_range(offset, buf.len() as u64)?;
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn read_bytes(&self, offset: u64, length: usize) -> Result<Bytes, StoreError> {
        self.check_range(offset, length as u64)?;
        match pread_into_new(&self.file, offset, length, 0)? {
            Some(bytes) => Ok(bytes),
            None => Err(StoreError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }

    fn try_read_now(&self, offset: u64, length: usize) -> Result<Option<Bytes>, StoreError> {
        self.check_range(offset, length as u64)?;
        Ok(pread_into_new(&self.file, offset, length, libc::RWF_NOWAIT)?)
    }

    /// In pieces of at most [`PAGE_CACHE_WRITE_PIECE_BYTES`], aligned to
    /// that size: see the constant for why.
    ///
    /// [`PAGE_CACHE_WRITE_PIECE_BYTES`]: crate::limits::PAGE_CACHE_WRITE_PIECE_BYTES
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), StoreError> {
        self.check_range(offset, data.len() as u64)?;
        for (at, range) in write_pieces(offset, data.len(), crate::limits::PAGE_CACHE_WRITE_PIECE_BYTES) {
            self.file.write_all_at(&data[range], at)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(self.file.sync_data()?)
    }

    fn trim(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        self.write_zeroes(offset, length, ZeroMode::MayUnmap, false)
    }

    fn write_zeroes(&self, offset: u64, length: u64, mode: ZeroMode, fast_only: bool) -> Result<(), StoreError> {
        self.check_range(offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let flags = match mode {
            ZeroMode::MayUnmap => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ZeroMode::KeepAllocated => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        };
        match self.fallocate(flags, offset, length) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
                if fast_only {
                    Err(StoreError::NotFast)
                } else {
                    self.write_zeroes_slowly(offset, length)
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Splits a write of `length` bytes at `offset` into pieces that never
/// cross a multiple of `piece` bytes: `(file offset, range of the data)`.
fn write_pieces(offset: u64, length: usize, piece: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let piece = piece.max(1) as u64;
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= length {
            return None;
        }
        let at = offset + done as u64;
        let n = ((piece - at % piece) as usize).min(length - done);
        let range = done..done + n;
        done += n;
        Some((at, range))
    })
}

/// Reads `length` bytes at `offset` of `file` into a new buffer, without
/// zero-filling it first. With `RWF_NOWAIT` in `flags`, `Ok(None)` when the
/// kernel would have to wait for the device (or read only part at once);
/// without, `Ok(None)` when the file ends first.
fn pread_into_new(file: &File, offset: u64, length: usize, flags: libc::c_int) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(length);
    let mut done = 0;
    while done < length {
        let spare = &mut buf.spare_capacity_mut()[..length - done];
        let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        // SAFETY: the iovec covers `spare`, writable memory of `iov_len`
        // bytes that outlives the call; the kernel writes at most that much.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, (offset + done as u64) as libc::off_t, flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) if flags & libc::RWF_NOWAIT != 0 => return Ok(None),
                _ => return Err(e),
            }
        }
        if n == 0 || (n as usize) < length - done && flags & libc::RWF_NOWAIT != 0 {
            // The end of the file, or only part was in memory.
            return Ok(None);
        }
        // SAFETY: the kernel initialized the `n` bytes after the `done` already set.
        unsafe { buf.set_len(done + n as usize) };
        done += n as usize;
    }
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(size: u64) -> VolumeGeometry {
        VolumeGeometry { name: "vol0".into(), size, block_bytes: 4096, extent_bytes: 1 << 20 }
    }

    #[test]
    fn a_write_is_split_at_every_multiple_of_the_piece_and_nowhere_else() {
        let piece = 64 << 10;
        let pieces: Vec<_> = write_pieces(60 << 10, 200 << 10, piece).collect();
        assert_eq!(
            pieces,
            vec![
                (60 << 10, 0..4 << 10),
                (64 << 10, 4 << 10..68 << 10),
                (128 << 10, 68 << 10..132 << 10),
                (192 << 10, 132 << 10..196 << 10),
                (256 << 10, 196 << 10..200 << 10)
            ]
        );
        // Inside one piece: one write. Empty: none.
        assert_eq!(write_pieces(4096, 8192, piece).collect::<Vec<_>>(), vec![(4096, 0..8192)]);
        assert_eq!(write_pieces(4096, 0, piece).count(), 0);
        // Every byte once, in order, whatever the alignment.
        for (offset, length) in [(0, 1 << 20), (1, 65_536), (65_535, 2), (12_345, 300_000)] {
            let mut next = 0;
            for (at, range) in write_pieces(offset, length, piece) {
                assert_eq!((range.start, at), (next, offset + next as u64));
                assert!(range.len() <= piece && at / piece as u64 == (at + range.len() as u64 - 1) / piece as u64);
                next = range.end;
            }
            assert_eq!(next, length);
        }
    }

    #[test]
    fn zeroes_written_by_the_fallback_cover_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        let ones = vec![0xffu8; 3 << 20];
        store.write_at(&ones, 0).unwrap();
        // Unaligned, longer than a fallback chunk, across many pieces.
        let (offset, length) = (12_345u64, (ZERO_FALLBACK_CHUNK_BYTES + 200_000) as u64);
        store.write_zeroes_slowly(offset, length).unwrap();
        let mut back = vec![0u8; 3 << 20];
        store.read_at(&mut back, 0).unwrap();
        let (start, end) = (offset as usize, (offset + length) as usize);
        assert!(back[..start].iter().all(|&b| b == 0xff), "before the range");
        assert!(back[start..end].iter().all(|&b| b == 0), "the range");
        assert!(back[end..].iter().all(|&b| b == 0xff), "after the range");
    }

    #[test]
    fn data_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, meta) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        store.write_at(b"hello, world", 4096 * 3 + 5).unwrap();
        store.sync().unwrap();
        drop(store);
        let (store, again) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        assert_eq!(meta, again, "reopening must not change the identity");
        let mut buf = [0u8; 12];
        store.read_at(&mut buf, 4096 * 3 + 5).unwrap();
        assert_eq!(&buf, b"hello, world");
    }

    #[test]
    fn the_data_file_is_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        FileStore::open_or_create(dir.path(), &geometry(1 << 30)).unwrap();
        let md = fs::metadata(dir.path().join("volumes/vol0/data")).unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert!(md.blocks() * 512 < 1 << 20, "a new 1 GiB volume must not allocate its bytes");
    }

    #[test]
    fn a_changed_geometry_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        store.write_at(&[0xab; 4096], 0).unwrap();
        drop(store);
        let meta_before = fs::read(dir.path().join("volumes/vol0/meta")).unwrap();
        match FileStore::open_or_create(dir.path(), &geometry(16 << 20)) {
            Err(OpenError::Mismatch { field: "size", configured, stored, .. }) => {
                assert_eq!((configured, stored), (16 << 20, 8 << 20));
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a resized volume was opened"),
        }
        let mut g = geometry(8 << 20);
        g.extent_bytes = 4 << 20;
        assert!(matches!(FileStore::open_or_create(dir.path(), &g), Err(OpenError::Mismatch { field: "extent_size", .. })));
        assert_eq!(fs::read(dir.path().join("volumes/vol0/meta")).unwrap(), meta_before);
        assert_eq!(fs::metadata(dir.path().join("volumes/vol0/data")).unwrap().len(), 8 << 20);
        let (store, _) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        let mut buf = [0u8; 4096];
        store.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0xab; 4096]);
    }

    #[test]
    fn a_corrupt_metadata_file_is_refused_not_reformatted() {
        let dir = tempfile::tempdir().unwrap();
        drop(FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap());
        let meta_path = dir.path().join("volumes/vol0/meta");
        let mut bytes = fs::read(&meta_path).unwrap();
        bytes[30] ^= 0x40;
        fs::write(&meta_path, &bytes).unwrap();
        let err = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).err().expect("must refuse");
        assert!(matches!(err, OpenError::CorruptMeta { .. }), "{err}");
        assert!(err.to_string().contains("vol0"));
        assert_eq!(fs::read(&meta_path).unwrap(), bytes, "the corrupt file must be left as it was");
    }

    #[test]
    fn a_truncated_data_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap());
        let data = OpenOptions::new().write(true).open(dir.path().join("volumes/vol0/data")).unwrap();
        data.set_len(4 << 20).unwrap();
        assert!(matches!(FileStore::open_or_create(dir.path(), &geometry(8 << 20)), Err(OpenError::DataFile { .. })));
    }

    #[test]
    fn a_crashed_creation_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("volumes/.vol0.creating");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("data"), b"junk").unwrap();
        let (store, _) = FileStore::open_or_create(dir.path(), &geometry(8 << 20)).unwrap();
        assert_eq!(store.size(), 8 << 20);
        assert!(!staging.exists());
    }

    #[test]
    fn a_data_dir_is_locked_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks are per open file description: a second open conflicts.
        assert!(matches!(DataDirLock::acquire(dir.path()), Err(OpenError::Locked(_))));
    }
}
