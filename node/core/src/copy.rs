//! Data between the nodes: the copy stream (sending and receiving), the
//! blocks of handovers in both directions, and the grouped fdatasync that
//! turns received copies into durable ones.
//!
//! Receiving: copies and handover blocks are written to the store one job
//! at a time, in arrival order, each copy run checked against the extent's
//! current epoch just before it is written (handover blocks were checked
//! on arrival); host writes to an extent wait while peer data for it is
//! being written; the copies queued behind the first go in the same job.
//! Copies a host waits for in memory (`sync-memory`) are reported received
//! at arrival; copies it waits for durably are synced in the same job as
//! their write when nothing waits behind them, or by the grouped fdatasync
//! at once; the rest are reported received when the grouped fdatasync
//! starts (after `COPY_SYNC_LINGER`, or the shorter
//! `ACKED_COPY_SYNC_LINGER` while a copy answered for from memory is not
//! durable), and durable when it ends.
//!
//! Sending: a write of a sync mode sends its own buffer (see
//! `replication`); otherwise batches of unsent blocks are read back from
//! the store (or the runtime's memory of recent writes) and sent
//! in order (each batch reserves its place on the bulk lane), within a
//! window of bytes not yet received and messages not yet durable.

use bytes::Bytes;
use geomirror_wire::peer::{BlockIndex, BlockRun, CopyItem, CopyReport, CopySeq, Epoch, Extent, Lane, Message, RequestId};

use crate::claims::CopyRun;
use crate::host::DirectCopy;
use crate::ids::SessionGen;
use crate::io::{Event, IoFault, IoOp, StoreWrite, ZeroMode};
use crate::limits::{
    ACKED_COPY_SYNC_LINGER, APPLY_JOB_BYTES_MAX, COPY_BATCH_BYTES_MAX, COPY_BATCH_RUNS_MAX, COPY_INFLIGHT_MESSAGES_MAX, COPY_LINGER,
    COPY_READS_INFLIGHT_MAX, COPY_SYNC_LINGER, COPY_WINDOW_BYTES, HANDOVER_PART_BYTES_MAX,
};
use crate::node::{ApplyJob, DurableWaiter, Give, GiveStage, IoPurpose, NodeCore, Serving};
use crate::outbox::Place;

impl NodeCore {
    // ------------------------------------------------------------ gives

    /// The blocks of a give were read: commit the give, then reply once
    /// the claims file says the peer owns the extent.
    pub(crate) fn on_give_read(&mut self, vi: usize, extent: Extent, runs: Vec<(BlockIndex, u64)>, result: Result<Vec<Bytes>, IoFault>) {
        let Some(give) = self.volumes[vi].gives.get(&extent) else { return };
        let (session, id) = (give.session, give.id);
        let data = match result {
            Ok(data) => data,
            Err(fault) => {
                // Nothing was given: the extent stays ours, writes go on.
                self.event(Event::StoreFault {
                    volume: self.volumes[vi].index,
                    doing: "reading blocks for a handover",
                    fault: fault.clone(),
                });
                self.volumes[vi].gives.remove(&extent);
                self.volumes[vi].claims.abandon_handover(extent);
                self.peer_request_done();
                self.send(Lane::Priority, Message::Error { id, message: format!("reading the extent's blocks failed: {fault}") });
                self.changed.insert(vi);
                return;
            }
        };
        let Some(epoch) = self.volumes[vi].claims.commit_give(extent) else {
            // Not expected: while its blocks are read the extent stays owned
            // and handed out (a session end removes the give first). Answer
            // as for a failed read, so the requester does not wait in vain.
            self.volumes[vi].gives.remove(&extent);
            self.peer_request_done();
            if self.is_session(session) {
                self.send(Lane::Priority, Message::Error { id, message: "the extent is no longer ours to give".into() });
            }
            return;
        };
        let counter = self.volumes[vi].claims.counter();
        let blocks: Vec<BlockRun> = runs.iter().zip(data).map(|((first, _), data)| BlockRun { first: *first, data }).collect();
        let block = self.volumes[vi].claims.geometry().block_bytes;
        let messages = handover_messages(id, counter, epoch, blocks, block);
        let Some((_, place)) = self.reserve(Lane::Priority).filter(|(s, _)| *s == session) else {
            // The session ended after the read: the give stays recorded, and
            // the next session's sync revokes it (we hold the newest data);
            // until then it keeps its place in the budget.
            self.volumes[vi].gives.remove(&extent);
            self.want_durable(vi);
            return;
        };
        // The blocks it carries came from our page cache: a sync issued now
        // makes them durable here too, before the peer owns the extent.
        self.issue_sync(vi, IoPurpose::StoreSync { volume: vi });
        let version = self.volumes[vi].claims.file_version();
        let mark = self.volumes[vi].syncs.issued;
        self.volumes[vi].gives.get_mut(&extent).expect("checked").stage = GiveStage::Durable { place, messages, version, sync: mark };
        self.want_durable(vi);
        self.changed.insert(vi);
    }

