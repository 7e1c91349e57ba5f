//! Two state machines, two lanes per direction, messages delivered in a
//! seeded random order (FIFO within a lane, any order across lanes), host
//! reads and writes at both nodes at once, copies, releases and the limit.
//! Now and then the link fails: every message in flight is lost, requests
//! in flight fail, and the session-start sync (two rounds) reconciles the
//! two views — including a handover whose reply was lost.
//! After every step: single owner with the claim recorded at the peer,
//! bounded exposure, release only after the data reached the peer, and every
//! read returns a value no newer write had superseded. At the end the two
//! stores converge on values no acknowledged write superseded (nothing
//! acknowledged is lost). A failing seed is printed and reproduces exactly.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EXTENTS: u64 = 6;
const BLOCKS: u64 = EXTENTS * (EXTENT / BLOCK);

/// A run in a copy message: its extent, epoch, and (block, value) pairs.
type CopiedRun = (Extent, Epoch, Vec<(BlockIndex, u64)>);

#[derive(Clone, Debug)]
enum Msg {
    Claim { id: u64, extents: Vec<Extent>, counter: Epoch },
    ClaimReply { id: u64, outcomes: Vec<ClaimOutcome>, counter: Epoch },
    Handover { id: u64, extent: Extent, counter: Epoch },
    HandoverReply { id: u64, granted: Option<Epoch>, counter: Epoch, blocks: Vec<(BlockIndex, u64)> },
    Pull { id: u64, block: u64 },
    PullReply { id: u64, value: Option<u64> },
    Release(Vec<ExtentClaim>),
    HandoverAck { extent: Extent, epoch: Epoch },
    Copy { seq: u64, runs: Vec<CopiedRun> },
    Progress { durable: u64 },
}

#[derive(Debug)]
enum Stage {
    Begin,
    Claiming { id: u64, extents: Vec<Extent> },
    Handover { id: u64, extent: Extent },
    Admitted,
    Pulling { id: u64 },
}

#[derive(Debug)]
struct HostOp {
    write: Option<u64>,
    block: u64,
    start: u64,
    stage: Stage,
}

struct Node {
    s: ReplicaState,
    store: Vec<u64>,
    op: Option<HostOp>,
    waiting_handovers: Vec<(u64, Extent)>,
    received: u64,
    reported: u64,
}

struct WriteRecord {
    block: u64,
    value: u64,
    start: u64,
    ack: Option<u64>,
}

