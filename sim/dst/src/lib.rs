//! Deterministic simulation of two geomirror node cores.
//!
//! One thread runs both nodes' protocol engines (`geomirror-core`) against
//! a simulated network (two FIFO lanes per direction per session, latency
//! and jitter, partitions that hold messages, connection resets), simulated
//! disks with a volatile and a durable image (a crash keeps only what was
//! synced; a claims file write in flight lands or not; I/O errors; failing
//! fdatasync), host clients at both sites (reads, writes, FUA, flushes,
//! trims; hot shared blocks and sequential streams; the fast paths and the
//! general path), and crashes and restarts of either node. Everything comes
//! from one seed: the same seed gives the same run and the same trace hash.
//!
//! Each run has a fault phase, then a heal phase that must converge (both
//! nodes up and synced, nothing owned, identical blocks), then reads every
//! block at both sites. Invariants (DESIGN.md section 3, one file each in
//! [`invariants`]) are checked after every step or at the step they are
//! about; every block's history is checked for linearizability at the end
//! (a history too large for the search is counted in `Stats::too_large`,
//! which the batch test bounds).

pub mod disk;
pub mod history;
pub mod invariants;
pub mod linearizability;
pub mod params;
pub mod world;

use std::time::Duration;

pub use world::World;

/// What one run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The trace hash (equal for equal seeds).
    pub hash: u64,
    /// Counts.
    pub stats: world::Stats,
    /// Virtual time simulated.
    pub simulated: Duration,
    /// The first violation, if any.
    pub failure: Option<String>,
}

/// Runs one seed to its end (every parameter drawn from it).
pub fn run(seed: u64) -> Report {
    run_scenario(seed, params::Scenario::Random)
}

/// Runs one seed of `scenario` to its end.
pub fn run_scenario(seed: u64, scenario: params::Scenario) -> Report {
    let mut world = World::with_params(seed, params::Params::of_scenario(seed, scenario));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(panic) => Some(format!("a core panicked: {}", world::panic_text(&panic))),
    };
    Report { seed, hash: world.trace_hash(), stats: world.stats.clone(), simulated: Duration::from_nanos(world.now), failure }
}

/// The command that replays a seed.
pub fn replay_command(seed: u64) -> String {
    replay_scenario_command(seed, params::Scenario::Random)
}

/// The command that replays a seed of `scenario`.
pub fn replay_scenario_command(seed: u64, scenario: params::Scenario) -> String {
    match scenario {
        params::Scenario::Random => format!("cargo run --profile dst -p geomirror-dst -- --seed {seed}"),
        s => format!("cargo run --profile dst -p geomirror-dst -- --scenario {} --seed {seed}", s.name()),
    }
}
