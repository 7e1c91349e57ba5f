//! A served volume: the read and write paths between the NBD server and the
//! block store.
//!
//! Every store call runs on the blocking pool, never on a runtime worker.
//! On a two-site node the volume goes through the [`Engine`]: writes are
//! admitted only to extents this node owns (claiming or taking them over
//! first), and reads of extents the peer owns are pulled from it (DESIGN.md
//! section 4).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use geomirror_core::{HostError, IoFault};
use geomirror_wire::peer::VolumeIndex;

use crate::engine::Engine;
use crate::metrics::VolumeMetrics;
use crate::store::meta::VolumeMeta;
use crate::store::{BlockStore, StoreError, ZeroMode};
use crate::tasks::blocking;

/// Why a volume request failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The store failed or refused the request.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request needs the peer (a claim, a handover, a pull) and the
    /// peer was unreachable within `peer_timeout` or refused it, or a write
    /// waited too long for room under the owned-extent limit.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// The volume is not served (it does not match the peer's, or a fault stopped it).
    #[error("volume not served: {0}")]
    NotServing(String),
    /// The store failed (as the protocol engine reports it).
    #[error("store failure: {0}")]
    Fault(IoFault),
}

impl From<HostError> for VolumeError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::OutOfRange { offset, length, size } => VolumeError::Store(StoreError::OutOfRange { offset, length, size }),
            HostError::PeerUnavailable(why) => VolumeError::PeerUnavailable(why),
            HostError::NotServing(why) => VolumeError::NotServing(why),
            HostError::Store(fault) => VolumeError::Fault(fault),
        }
    }
}

/// One volume being served.
pub struct Volume {
    meta: VolumeMeta,
    store: Arc<dyn BlockStore>,
    metrics: VolumeMetrics,
    reads_total: AtomicU64,
    writes_total: AtomicU64,
    read_bytes_total: AtomicU64,
    write_bytes_total: AtomicU64,
    /// The engine and this volume's index in it, for a two-site node.
    engine: Option<(Arc<Engine>, VolumeIndex)>,
    failures: FailureLog,
}

/// Rate limit of the host-failure log lines of one volume: a reason is
/// logged at once, then at most once a second while it repeats, with how
/// many failures were not logged in between.
#[derive(Default)]
pub struct FailureLog {
    state: std::sync::Mutex<Option<(String, std::time::Instant, u64)>>,
}

impl FailureLog {
    /// Whether to log a failure with `reason` now; if so, how many failures
    /// since the last logged line were not logged.
    pub fn admit(&self, reason: &str) -> Option<u64> {
        let mut state = self.state.lock().expect("failure log lock");
        let now = std::time::Instant::now();
        match state.as_mut() {
            Some((last, at, suppressed)) if last == reason && now.duration_since(*at) < std::time::Duration::from_secs(1) => {
                *suppressed += 1;
                None
            }
            _ => {
                let suppressed = state.as_ref().map_or(0, |s| s.2);
                *state = Some((reason.to_string(), now, 0));
                Some(suppressed)
            }
        }
    }
}

impl Volume {
    /// Wraps an opened store.
    pub fn new(meta: VolumeMeta, store: Arc<dyn BlockStore>) -> Self {
        assert_eq!(meta.size, store.size(), "metadata and store disagree on the size");
        let metrics = VolumeMetrics::new(&meta.name);
        Volume {
            meta,
            store,
            metrics,
            reads_total: AtomicU64::new(0),
            writes_total: AtomicU64::new(0),
            read_bytes_total: AtomicU64::new(0),
            write_bytes_total: AtomicU64::new(0),
            engine: None,
            failures: FailureLog::default(),
        }
    }

    /// Routes reads and writes through the engine of a two-site pair.
    pub fn with_engine(mut self, engine: Arc<Engine>, index: VolumeIndex) -> Self {
        self.engine = Some((engine, index));
        self
    }

    /// The rate limit of this volume's host-failure log lines.
    pub fn failure_log(&self) -> &FailureLog {
        &self.failures
    }