struct Sim {
    rng: StdRng,
    nodes: [Node; 2],
    /// lanes[from][0] priority, lanes[from][1] bulk: messages from node `from`.
    lanes: [[VecDeque<Msg>; 2]; 2],
    now: Instant,
    step: u64,
    next_id: u64,
    next_value: u64,
    writes: Vec<WriteRecord>,
    max_owned: usize,
    link_failures: bool,
    adopted_after_loss: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let max_owned = rng.random_range(1..=4);
        let predict = rng.random_range(0..=2);
        let node = |wins| Node {
            s: ReplicaState::new(
                geometry(EXTENTS),
                Knobs { max_owned, predict, release_after: Duration::from_millis(50), wins_ties: wins },
            ),
            store: vec![0; BLOCKS as usize],
            op: None,
            waiting_handovers: Vec::new(),
            received: 0,
            reported: 0,
        };
        Sim {
            rng,
            nodes: [node(true), node(false)],
            lanes: Default::default(),
            now: Instant::now(),
            step: 0,
            next_id: 1,
            next_value: 1,
            writes: Vec::new(),
            max_owned,
            link_failures: seed % 2 == 1,
            adopted_after_loss: 0,
        }
    }

    fn send(&mut self, from: usize, bulk: bool, m: Msg) {
        self.lanes[from][bulk as usize].push_back(m);
    }

    fn flush_releases(&mut self, n: usize) {
        let released = self.nodes[n].s.take_releases();
        if released.is_empty() {
            return;
        }
        // Release after data: every block of a released extent is at the peer.
        for c in &released {
            for b in geometry(EXTENTS).blocks_in(c.extent) {
                assert_eq!(
                    self.nodes[n].store[b as usize],
                    self.nodes[1 - n].store[b as usize],
                    "node {n} released {:?} before block {b} reached the peer",
                    c.extent
                );
            }
        }
        // Releases ride the bulk lane (piggybacked on the copy stream), so a
        // later claim on the priority lane can overtake them.
        self.send(n, true, Msg::Release(released));
    }

    fn start_op(&mut self, n: usize) {
        let block = self.rng.random_range(0..BLOCKS);
        let write = if self.rng.random_bool(0.6) {
            let v = self.next_value;
            self.next_value += 1;
            self.writes.push(WriteRecord { block, value: v, start: self.step, ack: None });
            Some(v)
        } else {
            None
        };
        self.nodes[n].op = Some(HostOp { write, block, start: self.step, stage: Stage::Begin });
    }

    fn advance_op(&mut self, n: usize) {
        let Some(mut op) = self.nodes[n].op.take() else { return };
        let e = op.block * BLOCK / EXTENT;
        match (&op.stage, op.write) {
            (Stage::Begin, Some(_)) => {
                let now = self.now;
                let access = self.nodes[n].s.begin_write(e..=e, now);
                self.flush_releases(n);
                match access {
                    WriteAccess::Admitted => op.stage = Stage::Admitted,
                    WriteAccess::Claim(extents) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        let counter = self.nodes[n].s.counter();
                        self.send(n, false, Msg::Claim { id, extents: extents.clone(), counter });
                        op.stage = Stage::Claiming { id, extents };
                    }
                    WriteAccess::Handover(extent) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        let counter = self.nodes[n].s.counter();
                        self.send(n, false, Msg::Handover { id, extent, counter });
                        op.stage = Stage::Handover { id, extent };
                    }
                    WriteAccess::Wait => {}
                }
            }
            (Stage::Admitted, Some(value)) => {
                self.nodes[n].store[op.block as usize] = value;
                let now = self.now;
                self.nodes[n].s.end_write(op.block * BLOCK, BLOCK, now);
                let step = self.step;
                let rec = self.writes.iter_mut().find(|w| w.value == value).unwrap();
                rec.ack = Some(step);
                return; // done
            }
            (Stage::Begin, None) => match self.nodes[n].s.read_source(Extent(e)) {
                ReadSource::Local => {
                    let v = self.nodes[n].store[op.block as usize];
                    self.check_read(n, op.block, op.start, v);
                    return;
                }
                ReadSource::Peer => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.send(n, false, Msg::Pull { id, block: op.block });
                    op.stage = Stage::Pulling { id };
                }
            },
            _ => {} // waiting for a reply
        }
        self.nodes[n].op = Some(op);
    }

    /// A read returning `v` is wrong if some write superseded v's write
    /// before the read began (or v was never written to that block).
    fn check_read(&self, n: usize, block: u64, start: u64, v: u64) {
        let candidates: Vec<&WriteRecord> = self.writes.iter().filter(|w| w.block == block).collect();
        let superseded = |value: u64, ack: Option<u64>, written_at: u64| {
            candidates.iter().any(|w| {
                w.value != value
                    && w.ack.is_some_and(|a| a < start)
                    && match ack {
                        Some(a) => w.start > a,
                        None => false,
                    }
                    && w.start >= written_at
            })
        };
        if v == 0 {
            let newer = candidates.iter().any(|w| w.ack.is_some_and(|a| a < start));
            assert!(!newer, "node {n} read the initial zero of block {block} after a write to it was acknowledged");
            return;
        }
        let w =
            candidates.iter().find(|w| w.value == v).unwrap_or_else(|| panic!("node {n} read value {v} never written to block {block}"));
        assert!(w.start <= self.step, "read a value from the future");
        assert!(!superseded(v, w.ack, w.start), "node {n} read stale value {v} of block {block} (read began at step {start})");
    }

    fn deliver(&mut self, from: usize, bulk: bool) {
        let Some(m) = self.lanes[from][bulk as usize].pop_front() else { return };
        let to = 1 - from;
        let now = self.now;
        match m {
            Msg::Claim { id, extents, counter } => {
                let outcomes = self.nodes[to].s.on_claim_request(&extents, counter);
                let counter = self.nodes[to].s.counter();
                self.send(to, false, Msg::ClaimReply { id, outcomes, counter });
            }
            Msg::ClaimReply { id, outcomes, counter } => {
                let node = &mut self.nodes[to];
                if let Some(HostOp { stage: Stage::Claiming { id: want, extents }, .. }) = &node.op {
                    assert_eq!(*want, id);
                    let extents = extents.clone();
                    node.s.on_claim_reply(&extents, &outcomes, counter, now);
                    node.op.as_mut().unwrap().stage = Stage::Begin;
                }
            }
            Msg::Handover { id, extent, counter } => self.serve_handover(to, id, extent, counter),
            Msg::HandoverReply { id, granted, counter, blocks } => {
                let node = &mut self.nodes[to];
                if let Some(HostOp { stage: Stage::Handover { id: want, extent }, .. }) = &node.op {
                    assert_eq!(*want, id);
                    let extent = *extent;
                    if granted.is_some() {
                        for (b, v) in blocks {
                            node.store[b.0 as usize] = v;
                        }
                    }
                    node.s.on_handover_reply(extent, granted, counter, now);
                    node.op.as_mut().unwrap().stage = Stage::Begin;
                    if let Some(epoch) = granted {
                        self.send(to, false, Msg::HandoverAck { extent, epoch });
                    }
                }
            }
            Msg::Pull { id, block } => {
                let e = Extent(block * BLOCK / EXTENT);
                let value = self.nodes[to].s.can_serve_pull(e).then(|| self.nodes[to].store[block as usize]);
                self.send(to, false, Msg::PullReply { id, value });
            }
            Msg::PullReply { id, value } => {
                let Some(op) = self.nodes[to].op.take() else { return };
                match (&op.stage, value) {
                    (Stage::Pulling { id: want }, Some(v)) if *want == id => self.check_read(to, op.block, op.start, v),
                    (Stage::Pulling { id: want }, None) if *want == id => self.nodes[to].op = Some(HostOp { stage: Stage::Begin, ..op }),
                    _ => self.nodes[to].op = Some(op),
                }
            }
            Msg::Release(released) => self.nodes[to].s.on_release(&released),
            Msg::HandoverAck { extent, epoch } => self.nodes[to].s.on_handover_ack(extent, epoch),
            Msg::Copy { seq, runs } => {
                let node = &mut self.nodes[to];
                for (extent, epoch, blocks) in runs {
                    if node.s.accept_copy(extent, epoch) {
                        for (b, v) in blocks {
                            node.store[b.0 as usize] = v;
                        }
                    }
                }
                node.received = seq;
            }
            Msg::Progress { durable } => self.nodes[to].s.on_copy_durable(durable),
        }
    }

    fn serve_handover(&mut self, n: usize, id: u64, extent: Extent, counter: Epoch) {
        let step = self.nodes[n].s.on_handover_request(extent, counter);
        let counter = self.nodes[n].s.counter();
        match step {
            HandoverStep::NotOwner => self.send(n, false, Msg::HandoverReply { id, granted: None, counter, blocks: vec![] }),
            HandoverStep::WaitForWrites => self.nodes[n].waiting_handovers.push((id, extent)),
            HandoverStep::Give { epoch, blocks } => {
                let blocks = blocks.into_iter().map(|b| (b, self.nodes[n].store[b.0 as usize])).collect();
                self.send(n, false, Msg::HandoverReply { id, granted: Some(epoch), counter, blocks });
            }
        }
    }

    fn copy(&mut self, n: usize) {
        let max = self.rng.random_range(1..=4);
        // One run per message, or a batch of runs sharing one sequence number.
        let runs = if self.rng.random_bool(0.5) {
            self.nodes[n].s.next_copy(max).into_iter().collect()
        } else {
            let max_runs = self.rng.random_range(1..=3);
            self.nodes[n].s.next_copy_batch(max * 2, max_runs)
        };
        let Some(seq) = runs.first().map(|r| r.seq) else { return };
        let runs = runs
            .iter()
            .map(|run| {
                let blocks = (0..run.count)
                    .map(|i| {
                        let b = BlockIndex(run.first.0 + i);
                        (b, self.nodes[n].store[b.0 as usize])
                    })
                    .collect();
                (run.extent, run.epoch, blocks)
            })
            .collect();
        self.send(n, true, Msg::Copy { seq, runs });
    }

    fn report_progress(&mut self, n: usize) {
        let received = self.nodes[n].received;
        if received > self.nodes[n].reported {
            self.nodes[n].reported = received;
            self.send(n, true, Msg::Progress { durable: received });
        }
    }

    fn check(&self) {
        for n in 0..2 {
            self.nodes[n].s.check_invariants();
            // Extents adopted at a session start are already exposed (the
            // peer records them); the limit stops new claims.
            let bound = self.max_owned + self.adopted_after_loss as usize;
            assert!(self.nodes[n].s.figures().owned_extents <= bound, "node {n} owns more than the limit");
        }
        for e in 0..EXTENTS {
            for n in 0..2 {
                if let Some(ExtentState::Owned(_)) = self.nodes[n].s.extent(Extent(e)) {
                    let peer = self.nodes[1 - n].s.extent(Extent(e));
                    assert!(
                        matches!(peer, Some(ExtentState::PeerOwned { .. }) | Some(ExtentState::Acquiring { .. })),
                        "node {n} owns extent {e} but the peer's record has {peer:?}"
                    );
                }
            }
        }
    }

    /// The link fails: all messages in flight are lost, requests in flight
    /// fail, copy streams restart, and the new session syncs (node 0 dials).
    fn link_failure(&mut self) {
        for lanes in &mut self.lanes {
            for lane in lanes {
                lane.clear();
            }
        }
        for n in 0..2 {
            let node = &mut self.nodes[n];
            if let Some(op) = &mut node.op {
                match std::mem::replace(&mut op.stage, Stage::Begin) {
                    Stage::Claiming { extents, .. } => node.s.on_claim_failed(&extents),
                    Stage::Handover { extent, .. } => node.s.on_handover_failed(extent),
                    Stage::Admitted => op.stage = Stage::Admitted,
                    _ => {}
                }
            }
            for (_, extent) in std::mem::take(&mut node.waiting_handovers) {
                node.s.abandon_handover(extent);
            }
            node.s.on_copy_session_reset();
            node.received = 0;
            node.reported = 0;
        }
        let before = self.nodes[0].s.figures().owned_extents + self.nodes[1].s.figures().owned_extents;
        for _round in 0..2 {
            let now = self.now;
            let (own, record) = self.nodes[0].s.snapshot();
            let (gives, counter) = (self.nodes[0].s.gives(), self.nodes[0].s.counter());
            self.nodes[1].s.on_sync(counter, &own, &record, &gives, now);
            let (own, record) = self.nodes[1].s.snapshot();
            let (gives, counter) = (self.nodes[1].s.gives(), self.nodes[1].s.counter());
            self.nodes[0].s.on_sync(counter, &own, &record, &gives, now);
        }
        let after = self.nodes[0].s.figures().owned_extents + self.nodes[1].s.figures().owned_extents;
        self.adopted_after_loss += after.saturating_sub(before) as u64;
    }

    fn random_step(&mut self) {
        self.step += 1;
        if self.link_failures && self.rng.random_bool(0.02) {
            self.link_failure();
            self.check();
            return;
        }
        let n = self.rng.random_range(0..2);
        match self.rng.random_range(0..10) {
            0 if self.nodes[n].op.is_none() => self.start_op(n),
            0..=2 => self.advance_op(n),
            3..=5 => {
                let bulk = self.rng.random_bool(0.5);
                self.deliver(n, bulk)
            }
            6 => self.copy(n),
            7 => self.report_progress(n),
            8 => {
                self.now += Duration::from_millis(self.rng.random_range(0..40));
                let now = self.now;
                self.nodes[n].s.release_idle(now);
                self.flush_releases(n);
            }
            _ => {
                for (id, extent) in std::mem::take(&mut self.nodes[n].waiting_handovers) {
                    let counter = self.nodes[1 - n].s.counter();
                    self.serve_handover(n, id, extent, counter);
                }
            }
        }
        self.check();
    }

    /// Stops new host I/O and lets everything settle: all data copied, all
    /// extents released, both stores equal.
    fn converge(&mut self) {
        for _ in 0..20_000 {
            self.step += 1;
            let mut busy = false;
            for n in 0..2 {
                if self.nodes[n].op.is_some() {
                    busy = true;
                    self.advance_op(n);
                }
                for (id, extent) in std::mem::take(&mut self.nodes[n].waiting_handovers) {
                    busy = true;
                    let counter = self.nodes[1 - n].s.counter();
                    self.serve_handover(n, id, extent, counter);
                }
                for bulk in [false, true] {
                    if !self.lanes[n][bulk as usize].is_empty() {
                        busy = true;
                        self.deliver(n, bulk);
                    }
                }
                self.copy(n);
                self.report_progress(n);
                self.now += Duration::from_millis(10);
                let now = self.now;
                self.nodes[n].s.release_idle(now);
                self.flush_releases(n);
                busy |= self.nodes[n].s.figures() != Figures::default();
            }
            self.check();
            if !busy {
                assert_eq!(self.nodes[0].store, self.nodes[1].store, "stores differ after convergence");
                // Nothing acknowledged is lost: every block holds a value no
                // acknowledged write superseded.
                for b in 0..BLOCKS {
                    let v = self.nodes[0].store[b as usize];
                    self.check_read(0, b, self.step + 1, v);
                }
                return;
            }
        }
        panic!("did not converge: {:?} / {:?}", self.nodes[0].s.figures(), self.nodes[1].s.figures());
    }
}

fn run(seed: u64, steps: u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.random_step();
    }
    sim.converge();
}

#[test]
fn invariants_hold_under_random_interleavings() {
    let seeds: u64 = std::env::var("GEOMIRROR_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| run(seed, 600));
        // (odd seeds also fail the link now and then)
        if let Err(e) = result {
            eprintln!("claims simulation failed with seed {seed}; replay with run({seed}, 600)");
            std::panic::resume_unwind(e);
        }
    }
}
