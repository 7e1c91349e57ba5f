//! Host requests inside the core: what each waits for, and the steps from
//! arrival to reply. A write acquires its extents group by group (claim or
//! handover as needed), writes, and syncs for FUA; a read serves each piece
//! from the store or pulls it from the peer. A request that cannot go on
//! parks on its volume and is looked at again when the volume's state
//! changes, until its deadline.

use bytes::{Bytes, BytesMut};
use geomirror_wire::peer::{CopyReport, CopySeq, Extent, Message};

use crate::claims::{PeerAccess, ReadSource, WaitReason, WriteAccess};
use crate::ids::{HostRequestId, SessionGen, VolumeIndex};
use crate::io::{HostError, HostRequest, IoFault, IoOp, StoreWrite, ZeroMode};
use crate::limits::{BACKPRESSURE_WAIT_MAX, PULL_BYTES_MAX, PULL_RETRY_DELAY, WRITE_GROUP_EXTENTS_MAX};
use crate::node::{IoPurpose, NodeCore, Serving};
use crate::replication::{AckSplit, PeerProgress, PeerWait};
use crate::session::Pending;
use crate::time::Time;

/// What a write puts in the store.
#[derive(Clone, Debug)]
pub(crate) enum WriteData {
    Data(Bytes),
    Trim,
    Zeroes { mode: ZeroMode, fast_only: bool },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum WriteStage {
    /// Acquiring the extents of the group starting at `next_extent`.
    Acquire,
    /// The group's store write is in flight (`direct`: its blocks already
    /// went to the peer with the write's own buffer).
    Writing { offset: u64, length: u64, direct: Option<DirectCopy> },
    /// The FUA sync is in flight; the last group's range stays a write in
    /// flight (its extents cannot be handed out) until it is acknowledged.
    Syncing { offset: u64, length: u64 },
    /// Written here (`sync` modes): the group's blocks are in the copy
    /// stream and its range stays a write in flight until the peer reports
    /// them (and, with `local_sync`, this store synced them).
    Replicating { offset: u64, length: u64, local_sync: Option<u64>, peer: PeerWait, written: Time },
}

/// The copy message a write of a sync mode sent with its own buffer while
/// its store write ran.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirectCopy {
    /// The copy's session and position.
    pub target: (SessionGen, CopySeq),
    /// The change count of its extents just after it started: a different
    /// count when it is done means another write ran beside it (the store
    /// may hold either's bytes) or its blocks were queued for a copy read
    /// back meanwhile (which may have read the bytes from before it).
    pub changes: u64,
}

impl WriteStage {
    fn is_acquire(&self) -> bool {
        matches!(self, WriteStage::Acquire)
    }
}

