//! Everything a run varies, drawn from its seed: the volume's geometry and
//! knobs, timings, how often each fault happens, and the workload's shape.

use std::time::Duration;

use geomirror_config::{PeerLossPolicy, ReplicationMode};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bytes per block in the simulation (small: the core does not care, and
/// small blocks keep a run cheap).
pub const BLOCK_BYTES: u64 = 512;

/// The witness of a run.
#[derive(Clone, Debug)]
pub struct WitnessParams {
    /// Lease length.
    pub lease: Duration,
    /// The clock-drift bound the nodes count with.
    pub max_clock_drift: Duration,
    /// Mean time between crashes of the witness.
    pub crash_every: Option<Duration>,
    /// Mean time between cuts of one node from the witness.
    pub cut_every: Option<Duration>,
}

/// Which parameters a run draws from its seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Everything drawn (the batch's and the regression seeds' runs).
    #[default]
    Random,
    /// Aimed at one race: a `sync` write that sends its own buffer while
    /// something else (a resync after a takeover, the checksum comparison
    /// after a restart) queues the same blocks for the copy stream, whose
    /// read may see the store before the write lands. Store writes are
    /// slow (2–20 ms, reads stay fast), outages and takeovers frequent,
    /// the shared hot blocks cut to at most two.
    ResyncRace,
}

impl Scenario {
    /// The name `--scenario` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Random => "random",
            Scenario::ResyncRace => "resync-race",
        }
    }
}

/// The longest stall of the bulk lane alone.
pub const BULK_STALL_MAX: Duration = Duration::from_millis(300);

/// The parameters of one run.
#[derive(Clone, Debug)]
pub struct Params {
    /// Blocks per extent.
    pub blocks_per_extent: u64,
    /// Extents in the volume.
    pub extents: u64,
    /// The owned-extent limit.
    pub max_owned: usize,
    /// Prediction depth.
    pub predict: u32,
    /// Idle time before release.
    pub release_after: Duration,
    /// How long a request waits for the peer.
    pub peer_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Silence after which a session ends.
    pub heartbeat_timeout: Duration,
    /// The witness, if the run has one.
    pub witness: Option<WitnessParams>,
    /// Each node's clock rate (within the witness's drift bound).
    pub clock_rate: [f64; 2],
    /// Mean time between an operator's attempts to take over the lost
    /// peer's extents (None: never).
    pub operator_every: Option<Duration>,
    /// One-way network latency, base and jitter.
    pub latency: (Duration, Duration),
    /// Bandwidth of the bulk lane in bytes per second (None: unlimited):
    /// copies queue behind each other, so the bulk lane lags the priority
    /// lane by much more than the latency, as on a real WAN under backlog.
    pub bulk_bandwidth: Option<u64>,
    /// Mean time between stalls of the bulk lane alone (a connection
    /// retransmitting while the other flows).
    pub bulk_stall_every: Option<Duration>,
    /// Host clients per node.
    pub clients: usize,
    /// Length of the fault phase (virtual).
    pub fault_phase: Duration,
    /// Mean time between crashes of a node (None: no crashes).
    pub crash_every: Option<Duration>,
    /// Mean time between link faults (partitions and resets).
    pub link_fault_every: Option<Duration>,
    /// Probability that a store I/O fails.
    pub io_fault: f64,
    /// Probability that a claims file write fails.
    pub persist_fault: f64,
    /// Share of writes with FUA.
    pub fua: f64,
    /// Share of fast-path attempts for writes and reads.
    pub fast_path: f64,
    /// Blocks shared by both sites' hot writes.
    pub hot_blocks: Vec<u64>,
    /// Every request within one extent must succeed (a quiet run with room
    /// under the limit for every extent).
    pub liveness: bool,
    /// The volume's replication mode.
    pub mode: ReplicationMode,
    /// What a sync volume does while the peer is lost.
    pub on_peer_loss: PeerLossPolicy,
    /// Unsynced store writes take 2–20 ms instead of up to 0.2 ms (reads
    /// stay fast), so that reads queued after a write often finish first.
    pub slow_store_writes: bool,
}

