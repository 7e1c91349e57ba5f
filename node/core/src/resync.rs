//! Resync after an outage or a restart, by block checksums, bounded by the
//! records: only extents in them are compared, and only blocks that differ
//! move (DESIGN.md 5.1 "Return", 5.2).
//!
//! Two kinds of job per extent, both started once the session is ready, at
//! most [`RESYNC_EXTENTS_INFLIGHT_MAX`] at a time per volume:
//! - *suspect* (an own extent restored after a restart, or adopted at a
//!   sync): which blocks the peer lacks is unknown. Ask the peer for its
//!   checksums, compute ours, and put the blocks that differ on the copy
//!   stream. Until then the extent is not released.
//! - *conflict* (an extent the peer took alone while we were lost): the
//!   peer's data wins. Ask for its checksums, compute ours, read our blocks
//!   that differ and append them to the conflict file (durably), then tell
//!   the peer which blocks to send ([`Message::ResyncNeed`]). Until the peer
//!   acknowledges, copies of the extent wait in the receiver's queue and
//!   writes to it wait: nothing of ours is overwritten before it is saved.
//!
//! The peer's side: answer checksum requests from the store, and turn a
//! `ResyncNeed` into blocks on the copy stream (the extent then stops
//! waiting for its resync and may be released later).

use std::collections::BTreeMap;

use bytes::Bytes;
use geomirror_wire::peer::{BlockIndex, BlockSpan, Extent, Lane, Message, RequestId};

use crate::claims::ConflictEntry;
use crate::ids::SessionGen;
use crate::io::{ConflictRecord, Event, IoFault, IoOp};
use crate::limits::{DIGEST_BLOCKS_MAX, RESYNC_BLOCKS_INFLIGHT_MAX, RESYNC_EXTENTS_INFLIGHT_MAX};
use crate::node::{IoPurpose, NodeCore, Serving};
use crate::outbox::Place;
use crate::session::Pending;
use crate::time::Time;

/// What a resync job of one extent is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JobKind {
    Suspect,
    Conflict(ConflictEntry),
}

/// How far a job got.
#[derive(Clone, Debug)]
enum Stage {
    /// Checksums asked of the peer and computed here.
    Comparing { theirs: Vec<Option<Vec<u32>>>, ours: Option<Vec<u32>> },
    /// Our differing blocks are being read, then saved.
    Saving { runs: Vec<(u64, u64)> },
    /// The peer was told which blocks to send.
    Telling,
}

#[derive(Clone, Debug)]
pub(crate) struct Job {
    kind: JobKind,
    stage: Stage,
}

/// Resync progress of one volume, for `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncFigures {
    /// Extents to compare in the current resync (done and to do).
    pub extents_total: u64,
    /// Extents compared.
    pub extents_done: u64,
    /// Bytes of those extents (what is compared; an upper bound of what moves).
    pub bytes_total: u64,
    /// Bytes compared.
    pub bytes_done: u64,
    /// Blocks found different so far.
    pub blocks_differing: u64,
    /// Our blocks saved to the conflict file so far.
    pub blocks_saved: u64,
    /// When the current resync started (None: none running).
    pub started_at: Option<Time>,
}

/// The resync state of one volume.
#[derive(Debug, Default)]
pub(crate) struct Resync {
    jobs: BTreeMap<Extent, Job>,
    pub figures: ResyncFigures,
}

impl Resync {
    /// Forgets jobs in progress (their session ended); the claims still say
    /// what must be compared.
    pub fn reset(&mut self) {
        self.jobs.clear();
    }
}

/// How many extents of `blocks_per_extent` blocks are compared at once.
fn jobs_inflight_max(blocks_per_extent: u64) -> usize {
    (RESYNC_BLOCKS_INFLIGHT_MAX / blocks_per_extent.max(1)).clamp(1, RESYNC_EXTENTS_INFLIGHT_MAX as u64) as usize
}

