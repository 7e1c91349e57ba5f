//! The node's standing when its peer may be gone: the lease from the
//! witness, the survivor role, fencing, and the health it reports
//! (DESIGN.md 5.1).
//!
//! - While the session with the peer is ready, none of this changes what
//!   the node does: the two nodes agree through the link.
//! - The node renews its lease with the witness every third of the lease,
//!   whatever the link does. While the link is down it answers hosts only
//!   while the lease runs ([`NodeCore::may_serve`]).
//! - When the link has been down for `heartbeat_interval`, it asks the
//!   witness for the survivor role. The witness grants it to one node per
//!   outage, with a growing generation, and denies the other (which is then
//!   fenced: it answers no host request until its session is ready again).
//!   The survivor acts alone (claims clean extents without the peer; an
//!   operator may take over the lost peer's extents) once the other's lease
//!   has surely ended: its length plus the clock-drift bound after the
//!   grant arrived.
//! - Without a witness nobody acts alone and nobody is fenced; an operator's
//!   takeover makes the node survivor at once (it accepts the risk that
//!   the peer is alive).
//! - When the session is ready again and every extent taken alone has been
//!   resynced to the peer, the survivor tells the witness the outage is over.

use std::collections::BTreeMap;
use std::time::Duration;

use geomirror_wire::peer::RequestId;
use geomirror_wire::witness::WitnessMessage;

use crate::config::WitnessSettings;
use crate::ids::WitnessLinkGen;
use crate::io::{Event, Output};
use crate::node::NodeCore;
use crate::time::Time;

/// What `/status` calls the node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The session with the peer is ready and nothing is left to resync.
    Connected,
    /// The session is back after an outage; the copy stream is catching up.
    CatchingUp,
    /// The peer is unreachable; this node serves what it may (its lease runs,
    /// or there is no witness).
    PeerLost,
    /// The witness made this node the survivor of an outage.
    Survivor,
    /// This node answers no host request (the witness made the peer the
    /// survivor, or the lease ended while the link was down).
    Fenced,
    /// The session is back; extents are being compared with the peer.
    Resyncing,
}

impl Health {
    /// Every health, in the order of the enum (the label values of the
    /// health metric).
    pub const ALL: [Health; 6] =
        [Health::Connected, Health::CatchingUp, Health::PeerLost, Health::Survivor, Health::Fenced, Health::Resyncing];

    /// The name `/status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Connected => "connected",
            Health::CatchingUp => "catching-up",
            Health::PeerLost => "peer-lost",
            Health::Survivor => "survivor",
            Health::Fenced => "fenced",
            Health::Resyncing => "resyncing",
        }
    }
}

/// A request of ours to the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WitnessRequest {
    Renew,
    Claim,
    Resolve { generation: u64 },
}

/// The survivor role of one outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SurvivorRole {
    /// The outage's generation.
    pub generation: u64,
    /// From when this node acts alone.
    pub acting_at: Time,
    /// An operator made this node survivor (no witness).
    pub by_operator: bool,
    /// The start of acting alone was reported.
    pub announced: bool,
}

/// The witness as this node sees it.
#[derive(Debug)]
pub(crate) struct WitnessView {
    pub settings: WitnessSettings,
    pub link: Option<WitnessLinkGen>,
    next_request: u64,
    requests: BTreeMap<RequestId, (WitnessRequest, Time)>,
    next_renew: Time,
    /// Until when this node's lease runs (its own clock).
    pub lease_until: Option<Time>,
}

/// The node's standing (see the module docs).
#[derive(Debug)]
pub(crate) struct Standing {
    pub witness: Option<WitnessView>,
    pub survivor: Option<SurvivorRole>,
    /// The outage this node survived and must still report over to the
    /// witness (once every extent it took alone is resynced).
    pub resolving: Option<u64>,
    /// Why the node is fenced by the witness's decision, if it is.
    pub denied: Option<String>,
    /// The newest outage generation known (also kept in the claims files).
    pub generation: u64,
    /// Since when the session has not been ready (None while it is).
    pub link_down_since: Option<Time>,
    /// The session came back after an outage and the copy stream has not
    /// caught up yet.
    pub catching_up: bool,
    /// The health last reported.
    pub health: Health,
    /// Why, as last reported.
    pub reason: String,
}

