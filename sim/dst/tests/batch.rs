//! The batch the test command runs: at least 2,000 seeds of the
//! deterministic simulation on every core, each with crashes, link faults,
//! disk faults, witness faults and takeovers as its seed draws them. A
//! failing seed prints its replay command. `GEOMIRROR_DST_SEEDS` and
//! `GEOMIRROR_DST_START` change the batch.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use geomirror_dst::world::Stats;

/// Sums of the figures the batch must show (each fault kind happened).
#[derive(Default)]
struct Totals {
    events: u64,
    crashes: u64,
    io_faults: u64,
    blocks: u64,
    too_large: u64,
    acting_alone: u64,
    takeovers: u64,
    conflict_blocks: u64,
    fenced: u64,
    resyncs: u64,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        self.events += s.events;
        self.crashes += s.crashes;
        self.io_faults += s.io_faults;
        self.blocks += s.blocks_checked;
        self.too_large += s.too_large;
        self.acting_alone += s.acting_alone;
        self.takeovers += s.takeovers;
        self.conflict_blocks += s.conflict_blocks;
        self.fenced += s.fenced;
        self.resyncs += s.resyncs;
    }
}

#[test]
fn a_batch_of_seeds_keeps_every_invariant() {
    let count: u64 = std::env::var("GEOMIRROR_DST_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let start: u64 = std::env::var("GEOMIRROR_DST_START").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(Totals::default());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + count {
                        return;
                    }
                    let r = geomirror_dst::run(seed);
                    totals.lock().unwrap().add(&r.stats);
                    if let Some(f) = r.failure {
                        failures.lock().unwrap().push(format!("seed {seed}: {f}\n  replay: {}", geomirror_dst::replay_command(seed)));
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let t = totals.into_inner().unwrap();
    eprintln!(
        "{count} seeds in {secs:.1} s ({:.0} seeds/s on {threads} threads): {} events, {} crashes, {} injected I/O faults, \
         {} block histories checked ({} too large to search)",
        count as f64 / secs,
        t.events,
        t.crashes,
        t.io_faults,
        t.blocks,
        t.too_large
    );
    eprintln!(
        "outages: {} times a node acted alone, {} takeovers, {} blocks saved to conflict files, {} fencings, {} resyncs",
        t.acting_alone, t.takeovers, t.conflict_blocks, t.fenced, t.resyncs
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} seed(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(t.crashes > count / 4, "the batch must crash nodes");
    assert!(t.io_faults > 0, "the batch must inject disk faults");
    assert!(
        t.acting_alone > 0 && t.takeovers > 0 && t.conflict_blocks > 0 && t.fenced > 0 && t.resyncs > 0,
        "the batch must lose sites: survivors, takeovers, conflicts, fencing, resyncs"
    );
    // A block history too large for the search goes unchecked: that must stay rare.
    assert!(t.too_large * 1000 <= t.blocks, "{} of {} block histories were too large to check", t.too_large, t.blocks);
}