#[derive(Debug)]
pub(crate) struct WriteTask {
    offset: u64,
    length: u64,
    data: WriteData,
    fua: bool,
    /// First extent of the next group.
    next_extent: u64,
    stage: WriteStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceState {
    Todo,
    Reading,
    Pulling,
    RetryAt(Time),
    Done,
}

#[derive(Debug)]
pub(crate) struct Piece {
    offset: u64,
    length: u64,
    state: PieceState,
    data: Option<Bytes>,
}

#[derive(Debug)]
pub(crate) struct ReadTask {
    length: u64,
    pieces: Vec<Piece>,
}

/// What a request waiting for the peer does next.
enum Next {
    /// Acknowledge it.
    Done,
    /// Look again (the volume just changed: it degraded).
    Again,
    /// Wait, for this reason.
    Wait(String),
}

/// A FLUSH of a volume in a sync mode: the local sync it waits for, and
/// the copy position every write before it went out in.
#[derive(Debug, Default)]
pub(crate) struct SyncFlush {
    local_sync: Option<u64>,
    peer: Option<PeerWait>,
}

#[derive(Debug)]
pub(crate) enum TaskKind {
    Write(WriteTask),
    Read(ReadTask),
    /// None until it turns out to wait for the peer too.
    Flush(Option<SyncFlush>),
}

/// A host request in progress.
#[derive(Debug)]
pub(crate) struct HostTask {
    pub volume: VolumeIndex,
    started: Time,
    /// Waits for the peer end here (`peer_timeout` after arrival).
    deadline: Time,
    /// Waits for room under the limit, with the link up, end here.
    patience: Time,
    /// It waited for a claim or handover round trip.
    waited: bool,
    /// What it is waiting for, for the error if it waits too long.
    waiting: Option<String>,
    /// The wake-up time already queued for it (parking again until the
    /// same time queues nothing more).
    queued_wakeup: Option<Time>,
    kind: TaskKind,
}

impl NodeCore {
    pub(crate) fn on_host_request(&mut self, id: HostRequestId, volume: VolumeIndex, request: HostRequest) {
        assert!(!self.tasks.contains_key(&id), "host request id {id:?} reused while in progress");
        let Some(v) = self.volumes.get(volume.0 as usize) else {
            self.reply(id, Err(HostError::NotServing(format!("no volume #{}", volume.0))));
            return;
        };
        let g = v.claims.geometry();
        let range = match &request {
            HostRequest::Read { offset, length } => Some((*offset, u64::from(*length))),
            HostRequest::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            HostRequest::Trim { offset, length, .. } | HostRequest::WriteZeroes { offset, length, .. } => Some((*offset, *length)),
            HostRequest::Flush => None,
        };
        if let Some((offset, length)) = range {
            if !g.contains(offset, length) {
                self.reply(id, Err(HostError::OutOfRange { offset, length, size: g.size }));
                return;
            }
            if length == 0 {
                self.reply(id, Ok(matches!(request, HostRequest::Read { .. }).then(Bytes::new)));
                return;
            }
        }
        let kind = match request {
            HostRequest::Read { offset, length } => {
                TaskKind::Read(ReadTask { length: length.into(), pieces: read_pieces(g, offset, length.into()) })
            }
            HostRequest::Write { offset, data, fua } => {
                TaskKind::Write(WriteTask::new(g, offset, data.len() as u64, WriteData::Data(data), fua))
            }
            HostRequest::Trim { offset, length, fua } => TaskKind::Write(WriteTask::new(g, offset, length, WriteData::Trim, fua)),
            HostRequest::WriteZeroes { offset, length, mode, fast_only, fua } => {
                TaskKind::Write(WriteTask::new(g, offset, length, WriteData::Zeroes { mode, fast_only }, fua))
            }
            HostRequest::Flush => TaskKind::Flush(None),
        };
        let task = HostTask {
            volume,
            started: self.now,
            deadline: self.now + self.config.peer_timeout,
            patience: self.now + BACKPRESSURE_WAIT_MAX,
            waited: false,
            waiting: None,
            queued_wakeup: None,
            kind,
        };
        self.tasks.insert(id, task);
        self.run_task(id);
    }

    /// Looks again at every request parked on volume `vi`.
    pub(crate) fn run_parked(&mut self, vi: usize) {
        let parked = std::mem::take(&mut self.volumes[vi].parked);
        for id in parked {
            self.run_task(id);
        }
    }

    fn park(&mut self, id: HostRequestId, until: Time, why: String) {
        let task = self.tasks.get_mut(&id).expect("parked task exists");
        task.waiting = Some(why);
        let vi = task.volume.0 as usize;
        let queued = task.queued_wakeup.is_some_and(|t| t == until && t > self.now);
        task.queued_wakeup = Some(until);
        self.volumes[vi].parked.insert(id);
        if !queued {
            self.deadlines.push(std::cmp::Reverse((until, id)));
        }
    }

    fn finish(&mut self, id: HostRequestId, result: Result<Option<Bytes>, HostError>) {
        // A node that may not serve answers nothing from its own data, even
        // a request that started before (its lease ended meanwhile).
        let result = match result {
            Ok(_) if !self.may_serve() => {
                Err(HostError::PeerUnavailable(format!("this node may not serve hosts now: {}", self.standing.reason)))
            }
            other => other,
        };
        let task = self.tasks.remove(&id).expect("finished task exists");
        let vi = task.volume.0 as usize;
        self.volumes[vi].parked.remove(&id);
        if let TaskKind::Write(WriteTask { stage: WriteStage::Replicating { offset, length, .. }, .. }) = task.kind {
            self.volumes[vi].claims.end_write_unmarked(offset, length, self.now);
            self.changed.insert(vi);
        }
        if task.waited && result.is_ok() && matches!(task.kind, TaskKind::Write(_)) {
            self.volumes[vi].counters.claim_round_trips += 1;
        }
        self.reply(id, result);
    }