fn chunks(blocks: u64) -> usize {
    blocks.div_ceil(DIGEST_BLOCKS_MAX as u64) as usize
}

/// Runs of blocks (volume block numbers, from `base`) whose checksums differ.
fn differing_runs(base: u64, theirs: &[u32], ours: &[u32]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, (a, b)) in theirs.iter().zip(ours).enumerate() {
        if a != b {
            let block = base + i as u64;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == block => *count += 1,
                _ => runs.push((block, 1)),
            }
        }
    }
    runs
}

impl NodeCore {
    /// Starts the resync jobs the claims ask for (session ready only).
    pub(crate) fn pump_resync(&mut self, vi: usize) {
        if !self.is_ready() || self.volumes[vi].serving != Serving::Yes {
            return;
        }
        let v = &self.volumes[vi];
        let mut wanted: Vec<(Extent, JobKind)> = v.claims.suspects().into_iter().map(|e| (e, JobKind::Suspect)).collect();
        wanted.extend(v.claims.conflicts().iter().map(|(&e, &c)| (e, JobKind::Conflict(c))));
        let extent_bytes = v.claims.geometry().extent_bytes;
        let jobs_max = jobs_inflight_max(extent_bytes / v.claims.geometry().block_bytes);
        let r = &mut self.volumes[vi].resync;
        if wanted.is_empty() {
            if let Some(started) = r.figures.started_at.take() {
                let _ = started;
                let f = r.figures;
                let volume = self.volumes[vi].index;
                self.event(Event::ResyncDone { volume, extents: f.extents_done, blocks_differing: f.blocks_differing });
            }
            return;
        }
        if r.figures.started_at.is_none() {
            r.figures = ResyncFigures { started_at: Some(self.now), ..Default::default() };
        }
        let outstanding = wanted.iter().filter(|(e, _)| !r.jobs.contains_key(e)).count() as u64 + r.jobs.len() as u64;
        r.figures.extents_total = r.figures.extents_done + outstanding;
        r.figures.bytes_total = r.figures.extents_total * extent_bytes;
        for (e, kind) in wanted {
            if self.volumes[vi].resync.jobs.len() >= jobs_max {
                break;
            }
            if self.volumes[vi].resync.jobs.contains_key(&e) {
                continue;
            }
            self.start_job(vi, e, kind);
        }
    }

    fn start_job(&mut self, vi: usize, e: Extent, kind: JobKind) {
        let g = self.volumes[vi].claims.geometry();
        let blocks = g.blocks_in(e);
        let n = chunks(blocks.end - blocks.start);
        let volume = self.volumes[vi].index;
        self.volumes[vi].resync.jobs.insert(e, Job { kind, stage: Stage::Comparing { theirs: vec![None; n], ours: None } });
        for chunk in 0..n {
            let first = blocks.start + (chunk * DIGEST_BLOCKS_MAX) as u64;
            let count = (blocks.end - first).min(DIGEST_BLOCKS_MAX as u64) as u32;
            let span = BlockSpan { first: BlockIndex(first), count };
            self.request(Pending::Digest { volume: vi, extent: e, chunk }, |id| Message::DigestRequest { id, volume, extent: e, span });
        }
        let range = (blocks.start * g.block_bytes, (blocks.end - blocks.start) * g.block_bytes);
        self.io(vi, IoOp::Digest { ranges: vec![range], block: g.block_bytes }, IoPurpose::ResyncDigest { volume: vi, extent: e });
    }

    /// The peer's checksums of one chunk of an extent we resync.
    pub(crate) fn on_digest_reply(&mut self, vi: usize, e: Extent, chunk: usize, crcs: Vec<u32>) {
        let g = self.volumes[vi].claims.geometry();
        let blocks = g.blocks_in(e);
        let first = blocks.start + (chunk * DIGEST_BLOCKS_MAX) as u64;
        let expected = (blocks.end - first).min(DIGEST_BLOCKS_MAX as u64) as usize;
        if crcs.len() != expected {
            return self.close_session(format!("protocol violation: {} checksums for a chunk of {expected} blocks", crcs.len()));
        }
        let Some(Job { stage: Stage::Comparing { theirs, .. }, .. }) = self.volumes[vi].resync.jobs.get_mut(&e) else { return };
        if let Some(slot) = theirs.get_mut(chunk) {
            *slot = Some(crcs);
        }
        self.compare_if_ready(vi, e);
    }

