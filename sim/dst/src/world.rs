//! The simulated world: two node cores, their disks, the network between
//! them, host clients at both sites, and the faults, all driven from one
//! seed by a single event queue in virtual time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use geomirror_config::ReplicationMode;
use geomirror_core::claims::ExtentState;
use geomirror_core::claims_file::{self, ClaimsWrite};
use geomirror_core::witness::{WitnessConn, WitnessCore, WitnessOutput, WitnessState};
use geomirror_core::{
    CoreConfig, Geometry, HostError, HostRequest, HostRequestId, Input, IoFault, IoFaultKind, IoOp, IoOutcome, IoToken, Knobs, NodeCore,
    Output, Role, SessionGen, Time, VolumeSettings, WitnessLinkGen, WitnessSettings, WriteTicket,
};
use geomirror_wire::peer::{Extent, Lane, Message, VolumeIndex};
use geomirror_wire::witness::WitnessMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::disk::{Disk, StoredBlock, buffer_of, value_at};
use crate::history::{History, Recorded};
use crate::invariants;
use crate::params::{BLOCK_BYTES, Params};

/// The volume every run serves.
pub const VOLUME: VolumeIndex = VolumeIndex(0);
const NAMES: [&str; 2] = ["site-a", "site-b"];
/// Virtual time the heal phase may take before the run fails.
const HEAL_TIME_MAX: Duration = Duration::from_secs(60);

/// What a host operation is.
#[derive(Clone, Debug)]
pub enum OpKind {
    /// Read blocks.
    Read { first: u64, blocks: u64 },
    /// Write `value` (0: a trim) to blocks.
    Write { first: u64, blocks: u64, value: u64, fua: bool },
    /// Flush.
    Flush,
}

/// A host operation in flight at a node.
#[derive(Debug)]
pub struct HostOp {
    /// The client that issued it (None: the final reads of the heal phase).
    pub client: Option<usize>,
    /// What it is.
    pub kind: OpKind,
    /// When it was issued.
    pub invoke: u64,
    /// Its entries in the block histories.
    pub recorded: Option<Recorded>,
}

/// One simulated node.
pub struct Node {
    /// The core, while the node is up.
    pub core: Option<NodeCore>,
    /// Counts restarts: events of an earlier life are ignored.
    pub life: u64,
    /// Its disk.
    pub disk: Disk,
    /// When its core's next tick is scheduled.
    tick_at: Option<u64>,
    /// Host operations in flight.
    pub ops: BTreeMap<u64, HostOp>,
    /// Blocks with an acknowledged write not yet covered by a flush, and
    /// when it was acknowledged: a crash may lose them.
    pub unflushed: BTreeMap<u64, u64>,
    /// The highest ownership epoch seen per extent in this life.
    pub epochs: BTreeMap<u64, u64>,
    /// The highest epoch counter seen in this life.
    pub counter: u64,
    /// The core finished a session-start sync in this life.
    pub synced_once: bool,
    /// It claimed or took extents alone since its budget was last within
    /// the limit (bounded exposure does not hold while the peer is lost).
    pub over_limit_allowed: bool,
    /// An operator declared it down (no witness): it stays down until the
    /// heal phase, and serves no host (the operator's promise) until its
    /// first sync after that.
    pub declared_down: bool,
    /// Its core reported the volume degraded (a sync mode acknowledging as
    /// `async` while the peer is lost) and not yet caught up.
    pub degraded: bool,
    /// I/Os in flight (claims file writes, to decide their fate at a crash).
    io: BTreeMap<IoToken, IoOp>,
    clients_busy: Vec<bool>,
    cursors: Vec<u64>,
}

/// Events of the simulation.
#[derive(Debug)]
enum Ev {
    Tick { n: usize, life: u64 },
    Io { n: usize, life: u64, token: IoToken, snapshot: Option<Vec<StoredBlock>> },
    FastWrite { n: usize, life: u64, id: u64, ticket: WriteTicket, data: Bytes },
    FastRead { n: usize, life: u64, id: u64, offset: u64, length: u64 },
    Deliver { to: usize, sid: u64, lane: Lane, message: Message },
    LinkUp { n: usize, sid: u64, role: Role },
    BulkUp { n: usize, sid: u64 },
    LinkDown { n: usize, sid: u64, reason: String },
    Connect,
    Client { n: usize, c: usize, life: u64 },
    Crash { n: usize },
    Restart { n: usize },
    LinkFault,
    BulkStall,
    HealStart,
    WitnessConnect { n: usize },
    ToWitness { n: usize, link: u64, message: WitnessMessage },
    FromWitness { n: usize, link: u64, message: WitnessMessage },
    WitnessDown { n: usize, link: u64, reason: String },
    WitnessPersisted { life: u64, version: u64, state: WitnessState },
    WitnessCrash,
    WitnessRestart,
    WitnessCut,
    Operator,
}

/// The simulated witness.
#[derive(Debug, Default)]
struct SimWitness {
    core: Option<WitnessCore>,
    durable: WitnessState,
    life: u64,
    next_link: u64,
    /// Per node: the link it holds (its generation number is also the
    /// witness's connection id).
    link: [Option<u64>; 2],
    /// A node is cut from the witness until then.
    cut_until: [u64; 2],
    connect_scheduled: [bool; 2],
    /// Per direction (node n → witness, witness → node n): last delivery.
    last: [[u64; 2]; 2],
    /// State writes in flight: a crash lands each or not.
    persisting: Vec<(u64, WitnessState)>,
}

/// The network between the two nodes.
#[derive(Debug, Default)]
struct Net {
    next_sid: u64,
    /// The session each side is in (None: not connected).
    side: [Option<u64>; 2],
    /// Messages sent now are delivered no earlier than this (a partition
    /// holds them, as TCP would).
    partition_until: u64,
    /// Last delivery time per direction and lane (FIFO).
    last: [[u64; 2]; 2],
    /// When each direction's bulk lane has sent what it was given.
    bulk_free: [u64; 2],
    /// The bulk lanes send nothing until then (a stall).
    bulk_stalled_until: u64,
    connect_scheduled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Heal,
    FinalReads,
    Done,
}

/// Counts for the report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Host writes acknowledged.
    pub writes: u64,
    /// Host reads answered.
    pub reads: u64,
    /// Host requests failed.
    pub failed: u64,
    /// Crashes.
    pub crashes: u64,
    /// Sessions started.
    pub sessions: u64,
    /// Releases checked against the receiver's durable blocks.
    pub releases_checked: u64,
    /// Acknowledged writes checked against the peer's durable record.
    pub acks_checked: u64,
    /// Injected I/O faults.
    pub io_faults: u64,
    /// Blocks whose history was too large for the linearizability search.
    pub too_large: u64,
    /// Block histories checked for linearizability.
    pub blocks_checked: u64,
    /// Times a node started acting alone (survivor of an outage).
    pub acting_alone: u64,
    /// Operator takeovers.
    pub takeovers: u64,
    /// Blocks saved to conflict files.
    pub conflict_blocks: u64,
    /// Times a node became fenced.
    pub fenced: u64,
    /// Resyncs completed, and blocks they found different.
    pub resyncs: u64,
    /// Writes acknowledged durable at both sites (a sync mode, not degraded).
    pub sync_acks: u64,
    /// Times a sync volume degraded.
    pub degradations: u64,
    /// Blocks found different by resyncs.
    pub resync_blocks: u64,
}

