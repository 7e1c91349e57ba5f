//! Replication modes (DESIGN.md section 6): when a host write, FUA or FLUSH
//! of a volume is acknowledged.
//!
//! - `async`: once written here; the copy stream follows.
//! - `sync-memory`: once durable here and received by the peer (in its
//!   memory, not yet durable there), as DRBD's protocol B. A FUA write or a
//!   FLUSH also waits until the writes before it are durable at the peer.
//! - `sync`: once durable at both sites (DRBD's protocol C).
//!
//! In both sync modes the local fdatasync (one at a time, shared by every
//! request that arrives meanwhile) runs while the copy travels, so a write
//! costs about the round trip plus the slower of the two syncs. A crash of
//! either node alone loses no acknowledged write: the writer's store has it
//! durably; the peer's page cache is re-sent by the writer (received but
//! not durable copies stay tracked as in flight and go out again on the
//! next session). In `sync-memory` a crash of both nodes before the peer's
//! grouped fdatasync may lose what only its page cache held; `sync` loses
//! nothing while either disk survives.
//!
//! Ownership works as in `async` (a write still claims or hands over), and
//! the copy stream carries the write itself: its blocks leave with the
//! host's own buffer while the store is written (a copy of their own, no
//! read back, the local write off the round trip's path), in a copy that
//! asks the peer to report it as soon as it arrives (or once it is written
//! and synced, in the same job). Only a write alone in its extents sends
//! its buffer: with another write to them in flight the store may end with
//! either's bytes, so such a write sends nothing of its own; and one that
//! finds its extents changed when it is done (another write admitted or
//! ended, blocks queued for a read back by a resync) sends its blocks again,
//! read back from the store. A waiting write stays a write in flight (its extents are
//! neither handed out nor released) and is acknowledged when the peer
//! reports a copy position at or past the one its blocks went out in.
//!
//! While the peer is unreachable a sync volume follows `on_peer_loss`:
//! `suspend` (writes wait up to `peer_timeout`, then fail) or `degrade`
//! (acknowledged as in `async`, logged, counted; the configured mode
//! returns once every write of the degraded time is durable at the peer).

use std::time::Duration;

use geomirror_config::{PeerLossPolicy, ReplicationMode};
use geomirror_wire::peer::{CopyReport, CopySeq, Lane, Message};

use crate::ids::{SessionGen, VolumeIndex};
use crate::io::{Event, IoFault};
use crate::node::{IoPurpose, NodeCore, Serving};
use crate::time::Time;

/// A volume's replication mode and what it is doing now.
#[derive(Debug)]
pub(crate) struct Replication {
    /// The mode in force: the config's at start; an operator may change it.
    pub mode: ReplicationMode,
    /// What happens while the peer is unreachable.
    pub on_peer_loss: PeerLossPolicy,
    /// Writes are acknowledged as in `async` although the mode is not
    /// (`degrade` policy): since when, and how far catching up got.
    pub degraded: Option<Degraded>,
    /// The newest copy position of the session that the peer was asked to
    /// make durable at once (a copy sent with [`CopyReport::Durable`], or a
    /// [`Message::Destage`]).
    pub durable_asked: Option<(SessionGen, CopySeq)>,
    /// The grouped local fdatasync of waiting writes and flushes.
    pub local_sync: GroupSync,
    /// The latest acknowledged write that waited for the peer.
    pub last_ack: Option<AckSplit>,
    /// How many times the volume degraded.
    pub degradations: u64,
    /// A ready session is up (set by the core): while degraded, new writes
    /// wait for the peer again, so that catching up ends.
    pub link_ready: bool,
    /// The newest copy position an acknowledged sync write went out in.
    pub acked_upto: Option<(SessionGen, CopySeq)>,
    /// Writes may have been acknowledged without going out in a copy of
    /// the current session (async, degraded, before a restart or a session
    /// change): a FLUSH then waits for the whole backlog instead.
    pub backlog_unknown: bool,
}

/// A degraded spell.
#[derive(Debug)]
pub(crate) struct Degraded {
    /// Since when.
    pub since: Time,
    /// Catching up: the point of the copy stream every write of the
    /// degraded time is behind.
    pub catch_up: PeerWait,
}