    /// The peer could not give checksums: compare nothing, assume all differ.
    pub(crate) fn on_digest_refused(&mut self, vi: usize, e: Extent, message: String) {
        self.event(Event::PeerRefused { volume: self.volumes[vi].index, request: "checksums", message });
        let blocks = self.volumes[vi].claims.geometry().blocks_in(e);
        self.finish_compare(vi, e, vec![(blocks.start, blocks.end - blocks.start)]);
    }

    /// Our checksums of an extent we resync.
    pub(crate) fn on_resync_digest(&mut self, vi: usize, e: Extent, result: Result<Vec<u32>, IoFault>) {
        let crcs = match result {
            Ok(crcs) => crcs,
            Err(fault) => {
                // Compare nothing: every block is treated as different.
                self.event(Event::StoreFault { volume: self.volumes[vi].index, doing: "computing checksums for a resync", fault });
                let blocks = self.volumes[vi].claims.geometry().blocks_in(e);
                return self.finish_compare(vi, e, vec![(blocks.start, blocks.end - blocks.start)]);
            }
        };
        let Some(Job { stage: Stage::Comparing { ours, .. }, .. }) = self.volumes[vi].resync.jobs.get_mut(&e) else { return };
        *ours = Some(crcs);
        self.compare_if_ready(vi, e);
    }

    fn compare_if_ready(&mut self, vi: usize, e: Extent) {
        let Some(Job { stage: Stage::Comparing { theirs, ours: Some(ours) }, .. }) = self.volumes[vi].resync.jobs.get(&e) else { return };
        if theirs.iter().any(Option::is_none) {
            return;
        }
        let theirs: Vec<u32> = theirs.iter().flat_map(|c| c.as_ref().expect("checked").iter().copied()).collect();
        let base = self.volumes[vi].claims.geometry().blocks_in(e).start;
        let runs = differing_runs(base, &theirs, ours);
        self.finish_compare(vi, e, runs);
    }

    /// The comparison of extent `e` found `runs` different.
    fn finish_compare(&mut self, vi: usize, e: Extent, runs: Vec<(u64, u64)>) {
        let Some(kind) = self.volumes[vi].resync.jobs.get(&e).map(|j| j.kind) else { return };
        let differing: u64 = runs.iter().map(|r| r.1).sum();
        let extent_bytes = self.volumes[vi].claims.geometry().extent_bytes;
        let f = &mut self.volumes[vi].resync.figures;
        f.blocks_differing += differing;
        f.bytes_done += extent_bytes;
        let job = self.volumes[vi].resync.jobs.get_mut(&e).expect("checked");
        match kind {
            JobKind::Suspect => {
                self.volumes[vi].claims.resolve_suspect(e, &runs);
                self.finish_job(vi, e);
            }
            JobKind::Conflict(_) if runs.is_empty() => {
                job.stage = Stage::Telling;
                self.tell_peer(vi, e, runs);
            }
            JobKind::Conflict(_) => {
                job.stage = Stage::Saving { runs: runs.clone() };
                let block = self.volumes[vi].claims.geometry().block_bytes;
                let ranges = runs.iter().map(|&(first, count)| (first * block, count * block)).collect();
                self.io(vi, IoOp::Read { ranges, for_copy: false }, IoPurpose::ConflictRead { volume: vi, extent: e });
            }
        }
        self.changed.insert(vi);
    }