/// The simulated world.
pub struct World {
    /// The seed.
    pub seed: u64,
    /// Its parameters.
    pub p: Params,
    rng: StdRng,
    /// Virtual time in nanoseconds.
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    /// The two nodes.
    pub nodes: [Node; 2],
    net: Net,
    /// Every block's history.
    pub history: History,
    hash: u64,
    phase: Phase,
    next_value: u64,
    next_host: u64,
    heal_started: u64,
    /// Counts.
    pub stats: Stats,
    /// Print every event and output (GEOMIRROR_DST_TRACE=1).
    trace: bool,
    /// Per node, the time of its last tick and how many came at that time.
    last_tick: [(u64, u64); 2],
    witness: SimWitness,
    /// Blocks an operator's takeover may have discarded at a node, with
    /// the values that node held: each must reach its conflict file.
    pub expected_conflicts: Vec<(usize, u64, [u64; 2])>,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

impl World {
    /// A world for `seed` (every parameter drawn from it).
    pub fn new(seed: u64) -> World {
        World::with_params(seed, Params::of(seed))
    }

    /// A world for `seed` with parameters `p` (e.g. a scenario's, see
    /// [`Params::of_scenario`]); the schedule is still drawn from `seed`.
    pub fn with_params(seed: u64, p: Params) -> World {
        let blocks = p.blocks();
        let node = |clients: usize| Node {
            core: None,
            life: 0,
            disk: Disk::new(blocks),
            tick_at: None,
            ops: BTreeMap::new(),
            unflushed: BTreeMap::new(),
            degraded: false,
            epochs: BTreeMap::new(),
            counter: 0,
            synced_once: false,
            over_limit_allowed: false,
            declared_down: false,
            io: BTreeMap::new(),
            clients_busy: vec![false; clients],
            cursors: vec![0; clients],
        };
        let clients = p.clients;
        let mut w = World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: [node(clients), node(clients)],
            net: Net::default(),
            history: History::default(),
            hash: 0xcbf2_9ce4_8422_2325,
            phase: Phase::Faults,
            next_value: 1,
            next_host: 1,
            heal_started: 0,
            stats: Stats::default(),
            trace: std::env::var_os("GEOMIRROR_DST_TRACE").is_some(),
            last_tick: [(u64::MAX, 0); 2],
            witness: SimWitness::default(),
            expected_conflicts: Vec::new(),
            p,
        };
        if w.p.witness.is_some() {
            w.start_witness();
        }
        for n in 0..2 {
            for c in 0..w.p.clients {
                w.nodes[n].cursors[c] = w.rng.random_range(0..blocks);
            }
            w.start_node(n);
        }
        w.schedule(ns(w.p.fault_phase), Ev::HealStart);
        if let Some(every) = w.p.crash_every {
            for n in 0..2 {
                let at = w.rng.random_range(0..2 * ns(every));
                w.schedule(at, Ev::Crash { n });
            }
        }
        if let Some(every) = w.p.link_fault_every {
            let at = w.rng.random_range(0..2 * ns(every));
            w.schedule(at, Ev::LinkFault);
        }
        if let Some(every) = w.p.bulk_stall_every {
            let at = w.rng.random_range(0..2 * ns(every));
            w.schedule(at, Ev::BulkStall);
        }
        let (crash, cut) = w.p.witness.as_ref().map_or((None, None), |x| (x.crash_every, x.cut_every));
        if let Some(every) = crash {
            let at = w.rng.random_range(0..2 * ns(every));
            w.schedule(at, Ev::WitnessCrash);
        }
        if let Some(every) = cut {
            let at = w.rng.random_range(0..2 * ns(every));
            w.schedule(at, Ev::WitnessCut);
        }
        if let Some(every) = w.p.operator_every {
            let at = w.rng.random_range(0..2 * ns(every));
            w.schedule(at, Ev::Operator);
        }
        w
    }

    /// Node `n`'s clock now (its rate differs a little from true time).
    fn local(&self, n: usize) -> Time {
        Time::from_nanos((self.now as f64 * self.p.clock_rate[n]) as u64)
    }

    /// The true time at which node `n`'s clock shows `t` (or a little after).
    fn true_time(&self, n: usize, t: Time) -> u64 {
        (t.as_nanos() as f64 / self.p.clock_rate[n]).ceil() as u64 + 1
    }

    /// The core configuration of node `n`.
    pub fn config(&self, n: usize) -> CoreConfig {
        let p = &self.p;
        CoreConfig {
            node: NAMES[n].into(),
            wins_ties: n == 0,
            peer_timeout: p.peer_timeout,
            heartbeat_interval: p.heartbeat,
            heartbeat_timeout: p.heartbeat_timeout,
            witness: p.witness.as_ref().map(|w| WitnessSettings { lease: w.lease, max_clock_drift: w.max_clock_drift }),
            volumes: vec![VolumeSettings {
                name: "vol0".into(),
                geometry: Geometry {
                    block_bytes: BLOCK_BYTES,
                    extent_bytes: BLOCK_BYTES * p.blocks_per_extent,
                    size: BLOCK_BYTES * p.blocks(),
                },
                knobs: Knobs { max_owned: p.max_owned, predict: p.predict, release_after: p.release_after },
                mode: p.mode,
                on_peer_loss: p.on_peer_loss,
            }],
        }
    }