    /// Sends the reply of a committed give once its claims file version and
    /// its store sync are durable (or an error, if the volume stopped).
    pub(crate) fn finish_give(&mut self, vi: usize, extent: Extent) {
        let v = &self.volumes[vi];
        let Some(Give { stage: GiveStage::Durable { version, sync, .. }, .. }) = v.gives.get(&extent) else { return };
        let stopped = matches!(v.serving, Serving::Stopped(_));
        if !stopped && (v.file.durable < *version || v.syncs.done < *sync) {
            return;
        }
        let give = self.volumes[vi].gives.remove(&extent).expect("checked");
        let GiveStage::Durable { place, messages, .. } = give.stage else { unreachable!() };
        if self.is_session(give.session) {
            self.peer_request_done();
        }
        let messages = if stopped {
            vec![Message::Error { id: give.id, message: "the giver's volume stopped on a fault".into() }]
        } else {
            self.volumes[vi].counters.handovers_given += 1;
            messages
        };
        self.fill(give.session, Lane::Priority, place, messages);
    }

    // ------------------------------------------------------------ copy stream, sending

    /// Sends what the copy stream may send now: releases that are durable
    /// here, then batches of unsent blocks within the window.
    pub(crate) fn pump_sender(&mut self, vi: usize) {
        let ready = self.session.as_ref().is_some_and(|s| s.ready && s.bulk_up);
        if !ready || self.volumes[vi].serving != Serving::Yes {
            // The stream starts over (with a fresh linger) when it can run.
            self.volumes[vi].sender.linger_until = None;
            self.volumes[vi].sender.idle = true;
            return;
        }
        let s = self.session.as_ref().expect("checked");
        let session = s.id;
        let now = self.now;
        let v = &mut self.volumes[vi];
        v.sender.unsent_since = if v.claims.has_unsent() { Some(v.sender.unsent_since.unwrap_or(now)) } else { None };
        let durable = self.volumes[vi].file.durable;
        let released = self.volumes[vi].claims.take_releases(durable);
        if !released.is_empty() {
            self.volumes[vi].counters.releases += released.len() as u64;
            let volume = self.volumes[vi].index;
            self.send(Lane::Bulk, Message::Release { volume, extents: released });
        }
        let block = self.volumes[vi].claims.geometry().block_bytes;
        loop {
            let v = &mut self.volumes[vi];
            if !v.claims.has_unsent() {
                v.sender.idle = true;
                v.sender.linger_until = None;
                return;
            }
            let waited_for = v.replication.peer_need(false).is_some();
            if v.sender.idle && !waited_for {
                // Writes are trickling in: gather a few into one message
                // (not when hosts wait for them: a sync mode).
                v.sender.idle = false;
                v.sender.linger_until = Some(now + COPY_LINGER);
            }
            if v.sender.linger_until.is_some_and(|t| t > now) {
                return;
            }
            v.sender.linger_until = None;
            if v.sender.reads_in_flight >= COPY_READS_INFLIGHT_MAX
                || v.claims.copies_in_flight() >= COPY_INFLIGHT_MESSAGES_MAX
                || v.claims.unreceived_bytes() >= COPY_WINDOW_BYTES
            {
                return;
            }
            let Some((seq, runs)) = v.claims.next_copy_batch((COPY_BATCH_BYTES_MAX / block).max(1), COPY_BATCH_RUNS_MAX) else { return };
            v.sender.reads_in_flight += 1;
            v.sender.sent_at.push_back((seq, now));
            let report = v.replication.copy_report();
            let ranges = runs.iter().map(|r| (r.first.0 * block, r.count * block)).collect();
            let (_, place) = self.reserve(Lane::Bulk).expect("a ready session");
            // Asked durable at once: no Destage needed for it.
            self.note_copy_report(vi, session, seq, report);
            self.io(vi, IoOp::Read { ranges, for_copy: true }, IoPurpose::CopyRead { volume: vi, session, place, seq, runs });
            if waited_for {
                // Writes waiting for these blocks can fix their copy position.
                self.changed.insert(vi);
            }
        }
    }

