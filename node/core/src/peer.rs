//! Frames from the peer: validation, then each request and answer applied
//! to the state. A frame that breaks the protocol (wrong lane, unknown
//! volume or request, bad runs) closes the session with the reason (the
//! dialer reconnects and the session-start sync puts both views back
//! together); a well-formed request with bad arguments (out of range, too
//! many extents or releases) is answered with `Error`. Nothing in a frame
//! can panic the node.

use geomirror_wire::peer::{BlockRun, ClaimOutcome, CopyItem, Epoch, Extent, Lane, Message, RequestId, VolumeIndex};

use crate::claims::{HandoverStep, PeerView};
use crate::ids::SessionGen;
use crate::io::Event;
use crate::limits::{CLAIM_EXTENTS_MAX, PULL_BYTES_MAX};
use crate::node::{ApplyJob, DurableWaiter, Give, GiveStage, IoPurpose, NodeCore, Serving};
use crate::session::Pending;

impl NodeCore {
    pub(crate) fn on_frame(&mut self, sid: SessionGen, lane: Lane, message: Message) {
        let Some(s) = self.session.as_mut().filter(|s| s.id == sid) else { return };
        s.last_frame = self.now;
        if message.lane() != Some(lane) {
            self.close_session(format!("protocol violation: {} on the {lane:?} lane", message.kind()));
            return;
        }
        match lane {
            Lane::Priority => {
                if !s.held.is_empty() || self.must_hold(&message) {
                    self.session.as_mut().expect("checked").held.push_back(message);
                } else {
                    self.dispatch_priority(sid, message);
                }
            }
            Lane::Bulk => self.dispatch_bulk(message),
        }
    }

    /// The volume a message names, if it exists (else the session closes).
    fn volume_of(&mut self, volume: VolumeIndex, what: &str) -> Option<usize> {
        let vi = volume.0 as usize;
        if vi < self.volumes.len() {
            Some(vi)
        } else {
            self.close_session(format!("protocol violation: {what} names volume #{}, which does not exist", volume.0));
            None
        }
    }

    /// Refuses a request for a volume that is not served here.
    fn refuse_if_not_serving(&mut self, vi: usize, id: RequestId) -> bool {
        let problem = match &self.volumes[vi].serving {
            Serving::Yes => return false,
            Serving::Mismatch(p) | Serving::Stopped(p) => p.clone(),
        };
        let name = self.volumes[vi].settings.name.clone();
        self.send(Lane::Priority, Message::Error { id, message: format!("volume `{name}` is not served here: {problem}") });
        true
    }