    fn mix(&mut self, words: &[u64]) {
        for w in words {
            for b in w.to_le_bytes() {
                self.hash ^= u64::from(b);
                self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    /// The trace hash so far (the same seed gives the same hash).
    pub fn trace_hash(&self) -> u64 {
        self.hash
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn latency(&mut self) -> u64 {
        let (base, jitter) = self.p.latency;
        ns(base) + if jitter.is_zero() { 0 } else { self.rng.random_range(0..=ns(jitter)) }
    }

    fn io_latency(&mut self, op: &IoOp) -> u64 {
        match op {
            IoOp::Write { sync: true, .. } => self.rng.random_range(5_000..200_000) + self.rng.random_range(100_000..2_000_000),
            IoOp::Write { .. } if self.p.slow_store_writes => self.rng.random_range(2_000_000..20_000_000),
            IoOp::Read { .. } | IoOp::Write { .. } => self.rng.random_range(5_000..200_000),
            IoOp::Sync => self.rng.random_range(100_000..2_000_000),
            IoOp::Persist { .. } | IoOp::SaveConflicts { .. } => self.rng.random_range(200_000..3_000_000),
            IoOp::Digest { .. } => self.rng.random_range(50_000..500_000),
        }
    }

    fn faults_on(&self) -> bool {
        self.phase == Phase::Faults
    }

    /// Runs to the end: the fault phase, the heal phase, the final reads
    /// and the checks. Err: the first invariant broken.
    pub fn run(&mut self) -> Result<(), String> {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let ev = self.events.remove(&seq).expect("scheduled event");
            self.now = at;
            self.stats.events += 1;
            self.step(ev)?;
            self.check_every_step().map_err(|e| format!("{e}\n  state: {}", self.describe()))?;
            if self.phase == Phase::Heal && self.converged() {
                self.final_reads();
            }
            if self.phase == Phase::FinalReads && self.nodes.iter().all(|n| n.ops.is_empty()) {
                self.phase = Phase::Done;
                return self.final_checks();
            }
            if self.phase != Phase::Faults && self.now > self.heal_started + ns(HEAL_TIME_MAX) {
                return Err(format!("the nodes did not converge within {HEAL_TIME_MAX:?} of healing: {}", self.describe()));
            }
        }
        Err(format!("the simulation ran out of events in phase {:?}: {}", self.phase, self.describe()))
    }

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        if self.trace {
            eprintln!("{:>12.6} ms  {}", self.now as f64 / 1e6, format!("{ev:?}").chars().take(300).collect::<String>());
        }
        match ev {
            Ev::Tick { n, life } => {
                if self.nodes[n].life != life || self.nodes[n].tick_at != Some(self.now) {
                    return Ok(());
                }
                self.nodes[n].tick_at = None;
                self.mix(&[1, n as u64, self.now]);
                if self.last_tick[n].0 == self.now {
                    self.last_tick[n].1 += 1;
                    if self.last_tick[n].1 > 1000 {
                        return Err(format!(
                            "node {}: the core asks for a tick at the same instant over and over (a deadline that never moves)",
                            NAMES[n]
                        ));
                    }
                } else {
                    self.last_tick[n] = (self.now, 0);
                }
                self.feed(n, Input::Tick)?;
            }
            Ev::Io { n, life, token, snapshot } => {
                if self.nodes[n].life != life {
                    return Ok(());
                }
                let op = self.nodes[n].io.remove(&token).expect("I/O in flight");
                let result = self.complete_io(n, &op, snapshot);
                self.mix(&[2, n as u64, token.0, result.is_ok() as u64]);
                self.feed(n, Input::IoDone { token, result })?;
            }
            Ev::FastWrite { n, life, id, ticket, data } => {
                if self.nodes[n].life != life {
                    return Ok(());
                }
                let fail = self.faults_on() && self.rng.random_bool(self.p.io_fault);
                let w = geomirror_core::StoreWrite::Data { offset: ticket.offset, data };
                let cut = fail.then(|| self.rng.random_range(0..ticket.length / BLOCK_BYTES));
                self.nodes[n].disk.write(&w, cut);
                self.mix(&[3, n as u64, id, fail as u64]);
                let now = self.local(n);
                self.nodes[n].core.as_mut().expect("alive").finish_write(now, ticket);
                // As the runtime does: a node that may not serve any more
                // (its lease ended meanwhile) does not acknowledge.
                let may = self.nodes[n].core.as_ref().expect("alive").may_serve();
                let result = if fail {
                    self.stats.io_faults += 1;
                    Err(HostError::Store(IoFault { kind: IoFaultKind::Io, message: "injected EIO".into() }))
                } else if !may {
                    Err(HostError::PeerUnavailable("fenced".into()))
                } else {
                    Ok(None)
                };
                self.host_reply(n, id, result)?;
                self.drive(n)?;
            }
            Ev::FastRead { n, life, id, offset, length } => {
                if self.nodes[n].life != life {
                    return Ok(());
                }
                let fail = self.faults_on() && self.rng.random_bool(self.p.io_fault);
                self.mix(&[4, n as u64, id, fail as u64]);
                let may = self.nodes[n].core.as_ref().is_some_and(|c| c.may_serve());
                let result = if fail {
                    self.stats.io_faults += 1;
                    Err(HostError::Store(IoFault { kind: IoFaultKind::Io, message: "injected EIO".into() }))
                } else if !may {
                    Err(HostError::PeerUnavailable("fenced".into()))
                } else {
                    Ok(Some(self.nodes[n].disk.read(offset, length)))
                };
                self.host_reply(n, id, result)?;
            }
            Ev::Deliver { to, sid, lane, message } => {
                if self.net.side[to] != Some(sid) || self.nodes[to].core.is_none() {
                    return Ok(());
                }
                self.mix(&[5, to as u64, sid, lane as u64, message.id().map_or(0, |i| i.0)]);
                // Releases ride on the bulk lane and on claims and handover
                // requests; each is checked where it arrives first.
                match &message {
                    Message::Release { extents: released, .. }
                    | Message::Claim { releases: released, .. }
                    | Message::Handover { releases: released, .. } => {
                        invariants::release_after_data::check(self, to, released)?;
                    }
                    _ => {}
                }
                self.feed(to, Input::Frame { session: SessionGen(sid), lane, message })?;
            }
            Ev::LinkUp { n, sid, role } => {
                if self.net.side[n] != Some(sid) || self.nodes[n].core.is_none() {
                    return Ok(());
                }
                self.mix(&[6, n as u64, sid]);
                self.feed(n, Input::LinkUp { session: SessionGen(sid), role, volume_errors: vec![None] })?;
            }
            Ev::BulkUp { n, sid } => {
                if self.net.side[n] != Some(sid) || self.nodes[n].core.is_none() {
                    return Ok(());
                }
                self.feed(n, Input::BulkUp { session: SessionGen(sid) })?;
            }
            Ev::LinkDown { n, sid, reason } => {
                if self.net.side[n] != Some(sid) {
                    return Ok(());
                }
                self.net.side[n] = None;
                self.mix(&[7, n as u64, sid]);
                if self.nodes[n].core.is_some() {
                    self.feed(n, Input::LinkDown { session: SessionGen(sid), reason })?;
                }
                self.maybe_connect();
            }
            Ev::Connect => {
                self.net.connect_scheduled = false;
                self.connect();
            }
            Ev::Client { n, c, life } => {
                if self.phase == Phase::Faults
                    && self.nodes[n].life == life
                    && self.nodes[n].core.is_some()
                    && !self.nodes[n].clients_busy[c]
                {
                    self.client_op(n, c)?;
                }
            }
            Ev::Crash { n } => {
                if self.faults_on() {
                    if self.nodes[n].core.is_some() {
                        self.crash(n);
                        let back = self.rng.random_range(20_000_000..500_000_000);
                        self.schedule(self.now + back, Ev::Restart { n });
                    }
                    let every = ns(self.p.crash_every.expect("crashes configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::Crash { n });
                }
            }
            Ev::Restart { n } => {
                if self.nodes[n].core.is_none() && !self.nodes[n].declared_down {
                    self.start_node(n);
                }
            }
            Ev::LinkFault => {
                if self.faults_on() {
                    if self.rng.random_bool(0.5) {
                        self.reset_link("injected connection reset");
                    } else {
                        let length = self.rng.random_range(ns(Duration::from_millis(20))..2 * ns(self.p.peer_timeout));
                        self.net.partition_until = self.now + length;
                        self.mix(&[8, length]);
                    }
                    let every = ns(self.p.link_fault_every.expect("link faults configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::LinkFault);
                }
            }
            Ev::BulkStall => {
                if self.faults_on() {
                    let length = self.rng.random_range(ns(Duration::from_millis(10))..ns(crate::params::BULK_STALL_MAX));
                    self.net.bulk_stalled_until = self.net.bulk_stalled_until.max(self.now + length);
                    self.mix(&[9, length]);
                    let every = ns(self.p.bulk_stall_every.expect("stalls configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::BulkStall);
                }
            }
            Ev::HealStart => self.heal(),
            Ev::WitnessConnect { n } => {
                self.witness.connect_scheduled[n] = false;
                self.witness_connect(n)?;
            }
            Ev::ToWitness { n, link, message } => {
                if self.witness.link[n] != Some(link) || self.witness.core.is_none() {
                    return Ok(());
                }
                self.mix(&[50, n as u64, link]);
                let result = self.witness.core.as_mut().expect("checked").frame(WitnessConn(link), message);
                if let Err(why) = result {
                    return Err(format!("node {} broke the witness protocol: {why}", NAMES[n]));
                }
                self.drive_witness();
            }
            Ev::FromWitness { n, link, message } => {
                if self.witness.link[n] != Some(link) || self.nodes[n].core.is_none() {
                    return Ok(());
                }
                self.mix(&[51, n as u64, link]);
                self.feed(n, Input::WitnessFrame { link: WitnessLinkGen(link), message })?;
            }
            Ev::WitnessDown { n, link, reason } => {
                if self.nodes[n].core.is_some() {
                    self.feed(n, Input::WitnessDown { link: WitnessLinkGen(link), reason })?;
                }
                self.maybe_connect_witness(n);
            }
            Ev::WitnessPersisted { life, version, state } => {
                if self.witness.life != life || self.witness.core.is_none() {
                    return Ok(());
                }
                self.witness.persisting.retain(|(v, _)| *v != version);
                self.witness.durable = state;
                self.witness.core.as_mut().expect("checked").persisted(version);
                self.drive_witness();
            }
            Ev::WitnessCrash => {
                if self.faults_on() {
                    if self.witness.core.is_some() {
                        self.crash_witness();
                        let back = self.rng.random_range(20_000_000..1_000_000_000);
                        self.schedule(self.now + back, Ev::WitnessRestart);
                    }
                    let every = ns(self.p.witness.as_ref().and_then(|w| w.crash_every).expect("configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::WitnessCrash);
                }
            }
            Ev::WitnessRestart => {
                if self.witness.core.is_none() {
                    self.start_witness();
                }
            }
            Ev::WitnessCut => {
                if self.faults_on() {
                    let n = self.rng.random_range(0..2);
                    let lease = ns(self.p.witness.as_ref().expect("configured").lease);
                    let length = self.rng.random_range(lease / 4..4 * lease);
                    self.witness.cut_until[n] = self.witness.cut_until[n].max(self.now + length);
                    self.mix(&[52, n as u64, length]);
                    self.drop_witness_link(n, "cut from the witness");
                    let every = ns(self.p.witness.as_ref().and_then(|w| w.cut_every).expect("configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::WitnessCut);
                }
            }
            Ev::Operator => {
                if self.faults_on() {
                    self.operator()?;
                    let every = ns(self.p.operator_every.expect("configured"));
                    let next = self.now + self.rng.random_range(every / 2..every * 3 / 2);
                    self.schedule(next, Ev::Operator);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ the witness

    fn start_witness(&mut self) {
        self.witness.life += 1;
        self.witness.core = Some(WitnessCore::new([NAMES[0].into(), NAMES[1].into()], self.witness.durable.clone()));
        self.witness.persisting.clear();
        self.mix(&[53, self.witness.life]);
        for n in 0..2 {
            self.maybe_connect_witness(n);
        }
    }

    fn crash_witness(&mut self) {
        self.mix(&[54]);
        // A state write in flight lands or not (an atomic replace).
        for (_, state) in std::mem::take(&mut self.witness.persisting) {
            if self.rng.random_bool(0.5) {
                self.witness.durable = state;
            }
        }
        self.witness.core = None;
        for n in 0..2 {
            self.drop_witness_link(n, "the witness crashed");
        }
    }

    /// Ends node `n`'s witness connection (both ends see it go).
    fn drop_witness_link(&mut self, n: usize, reason: &str) {
        if let Some(link) = self.witness.link[n].take() {
            if let Some(core) = &mut self.witness.core {
                core.closed(WitnessConn(link));
            }
            let at = self.now + self.latency();
            self.schedule(at, Ev::WitnessDown { n, link, reason: reason.into() });
        }
    }

    fn maybe_connect_witness(&mut self, n: usize) {
        if self.p.witness.is_none() || self.witness.connect_scheduled[n] || self.witness.link[n].is_some() {
            return;
        }
        self.witness.connect_scheduled[n] = true;
        let at = self.now.max(self.witness.cut_until[n]) + self.rng.random_range(10_000_000..100_000_000);
        self.schedule(at, Ev::WitnessConnect { n });
    }

    fn witness_connect(&mut self, n: usize) -> Result<(), String> {
        if self.witness.link[n].is_some() || self.nodes[n].core.is_none() {
            return Ok(());
        }
        if self.witness.core.is_none() || self.now < self.witness.cut_until[n] {
            self.maybe_connect_witness(n);
            return Ok(());
        }
        self.witness.next_link += 1;
        let link = self.witness.next_link;
        let lease_ms = self.p.witness.as_ref().expect("configured").lease.as_millis() as u64;
        if let Some(refusal) = self.witness.core.as_mut().expect("checked").hello(WitnessConn(link), NAMES[n], lease_ms) {
            return Err(format!("the witness refused node {}: {refusal}", NAMES[n]));
        }
        self.witness.link[n] = Some(link);
        self.witness.last[n] = [self.now; 2];
        self.mix(&[55, n as u64, link]);
        self.feed(n, Input::WitnessUp { link: WitnessLinkGen(link) })
    }

    /// Carries out the witness's outputs.
    fn drive_witness(&mut self) {
        while let Some(out) = self.witness.core.as_mut().and_then(|c| c.poll_output()) {
            if self.trace {
                eprintln!("{:>12.6} ms    witness -> {}", self.now as f64 / 1e6, format!("{out:?}").chars().take(300).collect::<String>());
            }
            match out {
                WitnessOutput::Send { conn, message } => {
                    let Some(n) = (0..2).find(|&n| self.witness.link[n] == Some(conn.0)) else { continue };
                    let at = (self.now + self.latency()).max(self.witness.last[n][1]);
                    self.witness.last[n][1] = at;
                    self.schedule(at, Ev::FromWitness { n, link: conn.0, message });
                }
                WitnessOutput::Persist { state, version } => {
                    self.witness.persisting.push((version, state.clone()));
                    let at = self.now + self.rng.random_range(200_000..3_000_000);
                    let life = self.witness.life;
                    self.schedule(at, Ev::WitnessPersisted { life, version, state });
                }
                WitnessOutput::Log(_) => {}
            }
        }
    }

    /// An operator tries to take over the lost peer's extents at a node
    /// that acts alone (with a witness), or at a node whose peer is down
    /// (without one: the operator declares it down, and it stays down).
    fn operator(&mut self) -> Result<(), String> {
        let n = self.rng.random_range(0..2);
        let Some(core) = &self.nodes[n].core else { return Ok(()) };
        let peer_down = self.nodes[1 - n].core.is_none();
        let with_witness = self.p.witness.is_some();
        if !with_witness && !peer_down {
            return Ok(());
        }
        if core.exposure(VOLUME).is_none_or(|e| e.extents.is_empty()) {
            return Ok(());
        }
        // What the peer holds of those extents now: what a takeover may
        // discard there (saved to its conflict file when it returns).
        let per = self.p.blocks_per_extent;
        let taken: Vec<u64> = core.exposure(VOLUME).expect("checked").extents.iter().map(|(e, _)| e.0).collect();
        let now = self.local(n);
        let result = self.nodes[n].core.as_mut().expect("checked").take_over(now, VOLUME, peer_down);
        self.mix(&[56, n as u64, result.is_ok() as u64]);
        if result.is_err() {
            return self.drive(n);
        }
        if self.trace {
            eprintln!("{:>12.6} ms  operator: {} took over extents {taken:?}", self.now as f64 / 1e6, NAMES[n]);
        }
        if !with_witness {
            self.nodes[1 - n].declared_down = true;
        }
        self.nodes[n].over_limit_allowed = true;
        let t = self.now;
        for e in taken {
            // The lost node can hold writes of its own in the extent only if
            // it owned it (or was receiving it, or gave it and the give was
            // never applied) by its memory or its claims file: a write is
            // acknowledged only under a recorded claim. Elsewhere its blocks
            // are a replica of ours, and a takeover discards nothing of its.
            let peer_may_own = {
                let ext = Extent(e);
                let file = self.nodes[1 - n].disk.claims();
                let in_file = file.own.iter().chain(&file.gives).any(|c| c.extent == ext);
                let in_memory = self.nodes[1 - n].core.as_ref().is_some_and(|c| {
                    let claims = c.claims(VOLUME);
                    matches!(claims.extent(ext), Some(ExtentState::Owned(_)) | Some(ExtentState::Receiving { .. }))
                        || claims.gives().iter().any(|g| g.extent == ext)
                });
                in_file || in_memory
            };
            for b in e * per..(e + 1) * per {
                let mine = self.nodes[n].disk.volatile[b as usize];
                let peer = &self.nodes[1 - n].disk;
                let theirs = [peer.volatile[b as usize].value, peer.durable[b as usize].value];
                let differs = theirs.iter().any(|v| *v != mine.value);
                if peer_may_own && differs {
                    self.expected_conflicts.push((1 - n, b, theirs));
                }
                // From now on the block holds what this node has: a write
                // at this instant in the block's history. In `sync` with
                // `suspend`, only where the lost node held the value of a
                // write it never acknowledged (a host there may have read
                // it; its write failed, so the takeover may discard it):
                // every write it acknowledged is durable here, and the
                // history must show that. If this node's copy of it is not
                // durable yet, a crash may take it back.
                let discards_unacknowledged = differs && !theirs.iter().any(|v| *v != mine.value && self.history.acknowledged_write(b, *v));
                if !self.p.takeover_loses_nothing() || discards_unacknowledged {
                    let r = self.history.write(b..b + 1, mine.value, t);
                    self.history.complete(&r, t, None);
                }
                if self.nodes[n].disk.durable[b as usize].value != mine.value {
                    self.nodes[n].unflushed.insert(b, t);
                }
            }
        }
        self.drive(n)
    }

    /// Hands an input to node `n`'s core and carries out its outputs.
    fn feed(&mut self, n: usize, input: Input) -> Result<(), String> {
        let now = self.local(n);
        self.nodes[n].core.as_mut().expect("alive").handle(now, input);
        self.drive(n)
    }

    /// Carries out the outputs of node `n`'s core and schedules its next tick.
    fn drive(&mut self, n: usize) -> Result<(), String> {
        loop {
            let Some(output) = self.nodes[n].core.as_mut().and_then(|c| c.poll_output()) else { break };
            if self.trace {
                eprintln!(
                    "{:>12.6} ms    {} -> {}",
                    self.now as f64 / 1e6,
                    NAMES[n],
                    format!("{output:?}").chars().take(300).collect::<String>()
                );
            }
            match output {
                Output::Send { session, lane, message } => {
                    self.mix(&[10, n as u64, session.0, lane as u64, message.id().map_or(0, |i| i.0)]);
                    if self.net.side[n] != Some(session.0) {
                        continue;
                    }
                    let to = 1 - n;
                    let li = lane as usize;
                    let mut start = self.now.max(self.net.partition_until);
                    if lane == Lane::Bulk {
                        // The bulk lane serializes its messages at its
                        // bandwidth and stalls now and then on its own.
                        start = start.max(self.net.bulk_free[n]).max(self.net.bulk_stalled_until);
                        if let Some(bw) = self.p.bulk_bandwidth {
                            let bytes = message.encode().len() as u64 + 4;
                            start += bytes * 1_000_000_000 / bw;
                        }
                        self.net.bulk_free[n] = start;
                    }
                    let at = (start + self.latency()).max(self.net.last[n][li]);
                    self.net.last[n][li] = at;
                    self.schedule(at, Ev::Deliver { to, sid: session.0, lane, message });
                }
                Output::CloseSession { session, reason } => {
                    self.mix(&[11, n as u64, session.0]);
                    if self.net.side[n] == Some(session.0) {
                        // The core has ended the session already; the other
                        // side sees the connections reset.
                        self.net.side[n] = None;
                        let at = self.now + self.latency();
                        self.schedule(at, Ev::LinkDown { n: 1 - n, sid: session.0, reason: format!("the peer closed: {reason}") });
                        self.maybe_connect();
                    }
                }
                Output::Io { token, volume: _, op } => {
                    self.mix(&[12, n as u64, token.0]);
                    let snapshot = matches!(op, IoOp::Sync).then(|| self.nodes[n].disk.snapshot());
                    let at = self.now + self.io_latency(&op);
                    self.nodes[n].io.insert(token, op);
                    let life = self.nodes[n].life;
                    self.schedule(at, Ev::Io { n, life, token, snapshot });
                }
                Output::Reply { id, result } => {
                    self.mix(&[13, n as u64, id.0, result.is_ok() as u64]);
                    if result.is_ok() && !self.nodes[n].core.as_ref().expect("alive").may_serve() {
                        return Err(format!("node {} answered host request {} while it may not serve (fenced)", NAMES[n], id.0));
                    }
                    self.host_reply(n, id.0, result)?;
                }
                Output::Event(e) => {
                    self.mix(&[14, n as u64]);
                    match e {
                        geomirror_core::Event::ActingAlone { .. } => {
                            self.stats.acting_alone += 1;
                            self.nodes[n].over_limit_allowed = true;
                        }
                        geomirror_core::Event::TookOver { .. } => {
                            self.stats.takeovers += 1;
                            self.nodes[n].over_limit_allowed = true;
                        }
                        geomirror_core::Event::ConflictsSaved { blocks, .. } => self.stats.conflict_blocks += blocks,
                        geomirror_core::Event::Degraded { .. } => {
                            self.stats.degradations += 1;
                            self.nodes[n].degraded = true;
                        }
                        geomirror_core::Event::CaughtUp { .. } => self.nodes[n].degraded = false,
                        geomirror_core::Event::HealthChanged { health: geomirror_core::Health::Fenced, .. } => self.stats.fenced += 1,
                        geomirror_core::Event::ResyncDone { blocks_differing, .. } => {
                            self.stats.resyncs += 1;
                            self.stats.resync_blocks += blocks_differing;
                        }
                        _ => {}
                    }
                }
                Output::SendWitness { link, message } => {
                    self.mix(&[15, n as u64, link.0]);
                    if self.witness.link[n] != Some(link.0) {
                        continue;
                    }
                    let at = (self.now + self.latency()).max(self.witness.last[n][0]);
                    self.witness.last[n][0] = at;
                    self.schedule(at, Ev::ToWitness { n, link: link.0, message });
                }
                Output::CloseWitness { link, reason } => {
                    return Err(format!("node {} closed its witness link {}: {reason}", NAMES[n], link.0));
                }
            }
        }
        if let Some(core) = &self.nodes[n].core
            && let Some(t) = core.poll_timeout()
        {
            let at = self.true_time(n, t).max(self.now);
            if self.nodes[n].tick_at.is_none_or(|cur| at < cur || cur < self.now) {
                self.nodes[n].tick_at = Some(at);
                let life = self.nodes[n].life;
                self.schedule(at, Ev::Tick { n, life });
            }
        }
        Ok(())
    }

    fn complete_io(&mut self, n: usize, op: &IoOp, snapshot: Option<Vec<StoredBlock>>) -> Result<IoOutcome, IoFault> {
        let fault = |message: &str| IoFault { kind: IoFaultKind::Io, message: message.into() };
        let faults = self.faults_on();
        match op {
            IoOp::Read { ranges, .. } => {
                if faults && self.rng.random_bool(self.p.io_fault) {
                    self.stats.io_faults += 1;
                    return Err(fault("injected EIO on read"));
                }
                Ok(IoOutcome::Read(ranges.iter().map(|&(o, l)| self.nodes[n].disk.read(o, l)).collect()))
            }
            IoOp::Write { writes, sync } => {
                if faults && !writes.is_empty() && self.rng.random_bool(self.p.io_fault) {
                    self.stats.io_faults += 1;
                    // Part of the writes may have reached the page cache.
                    let done = self.rng.random_range(0..writes.len());
                    for w in &writes[..done] {
                        self.nodes[n].disk.write(w, None);
                    }
                    return Err(fault("injected EIO on write"));
                }
                for w in writes {
                    self.nodes[n].disk.write(w, None);
                }
                if *sync {
                    if faults && self.rng.random_bool(self.p.io_fault) {
                        self.stats.io_faults += 1;
                        return Err(fault("injected fdatasync failure after a write"));
                    }
                    // One fdatasync after the writes: everything written so far.
                    let written = self.nodes[n].disk.volatile.clone();
                    self.nodes[n].disk.sync(&written);
                }
                Ok(IoOutcome::Done)
            }
            IoOp::Sync => {
                if faults && self.rng.random_bool(self.p.io_fault) {
                    self.stats.io_faults += 1;
                    return Err(fault("injected fdatasync failure"));
                }
                self.nodes[n].disk.sync(&snapshot.expect("a sync has its snapshot"));
                Ok(IoOutcome::Done)
            }
            IoOp::Persist { write } => {
                if faults && self.rng.random_bool(self.p.persist_fault) {
                    self.stats.io_faults += 1;
                    return Err(fault("injected failure writing the claims file"));
                }
                self.nodes[n].disk.write_claims(write, None);
                Ok(IoOutcome::Done)
            }
            IoOp::Digest { ranges, block } => {
                if faults && self.rng.random_bool(self.p.io_fault) {
                    self.stats.io_faults += 1;
                    return Err(fault("injected EIO computing checksums"));
                }
                let disk = &self.nodes[n].disk;
                Ok(IoOutcome::Digest(ranges.iter().flat_map(|&(o, l)| (o / block..(o + l) / block).map(|b| disk.checksum(b))).collect()))
            }
            IoOp::SaveConflicts { records } => {
                if faults && self.rng.random_bool(self.p.persist_fault) {
                    self.stats.io_faults += 1;
                    return Err(fault("injected failure writing the conflict file"));
                }
                for r in records {
                    self.nodes[n].disk.conflicts.push((r.offset / BLOCK_BYTES, value_at(&r.data, 0)));
                }
                Ok(IoOutcome::Done)
            }
        }
    }

    // ------------------------------------------------------------ nodes

    fn start_node(&mut self, n: usize) {
        let file = self.nodes[n].disk.load_claims();
        let mut core = NodeCore::new(self.config(n), vec![file], self.local(n));
        // Every claims file write is checked against the whole state (the
        // journal must not miss a change): cheap at the simulator's sizes.
        core.check_file_writes(true);
        let node = &mut self.nodes[n];
        node.core = Some(core);
        node.life += 1;
        node.tick_at = None;
        node.epochs.clear();
        node.counter = 0;
        node.synced_once = false;
        node.degraded = false;
        node.clients_busy.iter_mut().for_each(|b| *b = false);
        let life = node.life;
        self.mix(&[20, n as u64, life]);
        if self.phase == Phase::Faults {
            for c in 0..self.p.clients {
                let at = self.now + self.rng.random_range(0..5_000_000);
                self.schedule(at, Ev::Client { n, c, life });
            }
        }
        let _ = self.drive(n);
        self.maybe_connect();
        self.maybe_connect_witness(n);
    }

    fn crash(&mut self, n: usize) {
        self.stats.crashes += 1;
        self.mix(&[21, n as u64]);
        let now = self.now;
        let node = &mut self.nodes[n];
        node.core = None;
        node.tick_at = None;
        for (_, op) in std::mem::take(&mut node.ops) {
            if let Some(r) = &op.recorded {
                self.history.fail(r, now);
            }
            // A write in flight may have reached the page cache (and been
            // read) and is lost with it.
            if let OpKind::Write { first, blocks, .. } = op.kind {
                for b in first..first + blocks {
                    self.nodes[n].unflushed.insert(b, now);
                }
            }
        }
        let node = &mut self.nodes[n];
        for (b, _) in std::mem::take(&mut node.unflushed) {
            self.history.havoc(b, now);
        }
        // A claims file write in flight may or may not have landed (a
        // replace is atomic; an append may be cut short); a store sync in
        // flight is lost (nothing it covered becomes durable).
        let inflight: Vec<IoOp> = std::mem::take(&mut self.nodes[n].io).into_values().collect();
        for op in inflight {
            match op {
                IoOp::Persist { write } => match self.rng.random_range(0..3) {
                    0 => {}
                    1 => self.nodes[n].disk.write_claims(&write, None),
                    _ => {
                        let torn = match &write {
                            ClaimsWrite::Delta(d) => Some(self.rng.random_range(0..claims_file::encode_delta(d).len())),
                            ClaimsWrite::Full(_) => None,
                        };
                        self.nodes[n].disk.write_claims(&write, torn);
                    }
                },
                IoOp::SaveConflicts { records } if self.rng.random_bool(0.5) => {
                    for r in records {
                        self.nodes[n].disk.conflicts.push((r.offset / BLOCK_BYTES, value_at(&r.data, 0)));
                    }
                }
                _ => {}
            }
        }
        if let Some(link) = self.witness.link[n].take()
            && let Some(core) = &mut self.witness.core
        {
            core.closed(WitnessConn(link));
        }
        self.nodes[n].disk.crash();
        self.nodes[n].life += 1;
        if let Some(sid) = self.net.side[n].take() {
            // The peer sees the connections reset, or hears nothing and
            // times out on its own.
            if self.rng.random_bool(0.5) {
                let at = self.now + self.latency();
                self.schedule(at, Ev::LinkDown { n: 1 - n, sid, reason: "connection reset by the crashed peer".into() });
            }
        }
    }

    fn reset_link(&mut self, reason: &str) {
        for n in 0..2 {
            if let Some(sid) = self.net.side[n] {
                let at = self.now + self.latency();
                self.schedule(at, Ev::LinkDown { n, sid, reason: reason.into() });
            }
        }
    }

    fn maybe_connect(&mut self) {
        if self.net.connect_scheduled || self.net.side.iter().any(Option::is_some) {
            return;
        }
        self.net.connect_scheduled = true;
        let at = self.now.max(self.net.partition_until) + self.rng.random_range(10_000_000..150_000_000);
        self.schedule(at, Ev::Connect);
    }

    fn connect(&mut self) {
        if self.net.side.iter().any(Option::is_some) {
            return;
        }
        if self.nodes.iter().any(|n| n.core.is_none()) {
            return; // a restart asks again
        }
        if self.now < self.net.partition_until {
            self.maybe_connect();
            return;
        }
        self.net.next_sid += 1;
        let sid = self.net.next_sid;
        self.stats.sessions += 1;
        self.net.side = [Some(sid), Some(sid)];
        self.net.last = [[self.now; 2]; 2];
        self.net.bulk_free = [self.now; 2];
        // The accepter learns of the session first (the dialer's hello
        // reaches it before the dialer's first request).
        self.schedule(self.now, Ev::LinkUp { n: 1, sid, role: Role::Accepter });
        let d = self.rng.random_range(1_000..50_000);
        self.schedule(self.now + d, Ev::LinkUp { n: 0, sid, role: Role::Dialer });
        let d = self.rng.random_range(1_000..100_000);
        self.schedule(self.now + d, Ev::BulkUp { n: 1, sid });
    }

    fn heal(&mut self) {
        self.phase = Phase::Heal;
        self.heal_started = self.now;
        self.net.partition_until = self.now;
        self.witness.cut_until = [self.now; 2];
        if self.p.witness.is_some() && self.witness.core.is_none() {
            self.start_witness();
        }
        self.mix(&[30]);
        for n in 0..2 {
            let stopped = self.nodes[n].core.as_ref().is_some_and(|c| c.is_stopped(VOLUME));
            if stopped {
                // An operator restarts a node whose volume stopped on a fault.
                self.crash(n);
            }
            if self.nodes[n].core.is_none() {
                self.start_node(n);
            }
        }
        self.maybe_connect();
    }

    fn converged(&self) -> bool {
        self.nodes.iter().all(|node| {
            let Some(core) = &node.core else { return false };
            let f = core.claims(VOLUME).figures();
            node.ops.is_empty()
                && node.io.is_empty()
                && core.is_ready()
                && core.host_requests() == 0
                && f.budget_used == 0
                && f.peer_owned_extents == 0
                && f.not_durable_blocks == 0
                && core.file_versions(VOLUME).0 == core.file_versions(VOLUME).1
                && !core.outage_open()
                && !core.claims(VOLUME).resync_pending()
        })
    }

    /// Reads every block at both sites: the linearizability check then
    /// also says that nothing acknowledged was lost.
    fn final_reads(&mut self) {
        self.phase = Phase::FinalReads;
        let per = self.p.blocks_per_extent;
        for n in 0..2 {
            for e in 0..self.p.extents {
                let _ = self.submit(n, None, OpKind::Read { first: e * per, blocks: per }, false);
            }
        }
    }

    fn final_checks(&mut self) -> Result<(), String> {
        invariants::convergence::check(self)?;
        invariants::conflicts::check(self)?;
        let summary = self.history.check()?;
        self.stats.too_large = summary.too_large;
        self.stats.blocks_checked = summary.blocks;
        Ok(())
    }

    fn check_every_step(&mut self) -> Result<(), String> {
        for (node, name) in self.nodes.iter_mut().zip(NAMES) {
            if node.core.as_ref().is_some_and(|c| c.is_ready()) {
                node.synced_once = true;
                node.declared_down = false;
            }
            if let Some(core) = &node.core {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.check()))
                    .map_err(|e| format!("node {name}: {}", panic_text(&e)))?;
            }
        }
        invariants::claim_before_ack::check(self)?;
        invariants::single_owner::check(self)?;
        invariants::bounded_exposure::check(self)?;
        invariants::epochs::check(self)?;
        Ok(())
    }

    /// A one-line picture of both nodes, for failures.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (n, node) in self.nodes.iter().enumerate() {
            match &node.core {
                None => out.push_str(&format!("[{} down] ", NAMES[n])),
                Some(core) => {
                    let f = core.claims(VOLUME).figures();
                    let states: Vec<String> = core.claims(VOLUME).extents().map(|(e, s)| format!("{}:{}", e.0, short(s))).collect();
                    out.push_str(&format!(
                        "[{} ready={} ops={} tasks={} budget={} record={} unsent={} not_durable={} files={:?} stopped={} extents={}] ",
                        NAMES[n],
                        core.is_ready(),
                        node.ops.len(),
                        core.host_requests(),
                        f.budget_used,
                        f.peer_owned_extents,
                        f.unsent_blocks,
                        f.not_durable_blocks,
                        core.file_versions(VOLUME),
                        core.is_stopped(VOLUME),
                        states.join(",")
                    ));
                }
            }
        }
        out
    }

    // ------------------------------------------------------------ hosts

    fn client_op(&mut self, n: usize, c: usize) -> Result<(), String> {
        let blocks = self.p.blocks();
        let per = self.p.blocks_per_extent;
        let r: f64 = self.rng.random();
        let (first, len) = if r < 0.3 && !self.p.hot_blocks.is_empty() {
            let i = self.rng.random_range(0..self.p.hot_blocks.len());
            (self.p.hot_blocks[i], 1)
        } else if r < 0.6 {
            let len = self.rng.random_range(1..=3).min(blocks);
            let at = self.nodes[n].cursors[c] % blocks;
            self.nodes[n].cursors[c] = (at + len) % blocks;
            (at.min(blocks - len), len)
        } else {
            let len = if self.rng.random_bool(0.1) { self.rng.random_range(1..=2 * per) } else { self.rng.random_range(1..=3) }.min(blocks);
            (self.rng.random_range(0..=blocks - len), len)
        };
        let k: f64 = self.rng.random();
        let kind = if k < 0.45 {
            OpKind::Read { first, blocks: len }
        } else if k < 0.90 {
            let value = self.next_value;
            self.next_value += 1;
            OpKind::Write { first, blocks: len, value, fua: self.rng.random_bool(self.p.fua) }
        } else if k < 0.95 {
            OpKind::Write { first, blocks: len, value: 0, fua: self.rng.random_bool(self.p.fua) }
        } else {
            OpKind::Flush
        };
        let fast = self.rng.random_bool(self.p.fast_path);
        self.nodes[n].clients_busy[c] = true;
        self.submit(n, Some(c), kind, fast)
    }

    /// Issues a host operation at node `n`.
    fn submit(&mut self, n: usize, client: Option<usize>, kind: OpKind, fast: bool) -> Result<(), String> {
        let id = self.next_host;
        self.next_host += 1;
        let now = self.now;
        let recorded = match &kind {
            OpKind::Read { first, blocks } => Some(self.history.read(*first..first + blocks, now)),
            OpKind::Write { first, blocks, value, .. } => Some(self.history.write(*first..first + blocks, *value, now)),
            OpKind::Flush => None,
        };
        self.mix(&[40, n as u64, id]);
        if self.trace {
            eprintln!("{:>12.6} ms  submit {} host {id}: {kind:?} fast={fast}", self.now as f64 / 1e6, NAMES[n]);
        }
        self.nodes[n].ops.insert(id, HostOp { client, kind: kind.clone(), invoke: now, recorded });
        let life = self.nodes[n].life;
        let t = self.local(n);
        let core = self.nodes[n].core.as_mut().expect("alive");
        let request = match kind {
            OpKind::Read { first, blocks } => {
                let (offset, length) = (first * BLOCK_BYTES, blocks * BLOCK_BYTES);
                if fast && core.read_is_local(VOLUME, offset, length) {
                    let at = now + self.rng.random_range(5_000..200_000);
                    self.schedule(at, Ev::FastRead { n, life, id, offset, length });
                    return Ok(());
                }
                HostRequest::Read { offset, length: length as u32 }
            }
            OpKind::Write { first, blocks, value, fua } => {
                let (offset, length) = (first * BLOCK_BYTES, blocks * BLOCK_BYTES);
                if value == 0 {
                    HostRequest::Trim { offset, length, fua }
                } else {
                    let data = buffer_of(value, blocks);
                    if fast
                        && !fua
                        && let Some(ticket) = core.try_write(t, VOLUME, offset, length)
                    {
                        let at = now + self.rng.random_range(5_000..200_000);
                        self.schedule(at, Ev::FastWrite { n, life, id, ticket, data });
                        return Ok(());
                    }
                    HostRequest::Write { offset, data, fua }
                }
            }
            OpKind::Flush => HostRequest::Flush,
        };
        self.feed(n, Input::Host { id: HostRequestId(id), volume: VOLUME, request })
    }

    /// A host operation at node `n` was answered.
    fn host_reply(&mut self, n: usize, id: u64, result: Result<Option<Bytes>, HostError>) -> Result<(), String> {
        let op = self.nodes[n].ops.remove(&id).expect("reply to an operation in flight");
        let now = self.now;
        match (&op.kind, result) {
            (OpKind::Read { blocks, .. }, Ok(Some(data))) => {
                let values: Vec<u64> = (0..*blocks).map(|i| value_at(&data, i)).collect();
                self.history.complete(op.recorded.as_ref().expect("reads are recorded"), now, Some(&values));
                self.stats.reads += 1;
            }
            (OpKind::Write { first, blocks, fua, .. }, Ok(None)) => {
                // A sync mode acknowledges only what is durable here and
                // reported by the peer.
                // (Degraded, a node acknowledges as async only while its
                // session is down: catching up, writes wait for the peer.)
                let ready = self.nodes[n].core.as_ref().is_some_and(|c| c.is_ready());
                let sync_ack = self.p.mode != ReplicationMode::Async && (!self.nodes[n].degraded || ready);
                invariants::claim_before_ack::check_ack(self, n, *first, *blocks, sync_ack)?;
                self.stats.acks_checked += 1;
                self.history.complete(op.recorded.as_ref().expect("writes are recorded"), now, None);
                let durable = *fua || sync_ack;
                if durable && !*fua {
                    self.stats.sync_acks += 1;
                }
                for b in *first..first + blocks {
                    if durable {
                        // Durable now: itself, and what was acknowledged
                        // before it was issued (a write acknowledged since
                        // may have landed after it and is not covered).
                        if self.nodes[n].unflushed.get(&b).is_some_and(|acked| *acked < op.invoke) {
                            self.nodes[n].unflushed.remove(&b);
                        }
                    } else {
                        self.nodes[n].unflushed.insert(b, now);
                    }
                }
                self.stats.writes += 1;
            }
            (OpKind::Flush, Ok(None)) => {
                let invoked = op.invoke;
                self.nodes[n].unflushed.retain(|_, acked| *acked > invoked);
            }
            (kind, Ok(data)) => return Err(format!("node {}: {kind:?} answered with {:?} bytes", NAMES[n], data.map(|d| d.len()))),
            (_, Err(error)) => {
                self.stats.failed += 1;
                if let Some(r) = &op.recorded {
                    self.history.fail(r, now);
                }
                // A failed write may have reached the page cache in part,
                // without being durable: a crash may take it back.
                if let OpKind::Write { first, blocks, .. } = op.kind {
                    for b in first..first + blocks {
                        self.nodes[n].unflushed.insert(b, now);
                    }
                }
                // Before the heal phase, failures are expected (faults,
                // timeouts); after it nothing may fail.
                if self.phase != Phase::Faults && op.invoke >= self.heal_started {
                    return Err(format!("node {}: {:?} failed after healing: {error}", NAMES[n], op.kind));
                }
                // Requests within one extent cannot starve (a write that
                // waited gets its turn before the extent is handed out
                // again); a request spanning extents acquires them one at a
                // time and may lose one while getting the next (no
                // hold-and-wait, so no deadlock), so under contention it can
                // time out.
                let per = self.p.blocks_per_extent;
                let one_extent = match op.kind {
                    OpKind::Read { first, blocks } | OpKind::Write { first, blocks, .. } => first / per == (first + blocks - 1) / per,
                    OpKind::Flush => true,
                };
                // And under the limit's pressure both sites thrash on the
                // same extents (claim, release to make room, claim again)
                // and the tie-breaker can starve one site's writer.
                if self.p.liveness && one_extent {
                    return Err(format!("node {}: {:?} failed in a run without faults (a liveness bug): {error}", NAMES[n], op.kind));
                }
            }
        }
        if let Some(c) = op.client {
            self.nodes[n].clients_busy[c] = false;
            if self.phase == Phase::Faults {
                let think = self.rng.random_range(0..3_000_000);
                let life = self.nodes[n].life;
                self.schedule(now + think, Ev::Client { n, c, life });
            }
        }
        Ok(())
    }

    /// The core's view of an extent at node `n` (None: the node is down).
    pub fn extent_state(&self, n: usize, e: u64) -> Option<Option<ExtentState>> {
        self.nodes[n].core.as_ref().map(|c| c.claims(VOLUME).extent(Extent(e)).cloned())
    }
}

fn short(s: &ExtentState) -> String {
    match s {
        ExtentState::Owned(o) => format!("O{}{}", o.epoch.0, if o.handing_out { "h" } else { "" }),
        ExtentState::Claiming => "C".into(),
        ExtentState::ClaimUnknown => "U".into(),
        ExtentState::PeerOwned { epoch } => format!("P{}", epoch.0),
        ExtentState::Acquiring { epoch, .. } => format!("A{}", epoch.0),
        ExtentState::Receiving { epoch, .. } => format!("R{}", epoch.0),
    }
}

/// The text of a caught panic.
pub fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into())
}
