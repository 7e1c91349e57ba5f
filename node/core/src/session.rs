//! The session with the peer: from hello to close. Its requests and their
//! table, the session-start sync, readiness, heartbeats and the idle
//! deadline, and what the end of a session undoes.

use std::collections::{BTreeMap, VecDeque};

use geomirror_wire::peer::{Extent, Lane, Message, RequestId};

use crate::claims::PeerView;
use crate::config::CoreConfig;
use crate::ids::{HostRequestId, SessionGen};
use crate::io::{Event, Role};
use crate::limits::{APPLY_QUEUE_MAX, HELD_FRAMES_MAX, OUTBOX_MESSAGES_MAX, PEER_REQUESTS_INFLIGHT_MAX, SYNC_ROUNDS};
use crate::node::{DurableWaiter, GiveStage, NodeCore, Serving, VolumeCore};
use crate::outbox::Outbox;
use crate::time::Time;

/// One of our requests awaiting its answer.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    Claim { volume: usize, claim: u64, extents: Vec<Extent>, releases: Vec<geomirror_wire::peer::ExtentClaim> },
    Handover { volume: usize, extent: Extent, releases: Vec<geomirror_wire::peer::ExtentClaim> },
    Pull { task: HostRequestId, piece: usize },
    Sync { volume: usize },
    Heartbeat,
    Digest { volume: usize, extent: Extent, chunk: usize },
    ResyncNeed { volume: usize, extent: Extent },
}

/// The session-start sync of one volume.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SyncProgress {
    /// Rounds finished (dialer: answered and durable; accepter: syncs
    /// received, their answers waiting for the merge to be durable).
    pub rounds: u32,
    /// A round is in progress (dialer).
    pub in_flight: bool,
}

/// A session with the peer.
pub(crate) struct Session {
    pub id: SessionGen,
    pub role: Role,
    /// The session-start sync is done: requests may flow.
    pub ready: bool,
    /// The bulk lane is attached (the dialer has it from the start).
    pub bulk_up: bool,
    outboxes: [Outbox; 2],
    pub requests: BTreeMap<RequestId, Pending>,
    pub syncs: Vec<SyncProgress>,
    /// When a frame last arrived.
    pub last_frame: Time,
    /// When the dialer sends its next heartbeat.
    pub next_heartbeat: Time,
    /// The heartbeat awaiting its answer, and when it was sent.
    pub heartbeat: Option<(RequestId, Time)>,
    /// The round trip of the last answered heartbeat (the dialer sends them).
    pub last_rtt: Option<std::time::Duration>,
    /// Priority frames held back behind one that must wait (in order).
    pub held: VecDeque<Message>,
    /// The peer's requests waiting on our I/O.
    pub peer_requests: usize,
}

impl Session {
    pub fn new(sid: SessionGen, role: Role, volumes: usize, now: Time, config: &CoreConfig) -> Session {
        Session {
            id: sid,
            role,
            ready: false,
            bulk_up: role == Role::Dialer,
            outboxes: [Outbox::default(), Outbox::default()],
            requests: BTreeMap::new(),
            syncs: vec![SyncProgress::default(); volumes],
            last_frame: now,
            next_heartbeat: now + config.heartbeat_interval,
            heartbeat: None,
            last_rtt: None,
            held: VecDeque::new(),
            peer_requests: 0,
        }
    }

    pub fn outbox(&mut self, lane: Lane) -> &mut Outbox {
        &mut self.outboxes[match lane {
            Lane::Priority => 0,
            Lane::Bulk => 1,
        }]
    }

    fn outbox_len(&self, lane: Lane) -> usize {
        self.outboxes[match lane {
            Lane::Priority => 0,
            Lane::Bulk => 1,
        }]
        .len()
    }

    /// How long the peer may stay silent before the session is closed.
    fn idle_limit(config: &CoreConfig) -> std::time::Duration {
        config.heartbeat_timeout
    }