impl Standing {
    pub fn new(witness: Option<WitnessSettings>, generation: u64, now: Time) -> Standing {
        Standing {
            witness: witness.map(|settings| WitnessView {
                settings,
                link: None,
                next_request: 0,
                requests: BTreeMap::new(),
                next_renew: now,
                lease_until: None,
            }),
            survivor: None,
            resolving: None,
            denied: None,
            generation,
            link_down_since: Some(now),
            catching_up: false,
            health: Health::PeerLost,
            reason: "starting: the peer link is not up yet".into(),
        }
    }
}

impl NodeCore {
    /// Whether this node may answer host requests now (the volume's own
    /// state aside): the session is ready; or, with the link down, it is not
    /// fenced and either has no witness, holds a running lease, or acts
    /// alone as the survivor.
    pub fn may_serve(&self) -> bool {
        if self.is_ready() {
            return true;
        }
        let st = &self.standing;
        if st.denied.is_some() {
            return false;
        }
        let Some(w) = &st.witness else { return true };
        self.acting_alone() || w.lease_until.is_some_and(|until| self.now < until)
    }

    /// Whether this node acts alone now (survivor, its wait over, and no
    /// session at all: once the peer is back, even before the sync is done,
    /// a claim made alone would not reach the peer's view).
    pub(crate) fn acting_alone(&self) -> bool {
        self.session.is_none() && self.standing.survivor.is_some_and(|s| self.now >= s.acting_at)
    }

    /// The node's health.
    pub fn health(&self) -> (Health, &str) {
        (self.standing.health, &self.standing.reason)
    }

    /// The survivor role, if this node holds one.
    pub fn survivor(&self) -> Option<SurvivorRole> {
        self.standing.survivor
    }

    /// Whether an outage this node survived is not yet over at the witness
    /// (the role held, or its end not yet reported).
    pub fn outage_open(&self) -> bool {
        self.standing.survivor.is_some() || self.standing.resolving.is_some()
    }

    /// The newest outage generation known.
    pub fn generation(&self) -> u64 {
        self.standing.generation
    }

    /// How long this node's lease still runs (None: no witness, or none held).
    pub fn lease_left(&self) -> Option<Duration> {
        let until = self.standing.witness.as_ref()?.lease_until?;
        Some(if until > self.now { until.since(self.now) } else { Duration::ZERO })
    }

    /// Whether the witness link is up (None: no witness configured).
    pub fn witness_up(&self) -> Option<bool> {
        self.standing.witness.as_ref().map(|w| w.link.is_some())
    }

    pub(crate) fn on_witness_up(&mut self, link: WitnessLinkGen) {
        if let Some(w) = &mut self.standing.witness {
            w.link = Some(link);
            w.requests.clear();
            w.next_renew = self.now;
        }
    }

    pub(crate) fn on_witness_down(&mut self, link: WitnessLinkGen) {
        if let Some(w) = &mut self.standing.witness
            && w.link == Some(link)
        {
            w.link = None;
            w.requests.clear();
        }
    }