    /// Moves a request as far as it goes now.
    fn run_task(&mut self, id: HostRequestId) {
        let Some(task) = self.tasks.get(&id) else { return };
        let vi = task.volume.0 as usize;
        if let Serving::Stopped(reason) | Serving::Mismatch(reason) = &self.volumes[vi].serving {
            let busy = match &task.kind {
                TaskKind::Write(w) => !w.stage.is_acquire() && !matches!(w.stage, WriteStage::Replicating { .. }),
                TaskKind::Read(r) => r.pieces.iter().any(|p| matches!(p.state, PieceState::Reading | PieceState::Pulling)),
                TaskKind::Flush(_) => false,
            };
            if !busy {
                let reason = reason.clone();
                self.finish(id, Err(HostError::NotServing(reason)));
                return;
            }
        }
        let starting = match &task.kind {
            TaskKind::Write(w) => w.stage.is_acquire(),
            TaskKind::Read(r) => r.pieces.iter().all(|p| !matches!(p.state, PieceState::Reading | PieceState::Pulling)),
            TaskKind::Flush(f) => f.is_none(),
        };
        if starting && !self.may_serve() {
            let (deadline, why) = (task.deadline, format!("this node may not serve hosts now: {}", self.standing.reason));
            self.wait_or_fail(id, deadline, why);
            return;
        }
        match &task.kind {
            TaskKind::Write(_) => self.run_write(id, vi),
            TaskKind::Read(_) => self.run_read(id, vi),
            TaskKind::Flush(None) if self.volumes[vi].replication.peer_need(true).is_none() => {
                self.issue_sync(vi, IoPurpose::HostSync { task: id });
            }
            TaskKind::Flush(_) => self.run_sync_flush(id, vi),
        }
    }