impl Params {
    /// The parameters of `seed`.
    pub fn of(seed: u64) -> Params {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let blocks_per_extent = [4u64, 8, 16][rng.random_range(0..3)];
        let extents = rng.random_range(6..=16);
        let blocks = blocks_per_extent * extents;
        let hot_blocks = (0..rng.random_range(2..=6)).map(|_| rng.random_range(0..blocks)).collect();
        let faulty = rng.random_bool(0.7);
        let heartbeat = Duration::from_millis(rng.random_range(50..=150));
        let heartbeat_timeout = heartbeat * rng.random_range(3..=6);
        let witness = rng.random_bool(0.6).then(|| {
            let lease = heartbeat_timeout + Duration::from_millis(rng.random_range(100..=800));
            let max_clock_drift = lease.mul_f64(rng.random_range(0.1..0.25));
            WitnessParams {
                lease,
                max_clock_drift,
                crash_every: (faulty && rng.random_bool(0.4)).then(|| Duration::from_millis(rng.random_range(500..=3_000))),
                cut_every: (faulty && rng.random_bool(0.5)).then(|| Duration::from_millis(rng.random_range(300..=2_000))),
            }
        });
        // Two clocks may disagree about one lease (plus the drift bound) by
        // at most the drift bound.
        let clock_rate = match &witness {
            Some(w) => {
                let eps = w.max_clock_drift.as_secs_f64() / (2.0 * (w.lease + w.max_clock_drift).as_secs_f64());
                [1.0 + rng.random_range(-eps / 2.0..=eps / 2.0), 1.0 + rng.random_range(-eps / 2.0..=eps / 2.0)]
            }
            None => [1.0, 1.0],
        };
        let mut p = Params {
            blocks_per_extent,
            extents,
            max_owned: rng.random_range(1..=6),
            predict: rng.random_range(0..=3),
            release_after: Duration::from_millis(rng.random_range(20..=300)),
            peer_timeout: Duration::from_millis(rng.random_range(300..=1500)),
            heartbeat,
            heartbeat_timeout,
            operator_every: (faulty && rng.random_bool(0.6)).then(|| Duration::from_millis(rng.random_range(200..=1_500))),
            clock_rate,
            latency: (Duration::from_micros(rng.random_range(50..=20_000)), Duration::from_micros(rng.random_range(0..=2_000))),
            bulk_bandwidth: rng.random_bool(0.5).then(|| rng.random_range(200_000..=20_000_000)),
            bulk_stall_every: rng.random_bool(0.3).then(|| Duration::from_millis(rng.random_range(100..=1_000))),
            clients: rng.random_range(1..=4),
            fault_phase: Duration::from_millis(rng.random_range(1_500..=4_000) * if witness.is_some() { 2 } else { 1 }),
            witness,
            crash_every: (faulty && rng.random_bool(0.6)).then(|| Duration::from_millis(rng.random_range(400..=3_000))),
            link_fault_every: (faulty && rng.random_bool(0.7)).then(|| Duration::from_millis(rng.random_range(200..=2_000))),
            io_fault: if faulty && rng.random_bool(0.3) { rng.random_range(0.0005..0.01) } else { 0.0 },
            persist_fault: if faulty && rng.random_bool(0.15) { rng.random_range(0.001..0.02) } else { 0.0 },
            fua: rng.random_range(0.3..=1.0),
            fast_path: rng.random_range(0.0..=1.0),
            hot_blocks,
            liveness: false,
            mode: ReplicationMode::Async,
            on_peer_loss: PeerLossPolicy::Suspend,
            slow_store_writes: false,
        };
        if p.quiet() && rng.random_bool(0.5) {
            // Without faults and without pressure from the limit every
            // request must succeed, so a request that times out shows a
            // livelock or a lost wakeup. Contention may make a request wait
            // a few dozen round trips; the timeout leaves room for that.
            // A stall of the bulk lane (not a fault: a connection
            // retransmitting) holds copies, and a sync mode's acknowledgements
            // with them: two back to back fit in the timeout too (seed 33336:
            // a 311 ms timeout, stalls of up to 300 ms).
            let rtt = 2 * (p.latency.0 + p.latency.1);
            let stalls = if p.bulk_stall_every.is_some() { 2 * BULK_STALL_MAX } else { Duration::ZERO };
            p.peer_timeout = p.peer_timeout.max(rtt * 100 + stalls);
            p.max_owned = p.extents as usize;
            p.liveness = true;
        }
        // Drawn last: the parameters above stay what they were per seed.
        p.mode =
            [ReplicationMode::Async, ReplicationMode::Async, ReplicationMode::SyncMemory, ReplicationMode::Sync][rng.random_range(0..4)];
        p.on_peer_loss = if rng.random_bool(0.5) { PeerLossPolicy::Suspend } else { PeerLossPolicy::Degrade };
        p
    }

