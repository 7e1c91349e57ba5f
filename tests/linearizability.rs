//! Linearizability across the two sites: clients at both sites read and
//! write a few small blocks concurrently (ownership moving back and forth,
//! extents released and re-claimed under a tight limit), every operation's
//! start, end and result are recorded, and each block's history must be
//! linearizable. Many seeds run in a bounded time; a failing seed is named.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::linearizability::{Op, linearizable};
use common::nbd_client::NbdClient;
use common::two_site::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK: usize = 4096;
const BLOCKS_PER_SEED: u64 = 6;
const OPS_PER_CLIENT: usize = 24;
const CLIENTS_PER_SITE: usize = 2;

fn encode(value: u64) -> Vec<u8> {
    let mut block = vec![value as u8; BLOCK];
    block[..8].copy_from_slice(&value.to_le_bytes());
    block
}

fn decode(block: &[u8]) -> u64 {
    let value = u64::from_le_bytes(block[..8].try_into().unwrap());
    assert!(block[8..].iter().all(|&b| b == value as u8), "torn block for value {value}");
    value
}

/// Offset of block `i` of a seed: spread so that six blocks span three
/// 64 KiB extents.
fn offset(seed: u64, i: u64) -> u64 {
    seed * (1 << 20) + i * 24 * 1024
}

fn run_seed(sites: &TwoSites, seed: u64) -> Vec<Vec<Op>> {
    let addrs = [sites.a.nbd, sites.b.nbd];
    let barrier = Arc::new(Barrier::new(2 * CLIENTS_PER_SITE));
    let threads: Vec<_> = (0..2 * CLIENTS_PER_SITE)
        .map(|c| {
            let addr = addrs[c % 2];
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + c as u64);
                let mut client = NbdClient::connect(addr, "vol0", c % 4 < 2).unwrap();
                let mut ops = Vec::new();
                barrier.wait();
                for k in 0..OPS_PER_CLIENT {
                    let block = rng.random_range(0..BLOCKS_PER_SEED);
                    let off = offset(seed, block);
                    let write = rng.random_bool(0.5);
                    let value = (seed << 32) | ((c as u64) << 16) | (k as u64 + 1);
                    let invoke = Instant::now();
                    let result = if write {
                        client.write(off, &encode(value), 0).unwrap().map(|()| value)
                    } else {
                        client.read(off, BLOCK as u32).unwrap().map(|data| decode(&data))
                    };
                    let complete = Instant::now();
                    let value = result.unwrap_or_else(|e| panic!("seed {seed}: client {c} op failed with NBD error {e}"));
                    ops.push((block, Op { write, value, invoke, complete }));
                    if rng.random_bool(0.1) {
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
                    }
                }
                client.disconnect();
                ops
            })
        })
        .collect();
    let mut per_block: Vec<Vec<Op>> = vec![Vec::new(); BLOCKS_PER_SEED as usize];
    for t in threads {
        let Ok(ops) = t.join() else {
            let tail = |logs: Vec<String>| {
                logs.iter()
                    .rev()
                    .take(std::env::var("GEOMIRROR_TEST_LOG_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(40))
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!("seed {seed}: a client failed; site-a log:\n{}\nsite-b log:\n{}", tail(sites.a.logs()), tail(sites.b.logs()));
        };
        for (block, op) in ops {
            per_block[block as usize].push(op);
        }
    }
    per_block
}

#[test]
fn the_checker_rejects_a_stale_read_and_accepts_overlap() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // write 1 completes, then a read that starts later returns the old 0: stale.
    let stale = vec![
        Op { write: true, value: 1, invoke: at(0), complete: at(10) },
        Op { write: false, value: 0, invoke: at(20), complete: at(30) },
    ];
    assert!(!linearizable(&stale, 0));
    // The same read overlapping the write may see either value.
    let overlap = vec![
        Op { write: true, value: 1, invoke: at(0), complete: at(25) },
        Op { write: false, value: 0, invoke: at(20), complete: at(30) },
        Op { write: false, value: 1, invoke: at(21), complete: at(31) },
    ];
    assert!(linearizable(&overlap, 0));
    // A read seeing 1 then a later read seeing 0 again is not.
    let flicker = vec![
        Op { write: true, value: 1, invoke: at(0), complete: at(50) },
        Op { write: false, value: 1, invoke: at(5), complete: at(10) },
        Op { write: false, value: 0, invoke: at(20), complete: at(30) },
    ];
    assert!(!linearizable(&flicker, 0));
}

#[test]
fn histories_at_both_sites_are_linearizable() {
    let seeds: u64 = std::env::var("GEOMIRROR_LIN_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let sites = TwoSites::start(TwoSiteOptions {
        rtt: Some("2ms"),
        extent_size: "64KiB",
        release_after: "150ms",
        max_owned_extents: 3,
        predict_extents: 1,
        peer_timeout: "5s",
        ..Default::default()
    });
    let started = Instant::now();
    let mut total = 0;
    for seed in 0..seeds {
        let per_block = run_seed(&sites, seed);
        for (block, ops) in per_block.iter().enumerate() {
            total += ops.len();
            assert!(linearizable(ops, 0), "seed {seed}, block {block}: history is not linearizable:\n{ops:#?}");
        }
    }
    let handovers = figure(&sites.a, "handovers") + figure(&sites.b, "handovers");
    let pulls = figure(&sites.a, "pulls") + figure(&sites.b, "pulls");
    eprintln!("{seeds} seeds, {total} operations checked in {:?}; {handovers} handovers, {pulls} pulls", started.elapsed());
    assert!(handovers > 0 && pulls > 0, "the workload must exercise handovers and pulls");
}