    fn run_write(&mut self, id: HostRequestId, vi: usize) {
        let task = self.tasks.get(&id).expect("running task exists");
        let TaskKind::Write(w) = &task.kind else { unreachable!() };
        match w.stage {
            WriteStage::Acquire => {}
            WriteStage::Replicating { .. } => return self.run_replicating(id, vi),
            WriteStage::Writing { .. } | WriteStage::Syncing { .. } => return,
        }
        let deadline = task.deadline;
        if let Some(why) = self.sync_write_blocked(vi) {
            self.wait_or_fail(id, deadline, why);
            return;
        }
        let task = &self.tasks[&id];
        let TaskKind::Write(w) = &task.kind else { unreachable!() };
        let g = self.volumes[vi].claims.geometry();
        let last = g.extents_of(w.offset, w.length).end().to_owned();
        let group = WRITE_GROUP_EXTENTS_MAX.min(self.volumes[vi].settings.knobs.max_owned as u64).max(1);
        let first = w.next_extent;
        let end = (first + group - 1).min(last);
        let (deadline, patience) = (task.deadline, task.patience);
        let peer = self.peer_access();
        let access = self.volumes[vi].claims.begin_write(first..=end, self.now, peer);
        let counter = self.volumes[vi].claims.counter();
        let volume = self.volumes[vi].index;
        match access {
            WriteAccess::Admitted => {
                let task = self.tasks.get_mut(&id).expect("running task exists");
                let TaskKind::Write(w) = &mut task.kind else { unreachable!() };
                let piece_offset = w.offset.max(first * g.extent_bytes);
                let piece_end = (w.offset + w.length).min((end + 1) * g.extent_bytes);
                let length = piece_end - piece_offset;
                let write = match &w.data {
                    WriteData::Data(d) => {
                        let at = (piece_offset - w.offset) as usize;
                        StoreWrite::Data { offset: piece_offset, data: d.slice(at..at + length as usize) }
                    }
                    WriteData::Trim => StoreWrite::Trim { offset: piece_offset, length },
                    WriteData::Zeroes { mode, fast_only } => {
                        StoreWrite::Zeroes { offset: piece_offset, length, mode: *mode, fast_only: *fast_only }
                    }
                };
                w.next_extent = end + 1;
                let fua = w.fua;
                // A sync mode: the blocks leave now, with this buffer, while
                // the store is written.
                let direct = match (&write, self.volumes[vi].replication.peer_need(fua)) {
                    (StoreWrite::Data { offset, data }, Some(need)) => self.send_direct_copy(vi, *offset, data, need),
                    _ => None,
                };
                let task = self.tasks.get_mut(&id).expect("running task exists");
                let TaskKind::Write(w) = &mut task.kind else { unreachable!() };
                w.stage = WriteStage::Writing { offset: piece_offset, length, direct };
                self.io(vi, IoOp::Write { writes: vec![write], sync: false }, IoPurpose::HostWrite { task: id });
            }
            WriteAccess::Claim(extents) => {
                self.tasks.get_mut(&id).expect("exists").waited = true;
                let releases = self.volumes[vi].claims.releases_to_carry();
                let claim = self.volumes[vi].claims.last_claim();
                let pending = Pending::Claim { volume: vi, claim, extents: extents.clone(), releases: releases.clone() };
                self.request_with_releases(vi, pending, move |id| Message::Claim { id, volume, counter, extents, releases });
                self.changed.insert(vi);
                self.park(id, deadline, format!("claiming extent {first} from the peer"));
            }
            WriteAccess::Handover(extent) => {
                self.tasks.get_mut(&id).expect("exists").waited = true;
                let releases = self.volumes[vi].claims.releases_to_carry();
                let pending = Pending::Handover { volume: vi, extent, releases: releases.clone() };
                self.request_with_releases(vi, pending, move |id| Message::Handover { id, volume, counter, extent, releases });
                self.changed.insert(vi);
                self.park(id, deadline, format!("asking the peer to hand over extent {}", extent.0));
            }
            WriteAccess::Wait(reason) => {
                let ready = peer == PeerAccess::Ready;
                let (limit, why) = match reason {
                    WaitReason::PeerAnswer => (deadline, format!("the peer did not answer for extents {first}..={end}")),
                    WaitReason::Busy => (if ready { patience } else { deadline }, format!("extents {first}..={end} stayed in transition")),
                    WaitReason::Limit => (
                        if ready { patience } else { deadline },
                        format!(
                            "the owned-extent limit was reached and no owned extent became durable at the peer (extents {first}..={end})"
                        ),
                    ),
                    WaitReason::Session => (deadline, format!("extents {first}..={end} need the peer, which is unreachable")),
                    WaitReason::File => (patience, format!("extents {first}..={end} were claimed alone; their record was not written")),
                    WaitReason::Resync => (
                        if ready { patience } else { deadline },
                        format!("extents {first}..={end} are being resynced from the peer after an outage"),
                    ),
                };
                self.wait_or_fail(id, limit, why);
            }
        }
    }

    /// Parks a request until `limit`, or fails it if that has passed.
    fn wait_or_fail(&mut self, id: HostRequestId, limit: Time, why: String) {
        if self.now >= limit {
            let waited = self.now.since(self.tasks[&id].started);
            self.finish(id, Err(HostError::PeerUnavailable(format!("{why} (gave up after {waited:?})"))));
        } else {
            self.park(id, limit, why);
        }
    }