    pub(crate) fn on_witness_frame(&mut self, link: WitnessLinkGen, message: WitnessMessage) {
        let Some(w) = &mut self.standing.witness else { return };
        if w.link != Some(link) {
            return;
        }
        let Some(id) = message.id() else {
            return self.close_witness(link, format!("protocol violation: unexpected {} from the witness", message.kind()));
        };
        let Some((request, sent)) = w.requests.remove(&id) else {
            return self.close_witness(link, format!("protocol violation: the witness answered unknown request {}", id.0));
        };
        let lease = w.settings.lease;
        let drift = w.settings.max_clock_drift;
        match (request, message) {
            (WitnessRequest::Renew, WitnessMessage::Lease { .. }) => {
                // The witness granted it after we sent the request: counting
                // from the send is on the safe side.
                let until = sent + lease;
                let w = self.standing.witness.as_mut().expect("checked");
                w.lease_until = Some(w.lease_until.map_or(until, |u| u.max(until)));
            }
            (WitnessRequest::Claim, WitnessMessage::Survivor { generation, other_lease_ms, .. }) => {
                let wait = lease.max(Duration::from_millis(other_lease_ms)) + drift;
                let role = SurvivorRole { generation, acting_at: self.now + wait, by_operator: false, announced: false };
                if self.standing.survivor.is_none_or(|s| s.generation != generation) {
                    self.standing.survivor = Some(role);
                }
                self.learn_generation(generation);
            }
            (WitnessRequest::Renew | WitnessRequest::Claim, WitnessMessage::Denied { survivor, generation, .. }) => {
                self.learn_generation(generation);
                if let Some(w) = &mut self.standing.witness {
                    w.lease_until = None;
                }
                if self.standing.survivor.is_some_and(|s| s.generation < generation) {
                    // A newer outage went to the peer: our role is over.
                    self.standing.survivor = None;
                }
                if self.standing.resolving.is_some_and(|g| g < generation) {
                    self.standing.resolving = None;
                }
                if !self.is_ready() {
                    self.standing.denied =
                        Some(format!("the witness made {survivor} the survivor of outage {generation}; waiting for the peer link"));
                }
            }
            (WitnessRequest::Resolve { generation }, WitnessMessage::Cleared { .. }) => {
                if self.standing.resolving == Some(generation) {
                    self.standing.resolving = None;
                    self.event(Event::OutageResolved { generation });
                }
            }
            (_, WitnessMessage::Error { message, .. }) => self.event(Event::WitnessProblem { message }),
            (request, other) => {
                self.close_witness(link, format!("protocol violation: the witness answered {request:?} with {}", other.kind()));
            }
        }
        self.touch_all_volumes();
    }

    fn close_witness(&mut self, link: WitnessLinkGen, reason: String) {
        self.outputs.push_back(Output::CloseWitness { link, reason });
        self.on_witness_down(link);
    }

    /// Raises the known generation (kept in every volume's claims file).
    pub(crate) fn learn_generation(&mut self, generation: u64) {
        if generation > self.standing.generation {
            self.standing.generation = generation;
            for vi in 0..self.volumes.len() {
                self.volumes[vi].claims.set_generation(generation);
                self.changed.insert(vi);
            }
        }
    }

    fn witness_request(&mut self, request: WitnessRequest) {
        let now = self.now;
        let Some(w) = &mut self.standing.witness else { return };
        let Some(link) = w.link else { return };
        w.next_request += 1;
        let id = RequestId(w.next_request);
        w.requests.insert(id, (request, now));
        let message = match request {
            WitnessRequest::Renew => WitnessMessage::Renew { id },
            WitnessRequest::Claim => WitnessMessage::Claim { id },
            WitnessRequest::Resolve { generation } => WitnessMessage::Resolved { id, generation },
        };
        self.outputs.push_back(Output::SendWitness { link, message });
    }

    fn in_flight(&self, kind: fn(&WitnessRequest) -> bool) -> bool {
        self.standing.witness.as_ref().is_some_and(|w| w.requests.values().any(|(r, _)| kind(r)))
    }

    pub(crate) fn touch_all_volumes(&mut self) {
        for vi in 0..self.volumes.len() {
            self.changed.insert(vi);
        }
    }