    /// Our differing blocks of a conflict extent were read: save them.
    pub(crate) fn on_conflict_read(&mut self, vi: usize, e: Extent, result: Result<Vec<Bytes>, IoFault>) {
        let Some(Job { kind: JobKind::Conflict(entry), stage: Stage::Saving { runs } }) = self.volumes[vi].resync.jobs.get(&e).cloned()
        else {
            return;
        };
        let buffers = match result {
            Ok(b) => b,
            Err(fault) => {
                // Nothing may be overwritten that was not saved: the volume
                // stops rather than lose the blocks.
                self.stop_volume(vi, format!("reading blocks to save to the conflict file failed ({fault})"));
                return;
            }
        };
        let block = self.volumes[vi].claims.geometry().block_bytes;
        let mut records = Vec::new();
        for (&(first, _), data) in runs.iter().zip(buffers) {
            for (i, chunk) in data.chunks(block as usize).enumerate() {
                records.push(ConflictRecord {
                    offset: (first + i as u64) * block,
                    data: data.slice_ref(chunk),
                    kind: entry.kind,
                    our_generation: entry.our_generation,
                    their_generation: entry.their_generation,
                });
            }
        }
        self.io(vi, IoOp::SaveConflicts { records }, IoPurpose::ConflictSave { volume: vi, extent: e });
    }

    /// Our differing blocks of a conflict extent are in the conflict file.
    pub(crate) fn on_conflict_saved(&mut self, vi: usize, e: Extent, result: Result<(), IoFault>) {
        if let Err(fault) = result {
            self.stop_volume(
                vi,
                format!("writing the conflict file failed ({fault}); the peer's data is not applied over blocks not saved"),
            );
            return;
        }
        let Some(Job { kind: JobKind::Conflict(entry), stage: Stage::Saving { runs } }) = self.volumes[vi].resync.jobs.get(&e).cloned()
        else {
            return;
        };
        let blocks: u64 = runs.iter().map(|r| r.1).sum();
        self.volumes[vi].resync.figures.blocks_saved += blocks;
        self.event(Event::ConflictsSaved { volume: self.volumes[vi].index, extent: e, blocks, kind: entry.kind });
        self.volumes[vi].resync.jobs.get_mut(&e).expect("checked").stage = Stage::Telling;
        self.tell_peer(vi, e, runs);
    }

    fn tell_peer(&mut self, vi: usize, e: Extent, runs: Vec<(u64, u64)>) {
        let Some(Job { kind: JobKind::Conflict(entry), .. }) = self.volumes[vi].resync.jobs.get(&e) else { return };
        let epoch = entry.epoch;
        let volume = self.volumes[vi].index;
        if !self.is_ready() {
            return;
        }
        let runs: Vec<BlockSpan> =
            runs.into_iter().map(|(first, count)| BlockSpan { first: BlockIndex(first), count: count as u32 }).collect();
        self.request(Pending::ResyncNeed { volume: vi, extent: e }, |id| Message::ResyncNeed { id, volume, extent: e, epoch, runs });
    }

    /// The peer acknowledged our `ResyncNeed`: its data may land here now.
    pub(crate) fn on_resync_acked(&mut self, vi: usize, e: Extent) {
        self.volumes[vi].claims.conflict_resolved(e);
        self.finish_job(vi, e);
    }

    fn finish_job(&mut self, vi: usize, e: Extent) {
        if self.volumes[vi].resync.jobs.remove(&e).is_some() {
            self.volumes[vi].resync.figures.extents_done += 1;
        }
        self.changed.insert(vi);
    }

    // ------------------------------------------------------------ the peer's requests