/// One fdatasync at a time for everything that waits for a local sync;
/// requests arriving meanwhile share the next one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GroupSync {
    pub in_flight: bool,
    pub again: bool,
}

/// How long the latest acknowledged write waited, from its arrival: until
/// it was written here, until the peer had it in memory, until durable there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckSplit {
    /// Written to the local store.
    pub local: Duration,
    /// Reported received by the peer.
    pub peer_received: Option<Duration>,
    /// Reported durable by the peer (only what waited for it).
    pub peer_durable: Option<Duration>,
}

/// A point in the copy stream something waits for the peer to report.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerWait {
    /// Received, or durable.
    pub need: CopyReport,
    /// The copy position, once every block waited for has gone out.
    pub target: Option<(SessionGen, CopySeq)>,
    /// When the peer reported the target received.
    pub received_at: Option<Time>,
}

/// How far a [`PeerWait`] got.
pub(crate) enum PeerProgress {
    /// The peer reported what it waits for.
    Reached,
    /// Not yet; why.
    Waiting(String),
    /// No ready session (`link_down`: not even one being set up).
    Lost { link_down: bool },
}

/// What `/status` shows of a volume's replication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationView {
    /// The mode in force.
    pub mode: ReplicationMode,
    /// The peer-loss policy.
    pub on_peer_loss: PeerLossPolicy,
    /// How long the volume has been degraded (acknowledging as `async`).
    pub degraded_for: Option<Duration>,
    /// Host writes and flushes written here and waiting for the peer.
    pub waiting_for_peer: u64,
    /// The latest acknowledged write that waited for the peer.
    pub last_ack: Option<AckSplit>,
    /// How many times the volume degraded since start.
    pub degradations: u64,
}

/// A mode change could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModeRefused {
    /// No such volume.
    #[error("no volume #{0}")]
    NoVolume(u16),
}

impl Replication {
    pub(crate) fn new(mode: ReplicationMode, on_peer_loss: PeerLossPolicy) -> Replication {
        Replication {
            mode,
            on_peer_loss,
            degraded: None,
            durable_asked: None,
            local_sync: GroupSync::default(),
            last_ack: None,
            degradations: 0,
            link_ready: false,
            acked_upto: None,
            backlog_unknown: true,
        }
    }

    /// An acknowledged sync write went out by copy `target`.
    pub(crate) fn note_acked(&mut self, target: (SessionGen, CopySeq)) {
        if self.acked_upto.is_none_or(|(s, seq)| s != target.0 || seq < target.1) {
            self.acked_upto = Some(target);
        }
    }

    /// What a FLUSH of session `current` waits for at the peer, when known
    /// without scanning the backlog: every write acknowledged so far went
    /// out by that copy. None: scan (see `backlog_unknown`).
    pub(crate) fn flush_target(&self, current: Option<SessionGen>) -> Option<(SessionGen, CopySeq)> {
        if self.backlog_unknown {
            return None;
        }
        let current = current?;
        Some(self.acked_upto.filter(|(s, _)| *s == current).unwrap_or((current, CopySeq(0))))
    }

    /// What a host write (`fua`: or a FLUSH) waits for at the peer now;
    /// None: nothing (`async`, or degraded).
    pub(crate) fn peer_need(&self, fua: bool) -> Option<CopyReport> {
        if self.degraded.is_some() && !self.link_ready {
            return None;
        }
        match self.mode {
            ReplicationMode::Async => None,
            ReplicationMode::SyncMemory if !fua => Some(CopyReport::Received),
            ReplicationMode::SyncMemory | ReplicationMode::Sync => Some(CopyReport::Durable),
        }
    }

    /// How soon the peer reports a copy sent now.
    pub(crate) fn copy_report(&self) -> CopyReport {
        self.peer_need(false).unwrap_or(CopyReport::Lazy)
    }
}

impl PeerWait {
    pub(crate) fn new(need: CopyReport) -> PeerWait {
        PeerWait { need, target: None, received_at: None }
    }
}