    /// Sends the blocks of a sync-mode write as a copy of their own, with
    /// the write's buffer, while its store write runs (no read back, and
    /// the local write off the round trip's path). None: they take the
    /// stream's usual way once written (see `Claims::direct_copy` for when).
    pub(crate) fn send_direct_copy(&mut self, vi: usize, offset: u64, data: &Bytes, report: CopyReport) -> Option<DirectCopy> {
        let session = self.session.as_ref().filter(|s| s.ready && s.bulk_up)?.id;
        let v = &mut self.volumes[vi];
        let block = v.claims.geometry().block_bytes;
        let length = data.len() as u64;
        if v.serving != Serving::Yes
            || !offset.is_multiple_of(block)
            || !length.is_multiple_of(block)
            || length == 0
            || length > COPY_BATCH_BYTES_MAX
            || v.claims.copies_in_flight() >= COPY_INFLIGHT_MESSAGES_MAX
            || v.claims.unreceived_bytes() + length > COPY_WINDOW_BYTES
        {
            return None;
        }
        let (seq, runs, changes) = v.claims.direct_copy(offset, length, COPY_BATCH_RUNS_MAX)?;
        v.sender.sent_at.push_back((seq, self.now));
        let volume = v.index;
        let items: Vec<CopyItem> = runs
            .iter()
            .map(|run| {
                let at = (run.first.0 * block - offset) as usize;
                copy_item(run, data.slice(at..at + (run.count * block) as usize), &mut v.counters.copy_sent_bytes)
            })
            .collect();
        self.note_copy_report(vi, session, seq, report);
        self.send(Lane::Bulk, Message::Copy { seq, volume, items, report });
        self.changed.insert(vi);
        Some(DirectCopy { target: (session, seq), changes })
    }

    pub(crate) fn on_copy_read(
        &mut self,
        vi: usize,
        session: SessionGen,
        place: Place,
        seq: CopySeq,
        runs: Vec<CopyRun>,
        result: Result<Vec<Bytes>, IoFault>,
    ) {
        self.volumes[vi].sender.reads_in_flight -= 1;
        self.changed.insert(vi);
        if !self.is_session(session) {
            return; // the copy stream restarted: these blocks are queued again
        }
        match result {
            Ok(buffers) => {
                let volume = self.volumes[vi].index;
                let items: Vec<CopyItem> = runs
                    .iter()
                    .zip(buffers)
                    .map(|(run, data)| copy_item(run, data, &mut self.volumes[vi].counters.copy_sent_bytes))
                    .collect();
                let report = self.volumes[vi].replication.copy_report();
                self.note_copy_report(vi, session, seq, report);
                self.fill(session, Lane::Bulk, place, vec![Message::Copy { seq, volume, items, report }]);
            }
            Err(fault) => {
                self.event(Event::StoreFault { volume: self.volumes[vi].index, doing: "reading blocks for the copy stream", fault });
                self.volumes[vi].claims.copy_failed(seq, &runs);
                self.fill(session, Lane::Bulk, place, Vec::new());
                if self.volumes[vi].replication.peer_need(false).is_some() {
                    // Hosts wait for copy positions: one that never leaves
                    // would let a later one stand for it. A new session
                    // sends everything again from position 1.
                    self.close_session("a copy could not be read here; the copy stream starts over".into());
                }
            }
        }
    }

    // ------------------------------------------------------------ receiving