    pub(crate) fn on_host_write_done(&mut self, id: HostRequestId, result: Result<(), IoFault>) {
        let now = self.now;
        let task = self.tasks.get_mut(&id).expect("write completion for a live task");
        let vi = task.volume.0 as usize;
        let TaskKind::Write(w) = &mut task.kind else { unreachable!() };
        let WriteStage::Writing { offset, length, direct } = w.stage else { panic!("write completion in stage {:?}", w.stage) };
        let last = self.volumes[vi].claims.geometry().extents_of(w.offset, w.length).end().to_owned();
        self.changed.insert(vi);
        // What the direct copy carried is what the store holds, and the
        // newest copy of its blocks, only if the write succeeded alone in
        // its extents, nothing queued their blocks meanwhile, and its
        // session still runs; otherwise its blocks go out again, read back.
        let direct = direct.filter(|d| {
            result.is_ok()
                && self.session.as_ref().is_some_and(|s| s.id == d.target.0)
                && self.volumes[vi].claims.changes_in(offset, length) == d.changes
        });
        if let Err(fault) = result {
            // The store may hold part of a failed write: its blocks are copied.
            self.volumes[vi].claims.end_write(offset, length, now);
            self.finish(id, Err(HostError::Store(fault)));
            return;
        }
        if let Some(need) = self.volumes[vi].replication.peer_need(w.fua) {
            // A sync mode: the blocks go to the peer now (or went already);
            // the write stays in flight until it reports them.
            let mut peer = PeerWait::new(need);
            match direct {
                Some(d) => peer.target = Some(d.target),
                None => self.volumes[vi].claims.mark_written(offset, length),
            }
            // Durable here too before the acknowledgement, the sync running
            // while the copy travels: a crash of this node alone loses no
            // acknowledged write in either mode.
            w.stage = WriteStage::Replicating { offset, length, local_sync: None, peer, written: now };
            let mark = self.want_local_sync(vi);
            let task = self.tasks.get_mut(&id).expect("live");
            let TaskKind::Write(WriteTask { stage: WriteStage::Replicating { local_sync, .. }, .. }) = &mut task.kind else {
                unreachable!()
            };
            *local_sync = Some(mark);
            self.run_replicating(id, vi);
        } else if w.next_extent <= last {
            // (A direct copy's blocks are marked again here: the volume
            // turned async meanwhile, and the store's bytes are the ones
            // to send.)
            self.volumes[vi].claims.end_write(offset, length, now);
            w.stage = WriteStage::Acquire;
            self.run_task(id);
        } else if w.fua {
            w.stage = WriteStage::Syncing { offset, length };
            self.issue_sync(vi, IoPurpose::HostSync { task: id });
        } else {
            self.volumes[vi].claims.end_write(offset, length, now);
            self.finish(id, Ok(None));
        }
    }

    pub(crate) fn on_host_sync_done(&mut self, id: HostRequestId, result: Result<(), IoFault>) {
        let now = self.now;
        let task = &self.tasks[&id];
        let vi = task.volume.0 as usize;
        if let TaskKind::Write(WriteTask { stage: WriteStage::Syncing { offset, length }, .. }) = task.kind {
            self.volumes[vi].claims.end_write(offset, length, now);
            self.changed.insert(vi);
        }
        match result {
            Ok(()) => self.finish(id, Ok(None)),
            Err(fault) => {
                // After a failed fdatasync the kernel may have dropped the
                // dirty pages: nothing written since the last good sync can
                // be trusted durable. The volume stops rather than pretend.
                self.stop_volume(vi, format!("fdatasync failed ({fault}); writes since the last successful one may be lost"));
                self.finish(id, Err(HostError::Store(fault)));
            }
        }
    }