impl NodeCore {
    /// Moves `wait` on: fixes its target once no block of `range` (None:
    /// of the whole volume) waits to be sent, then compares it with what
    /// the peer reported, asking the peer to destage if it waits for
    /// durability.
    pub(crate) fn advance_peer_wait(&mut self, vi: usize, wait: &mut PeerWait, range: Option<(u64, u64)>) -> PeerProgress {
        let Some(s) = self.session.as_ref() else { return PeerProgress::Lost { link_down: true } };
        if !s.ready || !s.bulk_up {
            return PeerProgress::Lost { link_down: false };
        }
        let sid = s.id;
        if wait.target.is_some_and(|(session, _)| session != sid) {
            // The copies it waited for were lost with their session: their
            // blocks went back to the stream.
            wait.target = None;
            wait.received_at = None;
        }
        let claims = &self.volumes[vi].claims;
        let target = match wait.target {
            Some((_, seq)) => seq,
            None => {
                let unsent = match range {
                    Some((offset, length)) => claims.has_unsent_in(offset, length),
                    None => claims.has_unsent(),
                };
                if unsent {
                    return PeerProgress::Waiting("its blocks wait to be sent to the peer".into());
                }
                let seq = claims.last_copy_seq();
                wait.target = Some((sid, seq));
                seq
            }
        };
        if wait.received_at.is_none() && claims.peer_received() >= target {
            wait.received_at = Some(self.now);
        }
        let reached = match wait.need {
            CopyReport::Durable => claims.peer_durable() >= target,
            CopyReport::Received | CopyReport::Lazy => claims.peer_received() >= target,
        };
        if reached {
            return PeerProgress::Reached;
        }
        let what = if wait.need == CopyReport::Durable {
            self.ask_destage(vi, sid, target);
            "durable"
        } else {
            "received"
        };
        PeerProgress::Waiting(format!("waiting for the peer to report copy {} {what}", target.0))
    }

    /// Makes sure the peer was asked to make copies up to `upto` durable
    /// at once.
    fn ask_destage(&mut self, vi: usize, sid: SessionGen, upto: CopySeq) {
        let r = &mut self.volumes[vi].replication;
        if r.durable_asked.is_some_and(|(s, seq)| s == sid && seq >= upto) {
            return;
        }
        r.durable_asked = Some((sid, upto));
        let volume = self.volumes[vi].index;
        self.send(Lane::Bulk, Message::Destage { volume, upto });
    }

    /// A copy `seq` leaves with `report`: a durable report asks for all
    /// before it too.
    pub(crate) fn note_copy_report(&mut self, vi: usize, session: SessionGen, seq: CopySeq, report: CopyReport) {
        if report == CopyReport::Durable {
            let r = &mut self.volumes[vi].replication;
            if r.durable_asked.is_none_or(|(s, asked)| s != session || asked < seq) {
                r.durable_asked = Some((session, seq));
            }
        }
    }

    /// The sync number that makes what was written so far durable here:
    /// one fdatasync at a time, later requests sharing the next one.
    pub(crate) fn want_local_sync(&mut self, vi: usize) -> u64 {
        let v = &mut self.volumes[vi];
        if v.replication.local_sync.in_flight {
            v.replication.local_sync.again = true;
            return v.syncs.issued + 1;
        }
        v.replication.local_sync.in_flight = true;
        self.issue_sync(vi, IoPurpose::GroupSync { volume: vi });
        self.volumes[vi].syncs.issued
    }

    pub(crate) fn on_group_synced(&mut self, vi: usize, result: Result<(), IoFault>) {
        self.changed.insert(vi);
        let g = &mut self.volumes[vi].replication.local_sync;
        g.in_flight = false;
        if let Err(fault) = result {
            g.again = false;
            self.stop_volume(vi, format!("fdatasync failed ({fault}); writes since the last successful one may be lost"));
            return;
        }
        if std::mem::take(&mut g.again) {
            g.in_flight = true;
            self.issue_sync(vi, IoPurpose::GroupSync { volume: vi });
        }
    }