    /// Starts writing the next job of peer data, if none is in flight.
    pub(crate) fn pump_receiver(&mut self, vi: usize) {
        loop {
            let v = &mut self.volumes[vi];
            if v.receiver.applying.is_some() {
                break;
            }
            // The peer's data for an extent it took while we were lost waits
            // until our own blocks of it are saved (and all behind it: the
            // queue is applied in order).
            if let Some(ApplyJob::Copy { items, .. }) = v.receiver.queue.front()
                && items.iter().any(|i| v.claims.conflicts().contains_key(&i.extent))
            {
                break;
            }
            let Some(job) = v.receiver.queue.pop_front() else { break };
            match job {
                ApplyJob::Copy { session, seq, items, report } => {
                    if v.receiver.session != Some(session) || matches!(v.serving, Serving::Stopped(_)) {
                        continue;
                    }
                    // The copies queued behind it go in the same job (one
                    // trip to the blocking pool, written in order).
                    let (mut seq, mut report, mut items) = (seq, report, items);
                    let mut bytes: u64 = items.iter().map(|i| i.data.len() as u64).sum();
                    while let Some(ApplyJob::Copy { session: next, items: more, .. }) = v.receiver.queue.front()
                        && *next == session
                        && bytes < APPLY_JOB_BYTES_MAX
                        && !more.iter().any(|i| v.claims.conflicts().contains_key(&i.extent))
                    {
                        let Some(ApplyJob::Copy { seq: s, report: r, items: more, .. }) = v.receiver.queue.pop_front() else {
                            unreachable!("checked")
                        };
                        bytes += more.iter().map(|i| i.data.len() as u64).sum::<u64>();
                        seq = s;
                        report = report.max(r);
                        items.extend(more);
                    }
                    let (accepted, stale): (Vec<CopyItem>, Vec<CopyItem>) =
                        items.into_iter().partition(|i| v.claims.accepts_copy(i.extent, i.epoch));
                    if !stale.is_empty() {
                        v.counters.copies_stale += stale.len() as u64;
                        let volume = v.index;
                        self.event(Event::StaleCopiesDropped { volume, runs: stale.len() });
                    }
                    let v = &mut self.volumes[vi];
                    if accepted.is_empty() {
                        self.mark_applied(vi, session, seq, report);
                        continue;
                    }
                    let block = v.claims.geometry().block_bytes;
                    let mut extents: Vec<Extent> = accepted.iter().map(|i| i.extent).collect();
                    extents.sort_unstable();
                    extents.dedup();
                    for &e in &extents {
                        v.claims.set_applying(e, true);
                    }
                    let runs = accepted.len() as u64;
                    let writes = accepted
                        .into_iter()
                        .map(|i| {
                            let offset = i.first.0 * block;
                            if i.data.is_empty() {
                                StoreWrite::Zeroes {
                                    offset,
                                    length: u64::from(i.count) * block,
                                    mode: ZeroMode::MayUnmap,
                                    fast_only: false,
                                }
                            } else {
                                StoreWrite::Data { offset, data: i.data }
                            }
                        })
                        .collect();
                    // The sender waits for these copies to be durable and
                    // nothing more waits to be applied: the fdatasync runs
                    // in the same job as the writes.
                    let sync = report == CopyReport::Durable && !v.receiver.queue.iter().any(|j| matches!(j, ApplyJob::Copy { .. }));
                    let token = self.io(
                        vi,
                        IoOp::Write { writes, sync },
                        IoPurpose::ApplyCopy { volume: vi, session, seq, extents, runs, report, synced: sync },
                    );
                    self.volumes[vi].receiver.applying = Some(token);
                }
                ApplyJob::Handover { extent, runs, last } => {
                    if matches!(v.serving, Serving::Stopped(_)) {
                        continue;
                    }
                    if runs.is_empty() {
                        if last {
                            self.volumes[vi].claims.set_applying(extent, true);
                            self.issue_sync(vi, IoPurpose::HandoverSync { volume: vi, extent });
                        }
                        continue;
                    }
                    let block = v.claims.geometry().block_bytes;
                    v.claims.set_applying(extent, true);
                    let writes = runs.into_iter().map(|r| StoreWrite::Data { offset: r.first.0 * block, data: r.data }).collect();
                    let token = self.io(vi, IoOp::Write { writes, sync: false }, IoPurpose::ApplyHandover { volume: vi, extent, last });
                    self.volumes[vi].receiver.applying = Some(token);
                }
            }
        }
        self.pump_receiver_sync(vi);
    }