    pub fn next_deadline(&self, config: &CoreConfig) -> Time {
        let mut next = self.last_frame + Self::idle_limit(config);
        if self.role == Role::Dialer {
            next = next.min(self.next_heartbeat);
        }
        if let Some((_, sent)) = self.heartbeat {
            next = next.min(sent + config.heartbeat_timeout);
        }
        next
    }

    pub fn accepts_frames(&self, lane: Lane, volumes: &[VolumeCore]) -> bool {
        match lane {
            Lane::Priority => {
                self.outbox_len(Lane::Priority) < OUTBOX_MESSAGES_MAX
                    && self.peer_requests < PEER_REQUESTS_INFLIGHT_MAX
                    && self.held.len() < HELD_FRAMES_MAX
            }
            Lane::Bulk => {
                self.outbox_len(Lane::Bulk) < OUTBOX_MESSAGES_MAX && volumes.iter().all(|v| v.receiver.queue.len() < APPLY_QUEUE_MAX)
            }
        }
    }
}

impl NodeCore {
    pub(crate) fn on_link_up(&mut self, sid: SessionGen, role: Role, volume_errors: Vec<Option<String>>) {
        if self.session.is_some() {
            self.end_session("replaced by a new session".into());
        }
        self.session = Some(Session::new(sid, role, self.volumes.len(), self.now, &self.config));
        for vi in 0..self.volumes.len() {
            let problem = volume_errors.get(vi).cloned().unwrap_or_else(|| Some("the peer does not have this volume".into()));
            let v = &mut self.volumes[vi];
            let new = match (&v.serving, problem) {
                (Serving::Stopped(_), _) => None,
                (Serving::Mismatch(_), None) => Some(Serving::Yes),
                (Serving::Yes, Some(p)) => Some(Serving::Mismatch(p)),
                (Serving::Mismatch(old), Some(p)) if *old != p => Some(Serving::Mismatch(p)),
                _ => None,
            };
            if let Some(new) = new {
                let problem = match &new {
                    Serving::Mismatch(p) => Some(p.clone()),
                    _ => None,
                };
                v.serving = new;
                let index = v.index;
                self.event(Event::Serving { volume: index, problem });
            }
            self.volumes[vi].claims.forget_releases_during_sync();
            let r = &mut self.volumes[vi].receiver;
            r.session = Some(sid);
            r.last_seq = Default::default();
            r.applied = Default::default();
            r.durable = Default::default();
            r.urgent = Default::default();
            r.acked_in_memory = Default::default();
            r.sync_at = None;
            r.queue.retain(|job| !matches!(job, crate::node::ApplyJob::Copy { .. }));
            self.changed.insert(vi);
        }
        self.check_ready();
    }