    /// Whether the volume is mirrored to a peer.
    pub fn is_replicated(&self) -> bool {
        self.engine.is_some()
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

    /// Bytes read by hosts since start.
    pub fn read_bytes_total(&self) -> u64 {
        self.read_bytes_total.load(Ordering::Relaxed)
    }

    /// Bytes written by hosts (acknowledged) since start.
    pub fn write_bytes_total(&self) -> u64 {
        self.write_bytes_total.load(Ordering::Relaxed)
    }

    /// Checks a request range against the volume.
    pub fn check_range(&self, offset: u64, length: u64) -> Result<(), StoreError> {
        self.store.check_range(offset, length)
    }

    /// How `offset..offset+length` is allocated, as `(length, holey)` runs.
    /// On a two-site volume, a range that is not local (the peer may hold
    /// newer data there) is reported as data, never as a hole.
    pub async fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, bool)>, VolumeError> {
        self.check_range(offset, length)?;
        let Some((engine, index)) = &self.engine else {
            let store = self.store.clone();
            return Ok(blocking(move || store.allocation(offset, length)).await?);
        };
        // Extent by extent: local stretches from the store, the rest as data.
        let extent = u64::from(self.meta.extent_bytes);
        let end = offset + length;
        let next = |at: u64| ((at / extent + 1) * extent).min(end);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut at = offset;
        while at < end {
            let local = engine.read_is_local(*index, at, next(at) - at);
            let mut stop = next(at);
            while stop < end && engine.read_is_local(*index, stop, next(stop) - stop) == local {
                stop = next(stop);
            }
            let part = if local {
                let store = self.store.clone();
                blocking(move || store.allocation(at, stop - at)).await?
            } else {
                vec![(stop - at, false)]
            };
            for (len, hole) in part {
                match runs.last_mut() {
                    Some((l, h)) if *h == hole => *l += len,
                    _ => runs.push((len, hole)),
                }
            }
            at = stop;
        }
        Ok(runs)
    }

    /// Reads `length` bytes at `offset`.
    pub async fn read(&self, offset: u64, length: u32) -> Result<Bytes, VolumeError> {
        self.check_range(offset, length.into())?;
        let data = match &self.engine {
            Some((engine, index)) => engine.read(*index, offset, length).await?,
            None => crate::store::read(&self.store, offset, length as usize).await?,
        };
        self.reads_total.fetch_add(1, Ordering::Relaxed);
        self.read_bytes_total.fetch_add(length.into(), Ordering::Relaxed);
        self.metrics.reads.increment(1);
        self.metrics.read_bytes.increment(length.into());
        Ok(data)
    }

    /// Writes `data` at `offset`; with `fua`, durable before returning.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_range(offset, data.len() as u64)?;
        let len = data.len() as u64;
        match &self.engine {
            Some((engine, index)) => engine.write(*index, offset, data, fua).await?,
            None if !fua => {
                crate::store::write(&self.store, offset, data).await?;
            }
            None => {
                let store = self.store.clone();
                blocking(move || {
                    store.write_at(&data, offset)?;
                    store.sync()
                })
                .await?
            }
        }
        self.writes_total.fetch_add(1, Ordering::Relaxed);
        self.write_bytes_total.fetch_add(len, Ordering::Relaxed);
        self.metrics.writes.increment(1);
        self.metrics.write_bytes.increment(len);
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        match &self.engine {
            Some((engine, index)) => engine.flush(*index).await?,
            None => {
                let store = self.store.clone();
                blocking(move || store.sync()).await?;
            }
        }
        self.metrics.flushes.increment(1);
        Ok(())
    }

    /// Makes the store's completed writes durable at shutdown, directly: a
    /// host FLUSH goes through the engine (which a fenced node holds), but a
    /// node stopping syncs its own disk whatever its standing.
    pub async fn sync_at_shutdown(&self) -> Result<(), VolumeError> {
        let store = self.store.clone();
        blocking(move || store.sync()).await?;
        Ok(())
    }

    /// Discards a range (reads back as zeroes).
    pub async fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), VolumeError> {
        if let Some((engine, index)) = &self.engine {
            self.check_range(offset, length)?;
            engine.trim(*index, offset, length, fua).await?;
            self.metrics.discards.increment(1);
            return Ok(());
        }
        self.zero_like(offset, length, fua, move |store| store.trim(offset, length)).await
    }

    /// Writes zeroes over a range.
    pub async fn write_zeroes(&self, offset: u64, length: u64, mode: ZeroMode, fast_only: bool, fua: bool) -> Result<(), VolumeError> {
        if let Some((engine, index)) = &self.engine {
            self.check_range(offset, length)?;
            engine.write_zeroes(*index, offset, length, mode, fast_only, fua).await?;
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
