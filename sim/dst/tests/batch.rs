//! The batch the test command runs: at least 2,000 seeds of the
//! deterministic simulation on every core, each with crashes, link faults
//! and disk faults as its seed draws them. A failing seed prints its replay
//! command. `GEOMIRROR_DST_SEEDS` and `GEOMIRROR_DST_START` change the batch.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[test]
fn a_batch_of_seeds_keeps_every_invariant() {
    let count: u64 = std::env::var("GEOMIRROR_DST_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let start: u64 = std::env::var("GEOMIRROR_DST_START").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    let (crashes, faults, events, too_large, blocks) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
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
                    crashes.fetch_add(r.stats.crashes, Ordering::Relaxed);
                    faults.fetch_add(r.stats.io_faults, Ordering::Relaxed);
                    events.fetch_add(r.stats.events, Ordering::Relaxed);
                    too_large.fetch_add(r.stats.too_large, Ordering::Relaxed);
                    blocks.fetch_add(r.stats.blocks_checked, Ordering::Relaxed);
                    if let Some(f) = r.failure {
                        failures.lock().unwrap().push(format!("seed {seed}: {f}\n  replay: {}", geomirror_dst::replay_command(seed)));
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    // A block history too large for the search goes unchecked: that must stay rare.
    let (too_large, blocks) = (too_large.load(Ordering::Relaxed), blocks.load(Ordering::Relaxed));
    eprintln!(
        "{count} seeds in {secs:.1} s ({:.0} seeds/s on {threads} threads): {} events, {} crashes, {} injected I/O faults, {blocks} block histories checked ({too_large} too large to search)",
        count as f64 / secs,
        events.load(Ordering::Relaxed),
        crashes.load(Ordering::Relaxed),
        faults.load(Ordering::Relaxed)
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} seed(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(crashes.load(Ordering::Relaxed) > count / 4, "the batch must crash nodes");
    assert!(faults.load(Ordering::Relaxed) > 0, "the batch must inject disk faults");
    assert!(too_large * 1000 <= blocks, "{too_large} of {blocks} block histories were too large to check");
}