    pub(crate) fn on_bulk_up(&mut self, sid: SessionGen) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == sid) {
            s.bulk_up = true;
            for vi in 0..self.volumes.len() {
                self.changed.insert(vi);
            }
        }
    }

    /// Closes the current session (a protocol violation, a silent peer).
    pub(crate) fn close_session(&mut self, reason: String) {
        if let Some(s) = &self.session {
            let session = s.id;
            self.outputs.push_back(crate::io::Output::CloseSession { session, reason: reason.clone() });
            self.end_session(reason);
        }
    }

    /// Undoes what depended on the session: our requests are settled as
    /// lost (claims become unknown, handovers go back, pulls are asked
    /// again), gives not yet given are abandoned, held frames and queued
    /// copies are dropped.
    pub(crate) fn end_session(&mut self, reason: String) {
        let Some(s) = self.session.take() else { return };
        for (_, pending) in s.requests {
            match pending {
                Pending::Claim { volume, extents, .. } => self.volumes[volume].claims.on_claim_lost(&extents),
                Pending::Handover { volume, extent, .. } => self.volumes[volume].claims.on_handover_failed(extent),
                Pending::Pull { task, piece } => self.on_pull_lost(task, piece),
                Pending::Sync { .. } | Pending::Heartbeat | Pending::Digest { .. } | Pending::ResyncNeed { .. } => {}
            }
        }
        for vi in 0..self.volumes.len() {
            let v = &mut self.volumes[vi];
            let abandoned: Vec<Extent> = v
                .gives
                .iter()
                .filter(|(_, g)| g.session == s.id && !matches!(g.stage, GiveStage::Durable { .. }))
                .map(|(&e, _)| e)
                .collect();
            for e in abandoned {
                v.gives.remove(&e);
                v.claims.abandon_handover(e);
            }
            v.receiver.queue.retain(|job| !matches!(job, crate::node::ApplyJob::Copy { .. }));
            v.receiver.sync_at = None;
            v.sender.linger_until = None;
            v.resync.reset();
            self.changed.insert(vi);
        }
        self.event(Event::SessionEnded { session: s.id, reason: reason.clone() });
        for vi in 0..self.volumes.len() {
            self.volumes[vi].replication.link_ready = false;
            self.enter_degraded(vi, &format!("the peer link went down: {reason}"));
        }
    }

    /// Starts the next sync round of every volume that needs one (dialer).
    /// A volume receiving a handover waits: its sync must say whether the
    /// handover was applied.
    pub(crate) fn start_syncs(&mut self) {
        let Some(s) = &self.session else { return };
        if s.role != Role::Dialer || s.ready {
            return;
        }
        for vi in 0..self.volumes.len() {
            let s = self.session.as_ref().expect("checked");
            let progress = s.syncs[vi];
            let v = &self.volumes[vi];
            if v.serving != Serving::Yes || progress.in_flight || progress.rounds >= SYNC_ROUNDS || v.claims.is_receiving() {
                continue;
            }
            if v.file.durable < v.claims.file_version() {
                // The sync tells the peer what our claims file says: only
                // what is durable here (the peer may act on it at once).
                self.want_durable(vi);
                continue;
            }
            let (own, record) = v.claims.views();
            let gives = v.claims.gives();
            let counter = v.claims.counter();
            let generation = v.claims.generation();
            let taken = v.claims.taken_list();
            let volume = v.index;
            self.session.as_mut().expect("checked").syncs[vi].in_flight = true;
            self.request(Pending::Sync { volume: vi }, |id| Message::Sync { id, volume, counter, own, record, gives, generation, taken });
        }
    }

    /// A sync round's merge is durable here (dialer): the next round, or ready.
    pub(crate) fn on_sync_round_durable(&mut self, vi: usize, session: SessionGen, durable: bool) {
        let Some(s) = self.session.as_mut().filter(|s| s.id == session) else { return };
        s.syncs[vi].in_flight = false;
        if durable {
            s.syncs[vi].rounds += 1;
        }
        self.check_ready();
    }

    /// The session becomes ready when every served volume has finished its
    /// sync rounds.
    pub(crate) fn check_ready(&mut self) {
        let Some(s) = &self.session else { return };
        if s.ready {
            return;
        }
        let done = self.volumes.iter().zip(&s.syncs).all(|(v, p)| v.serving != Serving::Yes || p.rounds >= SYNC_ROUNDS);
        if !done {
            return;
        }
        let s = self.session.as_mut().expect("checked");
        s.ready = true;
        for v in &mut self.volumes {
            v.replication.link_ready = true;
        }
        let sid = s.id;
        for vi in 0..self.volumes.len() {
            let v = &mut self.volumes[vi];
            v.claims.on_copy_session_reset();
            v.claims.forget_releases_during_sync();
            v.sender.sent_at.clear();
            v.sender.idle = true;
            v.sender.linger_until = None;
            self.changed.insert(vi);
        }
        self.event(Event::SessionReady { session: sid });
    }

    /// Heartbeats (dialer), the heartbeat answer deadline and the idle deadline.
    pub(crate) fn session_timers(&mut self) {
        let now = self.now;
        let config = &self.config;
        let Some(s) = &mut self.session else { return };
        if now >= s.last_frame + Session::idle_limit(config) {
            let silent = now.since(s.last_frame);
            self.close_session(format!("nothing received from the peer for {silent:?}"));
            return;
        }
        if let Some((_, sent)) = s.heartbeat
            && now >= sent + config.heartbeat_timeout
        {
            let limit = config.heartbeat_timeout;
            self.close_session(format!("the peer did not answer a heartbeat within {limit:?}"));
            return;
        }
        if s.role == Role::Dialer && now >= s.next_heartbeat {
            s.next_heartbeat = now + config.heartbeat_interval;
            if s.heartbeat.is_none() {
                let id = self.request(Pending::Heartbeat, |id| Message::Heartbeat { id });
                self.session.as_mut().expect("checked").heartbeat = Some((id, now));
            }
        }
    }

    /// Holds a `Sync` (accepter) or `SyncReply` (dialer) of a volume that is
    /// receiving a handover, or where the peer owns an extent we have writes
    /// in flight to (an outage's takeover: our writes must land before our
    /// blocks are compared and saved), and everything after it on the lane,
    /// until that is done and our ownership is durable.
    pub(crate) fn must_hold(&self, message: &Message) -> bool {
        let busy = |vi: usize, own: &[geomirror_wire::peer::ExtentClaim]| {
            self.volumes.get(vi).is_some_and(|v| v.claims.is_receiving() || own.iter().any(|c| v.claims.writes_in_flight(c.extent)))
        };
        match message {
            Message::Sync { volume, own, .. } => busy(volume.0 as usize, own),
            Message::SyncReply { id, own, .. } => match self.session.as_ref().and_then(|s| s.requests.get(id)) {
                Some(Pending::Sync { volume }) => busy(*volume, own),
                _ => false,
            },
            _ => false,
        }
    }

    pub(crate) fn release_held_frames(&mut self) {
        loop {
            let Some(s) = &self.session else { return };
            let Some(front) = s.held.front() else { return };
            if self.must_hold(front) {
                return;
            }
            let sid = s.id;
            let message = self.session.as_mut().expect("checked").held.pop_front().expect("checked");
            self.dispatch_priority(sid, message);
        }
    }

    /// Answers the dialer's sync (accepter): merge, then reply once the
    /// merge is durable.
    pub(crate) fn on_sync_request(&mut self, vi: usize, id: RequestId, peer: &PeerView<'_>) {
        if self.session.as_ref().is_some_and(|s| s.role == Role::Dialer) {
            self.close_session("protocol violation: the accepter sent a sync".into());
            return;
        }
        let now = self.now;
        let revoked = self.volumes[vi].claims.on_sync(peer, now);
        self.report_revoked(vi, revoked);
        self.learn_generation(peer.generation);
        let v = &self.volumes[vi];
        let (own, record) = v.claims.views();
        let reply = Message::SyncReply {
            id,
            counter: v.claims.counter(),
            own,
            record,
            gives: v.claims.gives(),
            generation: v.claims.generation(),
            taken: v.claims.taken_list(),
        };
        let failure = Message::Error { id, message: format!("volume `{}` stopped: its claims file could not be written", v.settings.name) };
        let Some((session, place)) = self.reserve(Lane::Priority) else { return };
        let s = self.session.as_mut().expect("reserved");
        s.peer_requests += 1;
        s.syncs[vi].rounds += 1;
        self.when_durable(vi, DurableWaiter::Reply { session, place, messages: vec![reply], on_failure: vec![failure] });
        self.changed.insert(vi);
        self.check_ready();
    }

    /// The accepter's answer to our sync (dialer).
    pub(crate) fn on_sync_reply(&mut self, vi: usize, peer: &PeerView<'_>) {
        let now = self.now;
        let revoked = self.volumes[vi].claims.on_sync(peer, now);
        self.report_revoked(vi, revoked);
        self.learn_generation(peer.generation);
        let session = self.session.as_ref().expect("replies arrive on a session").id;
        self.when_durable(vi, DurableWaiter::SyncRound { session });
        self.changed.insert(vi);
    }

    fn report_revoked(&mut self, vi: usize, revoked: Vec<Extent>) {
        let volume = self.volumes[vi].index;
        for extent in revoked {
            self.event(Event::HandoverRevoked { volume, extent });
        }
    }
}