    /// A write of a sync mode, written here: acknowledged (or on to its
    /// next group) once the peer reported its blocks and, if it needs one,
    /// the local sync is done.
    fn run_replicating(&mut self, id: HostRequestId, vi: usize) {
        let task = &self.tasks[&id];
        let (started, deadline) = (task.started, task.deadline);
        let TaskKind::Write(w) = &task.kind else { unreachable!() };
        let WriteStage::Replicating { offset, length, local_sync, mut peer, written } = w.stage else { unreachable!() };
        let last = self.volumes[vi].claims.geometry().extents_of(w.offset, w.length).end().to_owned();
        let more = w.next_extent <= last;
        if let Serving::Stopped(reason) = &self.volumes[vi].serving {
            let reason = reason.clone();
            self.finish(id, Err(HostError::NotServing(reason)));
            return;
        }
        let local_done = local_sync.is_none_or(|mark| self.volumes[vi].syncs.done >= mark);
        // Async now (degraded, or switched by an operator): nothing to wait for.
        let progress = if self.volumes[vi].replication.peer_need(peer.need == CopyReport::Durable).is_none() {
            PeerProgress::Reached
        } else {
            self.advance_peer_wait(vi, &mut peer, Some((offset, length)))
        };
        if let Some(TaskKind::Write(w)) = self.tasks.get_mut(&id).map(|t| &mut t.kind)
            && let WriteStage::Replicating { peer: p, .. } = &mut w.stage
        {
            *p = peer;
        }
        match self.next_after_peer(vi, progress, local_done, "the write is done here") {
            Next::Done => {
                if let Some(target) = peer.target {
                    self.volumes[vi].replication.note_acked(target);
                }
                if !more {
                    let now = self.now;
                    let waited = self.volumes[vi].replication.peer_need(false).is_some();
                    let durable = (waited && peer.need == CopyReport::Durable).then(|| now.since(started));
                    self.volumes[vi].replication.last_ack = Some(AckSplit {
                        local: written.since(started),
                        peer_received: peer.received_at.map(|t| t.since(started)),
                        peer_durable: durable,
                    });
                    self.finish(id, Ok(None));
                    return;
                }
                self.volumes[vi].claims.end_write_unmarked(offset, length, self.now);
                self.changed.insert(vi);
                let task = self.tasks.get_mut(&id).expect("live");
                let TaskKind::Write(w) = &mut task.kind else { unreachable!() };
                w.stage = WriteStage::Acquire;
                self.run_task(id);
            }
            Next::Again => self.run_replicating(id, vi),
            Next::Wait(why) => self.wait_or_fail(id, deadline, why),
        }
    }

    /// What a write or flush that waits for the peer (and a local sync)
    /// does next; with the link down and the `degrade` policy, the volume
    /// degrades and it looks again.
    fn next_after_peer(&mut self, vi: usize, progress: PeerProgress, local_done: bool, what: &str) -> Next {
        match progress {
            PeerProgress::Reached if local_done => Next::Done,
            PeerProgress::Reached => Next::Wait("waiting for the local fdatasync".into()),
            PeerProgress::Waiting(why) => Next::Wait(why),
            PeerProgress::Lost { link_down } if link_down && self.enter_degraded(vi, "the peer is unreachable") => Next::Again,
            PeerProgress::Lost { .. } => {
                Next::Wait(format!("{what}; the peer is unreachable and volume `{}` waits for it", self.volumes[vi].settings.name))
            }
        }
    }

    /// A FLUSH of a volume in a sync mode: every write before it durable
    /// here and at the peer.
    fn run_sync_flush(&mut self, id: HostRequestId, vi: usize) {
        let deadline = self.tasks[&id].deadline;
        let first = matches!(self.tasks[&id].kind, TaskKind::Flush(None));
        if first {
            let mark = self.want_local_sync(vi);
            let flush = SyncFlush { local_sync: Some(mark), peer: Some(PeerWait::new(CopyReport::Durable)) };
            self.tasks.get_mut(&id).expect("live").kind = TaskKind::Flush(Some(flush));
        }
        let TaskKind::Flush(Some(flush)) = &self.tasks[&id].kind else { unreachable!() };
        let local_done = flush.local_sync.is_none_or(|mark| self.volumes[vi].syncs.done >= mark);
        let mut peer = flush.peer.expect("set above");
        let progress = if self.volumes[vi].replication.peer_need(true).is_none() {
            PeerProgress::Reached
        } else {
            // Every write acknowledged so far went out by this copy (None:
            // scan the backlog).
            if let Some(target) = self.volumes[vi].replication.flush_target(self.session.as_ref().map(|s| s.id)) {
                peer.target.get_or_insert(target);
            }
            self.advance_peer_wait(vi, &mut peer, None)
        };
        if let Some(TaskKind::Flush(Some(flush))) = self.tasks.get_mut(&id).map(|t| &mut t.kind) {
            flush.peer = Some(peer);
        }
        if let Serving::Stopped(reason) = &self.volumes[vi].serving {
            let reason = reason.clone();
            self.finish(id, Err(HostError::NotServing(reason)));
            return;
        }
        match self.next_after_peer(vi, progress, local_done, "the flush needs the peer") {
            Next::Done => {
                if peer.target.is_some() && self.volumes[vi].replication.peer_need(true).is_some() {
                    // The whole backlog before this flush is at the peer.
                    self.volumes[vi].replication.backlog_unknown = false;
                }
                self.finish(id, Ok(None));
            }
            Next::Again => self.run_sync_flush(id, vi),
            Next::Wait(why) => self.wait_or_fail(id, deadline, why),
        }
    }