    /// Moves the standing on: renewals, the survivor claim, the end of an
    /// outage, and the health it reports. Runs after every input.
    pub(crate) fn pump_standing(&mut self) {
        let now = self.now;
        let ready = self.is_ready();
        if ready {
            if self.standing.link_down_since.take().is_some() {
                self.standing.catching_up = true;
            }
            if self.standing.denied.take().is_some() {
                self.touch_all_volumes();
            }
            // The outage is over from here: the role does not carry over to
            // the next one (a new outage asks the witness again, which may
            // meanwhile have made the peer the survivor of a newer one).
            if let Some(role) = self.standing.survivor.take() {
                self.standing.resolving = Some(role.generation);
            }
            let resynced = self.volumes.iter().all(|v| !v.claims.has_taken());
            if let Some(generation) = self.standing.resolving
                && resynced
            {
                if self.standing.witness.is_none() {
                    self.standing.resolving = None;
                    self.event(Event::OutageResolved { generation });
                } else if !self.in_flight(|r| matches!(r, WitnessRequest::Resolve { .. })) {
                    self.witness_request(WitnessRequest::Resolve { generation });
                }
            }
        } else {
            let since = *self.standing.link_down_since.get_or_insert(now);
            let grace = self.config.heartbeat_interval;
            if self.standing.survivor.is_none()
                && self.standing.denied.is_none()
                && now >= since + grace
                && self.standing.witness.as_ref().is_some_and(|w| w.link.is_some())
                && !self.in_flight(|r| matches!(r, WitnessRequest::Claim))
            {
                self.witness_request(WitnessRequest::Claim);
            }
        }
        if let Some(w) = &mut self.standing.witness
            && w.link.is_some()
            && now >= w.next_renew
        {
            w.next_renew = now + w.settings.lease / 3;
            if !self.in_flight(|r| matches!(r, WitnessRequest::Renew)) {
                self.witness_request(WitnessRequest::Renew);
            }
        }
        if let Some(role) = &mut self.standing.survivor
            && !role.announced
            && !ready
            && now >= role.acting_at
        {
            role.announced = true;
            let generation = role.generation;
            self.event(Event::ActingAlone { generation });
            self.touch_all_volumes();
        }
        // Caught up once nothing is left to compare and everything the
        // comparison found (and every write of the outage) is durable at
        // the peer.
        if self.standing.catching_up
            && ready
            && self.volumes.iter().all(|v| !v.claims.resync_pending() && v.claims.not_durable_blocks() == 0)
        {
            self.standing.catching_up = false;
        }
        self.report_health();
    }

    fn report_health(&mut self) {
        let (health, reason) = self.compute_health();
        if health != self.standing.health {
            self.standing.health = health;
            self.standing.reason = reason.clone();
            self.event(Event::HealthChanged { health, reason });
            self.touch_all_volumes();
        }
    }

    fn compute_health(&self) -> (Health, String) {
        let st = &self.standing;
        if self.is_ready() {
            if self.volumes.iter().any(|v| v.claims.resync_pending()) {
                return (Health::Resyncing, "comparing extents with the peer after an outage or a restart".into());
            }
            if st.catching_up {
                return (Health::CatchingUp, "the peer link is back; the copy stream is catching up".into());
            }
            return (Health::Connected, "the peer link is up".into());
        }
        if let Some(reason) = &st.denied {
            return (Health::Fenced, reason.clone());
        }
        if let Some(role) = st.survivor {
            let how = if role.by_operator { "an operator's takeover" } else { "the witness" };
            return (Health::Survivor, format!("survivor of outage {} by {how}", role.generation));
        }
        if let Some(w) = &st.witness
            && w.lease_until.is_none_or(|until| self.now >= until)
        {
            return (Health::Fenced, "the peer link is down and this node holds no lease from the witness".into());
        }
        (Health::PeerLost, "the peer link is down".into())
    }

    /// When the standing next needs a tick.
    pub(crate) fn standing_deadline(&self) -> Option<Time> {
        let st = &self.standing;
        let mut next: Option<Time> = None;
        let mut at = |t: Time| next = Some(next.map_or(t, |n: Time| n.min(t)));
        if let Some(w) = &st.witness {
            if w.link.is_some() {
                at(w.next_renew);
            }
            if let Some(until) = w.lease_until
                && until > self.now
            {
                at(until);
            }
        }
        if let Some(role) = st.survivor
            && role.acting_at > self.now
        {
            at(role.acting_at);
        }
        if let Some(since) = st.link_down_since {
            let t = since + self.config.heartbeat_interval;
            if t > self.now {
                at(t);
            }
        }
        next
    }

    /// An operator makes this node survivor (no witness configured, peer
    /// said to be down): it acts alone at once, under a new generation.
    pub(crate) fn become_survivor_by_operator(&mut self) -> u64 {
        if let Some(role) = self.standing.survivor {
            return role.generation;
        }
        let generation = self.standing.generation + 1;
        self.learn_generation(generation);
        self.standing.survivor = Some(SurvivorRole { generation, acting_at: self.now, by_operator: true, announced: true });
        self.event(Event::ActingAlone { generation });
        generation
    }
}