    /// The peer asks for the checksums of blocks of ours.
    pub(crate) fn on_digest_request(&mut self, vi: usize, id: RequestId, extent: Extent, span: BlockSpan) {
        let g = self.volumes[vi].claims.geometry();
        let blocks = if extent.0 < g.extents() { g.blocks_in(extent) } else { 0..0 };
        let ok = span.count > 0
            && span.count as usize <= DIGEST_BLOCKS_MAX
            && span.first.0 >= blocks.start
            && span.first.0 + u64::from(span.count) <= blocks.end;
        if !ok {
            let message = format!("checksums of {} blocks from {} are not within extent {}", span.count, span.first.0, extent.0);
            self.send(Lane::Priority, Message::Error { id, message });
            return;
        }
        let Some((session, place)) = self.reserve(Lane::Priority) else { return };
        self.session.as_mut().expect("reserved").peer_requests += 1;
        let range = (span.first.0 * g.block_bytes, u64::from(span.count) * g.block_bytes);
        // The checksums must say what is durable here: the owner stops
        // tracking blocks it finds equal, and may release the extent.
        self.issue_sync(vi, IoPurpose::DigestSyncForPeer { volume: vi, session, place, id, range });
    }

    pub(crate) fn on_digest_sync_for_peer(
        &mut self,
        vi: usize,
        session: SessionGen,
        place: Place,
        id: RequestId,
        range: (u64, u64),
        result: Result<(), IoFault>,
    ) {
        if let Err(fault) = result {
            self.stop_volume(vi, format!("fdatasync failed ({fault}); writes since the last successful one may be lost"));
            if self.is_session(session) {
                self.peer_request_done();
            }
            let message = Message::Error { id, message: "the peer's volume stopped on a fault".into() };
            self.fill(session, Lane::Priority, place, vec![message]);
            return;
        }
        let block = self.volumes[vi].claims.geometry().block_bytes;
        self.io(vi, IoOp::Digest { ranges: vec![range], block }, IoPurpose::DigestForPeer { volume: vi, session, place, id });
    }

    pub(crate) fn on_digest_for_peer(
        &mut self,
        vi: usize,
        session: SessionGen,
        place: Place,
        id: RequestId,
        result: Result<Vec<u32>, IoFault>,
    ) {
        let message = match result {
            Ok(crcs) => Message::DigestReply { id, crcs },
            Err(fault) => {
                self.event(Event::StoreFault {
                    volume: self.volumes[vi].index,
                    doing: "computing checksums for the peer",
                    fault: fault.clone(),
                });
                Message::Error { id, message: format!("computing the checksums failed: {fault}") }
            }
        };
        if self.is_session(session) {
            self.peer_request_done();
        }
        self.fill(session, Lane::Priority, place, vec![message]);
    }

    /// The peer saved its differing blocks of an extent we took alone.
    pub(crate) fn on_resync_need_request(&mut self, vi: usize, id: RequestId, extent: Extent, runs: &[BlockSpan]) {
        let runs: Vec<(u64, u64)> = runs.iter().map(|s| (s.first.0, u64::from(s.count))).collect();
        self.volumes[vi].claims.on_resync_need(extent, &runs);
        self.changed.insert(vi);
        self.send(Lane::Priority, Message::Ack { id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_blocks_form_runs() {
        assert_eq!(differing_runs(100, &[1, 2, 3, 4, 5], &[1, 0, 0, 4, 0]), vec![(101, 2), (104, 1)]);
        assert_eq!(differing_runs(0, &[7, 7], &[7, 7]), vec![]);
    }

    #[test]
    fn large_extents_are_compared_fewer_at_a_time() {
        assert_eq!(jobs_inflight_max(256), RESYNC_EXTENTS_INFLIGHT_MAX, "1 MiB extents of 4 KiB blocks");
        assert_eq!(jobs_inflight_max(RESYNC_BLOCKS_INFLIGHT_MAX / 2), 2);
        assert_eq!(jobs_inflight_max(1 << 30), 1, "never fewer than one");
    }

    #[test]
    fn extents_are_cut_into_chunks() {
        assert_eq!(chunks(1), 1);
        assert_eq!(chunks(DIGEST_BLOCKS_MAX as u64), 1);
        assert_eq!(chunks(DIGEST_BLOCKS_MAX as u64 + 1), 2);
    }
}