    fn run_read(&mut self, id: HostRequestId, vi: usize) {
        let now = self.now;
        let peer = self.peer_access();
        let task = self.tasks.get(&id).expect("running task exists");
        let TaskKind::Read(r) = &task.kind else { unreachable!() };
        let deadline = task.deadline;
        let g = self.volumes[vi].claims.geometry();
        let mut local = Vec::new();
        let mut pulls = Vec::new();
        let mut wait: Option<(Time, String)> = None;
        for (i, p) in r.pieces.iter().enumerate() {
            match p.state {
                PieceState::Todo => {}
                PieceState::RetryAt(t) if t <= now => {}
                PieceState::RetryAt(t) => {
                    wait = Some((
                        t.min(wait.as_ref().map_or(t, |w| w.0)),
                        format!("the peer no longer owns extent {}; asking again", p.offset / g.extent_bytes),
                    ));
                    continue;
                }
                _ => continue,
            }
            let extent = Extent(p.offset / g.extent_bytes);
            match self.volumes[vi].claims.read_source(extent) {
                ReadSource::Local => local.push(i),
                ReadSource::Peer if peer == PeerAccess::Ready => pulls.push(i),
                ReadSource::Peer => wait = Some((deadline, format!("extent {} is owned by the peer, which is unreachable", extent.0))),
                ReadSource::Wait => wait = Some((deadline, format!("extent {} is being handed over to this node", extent.0))),
            }
        }
        let volume = self.volumes[vi].index;
        let task = self.tasks.get_mut(&id).expect("running task exists");
        let TaskKind::Read(r) = &mut task.kind else { unreachable!() };
        for &i in &local {
            r.pieces[i].state = PieceState::Reading;
        }
        let ranges: Vec<(u64, u64)> = local.iter().map(|&i| (r.pieces[i].offset, r.pieces[i].length)).collect();
        let mut requests = Vec::new();
        for &i in &pulls {
            r.pieces[i].state = PieceState::Pulling;
            requests.push((i, r.pieces[i].offset, r.pieces[i].length as u32));
        }
        let all_done = r.pieces.iter().all(|p| p.state == PieceState::Done);
        let pulling = r.pieces.iter().any(|p| p.state == PieceState::Pulling);
        if !ranges.is_empty() {
            self.io(vi, IoOp::Read { ranges, for_copy: false }, IoPurpose::HostRead { task: id, pieces: local });
        }
        for (piece, offset, length) in requests {
            self.request(Pending::Pull { task: id, piece }, |id| Message::Pull { id, volume, offset, length });
        }
        if all_done {
            self.complete_read(id);
            return;
        }
        match wait {
            Some((until, why)) => self.wait_or_fail(id, until.min(deadline), why),
            // A pull in flight: its answer, or the deadline, moves it on.
            None if pulling => {
                self.wait_or_fail(id, deadline, format!("the peer did not answer a pull within {:?}", self.config.peer_timeout))
            }
            None => {}
        }
    }

    fn complete_read(&mut self, id: HostRequestId) {
        let task = self.tasks.get_mut(&id).expect("exists");
        let TaskKind::Read(r) = &mut task.kind else { unreachable!() };
        let data = if r.pieces.len() == 1 {
            r.pieces[0].data.take().expect("done piece has data")
        } else {
            let mut buf = BytesMut::with_capacity(r.length as usize);
            for p in &mut r.pieces {
                buf.extend_from_slice(&p.data.take().expect("done piece has data"));
            }
            buf.freeze()
        };
        self.finish(id, Ok(Some(data)));
    }