    /// Copies up to `seq` are in our store (or were dropped as stale): a
    /// host at the sender may wait for them to be reported received, or
    /// durable.
    fn mark_applied(&mut self, vi: usize, session: SessionGen, seq: CopySeq, report: CopyReport) {
        let r = &mut self.volumes[vi].receiver;
        if r.session != Some(session) {
            return;
        }
        r.applied = r.applied.max(seq);
        match report {
            CopyReport::Lazy => {}
            // (Reported at arrival.)
            CopyReport::Received => r.acked_in_memory = r.acked_in_memory.max(seq),
            CopyReport::Durable => r.urgent = r.urgent.max(seq),
        }
        self.schedule_receiver_sync(vi);
    }

    /// Copies up to `seq` are applied and durable (a copy written and
    /// synced in one job; the ones before it were applied earlier).
    fn mark_synced(&mut self, vi: usize, session: SessionGen, seq: CopySeq) {
        let current = self.is_session(session);
        let r = &mut self.volumes[vi].receiver;
        if r.session != Some(session) || !current {
            return;
        }
        r.applied = r.applied.max(seq);
        r.durable = r.durable.max(seq);
        let (received, durable) = (r.applied, r.durable);
        let volume = self.volumes[vi].index;
        self.send(Lane::Priority, Message::CopyProgress { volume, received, durable });
        self.schedule_receiver_sync(vi);
    }

    /// The sender asks for copies up to `upto` durable now.
    pub(crate) fn on_destage(&mut self, vi: usize, upto: CopySeq) {
        let r = &mut self.volumes[vi].receiver;
        r.urgent = r.urgent.max(upto);
        if upto <= r.durable {
            let (received, durable) = (r.applied, r.durable);
            let volume = self.volumes[vi].index;
            self.send(Lane::Priority, Message::CopyProgress { volume, received, durable });
        }
        self.schedule_receiver_sync(vi);
    }

    /// When the next grouped fdatasync of applied copies is due: at once
    /// if the sender waits for one of them, else after the linger.
    fn schedule_receiver_sync(&mut self, vi: usize) {
        let now = self.now;
        let r = &mut self.volumes[vi].receiver;
        if r.syncing.is_some() || r.applied <= r.durable {
            return;
        }
        let linger = if r.acked_in_memory > r.durable { ACKED_COPY_SYNC_LINGER } else { COPY_SYNC_LINGER };
        let due = if r.urgent > r.durable && r.urgent <= r.applied { now } else { now + linger };
        r.sync_at = Some(r.sync_at.map_or(due, |t| t.min(due)));
        if due == now {
            self.changed.insert(vi);
        }
    }

    /// The grouped fdatasync of received copies, when due: report them
    /// received now, durable after it.
    fn pump_receiver_sync(&mut self, vi: usize) {
        let now = self.now;
        let r = &mut self.volumes[vi].receiver;
        if r.syncing.is_some() || r.sync_at.is_none_or(|t| t > now) {
            return;
        }
        r.sync_at = None;
        let Some(session) = r.session.filter(|s| self.session.as_ref().is_some_and(|cur| cur.id == *s)) else { return };
        if r.applied <= r.durable {
            return;
        }
        let (received, durable) = (r.applied, r.durable);
        r.syncing = Some(received);
        let volume = self.volumes[vi].index;
        self.send(Lane::Priority, Message::CopyProgress { volume, received, durable });
        self.issue_sync(vi, IoPurpose::ReceiverSync { volume: vi, session, upto: received });
    }

