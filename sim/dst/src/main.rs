//! `geomirror-dst`: runs the deterministic simulation.
//!
//! `--seed N` replays one run and prints its trace hash; `--seeds K`
//! (from `--start S`) and `--minutes M` run many, on `--threads T`
//! threads. A batch that fails prints its lowest failing seed's violation
//! and replay command (every seed below it has run, whatever the thread
//! count, so the same batch always names the same seed), and the exit
//! status is 1.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use geomirror_dst::params::Scenario;

#[derive(Parser, Debug)]
#[command(name = "geomirror-dst", about = "Deterministic simulation of two geomirror nodes")]
struct Args {
    /// Replay this one seed (prints its trace hash and figures).
    #[arg(long, conflicts_with_all = ["seeds", "minutes"])]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// Run seeds for this many minutes.
    #[arg(long)]
    minutes: Option<f64>,
    /// First seed of a batch.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Which parameters the seeds draw (`random`: all of them).
    #[arg(long, value_enum, default_value_t = Scenario::Random)]
    scenario: Scenario,
}

fn main() {
    let args = Args::parse();
    if cfg!(panic = "abort") {
        eprintln!(
            "geomirror-dst was built with panic = \"abort\" (the release profile): a core's panic would kill the run instead of \
             failing its seed. Build it with `--profile dst` (release speed, unwinding) or the dev profile."
        );
        std::process::exit(2);
    }
    if let Some(seed) = args.seed {
        let r = geomirror_dst::run_scenario(seed, args.scenario);
        println!(
            "seed {seed}: trace hash {:016x}; {} events, {:.3} s simulated; {} writes, {} reads, {} failed, {} crashes, {} sessions, {} io faults, {} block histories too large to check; mode {}, {} writes acknowledged durable at both sites, {} degradations",
            r.hash,
            r.stats.events,
            r.simulated.as_secs_f64(),
            r.stats.writes,
            r.stats.reads,
            r.stats.failed,
            r.stats.crashes,
            r.stats.sessions,
            r.stats.io_faults,
            r.stats.too_large,
            geomirror_dst::params::Params::of_scenario(seed, args.scenario).mode.as_str(),
            r.stats.sync_acks,
            r.stats.degradations
        );
        if let Some(f) = r.failure {
            println!("FAILED: {f}");
            std::process::exit(1);
        }
        return;
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let limit = args.seeds.unwrap_or(if args.minutes.is_some() { u64::MAX } else { 1000 });
    let deadline = args.minutes.map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let next = Arc::new(AtomicU64::new(args.start));
    let done = Arc::new(AtomicU64::new(0));
    // The lowest failing seed so far and its violation. Seeds are handed
    // out in order and a worker stops only at a seed at or above it, so
    // every seed below the one reported has run.
    let failure: Arc<Mutex<Option<(u64, String)>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, done, failure, scenario) = (next.clone(), done.clone(), failure.clone(), args.scenario);
            std::thread::spawn(move || {
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    let above_a_failure = failure.lock().expect("failure lock").as_ref().is_some_and(|(s, _)| seed >= *s);
                    if seed >= args.start.saturating_add(limit) || above_a_failure {
                        return;
                    }
                    let r = geomirror_dst::run_scenario(seed, scenario);
                    if let Some(f) = r.failure {
                        let mut first = failure.lock().expect("failure lock");
                        if first.as_ref().is_none_or(|(s, _)| seed < *s) {
                            *first = Some((seed, f));
                        }
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let failure = failure.lock().expect("failure lock").take();
    if let Some((seed, f)) = &failure {
        println!("seed {seed} FAILED: {f}\nreplay: {}", geomirror_dst::replay_scenario_command(*seed, args.scenario));
    }
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!("{n} seeds passed in {secs:.1} s ({:.1} seeds/s on {threads} threads)", n as f64 / secs);
    if failure.is_some() {
        std::process::exit(1);
    }
}