    pub(crate) fn on_host_read_done(&mut self, id: HostRequestId, pieces: Vec<usize>, result: Result<Vec<Bytes>, IoFault>) {
        match result {
            Ok(buffers) => {
                // The request may have failed meanwhile (another piece).
                let Some(task) = self.tasks.get_mut(&id) else { return };
                let TaskKind::Read(r) = &mut task.kind else { unreachable!() };
                assert_eq!(buffers.len(), pieces.len(), "one buffer per range");
                for (i, data) in pieces.into_iter().zip(buffers) {
                    assert_eq!(data.len() as u64, r.pieces[i].length, "a read returned a short buffer");
                    r.pieces[i].data = Some(data);
                    r.pieces[i].state = PieceState::Done;
                }
                if r.pieces.iter().all(|p| p.state == PieceState::Done) {
                    self.complete_read(id);
                }
            }
            Err(fault) => {
                if self.tasks.contains_key(&id) {
                    self.fail_read(id, HostError::Store(fault));
                }
            }
        }
    }

    /// Fails a read; pieces still in flight are abandoned (their answers
    /// find no task).
    fn fail_read(&mut self, id: HostRequestId, error: HostError) {
        self.finish(id, Err(error));
    }

    /// The answer to a pull of ours.
    pub(crate) fn on_pull_reply(&mut self, id: HostRequestId, piece: usize, data: Option<Bytes>) {
        let now = self.now;
        let Some(task) = self.tasks.get_mut(&id) else { return };
        let vi = task.volume.0 as usize;
        let TaskKind::Read(r) = &mut task.kind else { return };
        let p = &mut r.pieces[piece];
        match data {
            Some(data) if data.len() as u64 == p.length => {
                p.data = Some(data);
                p.state = PieceState::Done;
                self.volumes[vi].counters.pulls += 1;
                if r.pieces.iter().all(|p| p.state == PieceState::Done) {
                    self.complete_read(id);
                }
            }
            // The peer no longer holds the newest data (ownership moved:
            // a release or a handover on its way): look again soon.
            _ => {
                p.state = PieceState::RetryAt(now + PULL_RETRY_DELAY);
                self.changed.insert(vi);
            }
        }
    }

    /// The peer refused a pull of ours.
    pub(crate) fn on_pull_refused(&mut self, id: HostRequestId, message: String) {
        if self.tasks.contains_key(&id) {
            self.fail_read(id, HostError::PeerUnavailable(format!("the peer refused a pull: {message}")));
        }
    }

    /// A pull of ours was lost with its session: the piece is asked again
    /// on the next session (or fails at its deadline).
    pub(crate) fn on_pull_lost(&mut self, id: HostRequestId, piece: usize) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        let vi = task.volume.0 as usize;
        if let TaskKind::Read(r) = &mut task.kind
            && r.pieces[piece].state == PieceState::Pulling
        {
            r.pieces[piece].state = PieceState::Todo;
            self.changed.insert(vi);
            self.volumes[vi].parked.insert(id);
        }
    }
}

impl HostTask {
    /// Written here (or a flush) and waiting for the peer.
    pub(crate) fn waits_for_peer(&self) -> bool {
        matches!(&self.kind, TaskKind::Write(WriteTask { stage: WriteStage::Replicating { .. }, .. }) | TaskKind::Flush(Some(_)))
    }
}

impl WriteTask {
    fn new(g: crate::geometry::Geometry, offset: u64, length: u64, data: WriteData, fua: bool) -> WriteTask {
        WriteTask { offset, length, data, fua, next_extent: offset / g.extent_bytes, stage: WriteStage::Acquire }
    }
}

/// A read split at extent boundaries, and into pieces a pull can carry.
fn read_pieces(g: crate::geometry::Geometry, offset: u64, length: u64) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let end = offset + length;
    let mut at = offset;
    while at < end {
        let piece_end = end.min((at / g.extent_bytes + 1) * g.extent_bytes).min(at + PULL_BYTES_MAX);
        pieces.push(Piece { offset: at, length: piece_end - at, state: PieceState::Todo, data: None });
        at = piece_end;
    }
    pieces
}