    pub(crate) fn dispatch_priority(&mut self, sid: SessionGen, message: Message) {
        if !self.is_session(sid) {
            return;
        }
        match message {
            Message::Heartbeat { id } => self.send(Lane::Priority, Message::HeartbeatReply { id }),
            // On the priority lane (not behind our own copy backlog on the
            // bulk lane): hosts of a sync mode wait for it.
            Message::CopyProgress { volume, received, durable } => {
                let Some(vi) = self.volume_of(volume, "copy progress") else { return };
                let last = self.volumes[vi].claims.last_copy_seq();
                if durable > received || received > last {
                    self.close_session(format!(
                        "protocol violation: copy progress received {} durable {} with copies sent up to {}",
                        received.0, durable.0, last.0
                    ));
                    return;
                }
                let c = &mut self.volumes[vi].claims;
                c.on_copy_received(received);
                c.on_copy_durable(durable);
                let sent = &mut self.volumes[vi].sender.sent_at;
                while sent.front().is_some_and(|(seq, _)| *seq <= durable) {
                    sent.pop_front();
                }
                self.changed.insert(vi);
            }

            Message::Sync { id, volume, counter, own, record, gives, generation, taken } => {
                let Some(vi) = self.volume_of(volume, "a sync") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    let view = PeerView { counter, own: &own, record: &record, gives: &gives, generation, taken: &taken };
                    self.on_sync_request(vi, id, &view);
                }
            }
            Message::DigestRequest { id, volume, extent, span } => {
                let Some(vi) = self.volume_of(volume, "a checksum request") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    self.on_digest_request(vi, id, extent, span);
                }
            }
            Message::ResyncNeed { id, volume, extent, runs, .. } => {
                let Some(vi) = self.volume_of(volume, "a resync request") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    self.on_resync_need_request(vi, id, extent, &runs);
                }
            }
            Message::Claim { id, volume, counter, extents, releases } => {
                let Some(vi) = self.volume_of(volume, "a claim") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    self.on_claim_request(vi, id, counter, &extents, &releases);
                }
            }
            Message::Handover { id, volume, counter, extent, releases } => {
                let Some(vi) = self.volume_of(volume, "a handover") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    if releases.len() > CLAIM_EXTENTS_MAX {
                        let message = format!("a handover carries at most {CLAIM_EXTENTS_MAX} releases, not {}", releases.len());
                        self.send(Lane::Priority, Message::Error { id, message });
                        return;
                    }
                    // The requester's releases first: it counted on them.
                    self.volumes[vi].claims.on_release(&releases);
                    self.on_handover_request(vi, sid, id, counter, extent);
                }
            }
            Message::HandoverAck { volume, extent, epoch } => {
                let Some(vi) = self.volume_of(volume, "a handover confirmation") else { return };
                self.volumes[vi].claims.on_handover_ack(extent, epoch);
                self.changed.insert(vi);
            }
            Message::Pull { id, volume, offset, length } => {
                let Some(vi) = self.volume_of(volume, "a pull") else { return };
                if !self.refuse_if_not_serving(vi, id) {
                    self.on_pull_request(vi, sid, id, offset, length);
                }
            }
            Message::HandoverPart { id, epoch, blocks } => self.on_handover_part(id, epoch, blocks),
            reply @ (Message::SyncReply { .. }
            | Message::ClaimReply { .. }
            | Message::HandoverReply { .. }
            | Message::PullReply { .. }
            | Message::HeartbeatReply { .. }
            | Message::DigestReply { .. }
            | Message::Ack { .. }
            | Message::Error { .. }) => self.on_reply(reply),
            other => self.close_session(format!("protocol violation: unexpected {} on the priority lane", other.kind())),
        }
    }

    fn on_claim_request(
        &mut self,
        vi: usize,
        id: RequestId,
        counter: Epoch,
        extents: &[Extent],
        releases: &[geomirror_wire::peer::ExtentClaim],
    ) {
        if extents.is_empty() || extents.len() > CLAIM_EXTENTS_MAX || releases.len() > CLAIM_EXTENTS_MAX {
            let message = format!(
                "a claim names 1 to {CLAIM_EXTENTS_MAX} extents and at most as many releases, not {} and {}",
                extents.len(),
                releases.len()
            );
            self.send(Lane::Priority, Message::Error { id, message });
            return;
        }
        let v = &mut self.volumes[vi];
        // The requester's releases first: it counted on them to stay within its limit.
        v.claims.on_release(releases);
        let outcomes = v.claims.on_claim_request(extents, counter);
        let granted = outcomes.iter().filter(|o| matches!(o, ClaimOutcome::Granted(_))).count() as u64;
        v.counters.claims_granted += granted;
        let reply = Message::ClaimReply { id, counter: v.claims.counter(), outcomes: outcomes.clone() };
        self.changed.insert(vi);
        if self.volumes[vi].claims.file_version() <= self.volumes[vi].file.durable {
            self.send(Lane::Priority, reply);
            return;
        }
        // Persist before grant (and before confirming the releases it
        // carried): the reply waits in its place until the claims file that
        // records them is durable.
        let Some((session, place)) = self.reserve(Lane::Priority) else { return };
        // Should the write fail, the volume stops and the claim is refused
        // outright (not answered: an answer would confirm the releases).
        let refused = Message::Error { id, message: "the peer's claims file could not be written; nothing was granted".into() };
        self.session.as_mut().expect("reserved").peer_requests += 1;
        self.when_durable(vi, DurableWaiter::Reply { session, place, messages: vec![reply], on_failure: vec![refused] });
    }

    fn on_handover_request(&mut self, vi: usize, sid: SessionGen, id: RequestId, counter: Epoch, extent: Extent) {
        if extent.0 >= self.volumes[vi].claims.geometry().extents() {
            self.send(Lane::Priority, Message::Error { id, message: format!("extent {} is outside the volume", extent.0) });
            return;
        }
        if self.volumes[vi].gives.contains_key(&extent) {
            self.send(Lane::Priority, Message::Error { id, message: format!("a handover of extent {} is already in progress", extent.0) });
            return;
        }
        self.volumes[vi].gives.insert(extent, Give { session: sid, id, counter, stage: GiveStage::WaitingWrites });
        self.session.as_mut().expect("current").peer_requests += 1;
        self.run_give(vi, extent);
    }

    /// Moves a give as far as it goes: wait for writes in flight, read the
    /// blocks the requester lacks, then commit (see `on_give_read`).
    pub(crate) fn run_give(&mut self, vi: usize, extent: Extent) {
        let Some(give) = self.volumes[vi].gives.get(&extent) else { return };
        if !matches!(give.stage, GiveStage::WaitingWrites) {
            return;
        }
        let (id, counter) = (give.id, give.counter);
        match self.volumes[vi].claims.on_handover_request(extent, counter) {
            HandoverStep::NotOwner => {
                let give = self.volumes[vi].gives.remove(&extent).expect("checked");
                let counter = self.volumes[vi].claims.counter();
                let reply = Message::HandoverReply { id, counter, granted: None, blocks: vec![] };
                let v = &self.volumes[vi];
                if v.claims.file_version() <= v.file.durable {
                    self.peer_request_done();
                    self.send(Lane::Priority, reply);
                } else if let Some((session, place)) = self.reserve(Lane::Priority).filter(|(s, _)| *s == give.session) {
                    // The reply confirms the releases the request carried:
                    // it leaves once their removal from our record is durable.
                    let failure = Message::Error { id, message: "the giver's claims file could not be written".into() };
                    self.when_durable(vi, DurableWaiter::Reply { session, place, messages: vec![reply], on_failure: vec![failure] });
                }
            }
            HandoverStep::WaitForWrites => {}
            HandoverStep::Read { runs } if runs.is_empty() => {
                // Nothing the requester lacks: give at once.
                self.volumes[vi].gives.get_mut(&extent).expect("checked").stage = GiveStage::Reading;
                self.on_give_read(vi, extent, runs, Ok(Vec::new()));
            }
            HandoverStep::Read { runs } => {
                self.volumes[vi].gives.get_mut(&extent).expect("checked").stage = GiveStage::Reading;
                let block = self.volumes[vi].claims.geometry().block_bytes;
                let ranges = runs.iter().map(|(first, count)| (first.0 * block, count * block)).collect();
                self.io(vi, crate::io::IoOp::Read { ranges, for_copy: false }, IoPurpose::GiveRead { volume: vi, extent, runs });
            }
        }
        self.changed.insert(vi);
    }

    /// Gives waiting for writes to finish, or for their durable steps.
    pub(crate) fn run_gives(&mut self, vi: usize) {
        let gives: Vec<(Extent, bool)> =
            self.volumes[vi].gives.iter().map(|(&e, g)| (e, matches!(g.stage, GiveStage::Durable { .. }))).collect();
        for (e, given) in gives {
            if given {
                self.finish_give(vi, e);
            } else {
                self.run_give(vi, e);
            }
        }
    }

    pub(crate) fn peer_request_done(&mut self) {
        if let Some(s) = &mut self.session {
            s.peer_requests = s.peer_requests.saturating_sub(1);
        }
    }

    fn on_pull_request(&mut self, vi: usize, sid: SessionGen, id: RequestId, offset: u64, length: u32) {
        let g = self.volumes[vi].claims.geometry();
        let in_range = length > 0
            && u64::from(length) <= PULL_BYTES_MAX
            && g.contains(offset, length.into())
            && offset / g.extent_bytes == (offset + u64::from(length) - 1) / g.extent_bytes;
        if !in_range {
            self.send(Lane::Priority, Message::Error { id, message: format!("a pull of {length} bytes at {offset} is out of range") });
            return;
        }
        if !self.volumes[vi].claims.can_serve_pull(Extent(offset / g.extent_bytes)) {
            self.send(Lane::Priority, Message::PullReply { id, data: None });
            return;
        }
        let Some((session, place)) = self.reserve(Lane::Priority) else { return };
        debug_assert_eq!(session, sid);
        self.session.as_mut().expect("reserved").peer_requests += 1;
        self.io(
            vi,
            crate::io::IoOp::Read { ranges: vec![(offset, length.into())], for_copy: false },
            IoPurpose::PullRead { volume: vi, session, place, id },
        );
    }

    pub(crate) fn on_pull_read(
        &mut self,
        vi: usize,
        session: SessionGen,
        place: crate::outbox::Place,
        id: RequestId,
        result: Result<Vec<bytes::Bytes>, crate::io::IoFault>,
    ) {
        let message = match result {
            Ok(mut buffers) => Message::PullReply { id, data: Some(buffers.pop().expect("one buffer")) },
            Err(fault) => {
                self.event(Event::StoreFault {
                    volume: self.volumes[vi].index,
                    doing: "reading blocks for the peer's pull",
                    fault: fault.clone(),
                });
                Message::Error { id, message: format!("reading the blocks failed: {fault}") }
            }
        };
        if self.is_session(session) {
            self.peer_request_done();
        }
        self.fill(session, Lane::Priority, place, vec![message]);
    }

    fn on_reply(&mut self, reply: Message) {
        let id = reply.id().expect("replies carry ids");
        let Some(pending) = self.session.as_mut().and_then(|s| s.requests.remove(&id)) else {
            self.close_session(format!("protocol violation: {} answers request {} that is not pending", reply.kind(), id.0));
            return;
        };
        match (pending, reply) {
            (Pending::Claim { volume, claim, extents, releases }, Message::ClaimReply { outcomes, counter, .. }) => {
                self.volumes[volume].claims.on_claim_reply(claim, &extents, &outcomes, counter, self.now, &releases);
                self.changed.insert(volume);
            }
            (Pending::Handover { volume, extent, releases }, Message::HandoverReply { granted, counter, blocks, .. }) => {
                self.volumes[volume].claims.confirm_releases(&releases);
                match granted {
                    Some(epoch) => self.on_handover_blocks(volume, extent, epoch, blocks, true),
                    None => {
                        self.volumes[volume].claims.on_handover_declined(extent, counter);
                        self.changed.insert(volume);
                    }
                }
            }
            (Pending::Pull { task, piece }, Message::PullReply { data, .. }) => self.on_pull_reply(task, piece, data),
            (Pending::Sync { volume }, Message::SyncReply { counter, own, record, gives, generation, taken, .. }) => {
                let view = PeerView { counter, own: &own, record: &record, gives: &gives, generation, taken: &taken };
                self.on_sync_reply(volume, &view)
            }
            (Pending::Digest { volume, extent, chunk }, Message::DigestReply { crcs, .. }) => {
                self.on_digest_reply(volume, extent, chunk, crcs)
            }
            (Pending::ResyncNeed { volume, extent }, Message::Ack { .. }) => self.on_resync_acked(volume, extent),
            (Pending::Heartbeat, Message::HeartbeatReply { .. }) => {
                let now = self.now;
                if let Some(s) = &mut self.session
                    && let Some((_, sent)) = s.heartbeat.take()
                {
                    s.last_rtt = Some(now.since(sent));
                }
            }
            (pending, Message::Error { message, .. }) => self.on_refused(pending, message),
            (pending, reply) => self.close_session(format!("protocol violation: {} answers a {pending:?} request", reply.kind())),
        }
    }

    fn on_refused(&mut self, pending: Pending, message: String) {
        match pending {
            Pending::Claim { volume, claim, extents, .. } => {
                self.volumes[volume].claims.on_claim_refused(claim, &extents);
                self.event(Event::PeerRefused { volume: self.volumes[volume].index, request: "claim", message });
                self.changed.insert(volume);
            }
            Pending::Handover { volume, extent, .. } => {
                self.volumes[volume].claims.on_handover_failed(extent);
                self.event(Event::PeerRefused { volume: self.volumes[volume].index, request: "handover", message });
                self.changed.insert(volume);
            }
            Pending::Pull { task, .. } => self.on_pull_refused(task, message),
            Pending::Sync { volume } => {
                let name = self.volumes[volume].settings.name.clone();
                self.close_session(format!("the peer refused the sync of volume `{name}`: {message}"));
            }
            Pending::Heartbeat => self.close_session(format!("the peer refused a heartbeat: {message}")),
            Pending::Digest { volume, extent, .. } => self.on_digest_refused(volume, extent, message),
            Pending::ResyncNeed { volume, extent } => {
                // The peer could not take our answer: the next session's
                // sync starts the extent's resync again.
                self.event(Event::PeerRefused { volume: self.volumes[volume].index, request: "resync", message });
                let _ = extent;
            }
        }
    }

    fn on_handover_part(&mut self, id: RequestId, epoch: Epoch, blocks: Vec<BlockRun>) {
        match self.session.as_ref().and_then(|s| s.requests.get(&id)).cloned() {
            Some(Pending::Handover { volume, extent, .. }) => self.on_handover_blocks(volume, extent, epoch, blocks, false),
            _ => self.close_session(format!("protocol violation: a handover part answers request {} that is not a pending handover", id.0)),
        }
    }

    /// Blocks of a handover granted to us (a part, or the final reply): the
    /// extent is received, and the blocks go to the store in arrival order
    /// with the copies (so older data never lands on newer).
    fn on_handover_blocks(&mut self, vi: usize, extent: Extent, epoch: Epoch, runs: Vec<BlockRun>, last: bool) {
        let g = self.volumes[vi].claims.geometry();
        let range = g.blocks_in(extent);
        for run in &runs {
            let count = run.data.len() as u64 / g.block_bytes;
            if run.data.is_empty()
                || !(run.data.len() as u64).is_multiple_of(g.block_bytes)
                || run.first.0 < range.start
                || run.first.0 + count > range.end
            {
                self.close_session(format!(
                    "protocol violation: a handover run at block {} of {} bytes is outside extent {}",
                    run.first.0,
                    run.data.len(),
                    extent.0
                ));
                return;
            }
        }
        if !self.volumes[vi].claims.on_handover_granted(extent, epoch, last) {
            self.close_session(format!("protocol violation: a handover of extent {} arrived that was not asked for", extent.0));
            return;
        }
        self.volumes[vi].receiver.queue.push_back(ApplyJob::Handover { extent, runs, last });
        self.changed.insert(vi);
    }

    fn dispatch_bulk(&mut self, message: Message) {
        match message {
            Message::Copy { seq, volume, items, report } => {
                let Some(vi) = self.volume_of(volume, "a copy") else { return };
                self.on_copy(vi, seq, items, report);
            }
            Message::Destage { volume, upto } => {
                let Some(vi) = self.volume_of(volume, "a destage request") else { return };
                let last = self.volumes[vi].receiver.last_seq;
                if upto > last {
                    self.close_session(format!("protocol violation: destage up to copy {} with copies received up to {}", upto.0, last.0));
                    return;
                }
                self.on_destage(vi, upto);
            }
            Message::Release { volume, extents } => {
                let Some(vi) = self.volume_of(volume, "a release") else { return };
                // On the bulk lane: it may overtake the peer's last sync
                // answer (priority lane), sent before it.
                if self.session.as_ref().is_some_and(|s| s.ready) {
                    self.volumes[vi].claims.on_release(&extents);
                } else {
                    self.volumes[vi].claims.on_release_during_sync(&extents);
                }
                self.changed.insert(vi);
            }
            other => self.close_session(format!("protocol violation: unexpected {} on the bulk lane", other.kind())),
        }
    }

    fn on_copy(&mut self, vi: usize, seq: geomirror_wire::peer::CopySeq, items: Vec<CopyItem>, report: geomirror_wire::peer::CopyReport) {
        let g = self.volumes[vi].claims.geometry();
        if items.is_empty() {
            self.close_session("protocol violation: an empty copy".into());
            return;
        }
        for item in &items {
            let count = u64::from(item.count);
            let range = g.blocks_in(item.extent);
            if count == 0 || item.extent.0 >= g.extents() || item.first.0 < range.start || item.first.0 + count > range.end {
                self.close_session(format!(
                    "protocol violation: a copy of blocks {}+{count} is outside extent {}",
                    item.first.0, item.extent.0
                ));
                return;
            }
            if !item.data.is_empty() && item.data.len() as u64 != count * g.block_bytes {
                self.close_session(format!("protocol violation: a copy of {count} blocks carries {} bytes", item.data.len()));
                return;
            }
        }
        let r = &mut self.volumes[vi].receiver;
        if seq <= r.last_seq {
            let last = r.last_seq;
            self.close_session(format!("protocol violation: copy {} after copy {}", seq.0, last.0));
            return;
        }
        r.last_seq = seq;
        if self.volumes[vi].serving != Serving::Yes {
            // Not applied and not acknowledged: the peer keeps it tracked.
            let runs = items.len();
            self.volumes[vi].counters.copies_stale += runs as u64;
            return;
        }
        let session = self.session.as_ref().expect("frames arrive on a session").id;
        let r = &mut self.volumes[vi].receiver;
        r.queue.push_back(ApplyJob::Copy { session, seq, items, report });
        if report == geomirror_wire::peer::CopyReport::Received {
            // A host at the sender waits until we hold it (`sync-memory`):
            // in our memory now. Should it never be applied here (a crash,
            // a failed write), the sender still tracks it until durable
            // and sends it again on the next session.
            let (received, durable) = (seq, r.durable);
            let volume = self.volumes[vi].index;
            self.send(Lane::Priority, Message::CopyProgress { volume, received, durable });
        }
        self.changed.insert(vi);
    }
}