    /// A copy was written (`synced`: and made durable, with every copy
    /// before it, in the same job).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_copy_applied(
        &mut self,
        vi: usize,
        session: SessionGen,
        seq: CopySeq,
        extents: Vec<Extent>,
        runs: u64,
        report: CopyReport,
        synced: bool,
        result: Result<(), IoFault>,
    ) {
        let v = &mut self.volumes[vi];
        v.receiver.applying = None;
        for &e in &extents {
            v.claims.set_applying(e, false);
        }
        self.changed.insert(vi);
        match result {
            Ok(()) => {
                self.volumes[vi].counters.copies_applied += runs;
                let now = self.now;
                for &e in &extents {
                    self.volumes[vi].last_copy.insert(e, now);
                }
                if synced {
                    self.mark_synced(vi, session, seq);
                } else {
                    self.mark_applied(vi, session, seq, report);
                }
            }
            Err(fault) if synced => {
                // The write or the fdatasync after it failed: as for a
                // failed sync, what was applied may not be durable.
                self.event(Event::StoreFault {
                    volume: self.volumes[vi].index,
                    doing: "applying a copy from the peer",
                    fault: fault.clone(),
                });
                self.stop_volume(vi, format!("writing and fdatasync of copies from the peer failed ({fault})"));
                if self.is_session(session) {
                    self.close_session("a copy from the peer could not be written here".into());
                }
            }
            Err(fault) => {
                // Not acknowledged: the peer still tracks these blocks and
                // sends them again on the next session.
                self.event(Event::StoreFault { volume: self.volumes[vi].index, doing: "applying a copy from the peer", fault });
                if self.is_session(session) {
                    self.close_session("a copy from the peer could not be written here".into());
                }
            }
        }
    }

    pub(crate) fn on_receiver_synced(&mut self, vi: usize, session: SessionGen, upto: CopySeq, result: Result<(), IoFault>) {
        self.volumes[vi].receiver.syncing = None;
        self.changed.insert(vi);
        if let Err(fault) = result {
            self.stop_volume(vi, format!("fdatasync of copies from the peer failed ({fault})"));
            return;
        }
        let current = self.is_session(session);
        let r = &mut self.volumes[vi].receiver;
        if r.session != Some(session) || !current {
            // A sync of an older session: the current one's copies applied
            // meanwhile still need theirs.
            if r.session.is_some_and(|s| self.is_session(s)) {
                self.schedule_receiver_sync(vi);
            }
            return;
        }
        r.durable = r.durable.max(upto);
        let (received, durable) = (r.applied, r.durable);
        self.schedule_receiver_sync(vi);
        let volume = self.volumes[vi].index;
        self.send(Lane::Priority, Message::CopyProgress { volume, received, durable });
    }

    pub(crate) fn on_handover_applied(&mut self, vi: usize, extent: Extent, last: bool, result: Result<(), IoFault>) {
        let v = &mut self.volumes[vi];
        v.receiver.applying = None;
        v.claims.set_applying(extent, false);
        self.changed.insert(vi);
        match result {
            Ok(()) if last => {
                // The handover's blocks (all parts) are written: make them durable.
                self.volumes[vi].claims.set_applying(extent, true);
                self.issue_sync(vi, IoPurpose::HandoverSync { volume: vi, extent });
            }
            Ok(()) => {}
            Err(fault) => {
                self.event(Event::StoreFault { volume: self.volumes[vi].index, doing: "applying a handover from the peer", fault });
                self.handover_failed_here(vi, extent);
            }
        }
    }

    /// A handover to us could not be completed here: the extent goes back
    /// to the peer, and the session closes so the next sync revokes the
    /// give (the peer then sends the extent's blocks again as its owner).
    fn handover_failed_here(&mut self, vi: usize, extent: Extent) {
        self.volumes[vi].claims.on_receive_failed(extent);
        self.receiver_drop_handover(vi, extent);
        self.close_session(format!("a handover of extent {} could not be applied here", extent.0));
    }

    fn receiver_drop_handover(&mut self, vi: usize, extent: Extent) {
        self.volumes[vi].receiver.queue.retain(|job| !matches!(job, ApplyJob::Handover { extent: e, .. } if *e == extent));
    }

    pub(crate) fn on_handover_synced(&mut self, vi: usize, extent: Extent, result: Result<(), IoFault>) {
        self.volumes[vi].claims.set_applying(extent, false);
        self.changed.insert(vi);
        match result {
            Ok(()) => {
                self.volumes[vi].claims.on_handover_applied(extent);
                self.when_durable(vi, DurableWaiter::Received { extent });
            }
            Err(fault) => {
                self.stop_volume(vi, format!("fdatasync of a handover's blocks failed ({fault})"));
                self.handover_failed_here(vi, extent);
            }
        }
    }

    /// Our ownership of a handed-over extent is durable: writes may go on,
    /// and the giver may forget the give.
    pub(crate) fn on_received_durable(&mut self, vi: usize, extent: Extent) {
        let now = self.now;
        if let Some(epoch) = self.volumes[vi].claims.on_handover_durable(extent, now) {
            self.volumes[vi].counters.handovers_received += 1;
            let volume = self.volumes[vi].index;
            if self.session.is_some() {
                self.send(Lane::Priority, Message::HandoverAck { volume, extent, epoch });
            }
            self.changed.insert(vi);
        }
    }
}

