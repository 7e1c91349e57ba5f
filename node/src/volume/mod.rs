//! A served volume: the read and write paths between the NBD server and the
//! block store.
//!
//! Every store call runs on the blocking pool, never on a runtime worker.
//! On a two-site node the volume has a [`Replica`]: writes are admitted only
//! to extents this node owns (claiming or taking them over first), and reads
//! of extents the peer owns are pulled from it (DESIGN.md section 4).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::claims::replica::{Replica, WriteOp};
use crate::metrics::VolumeMetrics;
use crate::store::meta::VolumeMeta;
use crate::store::{BlockStore, StoreError, ZeroMode};

/// Why a volume request failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The store failed or refused the request.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request needs the peer (a claim, a handover, a pull) and the
    /// peer could not be reached within `peer_timeout`.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// The volume is not served (it does not match the peer's).
    #[error("volume not served: {0}")]
    NotServing(String),
}

/// One volume being served.
pub struct Volume {
    meta: VolumeMeta,
    store: Arc<dyn BlockStore>,
    metrics: VolumeMetrics,
    reads_total: AtomicU64,
    writes_total: AtomicU64,
    /// The mirror of this volume at the peer, for a two-site node.
    replica: Option<Arc<Replica>>,
}

impl Volume {
    /// Wraps an opened store.
    pub fn new(meta: VolumeMeta, store: Arc<dyn BlockStore>) -> Self {
        assert_eq!(meta.size, store.size(), "metadata and store disagree on the size");
        let metrics = VolumeMetrics::new(&meta.name);
        Volume { meta, store, metrics, reads_total: AtomicU64::new(0), writes_total: AtomicU64::new(0), replica: None }
    }

    /// Routes reads and writes through the claims of a two-site pair.
    pub fn with_replica(mut self, replica: Arc<Replica>) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The replica, for a two-site node.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    /// Export name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Identity and geometry.
    pub fn meta(&self) -> &VolumeMeta {
        &self.meta
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// Metric handles.
    pub fn metrics(&self) -> &VolumeMetrics {
        &self.metrics
    }

    /// Host reads served since start.
    pub fn reads_total(&self) -> u64 {
        self.reads_total.load(Ordering::Relaxed)
    }

    /// Host writes acknowledged since start.
    pub fn writes_total(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    /// Checks a request range against the volume.
    pub fn check_range(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        self.store.check_range(offset, length)
    }

    /// Reads `length` bytes at `offset`.
    pub async fn read(&self, offset: u64, length: u32) -> Result<Bytes, VolumeError> {
        self.check_range(offset, length.into())?;
        let data = match &self.replica {
            Some(replica) => replica.read(offset, length).await?,
            None => {
                let store = self.store.clone();
                blocking(move || {
                    let mut buf = BytesMut::zeroed(length as usize);
                    store.read_at(&mut buf, offset).map(|()| buf.freeze())
                })
                .await?
            }
        };
        self.reads_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.reads.increment(1);
        self.metrics.read_bytes.increment(length.into());
        Ok(data)
    }

    /// Writes `data` at `offset`; with `fua`, durable before returning.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_range(offset, data.len() as u64)?;
        let len = data.len() as u64;
        match &self.replica {
            Some(replica) => replica.write(offset, len, WriteOp::Data(data), fua).await?,
            None => {
                let store = self.store.clone();
                blocking(move || {
                    store.write_at(&data, offset)?;
                    if fua { store.sync() } else { Ok(()) }
                })
                .await?
            }
        }
        self.writes_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.writes.increment(1);
        self.metrics.write_bytes.increment(len);
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        let store = self.store.clone();
        blocking(move || store.sync()).await?;
        self.metrics.flushes.increment(1);
        Ok(())
    }

    /// Discards a range (reads back as zeroes).
    pub async fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), VolumeError> {
        if let Some(replica) = &self.replica {
            self.check_range(offset, length)?;
            replica.write(offset, length, WriteOp::Trim, fua).await?;
            self.metrics.discards.increment(1);
            return Ok(());
        }
        self.zero_like(offset, length, fua, move |store| store.trim(offset, length)).await
    }

    /// Writes zeroes over a range.
    pub async fn write_zeroes(&self, offset: u64, length: u64, mode: ZeroMode, fast_only: bool, fua: bool) -> Result<(), VolumeError> {
        if let Some(replica) = &self.replica {
            self.check_range(offset, length)?;
            replica.write(offset, length, WriteOp::Zero { mode, fast_only }, fua).await?;
            self.metrics.discards.increment(1);
            return Ok(());
        }
        self.zero_like(offset, length, fua, move |store| store.write_zeroes(offset, length, mode, fast_only)).await
    }

    async fn zero_like(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        op: impl FnOnce(&dyn BlockStore) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), VolumeError> {
        self.check_range(offset, length)?;
        let store = self.store.clone();
        blocking(move || {
            op(&*store)?;
            if fua { store.sync() } else { Ok(()) }
        })
        .await?;
        self.metrics.discards.increment(1);
        Ok(())
    }
}

/// Runs `f` on the blocking pool (store I/O never runs on a runtime
/// worker); a panic in it is re-raised here.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