    /// The parameters of `seed` in `scenario`: [`Params::of`], then the
    /// scenario's own (no further draws from the seed's parameter stream,
    /// so a seed's common parameters are the same in every scenario).
    pub fn of_scenario(seed: u64, scenario: Scenario) -> Params {
        let mut p = Params::of(seed);
        match scenario {
            Scenario::Random => {}
            Scenario::ResyncRace => {
                p.mode = ReplicationMode::Sync;
                p.slow_store_writes = true;
                p.liveness = false;
                p.io_fault = 0.0;
                p.persist_fault = 0.0;
                // Takeovers (by the witness's survivor or an operator) and
                // restarts, so that resyncs and checksum comparisons run
                // while the hosts write.
                p.link_fault_every = Some(Duration::from_millis(1_000));
                p.crash_every = Some(Duration::from_millis(2_500));
                p.operator_every = Some(Duration::from_millis(1_500));
                p.fault_phase = p.fault_phase.max(Duration::from_secs(6));
                p.hot_blocks.truncate(2);
                p.fast_path = p.fast_path.min(0.3);
                p.max_owned = p.max_owned.max(3);
            }
        }
        p
    }

    /// Whether a takeover of the lost peer's extents loses no acknowledged
    /// write: `sync` with `suspend` (the peer acknowledged only what was
    /// durable here too).
    pub fn takeover_loses_nothing(&self) -> bool {
        self.mode == ReplicationMode::Sync && self.on_peer_loss == PeerLossPolicy::Suspend
    }

    /// Whether the run injects no fault at all: then every host request
    /// must succeed (a failure is a liveness bug: a livelock, a lost wakeup).
    pub fn quiet(&self) -> bool {
        self.crash_every.is_none()
            && self.link_fault_every.is_none()
            && self.io_fault == 0.0
            && self.persist_fault == 0.0
            && self.witness.as_ref().is_none_or(|w| w.crash_every.is_none() && w.cut_every.is_none())
    }

    /// Blocks in the volume.
    pub fn blocks(&self) -> u64 {
        self.blocks_per_extent * self.extents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_keeps_the_seeds_common_parameters_and_sets_its_own() {
        for seed in 0..50 {
            let random = Params::of(seed);
            assert_eq!(format!("{:?}", Params::of_scenario(seed, Scenario::Random)), format!("{random:?}"));
            assert!(!random.slow_store_writes, "the random draws never slow the store");
            let race = Params::of_scenario(seed, Scenario::ResyncRace);
            assert_eq!((race.blocks_per_extent, race.extents, race.latency), (random.blocks_per_extent, random.extents, random.latency));
            assert_eq!(race.mode, ReplicationMode::Sync);
            assert!(race.slow_store_writes && race.crash_every.is_some() && race.operator_every.is_some() && !race.liveness);
            assert!(race.hot_blocks.len() <= 2 && race.max_owned >= 3);
        }
    }
}