/// A run's blocks as a copy item (all-zero blocks travel as no bytes: the
/// receiver writes zeroes); `sent` counts the bytes that travel.
fn copy_item(run: &CopyRun, data: Bytes, sent: &mut u64) -> CopyItem {
    let zeroes = data.iter().all(|&b| b == 0);
    if !zeroes {
        *sent += data.len() as u64;
    }
    CopyItem {
        extent: run.extent,
        epoch: run.epoch,
        first: run.first,
        count: u32::try_from(run.count).expect("a run fits the wire's u32 (limits)"),
        data: if zeroes { Bytes::new() } else { data },
    }
}

/// The messages answering a handover: parts of at most
/// [`HANDOVER_PART_BYTES_MAX`] bytes of blocks, then the reply with the last.
pub(crate) fn handover_messages(id: RequestId, counter: Epoch, epoch: Epoch, blocks: Vec<BlockRun>, block: u64) -> Vec<Message> {
    let mut chunks: Vec<Vec<BlockRun>> = vec![Vec::new()];
    let mut size = 0u64;
    for run in blocks {
        let mut at = 0u64;
        let len = run.data.len() as u64;
        while at < len {
            if size == HANDOVER_PART_BYTES_MAX {
                chunks.push(Vec::new());
                size = 0;
            }
            let take = (len - at).min(HANDOVER_PART_BYTES_MAX - size) / block * block;
            let piece = BlockRun { first: BlockIndex(run.first.0 + at / block), data: run.data.slice(at as usize..(at + take) as usize) };
            chunks.last_mut().expect("one chunk at least").push(piece);
            size += take;
            at += take;
        }
    }
    let last = chunks.pop().expect("one chunk at least");
    let mut messages: Vec<Message> = chunks.into_iter().map(|blocks| Message::HandoverPart { id, epoch, blocks }).collect();
    messages.push(Message::HandoverReply { id, counter, granted: Some(epoch), blocks: last });
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_handover_is_cut_into_parts_that_fit_a_frame() {
        let block = 64 * 1024u64;
        let big = Bytes::from(vec![7u8; (HANDOVER_PART_BYTES_MAX + 3 * block) as usize]);
        let small = Bytes::from(vec![9u8; block as usize]);
        let runs = vec![BlockRun { first: BlockIndex(0), data: big }, BlockRun { first: BlockIndex(1000), data: small }];
        let messages = handover_messages(RequestId(1), Epoch(5), Epoch(6), runs, block);
        assert_eq!(messages.len(), 2);
        let mut total = 0;
        let mut next_block = 0;
        for m in &messages {
            let blocks = match m {
                Message::HandoverPart { blocks, .. } => blocks,
                Message::HandoverReply { blocks, .. } => blocks,
                _ => panic!("unexpected {m:?}"),
            };
            let size: usize = blocks.iter().map(|b| b.data.len()).sum();
            assert!(size as u64 <= HANDOVER_PART_BYTES_MAX);
            assert!(m.encode().len() <= geomirror_wire::peer::FRAME_BYTES_MAX);
            for b in blocks {
                if b.first.0 < 1000 {
                    assert_eq!(b.first.0, next_block, "parts continue where the previous ended");
                    next_block += b.data.len() as u64 / block;
                }
            }
            total += size;
        }
        assert_eq!(total as u64, HANDOVER_PART_BYTES_MAX + 4 * block);
        assert!(matches!(messages.last(), Some(Message::HandoverReply { granted: Some(Epoch(6)), .. })));
    }

    #[test]
    fn a_handover_without_blocks_is_one_reply() {
        let messages = handover_messages(RequestId(1), Epoch(5), Epoch(6), vec![], 4096);
        assert!(matches!(messages.as_slice(), [Message::HandoverReply { blocks, .. }] if blocks.is_empty()));
    }
}