    /// Whether a write to a sync volume may start now; else why it waits
    /// (the peer is unreachable and the policy is `suspend`). With the
    /// `degrade` policy and the link down, the volume degrades instead.
    pub(crate) fn sync_write_blocked(&mut self, vi: usize) -> Option<String> {
        self.volumes[vi].replication.peer_need(false)?;
        match &self.session {
            Some(s) if s.ready && s.bulk_up => None,
            None if self.volumes[vi].replication.on_peer_loss == PeerLossPolicy::Degrade => {
                self.enter_degraded(vi, "the peer is unreachable");
                None
            }
            Some(_) => Some(format!(
                "volume `{}` is in {} mode and the peer link is being set up",
                self.volumes[vi].settings.name,
                self.volumes[vi].replication.mode.as_str()
            )),
            None => Some(format!(
                "volume `{}` is in {} mode and the peer is unreachable (on_peer_loss = suspend)",
                self.volumes[vi].settings.name,
                self.volumes[vi].replication.mode.as_str()
            )),
        }
    }

    /// The peer was lost: a sync volume with the `degrade` policy carries
    /// on as `async` until the peer has caught up. Returns whether it is
    /// degraded now.
    pub(crate) fn enter_degraded(&mut self, vi: usize, reason: &str) -> bool {
        let r = &mut self.volumes[vi].replication;
        r.backlog_unknown = true;
        if r.degraded.is_some() {
            return true;
        }
        if r.mode == ReplicationMode::Async || r.on_peer_loss != PeerLossPolicy::Degrade {
            return false;
        }
        r.degraded = Some(Degraded { since: self.now, catch_up: PeerWait::new(CopyReport::Durable) });
        r.degradations += 1;
        let mode = r.mode;
        let volume = self.volumes[vi].index;
        self.event(Event::Degraded { volume, mode, reason: reason.to_string() });
        self.changed.insert(vi);
        true
    }

    /// A degraded volume returns to its mode once every write acknowledged
    /// meanwhile is durable at the peer.
    pub(crate) fn pump_catch_up(&mut self, vi: usize) {
        let Some(d) = &self.volumes[vi].replication.degraded else { return };
        if self.volumes[vi].serving != Serving::Yes {
            return;
        }
        let since = d.since;
        let mut wait = d.catch_up;
        let progress = self.advance_peer_wait(vi, &mut wait, None);
        let r = &mut self.volumes[vi].replication;
        match progress {
            PeerProgress::Reached => {
                r.degraded = None;
                r.backlog_unknown = false;
                let mode = r.mode;
                let volume = self.volumes[vi].index;
                let after = self.now.since(since);
                self.event(Event::CaughtUp { volume, mode, after });
                self.changed.insert(vi);
            }
            PeerProgress::Waiting(_) => r.degraded.as_mut().expect("checked").catch_up = wait,
            PeerProgress::Lost { .. } => r.degraded.as_mut().expect("checked").catch_up = PeerWait::new(CopyReport::Durable),
        }
    }

    /// An operator changes a volume's mode. A switch to a sync mode holds
    /// for writes from now on; what was acknowledged before is durable at
    /// the peer once a FLUSH issued after the switch returns.
    pub fn set_mode(&mut self, now: Time, volume: VolumeIndex, mode: ReplicationMode) -> Result<ReplicationMode, ModeRefused> {
        self.now = self.now.max(now);
        let vi = volume.0 as usize;
        let Some(v) = self.volumes.get_mut(vi) else { return Err(ModeRefused::NoVolume(volume.0)) };
        let from = v.replication.mode;
        v.replication.mode = mode;
        v.replication.backlog_unknown = true;
        if mode == ReplicationMode::Async {
            v.replication.degraded = None;
        }
        if from != mode {
            self.event(Event::ModeChanged { volume, from, to: mode });
        }
        if self.session.is_none() {
            self.enter_degraded(vi, "the peer is unreachable");
        }
        self.changed.insert(vi);
        self.settle();
        Ok(from)
    }

    /// The replication figures of volume `vi`.
    pub(crate) fn replication_view(&self, vi: usize) -> ReplicationView {
        let r = &self.volumes[vi].replication;
        let waiting_for_peer = self.tasks.values().filter(|t| t.volume.0 as usize == vi && t.waits_for_peer()).count() as u64;
        ReplicationView {
            mode: r.mode,
            on_peer_loss: r.on_peer_loss,
            degraded_for: r.degraded.as_ref().map(|d| self.now.since(d.since)),
            waiting_for_peer,
            last_ack: r.last_ack,
            degradations: r.degradations,
        }
    }
}
